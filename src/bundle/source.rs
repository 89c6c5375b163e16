//! A bundle as a [`Source`]: a file with a seek table (any member, any
//! time, concurrently: each blob opens its own decoder at its frame), or a
//! stream (a pipe, a file without seek table: one pass, in member order).
//!
//! The stream is read by one blocking thread that answers the engine's
//! requests in order: first the graph (the bundle index, every manifest
//! and, for a policy, the signature payloads), then one blob at a time. A
//! blob it must read past before it is asked for (the configs behind the
//! payloads) is spooled; a blob nobody asks for is read and verified only.

use super::reader::{read_stream, read_whole, StreamEvent};
use super::{BundleError, BundleIndex, Member, MemberKind, SeekableBundle};
use crate::body::{Blob, InMemory, OpenBlob, SpoolPool, Spooled, Verified};
use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::graph::{BlobClass, BlobInfo, Graph};
use crate::oci::{Manifest, MAX_MANIFEST_BYTES};
use crate::store::{GraphRequest, Source};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// Payloads held in memory for the policy, at most (a pipe cannot be re-read).
const HOLD_LIMIT: u64 = 256 << 20;

pub struct BundleSource {
    name: String,
    kind: Kind,
    /// Member index of each blob (a file with a seek table).
    positions: HashMap<Digest, usize>,
    index: Option<(BundleIndex, Digest)>,
    file_digest: Option<Digest>,
}

enum Kind {
    File(Arc<SeekableBundle>),
    Stream(StreamHandle),
}

impl BundleSource {
    /// A bundle file: random access through its seek table, or a one-pass
    /// read when it has none.
    pub fn open_file(path: &Path) -> Result<BundleSource> {
        BundleSource::open_files(&[path.to_path_buf()])
    }

    /// A bundle file, or every volume of a bundle in any order (a directory
    /// stands for the bundle files in it). A missing or foreign volume is
    /// refused here, before anything is read for real.
    pub fn open_files(paths: &[PathBuf]) -> Result<BundleSource> {
        let paths = super::volumes::expand_paths(paths)?;
        let name = match paths.as_slice() {
            [one] => one.display().to_string(),
            many => format!(
                "{} (and {} more volumes)",
                many[0].display(),
                many.len() - 1
            ),
        };
        match SeekableBundle::open_set(&paths)? {
            Some(b) => {
                b.require_complete()?;
                Ok(BundleSource {
                    name,
                    positions: blob_positions(&b.index),
                    index: Some((b.index.clone(), b.digest.clone())),
                    kind: Kind::File(Arc::new(b)),
                    file_digest: None,
                })
            }
            None => {
                let f = std::fs::File::open(&paths[0]).map_err(Error::io(&name))?;
                Ok(BundleSource::stream(Box::new(f), &name))
            }
        }
    }

    /// A bundle read once, in order (stdin, a data diode, a file without
    /// seek table). The whole input is hashed for [`BundleSource::file_digest`].
    pub fn stream(input: Box<dyn Read + Send>, name: &str) -> BundleSource {
        Self::stream_hashed(input, name, true)
    }

    /// [`BundleSource::stream`] without the whole-input hash, for an import
    /// or a copy: every member is still verified and the input read to its
    /// end; only the file digest, which nothing there compares, is not
    /// computed (a second sha256 of every byte: measured, a third of a pipe
    /// import's CPU).
    pub fn stream_unhashed(input: Box<dyn Read + Send>, name: &str) -> BundleSource {
        Self::stream_hashed(input, name, false)
    }

    fn stream_hashed(input: Box<dyn Read + Send>, name: &str, whole: bool) -> BundleSource {
        BundleSource {
            name: name.to_string(),
            positions: HashMap::new(),
            kind: Kind::Stream(StreamHandle::start(input, name, whole)),
            index: None,
            file_digest: None,
        }
    }

    /// The bundle index and the bundle digest (known after [`Source::graph`]
    /// for a stream, at once for a file).
    pub fn index(&self) -> Option<&(BundleIndex, Digest)> {
        self.index.as_ref()
    }

    /// The sha256 of the whole input, once a stream was read to its end.
    pub fn file_digest(&self) -> Option<&Digest> {
        self.file_digest.as_ref()
    }

    pub fn is_seekable(&self) -> bool {
        matches!(self.kind, Kind::File(_))
    }

    /// The file (or volume set) behind a seekable source, for random reads.
    pub fn seekable(&self) -> Option<Arc<SeekableBundle>> {
        match &self.kind {
            Kind::File(b) => Some(b.clone()),
            Kind::Stream(_) => None,
        }
    }
}

