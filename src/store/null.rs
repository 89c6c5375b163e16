//! A sink that keeps nothing: every blob is read to its end, so its digest
//! is checked. `verify` is a copy to it; `import` copies a bundle file to
//! it before the first push, so a corrupt member anywhere stops the import
//! with nothing pushed.

use super::{Prepared, Put, Sink, SinkReport};
use crate::body::Blob;
use crate::error::{Error, Result};
use crate::graph::{BlobInfo, Graph};
use futures_util::future::BoxFuture;

#[derive(Default)]
pub struct NullSink {
    /// Names the source in errors.
    pub source: String,
    /// The source checks every blob it reads past (a one-pass bundle):
    /// asking for blobs would only spool them.
    reading_past: bool,
}

impl NullSink {
    pub fn new(source: &str) -> NullSink {
        NullSink {
            source: source.to_string(),
            reading_past: false,
        }
    }

    /// For a one-pass source, which verifies what it reads past.
    pub fn reading_past(source: &str) -> NullSink {
        NullSink {
            source: source.to_string(),
            reading_past: true,
        }
    }
}

/// An error opening or reading a source's blob: bytes that fail their
/// digest, or a damaged container around them (a bundle member's header),
/// are an integrity failure naming the blob.
pub fn blob_error(source: &str, blob: &BlobInfo, e: std::io::Error) -> Error {
    if crate::digest::is_integrity_error(&e) {
        return Error::Blob {
            origin: source.to_string(),
            blob: blob.digest.layout_path(),
            detail: e.to_string(),
        };
    }
    Error::Io {
        path: format!("{source}: {}", blob.digest.layout_path()),
        source: e,
    }
}

impl Sink for NullSink {
    fn name(&self) -> String {
        "nothing (check only)".into()
    }

    fn prepare<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<Prepared>> {
        Box::pin(async move {
            let mut p = Prepared::default();
            if self.reading_past {
                p.unwanted = graph.blobs.iter().map(|b| b.digest.clone()).collect();
            }
            // An incremental bundle's external blobs are not in it to check.
            p.unwanted.extend(graph.external.keys().cloned());
            Ok(p)
        })
    }

    fn put_blob<'a>(&'a self, blob: &'a BlobInfo, data: Blob) -> BoxFuture<'a, Result<Vec<Put>>> {
        Box::pin(async move {
            let source = self.source.clone();
            let b = blob.clone();
            tokio::task::spawn_blocking(move || {
                data.open()
                    .and_then(|r| r.drain())
                    .map_err(|e| blob_error(&source, &b, e))
            })
            .await
            .map_err(Error::task(&self.source))??;
            Ok(vec![Put::Stored])
        })
    }

    fn commit<'a>(&'a mut self, _graph: &'a Graph) -> BoxFuture<'a, Result<SinkReport>> {
        Box::pin(async { Ok(SinkReport::default()) })
    }
}
