//! Registries as a [`Source`] (resolve selections, fetch blobs) and as a
//! [`Sink`] (check tags, upload once and mount elsewhere, push manifests
//! children first, tags after, artifacts last, read everything back).

use super::resolve::{self, Resolved};
use super::{GraphRequest, Prepared, Put, Resolver, Sink, SinkReport, Source};
use crate::body::{upload_body, Blob, Spooled};
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::graph::{BlobInfo, Graph, ImageGraph, ManifestPush};
use crate::oci::Descriptor;
use crate::progress::Progress;
use crate::registry::{PushOutcome, Registries, Registry};
use crate::selection::ImageSelection;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the stores of a selection live: a registry host, or a layout dir.
async fn resolver_for(registries: &Registries, sel: &ImageSelection) -> Result<Arc<dyn Resolver>> {
    match &sel.layout {
        Some(dir) => Ok(Arc::new(super::dir::LayoutReader::open(dir)?)),
        None => Ok(registries.get(&sel.repo.registry).await?),
    }
}

async fn resolve_one(
    registries: &Registries,
    sel: &ImageSelection,
) -> Result<(Arc<dyn Resolver>, Vec<Resolved>, Vec<String>)> {
    let store = resolver_for(registries, sel).await?;
    let (r, warnings) = resolve::resolve_selection(store.as_ref(), sel).await?;
    Ok((store, r, warnings))
}

/// Where downloads go.
enum Spool {
    /// Temp files, gone with the source (`copy`, `verify`, export to stdout).
    Temp(tempfile::TempDir),
    /// A content-addressed cache kept across runs (an export to a file):
    /// verified blobs stay for a rerun, and blobs there are reused.
    Cache(Arc<BlobCache>),
}

/// Images selected at registries (and OCI layout directories named in the
/// selection): the source of `export` and `copy`.
pub struct RegistrySource<'a> {
    registries: &'a Registries,
    selection: Vec<ImageSelection>,
    jobs: usize,
    spool: Spool,
    /// Per image of the graph, the store it came from.
    stores: Vec<Arc<dyn Resolver>>,
    /// Per image of the graph, whether that store is a local layout
    /// directory: its blobs are not worth keeping for a rerun.
    local: Vec<bool>,
    /// Hand a reading-once sink downloads in progress ([`Source::fetch_once`]).
    stream: bool,
}

impl<'a> RegistrySource<'a> {
    /// Downloads are spooled in `spool_dir` (default: the system temp dir).
    pub fn new(
        registries: &'a Registries,
        selection: Vec<ImageSelection>,
        jobs: usize,
        spool_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let dir = spool_dir.unwrap_or_else(std::env::temp_dir);
        let spool = tempfile::Builder::new()
            .prefix(".airlock-spool-")
            .tempdir_in(&dir)
            .map_err(Error::io(dir.display()))?;
        Ok(RegistrySource {
            registries,
            selection,
            jobs: jobs.max(1),
            spool: Spool::Temp(spool),
            stores: vec![],
            local: vec![],
            stream: true,
        })
    }

    /// Downloads go into `cache` (and stay there); blobs it already holds
    /// intact are not downloaded again.
    pub fn with_cache(
        registries: &'a Registries,
        selection: Vec<ImageSelection>,
        jobs: usize,
        cache: Arc<BlobCache>,
    ) -> Self {
        RegistrySource {
            registries,
            selection,
            jobs: jobs.max(1),
            spool: Spool::Cache(cache),
            stores: vec![],
            local: vec![],
            stream: true,
        }
    }

    /// Every download goes into the cache first, even for a sink that
    /// could read it as it arrives (`--cache-dir`: kept on purpose).
    pub fn keep_every_download(mut self) -> Self {
        self.stream = false;
        self
    }

    async fn resolve_all(&self) -> Result<Vec<(Arc<dyn Resolver>, Vec<Resolved>, Vec<String>)>> {
        let registries = self.registries;
        let each: Vec<_> = self
            .selection
            .iter()
            .map(|sel| resolve_one(registries, sel))
            .collect();
        futures_util::stream::iter(each)
            .buffered(self.jobs)
            .try_collect()
            .await
    }

    /// The repository and store a blob of the graph is fetched from.
    fn origin<'g>(
        &'g self,
        graph: &'g Graph,
        blob: &BlobInfo,
    ) -> Result<(&'g str, &'g Arc<dyn Resolver>)> {
        let img = graph
            .images
            .get(blob.image)
            .ok_or_else(|| Error::Selection(format!("blob {} belongs to no image", blob.digest)))?;
        let store = self
            .stores
            .get(blob.image)
            .ok_or_else(|| Error::Selection(format!("no store for {}", img.source)))?;
        Ok((&img.repository, store))
    }

    /// Download a blob of image `image` into a spool file or the cache
    /// (hash checked on the fly, retried from scratch), unless the cache
    /// holds it intact.
    async fn spool_blob(&self, graph: &Graph, blob: &BlobInfo) -> Result<Blob> {
        let (repo, store) = self.origin(graph, blob)?;
        let desc = Descriptor::blob(blob.digest.clone(), blob.size);
        let local = self.local.get(blob.image).copied().unwrap_or(false);
        let cache = match &self.spool {
            Spool::Cache(cache) if !local => cache,
            Spool::Cache(cache) => {
                return spool_into(cache.temp_dir(), store.as_ref(), repo, &desc).await
            }
            Spool::Temp(dir) => return spool_into(dir.path(), store.as_ref(), repo, &desc).await,
        };
        if let Some(hit) = cache.reuse(&blob.digest, blob.size).await? {
            return Ok(Arc::new(hit));
        }
        let tmp = cache.temp_file(&blob.digest)?;
        let f = tmp.reopen().map_err(Error::io(tmp.path().display()))?;
        let mut f = tokio::fs::File::from_std(f);
        store.fetch_blob(repo, &desc, &mut f).await?;
        drop(f);
        Ok(Arc::new(cache.admit(tmp, &blob.digest, blob.size)?))
    }

    /// Signature payloads for the policy, in memory (each at most 4 MiB).
    async fn read_payloads(&self, graph: &mut Graph) -> Result<()> {
        let manifests = &graph.manifests;
        let wanted = crate::trust::artifact_blobs(&graph.images, &|d| {
            manifests
                .get(d)
                .map(|m| (m.bytes.to_vec(), m.media_type.clone()))
        });
        for d in wanted {
            let Some(blob) = graph.blob(&d).cloned() else {
                continue;
            };
            let spooled = self.spool_blob(graph, &blob).await?;
            let bytes = tokio::task::spawn_blocking(move || {
                spooled.open().and_then(|r| r.read_all(blob.size))
            })
            .await
            .map_err(Error::task("signature payload"))?
            .map_err(Error::io(format!("signature payload {d}")))?;
            graph.payloads.insert(d, bytes.into());
        }
        Ok(())
    }
}

