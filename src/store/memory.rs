//! An in-memory store (tests only, feature `test-util`): see tests/engine.rs.
//!
//! [`MemorySource`] and [`MemorySink`] let the copy engine be tested without
//! a registry, a file or a process, in the manner of oras-go's
//! `content/memory` store. Both record what the engine asked of them, in
//! order, in a [`Timeline`] they may share; both enforce the promises the
//! engine makes to real stores (a one-pass source is read strictly in
//! order; an ordered sink gets one blob at a time, in its order; nothing
//! before `prepare`, `commit` only when every blob is there), failing the
//! copy when one is broken. [`test_graph`] builds graphs that
//! [`Graph::walk`] accepts.

use super::{GraphRequest, Prepared, Put, Sink, SinkReport, Source};
use crate::body::{Blob, InMemory};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::graph::{Artifact, ArtifactKind, BlobClass, BlobInfo, Graph, ImageEntry, PlatformEntry};
use crate::oci::{Manifest, COSIGN_SIMPLESIGNING, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One thing a source or a sink was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// [`Source::fetch`] was called for this blob (recorded on entry).
    Fetch(Digest),
    /// [`Source::finish`] was called.
    Finish,
    /// [`Sink::prepare`] was called.
    Prepare,
    /// [`Sink::put_blob`] was called for this blob (recorded on entry).
    Put(Digest),
    /// That put read the blob to its verified end and kept its bytes.
    Stored(Digest),
    /// [`Sink::commit`] was called (recorded on entry, whatever it returns).
    Commit,
}

/// An ordered log of [`Event`]s, shared by a source and a sink when a test
/// needs to see how their calls interleave.
#[derive(Clone, Debug, Default)]
pub struct Timeline(Arc<Mutex<Vec<Event>>>);

impl Timeline {
    pub fn push(&self, e: Event) {
        lock(&self.0).push(e);
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.0).clone()
    }

    /// Position of the first event equal to `e`.
    pub fn position(&self, e: &Event) -> Option<usize> {
        lock(&self.0).iter().position(|x| x == e)
    }
}

/// A poisoned lock (a panicking test thread) still yields its data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`test_graph`] built: a graph and the bytes of each of its blobs.
#[derive(Clone, Debug)]
pub struct TestContent {
    pub graph: Graph,
    pub blobs: HashMap<Digest, Bytes>,
}

impl TestContent {
    pub fn bytes(&self, d: &Digest) -> &Bytes {
        &self.blobs[d]
    }

    /// Digests of [`Graph::blobs`], in the graph's order.
    pub fn order(&self) -> Vec<Digest> {
        self.graph.blobs.iter().map(|b| b.digest.clone()).collect()
    }
}

/// How [`test_graph`] builds its images.
#[derive(Clone, Copy, Debug)]
pub struct TestSpec {
    pub images: usize,
    /// Layers of each image of its own (besides its config).
    pub layers: usize,
    /// Every image also has one layer shared by all of them (listed once in
    /// [`Graph::blobs`]).
    pub shared_layer: bool,
    /// Each image carries a cosign signature (`.sig` tag, a simplesigning
    /// payload layer); it is not a valid signature, only one that exists.
    pub signed: bool,
}

impl Default for TestSpec {
    fn default() -> Self {
        TestSpec {
            images: 2,
            layers: 3,
            shared_layer: true,
            signed: false,
        }
    }
}

/// Deterministic, distinct bytes for blob `n` (sizes vary with `n`).
fn blob_bytes(label: &str, n: usize) -> Bytes {
    let len = 100 + 37 * n;
    let mut out = format!("{label} #{n}:").into_bytes();
    let mut x = (n as u32).wrapping_mul(2_654_435_761).wrapping_add(7);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push((x & 0xff) as u8);
    }
    Bytes::from(out)
}

fn descriptor(media_type: &str, bytes: &Bytes) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": Digest::of(bytes).to_string(),
        "size": bytes.len(),
    })
}

/// An OCI image manifest over `config` and `layers` (with their media types).
fn image_manifest(config: (&str, &Bytes), layers: &[(&str, &Bytes)]) -> Manifest {
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config.0, config.1),
        "layers": layers.iter().map(|(mt, b)| descriptor(mt, b)).collect::<Vec<_>>(),
    });
    Manifest::hashed(serde_json::to_vec(&doc).expect("JSON"), OCI_MANIFEST)
}

