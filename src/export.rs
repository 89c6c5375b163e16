//! `airlock export`: resolve a selection against registries, then write
//! one bundle. Manifests are fetched first (they are small and decide what
//! goes in); blobs are then downloaded `jobs` at a time into spool files
//! and appended to the archive in a fixed order, so the output is the
//! same whatever the download timing.

use crate::bundle::{
    self, Artifact, ArtifactKind, BundleIndex, BundleWriter, ImageEntry, Member, MemberKind,
    PlatformEntry,
};
use crate::digest::{Digest, HashingWriter};
use crate::layout;
use crate::oci::{self, Descriptor, ManifestView};
use crate::progress::{self, Progress};
use crate::registry::{RawManifest, Registries, Registry, RegistryError};
use crate::selection::ImageSelection;
use crate::signatures::{Discovery, MAX_DEPTH};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone)]
pub struct ExportOptions {
    /// Images failing it are refused before anything is written.
    pub policy: Option<Arc<crate::trust::Policy>>,
    /// Sign the bundle index; the signature goes to `NAME.sig`.
    pub sign_key: Option<PathBuf>,
    pub output: PathBuf,
    pub jobs: usize,
    pub level: i32,
    pub threads: usize,
    pub frame_max: usize,
    pub require_signatures: bool,
    pub force: bool,
    /// A sigstore trusted_root.json to carry in the bundle (sites pin it by digest).
    pub carry_trusted_root: Option<PathBuf>,
}