fn blob_positions(index: &BundleIndex) -> HashMap<Digest, usize> {
    index
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m.kind, MemberKind::Small | MemberKind::Layer))
        .map(|(i, m)| (m.digest.clone(), i))
        .collect()
}

/// The graph of a bundle: its images, its manifests (verified) and every
/// blob member in tar order.
fn graph_of(
    index: &BundleIndex,
    manifests: Vec<Manifest>,
    payloads: HashMap<Digest, Bytes>,
) -> Graph {
    let mut g = Graph::default();
    g.images = index.images.clone();
    g.trusted_root = index.trusted_root.clone();
    g.bases = index.base.clone();
    g.payloads = payloads;
    for m in manifests {
        g.add_manifest(m);
    }
    for m in &index.members {
        let class = match m.kind {
            MemberKind::Layout | MemberKind::Manifest => continue,
            MemberKind::Small => BlobClass::Small,
            MemberKind::Layer => BlobClass::Layer,
        };
        g.add_blob(BlobInfo {
            digest: m.digest.clone(),
            size: m.size,
            class,
            media_type: m.media_type.clone(),
            image: 0,
        });
    }
    for e in &index.external {
        g.add_blob(BlobInfo {
            digest: e.digest.clone(),
            size: e.size,
            class: if e.kind == MemberKind::Layer {
                BlobClass::Layer
            } else {
                BlobClass::Small
            },
            media_type: None,
            image: 0,
        });
        g.external.insert(e.digest.clone(), e.from.clone());
    }
    g
}

/// The small blobs the policy reads: signature payloads, attestation
/// envelopes, and a carried trusted root.
fn payload_digests(index: &BundleIndex, manifests: &HashMap<Digest, Manifest>) -> Vec<Digest> {
    let mut out = crate::trust::artifact_blobs(&index.images, &|d| {
        manifests
            .get(d)
            .map(|m| (m.bytes.to_vec(), m.media_type.clone()))
    });
    out.extend(index.trusted_root.iter().cloned());
    out
}

fn manifest_of(member: &Member, bytes: Vec<u8>) -> Manifest {
    Manifest {
        bytes: Bytes::from(bytes),
        media_type: member.media_type.clone().unwrap_or_default(),
        digest: member.digest.clone(),
    }
}

/// Member `i` of a seekable bundle, opened anew for every reader.
struct MemberBlob {
    bundle: Arc<SeekableBundle>,
    i: usize,
}

impl OpenBlob for MemberBlob {
    fn open(&self) -> io::Result<Verified> {
        self.bundle
            .open_member(self.i)
            .map(Verified::from_verifying)
            .map_err(|e| crate::digest::integrity_error(e.to_string()))
    }
}

impl BundleSource {
    async fn file_graph(&self, b: &Arc<SeekableBundle>, req: GraphRequest) -> Result<Graph> {
        let mut manifests = HashMap::new();
        for (i, m) in b.index.members.iter().enumerate() {
            if m.kind == MemberKind::Manifest {
                let bytes = read_member(b, i, &self.name).await?;
                manifests.insert(m.digest.clone(), manifest_of(m, bytes));
            }
        }
        let mut payloads = HashMap::new();
        if req.payloads {
            for d in payload_digests(&b.index, &manifests) {
                let pos = b.index.members.iter().position(|m| {
                    m.digest == d && m.kind != MemberKind::Manifest && m.path.starts_with("blobs/")
                });
                if let Some(i) = pos {
                    payloads.insert(d, Bytes::from(read_member(b, i, &self.name).await?));
                }
            }
        }
        Ok(graph_of(
            &b.index,
            manifests.into_values().collect(),
            payloads,
        ))
    }
}

async fn read_member(b: &Arc<SeekableBundle>, i: usize, name: &str) -> Result<Vec<u8>> {
    let b = b.clone();
    Ok(tokio::task::spawn_blocking(move || b.read_member(i))
        .await
        .map_err(Error::task(name))??)
}