struct Builder {
    content: TestContent,
    n: usize,
}

impl Builder {
    fn blob(&mut self, label: &str, class: BlobClass, image: usize) -> Bytes {
        let bytes = blob_bytes(label, self.n);
        self.n += 1;
        self.add(bytes.clone(), class, image);
        bytes
    }

    fn add(&mut self, bytes: Bytes, class: BlobClass, image: usize) {
        let digest = Digest::of(&bytes);
        self.content.graph.add_blob(BlobInfo {
            digest: digest.clone(),
            size: bytes.len() as u64,
            class,
            media_type: None,
            image,
        });
        self.content.blobs.insert(digest, bytes);
    }
}

/// A graph of `spec.images` single-platform images (`mem.example/appN:v1`),
/// each an OCI manifest over a config and its layers, every blob listed
/// once in [`Graph::blobs`] in the order images need them.
pub fn test_graph(spec: TestSpec) -> TestContent {
    let mut b = Builder {
        content: TestContent {
            graph: Graph::default(),
            blobs: HashMap::new(),
        },
        n: 0,
    };
    let shared = blob_bytes("shared layer", 999);
    for i in 0..spec.images {
        let config = b.blob(&format!("config of app{i}"), BlobClass::Small, i);
        let mut layers = Vec::new();
        if spec.shared_layer {
            b.add(shared.clone(), BlobClass::Layer, i);
            layers.push(shared.clone());
        }
        for _ in 0..spec.layers {
            layers.push(b.blob(&format!("layer of app{i}"), BlobClass::Layer, i));
        }
        let typed: Vec<(&str, &Bytes)> = layers.iter().map(|l| (OCI_LAYER_TAR, l)).collect();
        let m = image_manifest((OCI_CONFIG, &config), &typed);
        let mut artifacts = Vec::new();
        if spec.signed {
            let sig_config = b.blob(&format!("signature config of app{i}"), BlobClass::Small, i);
            let payload = Bytes::from(format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"mem.example/app{i}"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}}}}"#,
                m.digest
            ));
            b.add(payload.clone(), BlobClass::Small, i);
            let sig = image_manifest(
                (OCI_CONFIG, &sig_config),
                &[(COSIGN_SIMPLESIGNING, &payload)],
            );
            artifacts.push(Artifact {
                kind: ArtifactKind::Signature,
                subject: m.digest.clone(),
                digest: sig.digest.clone(),
                media_type: OCI_MANIFEST.into(),
                size: sig.bytes.len() as u64,
                tag: Some(format!("{}.sig", m.digest.tag_stem())),
                artifact_type: None,
                predicate_types: vec![],
            });
            b.content.graph.add_manifest(sig);
        }
        let size = m.bytes.len() as u64;
        let total_size =
            size + config.len() as u64 + layers.iter().map(|l| l.len() as u64).sum::<u64>();
        b.content.graph.images.push(ImageEntry {
            source: format!("mem.example/app{i}:v1"),
            registry: "mem.example".into(),
            repository: format!("app{i}"),
            tag: Some("v1".into()),
            digest: m.digest.clone(),
            media_type: OCI_MANIFEST.into(),
            size,
            source_digest: m.digest.clone(),
            platforms: vec![PlatformEntry {
                platform: Some("linux/amd64".into()),
                digest: m.digest.clone(),
                media_type: OCI_MANIFEST.into(),
                size,
            }],
            target: None,
            ref_name: Some(format!("app{i}:v1")),
            artifacts,
            total_size,
            tag_template: None,
            platform_of: None,
            resolved_digest: None,
        });
        b.content.graph.add_manifest(m);
    }
    b.content
}

// ------------------------------------------------------------ the source

