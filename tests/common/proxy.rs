//! A fault-injecting HTTP/1.1 proxy in front of a real registry. Each
//! request gets its own upstream connection (`Connection: close`), so every
//! request can be matched against the rules: answer with a status (5xx,
//! 429 with Retry-After), drop the connection, forward the request and
//! cut the response body in half, answer 200 with a body of its own, or
//! hold the request until the test releases it (to catch an export in the
//! middle), cut or slow down an upload's body. Every request is logged
//! (`requests`, with its `Range` header), and the bytes of upload bodies the
//! link carried are counted (`uploaded`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16, Option<u64>),
    Drop,
    Truncate,
    /// 200 with this content type and body, in place of the registry's answer.
    Respond(&'static str, Vec<u8>),
    /// Hold the request until [`Proxy::release`], then forward it.
    Stall,
    /// Forward, but send the response at this many bytes per second.
    Trickle(u64),
    /// Answer 500 with the request's `Authorization` header in the body.
    EchoAuth,
    /// A tag list page that always points to itself (`Link` to the same URL).
    EndlessTags,
    /// 401 with a Basic challenge (so the client sends its credentials next).
    Challenge,
    /// This status with this JSON body, in place of the registry's answer.
    Answer(u16, String),
    /// The link dies once it carried `after` bytes of an upload's body (the
    /// next byte is never carried): counted per request (`shared: false`,
    /// every connection carries at most `after` bytes), or over every
    /// request the rule matches (`shared: true`: it dies each time `after`
    /// more bytes went up, wherever in a request that falls). `buffered`:
    /// the registry's front holds a request until its body is whole (nginx's
    /// default, `proxy_request_buffering on`), so a cut request never reaches
    /// the registry; otherwise the registry gets the bytes that came, as a
    /// bare registry on the link would.
    Cut {
        after: u64,
        shared: bool,
        buffered: bool,
    },
    /// An upload's body read at this many bytes per second (a slow uplink).
    SlowUpload(u64),
    /// An upload's body read up to `after` bytes, then no more, the
    /// connection held open (a link that stalls).
    StallUpload {
        after: u64,
    },
    /// The request's body read whole, then "201 Created" (naming this
    /// digest, or none) in place of the registry's answer, which never
    /// sees the request: a registry that says "created" and keeps nothing.
    Created(Option<String>),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    pub path_contains: String,
    pub fault: Fault,
    /// How many matching requests to fail (usize::MAX = all).
    pub times: usize,
}

pub struct Proxy {
    pub host: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    pub injected: Arc<Mutex<Vec<String>>>,
    /// `METHOD PATH` of every request, in arrival order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Bytes of upload bodies (PUT/PATCH to `/blobs/uploads/`) the link
    /// carried from the client, whether or not the registry got them.
    pub uploaded: Arc<AtomicU64>,
    /// `Content-Range` of every upload PATCH, in arrival order.
    pub ranges: Arc<Mutex<Vec<String>>>,
    released: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: &str, rules: Vec<Rule>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let rules = Arc::new(Mutex::new(rules));
        let injected = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (released, release_rx) = tokio::sync::watch::channel(false);
        let uploaded = Arc::new(AtomicU64::new(0));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let log = Log {
            injected: injected.clone(),
            requests: requests.clone(),
            released: release_rx,
            uploaded: uploaded.clone(),
            ranges: ranges.clone(),
            link: Arc::new(AtomicU64::new(0)),
        };
        let (r, up) = (rules.clone(), upstream.to_string());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (r, log, up) = (r.clone(), log.clone(), up.clone());
                tokio::spawn(async move {
                    let _ = handle(conn, &up, r, log).await;
                });
            }
        });
        Proxy {
            host,
            rules,
            injected,
            requests,
            uploaded,
            ranges,
            released,
            task,
        }
    }

    /// Let every stalled request (and any later one) through.
    pub fn release(&self) {
        let _ = self.released.send(true);
    }

    /// How many requests matched `method` and contain `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")) && r.contains(path_contains))
            .count()
    }

    /// Every request so far, as `METHOD path?query[ range=…]`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.rules.lock().unwrap() = rules;
    }

    pub fn injected(&self) -> Vec<String> {
        self.injected.lock().unwrap().clone()
    }

    /// Bytes of upload bodies the link carried so far.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// `Content-Range` of every upload PATCH so far.
    pub fn ranges(&self) -> Vec<String> {
        self.ranges.lock().unwrap().clone()
    }
}

async fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(pos + 4);
            return Ok(Some((buf, rest)));
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn force_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.trim_end().split("\r\n") {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

#[derive(Clone)]
struct Log {
    injected: Arc<Mutex<Vec<String>>>,
    requests: Arc<Mutex<Vec<String>>>,
    released: tokio::sync::watch::Receiver<bool>,
    uploaded: Arc<AtomicU64>,
    ranges: Arc<Mutex<Vec<String>>>,
    /// Upload bytes carried since the link last died (`Cut { shared: true }`).
    link: Arc<AtomicU64>,
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn handle(
    mut client: TcpStream,
    upstream: &str,
    rules: Arc<Mutex<Vec<Rule>>>,
    mut log: Log,
) -> std::io::Result<()> {
    // The client tries TLS first on loopback: pass a TLS handshake through
    // to the plain registry, which refuses it at once as it would directly,
    // rather than wait for an HTTP head that never comes (20 s, the client's
    // connect timeout).
    let mut first = [0u8; 1];
    if client.peek(&mut first).await? == 1 && first[0] == 0x16 {
        let mut up = TcpStream::connect(upstream).await?;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        return Ok(());
    }
    let Some((head, rest)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // A Range header is logged after the path: `GET /v2/… range=bytes=N-`.
    let range = String::from_utf8_lossy(&head)
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range:")
                .map(|v| format!(" range={}", v.trim()))
        })
        .unwrap_or_default();
    log.requests
        .lock()
        .unwrap()
        .push(format!("{method} {path}{range}"));
    let fault = {
        let mut rules = rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.contains(&r.path_contains))
            .map(|r| {
                r.times = r.times.saturating_sub(1);
                r.fault.clone()
            })
    };
    if let Some(f) = &fault {
        log.injected
            .lock()
            .unwrap()
            .push(format!("{f:?} {method} {path}"));
    }
    // An error means the proxy is gone: drop the request.
    if matches!(fault, Some(Fault::Stall)) && log.released.wait_for(|r| *r).await.is_err() {
        return Ok(());
    }
    match fault {
        Some(Fault::Drop) => return Ok(()),
        Some(Fault::Status(code, retry_after)) => {
            let ra = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\n{ra}Connection: close\r\n\r\n"
            );
            client.write_all(resp.as_bytes()).await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
        Some(Fault::Challenge) => {
            let resp = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            client.write_all(resp.as_bytes()).await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
        Some(Fault::EchoAuth) => {
            let auth = String::from_utf8_lossy(&head)
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .unwrap_or("no authorization header")
                .to_string();
            let body = format!(
                "{{\"errors\":[{{\"code\":\"UNKNOWN\",\"message\":\"you sent {auth}\"}}]}}"
            );
            let resp = format!(
                "HTTP/1.1 500 Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(resp.as_bytes()).await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
        Some(Fault::EndlessTags) => {
            let name = path
                .trim_start_matches("/v2/")
                .split("/tags/list")
                .next()
                .unwrap_or("x");
            let body = format!("{{\"name\":\"{name}\",\"tags\":[\"loop\"]}}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLink: <{path}>; rel=\"next\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(resp.as_bytes()).await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
        Some(Fault::Answer(code, ref body)) => {
            let resp = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(resp.as_bytes()).await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
        Some(Fault::Created(ref digest)) => {
            let text = String::from_utf8_lossy(&head).into_owned();
            let len: u64 = header(&text, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let unread = len.saturating_sub(rest.len() as u64);
            tokio::io::copy(&mut (&mut client).take(unread), &mut tokio::io::sink()).await?;
            let named = digest
                .as_ref()
                .map(|d| format!("Docker-Content-Digest: {d}\r\n"))
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 201 Created\r\n{named}Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            client.write_all(resp.as_bytes()).await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
        Some(Fault::Respond(content_type, ref body)) => {
            let head = format!(
                "HTTP/1.1 200 Injected\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            client.write_all(head.as_bytes()).await?;
            client.write_all(body).await?;
            let _ = client.shutdown().await;
            return Ok(());
        }
        _ => {}
    }
    if (method == "PUT" || method == "PATCH") && path.contains("/blobs/uploads/") {
        return upload(client, upstream, &head, rest, fault, &log).await;
    }
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&force_close(&head)).await?;
    up.write_all(&rest).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let to_upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
    });
    if matches!(fault, Some(Fault::Truncate)) {
        let mut resp = Vec::new();
        ur.read_to_end(&mut resp).await?;
        let cut = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(0);
        let keep = cut + (resp.len() - cut) / 2;
        cw.write_all(&resp[..keep]).await?;
    } else if let Some(Fault::Trickle(rate)) = fault {
        // The head at once, then the body a few bytes at a time.
        let mut buf = vec![0u8; (rate.max(1) as usize).min(4096)];
        loop {
            let n = ur.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            for b in buf[..n].chunks(rate.max(1) as usize) {
                if cw.write_all(b).await.is_err() {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    } else {
        tokio::io::copy(&mut ur, &mut cw).await?;
    }
    let _ = cw.shutdown().await;
    to_upstream.abort();
    Ok(())
}

/// An upload request: its body carried (counted, perhaps slowly, perhaps
/// cut) to the registry, then the answer back.
async fn upload(
    mut client: TcpStream,
    upstream: &str,
    head: &[u8],
    mut pending: Vec<u8>,
    fault: Option<Fault>,
    log: &Log,
) -> std::io::Result<()> {
    let text = String::from_utf8_lossy(head).into_owned();
    let len: u64 = header(&text, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(r) = header(&text, "content-range") {
        log.ranges.lock().unwrap().push(r.to_string());
    }
    let (budget, shared, buffered) = match fault {
        Some(Fault::Cut {
            after,
            shared,
            buffered,
        }) => (Some(after), shared, buffered),
        _ => (None, false, false),
    };
    let rate = match fault {
        Some(Fault::SlowUpload(r)) => Some(r.max(10)),
        _ => None,
    };
    let stall_at = match fault {
        Some(Fault::StallUpload { after }) => Some(after),
        _ => None,
    };
    let mut up = if buffered {
        None
    } else {
        let mut up = TcpStream::connect(upstream).await?;
        up.write_all(&force_close(head)).await?;
        Some(up)
    };
    let mut held = Vec::new();
    let (mut got, mut buf) = (0u64, vec![0u8; 256 * 1024]);
    while got < len {
        if stall_at.is_some_and(|at| got >= at) {
            // Read nothing more, the connection held open.
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            return Ok(());
        }
        let want = ((len - got) as usize)
            .min(match rate {
                Some(r) => (r as usize / 10).min(buf.len()),
                None => buf.len(),
            })
            .min(match stall_at {
                Some(at) => (at - got) as usize,
                None => usize::MAX,
            });
        let chunk = if !pending.is_empty() {
            let n = want.min(pending.len());
            pending.drain(..n).collect::<Vec<u8>>()
        } else {
            let n = client.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(()); // the client went away: so does the request
            }
            buf[..n].to_vec()
        };
        if let Some(after) = budget {
            let carried = if shared {
                log.link.load(Ordering::Relaxed)
            } else {
                got
            };
            let left = after.saturating_sub(carried);
            if chunk.len() as u64 > left {
                // The link dies here: what fits is carried, nothing more.
                let keep = &chunk[..left as usize];
                log.uploaded.fetch_add(keep.len() as u64, Ordering::Relaxed);
                if let Some(up) = up.as_mut() {
                    let _ = up.write_all(keep).await;
                }
                log.link.store(0, Ordering::Relaxed);
                return Ok(());
            }
        }
        log.uploaded
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        log.link.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        got += chunk.len() as u64;
        match up.as_mut() {
            Some(up) => up.write_all(&chunk).await?,
            None => held.extend_from_slice(&chunk),
        }
        if rate.is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let mut up = match up {
        Some(up) => up,
        None => {
            let mut up = TcpStream::connect(upstream).await?;
            up.write_all(&force_close(head)).await?;
            up.write_all(&held).await?;
            up
        }
    };
    let (mut ur, _uw) = up.split();
    tokio::io::copy(&mut ur, &mut client).await?;
    let _ = client.shutdown().await;
    Ok(())
}
