//! `airlock import`: check a bundle, then push it into a registry.
//!
//! Order of trust: the bundle index and every manifest are checked before
//! anything is pushed; tags at the target are checked for conflicts before
//! anything is pushed; each blob is hashed while it streams and its last
//! bytes are held back until the hash matches, so a bad blob is never
//! committed. Then blobs, platform manifests, indexes, tags, and finally
//! signature and referrer artifacts.

use crate::bundle::{
    self, BundleError, BundleIndex, Member, MemberKind, SeekableBundle, StreamEvent,
};
use crate::digest::Digest;
use crate::graph::{self, ImageGraph, ManifestPush, Manifests};
use crate::oci::{Descriptor, MAX_MANIFEST_BYTES};
use crate::progress::{self, Progress};
use crate::reference::is_valid_repository;
use crate::registry::{BlobBody, PushOutcome, Registries, Registry, RegistryError};
use bytes::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnExistingTag {
    /// Stop before pushing anything (default).
    Refuse,
    /// Move the tag to the bundle's digest.
    Overwrite,
    /// Leave the existing tag as it is (content is still pushed by digest).
    Skip,
}

/// Where images land: `HOST[/PATH-TEMPLATE]`. The template may use
/// `{repo}` (the full source repository path) and `{name}` (its last
/// component); a path without braces is a prefix (`HOST/mirror` =
/// `HOST/mirror/{repo}`); no path keeps the source path (`{repo}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub template: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Target(String),
    #[error("tag conflicts at the target, nothing was pushed (use --on-existing-tag=overwrite or skip):\n  {}", .0.join("\n  "))]
    TagConflicts(Vec<String>),
    #[error("policy not met, nothing was pushed:\n  {}", .0.join("\n  "))]
    Policy(Vec<String>),
    #[error("read-back after push failed: {0}")]
    ReadBack(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, ImportError> {
        let s = s.trim().trim_end_matches('/');
        let (host, path) = s.split_once('/').unwrap_or((s, ""));
        if host.is_empty() || host.contains('{') {
            return Err(ImportError::Target(format!(
                "--to {s:?}: expected HOST[/PATH-TEMPLATE]"
            )));
        }
        let template = if path.is_empty() {
            "{repo}".to_string()
        } else if path.contains('{') {
            path.to_string()
        } else {
            format!("{path}/{{repo}}")
        };
        let t = Target {
            host: host.to_string(),
            template,
        };
        // Reject a template that cannot give a valid name.
        t.repository("a/b", None)?;
        Ok(t)
    }

    /// The target repository for a source repository (and its optional per-image target).
    pub fn repository(
        &self,
        source_repo: &str,
        image_target: Option<&str>,
    ) -> Result<String, ImportError> {
        let name = source_repo.rsplit('/').next().unwrap_or(source_repo);
        let repo = match image_target {
            Some(t) => t.to_string(),
            None => self
                .template
                .replace("{repo}", source_repo)
                .replace("{name}", name),
        };
        if !is_valid_repository(&repo) {
            return Err(ImportError::Target(format!(
                "target repository {repo:?} (from template {:?}) is not a valid repository name",
                self.template
            )));
        }
        Ok(repo)
    }
}

#[derive(Clone)]
pub struct ImportOptions {
    pub target: Target,
    pub on_existing_tag: OnExistingTag,
    pub jobs: usize,
    /// Checked before anything is pushed; `None` = digests only.
    pub policy: Option<Arc<crate::trust::Policy>>,
    /// Require a bundle signature: (public key, base64 signature over the bundle index).
    pub bundle_key: Option<(PathBuf, String)>,
}