impl Source for RegistrySource<'_> {
    fn name(&self) -> String {
        let names: Vec<String> = self.selection.iter().map(|s| s.repo.to_string()).collect();
        names.join(", ")
    }

    fn rereadable(&self) -> bool {
        self.selection.iter().all(|s| s.layout.is_some())
    }

    fn graph(&mut self, req: GraphRequest) -> BoxFuture<'_, Result<Graph>> {
        Box::pin(async move {
            let mut resolved = Vec::new();
            let mut warnings = Vec::new();
            let all = self.resolve_all().await?;
            for ((store, images, w), sel) in all.into_iter().zip(&self.selection) {
                warnings.extend(w);
                for r in images {
                    self.stores.push(store.clone());
                    self.local.push(sel.layout.is_some());
                    resolved.push(r);
                }
            }
            if resolved.is_empty() {
                return Err(Error::Selection(if warnings.is_empty() {
                    "nothing selected".into()
                } else {
                    format!("nothing selected:\n  {}", warnings.join("\n  "))
                }));
            }
            let mut graph = resolve::into_graph(resolved);
            // Printed by the gate as warnings, before anything is written.
            graph.skipped.splice(0..0, warnings);
            if req.payloads {
                self.read_payloads(&mut graph).await?;
            }
            Ok(graph)
        })
    }

    fn fetch<'a>(&'a self, graph: &'a Graph, blob: &'a BlobInfo) -> BoxFuture<'a, Result<Blob>> {
        Box::pin(self.spool_blob(graph, blob))
    }

    /// A download in progress, read by the sink as it arrives: no spool
    /// file (one disk write and read less per byte). A blob the cache holds
    /// is reused; with a `--cache-dir` (kept across runs on purpose) every
    /// download still goes there.
    fn fetch_once<'a>(
        &'a self,
        graph: &'a Graph,
        blob: &'a BlobInfo,
    ) -> BoxFuture<'a, Result<Blob>> {
        Box::pin(async move {
            let local = self.local.get(blob.image).copied().unwrap_or(false);
            if local || !self.stream {
                return self.spool_blob(graph, blob).await;
            }
            if let Spool::Cache(cache) = &self.spool {
                if let Some(hit) = cache.reuse(&blob.digest, blob.size).await? {
                    return Ok(Arc::new(hit) as Blob);
                }
                cache.count_streamed(blob.size);
            }
            let (repo, store) = self.origin(graph, blob)?;
            let desc = Descriptor::blob(blob.digest.clone(), blob.size);
            Ok(Arc::new(crate::stream::Streamed::start(
                store.clone(),
                repo.to_string(),
                desc,
            )) as Blob)
        })
    }
}

/// A blob downloaded into a temp file in `dir` (gone when dropped).
async fn spool_into(
    dir: &std::path::Path,
    store: &dyn Resolver,
    repo: &str,
    desc: &Descriptor,
) -> Result<Blob> {
    let mut spooled =
        Spooled::create_in(dir, &desc.digest, desc.size).map_err(Error::io(dir.display()))?;
    let f = spooled.reopen_std().map_err(Error::io(dir.display()))?;
    let mut f = tokio::fs::File::from_std(f);
    store.fetch_blob(repo, desc, &mut f).await?;
    spooled.checked_by_download();
    Ok(Arc::new(spooled))
}

// ------------------------------------------------------------------ sink

/// What to do when a tag at the destination points to another digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExistingTag {
    /// Stop before pushing anything (default).
    #[default]
    Refuse,
    /// Move the tag to the bundle's digest.
    Overwrite,
    /// Leave the existing tag as it is (content is still pushed by digest).
    Skip,
}

/// What to do when an artifact tag (a cosign `.sig`, `.att` or `.sbom`, a
/// referrers fallback index `sha256-<hex>`) at the destination points to
/// another digest. Artifact tags move by design: a vendor who signs an image
/// again appends a layer to its `.sig` manifest, so next month's bundle
/// carries a new digest under the same tag. Image tags keep following
/// [`OnExistingTag`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExistingArtifact {
    /// Apply the update when it keeps everything the registry's manifest
    /// has (every layer, or every referrer of a fallback index) and adds to
    /// it; refuse, before anything is pushed, when it would drop some.
    #[default]
    Merge,
    /// Move the tag to the bundle's digest.
    Overwrite,
    /// Leave the existing tag as it is.
    Skip,
    /// Stop before pushing anything, as for image tags.
    Refuse,
}

