//! The OCI distribution read API over [`Content`]: `/v2/`, manifests and
//! blobs (GET, HEAD, `Range`), tag lists and the catalog (with `n`/`last`
//! pagination), the referrers API; every write answered "unsupported".
//! Errors carry the spec's JSON shape and codes.

use super::content::Content;
use crate::digest::Digest;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::io::Read;
use std::sync::Arc;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Bytes read from the bundle per body frame.
const CHUNK: usize = 256 << 10;
/// Frames queued per response: a slow client holds at most this much.
const QUEUE: usize = 4;
/// Page size of tag lists and the catalog when the client gives none.
const DEFAULT_PAGE: usize = 1000;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// An error in the spec's shape: `{"errors":[{"code","message","detail"}]}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn json(value: &serde_json::Value, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// What a request asks for, from its path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Referrers(&'a str, &'a str),
    Upload(&'a str),
    Unknown,
}

/// `/v2/<name>/(manifests|blobs|tags|referrers)/…`: the name may hold
/// slashes, so the route is found from the right.
fn route(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return if path == "/v2" {
            Route::Base
        } else {
            Route::Unknown
        };
    };
    if rest.is_empty() {
        return Route::Base;
    }
    if rest == "_catalog" {
        return Route::Catalog;
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags(name);
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads/") {
        return Route::Upload(name);
    }
    let split = |sep: &str| -> Option<(&str, &str)> {
        let i = rest.rfind(sep)?;
        let (name, reference) = (&rest[..i], &rest[i + sep.len()..]);
        (!name.is_empty() && !reference.is_empty() && !reference.contains('/'))
            .then_some((name, reference))
    };
    if let Some((name, r)) = split("/manifests/") {
        return Route::Manifest(name, r);
    }
    if let Some((name, _)) = split("/blobs/uploads/") {
        return Route::Upload(name);
    }
    if let Some((name, r)) = split("/blobs/") {
        return Route::Blob(name, r);
    }
    if let Some((name, r)) = split("/referrers/") {
        return Route::Referrers(name, r);
    }
    Route::Unknown
}

fn query(req: &Request<hyper::body::Incoming>, key: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    })
}

/// One answer; `head` drops the body but keeps the headers.
pub async fn handle(content: Arc<Content>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let head = method == Method::HEAD;
    if method != Method::GET && method != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this registry is a read-only bundle served by airlock: nothing can be written",
        );
    }
    let path = req.uri().path().to_string();
    let mut resp = match route(&path) {
        Route::Base => json(&serde_json::json!({}), "application/json"),
        Route::Catalog => catalog(&content, &req),
        Route::Tags(name) => tags(&content, name, &req),
        Route::Manifest(name, reference) => manifest(&content, name, reference),
        Route::Blob(name, digest) => blob(content.clone(), name, digest, &req, head).await,
        Route::Referrers(name, digest) => referrers(&content, name, digest, &req),
        Route::Upload(_) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "uploads are not supported: this registry is read-only",
        ),
        Route::Unknown => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"),
    };
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    if head {
        let (mut parts, _) = resp.into_parts();
        // A HEAD answer says the length of what a GET would send.
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        return Response::from_parts(parts, empty());
    }
    resp
}

/// `n` and `last` over a sorted list, with the `Link` to the next page.
fn page<'a>(
    items: impl Iterator<Item = &'a String>,
    req: &Request<hyper::body::Incoming>,
    link_path: &str,
) -> (Vec<String>, Option<String>) {
    let n = query(req, "n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(DEFAULT_PAGE)
        .min(10_000);
    let last = query(req, "last");
    let mut rest = items.filter(|t| last.as_ref().is_none_or(|l| t.as_str() > l.as_str()));
    let out: Vec<String> = rest.by_ref().take(n).cloned().collect();
    let next = match (out.last(), rest.next()) {
        (Some(l), Some(_)) if n > 0 => Some(format!(
            "<{link_path}?n={n}&last={}>; rel=\"next\"",
            url::form_urlencoded::byte_serialize(l.as_bytes()).collect::<String>()
        )),
        _ => None,
    };
    (out, next)
}

fn with_link(mut r: Response<Body>, link: Option<String>) -> Response<Body> {
    if let Some(l) = link {
        r.headers_mut().insert(header::LINK, header_value(&l));
    }
    r
}

fn catalog(content: &Content, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let (repos, link) = page(content.repos.keys(), req, "/v2/_catalog");
    with_link(
        json(
            &serde_json::json!({ "repositories": repos }),
            "application/json",
        ),
        link,
    )
}

fn name_unknown(name: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        &format!("repository {name:?} is not served"),
    )
}

fn tags(content: &Content, name: &str, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let Some(repo) = content.repos.get(name) else {
        return name_unknown(name);
    };
    let (tags, link) = page(repo.tags.keys(), req, &format!("/v2/{name}/tags/list"));
    with_link(
        json(
            &serde_json::json!({ "name": name, "tags": tags }),
            "application/json",
        ),
        link,
    )
}

fn manifest(content: &Content, name: &str, reference: &str) -> Response<Body> {
    let Some(repo) = content.repos.get(name) else {
        return name_unknown(name);
    };
    let digest = match reference.parse::<Digest>() {
        Ok(d) => Some(d).filter(|d| repo.manifests.contains(d)),
        Err(_) => repo.tags.get(reference).cloned(),
    };
    let Some(m) = digest.and_then(|d| content.manifests.get(&d)) else {
        return error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("{name}:{reference} is not served"),
        );
    };
    // The bytes as they are in the bundle, with the type they were pushed
    // with: the digest a client computes is the vendor's.
    let mut r = Response::new(full(m.bytes.clone()));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&m.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    h.insert("Docker-Content-Digest", header_value(&m.digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{}\"", m.digest)));
    r
}

