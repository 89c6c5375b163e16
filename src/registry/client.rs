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
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Upload blobs in PATCH chunks of this size instead of one streamed PUT
    /// (also the largest chunk of a resumed upload).
    pub upload_chunk_size: Option<usize>,
    /// A download, or an upload's body, slower than this is a stall
    /// (retried, then an error).
    pub low_speed: LowSpeed,
    /// How long a request waits for its answer, and for each read of it
    /// (default 120 s). Not a limit on a blob body on its way up: that is
    /// timed by `low_speed`, then its answer by this.
    pub request_timeout: Option<Duration>,
    /// Retry notes go here.
    pub events: crate::progress::EventsHandle,
}

/// curl's `--speed-limit`/`--speed-time`: a body that moves fewer than
/// `bytes_per_sec` on average over `window` has stalled, downloads and
/// uploads alike. A timeout on stalls, not on totals: a large blob on a
/// slow link still finishes.
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
    /// Every request but blob uploads: a read timeout of `request_timeout`.
    http: reqwest::Client,
    /// Blob upload sessions: no read timeout, which would count the whole
    /// upload of a body against it; [`Registry::send_body`] times those.
    /// Built on the first upload: a client loads the system's CA roots,
    /// which an export (no uploads) need not pay for twice.
    upload_http: std::sync::OnceLock<reqwest::Client>,
    recipe: ClientRecipe,
    /// Data the link does not acknowledge for this long: the kernel cuts
    /// an upload's connection (the tail of a body, once sent, is otherwise
    /// out of sight).
    upload_unacked: Duration,
    /// The registry answered a referrers request with 404 (or 405): it has
    /// no referrers API (the spec forbids a 404 from one that has), so no
    /// further subject is asked (one request per subject saved).
    no_referrers_api: std::sync::atomic::AtomicBool,
    request_timeout: Duration,
    credential: Option<Credential>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, String>>,
    retry: RetryPolicy,
    chunk_size: Option<usize>,
    low_speed: LowSpeed,
    events: crate::progress::EventsHandle,
}

/// What every HTTP client of one registry is built from.
struct ClientRecipe {
    host: String,
    extra: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
    insecure: bool,
}

impl ClientRecipe {
    fn build(
        &self,
        read_timeout: Option<Duration>,
        unacked: Option<Duration>,
    ) -> Result<reqwest::Client, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(16);
        if let Some(t) = read_timeout {
            builder = builder.read_timeout(t);
        }
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        if let Some(t) = unacked {
            builder = builder.tcp_user_timeout(t);
        }
        #[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
        let _ = unacked;
        if let Some(id) = &self.identity {
            builder = builder.identity(id.clone());
        }
        if !self.extra.is_empty() {
            builder = builder.tls_certs_merge(self.extra.clone());
        }
        if self.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        builder.build().map_err(|e| RegistryError::Tls {
            host: self.host.clone(),
            detail: error_chain(&e),
        })
    }
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
    crate::error::chain_text(std::iter::successors(Some(e), |e| e.source()))
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

/// How long a request waits for its answer unless configured.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// At most this many tags in one repository's list.
const MAX_TAGS: usize = 200_000;

/// The most of an error answer read (the rest is not waited for).
const ERROR_BODY_READ: usize = 64 << 10;
/// The most of an error answer shown: the distribution spec's errors whole
/// up to this, any other body's first [`RAW_EXCERPT`] characters.
const ERROR_TEXT_MAX: usize = 2048;
const RAW_EXCERPT: usize = 300;

/// What an error answer says, for a person: the distribution spec's
/// `{"errors":[{"code","message","detail"}]}` as `CODE: message (detail)`,
/// every error in full up to [`ERROR_TEXT_MAX`] characters (a target's "no
/// space left on device" comes at the end of a long path); any other body's
/// start. `credential` is redacted first, then control characters escaped.
fn error_text(body: &[u8], credential: Option<&Credential>) -> String {
    let (text, max) = match spec_errors(body) {
        Some(t) => (t, ERROR_TEXT_MAX),
        None => (String::from_utf8_lossy(body).into_owned(), RAW_EXCERPT),
    };
    crate::progress::printable_upto(redact(&text, credential).trim(), max)
}