impl ExportOptions {
    pub fn new(output: impl Into<PathBuf>) -> Self {
        ExportOptions {
            output: output.into(),
            jobs: 6,
            level: 3,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            frame_max: bundle::frames::DEFAULT_FRAME_MAX,
            require_signatures: false,
            force: false,
            policy: None,
            sign_key: None,
            carry_trusted_root: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Selection(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("policy not met, no bundle written:\n  {}", .0.join("\n  "))]
    Policy(Vec<String>),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    pub source: String,
    pub digest: Digest,
    pub source_digest: Digest,
    pub platforms: Vec<String>,
    pub artifacts: usize,
    pub unsigned: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    pub bundle: String,
    pub bundle_digest: Digest,
    pub file_sha256: String,
    pub file_size: u64,
    pub images: Vec<ImageSummary>,
    pub manifests: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    /// Per image, the policy decision (when a policy or keys were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<crate::trust::Verdict>>,
    /// `NAME.sig`, when the bundle was signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    pub seconds: f64,
}

/// An image resolved at its source, with everything it needs.
struct Resolved {
    entry: ImageEntry,
    registry: Arc<Registry>,
    manifests: Vec<RawManifest>,
    blobs: Vec<(Descriptor, MemberKind)>,
}

fn unsigned_subjects(entry: &ImageEntry) -> Vec<String> {
    let signed: HashSet<&Digest> = entry
        .artifacts
        .iter()
        .filter(|a| {
            a.kind == ArtifactKind::Signature
                || a.artifact_type
                    .as_deref()
                    .is_some_and(|t| t.starts_with("application/vnd.dev.sigstore.bundle"))
        })
        .map(|a| &a.subject)
        .collect();
    let mut out = Vec::new();
    if !signed.contains(&entry.source_digest) {
        out.push(format!("{} (image)", entry.source_digest));
    }
    for p in &entry.platforms {
        if p.digest != entry.source_digest && !signed.contains(&p.digest) {
            out.push(format!(
                "{} ({})",
                p.digest,
                p.platform.as_deref().unwrap_or("platform unknown")
            ));
        }
    }
    out
}

async fn resolve_root(
    registry: Arc<Registry>,
    sel: &ImageSelection,
    tag: Option<String>,
    root: RawManifest,
    tags: &HashSet<String>,
) -> Result<Resolved, ExportError> {
    let repo = sel.repo.repository.as_str();
    let shown = match &tag {
        Some(t) => sel.repo.with_tag(t).to_string(),
        None => sel.repo.with_digest(root.digest.clone()).to_string(),
    };
    let what = |d: &Digest| format!("manifest {}@{d}", sel.repo);
    let view = ManifestView::parse(&root.bytes, Some(&root.media_type)).map_err(|source| {
        RegistryError::Manifest {
            what: what(&root.digest),
            source,
        }
    })?;
    let mut manifests = vec![];
    let mut platforms = vec![];
    let mut blobs = vec![];
    let (digest, media_type, size) = if view.is_index() {
        let selected: Vec<&Descriptor> = view
            .manifests
            .iter()
            .filter(|d| {
                sel.platforms.is_empty()
                    || d.platform
                        .as_ref()
                        .is_some_and(|p| sel.platforms.iter().any(|f| f.selects(p)))
            })
            .collect();
        if selected.is_empty() {
            let have: Vec<String> = view
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect();
            return Err(ExportError::Selection(format!(
                "{shown}: no platform matches the filter (the image has {})",
                have.join(", ")
            )));
        }
        let filtered = selected.len() < view.manifests.len();
        let (digest, bytes) = if filtered {
            let keep: HashSet<&Digest> = selected.iter().map(|d| &d.digest).collect();
            let b = oci::filter_index(&root.bytes, &root.media_type, &root.digest, |d| {
                keep.contains(&d.digest)
            })
            .map_err(|source| RegistryError::Manifest {
                what: what(&root.digest),
                source,
            })?;
            (Digest::of(&b), Bytes::from(b))
        } else {
            (root.digest.clone(), root.bytes.clone())
        };
        let size = bytes.len() as u64;
        manifests.push(RawManifest {
            bytes,
            media_type: root.media_type.clone(),
            digest: digest.clone(),
        });
        if filtered {
            // The vendor's index rides along as a blob: its signature still verifies.
            manifests.push(root.clone());
        }
        for child in selected {
            let m = registry
                .get_manifest(repo, &child.digest.to_string())
                .await?;
            let cv = ManifestView::parse(&m.bytes, Some(&m.media_type)).map_err(|source| {
                RegistryError::Manifest {
                    what: what(&m.digest),
                    source,
                }
            })?;
            if cv.is_index() {
                return Err(ExportError::Selection(format!(
                    "{shown}: nested index {} is not supported",
                    m.digest
                )));
            }
            blobs.extend(cv.config.iter().cloned().map(|d| (d, MemberKind::Small)));
            blobs.extend(cv.layers.iter().cloned().map(|d| (d, MemberKind::Layer)));
            platforms.push(PlatformEntry {
                platform: child.platform.as_ref().map(|p| p.to_string()),
                digest: m.digest.clone(),
                media_type: m.media_type.clone(),
                size: m.bytes.len() as u64,
            });
            manifests.push(m);
        }
        (digest, root.media_type.clone(), size)
    } else {
        blobs.extend(view.config.iter().cloned().map(|d| (d, MemberKind::Small)));
        blobs.extend(view.layers.iter().cloned().map(|d| (d, MemberKind::Layer)));
        platforms.push(PlatformEntry {
            platform: None,
            digest: root.digest.clone(),
            media_type: root.media_type.clone(),
            size: root.bytes.len() as u64,
        });
        manifests.push(root.clone());
        (
            root.digest.clone(),
            root.media_type.clone(),
            root.bytes.len() as u64,
        )
    };

    let mut discovery = Discovery::new(&registry, repo, tags);
    discovery.discover(&root.digest, MAX_DEPTH).await?;
    for p in &platforms {
        if p.digest != root.digest {
            discovery.discover(&p.digest, MAX_DEPTH).await?;
        }
    }
    for line in &discovery.skipped {
        progress::note(&format!("warning: {line}"));
    }
    let mut artifacts: Vec<Artifact> = Vec::new();
    for (a, m) in discovery.found {
        if let Ok(v) = ManifestView::parse(&m.bytes, Some(&m.media_type)) {
            blobs.extend(v.blobs().cloned().map(|d| (d, MemberKind::Small)));
        }
        artifacts.push(a);
        manifests.push(m);
    }
    let mut seen = HashSet::new();
    let total_size = manifests.iter().map(|m| m.bytes.len() as u64).sum::<u64>()
        + blobs
            .iter()
            .filter(|(d, _)| seen.insert(d.digest.clone()))
            .map(|(d, _)| d.size)
            .sum::<u64>();
    let entry = ImageEntry {
        source: shown,
        registry: sel.repo.registry.clone(),
        repository: sel.repo.repository.clone(),
        tag: tag.clone(),
        digest,
        media_type,
        size,
        source_digest: root.digest.clone(),
        platforms,
        target: sel.target.clone(),
        ref_name: tag
            .as_ref()
            .map(|t| layout::ref_name(&sel.repo.repository, t)),
        artifacts,
        total_size,
    };
    Ok(Resolved {
        entry,
        registry,
        manifests,
        blobs,
    })
}

async fn resolve_selection(
    registries: &Registries,
    sel: &ImageSelection,
) -> Result<Vec<Resolved>, ExportError> {
    let registry = registries.get(&sel.repo.registry).await?;
    let repo = sel.repo.repository.as_str();
    let all_tags: Vec<String> = registry.list_tags(repo).await?;
    let tag_set: HashSet<String> = all_tags.iter().cloned().collect();
    let mut tags = sel.tags.clone();
    if let Some(p) = &sel.tag_pattern {
        let mut matched: Vec<String> = all_tags.iter().filter(|t| p.is_match(t)).cloned().collect();
        matched.sort();
        if matched.is_empty() {
            return Err(ExportError::Selection(format!(
                "{}: no tag matches the pattern {}",
                sel.repo,
                p.as_str()
            )));
        }
        tags.extend(matched);
    }
    crate::selection::dedup_tags(&mut tags);
    let mut out = Vec::new();
    for tag in tags {
        let root = registry
            .get_manifest(repo, &tag)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound { .. } => ExportError::Selection(format!(
                    "image {} not found: check the repository and tag",
                    sel.repo.with_tag(&tag)
                )),
                e => e.into(),
            })?;
        out.push(resolve_root(registry.clone(), sel, Some(tag), root, &tag_set).await?);
    }
    for d in &sel.digests {
        let root = registry.get_manifest(repo, &d.to_string()).await?;
        out.push(resolve_root(registry.clone(), sel, None, root, &tag_set).await?);
    }
    Ok(out)
}

