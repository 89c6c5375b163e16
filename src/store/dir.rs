//! An OCI image layout directory (`oci:DIR[:REF]`): what skopeo, oras,
//! crane and scanners read and write.
//!
//! Reading ([`LayoutReader`]) answers the same questions a registry does
//! (manifests by ref name or digest, "tags", referrers), so selections are
//! resolved by the same code as for registries. Every blob it hands on is
//! checked (size, then sha256 as it streams), and no path is followed
//! through a symlink: `blobs`, `blobs/sha256` and every blob must be real
//! directories and files inside DIR, and blobs are opened with
//! `O_NOFOLLOW`.
//!
//! Writing ([`DirSink`]) follows ocidir-rs: each blob is written to a temp
//! file inside `blobs/sha256`, hashed while it is written, and renamed to
//! its digest only once the digest and size are proven; manifests after
//! blobs; `index.json` last, atomically, so a reader never sees a name for
//! content that is not all there. A ref name that already points to other
//! content is a refusal unless asked (`--on-existing-tag`).

use super::registry::OnExistingTag;
use super::{Prepared, Put, Resolver, Sink, SinkReport};
use crate::body::Blob;
use crate::digest::{Digest, VerifyingReader};
use crate::error::{Error, Result};
use crate::graph::{BlobInfo, Graph};
use crate::layout::{self, LayoutDescriptor, LayoutIndex, MAX_INDEX_JSON};
use crate::oci::{Descriptor, Manifest, MAX_MANIFEST_BYTES};
use crate::registry::RegistryError;
use futures_util::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use crate::layout::{
    check_no_symlinks, default_repository, open_nofollow, read_limited, split_ref_name, LayoutError,
};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError {
    let path = path.display().to_string();
    move |source| LayoutError::Io { path, source }
}

type Subjects = HashMap<Digest, Vec<Descriptor>>;

/// A layout directory opened for reading.
pub struct LayoutReader {
    dir: PathBuf,
    name: String,
    default_repo: String,
    index: Vec<LayoutDescriptor>,
    /// subject digest → descriptors of the manifests that name it; or the
    /// first manifest of index.json that could not be read.
    subjects: OnceLock<std::result::Result<Subjects, (Digest, String)>>,
}