/// An artifact tag moved by [`OnExistingArtifact::Merge`]: the bundle's
/// manifest keeps every layer (or referrer) of the registry's and adds some.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactUpdate {
    /// `HOST/REPO:TAG`.
    pub tag: String,
    pub old: Digest,
    pub new: Digest,
    /// Layers (or fallback index entries) the new manifest adds.
    pub added: usize,
}

/// Why an artifact update is not a merge.
#[derive(Debug, PartialEq, Eq)]
enum NotAMerge {
    /// Entries of the registry's manifest the bundle's lacks.
    Drops(Vec<Digest>),
    /// Not the same kind of document (an index against a manifest, or
    /// something that does not parse), so nothing can be compared.
    Unlike(String),
}

/// Whether `new` keeps everything `old` has: for an image manifest, every
/// layer; for an index (the referrers fallback), every listed manifest.
/// A layer is kept only if one of the new layers has its digest *and* its
/// annotations: cosign puts the signature (and certificate, bundle) in the
/// layer's annotations, and two signatures of one image share the payload
/// digest, so a digest alone would not notice a signature replaced.
/// Counted as a multiset, so a duplicated layer must stay duplicated.
/// Returns how many entries `new` adds.
fn artifact_merge(
    old: &crate::oci::Manifest,
    new: &crate::oci::Manifest,
) -> Result<usize, NotAMerge> {
    let unlike = |e: String| NotAMerge::Unlike(e);
    let ov = old.view().map_err(|e| unlike(e.to_string()))?;
    let nv = new.view().map_err(|e| unlike(e.to_string()))?;
    if ov.is_index() != nv.is_index() {
        return Err(NotAMerge::Unlike(format!(
            "the registry has {} ({}), the bundle {} ({})",
            old.digest, ov.media_type, new.digest, nv.media_type
        )));
    }
    type Key = (Digest, BTreeMap<String, String>);
    let key = |d: &Descriptor, with_annotations: bool| -> Key {
        let annotations = if with_annotations {
            d.annotations.clone()
        } else {
            BTreeMap::new()
        };
        (d.digest.clone(), annotations)
    };
    let (olds, news): (Vec<Key>, Vec<Key>) = if ov.is_index() {
        // A referrer is its manifest digest; the annotations of its entry are copies.
        (
            ov.manifests.iter().map(|d| key(d, false)).collect(),
            nv.manifests.iter().map(|d| key(d, false)).collect(),
        )
    } else {
        (
            ov.layers.iter().map(|d| key(d, true)).collect(),
            nv.layers.iter().map(|d| key(d, true)).collect(),
        )
    };
    let mut pool = news.clone();
    let mut dropped = Vec::new();
    for k in &olds {
        match pool.iter().position(|n| n == k) {
            Some(i) => {
                pool.swap_remove(i);
            }
            None => dropped.push(k.0.clone()),
        }
    }
    if dropped.is_empty() {
        Ok(news.len() - olds.len())
    } else {
        Err(NotAMerge::Drops(dropped))
    }
}

/// Where images land: `HOST[/PATH-TEMPLATE]`. The template may use
/// `{repo}` (the full source repository path) and `{name}` (its last
/// component); a path without braces is a prefix (`HOST/mirror` =
/// `HOST/mirror/{repo}`); no path keeps the source path (`{repo}`).
///
/// A selection-file `target` replaces the source path: under a plain
/// prefix it goes below the prefix (`HOST/mirror` + `target: op` =
/// `mirror/op`); with a template (`{repo}`, `{name}`) it replaces the whole
/// path, as the template would only rename the source path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub template: String,
    /// The path was a plain prefix (no braces): a `target` goes under it.
    pub prefixed: bool,
    /// The tag at the destination (`import --tag-template`); wins over a
    /// template the selection file gave an image.
    pub tag_template: Option<String>,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        let s = s.trim().trim_end_matches('/');
        let (host, path) = s.split_once('/').unwrap_or((s, ""));
        if host.is_empty() || host.contains('{') {
            return Err(Error::Target(format!(
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
            prefixed: !path.contains('{'),
            tag_template: None,
        };
        // Reject a template that cannot give a valid name.
        t.repository("a/b", None)?;
        Ok(t)
    }

    /// Every image to exactly this repository (`docker://HOST/REPO`).
    pub fn exact(host: &str, repository: &str) -> Result<Target> {
        if !crate::reference::is_valid_repository(repository) {
            return Err(Error::Target(format!(
                "{repository:?} is not a valid repository name"
            )));
        }
        Ok(Target {
            host: host.to_string(),
            template: repository.to_string(),
            prefixed: false,
            tag_template: None,
        })
    }

    /// The target repository for a source repository (and its optional per-image target).
    pub fn repository(&self, source_repo: &str, image_target: Option<&str>) -> Result<String> {
        let name = source_repo.rsplit('/').next().unwrap_or(source_repo);
        // A per-image target comes from the bundle (or a selection file):
        // it stands for the template's variable part only, so it never
        // leaves the prefix the user named with --to.
        let repo = match image_target {
            Some(t) if self.template.contains('{') => {
                self.template.replace("{repo}", t).replace("{name}", t)
            }
            _ => self
                .template
                .replace("{repo}", source_repo)
                .replace("{name}", name),
        };
        if !crate::reference::is_valid_repository(&repo) {
            return Err(Error::Target(format!(
                "target repository {repo:?} (from template {:?}) is not a valid repository name",
                self.template
            )));
        }
        Ok(repo)
    }
}

/// Where each image goes.
struct Placed {
    graph: ImageGraph,
    repo: String,
}

struct Plan {
    images: Vec<Placed>,
    /// blob digest → target repositories needing it (first one uploads, the rest mount).
    blob_repos: BTreeMap<Digest, Vec<String>>,
}

/// What `prepare` found at the target, so that `commit` asks nothing twice.
#[derive(Default)]
struct Found {
    /// Tags to leave as they are (`skip` rules).
    skip_tags: HashSet<(String, String)>,
    /// (repository, tag) pairs already pointing where the copy points them.
    tags_there: HashSet<(String, String)>,
    /// (repository, manifest) pairs the registry holds.
    manifests_there: HashSet<(String, Digest)>,
}

/// Images pushed into a registry: the sink of `import` and `copy`.
pub struct RegistrySink<'a> {
    registries: &'a Registries,
    target: Target,
    on_existing_tag: OnExistingTag,
    on_existing_artifact: OnExistingArtifact,
    reg: Option<Arc<Registry>>,
    plan: Option<Plan>,
    found: Found,
    /// Artifact tags the preflight found to be merges, reported at commit.
    merges: Vec<ArtifactUpdate>,
    /// (blob, repository) pairs found at the registry by `prepare`.
    have: HashSet<(Digest, String)>,
    jobs: usize,
    progress: Progress,
}

