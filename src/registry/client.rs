use super::auth::{parse_challenge, Challenge, Credential, CredentialStore};
use super::RegistryError;
use crate::digest::{Digest, Hasher};
use crate::oci::{self, Descriptor, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES};
use crate::progress::Progress;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{RequestBuilder, Response, StatusCode};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;
use url::Url;

/// A blob's bytes on their way to a registry. Built anew for every attempt.
pub type BlobBody = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Raised inside a [`BlobBody`] when the bytes do not hash to the digest
/// they claim; found again in the error chain so that it is not retried.
pub use crate::digest::IntegrityError as BlobIntegrityError;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with jitter (half fixed, half random), so that
    /// parallel transfers that failed together do not retry together.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        let jitter = rand::random::<f64>() * 0.5 + 0.5;
        let d = exp.mul_f64(jitter);
        match retry_after {
            Some(ra) => ra.min(Duration::from_secs(60)).max(d),
            None => d,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    pub credentials: CredentialStore,
    /// Extra CA certificates (PEM) trusted for every registry, on top of the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Hosts reached over plain HTTP, or HTTPS without certificate checks.
    pub insecure_hosts: Vec<String>,
    /// Every host so (`--tls-verify=false`).
    pub insecure_all: bool,
    /// Directories of certificates for every host (`--cert-dir`): `*.crt`
    /// CA certificates, and a `NAME.cert` + `NAME.key` client pair (mTLS).
    pub cert_dirs: Vec<PathBuf>,
    /// Roots holding one such directory per host (`ROOT/HOST[:PORT]/`), as
    /// containers and docker read them: `/etc/containers/certs.d`,
    /// `/etc/docker/certs.d`.
    pub certs_d: Vec<PathBuf>,
    pub retry: RetryPolicy,
    /// Upload blobs in PATCH chunks of this size instead of one streamed PUT.
    pub upload_chunk_size: Option<usize>,
    /// A download slower than this is a stall (retried, then an error).
    pub low_speed: LowSpeed,
    /// Retry notes go here.
    pub events: crate::progress::EventsHandle,
}

/// curl's `--speed-limit`/`--speed-time`: a body that brings fewer than
/// `bytes_per_sec` on average over `window` has stalled. A timeout on
/// stalls, not on totals: a large blob on a slow link still finishes.
#[derive(Clone, Copy, Debug)]
pub struct LowSpeed {
    pub bytes_per_sec: u64,
    pub window: Duration,
}

impl Default for LowSpeed {
    fn default() -> Self {
        LowSpeed {
            bytes_per_sec: 1024,
            window: Duration::from_secs(30),
        }
    }
}

/// One client per registry host (TLS settings and tokens are per host).
pub struct Registries {
    config: Arc<RegistryConfig>,
    hosts: Mutex<HashMap<String, Arc<Registry>>>,
}

impl Registries {
    pub fn new(config: RegistryConfig) -> Self {
        Registries {
            config: Arc::new(config),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, host: &str) -> Result<Arc<Registry>, RegistryError> {
        let mut hosts = self.hosts.lock().await;
        if let Some(r) = hosts.get(host) {
            return Ok(r.clone());
        }
        let r = Arc::new(Registry::connect(host, &self.config).await?);
        hosts.insert(host.to_string(), r.clone());
        Ok(r)
    }
}

/// Manifest bytes as fetched, with their checked digest.
pub use crate::oci::Manifest as RawManifest;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Exists,
    Mounted,
    Uploaded,
}

enum Attempt {
    Retry(RegistryError, Option<Duration>),
    Fatal(RegistryError),
}

pub struct Registry {
    host: String,
    base: Url,
    http: reqwest::Client,
    credential: Option<Credential>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, String>>,
    retry: RetryPolicy,
    chunk_size: Option<usize>,
    low_speed: LowSpeed,
    events: crate::progress::EventsHandle,
}

/// `host[:port]` names this machine: `localhost`, or a loopback address
/// (`127.0.0.0/8`, `[::1]`). Addresses are parsed, so a DNS name such as
/// `127.mirror.corp` is not loopback.
fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || tail.starts_with(':') => ip,
            _ => return false,
        }
    } else if host.parse::<std::net::IpAddr>().is_ok() {
        host // a bare IPv6 address: its colons are not a port
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Finds a [`BlobIntegrityError`] raised by a body stream, however deep.
fn integrity_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(i) = err.downcast_ref::<BlobIntegrityError>() {
            return Some(i.0.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(i) = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<BlobIntegrityError>())
            {
                return Some(i.0.clone());
            }
        }
        cur = err.source();
    }
    None
}