impl Source for BundleSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn sequential(&self) -> bool {
        matches!(self.kind, Kind::Stream(_))
    }

    fn rereadable(&self) -> bool {
        self.is_seekable()
    }

    fn graph(&mut self, req: GraphRequest) -> BoxFuture<'_, Result<Graph>> {
        Box::pin(async move {
            match &self.kind {
                Kind::File(b) => {
                    let b = b.clone();
                    self.file_graph(&b, req).await
                }
                Kind::Stream(s) => {
                    let (index, digest, graph) = s.graph(req).await?;
                    self.index = Some((index, digest));
                    Ok(graph)
                }
            }
        })
    }

    fn fetch<'a>(&'a self, _graph: &'a Graph, blob: &'a BlobInfo) -> BoxFuture<'a, Result<Blob>> {
        Box::pin(async move {
            match &self.kind {
                Kind::File(b) => {
                    let i = self.positions.get(&blob.digest).copied().ok_or_else(|| {
                        BundleError::Missing {
                            bundle: self.name.clone(),
                            what: "blob".into(),
                            digest: blob.digest.clone(),
                        }
                    })?;
                    Ok(Arc::new(MemberBlob {
                        bundle: b.clone(),
                        i,
                    }) as Blob)
                }
                Kind::Stream(s) => s.fetch(&blob.digest).await,
            }
        })
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match &self.kind {
                Kind::File(b) => {
                    let b = b.clone();
                    tokio::task::spawn_blocking(move || b.check_end())
                        .await
                        .map_err(Error::task(&self.name))??;
                }
                Kind::Stream(s) => self.file_digest = s.finish().await?,
            }
            Ok(())
        })
    }
}

// ------------------------------------------------------------ the stream

/// What the reader thread sends back once the graph is read.
type GraphReply = oneshot::Sender<Result<(BundleIndex, Digest, Graph)>>;

enum Request {
    Graph(
        GraphRequest,
        oneshot::Sender<Result<(BundleIndex, Digest, Graph)>>,
    ),
    Fetch(Digest, oneshot::Sender<Result<Blob>>),
    Finish(oneshot::Sender<Result<Option<Digest>>>),
}

struct StreamHandle {
    name: String,
    requests: Mutex<mpsc::Sender<Request>>,
}

fn stopped(name: &str) -> Error {
    Error::from(BundleError::Corrupt {
        bundle: name.to_string(),
        detail: "the bundle reader stopped".into(),
    })
}

