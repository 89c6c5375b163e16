//! A blob's bytes in flight between a source and a sink.
//!
//! Sinks accept nothing but [`Verified`]: a reader that fails at its end,
//! instead of reporting EOF, unless the bytes have the expected size and
//! sha256. [`Verified::new`] always wraps the raw reader in a
//! [`VerifyingReader`]; the other way in is a local file whose bytes were
//! hashed as they were written or just before (a [`Spooled`] file, a blob of
//! the export's cache: [`Verified::checked_before`]), read back with its
//! size checked.
//! So a sink that commits on EOF (a rename, the last chunk of an upload,
//! the end of a tar member) can never commit bad bytes, whatever the source.

use crate::digest::{Digest, VerifyingReader};
use crate::progress::Progress;
use crate::registry::BlobBody;
use bytes::Bytes;
use std::io::{self, Read, Seek, Write};
use std::sync::{Arc, Mutex};

pub struct Verified {
    inner: Inner,
    /// Told how many bytes each read gave (progress).
    observer: Option<Box<dyn FnMut(u64) + Send>>,
}

enum Inner {
    /// Hashed as it is read.
    Hashing(VerifyingReader<Box<dyn Read + Send>>),
    /// A spool file whose bytes were hashed as they were written (see
    /// [`Spooled::fill_from_verifying`]): only its size is checked again.
    Spool(io::Take<Box<dyn Read + Send>>, u64, String),
}

impl Verified {
    /// `raw` must yield the blob from its first byte; `what` names it in errors.
    pub fn new(raw: impl Read + Send + 'static, digest: &Digest, size: u64, what: String) -> Self {
        let boxed: Box<dyn Read + Send> = Box::new(raw);
        Verified {
            inner: Inner::Hashing(VerifyingReader::new(boxed, digest.clone(), size, what)),
            observer: None,
        }
    }

    /// A local file whose bytes were hashed just before it is handed on (a
    /// cache entry re-hashed for reuse, or renamed in after a checked
    /// download): only its size is checked again, so a blob is not hashed
    /// twice on its way.
    pub(crate) fn checked_before(raw: Box<dyn Read + Send>, size: u64, what: String) -> Self {
        Verified {
            inner: Inner::Spool(raw.take(size), size, what),
            observer: None,
        }
    }

    /// A reader that already verifies (a bundle member's).
    pub fn from_verifying(inner: VerifyingReader<Box<dyn Read + Send>>) -> Self {
        Verified {
            inner: Inner::Hashing(inner),
            observer: None,
        }
    }

    /// The same reader, telling `observer` how many bytes each read gave.
    pub fn observed(mut self, observer: impl FnMut(u64) + Send + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Read to the end so that the check runs; the bytes go nowhere.
    pub fn drain(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink()).map(|_| ())
    }

    /// Read it all (a small blob: a signature payload).
    pub fn read_all(mut self, size_hint: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size_hint.min(crate::oci::MAX_MANIFEST_BYTES) as usize);
        self.read_to_end(&mut out)?;
        Ok(out)
    }
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_inner(buf)?;
        if let Some(observe) = self.observer.as_mut() {
            if n > 0 {
                observe(n as u64);
            }
        }
        Ok(n)
    }
}

impl Verified {
    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Hashing(r) => r.read(buf),
            Inner::Spool(r, left, what) => {
                let n = r.read(buf)?;
                *left -= n as u64;
                if n == 0 && !buf.is_empty() && *left > 0 {
                    return Err(crate::digest::integrity_error(format!(
                        "{what} is truncated: {left} bytes missing"
                    )));
                }
                Ok(n)
            }
        }
    }
}

/// A blob that can be opened again from its start, once per attempt: a
/// member of a bundle file, a file in a layout directory, a spool file.
pub trait OpenBlob: Send + Sync {
    fn open(&self) -> io::Result<Verified>;
}

pub type Blob = Arc<dyn OpenBlob>;

/// A blob a source has read past (a pipe) or downloaded: a temp file.
/// Filled through [`Spooled::fill_from_verifying`] (from a reader that verifies, so checked as
/// written) it is read back without a second hash; filled any other way it
/// is re-verified whenever it is opened.
pub struct Spooled {
    lease: Arc<Lease>,
    digest: Digest,
    size: u64,
    hashed_on_write: bool,
}

/// Spool files given back for the next blob. A new file costs the kernel
/// page allocations as it is written and their eviction when it is
/// deleted; a reused one is written over in place (measured: that page
/// cache work was 40 % of a pipe import's CPU, where every blob read past
/// is spooled).
pub struct SpoolPool {
    dir: std::path::PathBuf,
    free: Mutex<Vec<tempfile::NamedTempFile>>,
}

impl SpoolPool {
    /// Files kept for reuse (beyond that a spool file is deleted).
    const KEEP: usize = 8;

