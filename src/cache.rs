//! A content-addressed store of verified blobs (`ROOT/blobs/sha256/<hex>`,
//! the OCI layout's blob layout): an export's state directory, or a
//! persistent `--cache-dir`. A blob enters only by a rename, once its
//! download matched its size and digest, so a name there is a complete
//! download; it is still re-hashed before reuse, since the rename may reach
//! the disk before the data does (a power cut), and a bad file is replaced.

use crate::body::{OpenBlob, Verified};
use crate::digest::Digest;
use crate::error::{Error, Result};
use serde::Serialize;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Blobs reused from the cache and downloaded into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheTally {
    pub reused_blobs: u64,
    pub reused_bytes: u64,
    pub downloaded_blobs: u64,
    pub downloaded_bytes: u64,
}

pub struct BlobCache {
    root: PathBuf,
    blobs: PathBuf,
    /// Downloads in flight. In the export's state directory (which its lock
    /// guards, so a rerun may clear it) even when `root` is a shared cache.
    tmp: PathBuf,
    reused_blobs: AtomicU64,
    reused_bytes: AtomicU64,
    downloaded_blobs: AtomicU64,
    downloaded_bytes: AtomicU64,
}

impl BlobCache {
    /// Blobs under `root`, downloads in flight under `tmp`; both created.
    pub fn open(root: &Path, tmp: &Path) -> Result<BlobCache> {
        let blobs = root.join("blobs").join("sha256");
        for d in [&blobs, &tmp.to_path_buf()] {
            std::fs::create_dir_all(d).map_err(Error::io(d.display()))?;
        }
        Ok(BlobCache {
            root: root.to_path_buf(),
            blobs,
            tmp: tmp.to_path_buf(),
            reused_blobs: AtomicU64::new(0),
            reused_bytes: AtomicU64::new(0),
            downloaded_blobs: AtomicU64::new(0),
            downloaded_bytes: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where downloads in flight (and spools of local blobs) are written.
    pub fn temp_dir(&self) -> &Path {
        &self.tmp
    }

    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn tally(&self) -> CacheTally {
        CacheTally {
            reused_blobs: self.reused_blobs.load(Ordering::Relaxed),
            reused_bytes: self.reused_bytes.load(Ordering::Relaxed),
            downloaded_blobs: self.downloaded_blobs.load(Ordering::Relaxed),
            downloaded_bytes: self.downloaded_bytes.load(Ordering::Relaxed),
        }
    }

    /// The cached blob, if a file of the right size is there and its bytes
    /// hash to `digest`; a file that does not is deleted (it is downloaded
    /// again).
    pub async fn reuse(&self, digest: &Digest, size: u64) -> Result<Option<CachedBlob>> {
        let path = self.path_of(digest);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => {}
            Ok(m) if m.is_file() => {
                remove_if_there(&path)?;
                return Ok(None);
            }
            Ok(_) => {
                return Err(Error::Refused(format!(
                    "{} is not a regular file; remove it from the cache and rerun",
                    path.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path.display())(e)),
        }
        let (p, d) = (path.clone(), digest.clone());
        let intact = tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let f = std::fs::File::open(&p)?;
            let r = Verified::new(f, &d, size, format!("cached blob {}", p.display()));
            match r.drain() {
                Ok(()) => Ok(true),
                Err(e) if crate::digest::is_integrity_error(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(Error::task(path.display()))?
        .map_err(Error::io(path.display()))?;
        if !intact {
            remove_if_there(&path)?;
            return Ok(None);
        }
        self.reused_blobs.fetch_add(1, Ordering::Relaxed);
        self.reused_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Some(CachedBlob {
            path,
            digest: digest.clone(),
            size,
        }))
    }

    /// A temp file for a download in flight: removed if dropped before
    /// [`BlobCache::admit`] (an error, an interruption).
    pub fn temp_file(&self, digest: &Digest) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(&format!("{}.", digest.hex()))
            .suffix(".part")
            .tempfile_in(&self.tmp)
            .map_err(Error::io(self.tmp.display()))
    }

    /// A blob downloaded straight into the bundle, past the cache: counted
    /// with the downloads all the same.
    pub fn count_streamed(&self, size: u64) {
        self.downloaded_blobs.fetch_add(1, Ordering::Relaxed);
        self.downloaded_bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// A blob of this digest is in the cache (not checked: a reuse is).
    pub fn holds(&self, digest: &Digest) -> bool {
        self.path_of(digest).is_file()
    }

    /// A blob read from elsewhere (an unfinished bundle): `data` verifies
    /// its digest on its last read, so it enters the cache only whole and
    /// right. Not counted as a download. True if it was taken.
    pub fn recover(&self, digest: &Digest, size: u64, data: &mut dyn Read) -> Result<bool> {
        let mut tmp = self.temp_file(digest)?;
        let name = tmp.path().display().to_string();
        let copied = crate::body::copy_to_file(data, tmp.as_file_mut());
        match copied {
            Ok(n) if n == size => {}
            _ => return Ok(false),
        }
        let path = self.path_of(digest);
        tmp.persist(&path).map_err(|e| Error::io(name)(e.error))?;
        Ok(true)
    }

    /// `tmp` holds the blob, its size and digest checked as it was
    /// downloaded: rename it into the cache. No fsync: a reuse re-hashes.
    pub fn admit(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
        size: u64,
    ) -> Result<CachedBlob> {
        let path = self.path_of(digest);
        match tmp.persist(&path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::CrossesDevices => {
                copy_across(e.file, &self.blobs, &path)?
            }
            Err(e) => return Err(Error::io(path.display())(e.error)),
        }
        self.downloaded_blobs.fetch_add(1, Ordering::Relaxed);
        self.downloaded_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(CachedBlob {
            path,
            digest: digest.clone(),
            size,
        })
    }
}

/// A --cache-dir on another file system than the state directory: copied
/// to a temp file beside its final name, then renamed, so the name still
/// only ever appears complete.
fn copy_across(tmp: tempfile::NamedTempFile, blobs: &Path, path: &Path) -> Result<()> {
    let mut near = tempfile::Builder::new()
        .prefix(".airlock-cache-")
        .tempfile_in(blobs)
        .map_err(Error::io(blobs.display()))?;
    let mut from = tmp.reopen().map_err(Error::io(tmp.path().display()))?;
    io::copy(&mut from, near.as_file_mut()).map_err(Error::io(near.path().display()))?;
    near.persist(path)
        .map_err(|e| Error::io(path.display())(e.error))?;
    Ok(())
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path.display())(e)),
    }
}

/// A blob in the cache, just verified (re-hashed, or renamed in after a
/// checked download): read back with its size checked, not hashed again.
pub struct CachedBlob {
    path: PathBuf,
    digest: Digest,
    size: u64,
}

impl OpenBlob for CachedBlob {
    fn open(&self) -> io::Result<Verified> {
        let f = std::fs::File::open(&self.path)?;
        let r: Box<dyn Read + Send> = Box::new(io::BufReader::with_capacity(1 << 20, f));
        Ok(Verified::checked_before(
            r,
            self.size,
            format!("blob {} ({})", self.digest, self.path.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_cached_blob_is_deleted_not_reused() {
        let d = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(d.path(), &d.path().join("tmp")).unwrap();
        let digest = Digest::of(b"payload");
        std::fs::write(cache.path_of(&digest), b"paYload").unwrap();
        assert!(cache.reuse(&digest, 7).await.unwrap().is_none());
        assert!(!cache.path_of(&digest).exists());

        let mut t = cache.temp_file(&digest).unwrap();
        std::io::Write::write_all(&mut t, b"payload").unwrap();
        cache.admit(t, &digest, 7).unwrap();
        let hit = cache.reuse(&digest, 7).await.unwrap().unwrap();
        assert_eq!(hit.open().unwrap().read_all(7).unwrap(), b"payload");
        assert_eq!(
            cache.tally(),
            CacheTally {
                reused_blobs: 1,
                reused_bytes: 7,
                downloaded_blobs: 1,
                downloaded_bytes: 7
            }
        );
        assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }
}