fn looks_like_tls_failure(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    d.contains("certificate") || d.contains("unknownissuer") || d.contains("handshake")
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// At most this many tags in one repository's list.
const MAX_TAGS: usize = 200_000;

async fn body_excerpt(resp: Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let t: String = text.chars().take(300).collect();
    crate::progress::printable(t.trim())
}

/// `text` with every form of `credential` a registry could echo back (the
/// password or token, the `Authorization` header value) replaced.
fn redact(text: &str, credential: Option<&Credential>) -> String {
    let Some(c) = credential else {
        return text.to_string();
    };
    let secrets: Vec<String> = match c {
        Credential::Basic { username, password } => vec![
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")),
            password.clone(),
        ],
        Credential::IdentityToken(t) => vec![t.clone()],
    };
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

/// What certificate directories hold for `host`: CA certificates (`*.crt`)
/// and one client certificate (`NAME.cert` with `NAME.key`, for mTLS).
fn read_cert_dirs(
    host: &str,
    dirs: &[PathBuf],
) -> Result<(Vec<reqwest::Certificate>, Option<reqwest::Identity>), RegistryError> {
    let tls = |detail: String| RegistryError::Tls {
        host: host.to_string(),
        detail,
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| RegistryError::Io {
            what: format!("certificate file {}", p.display()),
            source: e,
        })
    };
    let (mut cas, mut identity) = (Vec::new(), None);
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| RegistryError::Io {
                what: format!("certificate directory {}", dir.display()),
                source: e,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in &files {
            match f.extension().and_then(|e| e.to_str()) {
                Some("crt") => cas.extend(
                    reqwest::Certificate::from_pem_bundle(&read(f)?).map_err(|e| {
                        tls(format!("{} is not PEM certificates: {e}", f.display()))
                    })?,
                ),
                Some("cert") if identity.is_none() => {
                    let key = f.with_extension("key");
                    if !key.is_file() {
                        return Err(tls(format!(
                            "client certificate {} has no key {} beside it",
                            f.display(),
                            key.display()
                        )));
                    }
                    let mut pem = read(f)?;
                    pem.push(b'\n');
                    pem.extend(read(&key)?);
                    identity = Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                        tls(format!(
                            "client certificate {} / {}: {}",
                            f.display(),
                            key.display(),
                            error_chain(&e)
                        ))
                    })?);
                }
                _ => {}
            }
        }
    }
    Ok((cas, identity))
}