impl LayoutReader {
    pub fn open(dir: &Path) -> std::result::Result<LayoutReader, LayoutError> {
        let name = format!("oci:{}", dir.display());
        let not_layout = |detail: &str| LayoutError::NotALayout {
            dir: dir.display().to_string(),
            detail: detail.into(),
        };
        let marker = check_no_symlinks(dir, &["oci-layout"])?;
        let text = read_limited(&marker, 4096).map_err(|_| not_layout("no oci-layout file"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|_| not_layout("oci-layout is not JSON"))?;
        if v.get("imageLayoutVersion")
            .and_then(|v| v.as_str())
            .is_none()
        {
            return Err(not_layout("oci-layout has no imageLayoutVersion"));
        }
        let index_path = check_no_symlinks(dir, &["index.json"])?;
        let bytes = read_limited(&index_path, MAX_INDEX_JSON).map_err(io_err(&index_path))?;
        let index: LayoutIndex =
            serde_json::from_slice(&bytes).map_err(|e| not_layout(&format!("index.json: {e}")))?;
        Ok(LayoutReader {
            dir: dir.to_path_buf(),
            name,
            default_repo: default_repository(dir),
            index: index.manifests,
            subjects: OnceLock::new(),
        })
    }

    /// A blob file, checked to be a regular file of `size` bytes inside DIR.
    pub fn open_blob(&self, digest: &Digest, size: u64) -> std::result::Result<File, LayoutError> {
        let hex = digest.hex();
        let path = check_no_symlinks(&self.dir, &["blobs", "sha256", &hex])?;
        let f = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LayoutError::Missing {
                    dir: self.dir.display().to_string(),
                    what: "blob".into(),
                    digest: digest.clone(),
                })
            }
            Err(_) if path.is_symlink() => {
                return Err(LayoutError::Symlink {
                    path: path.display().to_string(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let meta = f.metadata().map_err(io_err(&path))?;
        if !meta.is_file() || meta.len() != size {
            return Err(LayoutError::Mismatch {
                dir: self.dir.display().to_string(),
                digest: digest.clone(),
                detail: format!(
                    "the file has {} bytes, its descriptor says {size}",
                    meta.len()
                ),
            });
        }
        Ok(f)
    }

    /// A blob as a reader that fails at its end unless the digest matches.
    pub fn verified_blob(
        &self,
        digest: &Digest,
        size: u64,
    ) -> std::result::Result<VerifyingReader<File>, LayoutError> {
        let f = self.open_blob(digest, size)?;
        Ok(VerifyingReader::new(
            f,
            digest.clone(),
            size,
            format!("{}/blobs/sha256/{}", self.dir.display(), digest.hex()),
        ))
    }

    fn mismatch(&self, digest: &Digest, e: std::io::Error) -> LayoutError {
        LayoutError::Mismatch {
            dir: self.dir.display().to_string(),
            digest: digest.clone(),
            detail: e.to_string(),
        }
    }

    /// A manifest by digest, read whole (at most 4 MiB) and verified.
    pub fn read_manifest(
        &self,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> std::result::Result<Manifest, LayoutError> {
        let hex = digest.hex();
        let path = check_no_symlinks(&self.dir, &["blobs", "sha256", &hex])?;
        let size = std::fs::symlink_metadata(&path)
            .map(|m| m.len())
            .map_err(|_| LayoutError::Missing {
                dir: self.dir.display().to_string(),
                what: "manifest".into(),
                digest: digest.clone(),
            })?;
        if size > MAX_MANIFEST_BYTES {
            return Err(LayoutError::TooLarge {
                dir: self.dir.display().to_string(),
                what: format!("manifest {digest}"),
                size,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        self.verified_blob(digest, size)?
            .read_to_end(&mut bytes)
            .map_err(|e| self.mismatch(digest, e))?;
        let media_type = match media_type {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => crate::oci::ManifestView::parse(&bytes, None)
                .map(|v| v.media_type)
                .unwrap_or_default(),
        };
        Ok(Manifest {
            bytes: bytes.into(),
            media_type,
            digest: digest.clone(),
        })
    }

    fn descriptor_of(
        &self,
        repo: &str,
        reference: &str,
    ) -> std::result::Result<&LayoutDescriptor, LayoutError> {
        self.index
            .iter()
            .find(|d| {
                d.ref_name()
                    .map(|n| split_ref_name(n, &self.default_repo))
                    .is_some_and(|(r, t)| r == repo && t == reference)
            })
            .ok_or_else(|| LayoutError::NoSuchRef {
                dir: self.dir.display().to_string(),
                name: format!("{repo}:{reference}"),
                have: self
                    .index
                    .iter()
                    .filter_map(|d| d.ref_name())
                    .take(20)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn manifest(&self, repo: &str, reference: &str) -> std::result::Result<Manifest, LayoutError> {
        if let Ok(d) = reference.parse::<Digest>() {
            let mt = self
                .index
                .iter()
                .find(|x| x.digest == d)
                .map(|x| x.media_type.clone());
            return self.read_manifest(&d, mt.as_deref());
        }
        let desc = self.descriptor_of(repo, reference)?;
        if desc.size > MAX_MANIFEST_BYTES {
            return Err(LayoutError::TooLarge {
                dir: self.dir.display().to_string(),
                what: format!("manifest {}", desc.digest),
                size: desc.size,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let m = self.read_manifest(&desc.digest, Some(&desc.media_type))?;
        if m.bytes.len() as u64 != desc.size {
            return Err(LayoutError::Mismatch {
                dir: self.dir.display().to_string(),
                digest: desc.digest.clone(),
                detail: format!("index.json says {} bytes", desc.size),
            });
        }
        Ok(m)
    }

    /// Manifests of index.json that name a subject (the referrers "API").
    /// Every manifest index.json names must be readable and intact: a
    /// damaged one is an error, never a referrer silently left out.
    fn subjects(&self) -> std::result::Result<&Subjects, LayoutError> {
        let computed = self.subjects.get_or_init(|| {
            let mut out: Subjects = HashMap::new();
            let mut seen = HashSet::new();
            for d in &self.index {
                if !seen.insert(&d.digest) {
                    continue;
                }
                let m = self
                    .read_manifest(&d.digest, Some(&d.media_type))
                    .map_err(|e| (d.digest.clone(), e.to_string()))?;
                if let Ok(Some(subject)) = m.view().map(|v| v.subject) {
                    let mut desc = Descriptor::blob(d.digest.clone(), d.size);
                    desc.media_type = d.media_type.clone();
                    out.entry(subject.digest).or_default().push(desc);
                }
            }
            Ok(out)
        });
        computed
            .as_ref()
            .map_err(|(digest, detail)| LayoutError::Mismatch {
                dir: self.dir.display().to_string(),
                digest: digest.clone(),
                detail: format!("named in index.json but unreadable: {detail}"),
            })
    }

    /// Copy a blob into `out`, verified; `out` is left truncated on failure.
    pub fn copy_blob(
        &self,
        desc: &Descriptor,
        out: &mut File,
    ) -> std::result::Result<(), LayoutError> {
        let mut r = self.verified_blob(&desc.digest, desc.size)?;
        out.set_len(0).map_err(io_err(&self.dir))?;
        let copied = crate::body::copy_to_file(&mut r, &mut *out);
        if let Err(e) = copied {
            let _ = out.set_len(0);
            return Err(if crate::digest::is_integrity_error(&e) {
                self.mismatch(&desc.digest, e)
            } else {
                io_err(&self.dir)(e)
            });
        }
        out.flush().map_err(io_err(&self.dir))
    }
}

fn layout_err(e: LayoutError) -> RegistryError {
    RegistryError::Layout(e)
}

impl Resolver for LayoutReader {
    fn location(&self) -> String {
        self.name.clone()
    }
    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Manifest, RegistryError>> {
        Box::pin(async move {
            match self.manifest(repo, reference) {
                Err(LayoutError::NoSuchRef { name, .. }) => Err(RegistryError::NotFound {
                    what: format!("{}:{name}", self.name),
                }),
                other => other.map_err(layout_err),
            }
        })
    }

    fn list_tags<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Vec<String>, RegistryError>> {
        Box::pin(async move {
            Ok(self
                .index
                .iter()
                .filter_map(|d| d.ref_name())
                .map(|n| split_ref_name(n, &self.default_repo))
                .filter(|(r, _)| r == repo)
                .map(|(_, t)| t)
                .collect())
        })
    }

    fn referrers<'a>(
        &'a self,
        _repo: &'a str,
        subject: &'a Digest,
    ) -> BoxFuture<'a, std::result::Result<Option<Vec<Descriptor>>, RegistryError>> {
        Box::pin(async move {
            let subjects = self.subjects().map_err(layout_err)?;
            Ok(Some(subjects.get(subject).cloned().unwrap_or_default()))
        })
    }

    fn fetch_blob<'a>(
        &'a self,
        _repo: &'a str,
        blob: &'a Descriptor,
        out: &'a mut tokio::fs::File,
    ) -> BoxFuture<'a, std::result::Result<(), RegistryError>> {
        Box::pin(async move {
            let mut f = out
                .try_clone()
                .await
                .map_err(io_err(&self.dir))
                .map_err(layout_err)?
                .into_std()
                .await;
            tokio::task::block_in_place(|| self.copy_blob(blob, &mut f)).map_err(layout_err)
        })
    }
}

// ------------------------------------------------------------------ sink

/// Images written into a layout directory: the sink of `import --to oci:`
/// and `copy … oci:DIR`.
pub struct DirSink {
    dir: PathBuf,
    on_existing_tag: OnExistingTag,
    /// index.json as it will be written at commit.
    index: Vec<LayoutDescriptor>,
    skipped: Vec<String>,
}

impl DirSink {
    pub fn new(dir: &Path, on_existing_tag: OnExistingTag) -> DirSink {
        DirSink {
            dir: dir.to_path_buf(),
            on_existing_tag,
            index: vec![],
            skipped: vec![],
        }
    }

    fn blobs_dir(&self) -> Result<PathBuf> {
        Ok(check_no_symlinks(&self.dir, &["blobs", "sha256"])?)
    }

    fn create_dirs(&self) -> Result<()> {
        check_no_symlinks(&self.dir, &["blobs", "sha256"])?;
        let blobs = self.dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(Error::io(blobs.display()))?;
        Ok(())
    }

    fn existing_index(&self) -> Result<Vec<LayoutDescriptor>> {
        let path = check_no_symlinks(&self.dir, &["index.json"])?;
        if !path.exists() {
            return Ok(vec![]);
        }
        let bytes = read_limited(&path, MAX_INDEX_JSON).map_err(Error::io(path.display()))?;
        let index: LayoutIndex =
            serde_json::from_slice(&bytes).map_err(|e| LayoutError::NotALayout {
                dir: self.dir.display().to_string(),
                detail: format!("index.json: {e}"),
            })?;
        Ok(index.manifests)
    }

    /// The new index.json: what was there, with our names added or moved
    /// (per `--on-existing-tag`).
    fn merged_index(&mut self, graph: &Graph) -> Result<Vec<LayoutDescriptor>> {
        let mut index = self.existing_index()?;
        let mut conflicts = Vec::new();
        for new in layout::entries(&graph.images) {
            let Some(name) = new.ref_name().map(str::to_string) else {
                if !index
                    .iter()
                    .any(|d| d.digest == new.digest && d.ref_name().is_none())
                {
                    index.push(new);
                }
                continue;
            };
            match index
                .iter()
                .position(|d| d.ref_name() == Some(name.as_str()))
            {
                None => index.push(new),
                Some(i) if index[i].digest == new.digest => {}
                Some(i) => match self.on_existing_tag {
                    OnExistingTag::Refuse => conflicts.push(format!(
                        "{name} points to {}, the copy has {}",
                        index[i].digest, new.digest
                    )),
                    OnExistingTag::Skip => self.skipped.push(name),
                    OnExistingTag::Overwrite => index[i] = new,
                },
            }
        }
        if !conflicts.is_empty() {
            return Err(LayoutError::Conflicts {
                dir: self.dir.display().to_string(),
                conflicts,
            }
            .into());
        }
        Ok(index)
    }

    fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        let path = self.dir.join("blobs").join("sha256").join(digest.hex());
        std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size)
    }
}

/// Write `data` to `blobs/sha256/<hex>`: a temp file in the same directory,
/// then a rename once the reader proved the digest.
fn store_blob(blobs: &Path, digest: &Digest, mut data: impl Read) -> Result<()> {
    let name = blobs.join(digest.hex());
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(blobs)
        .map_err(Error::io(blobs.display()))?;
    crate::body::copy_to_file(&mut data, tmp.as_file_mut()).map_err(|e| {
        if crate::digest::is_integrity_error(&e) {
            Error::Refused(format!("{e}; not written to {}", blobs.display()))
        } else {
            Error::Io {
                path: name.display().to_string(),
                source: e,
            }
        }
    })?;
    tmp.as_file()
        .sync_all()
        .map_err(Error::io(name.display()))?;
    make_readable(tmp.as_file(), &name)?;
    tmp.persist(&name).map_err(|e| Error::Io {
        path: name.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

fn make_readable(f: &File, name: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(Error::io(name.display()))?;
    }
    Ok(())
}

fn write_file_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(Error::io(dir.display()))?;
    tmp.write_all(bytes).map_err(Error::io(path.display()))?;
    tmp.as_file()
        .sync_all()
        .map_err(Error::io(path.display()))?;
    make_readable(tmp.as_file(), &path)?;
    tmp.persist(&path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

impl Sink for DirSink {
    fn name(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    fn prepare<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<Prepared>> {
        Box::pin(async move {
            let graphs = graph.walk(&self.name())?;
            self.index = self.merged_index(graph)?;
            self.create_dirs()?;
            let used: HashSet<&Digest> = graphs.iter().flat_map(|g| g.blobs.iter()).collect();
            let mut prepared = Prepared::default();
            for b in &graph.blobs {
                if !used.contains(&b.digest) {
                    prepared.unwanted.insert(b.digest.clone());
                } else if self.has_blob(&b.digest, b.size) {
                    prepared.present.insert(b.digest.clone());
                }
            }
            Ok(prepared)
        })
    }

    fn put_blob<'a>(&'a self, blob: &'a BlobInfo, data: Blob) -> BoxFuture<'a, Result<Vec<Put>>> {
        Box::pin(async move {
            let blobs = self.blobs_dir()?;
            let digest = blob.digest.clone();
            tokio::task::spawn_blocking(move || {
                let r = data
                    .open()
                    .map_err(Error::io(format!("source of blob {digest}")))?;
                store_blob(&blobs, &digest, r)
            })
            .await
            .map_err(Error::task(self.name()))??;
            Ok(vec![Put::Stored])
        })
    }

    fn commit<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<SinkReport>> {
        Box::pin(async move {
            let blobs = self.blobs_dir()?;
            let mut report = SinkReport::default();
            for m in graph.manifests.values() {
                if self.has_blob(&m.digest, m.bytes.len() as u64) {
                    report.manifests_present += 1;
                    continue;
                }
                let r = VerifyingReader::new(
                    std::io::Cursor::new(m.bytes.clone()),
                    m.digest.clone(),
                    m.bytes.len() as u64,
                    format!("manifest {}", m.digest),
                );
                store_blob(&blobs, &m.digest, r)?;
                report.manifests_written += 1;
            }
            if check_no_symlinks(&self.dir, &["oci-layout"])?
                .metadata()
                .is_err()
            {
                write_file_atomically(&self.dir, "oci-layout", layout::OCI_LAYOUT_BYTES)?;
            }
            let index = std::mem::take(&mut self.index);
            report.tags_set = graph.images.iter().filter(|i| i.ref_name.is_some()).count();
            write_file_atomically(&self.dir, "index.json", &layout::index_bytes(index))?;
            report.tags_skipped = std::mem::take(&mut self.skipped);
            report.destinations = graph
                .images
                .iter()
                .map(|i| match &i.ref_name {
                    Some(n) => format!("oci:{}:{n}", self.dir.display()),
                    None => format!("oci:{}@{}", self.dir.display(), i.digest),
                })
                .collect();
            Ok(report)
        })
    }
}
