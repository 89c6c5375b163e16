//! A bundle as a [`Sink`]: to a file (temp file beside it, fsync, rename,
//! then the `.sha256` sidecar: the bundle appears only complete) or to
//! stdout (a data diode: no rename, no sidecar; the digests go to the
//! report).
//!
//! The bundle index is written first, so the sink needs the whole graph at
//! [`Sink::prepare`]; it then takes blobs in its member order. One thread
//! owns the tar/zstd writer and hashes the output as it goes; frames are
//! compressed on all cores inside it (`frames.rs`).

use super::writer::BundleWriter;
use super::{BundleIndex, Member, MemberKind, INDEX_PATH};
use crate::body::Blob;
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::graph::{BlobInfo, Graph};
use crate::store::{FileReport, Prepared, Put, Sink, SinkReport};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub level: i32,
    pub threads: usize,
    pub frame_max: usize,
    /// Replace an existing output file.
    pub force: bool,
    /// Members queued for the writer thread.
    pub queue: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            level: 3,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            frame_max: super::frames::DEFAULT_FRAME_MAX,
            force: false,
            queue: 6,
        }
    }
}

/// Where the bundle goes.
#[derive(Clone, Debug)]
pub enum Output {
    File(PathBuf),
    Stdout,
}

enum Item {
    Memory(Bytes),
    Blob(Blob),
}

type Written = std::io::Result<(Digest, u64)>;

pub struct BundleSink {
    output: Output,
    opts: WriteOptions,
    index: Option<(BundleIndex, Vec<u8>)>,
    temp: Option<tempfile::NamedTempFile>,
    tx: Option<mpsc::Sender<Item>>,
    writer: Option<tokio::task::JoinHandle<Written>>,
}

impl BundleSink {
    /// Refuses an existing file unless `opts.force`, before anything is resolved.
    pub fn new(output: Output, opts: WriteOptions) -> Result<BundleSink> {
        if let Output::File(path) = &output {
            if path.exists() && !opts.force {
                return Err(Error::Refused(format!(
                    "{} already exists; remove it or pass --force",
                    path.display()
                )));
            }
            file_name(path)?;
        }
        Ok(BundleSink {
            output,
            opts,
            index: None,
            temp: None,
            tx: None,
            writer: None,
        })
    }

    /// The bundle index bytes (hash = bundle digest), once prepared.
    pub fn index_bytes(&self) -> Option<&[u8]> {
        self.index.as_ref().map(|(_, b)| b.as_slice())
    }

    pub fn bundle_digest(&self) -> Option<Digest> {
        self.index_bytes().map(Digest::of)
    }

    fn open_output(&mut self) -> Result<Box<dyn Write + Send>> {
        match &self.output {
            Output::Stdout => Ok(Box::new(std::io::stdout())),
            Output::File(path) => {
                let dir = parent_dir(path);
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".{}.", file_name(path)?))
                    .suffix(".partial")
                    .tempfile_in(&dir)
                    .map_err(Error::io(dir.display()))?;
                let f = tmp.reopen().map_err(Error::io(tmp.path().display()))?;
                self.temp = Some(tmp);
                Ok(Box::new(f))
            }
        }
    }

    fn start_writer(&mut self, index_bytes: Vec<u8>, members: Vec<Member>) -> Result<()> {
        let out = self.open_output()?;
        let (tx, mut rx) = mpsc::channel::<Item>(self.opts.queue.max(1));
        let (level, threads, frame_max) = (self.opts.level, self.opts.threads, self.opts.frame_max);
        self.writer = Some(tokio::task::spawn_blocking(move || -> Written {
            let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
            let mut w = BundleWriter::new(hashing, level, threads, frame_max)?;
            w.append(INDEX_PATH, index_bytes.len() as u64, &mut &index_bytes[..])?;
            for m in &members {
                let item = rx.blocking_recv().ok_or_else(|| {
                    std::io::Error::other("the copy stopped before every member was written")
                })?;
                match item {
                    Item::Memory(b) => w.append(&m.path, m.size, &mut &b[..])?,
                    Item::Blob(blob) => {
                        let mut r = std::io::BufReader::with_capacity(1 << 20, blob.open()?);
                        w.append(&m.path, m.size, &mut r)?;
                    }
                }
            }
            let (hashing, _) = w.finish()?;
            let (buf, digest, len) = hashing.finish();
            let mut out = buf.into_inner().map_err(|e| e.into_error())?;
            out.flush()?;
            drop(out);
            Ok((digest, len))
        }));
        self.tx = Some(tx);
        Ok(())
    }

    async fn send(&self, item: Item) -> Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(item).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The writer stopped; its own error is reported by commit.
            Err(Error::Io {
                path: self.name(),
                source: std::io::Error::other("the bundle writer stopped"),
            })
        }
    }

    async fn finish_writer(&mut self) -> Result<(Digest, u64)> {
        self.tx = None;
        let writer = self.writer.take().ok_or_else(|| Error::Io {
            path: self.name(),
            source: std::io::Error::other("the bundle writer never started"),
        })?;
        let name = self.temp_name();
        writer
            .await
            .map_err(Error::task(&name))?
            .map_err(|e| blob_or_io_error(&name, e))
    }

    fn temp_name(&self) -> String {
        match &self.temp {
            Some(t) => t.path().display().to_string(),
            None => self.name(),
        }
    }

    /// fsync, make it readable, rename into place, then the sidecar.
    fn persist(&mut self, path: &Path, digest: &Digest) -> Result<()> {
        let Some(tmp) = self.temp.take() else {
            return Ok(());
        };
        let tmp_name = tmp.path().display().to_string();
        tmp.as_file().sync_all().map_err(Error::io(&tmp_name))?;
        make_readable(tmp.as_file(), &tmp_name)?;
        crate::output::publish(tmp, path, self.opts.force)?;
        write_sidecar(path, digest)
    }
}