    pub fn new(dir: std::path::PathBuf) -> Arc<SpoolPool> {
        Arc::new(SpoolPool {
            dir,
            free: Mutex::new(Vec::new()),
        })
    }

    fn give(&self, file: tempfile::NamedTempFile) {
        if let Ok(mut free) = self.free.lock() {
            if free.len() < Self::KEEP {
                free.push(file);
            }
        }
    }

    fn take(&self) -> Option<tempfile::NamedTempFile> {
        self.free.lock().ok()?.pop()
    }
}

/// One spool file, held by its [`Spooled`] and by every reader opened on
/// it: it goes back to its pool only when all of them are gone, so a file
/// is never written over while anything reads it.
struct Lease {
    file: Option<tempfile::NamedTempFile>,
    pool: Option<Arc<SpoolPool>>,
}

impl Lease {
    fn file(&self) -> io::Result<&tempfile::NamedTempFile> {
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("spool file already released"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(file), Some(pool)) = (self.file.take(), &self.pool) {
            pool.give(file);
        }
    }
}

/// A reader of a spool file that keeps the file leased while it reads.
struct LeasedReader {
    file: io::BufReader<std::fs::File>,
    _lease: Arc<Lease>,
}

impl Read for LeasedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

fn new_spool_file(dir: &std::path::Path) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".airlock-spool-")
        .tempfile_in(dir)
}

impl Spooled {
    /// A new spool file in `dir`, filled by the caller through [`Spooled::reopen_std`].
    pub fn create_in(dir: &std::path::Path, digest: &Digest, size: u64) -> io::Result<Spooled> {
        Ok(Spooled::leased(new_spool_file(dir)?, None, digest, size))
    }

    fn leased(
        file: tempfile::NamedTempFile,
        pool: Option<Arc<SpoolPool>>,
        digest: &Digest,
        size: u64,
    ) -> Spooled {
        Spooled {
            lease: Arc::new(Lease {
                file: Some(file),
                pool,
            }),
            digest: digest.clone(),
            size,
            hashed_on_write: false,
        }
    }

    /// A spool file from `pool` (a used one when there is one, written
    /// over from its start), given back when this spool and its readers
    /// are gone.
    pub fn from_pool(pool: &Arc<SpoolPool>, digest: &Digest, size: u64) -> io::Result<Spooled> {
        let file = match pool.take() {
            Some(f) => f,
            None => new_spool_file(&pool.dir)?,
        };
        Ok(Spooled::leased(file, Some(pool.clone()), digest, size))
    }

    /// Fill the spool from a reader that verifies the blob itself (a
    /// bundle walk's member reader: it fails at its end, instead of
    /// reporting EOF, unless size and sha256 match): the bytes are not
    /// hashed a second time. When this returns Ok the file is the blob.
    pub(crate) fn fill_from_verifying(&mut self, data: &mut dyn Read) -> io::Result<()> {
        let mut file = self.lease.file()?.as_file();
        // A reused file: written over from its start, its old tail cut below.
        file.rewind()?;
        // One byte past the size: the read that finds the end is the one
        // that checks the digest.
        let n = copy_to_file(&mut data.take(self.size + 1), &mut file)?;
        if n != self.size {
            return Err(crate::digest::integrity_error(format!(
                "blob {} read as {n} bytes, expected {}",
                self.digest, self.size
            )));
        }
        file.set_len(self.size)?;
        self.hashed_on_write = true;
        Ok(())
    }

    /// The caller wrote the file with a download that checked size and
    /// digest (`Registry::fetch_blob`).
    pub(crate) fn checked_by_download(&mut self) {
        self.hashed_on_write = true;
    }

    pub fn reopen_std(&self) -> io::Result<std::fs::File> {
        self.lease.file()?.reopen()
    }
}

impl OpenBlob for Spooled {
    fn open(&self) -> io::Result<Verified> {
        let f = LeasedReader {
            file: io::BufReader::with_capacity(1 << 20, self.reopen_std()?),
            _lease: self.lease.clone(),
        };
        if self.hashed_on_write {
            let boxed: Box<dyn Read + Send> = Box::new(f);
            return Ok(Verified {
                observer: None,
                inner: Inner::Spool(
                    boxed.take(self.size),
                    self.size,
                    format!("spooled blob {}", self.digest),
                ),
            });
        }
        Ok(Verified::new(
            f,
            &self.digest,
            self.size,
            format!("spooled blob {}", self.digest),
        ))
    }
}