fn check_bundle_signature(opts: &ImportOptions, digest: &Digest) -> Result<(), ImportError> {
    match &opts.bundle_key {
        Some((key, sig)) => crate::trust::verify_bundle_signature(key, digest, sig)
            .map_err(|e| ImportError::Policy(vec![e.to_string()])),
        None => Ok(()),
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    pub bundle_digest: Option<Digest>,
    pub images: Vec<ImportedImage>,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    pub bytes_sent: u64,
    pub bytes_skipped: u64,
    pub manifests_pushed: usize,
    pub manifests_present: usize,
    pub tags_set: usize,
    pub tags_skipped: Vec<String>,
    /// Per image, the policy decision (when a policy or keys were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<crate::trust::Verdict>>,
    pub seconds: f64,
    pub mode: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportedImage {
    pub source: String,
    pub target: String,
    pub digest: Digest,
    pub artifacts: usize,
}

/// Where an image goes.
struct Placed {
    graph: ImageGraph,
    repo: String,
}

struct Plan {
    images: Vec<Placed>,
    /// blob digest → target repositories needing it (first one uploads, the rest mount).
    blob_repos: BTreeMap<Digest, Vec<String>>,
    sizes: HashMap<Digest, u64>,
}

fn plan(
    bundle: &str,
    index: &BundleIndex,
    manifests: &Manifests,
    opts: &ImportOptions,
) -> Result<Plan, ImportError> {
    let graphs = graph::build(bundle, index, manifests)?;
    let mut images = Vec::new();
    let mut blob_repos: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for g in graphs {
        let repo = opts
            .target
            .repository(&g.entry.repository, g.entry.target.as_deref())?;
        for b in &g.blobs {
            let repos = blob_repos.entry(b.clone()).or_default();
            if !repos.contains(&repo) {
                repos.push(repo.clone());
            }
        }
        images.push(Placed { graph: g, repo });
    }
    let sizes = index
        .members
        .iter()
        .map(|m| (m.digest.clone(), m.size))
        .collect();
    Ok(Plan {
        images,
        blob_repos,
        sizes,
    })
}

/// Decide on every image; any enforced rejection stops the import.
fn check_policy(
    opts: &ImportOptions,
    index: &BundleIndex,
    store: &crate::trust::MemoryStore,
) -> Result<Option<Vec<crate::trust::Verdict>>, ImportError> {
    let Some(policy) = &opts.policy else {
        for img in &index.images {
            if !img
                .artifacts
                .iter()
                .any(|a| a.kind == crate::bundle::ArtifactKind::Signature)
            {
                progress::note(&format!(
                    "UNSIGNED: {} carries no signature (no policy given: digests checked only)",
                    img.source
                ));
            }
        }
        return Ok(None);
    };
    let verdicts: Vec<_> = index
        .images
        .iter()
        .map(|i| policy.evaluate(i, store))
        .collect();
    for v in &verdicts {
        progress::note(&v.line());
    }
    let blocked = crate::trust::blocked(&verdicts);
    if !blocked.is_empty() {
        return Err(ImportError::Policy(blocked));
    }
    Ok(Some(verdicts))
}

fn trust_store(manifests: &Manifests) -> crate::trust::MemoryStore {
    crate::trust::MemoryStore {
        manifests: manifests
            .iter()
            .map(|(d, (b, m))| (d.clone(), (b.to_vec(), m.clone())))
            .collect(),
        ..Default::default()
    }
}

/// Every tag the import would set, with the digest it would point to.
fn planned_tags(plan: &Plan) -> Vec<(String, String, Digest)> {
    let mut out = Vec::new();
    for p in &plan.images {
        for m in p.graph.manifests.iter().chain(p.graph.artifacts.iter()) {
            if let Some(t) = &m.tag {
                out.push((p.repo.clone(), t.clone(), m.digest.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Check every tag before the first byte is pushed.
async fn preflight(
    reg: &Registry,
    plan: &Plan,
    opts: &ImportOptions,
) -> Result<HashSet<(String, String)>, ImportError> {
    let mut conflicts = Vec::new();
    let mut skip = HashSet::new();
    for (repo, tag, digest) in planned_tags(plan) {
        if let Some(existing) = reg.head_manifest(&repo, &tag).await? {
            if existing != digest {
                match opts.on_existing_tag {
                    OnExistingTag::Refuse => conflicts.push(format!(
                        "{}/{repo}:{tag} points to {existing}, the bundle has {digest}",
                        reg.host()
                    )),
                    OnExistingTag::Skip => {
                        skip.insert((repo, tag));
                    }
                    OnExistingTag::Overwrite => {}
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(ImportError::TagConflicts(conflicts));
    }
    Ok(skip)
}

/// Stream a verified reader into an upload body. The last chunk is held
/// back until the reader reports EOF, which a [`crate::digest::VerifyingReader`]
/// does only once the digest matched: a bad blob never reaches its last byte.
pub fn body_from_reader(mut r: impl Read + Send + 'static, progress: Progress) -> BlobBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut held: Option<Bytes> = None;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let mut filled = 0;
            let res = loop {
                match r.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(filled),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(filled);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            match res {
                Ok(n) if n < buf.len() && n == 0 => {
                    if let Some(h) = held.take() {
                        progress.add(h.len() as u64);
                        let _ = tx.blocking_send(Ok(h));
                    }
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    if let Some(h) = held.replace(Bytes::from(buf)) {
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

#[derive(Default)]
struct Tally {
    uploaded: usize,
    mounted: usize,
    present: usize,
    bytes_sent: u64,
    bytes_skipped: u64,
}

impl Tally {
    fn add(&mut self, outcome: PushOutcome, size: u64) {
        match outcome {
            PushOutcome::Uploaded => {
                self.uploaded += 1;
                self.bytes_sent += size;
            }
            PushOutcome::Mounted => {
                self.mounted += 1;
                self.bytes_skipped += size;
            }
            PushOutcome::Exists => {
                self.present += 1;
                self.bytes_skipped += size;
            }
        }
    }
}

/// How to get a blob's bytes again (every upload attempt reopens them).
#[derive(Clone)]
enum BlobOrigin {
    Seekable(Arc<SeekableBundle>, usize),
    Spool(Arc<tempfile::NamedTempFile>, Digest, u64),
}

impl BlobOrigin {
    fn open(&self) -> Result<Box<dyn Read + Send>, RegistryError> {
        match self {
            BlobOrigin::Seekable(b, i) => b
                .open_member(*i)
                .map(|r| Box::new(r) as Box<dyn Read + Send>)
                .map_err(|e| RegistryError::Integrity {
                    what: b.path.display().to_string(),
                    detail: e.to_string(),
                }),
            BlobOrigin::Spool(f, digest, size) => {
                let file = f.reopen().map_err(|source| RegistryError::Io {
                    what: format!("spool of {digest}"),
                    source,
                })?;
                Ok(Box::new(crate::digest::VerifyingReader::new(
                    std::io::BufReader::new(file),
                    digest.clone(),
                    *size,
                    format!("spooled blob {digest}"),
                )))
            }
        }
    }
}

/// Push one blob to every repository that needs it: upload once, mount elsewhere.
async fn push_blob_everywhere(
    reg: Arc<Registry>,
    repos: Vec<String>,
    digest: Digest,
    size: u64,
    origin: BlobOrigin,
    progress: Progress,
) -> Result<Vec<PushOutcome>, RegistryError> {
    let desc: Descriptor = Descriptor {
        media_type: "application/octet-stream".into(),
        digest,
        size,
        platform: None,
        artifact_type: None,
        annotations: Default::default(),
        urls: vec![],
    };
    let mut outcomes = Vec::new();
    let mut have: Option<String> = None;
    for repo in &repos {
        let outcome = reg
            .push_blob(repo, &desc, have.as_deref(), || {
                let origin = origin.clone();
                let progress = progress.clone();
                async move {
                    let r = tokio::task::spawn_blocking(move || origin.open())
                        .await
                        .map_err(|e| RegistryError::Protocol {
                            what: "blob reader".into(),
                            detail: e.to_string(),
                        })??;
                    Ok(body_from_reader(r, progress))
                }
            })
            .await?;
        if outcome != PushOutcome::Uploaded {
            progress.add(0);
        }
        outcomes.push(outcome);
        have.get_or_insert_with(|| repo.clone());
    }
    Ok(outcomes)
}

async fn push_manifests(
    reg: &Registry,
    plan: &Plan,
    manifests: &Manifests,
    skip_tags: &HashSet<(String, String)>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let push = |repo: String, m: ManifestPush| async move {
        let (bytes, _) = &manifests[&m.digest];
        let present =
            reg.head_manifest(&repo, &m.digest.to_string()).await? == Some(m.digest.clone());
        if !present {
            reg.put_manifest(&repo, &m.digest.to_string(), bytes, &m.media_type)
                .await?;
        }
        Ok::<_, ImportError>(present)
    };
    // Platform manifests and indexes by digest first, tags only once all exist.
    for phase in [false, true] {
        for p in &plan.images {
            let list = if phase {
                &p.graph.artifacts
            } else {
                &p.graph.manifests
            };
            for m in list {
                if push(p.repo.clone(), m.clone()).await? {
                    report.manifests_present += 1;
                } else {
                    report.manifests_pushed += 1;
                }
            }
            for m in list {
                let Some(tag) = &m.tag else { continue };
                if skip_tags.contains(&(p.repo.clone(), tag.clone())) {
                    report
                        .tags_skipped
                        .push(format!("{}/{}:{tag}", reg.host(), p.repo));
                    continue;
                }
                if reg.head_manifest(&p.repo, tag).await? != Some(m.digest.clone()) {
                    let (bytes, _) = &manifests[&m.digest];
                    reg.put_manifest(&p.repo, tag, bytes, &m.media_type).await?;
                }
                report.tags_set += 1;
            }
        }
    }
    Ok(())
}

/// Read back every tag and manifest digest we are responsible for.
async fn read_back(
    reg: &Registry,
    plan: &Plan,
    skip_tags: &HashSet<(String, String)>,
) -> Result<(), ImportError> {
    for p in &plan.images {
        for m in p.graph.manifests.iter().chain(p.graph.artifacts.iter()) {
            let mut refs = vec![m.digest.to_string()];
            if let Some(t) = &m.tag {
                if !skip_tags.contains(&(p.repo.clone(), t.clone())) {
                    refs.push(t.clone());
                }
            }
            for r in refs {
                let got = reg.get_manifest(&p.repo, &r).await?;
                if got.digest != m.digest {
                    return Err(ImportError::ReadBack(format!(
                        "{}/{}:{r} reads back as {}, expected {}",
                        reg.host(),
                        p.repo,
                        got.digest,
                        m.digest
                    )));
                }
            }
        }
    }
    Ok(())
}

fn finish_report(
    plan: &Plan,
    tally: Tally,
    report: &mut ImportReport,
    host: &str,
    started: std::time::Instant,
) {
    report.images = plan
        .images
        .iter()
        .map(|p| ImportedImage {
            source: p.graph.entry.source.clone(),
            target: match &p.graph.entry.tag {
                Some(t) => format!("{host}/{}:{t}", p.repo),
                None => format!("{host}/{}@{}", p.repo, p.graph.entry.digest),
            },
            digest: p.graph.entry.digest.clone(),
            artifacts: p.graph.artifacts.len(),
        })
        .collect();
    report.blobs_uploaded = tally.uploaded;
    report.blobs_mounted = tally.mounted;
    report.blobs_present = tally.present;
    report.bytes_sent = tally.bytes_sent;
    report.bytes_skipped = tally.bytes_skipped;
    report.seconds = started.elapsed().as_secs_f64();
}

async fn run_blob_pushes(
    reg: &Arc<Registry>,
    jobs: usize,
    work: Vec<(Digest, Vec<String>, u64, BlobOrigin)>,
    progress: &Progress,
) -> Result<Tally, ImportError> {
    use futures_util::StreamExt;
    let mut tally = Tally::default();
    let mut results = futures_util::stream::iter(work)
        .map(|(d, repos, size, origin)| {
            let reg = reg.clone();
            let progress = progress.clone();
            async move {
                push_blob_everywhere(reg, repos, d, size, origin, progress)
                    .await
                    .map(|o| (o, size))
            }
        })
        .buffer_unordered(jobs.max(1));
    while let Some(r) = results.next().await {
        let (outcomes, size) = r?;
        for o in outcomes {
            tally.add(o, size);
        }
    }
    Ok(tally)
}

/// Import a bundle file (seekable when it has a seek table, else streamed).
pub async fn import_file(
    registries: &Registries,
    path: &std::path::Path,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let started = std::time::Instant::now();
    let name = path.display().to_string();
    let seekable = {
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || SeekableBundle::open(&p))
            .await
            .map_err(|e| task_failed(&name, e))??
    };
    let Some(bundle) = seekable else {
        // A file can be read twice: check all of it before pushing anything,
        // then push in one streamed pass (only pipes push as they verify).
        progress::note(&format!(
            "{name} has no seek table: verifying it whole, then reading it as a stream"
        ));
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || crate::verify::verify(&p, None))
            .await
            .map_err(|e| task_failed(&name, e))?
            .map_err(|e| match e {
                crate::verify::VerifyError::Bundle(b) => ImportError::Bundle(b),
                other => ImportError::Io {
                    path: name.clone(),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
        let file = std::fs::File::open(path).map_err(|source| ImportError::Io {
            path: name.clone(),
            source,
        })?;
        return import_stream(
            registries,
            Box::new(std::io::BufReader::new(file)),
            &name,
            opts,
        )
        .await;
    };
    check_bundle_signature(opts, &bundle.digest)?;
    let bundle = Arc::new(bundle);
    // Everything that decides trust, before any push: every manifest, verified.
    let mut manifests: Manifests = HashMap::new();
    for (i, m) in bundle.index.members.iter().enumerate() {
        if m.kind == MemberKind::Manifest {
            let b = bundle.clone();
            let bytes = tokio::task::spawn_blocking(move || b.read_member(i))
                .await
                .map_err(|e| task_failed(&name, e))??;
            manifests.insert(
                m.digest.clone(),
                (Bytes::from(bytes), m.media_type.clone().unwrap_or_default()),
            );
        }
    }
    let plan = plan(&name, &bundle.index, &manifests, opts)?;
    let mut store = trust_store(&manifests);
    if opts.policy.is_some() {
        let mut needed = crate::trust::artifact_blobs(&bundle.index.images, &|d| {
            store.manifests.get(d).cloned()
        });
        needed.extend(opts.policy.as_ref().and_then(|p| p.pinned_root().cloned()));
        for d in needed {
            let pos = bundle
                .index
                .members
                .iter()
                .position(|m| m.digest == d && m.path.starts_with("blobs/"));
            if let Some(i) = pos {
                let b = bundle.clone();
                let bytes = tokio::task::spawn_blocking(move || b.read_member(i))
                    .await
                    .map_err(|e| task_failed(&name, e))??;
                store.blobs.insert(d, bytes);
            }
        }
    }
    let verdicts = check_policy(opts, &bundle.index, &store)?;
    verify_blobs_first(&bundle, opts.jobs).await?;
    let reg = registries.get(&opts.target.host).await?;
    let skip_tags = preflight(&reg, &plan, opts).await?;

    let positions: HashMap<&Digest, usize> = bundle
        .index
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.path.starts_with("blobs/"))
        .map(|(i, m)| (&m.digest, i))
        .collect();
    let work: Vec<_> = plan
        .blob_repos
        .iter()
        .map(|(d, repos)| {
            (
                d.clone(),
                repos.clone(),
                plan.sizes[d],
                BlobOrigin::Seekable(bundle.clone(), positions[d]),
            )
        })
        .collect();
    let total: u64 = work.iter().map(|w| w.2).sum();
    let progress = Progress::start("import", total);
    let tally = run_blob_pushes(&reg, opts.jobs, work, &progress).await;
    progress.finish();
    let tally = tally?;
    let report = ImportReport {
        bundle_digest: Some(bundle.digest.clone()),
        mode: "seekable".into(),
        policy: verdicts,
        ..Default::default()
    };
    push_manifests_and_report(&reg, &plan, &manifests, &skip_tags, report, tally, started).await
}

/// Re-hash every blob member before the first push, in parallel, so that
/// a corrupt member anywhere stops the import with nothing pushed. Random
/// access makes this one decompression per member, no temp copies.
async fn verify_blobs_first(bundle: &Arc<SeekableBundle>, jobs: usize) -> Result<(), ImportError> {
    use futures_util::StreamExt;
    let blobs: Vec<usize> = bundle
        .index
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.kind != MemberKind::Manifest) // manifests were read (and checked) already
        .map(|(i, _)| i)
        .collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(jobs.max(1));
    let mut checks = futures_util::stream::iter(blobs)
        .map(|i| {
            let b = bundle.clone();
            tokio::task::spawn_blocking(move || -> Result<(), BundleError> {
                let mut r = b.open_member(i)?;
                r.drain().map_err(|e| BundleError::MemberMismatch {
                    bundle: b.path.display().to_string(),
                    member: b.index.members[i].path.clone(),
                    detail: e.to_string(),
                })
            })
        })
        .buffer_unordered(threads);
    while let Some(r) = checks.next().await {
        r.map_err(|e| task_failed(&bundle.path.display().to_string(), e))??;
    }
    let b = bundle.clone();
    tokio::task::spawn_blocking(move || b.check_end())
        .await
        .map_err(|e| task_failed(&bundle.path.display().to_string(), e))??;
    Ok(())
}

/// The plan, the target registry and the tags to leave alone.
type Prepared = (Plan, Arc<Registry>, HashSet<(String, String)>);

enum Event {
    Index(Box<BundleIndex>, Digest),
    Manifest(Member, Bytes),
    /// A small blob held back (signature payloads) for the policy, before ManifestsDone.
    Small(Member, Bytes),
    /// All manifests are read; the reader waits for the set of blobs to keep.
    ManifestsDone(tokio::sync::oneshot::Sender<HashSet<Digest>>),
    Blob(Member, tempfile::NamedTempFile),
}

/// Import from a stream (`-` = stdin): one pass, blobs spooled `jobs` at a
/// time so that they can be uploaded concurrently and retried.
pub async fn import_stream(
    registries: &Registries,
    input: Box<dyn Read + Send>,
    name: &str,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let started = std::time::Instant::now();
    let spool_dir = tempfile::Builder::new()
        .prefix("airlock-import-")
        .tempdir()
        .map_err(|source| ImportError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(opts.jobs.max(1));
    let reader_name = name.to_string();
    let spool_path: PathBuf = spool_dir.path().to_path_buf();
    let buffer_small = opts.policy.is_some();
    let reader = tokio::task::spawn_blocking(move || {
        let mut keep: Option<HashSet<Digest>> = None;
        // With a policy, small blobs (signature payloads among them) are held
        // in memory until the policy has decided; layers come after them.
        let mut held: Vec<(Member, Vec<u8>)> = Vec::new();
        let mut held_bytes = 0u64;
        const HOLD_LIMIT: u64 = 256 << 20;
        let closed = || BundleError::Corrupt {
            bundle: reader_name.clone(),
            detail: "import stopped".into(),
        };
        read_stream(input, &reader_name, |ev| match ev {
            StreamEvent::Index { index, digest } => tx
                .blocking_send(Event::Index(Box::new(index.clone()), digest.clone()))
                .map_err(|_| closed()),
            StreamEvent::Member { member, data } => {
                if member.kind == MemberKind::Layout {
                    return Ok(());
                }
                if member.kind == MemberKind::Manifest {
                    if member.size > MAX_MANIFEST_BYTES {
                        return Err(BundleError::MemberMismatch {
                            bundle: reader_name.clone(),
                            member: member.path.clone(),
                            detail: "manifest larger than 4 MiB".into(),
                        });
                    }
                    let b = crate::bundle::read_whole(&reader_name, member, data)?;
                    return tx
                        .blocking_send(Event::Manifest(member.clone(), Bytes::from(b)))
                        .map_err(|_| closed());
                }
                if buffer_small && keep.is_none() && member.kind == MemberKind::Small {
                    held_bytes += member.size;
                    if held_bytes > HOLD_LIMIT {
                        return Err(BundleError::Corrupt {
                            bundle: reader_name.clone(),
                            detail: "more than 256 MiB of configs and signature blobs to hold for the policy: import the bundle file instead of a pipe".into(),
                        });
                    }
                    let b = crate::bundle::read_whole(&reader_name, member, data)?;
                    held.push((member.clone(), b));
                    return Ok(());
                }
                if keep.is_none() {
                    keep = Some(handshake(&tx, &mut held, &spool_path, &reader_name)?);
                }
                if !keep.as_ref().is_some_and(|k| k.contains(&member.digest)) {
                    return Ok(()); // present at the target already: read (and verified) only
                }
                let mut spool = tempfile::NamedTempFile::new_in(&spool_path).map_err(|source| {
                    BundleError::Io {
                        path: spool_path.display().to_string(),
                        source,
                    }
                })?;
                std::io::copy(data, &mut spool).map_err(|e| crate::bundle::member_error(&reader_name, member, e))?;
                tx.blocking_send(Event::Blob(member.clone(), spool))
                    .map_err(|_| closed())
            }
        })
        .and_then(|r| {
            // A bundle without layers: decide (and push what was held) now.
            if keep.is_none() {
                handshake(&tx, &mut held, &spool_path, &reader_name)?;
            }
            Ok(r)
        })
    });

    let mut index = None;
    let mut manifests: Manifests = HashMap::new();
    let mut state: Option<Prepared> = None;
    let mut small: HashMap<Digest, Vec<u8>> = HashMap::new();
    let mut verdicts = None;
    let mut pushes = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    let progress = Progress::start("import", 0);
    let mut tally = Tally::default();
    let mut failure: Option<ImportError> = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Index(i, d) => {
                if let Err(e) = check_bundle_signature(opts, &d) {
                    failure = Some(e);
                    break;
                }
                index = Some((*i, d))
            }
            Event::Small(m, b) => {
                small.insert(m.digest.clone(), b.to_vec());
            }
            Event::Manifest(m, b) => {
                manifests.insert(
                    m.digest.clone(),
                    (b, m.media_type.clone().unwrap_or_default()),
                );
            }
            Event::ManifestsDone(reply) => {
                let Some((idx, _)) = &index else { break };
                let prepared = async {
                    let plan = plan(name, idx, &manifests, opts)?;
                    let mut store = trust_store(&manifests);
                    store.blobs = std::mem::take(&mut small);
                    verdicts = check_policy(opts, idx, &store)?;
                    let reg = registries.get(&opts.target.host).await?;
                    let skip = preflight(&reg, &plan, opts).await?;
                    // Blobs already in every target repository need not be spooled.
                    let mut keep = HashSet::new();
                    for (d, repos) in &plan.blob_repos {
                        let desc = Descriptor {
                            media_type: String::new(),
                            digest: d.clone(),
                            size: plan.sizes[d],
                            platform: None,
                            artifact_type: None,
                            annotations: Default::default(),
                            urls: vec![],
                        };
                        let mut everywhere = true;
                        for r in repos {
                            if !reg.blob_exists(r, &desc).await? {
                                everywhere = false;
                                break;
                            }
                        }
                        if everywhere {
                            tally.add(PushOutcome::Exists, plan.sizes[d]);
                        } else {
                            keep.insert(d.clone());
                            progress.add_total(plan.sizes[d]);
                        }
                    }
                    Ok::<_, ImportError>((plan, reg, skip, keep))
                }
                .await;
                match prepared {
                    Ok((plan, reg, skip, keep)) => {
                        let _ = reply.send(keep);
                        state = Some((plan, reg, skip));
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            Event::Blob(m, spool) => {
                let Some((plan, reg, _)) = &state else { break };
                let repos = plan.blob_repos.get(&m.digest).cloned().unwrap_or_default();
                let permit = sem
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| task_failed(name, e))?;
                let origin = BlobOrigin::Spool(Arc::new(spool), m.digest.clone(), m.size);
                let (reg, progress) = (reg.clone(), progress.clone());
                pushes.spawn(async move {
                    let r = push_blob_everywhere(
                        reg,
                        repos,
                        m.digest.clone(),
                        m.size,
                        origin,
                        progress,
                    )
                    .await;
                    drop(permit);
                    r.map(|o| (o, m.size))
                });
                while let Some(done) = pushes.try_join_next() {
                    match done {
                        Ok(Ok((outcomes, size))) => {
                            outcomes.into_iter().for_each(|o| tally.add(o, size))
                        }
                        Ok(Err(e)) => {
                            failure = Some(e.into());
                            break;
                        }
                        Err(e) => {
                            failure = Some(ImportError::Io {
                                path: name.into(),
                                source: std::io::Error::other(e.to_string()),
                            });
                            break;
                        }
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
        }
    }
    drop(rx);
    while let Some(done) = pushes.join_next().await {
        match done {
            Ok(Ok((outcomes, size))) => outcomes.into_iter().for_each(|o| tally.add(o, size)),
            Ok(Err(e)) => {
                failure.get_or_insert(e.into());
            }
            Err(e) => {
                failure.get_or_insert(ImportError::Io {
                    path: name.into(),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        }
    }
    progress.finish();
    let read = reader.await.map_err(|e| task_failed(name, e))?;
    if let Some(e) = failure {
        return Err(e);
    }
    // A stream error (corrupt member, truncation) wins over anything else.
    let (index, digest) = read?;
    let (plan, reg, skip) = match state {
        Some(s) => s,
        None => {
            // A bundle of manifests only: plan now.
            let plan = plan(name, &index, &manifests, opts)?;
            let reg = registries.get(&opts.target.host).await?;
            let skip = preflight(&reg, &plan, opts).await?;
            (plan, reg, skip)
        }
    };
    let report = ImportReport {
        bundle_digest: Some(digest),
        mode: "stream".into(),
        policy: verdicts,
        ..Default::default()
    };
    push_manifests_and_report(&reg, &plan, &manifests, &skip, report, tally, started).await
}

/// A worker task that panicked or was cancelled.
fn task_failed(bundle: &str, e: impl std::fmt::Display) -> ImportError {
    ImportError::Io {
        path: bundle.to_string(),
        source: std::io::Error::other(format!("internal task failed: {e}")),
    }
}

/// The last steps of both modes: manifests, tags, read-back, summary.
async fn push_manifests_and_report(
    reg: &Registry,
    plan: &Plan,
    manifests: &Manifests,
    skip_tags: &HashSet<(String, String)>,
    mut report: ImportReport,
    tally: Tally,
    started: std::time::Instant,
) -> Result<ImportReport, ImportError> {
    push_manifests(reg, plan, manifests, skip_tags, &mut report).await?;
    read_back(reg, plan, skip_tags).await?;
    finish_report(plan, tally, &mut report, reg.host(), started);
    Ok(report)
}

/// Tell the importer every manifest (and held blob) is in; get back the
/// blobs to keep, and spool the held ones it wants.
fn handshake(
    tx: &tokio::sync::mpsc::Sender<Event>,
    held: &mut Vec<(Member, Vec<u8>)>,
    spool_path: &std::path::Path,
    bundle: &str,
) -> Result<HashSet<Digest>, BundleError> {
    let closed = || BundleError::Corrupt {
        bundle: bundle.into(),
        detail: "import stopped".into(),
    };
    for (m, b) in held.iter() {
        tx.blocking_send(Event::Small(m.clone(), Bytes::copy_from_slice(b)))
            .map_err(|_| closed())?;
    }
    let (ktx, krx) = tokio::sync::oneshot::channel();
    tx.blocking_send(Event::ManifestsDone(ktx))
        .map_err(|_| closed())?;
    let keep = krx.blocking_recv().map_err(|_| closed())?;
    for (m, b) in held.drain(..) {
        if keep.contains(&m.digest) {
            let mut spool =
                tempfile::NamedTempFile::new_in(spool_path).map_err(|source| BundleError::Io {
                    path: spool_path.display().to_string(),
                    source,
                })?;
            std::io::Write::write_all(&mut spool, &b).map_err(|source| BundleError::Io {
                path: spool_path.display().to_string(),
                source,
            })?;
            tx.blocking_send(Event::Blob(m, spool))
                .map_err(|_| closed())?;
        }
    }
    Ok(keep)
}

use bundle::read_stream;
