//! A blob's bytes in flight between a source and a sink.
//!
//! Sinks accept nothing but [`Verified`]: a reader that fails at its end,
//! instead of reporting EOF, unless the bytes have the expected size and
//! sha256. Only [`Verified::new`] builds one, and it always wraps the raw
//! reader in a [`VerifyingReader`]; so a sink that commits on EOF (a
//! rename, the last chunk of an upload, the end of a tar member) can never
//! commit bad bytes, whatever the source.

use crate::digest::{Digest, VerifyingReader};
use crate::progress::Progress;
use crate::registry::BlobBody;
use bytes::Bytes;
use std::io::{self, Read};
use std::sync::Arc;

pub struct Verified {
    inner: VerifyingReader<Box<dyn Read + Send>>,
}

impl Verified {
    /// `raw` must yield the blob from its first byte; `what` names it in errors.
    pub fn new(raw: impl Read + Send + 'static, digest: &Digest, size: u64, what: String) -> Self {
        let boxed: Box<dyn Read + Send> = Box::new(raw);
        Verified {
            inner: VerifyingReader::new(boxed, digest.clone(), size, what),
        }
    }

    /// A reader that already verifies (a bundle member's).
    pub fn from_verifying(inner: VerifyingReader<Box<dyn Read + Send>>) -> Self {
        Verified { inner }
    }

    /// Read to the end so that the check runs; the bytes go nowhere.
    pub fn drain(mut self) -> io::Result<()> {
        self.inner.drain()
    }

    /// Read it all (a small blob: a signature payload).
    pub fn read_all(mut self, size_hint: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size_hint.min(crate::oci::MAX_MANIFEST_BYTES) as usize);
        self.inner.read_to_end(&mut out)?;
        Ok(out)
    }
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// A blob that can be opened again from its start, once per attempt: a
/// member of a bundle file, a file in a layout directory, a spool file.
pub trait OpenBlob: Send + Sync {
    fn open(&self) -> io::Result<Verified>;
}

pub type Blob = Arc<dyn OpenBlob>;

/// A blob a source has read past (a pipe) or downloaded: a temp file,
/// re-verified whenever it is opened.
pub struct Spooled {
    file: tempfile::NamedTempFile,
    digest: Digest,
    size: u64,
}

impl Spooled {
    /// A new spool file in `dir`, filled by the caller through [`Spooled::file`].
    pub fn create_in(dir: &std::path::Path, digest: &Digest, size: u64) -> io::Result<Spooled> {
        Ok(Spooled {
            file: tempfile::NamedTempFile::new_in(dir)?,
            digest: digest.clone(),
            size,
        })
    }

    pub fn file(&mut self) -> &mut std::fs::File {
        self.file.as_file_mut()
    }

    pub fn reopen_std(&self) -> io::Result<std::fs::File> {
        self.file.reopen()
    }
}

impl OpenBlob for Spooled {
    fn open(&self) -> io::Result<Verified> {
        let f = io::BufReader::with_capacity(1 << 20, self.file.reopen()?);
        Ok(Verified::new(
            f,
            &self.digest,
            self.size,
            format!("spooled blob {}", self.digest),
        ))
    }
}

/// Bytes held in memory (small blobs read for the policy, our own documents).
pub struct InMemory {
    pub bytes: Bytes,
    pub digest: Digest,
}

impl OpenBlob for InMemory {
    fn open(&self) -> io::Result<Verified> {
        let size = self.bytes.len() as u64;
        Ok(Verified::new(
            io::Cursor::new(self.bytes.clone()),
            &self.digest,
            size,
            format!("blob {}", self.digest),
        ))
    }
}

/// Stream a verified reader into an upload body. The last chunk is held
/// back until the reader reports EOF, which a [`Verified`] does only once
/// the digest matched: a bad blob never reaches its last byte.
pub fn upload_body(mut r: Verified, progress: Progress) -> BlobBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut held: Option<Bytes> = None;
        loop {
            match fill_chunk(&mut r, 256 * 1024) {
                Ok(None) => {
                    if let Some(h) = held.take() {
                        progress.add(h.len() as u64);
                        let _ = tx.blocking_send(Ok(h));
                    }
                    return;
                }
                Ok(Some(chunk)) => {
                    if let Some(h) = held.replace(chunk) {
                        progress.add(h.len() as u64);
                        if tx.blocking_send(Ok(h)).is_err() {
                            return;
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
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Up to `len` bytes (fewer only at the end); `None` at EOF.
fn fill_chunk(r: &mut impl Read, len: usize) -> io::Result<Option<Bytes>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    buf.truncate(filled);
    Ok(Some(Bytes::from(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_fails_at_the_end_on_a_wrong_digest() {
        let good = InMemory {
            bytes: Bytes::from_static(b"hello"),
            digest: Digest::of(b"hello"),
        };
        assert_eq!(good.open().unwrap().read_all(5).unwrap(), b"hello");
        let bad = InMemory {
            bytes: Bytes::from_static(b"hellO"),
            digest: Digest::of(b"hello"),
        };
        let err = bad.open().unwrap().read_all(5).unwrap_err();
        assert!(crate::digest::is_integrity_error(&err), "{err}");
    }
}