/// The errors of a distribution-spec error body, or `None` for any other body.
fn spec_errors(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<SpecError>,
    }
    #[derive(serde::Deserialize)]
    struct SpecError {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    let doc: Errors = serde_json::from_slice(body).ok()?;
    if doc.errors.is_empty() {
        return None;
    }
    let one = |e: &SpecError| {
        let mut parts = Vec::new();
        parts.extend(e.code.clone().filter(|c| !c.is_empty()));
        parts.extend(e.message.clone().filter(|m| !m.is_empty()));
        let mut s = parts.join(": ");
        let detail = match &e.detail {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(d)) => d.clone(),
            Some(other) => other.to_string(),
        };
        if !detail.is_empty() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&format!("({detail})"));
        }
        s
    };
    Some(doc.errors.iter().map(one).collect::<Vec<_>>().join("; "))
}

/// `Range: 0-<last>` of an upload session (`bytes=` tolerated): `last`.
fn parse_upload_range(value: &str) -> Option<u64> {
    let v = value.trim();
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    let (first, last) = v.split_once('-')?;
    if first.trim() != "0" {
        return None;
    }
    last.trim().parse().ok()
}

/// Blobs at least this large keep their upload session across attempts
/// (smaller ones start over: cheaper than asking where they stand).
const RESUME_MIN: u64 = 1 << 20;
/// The first chunk of a resumed upload (unless `upload_chunk_size`), the
/// smallest and the largest chunk.
const RESUME_CHUNK: u64 = 1 << 20;
const MIN_CHUNK: u64 = 256 << 10;
const MAX_CHUNK: u64 = 64 << 20;
/// Attempts of one blob that moved the registry's offset forward, at most
/// (those that move nothing count against the retry policy).
pub const MAX_PROGRESSING_ATTEMPTS: u32 = 1000;

/// The chunk size of a chunked upload. Unless configured, it starts at
/// 1 MiB and doubles after every [`GROW_AFTER`] chunks in a row the
/// registry took at that size (up to 64 MiB: a healthy link soon sends few,
/// large requests, which matters at satellite round trips), until a chunk
/// fails; from then on it stays at the largest size that passed, and halves
/// when an attempt gets no chunk through (down to 256 KiB): on a link that
/// drops every few megabytes it settles below the drop. A configured size
/// is the ceiling (a proxy may cap request bodies), and only ever halves.
#[derive(Debug)]
struct Chunking {
    size: u64,
    max: u64,
    growing: bool,
    /// Chunks passed in a row at `size`.
    streak: u32,
    largest_passed: u64,
}

const GROW_AFTER: u32 = 4;

/// The most of an upload's body that may still be in socket and link
/// buffers once the last byte left airlock (Linux lets a socket's send
/// buffer grow to 4 MiB; the receiver and the link hold more).
const MAX_TAIL: u64 = 8 << 20;

impl Chunking {
    fn new(configured: Option<usize>) -> Chunking {
        match configured {
            Some(c) => {
                let c = (c as u64).max(1);
                Chunking {
                    size: c,
                    max: c,
                    growing: false,
                    streak: 0,
                    largest_passed: 0,
                }
            }
            None => Chunking {
                size: RESUME_CHUNK,
                max: MAX_CHUNK,
                growing: true,
                streak: 0,
                largest_passed: 0,
            },
        }
    }

    fn passed(&mut self, n: u64) {
        self.largest_passed = self.largest_passed.max(n);
        if n == self.size {
            self.streak += 1;
        }
        if self.growing && self.streak >= GROW_AFTER {
            self.size = (self.size * 2).min(self.max);
            self.streak = 0;
        }
    }

    /// A chunk of `n` bytes failed; `got_through` says whether an earlier
    /// chunk of the same attempt passed.
    fn failed(&mut self, n: u64, got_through: bool) {
        self.growing = false;
        self.streak = 0;
        if self.largest_passed > 0 && n > self.largest_passed {
            self.size = self.largest_passed;
        } else if !got_through {
            self.size = (n / 2).max(MIN_CHUNK.min(self.max));
        }
    }
}

/// One blob's upload across attempts.
struct BlobUpload {
    /// The session a failed attempt left for the next one to continue.
    session: Option<Url>,
    /// Bytes the registry holds in that session (where the next chunk starts).
    offset: u64,
    /// The registry's offset moved forward during the last attempt.
    progressed: bool,
    /// Upload in chunks (configured, or a retry of a large blob).
    chunked: bool,
    chunking: Chunking,
}

/// What a `GET` on an upload session found.
enum SessionState {
    /// Its next location, and how many bytes it holds.
    Holds(Url, u64),
    /// It exists, but holds nothing we can continue (`0-0`, no `Range`).
    Unusable,
    /// The registry no longer knows it.
    Gone,
}

/// The body of a chunked upload, shared by the chunks cut from it.
struct ChunkSource {
    body: BlobBody,
    leftover: Option<Bytes>,
}