/// A source holding a graph and its blobs' bytes.
///
/// Random access by default. When `sequential`, it behaves like a bundle on
/// a pipe: blobs are handed out in [`Graph::blobs`] order (of its own
/// graph), each at most once, those not asked for are read past, and only
/// one fetch may be under way at a time; any other call fails the fetch.
pub struct MemorySource {
    pub graph: Graph,
    blobs: HashMap<Digest, Bytes>,
    pub sequential: bool,
    /// The k-th fetch call waits this long, times the number of graph
    /// blobs less k: fetches under way at once finish in the reverse of
    /// the order they were asked in.
    pub fetch_delay: Option<Duration>,
    /// Every [`Source::fetch`] call, in order, including refused ones.
    pub fetches: Mutex<Vec<Digest>>,
    /// Also records fetches and `finish` here, when set.
    pub timeline: Option<Timeline>,
    /// Sequential mode: index in the graph's blobs of the next unread blob.
    cursor: Mutex<usize>,
    fetching: AtomicUsize,
    finished: AtomicUsize,
}

impl MemorySource {
    pub fn new(content: &TestContent) -> MemorySource {
        MemorySource {
            graph: content.graph.clone(),
            blobs: content.blobs.clone(),
            sequential: false,
            fetch_delay: None,
            fetches: Mutex::new(Vec::new()),
            timeline: None,
            cursor: Mutex::new(0),
            fetching: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        }
    }

    /// A one-pass source (see the type's documentation).
    pub fn sequential(content: &TestContent) -> MemorySource {
        MemorySource {
            sequential: true,
            ..MemorySource::new(content)
        }
    }

    pub fn with_timeline(mut self, t: &Timeline) -> MemorySource {
        self.timeline = Some(t.clone());
        self
    }

    pub fn with_fetch_delay(mut self, d: Duration) -> MemorySource {
        self.fetch_delay = Some(d);
        self
    }

    /// Change one byte of the stored blob (its size stays): the blob is
    /// handed out as usual and its reader fails at its end.
    pub fn corrupt(&mut self, digest: &Digest) {
        let mut v = self.blobs[digest].to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x55;
        self.blobs.insert(digest.clone(), Bytes::from(v));
    }

    /// Every fetch so far, in order.
    pub fn fetched(&self) -> Vec<Digest> {
        lock(&self.fetches).clone()
    }

    /// How many times [`Source::finish`] was called.
    pub fn finish_calls(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    fn refuse(&self, what: String) -> Error {
        Error::Refused(format!("{}: {what}", self.name()))
    }

    /// Sequential mode: take `digest` at or after the cursor, reading past
    /// what lies before it.
    fn advance(&self, digest: &Digest) -> Result<()> {
        let mut cursor = lock(&self.cursor);
        let pos = self
            .graph
            .blobs
            .iter()
            .position(|b| &b.digest == digest)
            .ok_or_else(|| self.refuse(format!("blob {digest} is not in the stream")))?;
        if pos < *cursor {
            return Err(self.refuse(format!(
                "blob {digest} (stream position {pos}) was asked for after position {} was read: a one-pass source cannot go back",
                *cursor - 1
            )));
        }
        *cursor = pos + 1;
        Ok(())
    }
}

/// Decrements the number of fetches under way when a fetch ends or is dropped.
struct Fetching<'a>(&'a AtomicUsize);

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Source for MemorySource {
    fn name(&self) -> String {
        if self.sequential {
            "memory source (one pass)".into()
        } else {
            "memory source".into()
        }
    }

    fn sequential(&self) -> bool {
        self.sequential
    }

    fn rereadable(&self) -> bool {
        !self.sequential
    }

    fn graph(&mut self, _req: GraphRequest) -> BoxFuture<'_, Result<Graph>> {
        Box::pin(async move { Ok(self.graph.clone()) })
    }

    fn fetch<'a>(&'a self, _graph: &'a Graph, blob: &'a BlobInfo) -> BoxFuture<'a, Result<Blob>> {
        Box::pin(async move {
            let call = {
                let mut f = lock(&self.fetches);
                f.push(blob.digest.clone());
                f.len() - 1
            };
            if let Some(t) = &self.timeline {
                t.push(Event::Fetch(blob.digest.clone()));
            }
            let under_way = self.fetching.fetch_add(1, Ordering::SeqCst);
            let _guard = Fetching(&self.fetching);
            if self.sequential {
                if under_way > 0 {
                    return Err(self.refuse(format!(
                        "blob {} asked for while another fetch is under way",
                        blob.digest
                    )));
                }
                self.advance(&blob.digest)?;
            }
            if let Some(d) = self.fetch_delay {
                let later = self.graph.blobs.len().saturating_sub(call);
                tokio::time::sleep(d * later as u32).await;
            }
            let bytes = self
                .blobs
                .get(&blob.digest)
                .cloned()
                .ok_or_else(|| self.refuse(format!("no blob {}", blob.digest)))?;
            Ok(Arc::new(InMemory {
                bytes,
                digest: blob.digest.clone(),
            }) as Blob)
        })
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.finished.fetch_add(1, Ordering::SeqCst);
            if let Some(t) = &self.timeline {
                t.push(Event::Finish);
            }
            if self.sequential {
                // Read past whatever is left.
                *lock(&self.cursor) = self.graph.blobs.len();
            }
            Ok(())
        })
    }
}

