//! `airlock serve`: bundles (or volume sets) as a read-only OCI registry,
//! straight from the compressed files. A served bundle is a random-access
//! bundle source behind an HTTP front end: `content.rs` loads and checks
//! it the way every command reads a bundle, `api.rs` answers the
//! distribution API, this module listens (plain or TLS, optional basic
//! auth from an htpasswd file) and logs every request.

mod api;
mod auth;
pub mod content;

pub use content::{Content, VerifyMode};

use crate::error::{Error, Result};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Called once per request with its log line.
pub type RequestLogger = Arc<dyn Fn(&RequestLog) + Send + Sync>;

#[derive(Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Certificate chain and private key (PEM) for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// bcrypt htpasswd file (`htpasswd -B`): basic auth on every request.
    pub htpasswd: Option<PathBuf>,
    /// Request log lines (one per request); `None` logs nothing.
    pub log: Option<RequestLogger>,
}

/// One request, as logged.
#[derive(Debug, serde::Serialize)]
pub struct RequestLog {
    pub remote: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Bytes the answer declares (the body may be cut short on a mismatch).
    pub bytes: u64,
    pub ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A listening server: its address (useful with port 0) and the loop.
pub struct Server {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    content: Arc<Content>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Option<Arc<auth::Htpasswd>>,
    log: Option<RequestLogger>,
}

/// Bind the address and read the TLS and auth files (so a bad file fails
/// before anything is served).
pub async fn bind(content: Content, opts: &ServeOptions) -> Result<Server> {
    let tls = opts
        .tls
        .as_ref()
        .map(|(cert, key)| auth::tls_acceptor(cert, key))
        .transpose()?;
    let auth = opts
        .htpasswd
        .as_ref()
        .map(|p| auth::Htpasswd::load(p).map(Arc::new))
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(Error::io(format!("listen on {}", opts.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io(format!("listen on {}", opts.listen)))?;
    Ok(Server {
        addr,
        listener,
        content: Arc::new(content),
        tls,
        auth,
        log: opts.log.clone(),
    })
}

impl Server {
    /// Answer until `shutdown` completes; then stop accepting and return.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, remote) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue, // a connection that failed before it began
                },
            };
            let content = self.content.clone();
            let auth = self.auth.clone();
            let log = self.log.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let content = content.clone();
                    let auth = auth.clone();
                    let log = log.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            answer(content, auth, log, remote, req).await,
                        )
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), service).await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    }
}

async fn answer(
    content: Arc<Content>,
    auth: Option<Arc<auth::Htpasswd>>,
    log: Option<RequestLogger>,
    remote: SocketAddr,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<api::Body> {
    let started = Instant::now();
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let user = match &auth {
        Some(a) => match a
            .check(req.headers().get(hyper::header::AUTHORIZATION))
            .await
        {
            Some(u) => Some(u),
            None => {
                let mut r = api::error(
                    hyper::StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "authentication required",
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Basic realm=\"airlock\""),
                );
                finish_log(&log, remote, &method, &path, &r, started, None);
                return r;
            }
        },
        None => None,
    };
    let r = api::handle(content, req).await;
    finish_log(&log, remote, &method, &path, &r, started, user);
    r
}

fn finish_log(
    log: &Option<RequestLogger>,
    remote: SocketAddr,
    method: &str,
    path: &str,
    r: &hyper::Response<api::Body>,
    started: Instant,
    user: Option<String>,
) {
    let Some(log) = log else { return };
    let bytes = r
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    log(&RequestLog {
        remote: remote.to_string(),
        method: method.to_string(),
        path: crate::progress::printable(path),
        status: r.status().as_u16(),
        bytes,
        ms: started.elapsed().as_millis() as u64,
        user,
    });
}
