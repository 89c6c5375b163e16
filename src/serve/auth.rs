//! Who may pull: basic auth against a bcrypt htpasswd file (what
//! `htpasswd -B` and the distribution registry use), and TLS from PEM files.

use crate::error::{Error, Result};
use base64::Engine;
use hyper::header::HeaderValue;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// An htpasswd file is a few lines; a huge one is not one.
const MAX_HTPASSWD: u64 = 1 << 20;

pub struct Htpasswd {
    users: HashMap<String, String>,
    /// sha256 of `user:password` pairs already checked: bcrypt is slow on
    /// purpose, and a pull makes hundreds of requests.
    accepted: Mutex<HashSet<[u8; 32]>>,
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd> {
        let name = path.display().to_string();
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(Error::io(&name))?
            .take(MAX_HTPASSWD)
            .read_to_string(&mut text)
            .map_err(Error::io(&name))?;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| Error::Usage(format!("{name} line {}: not USER:HASH", n + 1)))?;
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(Error::Usage(format!(
                    "{name} line {}: user {user:?} has no bcrypt hash (create it with htpasswd -B)",
                    n + 1
                )));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err(Error::Usage(format!("{name} lists no user")));
        }
        Ok(Htpasswd {
            users,
            accepted: Mutex::new(HashSet::new()),
        })
    }

    /// The user, when the `Authorization` header holds valid credentials.
    pub async fn check(self: &Arc<Self>, header: Option<&HeaderValue>) -> Option<String> {
        let value = header?.to_str().ok()?;
        let encoded = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        let key = crate::digest::Digest::of(text.as_bytes());
        let key: [u8; 32] = hex::decode(key.hex()).ok()?.try_into().ok()?;
        if self.accepted.lock().ok()?.contains(&key) {
            return Some(user.to_string());
        }
        let hash = self.users.get(user)?.clone();
        let password = password.to_string();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .ok()?;
        if !ok {
            return None;
        }
        self.accepted.lock().ok()?.insert(key);
        Some(user.to_string())
    }
}

/// A TLS acceptor from a PEM certificate chain and private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Usage(format!("--tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Usage(format!("--tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Usage(format!("--tls-cert/--tls-key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