impl StreamHandle {
    fn start(input: Box<dyn Read + Send>, name: &str, hash_whole: bool) -> StreamHandle {
        let (tx, rx) = mpsc::channel();
        let reader_name = name.to_string();
        std::thread::spawn(move || StreamReader::new(reader_name, rx).run(input, hash_whole));
        StreamHandle {
            name: name.to_string(),
            requests: Mutex::new(tx),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let sent = match self.requests.lock() {
            Ok(s) => s.send(make(tx)).is_ok(),
            Err(_) => false,
        };
        if !sent {
            return Err(stopped(&self.name));
        }
        rx.await.map_err(|_| stopped(&self.name))?
    }

    async fn graph(&self, req: GraphRequest) -> Result<(BundleIndex, Digest, Graph)> {
        self.ask(|tx| Request::Graph(req, tx)).await
    }

    async fn fetch(&self, d: &Digest) -> Result<Blob> {
        self.ask(|tx| Request::Fetch(d.clone(), tx)).await
    }

    async fn finish(&self) -> Result<Option<Digest>> {
        self.ask(Request::Finish).await
    }
}

/// The reader thread's state between members.
struct StreamReader {
    name: String,
    requests: mpsc::Receiver<Request>,
    graph_reply: Option<(GraphRequest, GraphReply)>,
    index: Option<(BundleIndex, Digest)>,
    manifests: HashMap<Digest, Manifest>,
    /// Payloads the policy needs (known once every manifest is read).
    wanted_payloads: Option<Vec<Digest>>,
    payloads: HashMap<Digest, Bytes>,
    held_bytes: u64,
    /// Blobs read before they were asked for.
    held: HashMap<Digest, Blob>,
    graph_sent: bool,
    pending: Option<(Digest, oneshot::Sender<Result<Blob>>)>,
    finish: Option<oneshot::Sender<Result<Option<Digest>>>>,
    /// Spool files, reused once the blob they held is gone.
    spools: Arc<SpoolPool>,
}

impl StreamReader {
    fn new(name: String, requests: mpsc::Receiver<Request>) -> Self {
        StreamReader {
            name,
            requests,
            graph_reply: None,
            index: None,
            manifests: HashMap::new(),
            wanted_payloads: None,
            payloads: HashMap::new(),
            held_bytes: 0,
            held: HashMap::new(),
            graph_sent: false,
            pending: None,
            finish: None,
            spools: SpoolPool::new(std::env::temp_dir()),
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> BundleError {
        BundleError::Corrupt {
            bundle: self.name.clone(),
            detail: detail.into(),
        }
    }

    fn run(mut self, input: Box<dyn Read + Send>, hash_whole: bool) {
        match self.requests.recv() {
            Ok(Request::Graph(req, reply)) => self.graph_reply = Some((req, reply)),
            Ok(other) => {
                fail_request(other, stopped(&self.name));
                return;
            }
            Err(_) => return,
        }
        let buffered = io::BufReader::with_capacity(1 << 20, input);
        let (result, file_digest) = if hash_whole {
            let mut hashing = HashingReader::new(buffered);
            let result = self.read_through(&mut hashing);
            (result, Some(hashing.finish().0))
        } else {
            let mut plain = buffered;
            (self.read_through(&mut plain), None)
        };
        match result {
            Ok(()) => self.answer_rest(file_digest),
            Err(e) => self.fail(e),
        }
    }

    /// Every member, the end of the tar, then the rest of the input (the
    /// seek table: read, so that a file digest covers it too).
    fn read_through(&mut self, input: &mut impl Read) -> std::result::Result<(), BundleError> {
        read_stream(&mut *input, &self.name.clone(), |ev| self.on_event(ev))
            .and_then(|_| self.at_end())
            .and_then(|_| {
                io::copy(input, &mut io::sink())
                    .map(|_| ())
                    .map_err(|e| self.corrupt(format!("truncated or corrupt archive: {e}")))
            })
    }

    fn on_event(&mut self, ev: StreamEvent) -> std::result::Result<(), BundleError> {
        match ev {
            StreamEvent::Index { index, digest } => {
                self.index = Some((index.clone(), digest.clone()));
                Ok(())
            }
            StreamEvent::Member { member, data } => self.on_member(member, data),
        }
    }

    fn on_member(
        &mut self,
        member: &Member,
        data: &mut dyn Read,
    ) -> std::result::Result<(), BundleError> {
        match member.kind {
            MemberKind::Layout => return Ok(()),
            MemberKind::Manifest => {
                if member.size > MAX_MANIFEST_BYTES {
                    return Err(BundleError::MemberMismatch {
                        bundle: self.name.clone(),
                        member: member.path.clone(),
                        detail: "manifest larger than 4 MiB".into(),
                    });
                }
                let b = read_whole(&self.name, member, data)?;
                self.manifests
                    .insert(member.digest.clone(), manifest_of(member, b));
                return Ok(());
            }
            _ => {}
        }
        if !self.graph_sent && self.hold_for_policy(member, data)? {
            return Ok(());
        }
        self.send_graph()?;
        self.serve(member, data)
    }

    /// Before the graph is sent (a policy wants payloads): keep payloads in
    /// memory and spool the other small blobs; true when `member` was taken.
    fn hold_for_policy(
        &mut self,
        member: &Member,
        data: &mut dyn Read,
    ) -> std::result::Result<bool, BundleError> {
        let wants_payloads = self.graph_reply.as_ref().is_some_and(|(r, _)| r.payloads);
        if !wants_payloads || member.kind != MemberKind::Small {
            return Ok(false);
        }
        if self.wanted_payloads.is_none() {
            let index = &self
                .index
                .as_ref()
                .ok_or_else(|| self.corrupt("no bundle index"))?
                .0;
            self.wanted_payloads = Some(payload_digests(index, &self.manifests));
        }
        if self
            .wanted_payloads
            .as_ref()
            .is_some_and(|w| w.contains(&member.digest))
        {
            self.held_bytes += member.size;
            if self.held_bytes > HOLD_LIMIT {
                return Err(self.corrupt("more than 256 MiB of signature blobs to hold for the policy: import the bundle file instead of a pipe"));
            }
            let b = Bytes::from(read_whole(&self.name, member, data)?);
            self.held.insert(
                member.digest.clone(),
                Arc::new(InMemory {
                    bytes: b.clone(),
                    digest: member.digest.clone(),
                }),
            );
            self.payloads.insert(member.digest.clone(), b);
        } else {
            let spooled = self.spool(member, data)?;
            self.held.insert(member.digest.clone(), Arc::new(spooled));
        }
        Ok(true)
    }

    fn spool(
        &mut self,
        member: &Member,
        data: &mut dyn Read,
    ) -> std::result::Result<Spooled, BundleError> {
        let io_err = |source| BundleError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        };
        // Each spool file lives as long as the blob handed out and its
        // readers (a writer may read it after this reader has finished), in
        // the system temp dir; then it serves a later blob.
        let mut s =
            Spooled::from_pool(&self.spools, &member.digest, member.size).map_err(io_err)?;
        // `data` is the walk's verifying reader: one hash per byte, there.
        s.fill_from_verifying(data)
            .map_err(|e| super::member_error(&self.name, member, e))?;
        Ok(s)
    }

    fn send_graph(&mut self) -> std::result::Result<(), BundleError> {
        if self.graph_sent {
            return Ok(());
        }
        self.graph_sent = true;
        let (index, digest) = self
            .index
            .clone()
            .ok_or_else(|| self.corrupt("no bundle index"))?;
        let manifests = self.manifests.values().cloned().collect();
        let graph = graph_of(&index, manifests, std::mem::take(&mut self.payloads));
        if let Some((_, reply)) = self.graph_reply.take() {
            if reply.send(Ok((index, digest, graph))).is_err() {
                return Err(self.corrupt("stopped"));
            }
        }
        Ok(())
    }

    /// Hand `member` to the engine if it asks for it next; otherwise read
    /// past it (the reader still verifies it).
    fn serve(
        &mut self,
        member: &Member,
        data: &mut dyn Read,
    ) -> std::result::Result<(), BundleError> {
        loop {
            if self.finish.is_some() {
                return Ok(()); // nothing more wanted: read and verify only
            }
            if self.pending.is_none() {
                match self.requests.recv() {
                    Ok(Request::Fetch(d, reply)) => self.pending = Some((d, reply)),
                    Ok(Request::Finish(reply)) => self.finish = Some(reply),
                    Ok(Request::Graph(_, reply)) => {
                        let _ = reply.send(Err(stopped(&self.name)));
                    }
                    Err(_) => return Err(self.corrupt("stopped")),
                }
                continue;
            }
            if let Some((d, _)) = &self.pending {
                if let Some(blob) = self.held.remove(d) {
                    if let Some((_, reply)) = self.pending.take() {
                        let _ = reply.send(Ok(blob));
                    }
                    continue;
                }
                if *d != member.digest {
                    return Ok(()); // asked for a later member
                }
            }
            let spooled = self.spool(member, data)?;
            if let Some((_, reply)) = self.pending.take() {
                let _ = reply.send(Ok(Arc::new(spooled)));
            }
            return Ok(());
        }
    }

    /// After the last member: the graph (a bundle without blobs), what is
    /// still held, and asks for blobs that never came.
    fn at_end(&mut self) -> std::result::Result<(), BundleError> {
        self.send_graph()?;
        loop {
            if self.finish.is_some() {
                return Ok(());
            }
            if let Some((d, reply)) = self.pending.take() {
                match self.held.remove(&d) {
                    Some(b) => {
                        let _ = reply.send(Ok(b));
                    }
                    None => {
                        let _ = reply.send(Err(Error::from(BundleError::Missing {
                            bundle: self.name.clone(),
                            what: "blob".into(),
                            digest: d,
                        })));
                    }
                }
                continue;
            }
            match self.requests.recv() {
                Ok(Request::Fetch(d, reply)) => self.pending = Some((d, reply)),
                Ok(Request::Finish(reply)) => self.finish = Some(reply),
                Ok(Request::Graph(_, reply)) => {
                    let _ = reply.send(Err(stopped(&self.name)));
                }
                Err(_) => return Ok(()),
            }
        }
    }

    fn answer_rest(mut self, file_digest: Option<Digest>) {
        if let Some(reply) = self.finish.take() {
            let _ = reply.send(Ok(file_digest));
            return;
        }
        // The engine asks for Finish after its last blob.
        while let Ok(req) = self.requests.recv() {
            match req {
                Request::Finish(reply) => {
                    let _ = reply.send(Ok(file_digest));
                    return;
                }
                other => fail_request(other, stopped(&self.name)),
            }
        }
    }

    /// The stream failed: the first waiting request gets the error.
    fn fail(mut self, e: BundleError) {
        let e = Error::from(e);
        if let Some((_, reply)) = self.graph_reply.take() {
            let _ = reply.send(Err(e));
        } else if let Some((_, reply)) = self.pending.take() {
            let _ = reply.send(Err(e));
        } else if let Some(reply) = self.finish.take() {
            let _ = reply.send(Err(e));
        } else if let Ok(req) = self.requests.recv() {
            fail_request(req, e);
        }
        while let Ok(req) = self.requests.recv() {
            fail_request(req, stopped(&self.name));
        }
    }
}

fn fail_request(req: Request, e: Error) {
    match req {
        Request::Graph(_, r) => {
            let _ = r.send(Err(e));
        }
        Request::Fetch(_, r) => {
            let _ = r.send(Err(e));
        }
        Request::Finish(r) => {
            let _ = r.send(Err(e));
        }
    }
}