// ------------------------------------------------------------ the sink

/// The order a [`MemorySink`] asks blobs in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SinkOrder {
    /// Any order, blobs at once (a registry, a directory).
    #[default]
    Any,
    /// Every blob of the graph, in the reverse of [`Graph::blobs`]: a
    /// different order than the source's, as a bundle's may be.
    Reversed,
    /// Every blob of the graph, in [`Graph::blobs`] order.
    AsGraph,
    /// Exactly this list (a broken sink may list a blob twice or miss one).
    Exactly(Vec<Digest>),
}

/// A sink keeping blobs in memory and logging every call.
///
/// `put_blob` reads the whole blob through [`crate::body::OpenBlob::open`]
/// and keeps its bytes only when the read reached its verified end. With an
/// order, it refuses a blob out of that order and a second put while one is
/// under way. `commit` fails unless every blob of the graph that is neither
/// present nor unwanted was stored.
#[derive(Default)]
pub struct MemorySink {
    /// Answered by `prepare` as [`Prepared::present`].
    pub present: HashSet<Digest>,
    /// Answered by `prepare` as [`Prepared::unwanted`].
    pub unwanted: HashSet<Digest>,
    pub order: SinkOrder,
    /// Each blob's first read stops half way and the blob is dropped; it is
    /// then opened again and read whole (a retried upload).
    pub fail_first_attempt: bool,
    /// Each put waits this long before reading.
    pub put_delay: Option<Duration>,
    pub timeline: Timeline,
    stored: Mutex<HashMap<Digest, Bytes>>,
    /// Set by `prepare`: the order it answered, and how far puts got
    /// through it.
    prepared: Mutex<Option<Wanted>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    attempts: Mutex<HashMap<Digest, usize>>,
}

impl MemorySink {
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    pub fn with_timeline(mut self, t: &Timeline) -> MemorySink {
        self.timeline = t.clone();
        self
    }

    /// Every event of the timeline (the source's too, when it is shared).
    pub fn events(&self) -> Vec<Event> {
        self.timeline.events()
    }

    /// Blobs put, in the order `put_blob` was called.
    pub fn puts(&self) -> Vec<Digest> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Put(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    pub fn committed(&self) -> bool {
        self.timeline.position(&Event::Commit).is_some()
    }

    /// The bytes stored for `digest`.
    pub fn stored(&self, digest: &Digest) -> Option<Bytes> {
        lock(&self.stored).get(digest).cloned()
    }

    pub fn stored_count(&self) -> usize {
        lock(&self.stored).len()
    }

    /// Most puts under way at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// How many times each blob was opened.
    pub fn opens(&self, digest: &Digest) -> usize {
        lock(&self.attempts).get(digest).copied().unwrap_or(0)
    }

    fn refuse(&self, what: String) -> Error {
        Error::Refused(format!("memory sink: {what}"))
    }

    /// With an order: `digest` must be the next blob of it still to come
    /// (present and unwanted blobs may be left out, as the engine does).
    fn check_order(&self, digest: &Digest) -> Result<()> {
        let mut prepared = lock(&self.prepared);
        let Some(wanted) = prepared.as_mut() else {
            return Err(self.refuse(format!("blob {digest} put before prepare")));
        };
        let Wanted {
            order: Some(order),
            next,
        } = wanted
        else {
            return Ok(());
        };
        let skip = |d: &Digest| self.present.contains(d) || self.unwanted.contains(d);
        while *next < order.len() && skip(&order[*next]) && &order[*next] != digest {
            *next += 1;
        }
        if order.get(*next) != Some(digest) {
            return Err(self.refuse(format!(
                "blob {digest} arrived out of order (expected {})",
                order
                    .get(*next)
                    .map_or("no more blobs".to_string(), |d| d.to_string())
            )));
        }
        *next += 1;
        Ok(())
    }
}

/// What `prepare` answered: the order, if any, and how far puts got through it.
struct Wanted {
    order: Option<Vec<Digest>>,
    next: usize,
}

/// Decrements the number of puts under way when a put ends or is dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Open `data` and read it whole; with `half_first`, first read half of it,
/// drop it and open it again.
fn read_blob(data: &Blob, size: u64, half_first: bool) -> std::io::Result<(Vec<u8>, usize)> {
    let mut opens = 0;
    if half_first {
        let mut r = data.open()?;
        opens += 1;
        let mut half = vec![0u8; (size / 2) as usize];
        r.read_exact(&mut half)?;
        drop(r);
    }
    let mut r = data.open()?;
    opens += 1;
    let mut out = Vec::with_capacity(size as usize);
    r.read_to_end(&mut out)?;
    Ok((out, opens))
}

impl Sink for MemorySink {
    fn name(&self) -> String {
        "memory sink".into()
    }

