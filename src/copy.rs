//! The one copy engine: every blob of a resolved [`Graph`] from a
//! [`Source`] to a [`Sink`], then the sink commits (manifests, tags,
//! index files, the rename of a finished file).
//!
//! The caller resolves the graph and runs its gate (completeness, policy)
//! first; the engine then calls [`Sink::prepare`] before the first blob, so
//! a destination sees nothing of a graph that was refused. Four ways to
//! move blobs, one per kind of source and sink:
//!
//! | source \ sink | any order (registry, directory, null) | in order (bundle) |
//! |---|---|---|
//! | random access (registry, bundle file, directory) | `jobs` blobs at once, each fetched then put | fetched `jobs` ahead, put in order |
//! | one pass (bundle on a pipe) | read in order, up to `jobs` puts in flight | read and put in order |

use crate::body::Blob;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::graph::{BlobInfo, Graph};
use crate::progress::Progress;
use crate::store::{Put, Sink, SinkReport, Source};
use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Blobs in flight at once.
    pub jobs: usize,
    /// Label of the progress line (`export`, `import`, `verify`, `copy`).
    pub label: &'static str,
    /// Where progress goes (default: nowhere).
    pub events: crate::progress::EventsHandle,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            jobs: 6,
            label: "copy",
            events: Default::default(),
        }
    }
}

