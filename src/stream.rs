//! A blob read while it downloads: the download runs as its own task
//! (hashing there, on any core), hands chunks to the one reader through a
//! window of at most [`WINDOW`] bytes, and ends the stream only after the
//! digest matched. An export writes such a blob straight into the bundle
//! instead of spooling it to disk first (which wrote every byte twice).
//!
//! The reader can open it once: a sink that may need a second read (an
//! upload retry) gets spooled blobs instead.

use crate::body::{OpenBlob, Verified};
use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::registry::ChunkTarget;
use crate::store::Resolver;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Semaphore};

/// Bytes a download may run ahead of its reader.
pub const WINDOW: usize = 1 << 20;

type Chunk = io::Result<Bytes>;

pub struct Streamed {
    reader: Mutex<Option<StreamReader>>,
    digest: Digest,
    size: u64,
}

/// Stops the download when whoever holds the stream drops it: the
/// unopened blob (a cancelled export), or its reader.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Streamed {
    /// Start downloading `desc` of `repo` from `store` now.
    pub fn start(store: Arc<dyn Resolver>, repo: String, desc: Descriptor) -> Streamed {
        let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
        let window = Arc::new(Semaphore::new(WINDOW));
        let target = ChannelTarget {
            tx: tx.clone(),
            window: window.clone(),
        };
        let (digest, size) = (desc.digest.clone(), desc.size);
        let task = tokio::spawn(async move {
            let mut target = target;
            if let Err(e) = store.fetch_blob_chunks(&repo, &desc, &mut target).await {
                // Carried whole: the sink reports the registry's error as such.
                let _ = tx.send(Err(io::Error::other(e)));
            }
            // Dropping the senders is the end of the stream: after the digest matched.
        })
        .abort_handle();
        Streamed {
            reader: Mutex::new(Some(StreamReader {
                rx,
                window,
                current: Bytes::new(),
                _task: AbortOnDrop(task),
            })),
            digest,
            size,
        }
    }
}

impl OpenBlob for Streamed {
    fn open(&self) -> io::Result<Verified> {
        let reader = self
            .reader
            .lock()
            .map_err(|_| io::Error::other("streamed blob lock poisoned"))?
            .take()
            .ok_or_else(|| {
                io::Error::other(format!(
                    "blob {} is streamed from its registry and can be read only once",
                    self.digest
                ))
            })?;
        // The download task checks the digest; an early end (the task
        // stopped) is caught here as a short read.
        Ok(Verified::checked_before(
            Box::new(reader),
            self.size,
            format!("blob {}", self.digest),
        ))
    }
}

struct ChannelTarget {
    tx: mpsc::UnboundedSender<Chunk>,
    window: Arc<Semaphore>,
}

impl ChunkTarget for ChannelTarget {
    fn put(&mut self, chunk: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let mut chunk = chunk;
            // Pieces of at most the window, so that one large chunk cannot
            // wait for more permits than exist.
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(WINDOW));
                let permits = self
                    .window
                    .acquire_many(piece.len() as u32)
                    .await
                    .map_err(|_| io::Error::other("the reader of the blob stopped"))?;
                permits.forget();
                self.tx
                    .send(Ok(piece))
                    .map_err(|_| io::Error::other("the reader of the blob stopped"))?;
            }
            Ok(())
        })
    }
}

struct StreamReader {
    rx: mpsc::UnboundedReceiver<Chunk>,
    window: Arc<Semaphore>,
    current: Bytes,
    _task: AbortOnDrop,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => {
                    self.window.add_permits(b.len());
                    self.current = b;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
