//! The output file of an export and what guards it: one writer per output
//! (an exclusive lock), the resumable state directory beside the output,
//! the clean-up of what a killed run left behind, and the final publish
//! that never replaces a file it did not expect.
//!
//! For `DIR/NAME.tar.zst` the state directory is `DIR/NAME.tar.zst.partial/`:
//!
//! ```text
//! NAME.tar.zst.partial/
//!   lock                 flock(LOCK_EX|LOCK_NB) while an export writes NAME.tar.zst
//!   blobs/sha256/<hex>   verified downloads (unless --cache-dir puts them elsewhere)
//!   tmp/                 downloads in flight; renamed into blobs/ once verified
//!   .NAME.XXXX.unfinished  the bundle being written (volumes: one per volume);
//!                        kept if the export stops, and its complete blobs
//!                        moved into blobs/ by the rerun
//! ```
//!
//! Blobs are streamed from the registry into the bundle, not spooled (one
//! disk write per byte, not two), so a killed export's downloads are in its
//! unfinished bundle: every member complete and matching its digest there
//! is recovered, the rest downloaded again.
//!
//! It is removed when the export succeeds and kept, with its verified
//! blobs, when it fails or is interrupted, so that the same command resumes.

use crate::error::{Error, Result};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// `DIR/NAME.tar.zst.partial`: the resumable state of an export to `output`.
pub fn state_dir(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// The name ending of a bundle (or volume) being written in the state directory.
pub const PARTIAL_OUTPUT_SUFFIX: &str = ".unfinished";

/// What [`recover_partial_outputs`] found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recovered {
    pub blobs: u64,
    pub bytes: u64,
}

/// Move every complete, verified blob of the unfinished bundles an earlier
/// run left in `state` into `cache`, then delete those files. A member is
/// taken only if its bytes hash to the digest the bundle index lists (the
/// file is ours, but a power cut may have left anything in it); reading
/// stops at the first member that is not whole.
pub fn recover_partial_outputs(state: &Path, cache: &crate::cache::BlobCache) -> Result<Recovered> {
    let mut recovered = Recovered::default();
    for path in partial_outputs(state).map_err(Error::io(state.display()))? {
        if let Ok(f) = File::open(&path) {
            let label = path.display().to_string();
            // Where the file stops being whole is expected: an error ends
            // the recovery of this file, whatever it says.
            let _ = crate::bundle::read_whole_members(
                io::BufReader::with_capacity(1 << 20, f),
                &label,
                |member, data| {
                    if !matches!(
                        member.kind,
                        crate::bundle::MemberKind::Small | crate::bundle::MemberKind::Layer
                    ) || cache.holds(&member.digest)
                    {
                        return Ok(());
                    }
                    if cache
                        .recover(&member.digest, member.size, data)
                        .is_ok_and(|took| took)
                    {
                        recovered.blobs += 1;
                        recovered.bytes += member.size;
                    }
                    Ok(())
                },
            );
        }
        remove_file_if_there(&path)?;
    }
    Ok(recovered)
}

/// Where a download is written before it is verified and renamed.
pub fn temp_dir(state: &Path) -> PathBuf {
    state.join("tmp")
}

/// An export's hold on its output: the lock on `NAME.tar.zst.partial/lock`
/// (released when this is dropped, or by the kernel when the process dies)
/// and the state directory.
pub struct OutputGuard {
    output: PathBuf,
    dir: PathBuf,
    /// Held open: closing it releases the lock.
    _lock: File,
    done: bool,
}