/// `io::copy` into a file in 1 MiB writes. Its default (8 KiB) costs a
/// syscall per 8 KiB and keeps the page cache in small folios: measured,
/// 1 MiB writes made a pipe import's spooling 11 % faster end to end.
pub fn copy_to_file<W: Write>(data: &mut dyn Read, file: W) -> io::Result<u64> {
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let n = io::copy(data, &mut out)?;
    out.flush()?;
    Ok(n)
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

/// Stream a verified reader into an upload body, from byte `offset` on
/// (a resumed upload: the bytes before it are read and hashed, not sent,
/// so the digest is still checked over the whole blob). The last chunk is
/// held back until the reader reports EOF, which a [`Verified`] does only
/// once the digest matched: a bad blob never reaches its last byte.
pub fn upload_body(mut r: Verified, offset: u64, progress: Progress) -> BlobBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        if offset > 0 {
            match io::copy(&mut (&mut r).take(offset), &mut io::sink()) {
                Ok(n) if n == offset => {}
                Ok(n) => {
                    let _ = tx.blocking_send(Err(crate::digest::integrity_error(format!(
                        "the blob ended at byte {n}, before the upload's offset {offset}"
                    ))));
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
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

    fn spool(pool: &Arc<SpoolPool>, bytes: &[u8]) -> Spooled {
        let mut s = Spooled::from_pool(pool, &Digest::of(bytes), bytes.len() as u64).unwrap();
        let mut reader = Verified::new(
            io::Cursor::new(bytes.to_vec()),
            &Digest::of(bytes),
            bytes.len() as u64,
            "test".into(),
        );
        s.fill_from_verifying(&mut reader).unwrap();
        s
    }

    fn file_of(s: &Spooled) -> std::path::PathBuf {
        s.lease.file().unwrap().path().to_path_buf()
    }

    /// A pooled spool file serves a later blob only once the spool and
    /// every reader of it are gone, and then holds exactly the new blob
    /// (a shorter one does not keep the old tail).
    #[test]
    fn a_spool_file_is_reused_only_when_nothing_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let pool = SpoolPool::new(dir.path().to_path_buf());
        let long = vec![7u8; 100_000];
        let first = spool(&pool, &long);
        let first_path = file_of(&first);
        let open_reader = first.open().unwrap();
        drop(first);
        let second = spool(&pool, b"short");
        assert_ne!(file_of(&second), first_path, "still read: not reused");
        assert_eq!(open_reader.read_all(100_000).unwrap(), long);
        drop(second);
        // Both files are back in the pool now; the next spool takes one and
        // holds exactly its own bytes.
        let third = spool(&pool, b"tiny");
        assert_eq!(std::fs::metadata(file_of(&third)).unwrap().len(), 4);
        assert_eq!(third.open().unwrap().read_all(4).unwrap(), b"tiny");
        let fourth = spool(&pool, b"other");
        assert_eq!(fourth.open().unwrap().read_all(5).unwrap(), b"other");
        let reused = [file_of(&third), file_of(&fourth)];
        assert!(
            reused.contains(&first_path),
            "the long file was reused: {reused:?}"
        );
        drop((third, fourth));
        drop(pool);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the pool deletes its files when it is gone"
        );
    }

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

    /// A resumed upload's body skips what the registry holds, and still
    /// verifies the whole blob: a bad byte in the skipped part fails it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_from_an_offset_sends_the_rest_and_checks_it_all() {
        use futures_util::StreamExt;
        async fn read(bytes: Bytes, digest: &Digest, offset: u64) -> Vec<io::Result<Bytes>> {
            let blob = InMemory {
                bytes,
                digest: digest.clone(),
            };
            let body = upload_body(blob.open().unwrap(), offset, Progress::hidden());
            body.collect::<Vec<_>>().await
        }
        let data = Bytes::from((0..600_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let digest = Digest::of(&data);
        let sent: Vec<u8> = read(data.clone(), &digest, 500_000)
            .await
            .into_iter()
            .flat_map(|r| r.unwrap().to_vec())
            .collect();
        assert_eq!(sent, &data[500_000..]);
        let all = read(data.clone(), &digest, 600_000).await;
        assert!(all.is_empty(), "nothing left to send, and the end is clean");
        let mut bad = data.to_vec();
        bad[10] ^= 1;
        let items = read(Bytes::from(bad), &digest, 500_000).await;
        let err = items.last().unwrap().as_ref().unwrap_err();
        assert!(crate::digest::is_integrity_error(err), "{err}");
    }

    #[test]
    fn a_spool_filled_from_a_verifying_reader_keeps_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"payload");
        let verifying =
            |b: &'static [u8]| VerifyingReader::new(b, d.clone(), 7, "member".to_string());
        let mut good = Spooled::create_in(dir.path(), &d, 7).unwrap();
        good.fill_from_verifying(&mut verifying(b"payload"))
            .unwrap();
        assert_eq!(good.open().unwrap().read_all(7).unwrap(), b"payload");
        for wrong in [&b"paYload"[..], b"pay"] {
            let mut s = Spooled::create_in(dir.path(), &d, 7).unwrap();
            let err = s.fill_from_verifying(&mut verifying(wrong)).unwrap_err();
            assert!(crate::digest::is_integrity_error(&err), "{err}");
            // Never marked as checked: opening it re-verifies, and fails.
            assert!(s.open().unwrap().read_all(7).is_err());
        }
    }
}