fn referrers(
    content: &Content,
    name: &str,
    digest: &str,
    req: &Request<hyper::body::Incoming>,
) -> Response<Body> {
    let Some(repo) = content.repos.get(name) else {
        return name_unknown(name);
    };
    let Ok(subject) = digest.parse::<Digest>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            &format!("{digest:?} is not a digest"),
        );
    };
    let filter = query(req, "artifactType");
    let manifests: Vec<&serde_json::Value> = repo
        .referrers
        .get(&subject)
        .into_iter()
        .flatten()
        .filter(|d| {
            filter
                .as_deref()
                .is_none_or(|f| d.get("artifactType").and_then(|t| t.as_str()) == Some(f))
        })
        .collect();
    let mut r = json(
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::OCI_INDEX,
            "manifests": manifests,
        }),
        crate::oci::OCI_INDEX,
    );
    if filter.is_some() {
        r.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    r
}

/// `bytes=START-END` or `bytes=START-` (one range; multi-range is refused).
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.checked_sub(n.min(size))?, size.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, size.checked_sub(1)?),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    (start <= end && end < size).then_some((start, end))
}

async fn blob(
    content: Arc<Content>,
    name: &str,
    digest: &str,
    req: &Request<hyper::body::Incoming>,
    head: bool,
) -> Response<Body> {
    let Some(repo) = content.repos.get(name) else {
        return name_unknown(name);
    };
    let d = match digest.parse::<Digest>() {
        Ok(d) if repo.blobs.contains(&d) || repo.manifests.contains(&d) => d,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                &format!("blob {digest} is not served in {name}"),
            )
        }
    };
    let size = match content.blob_size(&d) {
        Some(s) => s,
        None => match content.manifests.get(&d) {
            Some(m) => {
                // A manifest asked for as a blob: its bytes, from memory.
                let mut r = Response::new(full(m.bytes.clone()));
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
                r.headers_mut()
                    .insert("Docker-Content-Digest", header_value(&d.to_string()));
                return r;
            }
            None => return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob is not served"),
        },
    };
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, size));
    let mut r = match range {
        Some(None) => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                "unsatisfiable or multiple ranges",
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            return r;
        }
        Some(Some((start, end))) if !head => {
            ranged(content.clone(), d.clone(), start, end, size).await
        }
        Some(Some((start, end))) => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{size}")),
            );
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            r
        }
        None if head => {
            let mut r = Response::new(empty());
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            r
        }
        None => whole(content.clone(), d.clone(), size),
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("Docker-Content-Digest", header_value(&d.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, header_value(&format!("\"{d}\"")));
    r
}

/// The whole blob, streamed from the bundle and hashed on the way. The last
/// chunk is held back until the digest is proven: a bad blob is never
/// delivered complete (the connection is cut instead).
fn whole(content: Arc<Content>, digest: Digest, size: u64) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut reader = match content.open_blob(&digest) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        let mut held: Option<Bytes> = None;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => {
                    content.mark_verified(&digest);
                    if let Some(last) = held.take() {
                        let _ = tx.blocking_send(Ok(Frame::data(last)));
                    }
                    return;
                }
                Ok(n) => {
                    if let Some(prev) = held.replace(Bytes::copy_from_slice(&buf[..n])) {
                        if tx.blocking_send(Ok(Frame::data(prev))).is_err() {
                            return; // the client went away
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let stream = tokio_stream_from(rx);
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    r
}

/// A range: the blob is verified whole first (once), then the range is
/// read from the frame that holds its start.
async fn ranged(
    content: Arc<Content>,
    digest: Digest,
    start: u64,
    end: u64,
    size: u64,
) -> Response<Body> {
    if !content.is_verified(&digest) {
        let c = content.clone();
        let d = digest.clone();
        let checked = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut r = c
                .open_blob(&d)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            std::io::copy(&mut r, &mut std::io::sink())?;
            c.mark_verified(&d);
            Ok(())
        })
        .await;
        if !matches!(checked, Ok(Ok(()))) {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "BLOB_UNKNOWN",
                &format!("blob {digest} does not match its digest in the bundle: not served"),
            );
        }
    }
    let len = end - start + 1;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut reader = match content.open_range(&digest, start, len) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n]))))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut r = Response::new(StreamBody::new(tokio_stream_from(rx)).boxed());
    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    r.headers_mut().insert(
        header::CONTENT_RANGE,
        header_value(&format!("bytes {start}-{end}/{size}")),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_from_the_right() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(route("/v2/_catalog"), Route::Catalog);
        assert_eq!(route("/v2/a/b/c/tags/list"), Route::Tags("a/b/c"));
        assert_eq!(
            route("/v2/vendor/manifests/manifests/1.0"),
            Route::Manifest("vendor/manifests", "1.0")
        );
        assert_eq!(
            route("/v2/x/blobs/sha256:ab"),
            Route::Blob("x", "sha256:ab")
        );
        assert_eq!(route("/v2/x/blobs/uploads/"), Route::Upload("x"));
        assert_eq!(route("/v2/x/blobs/uploads/123"), Route::Upload("x"));
        assert_eq!(
            route("/v2/x/referrers/sha256:ab"),
            Route::Referrers("x", "sha256:ab")
        );
        assert_eq!(route("/v3/x"), Route::Unknown);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