impl ChunkSource {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        match self.leftover.take() {
            Some(b) if !b.is_empty() => Some(Ok(b)),
            _ => self.body.next().await,
        }
    }

    /// The next `n` bytes of the shared body, as a stream of their own
    /// (what a chunk's request reads; the rest stays for the next chunk).
    fn take(
        src: Arc<tokio::sync::Mutex<ChunkSource>>,
        n: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold((src, n), |(src, left)| async move {
            if left == 0 {
                return None;
            }
            let item = {
                let mut s = src.lock().await;
                match s.next().await {
                    Some(Ok(mut b)) => {
                        if b.len() as u64 > left {
                            s.leftover = Some(b.split_off(left as usize));
                        }
                        Ok(b)
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(crate::digest::integrity_error(format!(
                        "the blob ended {left} bytes before its size"
                    ))),
                }
            };
            let left = match &item {
                Ok(b) => left - b.len() as u64,
                Err(_) => 0,
            };
            Some((item, (src, left)))
        })
    }
}

/// A blob body that failed to read (its source, or its verifying reader).
fn body_read_failure(e: std::io::Error, what: &str) -> Attempt {
    Attempt::Fatal(
        match e
            .get_ref()
            .and_then(|i| i.downcast_ref::<BlobIntegrityError>())
        {
            Some(i) => RegistryError::Integrity {
                what: what.to_string(),
                detail: i.0.clone(),
            },
            None => RegistryError::Io {
                what: what.to_string(),
                source: e,
            },
        },
    )
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
        let request_timeout = config
            .request_timeout
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT)
            .max(Duration::from_secs(1));
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
        let recipe = ClientRecipe {
            host: host.to_string(),
            extra,
            identity,
            insecure,
        };
        let http = recipe.build(Some(request_timeout), None)?;
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
            upload_http: std::sync::OnceLock::new(),
            recipe,
            upload_unacked: config.low_speed.window.max(Duration::from_secs(1)),
            no_referrers_api: std::sync::atomic::AtomicBool::new(false),
            request_timeout,
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

    /// The client for blob upload sessions (see `upload_http`).
    fn uploads(&self) -> Result<&reqwest::Client, Attempt> {
        if let Some(c) = self.upload_http.get() {
            return Ok(c);
        }
        let built = self
            .recipe
            .build(None, Some(self.upload_unacked))
            .map_err(Attempt::Fatal)?;
        Ok(self.upload_http.get_or_init(|| built))
    }

    /// What an error answer says ([`error_text`]), with our credentials
    /// redacted (a registry may echo the `Authorization` header back). At
    /// most [`ERROR_BODY_READ`] bytes are read, for at most the request timeout.
    async fn excerpt(&self, resp: Response) -> String {
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        let read = async {
            while let Some(Ok(chunk)) = stream.next().await {
                let room = ERROR_BODY_READ - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= ERROR_BODY_READ {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(self.request_timeout, read).await;
        self.excerpt_bytes(&body)
    }

    fn excerpt_bytes(&self, body: &[u8]) -> String {
        error_text(body, self.credential.as_ref())
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
        self.send_once_on(&self.http, scopes, what, build).await
    }

    /// [`Registry::send_once`] on `client`, its answer awaited for at most
    /// the request timeout (the upload client has no read timeout of its own).
    async fn send_once_on(
        &self,
        client: &reqwest::Client,
        scopes: &[String],
        what: &str,
        build: &(dyn Fn(&reqwest::Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Response, Attempt> {
        let mut reauthed = false;
        loop {
            let header = self.auth_header(scopes).await.map_err(Attempt::Fatal)?;
            let mut req = build(client);
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
            let sent = match tokio::time::timeout(self.request_timeout, req.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Err(Attempt::Retry(
                        RegistryError::Timeout {
                            what: what.to_string(),
                            detail: format!("no answer within {}s", self.request_timeout.as_secs()),
                        },
                        None,
                    ))
                }
            };
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
                body: self.excerpt_bytes(&bytes),
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
        use std::sync::atomic::Ordering::Relaxed;
        if self.no_referrers_api.load(Relaxed) {
            return Ok(None);
        }
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
                self.no_referrers_api.store(true, Relaxed);
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
    /// registry) when possible, else upload it from an `open(offset)` body
    /// (see [`Registry::push_absent_blob`]).
    pub async fn push_blob<F, Fut>(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
        open: F,
    ) -> Result<PushOutcome, RegistryError>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<BlobBody, RegistryError>>,
    {
        if self.blob_exists(repo, desc).await? {
            return Ok(PushOutcome::Exists);
        }
        self.push_absent_blob(repo, desc, mount_from, open).await
    }

    /// [`Registry::push_blob`] for a blob the caller just found absent
    /// (one HEAD less per blob: the registry's CPU is the import's limit).
    ///
    /// `open(offset)` gives a new body for each attempt: the blob's bytes
    /// from `offset` on (the bytes before it read and verified, not sent).
    /// The first attempt is one streamed PUT (or PATCH chunks with
    /// `upload_chunk_size`). A failed attempt of a blob of at least 1 MiB
    /// keeps its upload session: the next one asks the registry how much it
    /// holds and continues from there in chunks (a new session when the
    /// registry has forgotten it). Smaller blobs start over. Attempts that
    /// move nothing count against the retry policy; attempts that move the
    /// registry's offset forward reset it (at most
    /// [`MAX_PROGRESSING_ATTEMPTS`] of them).
    pub async fn push_absent_blob<F, Fut>(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
        open: F,
    ) -> Result<PushOutcome, RegistryError>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<BlobBody, RegistryError>>,
    {
        let what = format!("upload of blob {} to {}/{repo}", desc.digest, self.host);
        let mut job = BlobUpload {
            session: None,
            offset: 0,
            progressed: false,
            chunked: self.chunk_size.is_some(),
            chunking: Chunking::new(self.chunk_size),
        };
        let resumable = desc.size >= RESUME_MIN;
        let (mut failures, mut progressing) = (0u32, 0u32);
        loop {
            let result = if job.session.is_some() {
                self.resume_blob(repo, desc, &open, &mut job, &what).await
            } else {
                self.start_blob(repo, desc, mount_from, &open, &mut job, &what)
                    .await
            };
            let (e, ra) = match result {
                Ok(outcome) => return Ok(outcome),
                Err(Attempt::Fatal(e)) => {
                    self.cancel_upload(repo, &mut job, &what).await;
                    return Err(e);
                }
                Err(Attempt::Retry(e, ra)) => (e, ra),
            };
            if resumable {
                // Later attempts continue in chunks, which a failure can cut
                // only one at a time.
                job.chunked = true;
            } else {
                self.cancel_upload(repo, &mut job, &what).await;
            }
            if std::mem::take(&mut job.progressed) {
                failures = 0;
                progressing += 1;
            }
            let give_up = if progressing >= MAX_PROGRESSING_ATTEMPTS {
                Err(e)
            } else {
                self.wait_before_retry(&mut failures, e, ra).await
            };
            if let Err(e) = give_up {
                self.cancel_upload(repo, &mut job, &what).await;
                return Err(e);
            }
        }
    }

    /// A new upload session (mounting from `mount_from` when given), then
    /// the whole blob from its first byte.
    async fn start_blob<F, Fut>(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
        open: &F,
        job: &mut BlobUpload,
        what: &str,
    ) -> Result<PushOutcome, Attempt>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<BlobBody, RegistryError>>,
    {
        let Some(location) = self.open_session(repo, desc, mount_from, what).await? else {
            return Ok(PushOutcome::Mounted);
        };
        job.session = Some(location.clone());
        job.offset = 0;
        let body = open(0).await.map_err(Attempt::Fatal)?;
        if job.chunked {
            self.upload_chunks(repo, desc, job, body, what).await?;
        } else {
            self.upload_monolithic(repo, desc, &location, body, what)
                .await?;
        }
        Ok(PushOutcome::Uploaded)
    }

    /// `POST /blobs/uploads/`: the new session's location, or `None` when
    /// the registry mounted the blob instead.
    async fn open_session(
        &self,
        repo: &str,
        desc: &Descriptor,
        mount_from: Option<&str>,
        what: &str,
    ) -> Result<Option<Url>, Attempt> {
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
            .send_once_on(self.uploads()?, &scopes, what, &|c| {
                c.post(start.clone()).header(CONTENT_LENGTH, 0)
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::CREATED && mount_from.is_some() {
            self.confirm_stored(repo, resp.headers(), desc, what)
                .await?;
            return Ok(None);
        }
        if status != StatusCode::ACCEPTED {
            return Err(Attempt::Fatal(RegistryError::Status {
                what: what.to_string(),
                status: status.as_u16(),
                body: self.excerpt(resp).await,
            }));
        }
        // 202: an upload session, also the answer to a mount the registry declined.
        self.location(&resp, what).map(Some).map_err(Attempt::Fatal)
    }

    /// Continue the session a failed attempt left: ask the registry how
    /// much it holds, then send the rest in chunks. A session the registry
    /// no longer knows (or holds nothing of) is replaced by a new one.
    async fn resume_blob<F, Fut>(
        &self,
        repo: &str,
        desc: &Descriptor,
        open: &F,
        job: &mut BlobUpload,
        what: &str,
    ) -> Result<PushOutcome, Attempt>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<BlobBody, RegistryError>>,
    {
        let Some(location) = job.session.clone() else {
            return Err(Attempt::Fatal(RegistryError::Protocol {
                what: what.to_string(),
                detail: "no upload session to resume".into(),
            }));
        };
        match self.upload_status(repo, &location, what).await? {
            SessionState::Holds(url, held) if held <= desc.size => {
                if held > job.offset {
                    job.progressed = true;
                }
                job.session = Some(url);
                job.offset = held;
                self.events.0.note(&format!(
                    "{what}: the registry holds {held} of {} bytes, continuing from there",
                    desc.size
                ));
            }
            state => {
                if matches!(state, SessionState::Gone) {
                    // The last attempt's closing PUT may have gone through
                    // with its answer lost: then the blob is there.
                    job.session = None;
                    if self
                        .blob_exists(repo, desc)
                        .await
                        .map_err(|e| Attempt::Retry(e, None))?
                    {
                        return Ok(PushOutcome::Uploaded);
                    }
                } else {
                    // Nothing (or nothing we can use) in it: free it.
                    self.cancel_upload(repo, job, what).await;
                }
                job.session = None;
                job.offset = 0;
                let Some(url) = self.open_session(repo, desc, None, what).await? else {
                    return Ok(PushOutcome::Mounted);
                };
                job.session = Some(url);
            }
        }
        let body = open(job.offset).await.map_err(Attempt::Fatal)?;
        self.upload_chunks(repo, desc, job, body, what).await?;
        Ok(PushOutcome::Uploaded)
    }

    /// `GET` on an upload session (distribution spec): 204 with
    /// `Range: 0-<last byte held>` and the session's next location.
    async fn upload_status(
        &self,
        repo: &str,
        location: &Url,
        what: &str,
    ) -> Result<SessionState, Attempt> {
        let resp = self
            .send_once_on(self.uploads()?, &[scope_push(repo)], what, &|c| {
                c.get(location.clone())
            })
            .await?;
        if !resp.status().is_success() {
            // 404 (distribution: unknown, or invalid after a cut request),
            // 416 (the offset it holds is not the one it last told us), …
            return Ok(SessionState::Gone);
        }
        let next = self
            .location(&resp, what)
            .unwrap_or_else(|_| location.clone());
        // `0-0` is what distribution says for an empty session (and what
        // one holding a single byte would say): start afresh.
        Ok(
            match resp
                .headers()
                .get("range")
                .and_then(|h| h.to_str().ok())
                .and_then(parse_upload_range)
            {
                Some(end) if end > 0 => SessionState::Holds(next, end + 1),
                _ => SessionState::Unusable,
            },
        )
    }

    /// Free the session the registry holds for us (best effort).
    async fn cancel_upload(&self, repo: &str, job: &mut BlobUpload, what: &str) {
        if let (Some(loc), Ok(client)) = (job.session.take(), self.uploads()) {
            let _ = self
                .send_once_on(client, &[scope_push(repo)], what, &|c| {
                    c.delete(loc.clone())
                })
                .await;
        }
        job.offset = 0;
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
            // The kernel cut a connection whose data the link did not
            // acknowledge for the low-speed window (TCP_USER_TIMEOUT).
            None if std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |c| {
                c.source()
            })
            .any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            }) =>
            {
                Attempt::Retry(
                    RegistryError::Stalled {
                        what: what.to_string(),
                        detail: format!(
                            "the link acknowledged nothing sent for {}s",
                            self.low_speed.window.as_secs()
                        ),
                    },
                    None,
                )
            }
            // The upload's URL (a long session token) says less than `what`.
            None => Attempt::Retry(
                match self.transport_error(e) {
                    RegistryError::Connect { host, detail } => RegistryError::Connect {
                        host,
                        detail: format!(
                            "{what}: {}",
                            match e.url() {
                                Some(u) => detail.replace(&format!(" for url ({u})"), ""),
                                None => detail,
                            }
                        ),
                    },
                    other => other,
                },
                None,
            ),
        }
    }

    async fn finish_upload(
        &self,
        repo: &str,
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
        self.confirm_stored(repo, resp.headers(), desc, what).await
    }

    /// A 201 to an upload or a mount is confirmed when it names the
    /// digest (the registry hashed what it received, or linked that
    /// digest); one that does not is read back (HEAD, with the size). A
    /// registry that says "created" without keeping the blob is caught
    /// before anything refers to it, at no extra request where the answer
    /// is complete (distribution, and most registries, name the digest).
    async fn confirm_stored(
        &self,
        repo: &str,
        headers: &HeaderMap,
        desc: &Descriptor,
        what: &str,
    ) -> Result<(), Attempt> {
        match content_digest(headers) {
            Some(got) if got == desc.digest => Ok(()),
            Some(got) => Err(Attempt::Fatal(RegistryError::DigestMismatch {
                what: what.to_string(),
                expected: desc.digest.clone(),
                actual: got,
            })),
            None => match self.blob_exists(repo, desc).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Attempt::Fatal(RegistryError::Protocol {
                    what: what.to_string(),
                    detail: format!(
                        "the registry answered 201 but does not have the blob (or not with its size {}); check its storage",
                        desc.size
                    ),
                })),
                Err(e) => Err(Attempt::Retry(e, None)),
            },
        }
    }

    /// A request carrying (part of) a blob: no total timeout. While the
    /// body moves, the low-speed rule (fewer than `bytes_per_sec × window`
    /// bytes taken in a window is a stall, as for downloads). Once the
    /// last byte is handed to the network, up to [`MAX_TAIL`] bytes of it may
    /// still sit in socket and link buffers: the answer is awaited for the
    /// time those take at the rate the body last moved (at least the
    /// low-speed limit), plus the request timeout; meanwhile a link that
    /// acknowledges nothing for the low-speed window is cut by the kernel
    /// (`TCP_USER_TIMEOUT`). A 401 (a token that expired during a long
    /// upload) drops the token and is retried.
    async fn send_body<S>(
        &self,
        repo: &str,
        req: RequestBuilder,
        body: S,
        len: u64,
        what: &str,
    ) -> Result<Response, Attempt>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let scopes = [scope_push(repo)];
        let header = self.auth_header(&scopes).await.map_err(Attempt::Fatal)?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let body = body.inspect(move |item| {
            if let Ok(b) = item {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        });
        // Method and URL only (taken before the body, which cannot be cloned).
        let logged = crate::progress::verbose().then(|| {
            req.try_clone()
                .and_then(|r| r.build().ok())
                .map(|r| format!("{} {}", r.method(), r.url()))
                .unwrap_or_else(|| "upload".into())
        });
        let mut req = req
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(h) = header {
            req = req.header(AUTHORIZATION, h);
        }
        let started = tokio::time::Instant::now();
        let limit = self.low_speed;
        let floor = limit.bytes_per_sec * limit.window.as_secs().max(1);
        let (mut window_start, mut window_sent) = (started, 0u64);
        let mut rate = limit.bytes_per_sec.max(1);
        let mut answer_by: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
        let mut tick = tokio::time::interval(limit.window.min(Duration::from_millis(250)));
        let send = req.send();
        tokio::pin!(send);
        let outcome = loop {
            tokio::select! {
                r = &mut send => break Ok(r),
                now = tick.tick() => {
                    let n = sent.load(Ordering::Relaxed);
                    if n >= len {
                        let tail = Duration::from_secs_f64(len.min(MAX_TAIL) as f64 / rate as f64);
                        let (at, by) = *answer_by.get_or_insert((now, now + tail + self.request_timeout));
                        if now >= by {
                            break Err(RegistryError::Timeout {
                                what: what.to_string(),
                                detail: format!(
                                    "no answer {}s after the last of {len} bytes was sent",
                                    (now - at).as_secs()
                                ),
                            });
                        }
                    } else if now - window_start >= limit.window {
                        let moved = n - window_sent;
                        if moved < floor {
                            break Err(RegistryError::Stalled {
                                what: what.to_string(),
                                detail: format!(
                                    "{moved} bytes sent in the last {}s (at least {} B/s expected); {n} of {len} bytes sent",
                                    limit.window.as_secs(),
                                    limit.bytes_per_sec
                                ),
                            });
                        }
                        rate = rate.max(moved / limit.window.as_secs().max(1));
                        (window_start, window_sent) = (now, n);
                    }
                }
            }
        };
        if let Some(line) = logged {
            let status = match &outcome {
                Ok(Ok(r)) => r.status().as_u16().to_string(),
                _ => "failed".into(),
            };
            self.events.0.note(&format!(
                "{line} -> {status} ({} ms, {} bytes sent)",
                started.elapsed().as_millis(),
                sent.load(Ordering::Relaxed)
            ));
        }
        let resp = match outcome {
            Err(e) => return Err(Attempt::Retry(e, None)),
            Ok(sent) => sent.map_err(|e| self.body_failure(&e, what))?,
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.tokens.lock().await.remove(&scopes.join(" "));
            let body = self.excerpt(resp).await;
            return Err(Attempt::Retry(
                RegistryError::Auth {
                    host: self.host.clone(),
                    scope: scopes.join(" "),
                    detail: format!("{what}: 401 {body}"),
                },
                None,
            ));
        }
        Ok(resp)
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
        let req = self.uploads()?.put(url);
        let resp = self.send_body(repo, req, body, desc.size, what).await?;
        self.finish_upload(repo, resp, desc, what).await
    }

    /// PATCH the blob from `job.offset` (where `body` starts) in chunks,
    /// each streamed from `body` (one chunk's bytes are never held in
    /// memory), then the closing PUT. `job` follows the registry: its
    /// location and the bytes it confirmed.
    async fn upload_chunks(
        &self,
        repo: &str,
        desc: &Descriptor,
        job: &mut BlobUpload,
        body: BlobBody,
        what: &str,
    ) -> Result<(), Attempt> {
        let body = Arc::new(tokio::sync::Mutex::new(ChunkSource {
            body,
            leftover: None,
        }));
        let mut confirmed_here = false;
        while job.offset < desc.size {
            let Some(location) = job.session.clone() else {
                break;
            };
            let n = job.chunking.size.min(desc.size - job.offset);
            let end = job.offset + n - 1;
            let req = self
                .uploads()?
                .patch(location)
                .header("content-range", format!("{}-{end}", job.offset));
            let part = ChunkSource::take(body.clone(), n);
            let resp = match self.send_body(repo, req, part, n, what).await {
                Ok(r) => r,
                Err(e) => {
                    if let Attempt::Retry(..) = e {
                        job.chunking.failed(n, confirmed_here);
                    }
                    return Err(e);
                }
            };
            let status = resp.status();
            if status != StatusCode::ACCEPTED {
                let ra = retry_after(resp.headers());
                let err = RegistryError::Status {
                    what: what.to_string(),
                    status: status.as_u16(),
                    body: self.excerpt(resp).await,
                };
                // A server error, or a session out of step (404, 416): the
                // next attempt asks the registry where it stands.
                return Err(
                    if status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::NOT_FOUND
                        || status == StatusCode::RANGE_NOT_SATISFIABLE
                    {
                        job.chunking.failed(n, confirmed_here);
                        Attempt::Retry(err, ra)
                    } else {
                        Attempt::Fatal(err)
                    },
                );
            }
            let next = self.location(&resp, what).map_err(Attempt::Fatal)?;
            // The registry's own count, when it gives one, is the truth.
            let held = resp
                .headers()
                .get("range")
                .and_then(|h| h.to_str().ok())
                .and_then(parse_upload_range)
                .map_or(end + 1, |last| last + 1);
            job.session = Some(next);
            if held != end + 1 {
                return Err(Attempt::Retry(
                    RegistryError::Protocol {
                        what: what.to_string(),
                        detail: format!(
                            "the registry holds {held} bytes after a chunk ending at byte {end}"
                        ),
                    },
                    None,
                ));
            }
            job.offset = held;
            job.progressed = true;
            confirmed_here = true;
            job.chunking.passed(n);
        }
        // Every byte was sent: the body must end here, and its end is the
        // verifying reader's proof (its last bytes were held back until then).
        match body.lock().await.next().await {
            None => {}
            Some(Err(e)) => return Err(body_read_failure(e, what)),
            Some(Ok(_)) => {
                return Err(Attempt::Fatal(RegistryError::Integrity {
                    what: what.to_string(),
                    detail: format!("the blob is longer than its {} bytes", desc.size),
                }))
            }
        }
        let Some(location) = job.session.clone() else {
            return Err(Attempt::Fatal(RegistryError::Protocol {
                what: what.to_string(),
                detail: "no upload session".into(),
            }));
        };
        let mut url = location;
        url.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let resp = self
            .send_once_on(self.uploads()?, &[scope_push(repo)], what, &|c| {
                c.put(url.clone()).header(CONTENT_LENGTH, 0)
            })
            .await?;
        self.finish_upload(repo, resp, desc, what).await
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
    fn spec_errors_are_shown_whole_and_bounded() {
        let long = format!(
            "filesystem: write /var/lib/registry/{}/data: no space left on device",
            "x".repeat(400)
        );
        let body = serde_json::json!({"errors": [
            {"code": "UNKNOWN", "message": "unknown error", "detail": long},
            {"code": "DENIED", "message": "nope", "detail": {"why": ["a"]}},
            {"code": "UNSUPPORTED", "detail": null},
        ]})
        .to_string();
        assert_eq!(
            error_text(body.as_bytes(), None),
            format!(
                "UNKNOWN: unknown error ({long}); DENIED: nope ({{\"why\":[\"a\"]}}); UNSUPPORTED"
            )
        );
        // Bounded, with what was left out counted.
        let huge = serde_json::json!({"errors": [{"code": "X", "message": "m".repeat(10_000)}]});
        let text = error_text(huge.to_string().as_bytes(), None);
        assert!(text.chars().count() < ERROR_TEXT_MAX + 40, "{}", text.len());
        assert!(text.ends_with("more bytes)"), "{text}");
        // Any other body: its start, escaped; credentials redacted first.
        let cred = Credential::Basic {
            username: "u".into(),
            password: "hunter22".into(),
        };
        let html = format!("<html>\u{1b}[31m {} hunter22", "y".repeat(500));
        let text = error_text(html.as_bytes(), Some(&cred));
        assert!(text.starts_with("<html>\\u{1b}[31m"), "{text}");
        assert!(text.chars().count() < RAW_EXCERPT + 40);
        let text = error_text(
            b"{\"errors\":[{\"message\":\"hunter22 \\n x\"}]}",
            Some(&cred),
        );
        assert_eq!(text, "<redacted> \\n x");
    }

    #[test]
    fn upload_ranges() {
        assert_eq!(parse_upload_range("0-1048575"), Some(1048575));
        assert_eq!(parse_upload_range("bytes=0-9"), Some(9));
        assert_eq!(parse_upload_range("0-0"), Some(0));
        assert_eq!(parse_upload_range("5-9"), None);
        assert_eq!(parse_upload_range("0-"), None);
        assert_eq!(parse_upload_range("junk"), None);
    }

    #[test]
    fn chunks_grow_on_a_healthy_link_and_settle_below_a_flaky_one() {
        let mut c = Chunking::new(None);
        assert_eq!(c.size, RESUME_CHUNK);
        for _ in 0..GROW_AFTER {
            c.passed(c.size);
        }
        assert_eq!(c.size, 2 * RESUME_CHUNK);
        for _ in 0..64 {
            c.passed(c.size);
        }
        assert_eq!(c.size, MAX_CHUNK, "never above the ceiling");
        // A larger chunk than any that passed fails: back to the largest
        // that passed, and no more growth.
        let mut c = Chunking::new(None);
        for _ in 0..GROW_AFTER {
            c.passed(c.size);
        }
        c.failed(c.size, true);
        assert_eq!(c.size, RESUME_CHUNK);
        for _ in 0..10 {
            c.passed(c.size);
        }
        assert_eq!(c.size, RESUME_CHUNK);
        // An attempt that gets nothing through halves, down to the floor.
        let mut c = Chunking::new(None);
        for _ in 0..10 {
            c.failed(c.size, false);
        }
        assert_eq!(c.size, MIN_CHUNK);
        // A configured size is the ceiling.
        let mut c = Chunking::new(Some(100_000));
        c.passed(100_000);
        c.passed(100_000);
        c.passed(100_000);
        c.passed(100_000);
        assert_eq!(c.size, 100_000);
        c.failed(100_000, false);
        assert_eq!(c.size, 100_000, "a configured size below the floor stays");
    }

    #[tokio::test]
    async fn chunks_cut_from_one_body_add_up_to_it() {
        let parts: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abcde")),
            Ok(Bytes::from_static(b"fg")),
            Ok(Bytes::from_static(b"hijklmn")),
        ];
        let body: BlobBody = Box::pin(futures_util::stream::iter(parts));
        let src = Arc::new(tokio::sync::Mutex::new(ChunkSource {
            body,
            leftover: None,
        }));
        let mut got = Vec::new();
        for n in [3u64, 5, 6] {
            let chunk: Vec<Bytes> = ChunkSource::take(src.clone(), n)
                .map(|r| r.unwrap())
                .collect()
                .await;
            got.push(chunk.concat());
        }
        assert_eq!(got, [&b"abc"[..], b"defgh", b"ijklmn"]);
        assert!(src.lock().await.next().await.is_none());
        // A body shorter than its chunk: an integrity error, not a short request.
        let body: BlobBody = Box::pin(futures_util::stream::iter(vec![Ok(Bytes::from_static(
            b"ab",
        ))]));
        let src = Arc::new(tokio::sync::Mutex::new(ChunkSource {
            body,
            leftover: None,
        }));
        let items: Vec<_> = ChunkSource::take(src, 4).collect().await;
        let err = items.last().unwrap().as_ref().unwrap_err();
        assert!(crate::digest::is_integrity_error(err), "{err}");
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