    fn prepare<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<Prepared>> {
        Box::pin(async move {
            self.timeline.push(Event::Prepare);
            let all = || graph.blobs.iter().map(|b| b.digest.clone());
            let order = match &self.order {
                SinkOrder::Any => None,
                SinkOrder::Reversed => Some(all().rev().collect::<Vec<_>>()),
                SinkOrder::AsGraph => Some(all().collect()),
                SinkOrder::Exactly(v) => Some(v.clone()),
            };
            *lock(&self.prepared) = Some(Wanted {
                order: order.clone(),
                next: 0,
            });
            Ok(Prepared {
                present: self.present.clone(),
                unwanted: self.unwanted.clone(),
                order,
                ..Default::default()
            })
        })
    }

    fn put_blob<'a>(&'a self, blob: &'a BlobInfo, data: Blob) -> BoxFuture<'a, Result<Vec<Put>>> {
        Box::pin(async move {
            self.timeline.push(Event::Put(blob.digest.clone()));
            let under_way = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let _guard = InFlight(&self.in_flight);
            self.max_in_flight.fetch_max(under_way, Ordering::SeqCst);
            if self.order != SinkOrder::Any && under_way > 1 {
                return Err(self.refuse(format!(
                    "blob {} put while another put is under way (an ordered sink takes one at a time)",
                    blob.digest
                )));
            }
            self.check_order(&blob.digest)?;
            if let Some(d) = self.put_delay {
                tokio::time::sleep(d).await;
            }
            let (size, half) = (blob.size, self.fail_first_attempt);
            let what = blob.clone();
            let read = tokio::task::spawn_blocking(move || read_blob(&data, size, half))
                .await
                .map_err(Error::task("memory sink"))?;
            let (bytes, opens) = read.map_err(|e| super::null::blob_error("memory", &what, e))?;
            *lock(&self.attempts).entry(blob.digest.clone()).or_default() += opens;
            lock(&self.stored).insert(blob.digest.clone(), Bytes::from(bytes));
            self.timeline.push(Event::Stored(blob.digest.clone()));
            Ok(vec![Put::Stored])
        })
    }

    fn commit<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<SinkReport>> {
        Box::pin(async move {
            self.timeline.push(Event::Commit);
            let under_way = self.in_flight.load(Ordering::SeqCst);
            if under_way > 0 {
                return Err(self.refuse(format!("commit with {under_way} puts under way")));
            }
            let stored = lock(&self.stored);
            let missing: Vec<String> = graph
                .blobs
                .iter()
                .map(|b| &b.digest)
                .filter(|d| !self.present.contains(*d) && !self.unwanted.contains(*d))
                .filter(|d| !stored.contains_key(*d))
                .map(|d| d.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(self.refuse(format!("commit without blobs {}", missing.join(", "))));
            }
            Ok(SinkReport {
                destinations: graph
                    .images
                    .iter()
                    .map(|i| format!("memory:{}", i.source))
                    .collect(),
                manifests_written: graph.manifests.len(),
                ..Default::default()
            })
        })
    }
}