impl<'a> RegistrySink<'a> {
    pub fn new(registries: &'a Registries, target: Target, on_existing_tag: OnExistingTag) -> Self {
        RegistrySink {
            registries,
            target,
            on_existing_tag,
            on_existing_artifact: OnExistingArtifact::default(),
            reg: None,
            plan: None,
            found: Found::default(),
            merges: Vec::new(),
            have: HashSet::new(),
            jobs: 6,
            progress: Progress::hidden(),
        }
    }

    /// The rule for artifact tags (default [`OnExistingArtifact::Merge`]).
    pub fn with_on_existing_artifact(mut self, rule: OnExistingArtifact) -> Self {
        self.on_existing_artifact = rule;
        self
    }

    /// Requests at once while preparing (HEADs).
    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    fn plan(&self, graph: &Graph) -> Result<Plan> {
        let graphs = graph.walk(&self.name())?;
        let mut images = Vec::new();
        let mut blob_repos: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for g in graphs {
            let repo = self
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
        Ok(Plan { images, blob_repos })
    }

    fn registry(&self) -> Result<&Arc<Registry>> {
        self.reg
            .as_ref()
            .ok_or_else(|| Error::Target("the registry sink was not prepared".into()))
    }
}

/// A tag the copy would set: where, which digest, and whether it is an
/// artifact's (signature, attestation, SBOM, referrers fallback index).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PlannedTag {
    repo: String,
    tag: String,
    digest: Digest,
    artifact: bool,
}