impl OutputGuard {
    /// Lock the output (refusing at once if another export holds it), then
    /// remove what an earlier, killed run left: temp output files
    /// `.NAME.*.partial` beside the output and downloads in `tmp/`. Holding
    /// the lock is what makes that safe: no other export writes this output.
    pub fn acquire(output: &Path) -> Result<OutputGuard> {
        let dir = state_dir(output);
        // Another export may remove the directory (its success) between our
        // open and our flock; a lock on a file no longer at that path guards
        // nothing, so try again on the new one.
        for _ in 0..5 {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(Error::Refused(format!(
                        "{} is in the way of the export's state directory (it must be a \
                         directory); move it away and rerun",
                        dir.display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::Usage(format!(
                        "{}: the directory for {} does not exist; create it or choose another \
                         --output",
                        parent_dir(output).display(),
                        file_name(output)
                    )))
                }
                Err(e) => return Err(Error::io(dir.display())(e)),
            }
            let lock_path = dir.join("lock");
            let lock = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .map_err(Error::io(lock_path.display()))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Refused(format!(
                        "another airlock export is writing {} (lock {} is held); wait for it \
                         to finish or stop it, then rerun; if no airlock is running (a lock \
                         on a network file system can outlive its process), remove {}",
                        file_name(output),
                        lock_path.display(),
                        dir.display()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io(lock_path.display())(e))
                }
            }
            if !same_file(&lock, &lock_path) {
                continue;
            }
            let guard = OutputGuard {
                output: output.to_path_buf(),
                dir,
                _lock: lock,
                done: false,
            };
            guard.remove_stale()?;
            return Ok(guard);
        }
        Err(Error::Refused(format!(
            "{}: the lock file keeps being replaced; is another airlock export to {} \
             starting and finishing in a loop? Rerun when it is done",
            dir.display(),
            file_name(output)
        )))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Temp output files of a killed run, and its unfinished downloads.
    fn remove_stale(&self) -> Result<()> {
        let parent = parent_dir(&self.output);
        let prefix = format!(".{}.", file_name(&self.output));
        let entries = std::fs::read_dir(&parent).map_err(Error::io(parent.display()))?;
        for e in entries {
            let e = e.map_err(Error::io(parent.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".partial")
                && (name.starts_with(&prefix) || self.is_volume_temp(&name)))
            {
                continue;
            }
            // Never follow or delete anything but a plain file we could have made.
            let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
            if is_file {
                remove_file_if_there(&e.path())?;
            }
        }
        let tmp = temp_dir(&self.dir);
        match std::fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(tmp.display())(e)),
        }
        Ok(())
    }

    /// `.NAME.NNN.tar.zst.XXXX.partial`: a temp file of one of this output's volumes.
    fn is_volume_temp(&self, name: &str) -> bool {
        let Some(inner) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".partial"))
        else {
            return false;
        };
        inner
            .rsplit_once('.')
            .is_some_and(|(volume, _)| crate::bundle::volumes::is_volume_name(&self.output, volume))
    }

    /// The export succeeded: its state is no longer needed.
    pub fn finish(mut self) -> Result<()> {
        self.done = true;
        std::fs::remove_dir_all(&self.dir).map_err(Error::io(self.dir.display()))
    }

    /// Delete the unfinished bundle(s) in the state directory.
    pub fn discard_partial_output(&self) {
        for path in partial_outputs(&self.dir).unwrap_or_default() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// An unfinished bundle is in the state directory (a rerun recovers it).
    pub fn has_partial_output(&self) -> bool {
        has_partial_output(&self.dir)
    }

    /// Verified blobs the state directory holds (what a rerun will reuse).
    pub fn kept_blobs(&self) -> usize {
        count_blobs(&self.dir)
    }
}

impl Drop for OutputGuard {
    /// A failed or interrupted export keeps its state only when it holds
    /// something to resume from; an empty one (an error before the first
    /// download, or blobs kept in a --cache-dir) would only be litter.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = std::fs::remove_dir_all(temp_dir(&self.dir));
        if count_blobs(&self.dir) == 0 && !has_partial_output(&self.dir) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An unfinished bundle (or volume) in the state directory `dir`.
pub fn has_partial_output(dir: &Path) -> bool {
    partial_outputs(dir).is_ok_and(|p| !p.is_empty())
}

/// The unfinished bundles (plain files named `…unfinished`) in the state
/// directory `dir`; none if there is no such directory.
fn partial_outputs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths = Vec::new();
    for e in entries {
        let e = e?;
        let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file
            && e.file_name()
                .to_string_lossy()
                .ends_with(PARTIAL_OUTPUT_SUFFIX)
        {
            paths.push(e.path());
        }
    }
    Ok(paths)
}

/// Files in `DIR/blobs/sha256`.
pub fn count_blobs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .map(|rd| rd.filter(|e| e.is_ok()).count())
        .unwrap_or(0)
}

#[cfg(unix)]
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

fn remove_file_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path.display())(e)),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Move a finished temp file to `dest`. Without `force` a file that
/// appeared at `dest` meanwhile (another program, another export started
/// with --force) is never replaced: the link fails instead of overwriting,
/// which a check-then-rename could not promise.
pub fn publish(tmp: tempfile::NamedTempFile, dest: &Path, force: bool) -> Result<()> {
    publish_or_keep(tmp, dest, force, false)
}