/// An error from the writer thread: a blob that failed its digest names the
/// blob (it came from a source), anything else is the output file's.
fn blob_or_io_error(path: &str, e: std::io::Error) -> Error {
    if crate::digest::is_integrity_error(&e) {
        return Error::Refused(format!("{e}; nothing was written to {path}"));
    }
    Error::Io {
        path: path.to_string(),
        source: e,
    }
}

impl Sink for BundleSink {
    fn name(&self) -> String {
        match &self.output {
            Output::File(p) => p.display().to_string(),
            Output::Stdout => "stdout".into(),
        }
    }

    fn prepare<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<Prepared>> {
        Box::pin(async move {
            let (index, index_json) = BundleIndex::for_graph(graph);
            let index_bytes = index.to_bytes();
            self.start_writer(index_bytes.clone(), index.members.clone())?;
            self.send(Item::Memory(Bytes::from_static(
                crate::layout::OCI_LAYOUT_BYTES,
            )))
            .await?;
            self.send(Item::Memory(Bytes::from(index_json))).await?;
            for m in index
                .members
                .iter()
                .filter(|m| m.kind == MemberKind::Manifest)
            {
                if let Some(raw) = graph.manifests.get(&m.digest) {
                    self.send(Item::Memory(raw.bytes.clone())).await?;
                }
            }
            let order = index
                .members
                .iter()
                .filter(|m| matches!(m.kind, MemberKind::Small | MemberKind::Layer))
                .map(|m| m.digest.clone())
                .collect();
            self.index = Some((index, index_bytes));
            Ok(Prepared {
                order: Some(order),
                ..Default::default()
            })
        })
    }

    fn put_blob<'a>(&'a self, _blob: &'a BlobInfo, data: Blob) -> BoxFuture<'a, Result<Vec<Put>>> {
        Box::pin(async move {
            self.send(Item::Blob(data)).await?;
            Ok(vec![Put::Stored])
        })
    }

    fn commit<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<SinkReport>> {
        Box::pin(async move {
            let (digest, size) = self.finish_writer().await?;
            if let Output::File(path) = self.output.clone() {
                self.persist(&path, &digest)?;
            }
            Ok(SinkReport {
                destinations: vec![self.name(); graph.images.len()],
                manifests_written: self
                    .index
                    .as_ref()
                    .map(|(i, _)| {
                        i.members
                            .iter()
                            .filter(|m| m.kind == MemberKind::Manifest)
                            .count()
                    })
                    .unwrap_or(0),
                file: Some(FileReport {
                    path: self.name(),
                    sha256: digest.hex(),
                    size,
                }),
                ..Default::default()
            })
        })
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Selection(format!("{} is not a file name", path.display())))
}

/// Temp files are created 0600; a bundle is meant to be shared.
fn make_readable(f: &std::fs::File, name: &str) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(Error::io(name))?;
    }
    Ok(())
}

/// `NAME.sha256` in `sha256sum` format.
pub fn sidecar_path(bundle: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", bundle.display()))
}

/// `NAME.sig`: the bundle signature beside the bundle.
pub fn signature_path(bundle: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", bundle.display()))
}

fn write_sidecar(out: &Path, digest: &Digest) -> Result<()> {
    let line = format!("{}  {}\n", digest.hex(), file_name(out)?);
    write_atomically(&sidecar_path(out), line.as_bytes())
}

/// The sidecar's path and the hex digest it holds, if there is one.
/// Read with a limit: a sidecar is one line.
pub fn read_sidecar(bundle: &Path) -> Option<(String, String)> {
    use std::io::Read;
    let side = sidecar_path(bundle);
    let mut text = String::new();
    std::fs::File::open(&side)
        .ok()?
        .take(4096)
        .read_to_string(&mut text)
        .ok()?;
    let hex = text.split_whitespace().next()?.to_ascii_lowercase();
    Some((side.display().to_string(), hex))
}

/// Write a small file next to the bundle: temp, fsync, rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let name = path.display().to_string();
    let mut t = tempfile::NamedTempFile::new_in(&dir).map_err(Error::io(&name))?;
    t.write_all(data).map_err(Error::io(&name))?;
    t.as_file().sync_all().map_err(Error::io(&name))?;
    make_readable(t.as_file(), &name)?;
    t.persist(path).map_err(|e| Error::Io {
        path: name.clone(),
        source: e.error,
    })?;
    Ok(())
}
