//! Registry credentials and `WWW-Authenticate` challenges.
//!
//! Credentials come, in order, from explicit ones (`--creds`, `--username` +
//! `--password-stdin`), then, as skopeo and podman look them up, the
//! containers `auth.json` (`--authfile`, else `REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`)
//! and docker's `config.json` (`DOCKER_CONFIG` or `~/.docker/config.json`:
//! `credHelpers`, `auths`, `credsStore`). `airlock login` writes the file
//! `skopeo login` writes. Secrets are never formatted into errors or logs:
//! `Credential`'s Debug impl redacts them.

use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the
    /// token realm with `grant_type=refresh_token`.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read registry credentials from {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("credential helper docker-credential-{helper} failed for {host}: {detail}")]
    Helper {
        helper: String,
        host: String,
        detail: String,
    },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Where credentials are looked up, with explicit ones taking precedence.
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    pub explicit: BTreeMap<String, Credential>,
    /// Config files to consult; `None` = the standard locations.
    pub files: Option<Vec<PathBuf>>,
}

impl CredentialStore {
    /// The files skopeo reads, in its order: `REGISTRY_AUTH_FILE`, the
    /// containers auth files, then docker's `config.json`.
    pub fn standard_files() -> Vec<PathBuf> {
        let mut out = Vec::new();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
            out.push(PathBuf::from(f));
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
            out.push(PathBuf::from(d).join("containers/auth.json"));
        }
        if let Some(h) = &home {
            out.push(h.join(".config/containers/auth.json"));
        }
        match std::env::var_os("DOCKER_CONFIG") {
            Some(d) => out.push(PathBuf::from(d).join("config.json")),
            None => {
                if let Some(h) = &home {
                    out.push(h.join(".docker/config.json"));
                }
            }
        }
        out
    }

    /// The file `login` writes when no `--authfile` is given: where
    /// `skopeo login` and `podman login` write.
    pub fn default_auth_file() -> Option<PathBuf> {
        if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
            return Some(PathBuf::from(f));
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
            return Some(PathBuf::from(d).join("containers/auth.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/containers/auth.json"))
    }

    /// Find a credential for `host` (e.g. `127.0.0.1:5443`, `docker.io`).
    pub fn lookup(&self, host: &str) -> Result<Option<Credential>, CredentialError> {
        if let Some(c) = self.explicit.get(host) {
            return Ok(Some(c.clone()));
        }
        let files = self.files.clone().unwrap_or_else(Self::standard_files);
        for path in files {
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(CredentialError::File {
                        path,
                        detail: e.to_string(),
                    })
                }
            };
            let cfg: ConfigFile =
                serde_json::from_slice(&text).map_err(|e| CredentialError::File {
                    path: path.clone(),
                    detail: format!("not valid JSON ({e})"),
                })?;
            if let Some(c) = lookup_in_config(&cfg, host, &path)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

/// Docker keys Hub credentials under its v1 URL and others under a bare
/// host or a URL; match any of those spellings.
fn host_keys_match(key: &str, host: &str) -> bool {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    k == host
        || (host == "docker.io"
            && matches!(k, "index.docker.io" | "registry-1.docker.io" | "docker.io"))
}

fn lookup_in_config(
    cfg: &ConfigFile,
    host: &str,
    path: &std::path::Path,
) -> Result<Option<Credential>, CredentialError> {
    if let Some((_, helper)) = cfg
        .cred_helpers
        .iter()
        .find(|(k, _)| host_keys_match(k, host))
    {
        return run_helper(helper, host);
    }
    if let Some((_, entry)) = cfg.auths.iter().find(|(k, _)| host_keys_match(k, host)) {
        if let Some(tok) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credential::IdentityToken(tok.clone())));
        }
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| CredentialError::File {
                    path: path.to_path_buf(),
                    detail: format!("the \"auth\" entry for {host} is not base64 of user:password"),
                })?;
            let Some((u, p)) = decoded.split_once(':') else {
                return Err(CredentialError::File {
                    path: path.to_path_buf(),
                    detail: format!(
                        "the \"auth\" entry for {host} has no \"user:password\" in it; log in again (airlock login {host})"
                    ),
                });
            };
            return Ok(Some(Credential::Basic {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credential::Basic {
                username: u.clone(),
                password: p.clone(),
            }));
        }
    }
    if let Some(store) = &cfg.creds_store {
        return run_helper(store, host);
    }
    Ok(None)
}

/// Store (or with `None`, remove) `host`'s credentials in an auth file in
/// the containers format (`{"auths": {HOST: {"auth": base64(user:pass)}}}`),
/// keeping every other entry and key; written atomically, mode 0600.
pub fn save_login(
    file: &std::path::Path,
    host: &str,
    login: Option<(&str, &str)>,
) -> Result<bool, CredentialError> {
    let err = |detail: String| CredentialError::File {
        path: file.to_path_buf(),
        detail,
    };
    let mut doc: serde_json::Value = match std::fs::read(file) {
        Ok(b) if !b.is_empty() => {
            serde_json::from_slice(&b).map_err(|e| err(format!("not valid JSON ({e})")))?
        }
        Ok(_) => serde_json::json!({}),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(err(e.to_string())),
    };
    let root = doc
        .as_object_mut()
        .ok_or_else(|| err("not a JSON object".into()))?;
    let auths = root
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| err("\"auths\" is not an object".into()))?;
    let changed = match login {
        Some((user, pass)) => {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            auths.insert(host.to_string(), serde_json::json!({ "auth": auth }));
            true
        }
        None => {
            let keys: Vec<String> = auths
                .keys()
                .filter(|k| host_keys_match(k, host))
                .cloned()
                .collect();
            for k in &keys {
                auths.remove(k);
            }
            !keys.is_empty()
        }
    };
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| err(e.to_string()))?;
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| err(e.to_string()))?;
    tmp.write_all(&bytes).map_err(|e| err(e.to_string()))?;
    tmp.as_file().sync_all().map_err(|e| err(e.to_string()))?;
    tmp.persist(file).map_err(|e| err(e.error.to_string()))?;
    Ok(changed)
}

/// Run `docker-credential-<helper> get` (the docker credential-helper protocol).
fn run_helper(helper: &str, host: &str) -> Result<Option<Credential>, CredentialError> {
    let err = |detail: String| CredentialError::Helper {
        helper: helper.to_string(),
        host: host.to_string(),
        detail,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run it ({e}); is it on PATH?")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(host.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout);
        // Helpers answer "credentials not found in native keychain" for unknown hosts.
        if msg.contains("not found") {
            return Ok(None);
        }
        return Err(err(format!("exit status {}", out.status)));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct HelperAnswer {
        username: String,
        secret: String,
    }
    let ans: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|_| err("answer is not the credential-helper JSON".into()))?;
    Ok(Some(if ans.username == "<token>" {
        Credential::IdentityToken(ans.secret)
    } else {
        Credential::Basic {
            username: ans.username,
            password: ans.secret,
        }
    }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
    })
}

fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remain) = if let Some(q) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => val.push(c),
                }
            }
            (val, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = remain.trim_start_matches([',', ' ']);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn reads_docker_config_and_redacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpzM2NyZXQ="},"reg.example:5000":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        let store = CredentialStore {
            files: Some(vec![path]),
            ..Default::default()
        };
        let c = store.lookup("docker.io").unwrap().unwrap();
        assert_eq!(
            c,
            Credential::Basic {
                username: "user".into(),
                password: "s3cret".into()
            }
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(store.lookup("reg.example:5000").unwrap().is_some());
        assert!(store.lookup("other.example").unwrap().is_none());
    }
}