fn scope_pull(repo: &str) -> String {
    format!("repository:{repo}:pull")
}
fn scope_push(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl Registry {
    async fn connect(host: &str, config: &RegistryConfig) -> Result<Registry, RegistryError> {
        let insecure = config.insecure_all || config.insecure_hosts.iter().any(|h| h == host);
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(16);
        let mut extra = Vec::new();
        for f in &config.ca_files {
            let pem = std::fs::read(f).map_err(|e| RegistryError::Io {
                what: format!("CA file {}", f.display()),
                source: e,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::Tls {
                    host: host.to_string(),
                    detail: format!("CA file {} is not PEM certificates: {e}", f.display()),
                })?;
            extra.extend(certs);
        }
        let dirs: Vec<PathBuf> = config
            .cert_dirs
            .iter()
            .cloned()
            .chain(config.certs_d.iter().map(|root| root.join(host)))
            .filter(|d| d.is_dir())
            .collect();
        let (cas, identity) = read_cert_dirs(host, &dirs)?;
        extra.extend(cas);
        if let Some(id) = identity {
            builder = builder.identity(id);
        }
        if !extra.is_empty() {
            builder = builder.tls_certs_merge(extra);
        }
        if insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| RegistryError::Tls {
            host: host.to_string(),
            detail: error_chain(&e),
        })?;
        let api_host = if host == crate::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            host
        };
        let https =
            Url::parse(&format!("https://{api_host}/")).map_err(|e| RegistryError::Protocol {
                what: format!("registry {host}"),
                detail: e.to_string(),
            })?;
        let mut reg = Registry {
            host: host.to_string(),
            base: https,
            http,
            credential: config.credentials.lookup(host)?,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            retry: config.retry.clone(),
            chunk_size: config.upload_chunk_size,
            low_speed: config.low_speed,
            events: config.events.clone(),
        };
        // Like docker: loopback and --insecure registries may speak plain
        // HTTP; try TLS first and fall back only when the server is not TLS.
        if insecure || is_loopback(host) {
            match reg.ping().await {
                Ok(()) => {}
                Err(RegistryError::Tls { .. }) if insecure => {}
                Err(e @ RegistryError::Tls { .. }) => return Err(e),
                Err(_) => {
                    reg.base = Url::parse(&format!("http://{api_host}/")).map_err(|e| {
                        RegistryError::Protocol {
                            what: format!("registry {host}"),
                            detail: e.to_string(),
                        }
                    })?;
                    reg.ping().await?;
                }
            }
        }
        Ok(reg)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The start of an error body, printable, with our credentials redacted
    /// (a registry may echo the `Authorization` header back).
    async fn excerpt(&self, resp: Response) -> String {
        redact(&body_excerpt(resp).await, self.credential.as_ref())
    }

    fn excerpt_bytes(&self, body: &[u8]) -> String {
        let t = String::from_utf8_lossy(&body[..body.len().min(300)]);
        redact(
            &crate::progress::printable(t.trim()),
            self.credential.as_ref(),
        )
    }

    /// `GET /v2/` once, to learn the auth challenge (and whether TLS works).
    async fn ping(&self) -> Result<(), RegistryError> {
        let url = self.url("v2/");
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            if let Some(c) = resp
                .headers()
                .get("www-authenticate")
                .and_then(|h| h.to_str().ok())
                .and_then(parse_challenge)
            {
                *self.challenge.lock().await = Some(c);
            }
            return Ok(());
        }
        if resp.status().is_success() {
            return Ok(());
        }
        Err(RegistryError::Status {
            what: format!("registry {} /v2/", self.host),
            status: resp.status().as_u16(),
            body: self.excerpt(resp).await,
        })
    }

    fn url(&self, path: &str) -> Url {
        // `path` is built from validated repository names and digests.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn transport_error(&self, e: &reqwest::Error) -> RegistryError {
        let detail = error_chain(e);
        if looks_like_tls_failure(&detail) {
            RegistryError::Tls {
                host: self.host.clone(),
                detail,
            }
        } else {
            RegistryError::Connect {
                host: self.host.clone(),
                detail,
            }
        }
    }

    async fn auth_header(&self, scopes: &[String]) -> Result<Option<String>, RegistryError> {
        let key = scopes.join(" ");
        if let Some(h) = self.tokens.lock().await.get(&key) {
            return Ok(Some(h.clone()));
        }
        let challenge = self.challenge.lock().await.clone();
        let header =
            match challenge {
                None => return Ok(None),
                Some(Challenge::Basic) => match &self.credential {
                    Some(Credential::Basic { username, password }) => {
                        use base64::Engine as _;
                        let enc = base64::engine::general_purpose::STANDARD
                            .encode(format!("{username}:{password}"));
                        format!("Basic {enc}")
                    }
                    _ => return Err(RegistryError::Auth {
                        host: self.host.clone(),
                        scope: key,
                        detail:
                            "the registry asks for a username and password and none is configured"
                                .into(),
                    }),
                },
                Some(Challenge::Bearer { realm, service }) => {
                    format!(
                        "Bearer {}",
                        self.fetch_token(&realm, service.as_deref(), scopes).await?
                    )
                }
            };
        self.tokens.lock().await.insert(key, header.clone());
        Ok(Some(header))
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<String, RegistryError> {
        let auth_err = |detail: String| RegistryError::Auth {
            host: self.host.clone(),
            scope: scopes.join(" "),
            detail,
        };
        let realm_url = Url::parse(realm)
            .map_err(|_| auth_err(format!("token realm {realm:?} is not a URL")))?;
        // A registry reached over HTTPS may not send our secrets in clear
        // text to a token service over plain HTTP (a downgrade it chose).
        if realm_url.scheme() != "https"
            && self.base.scheme() == "https"
            && self.credential.is_some()
        {
            return Err(auth_err(format!(
                "the token service {realm_url} is plain HTTP while the registry is HTTPS: credentials are not sent there"
            )));
        }
        let req = match &self.credential {
            Some(Credential::IdentityToken(tok)) => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", tok.clone()),
                    ("client_id", "airlock".to_string()),
                    ("scope", scopes.join(" ")),
                ];
                if let Some(s) = service {
                    form.push(("service", s.to_string()));
                }
                self.http.post(realm_url).form(&form)
            }
            cred => {
                let mut url = realm_url;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                }
                let r = self.http.get(url);
                match cred {
                    Some(Credential::Basic { username, password }) => {
                        r.basic_auth(username, Some(password))
                    }
                    _ => r,
                }
            }
        };
        let resp = req
            .send()
            .await
            .map_err(|e| auth_err(format!("token request failed: {}", error_chain(&e))))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(auth_err(format!(
                "token service answered {status}{}",
                if self.credential.is_none() {
                    " (no credentials configured for this registry)"
                } else {
                    ""
                }
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| auth_err(format!("token answer unreadable: {}", error_chain(&e))))?;
        let ans: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| auth_err("token answer is not JSON".into()))?;
        ans.token
            .or(ans.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err("token answer holds no token".into()))
    }

    /// One request with auth; a 401 renews the challenge and token once.
    async fn send_once(
        &self,
        scopes: &[String],
        what: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response, Attempt> {
        let mut reauthed = false;
        loop {
            let header = self.auth_header(scopes).await.map_err(Attempt::Fatal)?;
            let mut req = build(&self.http);
            if let Some(h) = &header {
                req = req.header(AUTHORIZATION, h);
            }
            let started = std::time::Instant::now();
            let logged = crate::progress::verbose().then(|| {
                req.try_clone()
                    .and_then(|r| r.build().ok())
                    .map(|r| format!("{} {}", r.method(), r.url()))
                    .unwrap_or_else(|| "upload (a streamed body)".into())
            });
            let sent = req.send().await;
            if let Some(line) = logged {
                let status = match &sent {
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(_) => "failed".into(),
                };
                // Method and URL only: credentials travel in headers, never logged.
                self.events.0.note(&format!(
                    "{line} -> {status} ({} ms)",
                    started.elapsed().as_millis()
                ));
            }
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let err = self.transport_error(&e);
                    return Err(match err {
                        RegistryError::Tls { .. } => Attempt::Fatal(err),
                        _ => Attempt::Retry(err, None),
                    });
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !reauthed {
                reauthed = true;
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|h| h.to_str().ok())
                    .and_then(parse_challenge);
                if challenge.is_some() {
                    *self.challenge.lock().await = challenge;
                    self.tokens.lock().await.remove(&scopes.join(" "));
                    continue;
                }
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                let body = self.excerpt(resp).await;
                return Err(Attempt::Fatal(RegistryError::Auth {
                    host: self.host.clone(),
                    scope: scopes.join(" "),
                    detail: format!("{what}: {status} {body}"),
                }));
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                let ra = retry_after(resp.headers());
                let body = self.excerpt(resp).await;
                return Err(Attempt::Retry(
                    RegistryError::Status {
                        what: what.to_string(),
                        status: status.as_u16(),
                        body,
                    },
                    ra,
                ));
            }
            return Ok(resp);
        }
    }

    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e, ra)) => self.wait_before_retry(&mut attempt, e, ra).await?,
            }
        }
    }

    /// Sleep before the next attempt, or give up with `e` when attempts are spent.
    async fn wait_before_retry(
        &self,
        attempt: &mut u32,
        e: RegistryError,
        retry_after: Option<Duration>,
    ) -> Result<(), RegistryError> {
        *attempt += 1;
        if *attempt >= self.retry.attempts {
            return Err(e);
        }
        let d = self.retry.delay(*attempt - 1, retry_after);
        note_retry(&self.events, &e, *attempt, d);
        tokio::time::sleep(d).await;
        Ok(())
    }

    /// A request whose body is read whole (manifests, tag lists), retried as a unit.
    async fn request_bytes(
        &self,
        scopes: &[String],
        what: &str,
        limit: u64,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<(StatusCode, HeaderMap, Bytes), RegistryError> {
        self.retrying(|| async {
            let resp = self.send_once(scopes, what, build).await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if let Some(len) = resp.content_length() {
                if len > limit {
                    return Err(Attempt::Fatal(RegistryError::Protocol {
                        what: what.to_string(),
                        detail: format!("answer of {len} bytes exceeds the {limit}-byte limit"),
                    }));
                }
            }
            let mut body = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Attempt::Retry(self.transport_error(&e), None))?;
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(Attempt::Fatal(RegistryError::Protocol {
                        what: what.to_string(),
                        detail: format!("answer exceeds the {limit}-byte limit"),
                    }));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, headers, Bytes::from(body)))
        })
        .await
    }

    async fn request(
        &self,
        scopes: &[String],
        what: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response, RegistryError> {
        self.retrying(|| self.send_once(scopes, what, build)).await
    }

    // ---------------------------------------------------------------- manifests

    /// Fetch a manifest by tag or digest, as the exact bytes served.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<RawManifest, RegistryError> {
        let what = format!("manifest {}/{repo}:{reference}", self.host);
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let accept = MANIFEST_MEDIA_TYPES.join(", ");
        let (status, headers, bytes) = self
            .request_bytes(&[scope_pull(repo)], &what, MAX_MANIFEST_BYTES, &|c| {
                c.get(url.clone()).header(ACCEPT, accept.clone())
            })
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound { what });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                what,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into(),
            });
        }
        let actual = Digest::of(&bytes);
        let expected = match reference.parse::<Digest>() {
            Ok(d) => Some(d),
            Err(_) => content_digest(&headers),
        };
        if let Some(expected) = expected {
            if expected != actual {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        let view = oci::ManifestView::parse(&bytes, content_type.as_deref()).map_err(|source| {
            RegistryError::Manifest {
                what: what.clone(),
                source,
            }
        })?;
        Ok(RawManifest {
            bytes,
            media_type: view.media_type,
            digest: actual,
        })
    }

    /// The digest a tag or digest resolves to, if the manifest exists.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let what = format!("manifest {}/{repo}:{reference}", self.host);
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let accept = MANIFEST_MEDIA_TYPES.join(", ");
        let resp = self
            .request(&[scope_pull(repo)], &what, &|c| {
                c.head(url.clone()).header(ACCEPT, accept.clone())
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let digest = content_digest(resp.headers());
                match digest {
                    Some(d) => Ok(Some(d)),
                    // Some registries omit the header on HEAD: ask for the bytes.
                    None => Ok(Some(self.get_manifest(repo, reference).await?.digest)),
                }
            }
            s => Err(RegistryError::Status {
                what,
                status: s.as_u16(),
                body: self.excerpt(resp).await,
            }),
        }
    }

    /// Push manifest bytes unchanged under `reference` (a tag or their digest).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let what = format!("push of manifest {}/{repo}:{reference}", self.host);
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let digest = Digest::of(bytes);
        let resp = self
            .request(&[scope_push(repo)], &what, &|c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(RegistryError::Status {
                what,
                status,
                body: self.excerpt(resp).await,
            });
        }
        if let Some(got) = content_digest(resp.headers()) {
            if got != digest {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected: digest,
                    actual: got,
                });
            }
        }
        Ok(digest)
    }

    // ---------------------------------------------------------------- tags and referrers

    /// Every tag of `repo` (following `Link` pagination); empty if the repository is unknown.
    /// `GET /v2/` with the credentials (a token without scope where the
    /// registry wants tokens): what `login` checks before it saves them.
    pub async fn check_login(&self) -> Result<(), RegistryError> {
        let what = format!("login to {}", self.host);
        let url = self.url("v2/");
        let (status, _, body) = self
            .request_bytes(&[], &what, 1 << 20, &|c| c.get(url.clone()))
            .await?;
        if status.is_success() {
            return Ok(());
        }
        Err(RegistryError::Status {
            what,
            status: status.as_u16(),
            body: self.excerpt_bytes(&body),
        })
    }

    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let what = format!("tag list of {}/{repo}", self.host);
        let mut next = Some(self.url(&format!("v2/{repo}/tags/list?n=1000")));
        let mut tags = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 10_000 {
                return Err(RegistryError::Protocol {
                    what,
                    detail: "tag list pagination does not end".into(),
                });
            }
            let (status, headers, body) = self
                .request_bytes(&[scope_pull(repo)], &what, 64 << 20, &|c| {
                    c.get(url.clone())
                })
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Ok(tags);
            }
            if !status.is_success() {
                return Err(RegistryError::Status {
                    what,
                    status: status.as_u16(),
                    body: self.excerpt_bytes(&body),
                });
            }
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                    what: what.clone(),
                    detail: format!("tag list is not JSON: {e}"),
                })?;
            let before = tags.len();
            tags.extend(list.tags.unwrap_or_default());
            if tags.len() > MAX_TAGS {
                return Err(RegistryError::Protocol {
                    what,
                    detail: format!(
                        "more than {MAX_TAGS} tags: select by tag or pattern from a smaller repository"
                    ),
                });
            }
            next = next_link(&headers).and_then(|l| url.join(&l).ok());
            // A page that adds nothing yet points on, or a page seen before: a
            // registry that loops, not one that has that many tags.
            if let Some(n) = &next {
                if tags.len() == before || !seen.insert(n.to_string()) {
                    return Err(RegistryError::Protocol {
                        what,
                        detail: format!("tag list pagination loops (page {n} again, or an empty page that points on)"),
                    });
                }
            }
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Every repository of the registry (`GET /v2/_catalog`, following
    /// `Link` pagination). At most `limit` repositories; a page that brings
    /// nothing new while pointing to a next one (a registry that loops) is
    /// an error, not an endless walk.
    pub async fn catalog(&self, limit: usize) -> Result<Vec<String>, RegistryError> {
        self.catalog_in_pages(limit, 1000).await
    }

    /// [`Registry::catalog`], asking for `page_size` repositories a page.
    pub async fn catalog_in_pages(
        &self,
        limit: usize,
        page_size: usize,
    ) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let what = format!("repository catalog of {}", self.host);
        let scopes = ["registry:catalog:*".to_string()];
        let mut next = Some(self.url(&format!("v2/_catalog?n={}", page_size.max(1))));
        let mut repos = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut urls = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            if !urls.insert(url.to_string()) {
                return Err(RegistryError::Protocol {
                    what,
                    detail: format!("catalog pagination repeats the page {url}"),
                });
            }
            let (status, headers, body) = self
                .request_bytes(&scopes, &what, 64 << 20, &|c| c.get(url.clone()))
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::Protocol {
                    what,
                    detail: "the registry does not offer /v2/_catalog (it may be disabled)".into(),
                });
            }
            if !status.is_success() {
                return Err(RegistryError::Status {
                    what,
                    status: status.as_u16(),
                    body: self.excerpt_bytes(&body),
                });
            }
            let page: Catalog =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                    what: what.clone(),
                    detail: format!("catalog is not JSON: {e}"),
                })?;
            let mut fresh = 0;
            for r in page.repositories.unwrap_or_default() {
                if seen.insert(r.clone()) {
                    fresh += 1;
                    repos.push(r);
                }
            }
            if repos.len() > limit {
                return Err(RegistryError::Protocol {
                    what,
                    detail: format!("more than {limit} repositories"),
                });
            }
            next = next_link(&headers).and_then(|l| url.join(&l).ok());
            if next.is_some() && fresh == 0 {
                return Err(RegistryError::Protocol {
                    what,
                    detail: format!("catalog page {url} repeats repositories already listed"),
                });
            }
        }
        Ok(repos)
    }

    /// OCI 1.1 referrers of `digest`; `None` when the registry has no referrers API.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, RegistryError> {
        let what = format!("referrers of {}/{repo}@{digest}", self.host);
        let mut next = Some(self.url(&format!("v2/{repo}/referrers/{digest}")));
        let mut out = Vec::new();
        while let Some(url) = next.take() {
            let (status, headers, body) = self
                .request_bytes(&[scope_pull(repo)], &what, MAX_MANIFEST_BYTES, &|c| {
                    c.get(url.clone()).header(ACCEPT, oci::OCI_INDEX)
                })
                .await?;
            if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(RegistryError::Status {
                    what,
                    status: status.as_u16(),
                    body: self.excerpt_bytes(&body),
                });
            }
            let is_index = headers
                .get(CONTENT_TYPE)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|c| c.starts_with(oci::OCI_INDEX));
            if !is_index {
                return Ok(None);
            }
            let view = oci::ManifestView::parse(&body, Some(oci::OCI_INDEX)).map_err(|source| {
                RegistryError::Manifest {
                    what: what.clone(),
                    source,
                }
            })?;
            out.extend(view.manifests);
            next = next_link(&headers).and_then(|l| url.join(&l).ok());
        }
        Ok(Some(out))
    }

    // ---------------------------------------------------------------- blobs

    pub async fn blob_exists(&self, repo: &str, desc: &Descriptor) -> Result<bool, RegistryError> {
        let what = format!("blob {} in {}/{repo}", desc.digest, self.host);
        let url = self.url(&format!("v2/{repo}/blobs/{}", desc.digest));
        let resp = self
            .request(&[scope_pull(repo)], &what, &|c| c.head(url.clone()))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => {
                // A blob of another size (or digest) under this digest is not
                // the blob: a registry that says so is answered as absent.
                let h = resp.headers();
                let size = h
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let digest = h.get("docker-content-digest").and_then(|v| v.to_str().ok());
                let size_ok = size.is_none_or(|n| n == desc.size || desc.size == 0);
                let digest_ok = digest.is_none_or(|d| d == desc.digest.to_string());
                Ok(size_ok && digest_ok)
            }
            s => Err(RegistryError::Status {
                what,
                status: s.as_u16(),
                body: String::new(),
            }),
        }
    }

    /// Download a blob into `out` (truncated first), checking size and
    /// sha256 on the fly; a failed attempt resumes where it stopped.
    pub async fn fetch_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        out: &mut tokio::fs::File,
        progress: &Progress,
    ) -> Result<(), RegistryError> {
        let what = format!("blob {} of {}/{repo}", desc.digest, self.host);
        let io_err = |source| RegistryError::Io {
            what: format!("spool file for {what}"),
            source,
        };
        out.set_len(0).await.map_err(io_err)?;
        out.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(io_err)?;
        let mut target = FileChunks { out, progress };
        self.fetch_blob_chunks(repo, desc, &mut target).await?;
        out.flush().await.map_err(io_err)
    }

    /// Download a blob chunk by chunk into `target`, checking size and
    /// sha256 on the fly. A target cannot take back what it was given, so
    /// a failed attempt resumes at the next byte (`Range`; a registry that
    /// answers with the whole blob has the bytes already given skipped), and
    /// the digest covers exactly the bytes the target received. A digest
    /// mismatch is final: the target already holds bad bytes.
    pub async fn fetch_blob_chunks(
        &self,
        repo: &str,
        desc: &Descriptor,
        target: &mut dyn ChunkTarget,
    ) -> Result<(), RegistryError> {
        let what = format!("blob {} of {}/{repo}", desc.digest, self.host);
        let url = self.url(&format!("v2/{repo}/blobs/{}", desc.digest));
        let mut attempt = 0;
        loop {
            let mut hasher = Hasher::new();
            let result = loop {
                let result = self
                    .fetch_attempt(repo, desc, &url, &what, &mut hasher, target)
                    .await;
                match result {
                    Ok(()) => break Ok(hasher.finish()),
                    Err(Attempt::Fatal(e)) => break Err(e),
                    Err(Attempt::Retry(e, ra)) => {
                        self.wait_before_retry(&mut attempt, e, ra).await?
                    }
                }
            };
            let actual = result?;
            if actual == desc.digest {
                return Ok(());
            }
            let mismatch = RegistryError::DigestMismatch {
                what: what.clone(),
                expected: desc.digest.clone(),
                actual,
            };
            // A file can start over; a stream already passed the bytes on.
            let restarted = target.restart().await.map_err(|source| RegistryError::Io {
                what: what.clone(),
                source,
            })?;
            if !restarted {
                return Err(mismatch);
            }
            self.wait_before_retry(&mut attempt, mismatch, None).await?;
        }
    }

    /// One GET of what `target` still lacks (all of it, or from the offset
    /// `hasher` has reached).
    async fn fetch_attempt(
        &self,
        repo: &str,
        desc: &Descriptor,
        url: &Url,
        what: &str,
        hasher: &mut Hasher,
        target: &mut dyn ChunkTarget,
    ) -> Result<(), Attempt> {
        let from = hasher.len();
        let resp = self
            .send_once(&[scope_pull(repo)], what, &|c| {
                let req = c.get(url.clone());
                if from > 0 {
                    req.header(reqwest::header::RANGE, format!("bytes={from}-"))
                } else {
                    req
                }
            })
            .await?;
        // Bytes of the body already given to the target (a 200 to a Range).
        let mut skip = 0u64;
        match resp.status() {
            StatusCode::NOT_FOUND => {
                return Err(Attempt::Fatal(RegistryError::NotFound {
                    what: what.to_string(),
                }))
            }
            StatusCode::PARTIAL_CONTENT if from > 0 => {
                let start = content_range_start(resp.headers());
                if start != Some(from) {
                    return Err(Attempt::Fatal(RegistryError::Protocol {
                        what: what.to_string(),
                        detail: format!(
                            "asked for the bytes from {from} on, the registry answered with a range starting at {start:?}"
                        ),
                    }));
                }
            }
            StatusCode::OK => skip = from,
            s => {
                return Err(Attempt::Fatal(RegistryError::Status {
                    what: what.to_string(),
                    status: s.as_u16(),
                    body: self.excerpt(resp).await,
                }))
            }
        }
        let mut stream = resp.bytes_stream();
        let limit = self.low_speed;
        let (mut window_start, mut window_bytes) = (tokio::time::Instant::now(), 0u64);
        let stalled = |got: u64, received: u64| {
            Attempt::Retry(
                RegistryError::Stalled {
                    what: what.to_string(),
                    detail: format!(
                        "{got} bytes in the last {}s (at least {} B/s expected); {received} of {} bytes received",
                        limit.window.as_secs(),
                        limit.bytes_per_sec,
                        desc.size
                    ),
                },
                None,
            )
        };
        loop {
            let next = match tokio::time::timeout(limit.window, stream.next()).await {
                Ok(n) => n,
                Err(_) => return Err(stalled(window_bytes, hasher.len())),
            };
            let Some(chunk) = next else { break };
            let mut chunk = chunk.map_err(|e| Attempt::Retry(self.transport_error(&e), None))?;
            window_bytes += chunk.len() as u64;
            if window_start.elapsed() >= limit.window {
                if window_bytes < limit.bytes_per_sec * limit.window.as_secs().max(1) {
                    return Err(stalled(window_bytes, hasher.len()));
                }
                window_start = tokio::time::Instant::now();
                window_bytes = 0;
            }
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                let _ = chunk.split_to(n as usize);
                skip -= n;
                if chunk.is_empty() {
                    continue;
                }
            }
            if hasher.len() + chunk.len() as u64 > desc.size {
                return Err(Attempt::Fatal(RegistryError::SizeMismatch {
                    what: what.to_string(),
                    expected: desc.size,
                    actual: hasher.len() + chunk.len() as u64,
                }));
            }
            hasher.update(&chunk);
            target.put(chunk).await.map_err(|source| {
                Attempt::Fatal(RegistryError::Io {
                    what: what.to_string(),
                    source,
                })
            })?;
        }
        if hasher.len() != desc.size {
            return Err(Attempt::Retry(
                RegistryError::SizeMismatch {
                    what: what.to_string(),
                    expected: desc.size,
                    actual: hasher.len(),
                },
                None,
            ));
        }
        Ok(())
    }

    /// Push a blob unless it is there: mount it from `mount_from` (same
    /// registry) when possible, else upload it from a fresh `open()` body.
    /// Every failed attempt starts a new upload session from a new body.
    pub async fn push_blob<F, Fut>(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
        open: F,
    ) -> Result<PushOutcome, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<BlobBody, RegistryError>>,
    {
        if self.blob_exists(repo, desc).await? {
            return Ok(PushOutcome::Exists);
        }
        self.push_absent_blob(repo, desc, mount_from, open).await
    }

    /// [`Registry::push_blob`] for a blob the caller just found absent
    /// (one HEAD less per blob: the registry's CPU is the import's limit).
    pub async fn push_absent_blob<F, Fut>(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
        open: F,
    ) -> Result<PushOutcome, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<BlobBody, RegistryError>>,
    {
        let what = format!("upload of blob {} to {}/{repo}", desc.digest, self.host);
        // Every attempt is a new upload session from a new body.
        self.retrying(|| self.try_push_blob(repo, desc, mount_from, &open, &what))
            .await
    }

    async fn try_push_blob<F, Fut>(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
        open: &F,
        what: &str,
    ) -> Result<PushOutcome, Attempt>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<BlobBody, RegistryError>>,
    {
        let mut scopes = vec![scope_push(repo)];
        let mut start = self.url(&format!("v2/{repo}/blobs/uploads/"));
        if let Some(from) = mount_from.filter(|f| *f != repo) {
            scopes.push(scope_pull(from));
            start
                .query_pairs_mut()
                .append_pair("mount", &desc.digest.to_string())
                .append_pair("from", from);
        }
        let resp = self
            .send_once(&scopes, what, &|c| {
                c.post(start.clone()).header(CONTENT_LENGTH, 0)
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::CREATED && mount_from.is_some() {
            return Ok(PushOutcome::Mounted);
        }
        if status != StatusCode::ACCEPTED {
            return Err(Attempt::Fatal(RegistryError::Status {
                what: what.to_string(),
                status: status.as_u16(),
                body: self.excerpt(resp).await,
            }));
        }
        // 202: an upload session, also the answer to a mount the registry declined.
        let mut location = self.location(&resp, what).map_err(Attempt::Fatal)?;
        let body = open().await.map_err(Attempt::Fatal)?;
        let result = match self.chunk_size {
            Some(chunk) => {
                self.upload_chunked(repo, desc, &mut location, body, chunk, what)
                    .await
            }
            None => {
                self.upload_monolithic(repo, desc, &location, body, what)
                    .await
            }
        };
        if result.is_err() {
            // Best effort: free the session the registry holds for us.
            let loc = location.clone();
            let _ = self
                .send_once(&[scope_push(repo)], what, &|c| c.delete(loc.clone()))
                .await;
        }
        result.map(|_| PushOutcome::Uploaded)
    }

    fn location(&self, resp: &Response, what: &str) -> Result<Url, RegistryError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                what: what.to_string(),
                detail: "upload answer has no Location header".into(),
            })?;
        self.base.join(loc).map_err(|e| RegistryError::Protocol {
            what: what.to_string(),
            detail: format!("bad upload Location {loc:?}: {e}"),
        })
    }

    fn body_failure(&self, e: &reqwest::Error, what: &str) -> Attempt {
        match integrity_failure(e) {
            Some(detail) => Attempt::Fatal(RegistryError::Integrity {
                what: what.to_string(),
                detail,
            }),
            None => Attempt::Retry(self.transport_error(e), None),
        }
    }

    async fn finish_upload(
        &self,
        resp: Response,
        desc: &Descriptor,
        what: &str,
    ) -> Result<(), Attempt> {
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let ra = retry_after(resp.headers());
            return Err(Attempt::Retry(
                RegistryError::Status {
                    what: what.to_string(),
                    status: status.as_u16(),
                    body: self.excerpt(resp).await,
                },
                ra,
            ));
        }
        if status != StatusCode::CREATED {
            return Err(Attempt::Fatal(RegistryError::Status {
                what: what.to_string(),
                status: status.as_u16(),
                body: self.excerpt(resp).await,
            }));
        }
        if let Some(got) = content_digest(resp.headers()) {
            if got != desc.digest {
                return Err(Attempt::Fatal(RegistryError::DigestMismatch {
                    what: what.to_string(),
                    expected: desc.digest.clone(),
                    actual: got,
                }));
            }
        }
        Ok(())
    }

    async fn upload_monolithic(
        &self,
        repo: &str,
        desc: &Descriptor,
        location: &Url,
        body: BlobBody,
        what: &str,
    ) -> Result<(), Attempt> {
        let mut url = location.clone();
        url.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let header = self
            .auth_header(&[scope_push(repo)])
            .await
            .map_err(Attempt::Fatal)?;
        let mut req = self
            .http
            .put(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, desc.size)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(h) = header {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| self.body_failure(&e, what))?;
        self.finish_upload(resp, desc, what).await
    }

    async fn upload_chunked(
        &self,
        repo: &str,
        desc: &Descriptor,
        location: &mut Url,
        mut body: BlobBody,
        chunk_size: usize,
        what: &str,
    ) -> Result<(), Attempt> {
        let mut offset: u64 = 0;
        let mut pending: Vec<u8> = Vec::with_capacity(chunk_size.min(desc.size as usize));
        let mut ended = false;
        loop {
            // Fill one chunk; the body stream is bounded, so memory stays at one chunk.
            while !ended && pending.len() < chunk_size {
                match body.next().await {
                    Some(Ok(b)) => pending.extend_from_slice(&b),
                    Some(Err(e)) => {
                        return Err(
                            match e
                                .get_ref()
                                .and_then(|i| i.downcast_ref::<BlobIntegrityError>())
                            {
                                Some(i) => Attempt::Fatal(RegistryError::Integrity {
                                    what: what.to_string(),
                                    detail: i.0.clone(),
                                }),
                                None => Attempt::Fatal(RegistryError::Io {
                                    what: what.to_string(),
                                    source: e,
                                }),
                            },
                        )
                    }
                    None => ended = true,
                }
            }
            if pending.is_empty() {
                break;
            }
            let take = pending.len().min(chunk_size);
            let chunk = Bytes::copy_from_slice(&pending[..take]);
            pending.drain(..take);
            let end = offset + chunk.len() as u64 - 1;
            let loc = location.clone();
            let resp = self
                .send_once(&[scope_push(repo)], what, &|c| {
                    c.patch(loc.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header("content-range", format!("{offset}-{end}"))
                        .header(CONTENT_LENGTH, chunk.len())
                        .body(chunk.clone())
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(Attempt::Fatal(RegistryError::Status {
                    what: what.to_string(),
                    status: resp.status().as_u16(),
                    body: self.excerpt(resp).await,
                }));
            }
            *location = self.location(&resp, what).map_err(Attempt::Fatal)?;
            offset = end + 1;
        }
        let mut url = location.clone();
        url.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let resp = self
            .send_once(&[scope_push(repo)], what, &|c| {
                c.put(url.clone()).header(CONTENT_LENGTH, 0)
            })
            .await?;
        self.finish_upload(resp, desc, what).await
    }
}

/// The `Docker-Content-Digest` a registry answered with, if valid.
fn content_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let part = part.trim();
        if !part.contains("rel=\"next\"") && !part.contains("rel=next") {
            return None;
        }
        let start = part.find('<')? + 1;
        let end = part.find('>')?;
        Some(part[start..end].to_string())
    })
}