impl CopyOptions {
    pub fn new(jobs: usize, label: &'static str, events: crate::progress::EventsHandle) -> Self {
        CopyOptions {
            jobs,
            label,
            events,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyReport {
    pub blobs_stored: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    pub bytes_sent: u64,
    pub bytes_skipped: u64,
    pub sink: SinkReport,
}

impl CopyReport {
    fn tally(&mut self, outcomes: &[Put], size: u64) {
        for o in outcomes {
            match o {
                Put::Stored => {
                    self.blobs_stored += 1;
                    self.bytes_sent += size;
                }
                Put::Mounted => {
                    self.blobs_mounted += 1;
                    self.bytes_skipped += size;
                }
                Put::Present => {
                    self.blobs_present += 1;
                    self.bytes_skipped += size;
                }
            }
        }
    }
}

/// Blobs an incremental bundle relies on must be at the destination (or
/// not wanted by it, as a bundle or a verification), before anything moves.
fn check_external(graph: &Graph, prepared: &crate::store::Prepared, sink: &str) -> Result<()> {
    let missing: Vec<String> = graph
        .external
        .iter()
        .filter(|(d, _)| !prepared.present.contains(*d) && !prepared.unwanted.contains(*d))
        .map(|(d, from)| {
            let size = graph.blob(d).map(|b| b.size).unwrap_or(0);
            match from {
                Some(base) => format!(
                    "{d} ({}), carried by {base}",
                    crate::progress::human_bytes(size)
                ),
                None => format!("{d} ({})", crate::progress::human_bytes(size)),
            }
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::BaseMissing {
        destination: sink.to_string(),
        missing,
    })
}

/// Move every blob of `graph` from `source` to `sink`, then commit.
pub async fn copy(
    source: &mut dyn Source,
    graph: &Graph,
    sink: &mut dyn Sink,
    opts: &CopyOptions,
) -> Result<CopyReport> {
    let prepared = sink.prepare(graph).await?;
    check_external(graph, &prepared, &sink.name())?;
    let mut report = CopyReport::default();
    let mut todo: Vec<&BlobInfo> = Vec::new();
    for b in &graph.blobs {
        if prepared.unwanted.contains(&b.digest) {
            continue;
        }
        if prepared.present.contains(&b.digest) {
            report.tally(&[Put::Present], b.size);
        } else {
            todo.push(b);
        }
    }
    let ordered = prepared.order.is_some();
    if let Some(order) = &prepared.order {
        todo = in_sink_order(graph, &todo, order, source.sequential(), &source.name())?;
    }
    let progress = opts
        .events
        .0
        .progress(opts.label, todo.iter().map(|b| b.size).sum());
    let jobs = opts.jobs.max(1);
    let how = Move {
        source: &*source,
        graph,
        sink: &*sink,
        jobs,
        progress: &progress,
        reads_once: prepared.reads_once,
    };
    let moved = match (source.sequential(), ordered) {
        (false, false) => how.random_any_order(&todo).await,
        (false, true) => how.random_in_order(&todo).await,
        (true, ordered) => how.one_pass(&todo, ordered).await,
    };
    for (outcomes, size) in moved? {
        report.tally(&outcomes, size);
    }
    // A one-pass source reads (and checks) what follows the last blob it
    // handed out before anything is committed.
    source.finish().await?;
    // A sink that reads blobs as it writes (a bundle) is still reading them
    // here: the progress line runs until it is done.
    report.sink = sink.commit(graph).await?;
    progress.finish();
    Ok(report)
}

type Moved = Vec<(Vec<Put>, u64)>;

/// The blobs to move, in the order the sink wants. A one-pass source cannot
/// reorder: its order must already be the sink's.
fn in_sink_order<'g>(
    graph: &'g Graph,
    todo: &[&'g BlobInfo],
    order: &[Digest],
    sequential: bool,
    source: &str,
) -> Result<Vec<&'g BlobInfo>> {
    let mut wanted: std::collections::HashSet<&Digest> = todo.iter().map(|b| &b.digest).collect();
    // Each wanted blob once, at its first place in the sink's order.
    let sorted: Vec<&BlobInfo> = order
        .iter()
        .filter(|d| wanted.remove(d))
        .filter_map(|d| graph.blob(d))
        .collect();
    if sorted.len() != todo.len() {
        return Err(Error::Refused(format!(
            "{source}: the destination does not list every blob of the copy"
        )));
    }
    if sequential && sorted.iter().zip(todo).any(|(a, b)| a.digest != b.digest) {
        return Err(Error::Refused(format!(
            "{source} can be read only once, in an order the destination cannot take: copy from a file instead"
        )));
    }
    Ok(sorted)
}

/// A blob from the source, or from the payloads the graph already holds
/// (signature payloads read for the policy are not downloaded twice).
async fn fetch(source: &dyn Source, graph: &Graph, blob: &BlobInfo, once: bool) -> Result<Blob> {
    if let Some(bytes) = graph.payloads.get(&blob.digest) {
        if !source.sequential() {
            return Ok(std::sync::Arc::new(crate::body::InMemory {
                bytes: bytes.clone(),
                digest: blob.digest.clone(),
            }));
        }
    }
    if once {
        return source.fetch_once(graph, blob).await;
    }
    source.fetch(graph, blob).await
}

/// A blob whose reads move the progress line as the sink consumes it; a
/// re-opened blob (a retry) counts only bytes beyond what was counted.
struct Counted {
    inner: Blob,
    counted: Arc<AtomicU64>,
    progress: Progress,
}

impl crate::body::OpenBlob for Counted {
    fn open(&self) -> std::io::Result<crate::body::Verified> {
        let counted = self.counted.clone();
        let progress = self.progress.clone();
        let mut at = 0u64;
        Ok(self.inner.open()?.observed(move |n| {
            at += n;
            let before = counted.fetch_max(at, Ordering::Relaxed);
            if at > before {
                progress.add(at - before);
            }
        }))
    }
}

async fn put(
    sink: &dyn Sink,
    blob: &BlobInfo,
    data: Blob,
    progress: &Progress,
    reads_once: bool,
) -> Result<(Vec<Put>, u64)> {
    let counted = Arc::new(AtomicU64::new(0));
    let data: Blob = Arc::new(Counted {
        inner: data,
        counted: counted.clone(),
        progress: progress.clone(),
    });
    let outcomes = sink.put_blob(blob, data).await?;
    if reads_once {
        // Queued for a writer that reads it later: its reads move the line.
        return Ok((outcomes, blob.size));
    }
    // Mounted or already there: the blob is done for the progress line,
    // whatever was read of it so far (and later reads of it add nothing).
    let before = counted.fetch_max(blob.size, Ordering::Relaxed);
    progress.add(blob.size.saturating_sub(before));
    Ok((outcomes, blob.size))
}

/// What every way of moving blobs shares.
struct Move<'a> {
    source: &'a dyn Source,
    graph: &'a Graph,
    sink: &'a dyn Sink,
    jobs: usize,
    progress: &'a Progress,
    /// The sink reads each blob once, as it is put.
    reads_once: bool,
}

impl Move<'_> {
    async fn fetch(&self, blob: &BlobInfo, once: bool) -> Result<Blob> {
        fetch(self.source, self.graph, blob, once).await
    }

    async fn put(&self, blob: &BlobInfo, data: Blob) -> Result<(Vec<Put>, u64)> {
        put(self.sink, blob, data, self.progress, self.reads_once).await
    }

    async fn random_any_order(&self, todo: &[&BlobInfo]) -> Result<Moved> {
        // Largest first: the last blobs to start are small ones, so the
        // copy does not end on one large blob moving alone on one stream.
        let mut todo = todo.to_vec();
        todo.sort_by_key(|b| std::cmp::Reverse(b.size));
        futures_util::stream::iter(todo)
            .map(|b| async move {
                let data = self.fetch(b, self.reads_once).await?;
                self.put(b, data).await
            })
            .buffer_unordered(self.jobs)
            .try_collect()
            .await
    }

    async fn random_in_order(&self, todo: &[&BlobInfo]) -> Result<Moved> {
        let mut fetched = futures_util::stream::iter(todo.iter().copied())
            .map(|b| async move { self.fetch(b, self.reads_once).await.map(|d| (b, d)) })
            .buffered(self.jobs);
        let mut out = Vec::new();
        while let Some(item) = fetched.next().await {
            let (b, data) = item?;
            out.push(self.put(b, data).await?);
        }
        Ok(out)
    }

    /// A one-pass source: fetch strictly in order (the source reads past what
    /// is not asked for); puts overlap up to `jobs` unless the sink wants order.
    async fn one_pass(&self, todo: &[&BlobInfo], ordered: bool) -> Result<Moved> {
        let mut out = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        for b in todo.iter().copied() {
            // Uploads keep going while the source reads the next blob.
            let next = self.fetch(b, false);
            tokio::pin!(next);
            let data = loop {
                tokio::select! {
                    data = &mut next => break data?,
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => out.push(done?),
                }
            };
            if ordered {
                out.push(self.put(b, data).await?);
                continue;
            }
            while in_flight.len() >= self.jobs {
                if let Some(done) = in_flight.next().await {
                    out.push(done?);
                }
            }
            in_flight.push(self.put(b, data));
        }
        while let Some(done) = in_flight.next().await {
            out.push(done?);
        }
        Ok(out)
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::Task {
            what: "copy".into(),
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{InMemory, OpenBlob};
    use std::io::Read;

    #[test]
    fn progress_follows_reads_and_a_retry_is_not_counted_twice() {
        let bytes = bytes::Bytes::from(vec![7u8; 100_000]);
        let progress = Progress::hidden();
        let counted = Arc::new(AtomicU64::new(0));
        let blob = Counted {
            inner: Arc::new(InMemory {
                digest: Digest::of(&bytes),
                bytes: bytes.clone(),
            }),
            counted: counted.clone(),
            progress: progress.clone(),
        };
        // A first attempt that stops half way, then a full one.
        let mut half = vec![0u8; 50_000];
        blob.open().unwrap().read_exact(&mut half).unwrap();
        assert_eq!(progress.done(), 50_000);
        blob.open().unwrap().read_all(100_000).unwrap();
        assert_eq!(progress.done(), 100_000);
        blob.open().unwrap().drain().unwrap();
        assert_eq!(progress.done(), 100_000);
    }
}