enum Source {
    Memory(Bytes),
    Blob {
        registry: Arc<Registry>,
        repo: String,
        desc: Box<Descriptor>,
    },
}

/// Resolve the selection and write the bundle at `opts.output`.
pub async fn export(
    registries: &Registries,
    selection: &[ImageSelection],
    opts: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let started = std::time::Instant::now();
    let out_name = opts.output.display().to_string();
    if opts.output.exists() && !opts.force {
        return Err(ExportError::Refused(format!(
            "{out_name} already exists; remove it or pass --force"
        )));
    }
    let signer = opts
        .sign_key
        .as_deref()
        .map(crate::trust::BundleSigner::from_file)
        .transpose()?;
    let resolved: Vec<Vec<Resolved>> = futures_util::stream::iter(selection)
        .map(|sel| resolve_selection(registries, sel))
        .buffered(opts.jobs.max(1))
        .try_collect()
        .await?;
    let resolved: Vec<Resolved> = resolved.into_iter().flatten().collect();
    if resolved.is_empty() {
        return Err(ExportError::Selection("nothing selected".into()));
    }

    // Same ref name twice with different content would make index.json ambiguous.
    let mut names: HashMap<String, &Digest> = HashMap::new();
    for r in &resolved {
        if let Some(n) = &r.entry.ref_name {
            if let Some(prev) = names.insert(n.clone(), &r.entry.digest) {
                if prev != &r.entry.digest {
                    return Err(ExportError::Selection(format!(
                        "{n} is selected twice with different content ({prev} and {}); select it once",
                        r.entry.digest
                    )));
                }
            }
        }
    }

    let mut summaries = Vec::new();
    for r in &resolved {
        let unsigned = unsigned_subjects(&r.entry);
        if !unsigned.is_empty() {
            progress::note(&format!(
                "warning: {} has no signature for {}",
                r.entry.source,
                unsigned.join(", ")
            ));
        }
        summaries.push(ImageSummary {
            source: r.entry.source.clone(),
            digest: r.entry.digest.clone(),
            source_digest: r.entry.source_digest.clone(),
            platforms: r
                .entry
                .platforms
                .iter()
                .map(|p| p.platform.clone().unwrap_or_else(|| "-".into()))
                .collect(),
            artifacts: r.entry.artifacts.len(),
            unsigned,
        });
    }
    if opts.require_signatures {
        let missing: Vec<String> = summaries
            .iter()
            .filter(|s| !s.unsigned.is_empty())
            .map(|s| format!("{}: {}", s.source, s.unsigned.join(", ")))
            .collect();
        if !missing.is_empty() {
            return Err(ExportError::Refused(format!(
                "--require-signatures: unsigned manifests, no bundle written:\n  {}",
                missing.join("\n  ")
            )));
        }
    }

    let verdicts = match &opts.policy {
        Some(policy) => Some(check_policy(policy, &resolved).await?),
        None => None,
    };

    // Members in tar order: layout files, manifests, small blobs, layers.
    let images: Vec<ImageEntry> = resolved.iter().map(|r| r.entry.clone()).collect();
    let index_json = layout::index_json(&images);
    let mut members = vec![
        Member {
            path: "oci-layout".into(),
            digest: Digest::of(layout::OCI_LAYOUT_BYTES),
            size: layout::OCI_LAYOUT_BYTES.len() as u64,
            kind: MemberKind::Layout,
            media_type: None,
        },
        Member {
            path: "index.json".into(),
            digest: Digest::of(&index_json),
            size: index_json.len() as u64,
            kind: MemberKind::Layout,
            media_type: None,
        },
    ];
    let mut sources = vec![
        Source::Memory(Bytes::from_static(layout::OCI_LAYOUT_BYTES)),
        Source::Memory(Bytes::from(index_json)),
    ];
    let mut seen: HashSet<Digest> = HashSet::new();
    for r in &resolved {
        for m in &r.manifests {
            if seen.insert(m.digest.clone()) {
                members.push(Member {
                    path: m.digest.layout_path(),
                    digest: m.digest.clone(),
                    size: m.bytes.len() as u64,
                    kind: MemberKind::Manifest,
                    media_type: Some(m.media_type.clone()),
                });
                sources.push(Source::Memory(m.bytes.clone()));
            }
        }
    }
    let trusted_root = match &opts.carry_trusted_root {
        Some(path) => {
            let bytes = read_trusted_root(path)?;
            let digest = Digest::of(&bytes);
            if seen.insert(digest.clone()) {
                members.push(Member {
                    path: digest.layout_path(),
                    digest: digest.clone(),
                    size: bytes.len() as u64,
                    kind: MemberKind::Small,
                    media_type: Some(bundle::TRUSTED_ROOT_MEDIA_TYPE.into()),
                });
                sources.push(Source::Memory(Bytes::from(bytes)));
            }
            Some(digest)
        }
        None => None,
    };
    let mut blob_bytes = 0;
    for class in [MemberKind::Small, MemberKind::Layer] {
        for r in &resolved {
            for (d, kind) in &r.blobs {
                if *kind == class && seen.insert(d.digest.clone()) {
                    blob_bytes += d.size;
                    members.push(Member {
                        path: d.digest.layout_path(),
                        digest: d.digest.clone(),
                        size: d.size,
                        kind: class,
                        media_type: None,
                    });
                    sources.push(Source::Blob {
                        registry: r.registry.clone(),
                        repo: r.entry.repository.clone(),
                        desc: Box::new(d.clone()),
                    });
                }
            }
        }
    }
    let manifest_count = members
        .iter()
        .filter(|m| m.kind == MemberKind::Manifest)
        .count();
    let blob_count = members.len() - 2 - manifest_count;
    let index = BundleIndex {
        schema_version: bundle::FORMAT_VERSION,
        media_type: bundle::INDEX_MEDIA_TYPE.into(),
        tool: format!("airlock {}", env!("CARGO_PKG_VERSION")),
        created: bundle::creation_time(),
        images,
        members: members.clone(),
        trusted_root,
    };
    let index_bytes = index.to_bytes();
    let bundle_digest = Digest::of(&index_bytes);

    let (file_sha256, file_size) =
        write_bundle(opts, &index_bytes, &members, sources, blob_bytes).await?;
    let signature = match signer {
        Some(s) => {
            let path = PathBuf::from(format!("{}.sig", opts.output.display()));
            write_atomically(&path, s.sign_b64(&index_bytes).as_bytes())?;
            Some(path.display().to_string())
        }
        None => None,
    };
    Ok(ExportReport {
        bundle: out_name,
        bundle_digest,
        file_sha256,
        file_size,
        images: summaries,
        manifests: manifest_count,
        blobs: blob_count,
        blob_bytes,
        policy: verdicts,
        signature,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Fetch the signature payloads and decide on every image, before any
/// byte of the bundle is written: bad images never cross the gap.
async fn check_policy(
    policy: &crate::trust::Policy,
    resolved: &[Resolved],
) -> Result<Vec<crate::trust::Verdict>, ExportError> {
    let mut verdicts = Vec::new();
    for r in resolved {
        let mut store = crate::trust::MemoryStore::default();
        for m in &r.manifests {
            store
                .manifests
                .insert(m.digest.clone(), (m.bytes.to_vec(), m.media_type.clone()));
        }
        let images = std::slice::from_ref(&r.entry);
        for d in crate::trust::artifact_blobs(images, &|d| store.manifests.get(d).cloned()) {
            let Some((desc, _)) = r.blobs.iter().find(|(b, _)| b.digest == d) else {
                continue;
            };
            let spool = tempfile::NamedTempFile::new().map_err(|source| ExportError::Io {
                path: std::env::temp_dir().display().to_string(),
                source,
            })?;
            let mut f =
                tokio::fs::File::from_std(spool.reopen().map_err(|source| ExportError::Io {
                    path: spool.path().display().to_string(),
                    source,
                })?);
            r.registry
                .fetch_blob(&r.entry.repository, desc, &mut f, &Progress::hidden())
                .await?;
            let bytes = std::fs::read(spool.path()).map_err(|source| ExportError::Io {
                path: spool.path().display().to_string(),
                source,
            })?;
            store.blobs.insert(d, bytes);
        }
        let v = policy.evaluate(&r.entry, &store);
        progress::note(&v.line());
        verdicts.push(v);
    }
    let blocked = crate::trust::blocked(&verdicts);
    if !blocked.is_empty() {
        return Err(ExportError::Policy(blocked));
    }
    Ok(verdicts)
}

enum WriteItem {
    Memory(Bytes),
    Spool(tempfile::NamedTempFile),
}

/// The trusted root to carry: read whole (it is small) and checked to be one.
fn read_trusted_root(path: &Path) -> Result<Vec<u8>, ExportError> {
    let bytes = std::fs::read(path).map_err(|source| ExportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    crate::trust::keyless::KeylessRoots::from_trusted_root_json(&bytes).map_err(|e| {
        ExportError::Selection(format!("--carry-trusted-root {}: {e}", path.display()))
    })?;
    Ok(bytes)
}

async fn write_bundle(
    opts: &ExportOptions,
    index_bytes: &[u8],
    members: &[Member],
    sources: Vec<Source>,
    blob_bytes: u64,
) -> Result<(String, u64), ExportError> {
    let out = &opts.output;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ExportError::Io { path, source }
    };
    let file_name = out
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| ExportError::Selection(format!("{} is not a file name", out.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(io_err(&dir))?;
    let spool_dir = tempfile::Builder::new()
        .prefix(".airlock-spool-")
        .tempdir_in(&dir)
        .map_err(io_err(&dir))?;
    let file = tmp.reopen().map_err(io_err(tmp.path()))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<WriteItem>(opts.jobs.max(1));
    let writer_members = members.to_vec();
    let index_bytes = index_bytes.to_vec();
    let (level, threads, frame_max) = (opts.level, opts.threads, opts.frame_max);
    let tmp_name = tmp.path().display().to_string();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(Digest, u64)> {
        let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let mut w = BundleWriter::new(hashing, level, threads, frame_max)?;
        w.append(
            bundle::INDEX_PATH,
            index_bytes.len() as u64,
            &mut &index_bytes[..],
        )?;
        for m in &writer_members {
            let item = rx.blocking_recv().ok_or_else(|| {
                std::io::Error::other("export stopped before every member was written")
            })?;
            match item {
                WriteItem::Memory(b) => w.append(&m.path, m.size, &mut &b[..])?,
                WriteItem::Spool(f) => {
                    let mut r = std::io::BufReader::with_capacity(1 << 20, f.reopen()?);
                    w.append(&m.path, m.size, &mut r)?;
                }
            }
        }
        let (hashing, _) = w.finish()?;
        let (buf, digest, len) = hashing.finish();
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((digest, len))
    });

    let progress = Progress::start("export", blob_bytes);
    let feed = async {
        let spool_path = spool_dir.path().to_path_buf();
        let mut items = futures_util::stream::iter(sources)
            .map(|s| {
                let spool_path = spool_path.clone();
                let progress = progress.clone();
                async move {
                    match s {
                        Source::Memory(b) => Ok(WriteItem::Memory(b)),
                        Source::Blob {
                            registry,
                            repo,
                            desc,
                        } => {
                            let spool = tempfile::NamedTempFile::new_in(&spool_path)
                                .map_err(io_err(&spool_path))?;
                            let mut f = tokio::fs::File::from_std(
                                spool.reopen().map_err(io_err(spool.path()))?,
                            );
                            registry.fetch_blob(&repo, &desc, &mut f, &progress).await?;
                            Ok::<_, ExportError>(WriteItem::Spool(spool))
                        }
                    }
                }
            })
            .buffered(opts.jobs.max(1));
        while let Some(item) = items.next().await {
            if tx.send(item?).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        drop(tx);
        Ok::<(), ExportError>(())
    };
    let fed = feed.await;
    let written = writer
        .await
        .map_err(|e| ExportError::Io {
            path: tmp_name.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| ExportError::Io {
            path: tmp_name.clone(),
            source,
        });
    progress.finish();
    fed?;
    let (file_digest, len) = written?;
    make_readable(tmp.as_file(), &tmp_name)?;
    tmp.persist(out).map_err(|e| ExportError::Io {
        path: out.display().to_string(),
        source: e.error,
    })?;
    write_sidecar(out, &file_name, &file_digest)?;
    Ok((file_digest.hex(), len))
}

/// Temp files are created 0600; a bundle is meant to be shared.
fn make_readable(f: &std::fs::File, name: &str) -> Result<(), ExportError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|source| ExportError::Io {
                path: name.to_string(),
                source,
            })?;
    }
    Ok(())
}

/// `NAME.sha256` in `sha256sum` format, written atomically too.
fn write_sidecar(out: &Path, file_name: &str, digest: &Digest) -> Result<(), ExportError> {
    let side = PathBuf::from(format!("{}.sha256", out.display()));
    write_atomically(&side, format!("{}  {file_name}\n", digest.hex()).as_bytes())
}

/// Write a small file next to the bundle: temp, fsync, rename.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), ExportError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let err = |source| ExportError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut t = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    t.write_all(data).map_err(err)?;
    t.as_file().sync_all().map_err(err)?;
    make_readable(t.as_file(), &path.display().to_string())?;
    t.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