/// [`publish`]; with `keep`, a file refused because `dest` appeared stays
/// where it is (an unfinished bundle in the state directory: the rerun
/// recovers its blobs).
pub fn publish_or_keep(
    tmp: tempfile::NamedTempFile,
    dest: &Path,
    force: bool,
    keep: bool,
) -> Result<()> {
    let refuse = |tmp: tempfile::NamedTempFile, e: Error| {
        if keep {
            let _ = tmp.keep();
        }
        Err(e)
    };
    if force {
        tmp.persist(dest).map_err(|e| Error::Io {
            path: dest.display().to_string(),
            source: e.error,
        })?;
        return sync_parent(dest);
    }
    match std::fs::hard_link(tmp.path(), dest) {
        Ok(()) => {
            // The temp name goes when `tmp` drops; the bundle keeps its inode.
            drop(tmp);
            sync_parent(dest)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => refuse(
            tmp,
            Error::Refused(format!(
                "{} appeared while this export was writing it and was left as it is; the new \
                 bundle was not published; move that file away and rerun (downloaded blobs \
                 are reused), or rerun with --force to replace it",
                dest.display()
            )),
        ),
        // A file system without hard links (FAT, some network mounts): a
        // rename after a check is the best it offers.
        Err(e)
            if e.kind() == io::ErrorKind::Unsupported
                || e.kind() == io::ErrorKind::PermissionDenied =>
        {
            if dest.symlink_metadata().is_ok() {
                return refuse(
                    tmp,
                    Error::Refused(format!(
                        "{} appeared while this export was writing it and was left as it is; \
                         move it away and rerun, or rerun with --force to replace it",
                        dest.display()
                    )),
                );
            }
            tmp.persist(dest).map_err(|e| Error::Io {
                path: dest.display().to_string(),
                source: e.error,
            })?;
            sync_parent(dest)
        }
        Err(e) => Err(Error::io(dest.display())(e)),
    }
}

/// A new name survives a power cut only once its directory is on disk.
fn sync_parent(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    #[cfg(unix)]
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_is_named_after_the_output() {
        assert_eq!(
            state_dir(Path::new("/x/mirror.tar.zst")),
            Path::new("/x/mirror.tar.zst.partial")
        );
    }

    #[test]
    fn a_second_guard_on_one_output_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("b.tar.zst");
        let first = OutputGuard::acquire(&out).unwrap();
        let err = OutputGuard::acquire(&out).err().unwrap().to_string();
        assert!(
            err.contains("another airlock export is writing b.tar.zst"),
            "{err}"
        );
        drop(first);
        // Nothing to resume from: the state directory went with the guard.
        assert!(!state_dir(&out).exists());
        OutputGuard::acquire(&out).unwrap().finish().unwrap();
        assert!(!state_dir(&out).exists());
    }

    #[test]
    fn an_unfinished_bundle_that_is_not_one_yields_nothing_and_goes() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("b.tar.zst.partial");
        std::fs::create_dir_all(&state).unwrap();
        let cache = crate::cache::BlobCache::open(&state, &temp_dir(&state)).unwrap();
        let junk = state.join(format!(".b.tar.zst.XyZ{PARTIAL_OUTPUT_SUFFIX}"));
        // Not zstd at all, then a zstd frame of garbage that is no tar.
        for bytes in [
            b"not a bundle".to_vec(),
            zstd::bulk::compress(&[7u8; 4096], 1).unwrap(),
        ] {
            std::fs::write(&junk, bytes).unwrap();
            assert!(has_partial_output(&state));
            let got = recover_partial_outputs(&state, &cache).unwrap();
            assert_eq!((got.blobs, got.bytes), (0, 0));
            assert!(!junk.exists(), "the unfinished file is removed");
            assert_eq!(count_blobs(&state), 0, "nothing entered the cache");
        }
    }

    #[test]
    fn stale_temp_files_are_removed_and_blobs_kept() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("b.tar.zst");
        let state = state_dir(&out);
        std::fs::create_dir_all(state.join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(temp_dir(&state)).unwrap();
        std::fs::write(state.join("blobs/sha256/ab"), b"x").unwrap();
        std::fs::write(temp_dir(&state).join("half"), b"x").unwrap();
        std::fs::write(d.path().join(".b.tar.zst.XyZ.partial"), b"x").unwrap();
        std::fs::write(d.path().join(".other.tar.zst.XyZ.partial"), b"x").unwrap();
        std::fs::write(d.path().join(".b.003.tar.zst.XyZ.partial"), b"x").unwrap();
        let g = OutputGuard::acquire(&out).unwrap();
        assert!(!d.path().join(".b.tar.zst.XyZ.partial").exists());
        assert!(d.path().join(".other.tar.zst.XyZ.partial").exists());
        assert!(!d.path().join(".b.003.tar.zst.XyZ.partial").exists());
        assert!(!temp_dir(&state).join("half").exists());
        assert_eq!(g.kept_blobs(), 1);
        drop(g);
        assert!(state.join("blobs/sha256/ab").exists(), "blobs are kept");
    }

    #[test]
    fn publish_never_replaces_without_force() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("b.tar.zst");
        std::fs::write(&dest, b"foreign").unwrap();
        let mut tmp = tempfile::NamedTempFile::new_in(d.path()).unwrap();
        std::io::Write::write_all(&mut tmp, b"ours").unwrap();
        let tmp_path = tmp.path().to_path_buf();
        let err = publish(tmp, &dest, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"foreign");
        assert!(!tmp_path.exists(), "the temp file is removed");

        let mut tmp = tempfile::NamedTempFile::new_in(d.path()).unwrap();
        std::io::Write::write_all(&mut tmp, b"ours").unwrap();
        publish(tmp, &dest, true).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"ours");

        let fresh = d.path().join("c.tar.zst");
        let mut tmp = tempfile::NamedTempFile::new_in(d.path()).unwrap();
        std::io::Write::write_all(&mut tmp, b"new").unwrap();
        publish(tmp, &fresh, false).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