/// Every tag the copy would set, with the digest it would point to.
fn planned_tags(plan: &Plan) -> Vec<PlannedTag> {
    let mut out = Vec::new();
    for p in &plan.images {
        let manifests = p.graph.manifests.iter().map(|m| (m, false));
        for (m, artifact) in manifests.chain(p.graph.artifacts.iter().map(|m| (m, true))) {
            if let Some(t) = &m.tag {
                out.push(PlannedTag {
                    repo: p.repo.clone(),
                    tag: t.clone(),
                    digest: m.digest.clone(),
                    artifact,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What the preflight decided: tags to leave alone, artifact tags to merge.
#[derive(Default)]
struct Preflight {
    skip: HashSet<(String, String)>,
    merges: Vec<ArtifactUpdate>,
    /// Tags that already point to the digest the copy would set.
    already: HashSet<(String, String)>,
}

/// Check every tag before the first byte is pushed: image tags against
/// `--on-existing-tag`, artifact tags against `--on-existing-artifact` (a
/// merge is decided here, from the registry's manifest, so that a refusal
/// leaves the registry untouched).
async fn preflight(
    reg: &Registry,
    graph: &Graph,
    plan: &Plan,
    on_existing_tag: OnExistingTag,
    on_existing_artifact: OnExistingArtifact,
) -> Result<Preflight> {
    let mut conflicts = Vec::new();
    let mut artifact_conflicts = Vec::new();
    let mut out = Preflight::default();
    // Every tag asked about at once (small requests: their round trips are
    // the cost); decided in order below.
    let tags = planned_tags(plan);
    let asks: Vec<_> = tags
        .iter()
        .map(|t| async { Ok(reg.head_manifest(&t.repo, &t.tag).await?) })
        .collect();
    let existing: Vec<Option<Digest>> = all_small(asks).await?;
    for (t, existing) in tags.into_iter().zip(existing) {
        let Some(existing) = existing else {
            continue;
        };
        if existing == t.digest {
            out.already.insert((t.repo, t.tag));
            continue;
        }
        let at = format!("{}/{}:{}", reg.host(), t.repo, t.tag);
        if !t.artifact {
            match on_existing_tag {
                OnExistingTag::Refuse => conflicts.push(format!(
                    "{at} points to {existing}, the source has {}",
                    t.digest
                )),
                OnExistingTag::Skip => {
                    out.skip.insert((t.repo, t.tag));
                }
                OnExistingTag::Overwrite => {}
            }
            continue;
        }
        match on_existing_artifact {
            OnExistingArtifact::Overwrite => {}
            OnExistingArtifact::Skip => {
                out.skip.insert((t.repo, t.tag));
            }
            OnExistingArtifact::Refuse => artifact_conflicts.push(format!(
                "{at} points to {existing}, the source has {} (--on-existing-artifact=refuse)",
                t.digest
            )),
            OnExistingArtifact::Merge => {
                let new = graph.manifests.get(&t.digest).ok_or_else(|| {
                    Error::Target(format!("manifest {} is not in the graph", t.digest))
                })?;
                // By digest: the bytes are checked against it (and size-limited).
                let old = reg.get_manifest(&t.repo, &existing.to_string()).await?;
                match artifact_merge(&old, new) {
                    Ok(added) => out.merges.push(ArtifactUpdate {
                        tag: at,
                        old: existing,
                        new: t.digest,
                        added,
                    }),
                    Err(NotAMerge::Drops(dropped)) => artifact_conflicts.push(format!(
                        "{at} points to {existing}; the source's {} would drop {}: {}",
                        t.digest,
                        if dropped.len() == 1 { "this entry" } else { "these entries" },
                        dropped
                            .iter()
                            .map(Digest::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    Err(NotAMerge::Unlike(why)) => artifact_conflicts.push(format!(
                        "{at} points to {existing}, which the source's {} cannot be merged with: {why}",
                        t.digest
                    )),
                }
            }
        }
    }
    if !conflicts.is_empty() {
        // Artifact lines too: the user fixes everything in one round.
        conflicts.extend(
            artifact_conflicts
                .into_iter()
                .map(|c| format!("{c} (an artifact tag: see --on-existing-artifact)")),
        );
        return Err(Error::TagConflicts(conflicts));
    }
    if !artifact_conflicts.is_empty() {
        return Err(Error::ArtifactConflicts(artifact_conflicts));
    }
    Ok(out)
}

/// Every (blob, repository) pair the plan puts together, with the size.
fn blob_pairs(graph: &Graph, plan: &Plan) -> Vec<(Digest, String, u64)> {
    plan.blob_repos
        .iter()
        .flat_map(|(d, repos)| {
            let size = graph.blob(d).map(|b| b.size).unwrap_or(0);
            repos.iter().map(move |r| (d.clone(), r.clone(), size))
        })
        .collect()
}

/// The pairs the registry holds (one HEAD each, `jobs` at once; a blob of
/// another size or digest counts as absent).
async fn held(
    reg: &Registry,
    pairs: Vec<(Digest, String, u64)>,
    jobs: usize,
) -> Result<HashSet<(Digest, String)>> {
    let found: Vec<Option<(Digest, String)>> = futures_util::stream::iter(pairs)
        .map(|(d, r, size)| async move {
            let there = reg
                .blob_exists(&r, &Descriptor::blob(d.clone(), size))
                .await?;
            Ok::<_, Error>(there.then_some((d, r)))
        })
        .buffered(jobs.max(1))
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Which blobs each target repository has already, and the blobs every
/// repository that needs them has.
async fn presence(
    reg: &Registry,
    graph: &Graph,
    plan: &Plan,
    jobs: usize,
) -> Result<(HashSet<(Digest, String)>, HashSet<Digest>)> {
    // HEADs are small: more in flight than uploads.
    let have = held(reg, blob_pairs(graph, plan), jobs.max(MANIFEST_REQUESTS)).await?;
    let everywhere = plan
        .blob_repos
        .iter()
        .filter(|(d, repos)| {
            repos
                .iter()
                .all(|r| have.contains(&((*d).clone(), r.clone())))
        })
        .map(|(d, _)| d.clone())
        .collect();
    Ok((have, everywhere))
}

/// The (repository, manifest) pairs the registry holds already.
async fn manifest_presence(reg: &Registry, plan: &Plan) -> Result<HashSet<(String, Digest)>> {
    let pairs: Vec<(&str, &Digest)> = plan
        .images
        .iter()
        .flat_map(|p| {
            p.graph
                .manifests
                .iter()
                .chain(p.graph.artifacts.iter())
                .map(move |m| (p.repo.as_str(), &m.digest))
        })
        .collect();
    let asks: Vec<_> = pairs
        .iter()
        .map(|(repo, d)| async move {
            Ok(reg.head_manifest(repo, &d.to_string()).await? == Some((*d).clone()))
        })
        .collect();
    let there: Vec<bool> = all_small(asks).await?;
    Ok(pairs
        .into_iter()
        .zip(there)
        .filter(|(_, t)| *t)
        .map(|((r, d), _)| (r.to_string(), d.clone()))
        .collect())
}

/// An incremental bundle's external blobs: when every one is in some
/// target repository that needs it, mount it into the others (the only
/// writes before the first blob of the bundle, and only once nothing is
/// missing); a blob no repository has is left for the engine to name.
async fn mount_external(
    reg: &Registry,
    graph: &Graph,
    plan: &Plan,
    have: &HashSet<(Digest, String)>,
    present: &mut HashSet<Digest>,
) -> Result<()> {
    let pending: Vec<&Digest> = graph
        .external
        .keys()
        .filter(|d| plan.blob_repos.contains_key(*d) && !present.contains(*d))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let mut holders: HashMap<Digest, String> = HashMap::new();
    for d in &pending {
        let found = plan.blob_repos.get(*d).and_then(|repos| {
            repos
                .iter()
                .find(|r| have.contains(&((*d).clone(), (*r).clone())))
        });
        if let Some(r) = found {
            holders.insert((*d).clone(), r.clone());
        }
    }
    if holders.len() < pending.len() {
        // The site may hold them in repositories this bundle does not name
        // (last month's images under other names): ask the catalog.
        find_elsewhere(reg, graph, &pending, &mut holders).await?;
    }
    if pending.iter().any(|d| !holders.contains_key(*d)) {
        return Ok(()); // the engine names every missing one
    }
    for d in pending {
        let Some(from) = holders.get(d).cloned() else {
            continue;
        };
        let size = graph.blob(d).map(|b| b.size).unwrap_or(0);
        let desc = Descriptor::blob(d.clone(), size);
        for repo in plan.blob_repos.get(d).into_iter().flatten() {
            if have.contains(&(d.clone(), repo.clone())) || *repo == from {
                continue;
            }
            let outcome = reg
                .push_absent_blob(repo, &desc, Some(&from), |_| async {
                    Err(crate::registry::RegistryError::Protocol {
                        what: format!("mount of {d} from {from} into {repo}"),
                        detail: "the registry declined the mount, and an incremental bundle does not carry this blob".into(),
                    })
                })
                .await?;
            if outcome != PushOutcome::Mounted && outcome != PushOutcome::Exists {
                return Err(Error::Target(format!(
                    "{d} could not be mounted into {repo}"
                )));
            }
        }
        present.insert(d.clone());
    }
    Ok(())
}

/// Repositories of the target holding the blobs no planned repository
/// has: one HEAD per (repository, blob) still missing, over a bounded
/// catalog.
async fn find_elsewhere(
    reg: &Registry,
    graph: &Graph,
    pending: &[&Digest],
    holders: &mut HashMap<Digest, String>,
) -> Result<()> {
    const MAX_REPOSITORIES: usize = 10_000;
    let repos = match reg.catalog(MAX_REPOSITORIES).await {
        Ok(r) => r,
        // A registry without a catalog (or without the right to read it):
        // the engine then names what is missing.
        Err(_) => return Ok(()),
    };
    for repo in repos {
        let missing: Vec<&Digest> = pending
            .iter()
            .copied()
            .filter(|d| !holders.contains_key(*d))
            .collect();
        if missing.is_empty() {
            break;
        }
        for d in missing {
            let size = graph.blob(d).map(|b| b.size).unwrap_or(0);
            if reg
                .blob_exists(&repo, &Descriptor::blob(d.clone(), size))
                .await?
            {
                holders.insert(d.clone(), repo.clone());
            }
        }
    }
    Ok(())
}

impl Sink for RegistrySink<'_> {
    fn name(&self) -> String {
        format!("{}/{}", self.target.host, self.target.template)
    }

    fn prepare<'b>(&'b mut self, graph: &'b Graph) -> BoxFuture<'b, Result<Prepared>> {
        Box::pin(async move {
            let plan = self.plan(graph)?;
            let reg = self.registries.get(&self.target.host).await?;
            // All read only, so at once; the preflight's refusal still comes
            // before the first write (the mounts below).
            let (decided, (have, mut present), manifests_there) = futures_util::try_join!(
                preflight(
                    &reg,
                    graph,
                    &plan,
                    self.on_existing_tag,
                    self.on_existing_artifact,
                ),
                presence(&reg, graph, &plan, self.jobs),
                manifest_presence(&reg, &plan),
            )?;
            self.merges = decided.merges;
            self.found = Found {
                skip_tags: decided.skip,
                tags_there: decided.already,
                manifests_there,
            };
            mount_external(&reg, graph, &plan, &have, &mut present).await?;
            self.have = have;
            let unwanted = graph
                .blobs
                .iter()
                .filter(|b| !plan.blob_repos.contains_key(&b.digest))
                .map(|b| b.digest.clone())
                .collect();
            self.reg = Some(reg);
            self.plan = Some(plan);
            Ok(Prepared {
                present,
                unwanted,
                ..Default::default()
            })
        })
    }

    fn put_blob<'b>(&'b self, blob: &'b BlobInfo, data: Blob) -> BoxFuture<'b, Result<Vec<Put>>> {
        Box::pin(async move {
            let reg = self.registry()?;
            let repos = self
                .plan
                .as_ref()
                .and_then(|p| p.blob_repos.get(&blob.digest))
                .cloned()
                .unwrap_or_default();
            let desc = Descriptor::blob(blob.digest.clone(), blob.size);
            let mut outcomes = Vec::new();
            let mut have: Option<String> = None;
            for repo in &repos {
                if self.have.contains(&(blob.digest.clone(), repo.clone())) {
                    outcomes.push(Put::Present);
                    have.get_or_insert_with(|| repo.clone());
                    continue;
                }
                let outcome = reg
                    .push_absent_blob(repo, &desc, have.as_deref(), |offset| {
                        let data = data.clone();
                        let progress = self.progress.clone();
                        let digest = blob.digest.clone();
                        async move {
                            let body = tokio::task::spawn_blocking(move || data.open())
                                .await
                                .map_err(|e| crate::registry::RegistryError::Protocol {
                                    what: "blob reader".into(),
                                    detail: e.to_string(),
                                })?
                                .map_err(|e| crate::registry::RegistryError::Io {
                                    what: format!("source of blob {digest}"),
                                    source: e,
                                })?;
                            Ok(upload_body(body, offset, progress))
                        }
                    })
                    .await?;
                outcomes.push(match outcome {
                    PushOutcome::Uploaded => Put::Stored,
                    PushOutcome::Mounted => Put::Mounted,
                    PushOutcome::Exists => Put::Present,
                });
                have.get_or_insert_with(|| repo.clone());
            }
            Ok(outcomes)
        })
    }

    fn commit<'b>(&'b mut self, graph: &'b Graph) -> BoxFuture<'b, Result<SinkReport>> {
        Box::pin(async move {
            let reg = self.registry()?.clone();
            let plan = self
                .plan
                .take()
                .ok_or_else(|| Error::Target("the registry sink was not prepared".into()))?;
            let mut report = SinkReport::default();
            push_manifests(&reg, &plan, graph, &self.found, &mut report).await?;
            for p in &plan.images {
                report.tags_set +=
                    referrer_fallback_tags(&reg, &p.repo, &p.graph.entry, graph).await?;
            }
            // Blobs: each upload or mount was confirmed as it finished
            // (`Registry::confirm_stored`).
            read_back_manifests(&reg, &plan, &self.found.skip_tags).await?;
            report.artifacts_updated = std::mem::take(&mut self.merges);
            report.destinations = plan
                .images
                .iter()
                .map(|p| match &p.graph.entry.tag {
                    Some(t) => format!("{}/{}:{t}", reg.host(), p.repo),
                    None => format!("{}/{}@{}", reg.host(), p.repo, p.graph.entry.digest),
                })
                .collect();
            Ok(report)
        })
    }
}

/// Push manifest `m` into `repo` unless `prepare` found it there.
async fn push_one(
    reg: &Registry,
    repo: &str,
    m: &ManifestPush,
    graph: &Graph,
    there: &HashSet<(String, Digest)>,
) -> Result<bool> {
    let raw = graph
        .manifests
        .get(&m.digest)
        .ok_or_else(|| Error::Target(format!("manifest {} is not in the graph", m.digest)))?;
    let present = there.contains(&(repo.to_string(), m.digest.clone()));
    if !present {
        reg.put_manifest(repo, &m.digest.to_string(), &raw.bytes, &m.media_type)
            .await?;
    }
    Ok(present)
}

/// Requests to the destination in flight at once for manifests, tags and
/// the read-back: each is small, so their round trips are what costs.
const MANIFEST_REQUESTS: usize = 8;

/// Run `asks` (small registry requests) [`MANIFEST_REQUESTS`] at a time;
/// their results in order, or the first error. The futures are made by the
/// caller, not in a stream's closure over borrowed data, which would make
/// the future not provably Send.
async fn all_small<T>(asks: Vec<impl std::future::Future<Output = Result<T>>>) -> Result<Vec<T>> {
    futures_util::stream::iter(asks)
        .buffered(MANIFEST_REQUESTS)
        .try_collect()
        .await
}

/// Platform manifests and indexes by digest first, tags only once all
/// exist; then the artifacts the same way. Within a step the requests run
/// concurrently; the steps stay in order (children before the indexes that
/// list them, manifests before tags, images before their signatures).
async fn push_manifests(
    reg: &Registry,
    plan: &Plan,
    graph: &Graph,
    found: &Found,
    report: &mut SinkReport,
) -> Result<()> {
    for artifacts in [false, true] {
        let all: Vec<(&str, &ManifestPush)> = plan
            .images
            .iter()
            .flat_map(|p| {
                let list = if artifacts {
                    &p.graph.artifacts
                } else {
                    &p.graph.manifests
                };
                list.iter().map(move |m| (p.repo.as_str(), m))
            })
            .collect();
        for indexes in [false, true] {
            let step = all
                .iter()
                .filter(|(_, m)| crate::oci::is_index_type(&m.media_type) == indexes);
            let asks: Vec<_> = step
                .map(|(repo, m)| push_one(reg, repo, m, graph, &found.manifests_there))
                .collect();
            let present: Vec<bool> = all_small(asks).await?;
            for p in present {
                if p {
                    report.manifests_present += 1;
                } else {
                    report.manifests_written += 1;
                }
            }
        }
        let mut tags = Vec::new();
        for (repo, m) in &all {
            let Some(tag) = &m.tag else { continue };
            let here = (repo.to_string(), tag.clone());
            if found.skip_tags.contains(&here) {
                report
                    .tags_skipped
                    .push(format!("{}/{repo}:{tag}", reg.host()));
                continue;
            }
            report.tags_set += 1;
            if !found.tags_there.contains(&here) {
                tags.push((*repo, tag.as_str(), *m));
            }
        }
        let asks: Vec<_> = tags
            .into_iter()
            .map(|(repo, tag, m)| set_tag(reg, repo, tag, m, graph))
            .collect();
        all_small(asks).await?;
    }
    Ok(())
}

/// Point `tag` at manifest `m` (already pushed).
async fn set_tag(
    reg: &Registry,
    repo: &str,
    tag: &str,
    m: &ManifestPush,
    graph: &Graph,
) -> Result<()> {
    let raw = graph
        .manifests
        .get(&m.digest)
        .ok_or_else(|| Error::Target(format!("manifest {} is not in the graph", m.digest)))?;
    reg.put_manifest(repo, tag, &raw.bytes, &m.media_type)
        .await?;
    Ok(())
}

/// Every manifest by digest, and every tag set, reads back as pushed.
async fn read_back_manifests(
    reg: &Registry,
    plan: &Plan,
    skip_tags: &HashSet<(String, String)>,
) -> Result<()> {
    // A tag is read back by its name: the bytes it answers with hash to
    // the manifest's digest, which proves the manifest too (one GET, not
    // two: the registry's CPU is an import's limit).
    let mut reads = Vec::new();
    let mut asked = HashSet::new();
    for p in &plan.images {
        for m in p.graph.manifests.iter().chain(p.graph.artifacts.iter()) {
            let reference = match &m.tag {
                Some(t) if !skip_tags.contains(&(p.repo.clone(), t.clone())) => t.clone(),
                _ => m.digest.to_string(),
            };
            if asked.insert((p.repo.as_str(), reference.clone())) {
                reads.push((p.repo.as_str(), reference, &m.digest));
            }
        }
    }
    let asks: Vec<_> = reads
        .into_iter()
        .map(|(repo, r, expected)| async move {
            let got = reg
                .get_manifest(repo, &r)
                .await
                .map_err(|e| Error::ReadBack(format!("{}/{repo}:{r}: {e}", reg.host())))?;
            if &got.digest != expected {
                return Err(Error::ReadBack(format!(
                    "{}/{repo}:{r} reads back as {}, expected {expected}",
                    reg.host(),
                    got.digest,
                )));
            }
            Ok(())
        })
        .collect();
    all_small(asks).await?;
    Ok(())
}

/// The descriptor of a referrer in a fallback index: media type, digest,
/// size, artifact type and the referrer's own annotations (for filtering).
fn referrer_descriptor(a: &crate::graph::Artifact, graph: &Graph) -> serde_json::Value {
    let mut d = serde_json::json!({
        "mediaType": a.media_type,
        "digest": a.digest.to_string(),
        "size": a.size,
    });
    if let Some(t) = &a.artifact_type {
        d["artifactType"] = serde_json::Value::String(t.clone());
    }
    let annotations = graph
        .manifests
        .get(&a.digest)
        .and_then(|m| m.view().ok())
        .map(|v| v.annotations)
        .unwrap_or_default();
    if !annotations.is_empty() {
        d["annotations"] = serde_json::json!(annotations);
    }
    d
}

/// A registry without the referrers API finds referrers through the
/// `sha256-<subject hex>` tag schema (OCI distribution 1.1). When the copy
/// carries referrers of a subject but no fallback index for it (a layout
/// written by oras, a registry with the API), write that index, or extend
/// the one at the destination, as oras does. Returns the tags set.
async fn referrer_fallback_tags(
    reg: &Registry,
    repo: &str,
    image: &crate::graph::ImageEntry,
    graph: &Graph,
) -> Result<usize> {
    use crate::graph::ArtifactKind;
    let carried: HashSet<&Digest> = image
        .artifacts
        .iter()
        .filter(|a| a.kind == ArtifactKind::ReferrersIndex)
        .map(|a| &a.subject)
        .collect();
    let mut by_subject: BTreeMap<&Digest, Vec<&crate::graph::Artifact>> = BTreeMap::new();
    for a in image
        .artifacts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Referrer)
    {
        if !carried.contains(&a.subject) {
            by_subject.entry(&a.subject).or_default().push(a);
        }
    }
    let mut set = 0;
    for (subject, referrers) in by_subject {
        if reg.referrers(repo, subject).await?.is_some() {
            continue; // the registry answers the referrers API itself
        }
        let tag = subject.tag_stem();
        let mut entries: Vec<serde_json::Value> = match reg.head_manifest(repo, &tag).await? {
            Some(_) => {
                let existing = reg.get_manifest(repo, &tag).await?;
                serde_json::from_slice::<serde_json::Value>(&existing.bytes)
                    .ok()
                    .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
                    .unwrap_or_default()
            }
            None => vec![],
        };
        let before = entries.len();
        for a in referrers {
            let digest = a.digest.to_string();
            if !entries.iter().any(|e| e["digest"] == digest.as_str()) {
                entries.push(referrer_descriptor(a, graph));
            }
        }
        if entries.len() == before {
            continue;
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::OCI_INDEX,
            "manifests": entries,
        });
        let bytes =
            bytes::Bytes::from(serde_json::to_vec(&index).expect("plain JSON always serialises"));
        reg.put_manifest(repo, &tag, &bytes, crate::oci::OCI_INDEX)
            .await?;
        set += 1;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::{artifact_merge, NotAMerge};
    use crate::digest::Digest;
    use crate::oci::{Manifest, OCI_INDEX, OCI_MANIFEST};
    use serde_json::json;

    fn layer(payload: &str, signature: &str) -> serde_json::Value {
        json!({"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": Digest::of(payload.as_bytes()).to_string(), "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": signature}})
    }

    fn sig(layers: Vec<serde_json::Value>) -> Manifest {
        let doc = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json",
                "digest":Digest::of(b"{}").to_string(),"size":2},
            "layers":layers});
        Manifest::hashed(serde_json::to_vec(&doc).unwrap(), OCI_MANIFEST)
    }

    fn fallback(referrers: &[&str]) -> Manifest {
        let entries: Vec<_> = referrers
            .iter()
            .map(|r| json!({"mediaType":OCI_MANIFEST,"digest":Digest::of(r.as_bytes()).to_string(),"size":r.len()}))
            .collect();
        let doc = json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":entries});
        Manifest::hashed(serde_json::to_vec(&doc).unwrap(), OCI_INDEX)
    }

    #[test]
    fn an_appended_signature_is_a_merge() {
        let a = layer("p1", "s1");
        let b = layer("p2", "s2");
        assert_eq!(
            artifact_merge(&sig(vec![a.clone()]), &sig(vec![a.clone(), b.clone()])),
            Ok(1)
        );
        // Order does not matter; a layer listed twice must stay twice.
        assert_eq!(
            artifact_merge(&sig(vec![a.clone()]), &sig(vec![b.clone(), a.clone()])),
            Ok(1)
        );
        assert!(matches!(
            artifact_merge(&sig(vec![a.clone(), a.clone()]), &sig(vec![a.clone(), b.clone()])),
            Err(NotAMerge::Drops(d)) if d == vec![Digest::of(b"p1")]
        ));
    }

    #[test]
    fn a_dropped_or_replaced_signature_is_not() {
        let a = layer("p1", "s1");
        let b = layer("p2", "s2");
        assert!(matches!(
            artifact_merge(&sig(vec![a.clone(), b.clone()]), &sig(vec![b.clone()])),
            Err(NotAMerge::Drops(d)) if d == vec![Digest::of(b"p1")]
        ));
        // Same payload, another signature in the annotations: the old one is gone.
        let a_resigned = layer("p1", "other");
        assert!(matches!(
            artifact_merge(&sig(vec![a.clone()]), &sig(vec![a_resigned, b])),
            Err(NotAMerge::Drops(d)) if d == vec![Digest::of(b"p1")]
        ));
    }

    #[test]
    fn fallback_indexes_merge_over_their_manifests() {
        assert_eq!(
            artifact_merge(&fallback(&["r1"]), &fallback(&["r1", "r2"])),
            Ok(1)
        );
        assert!(matches!(
            artifact_merge(&fallback(&["r1", "r2"]), &fallback(&["r2", "r3"])),
            Err(NotAMerge::Drops(d)) if d == vec![Digest::of(b"r1")]
        ));
        assert!(matches!(
            artifact_merge(&fallback(&["r1"]), &sig(vec![layer("p1", "s1")])),
            Err(NotAMerge::Unlike(_))
        ));
    }
}