fn note_retry(
    events: &crate::progress::EventsHandle,
    e: &RegistryError,
    attempt: u32,
    delay: Duration,
) {
    events.0.note(&format!(
        "retrying in {:.1}s (attempt {}): {e}",
        delay.as_secs_f64(),
        attempt + 1
    ));
}

/// Where a download goes, chunk by chunk, in order.
pub trait ChunkTarget: Send {
    fn put(&mut self, chunk: Bytes) -> futures_util::future::BoxFuture<'_, std::io::Result<()>>;
    /// Forget every chunk taken, if this target can (a file); false if not.
    fn restart(&mut self) -> futures_util::future::BoxFuture<'_, std::io::Result<bool>> {
        Box::pin(async { Ok(false) })
    }
}

struct FileChunks<'a> {
    out: &'a mut tokio::fs::File,
    progress: &'a Progress,
}

impl ChunkTarget for FileChunks<'_> {
    fn put(&mut self, chunk: Bytes) -> futures_util::future::BoxFuture<'_, std::io::Result<()>> {
        Box::pin(async move {
            self.out.write_all(&chunk).await?;
            self.progress.add(chunk.len() as u64);
            Ok(())
        })
    }

    fn restart(&mut self) -> futures_util::future::BoxFuture<'_, std::io::Result<bool>> {
        Box::pin(async move {
            self.out.set_len(0).await?;
            self.out.seek(std::io::SeekFrom::Start(0)).await?;
            Ok(true)
        })
    }
}

/// The first byte of a `Content-Range: bytes A-B/N` answer.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get("content-range")?.to_str().ok()?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            "</v2/a/tags/list?n=2&last=b>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/a/tags/list?n=2&last=b"));
    }

    #[test]
    fn loopback_hosts_are_parsed_addresses() {
        for (host, loopback) in [
            ("127.0.0.1:5000", true),
            ("127.0.0.1", true),
            ("127.1.2.3:5000", true),
            ("127.mirror.corp:5000", false),
            ("127.mirror.corp", false),
            ("[::1]:5000", true),
            ("[::1]", true),
            ("::1", true),
            ("[::2]:5000", false),
            ("[::1", false),
            ("localhost:5000", true),
            ("localhost", true),
            ("localhost.corp:5000", false),
            ("10.0.0.1", false),
            ("10.0.0.1:5000", false),
            ("registry.example.com:443", false),
        ] {
            assert_eq!(is_loopback(host), loopback, "{host}");
        }
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = RetryPolicy::default();
        assert!(p.delay(0, None) <= Duration::from_millis(250));
        assert!(p.delay(3, None) >= Duration::from_millis(1000));
        assert!(p.delay(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert!(p.delay(30, None) <= Duration::from_secs(20));
    }
}
