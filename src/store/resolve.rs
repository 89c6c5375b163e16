//! Resolving a selection against a store that holds manifests by name (a
//! registry or an OCI layout directory): tags and tag patterns, the root
//! manifest, the platform filter, the platform manifests, and the
//! signatures, attestations and referrers of each. Written once over
//! [`Resolver`]; the result is a [`Graph`] whose manifests are the raw
//! bytes fetched (the filtered index is the one document we make, hashed as
//! written).

use super::Resolver;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::graph::{Artifact, BlobClass, BlobInfo, Graph, ImageEntry, PlatformEntry};
use crate::layout;
use crate::oci::{self, Descriptor, Manifest, ManifestView};
use crate::registry::RegistryError;
use crate::selection::ImageSelection;
use crate::store::discover::{Discovery, MAX_DEPTH};
use std::collections::HashSet;

/// One image resolved at its source, with everything it needs.
pub struct Resolved {
    pub entry: ImageEntry,
    pub manifests: Vec<Manifest>,
    pub blobs: Vec<(Descriptor, BlobClass)>,
    /// Artifacts that could not be read and were left out (named).
    pub skipped: Vec<String>,
}

fn parse(m: &Manifest, what: String) -> Result<ManifestView> {
    m.view()
        .map_err(|source| Error::Registry(RegistryError::Manifest { what, source }))
}

/// The tags a selection names: exact tags first, then pattern matches
/// (sorted), each once, cosign and referrer tags never.
fn selected_tags(sel: &ImageSelection, all_tags: &[String]) -> Result<Vec<String>> {
    let mut tags = sel.tags.clone();
    if let Some(p) = &sel.tag_pattern {
        let mut matched: Vec<String> = all_tags
            .iter()
            .filter(|t| p.is_match(t) && !t.starts_with("sha256-"))
            .cloned()
            .collect();
        matched.sort();
        if matched.is_empty() {
            return Err(Error::Selection(format!(
                "{}: no tag matches the pattern {}",
                sel.repo,
                p.as_str()
            )));
        }
        tags.extend(matched);
    }
    crate::selection::dedup_tags(&mut tags);
    Ok(tags)
}

/// Every image a selection names at `store`.
pub async fn resolve_selection(
    store: &dyn Resolver,
    sel: &ImageSelection,
) -> Result<Vec<Resolved>> {
    let repo = sel.repo.repository.as_str();
    let all_tags: Vec<String> = store.list_tags(repo).await?;
    let tag_set: HashSet<String> = all_tags.iter().cloned().collect();
    let mut out = Vec::new();
    for tag in selected_tags(sel, &all_tags)? {
        let root = store.get_manifest(repo, &tag).await.map_err(|e| match e {
            RegistryError::NotFound { .. } => Error::Selection(format!(
                "image {} not found: check the repository and tag",
                sel.repo.with_tag(&tag)
            )),
            e => e.into(),
        })?;
        out.push(resolve_root(store, sel, Some(tag), root, &tag_set).await?);
    }
    for d in &sel.digests {
        let root = store.get_manifest(repo, &d.to_string()).await?;
        out.push(resolve_root(store, sel, None, root, &tag_set).await?);
    }
    Ok(out)
}

/// The children of an index the platform filter keeps.
fn select_platforms<'v>(
    sel: &ImageSelection,
    view: &'v ManifestView,
    shown: &str,
) -> Result<Vec<&'v Descriptor>> {
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
        return Err(Error::Selection(format!(
            "{shown}: no platform matches the filter (the image has {})",
            have.join(", ")
        )));
    }
    Ok(selected)
}

/// The index to tag: the vendor's, or (filtered) a new one listing only the
/// kept children byte for byte; the vendor's rides along so that its
/// signature still verifies.
fn filtered_root(
    root: &Manifest,
    selected: &[&Descriptor],
    all: usize,
    what: String,
) -> Result<Vec<Manifest>> {
    if selected.len() == all {
        return Ok(vec![root.clone()]);
    }
    let keep: HashSet<&Digest> = selected.iter().map(|d| &d.digest).collect();
    let b = oci::filter_index(&root.bytes, &root.media_type, &root.digest, |d| {
        keep.contains(&d.digest)
    })
    .map_err(|source| RegistryError::Manifest { what, source })?;
    Ok(vec![Manifest::hashed(b, &root.media_type), root.clone()])
}

fn image_blobs(view: &ManifestView, blobs: &mut Vec<(Descriptor, BlobClass)>) {
    blobs.extend(view.config.iter().cloned().map(|d| (d, BlobClass::Small)));
    blobs.extend(view.layers.iter().cloned().map(|d| (d, BlobClass::Layer)));
}

fn platform_entry(platform: Option<String>, m: &Manifest) -> PlatformEntry {
    PlatformEntry {
        platform,
        digest: m.digest.clone(),
        media_type: m.media_type.clone(),
        size: m.bytes.len() as u64,
    }
}

/// The manifests, platforms and blobs under a root.
struct Walked {
    manifests: Vec<Manifest>,
    platforms: Vec<PlatformEntry>,
    blobs: Vec<(Descriptor, BlobClass)>,
}

async fn walk_root(
    store: &dyn Resolver,
    sel: &ImageSelection,
    root: &Manifest,
    shown: &str,
) -> Result<Walked> {
    let repo = sel.repo.repository.as_str();
    let what = |d: &Digest| format!("manifest {}@{d}", sel.repo);
    let view = parse(root, what(&root.digest))?;
    let mut w = Walked {
        manifests: vec![],
        platforms: vec![],
        blobs: vec![],
    };
    if !view.is_index() {
        image_blobs(&view, &mut w.blobs);
        w.platforms.push(platform_entry(None, root));
        w.manifests.push(root.clone());
        return Ok(w);
    }
    let selected = select_platforms(sel, &view, shown)?;
    w.manifests = filtered_root(root, &selected, view.manifests.len(), what(&root.digest))?;
    for child in selected {
        let m = store.get_manifest(repo, &child.digest.to_string()).await?;
        if m.digest != child.digest {
            return Err(Error::Registry(RegistryError::DigestMismatch {
                what: what(&child.digest),
                expected: child.digest.clone(),
                actual: m.digest.clone(),
            }));
        }
        let cv = parse(&m, what(&m.digest))?;
        if cv.is_index() {
            return Err(Error::Selection(format!(
                "{shown}: nested index {} is not supported",
                m.digest
            )));
        }
        image_blobs(&cv, &mut w.blobs);
        w.platforms.push(platform_entry(
            child.platform.as_ref().map(|p| p.to_string()),
            &m,
        ));
        w.manifests.push(m);
    }
    Ok(w)
}

async fn resolve_root(
    store: &dyn Resolver,
    sel: &ImageSelection,
    tag: Option<String>,
    root: Manifest,
    tags: &HashSet<String>,
) -> Result<Resolved> {
    let repo = sel.repo.repository.as_str();
    let shown = match &tag {
        Some(t) => sel.repo.with_tag(t).to_string(),
        None => sel.repo.with_digest(root.digest.clone()).to_string(),
    };
    let Walked {
        mut manifests,
        platforms,
        mut blobs,
    } = walk_root(store, sel, &root, &shown).await?;
    let tagged = manifests[0].clone();
    let mut source_digest = root.digest.clone();
    if tagged.digest == root.digest {
        if let Some(original) = original_of(store, repo, &root).await? {
            source_digest = original.digest.clone();
            manifests.push(original);
        }
    }

    let mut discovery = Discovery::new(store, repo, tags);
    if source_digest != root.digest {
        discovery.discover(&source_digest, MAX_DEPTH).await?;
    }
    discovery.discover(&root.digest, MAX_DEPTH).await?;
    for p in &platforms {
        if p.digest != root.digest {
            discovery.discover(&p.digest, MAX_DEPTH).await?;
        }
    }
    let skipped = std::mem::take(&mut discovery.skipped);
    let mut artifacts: Vec<Artifact> = Vec::new();
    for (a, m) in discovery.found {
        if let Ok(v) = m.view() {
            blobs.extend(v.blobs().cloned().map(|d| (d, BlobClass::Small)));
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
        ref_name: tag
            .as_ref()
            .map(|t| layout::ref_name(&sel.repo.repository, t)),
        tag,
        digest: tagged.digest.clone(),
        media_type: tagged.media_type.clone(),
        size: tagged.bytes.len() as u64,
        source_digest,
        platforms,
        target: sel.target.clone(),
        artifacts,
        total_size,
    };
    Ok(Resolved {
        entry,
        manifests,
        blobs,
        skipped,
    })
}

/// An index airlock filtered earlier (an import, a layout it wrote) names
/// the vendor's index it came from. When the store has that index, the image
/// is carried as it was exported: the vendor's index and its signatures ride
/// along, so they still verify.
async fn original_of(
    store: &dyn Resolver,
    repo: &str,
    root: &Manifest,
) -> Result<Option<Manifest>> {
    let Ok(view) = root.view() else {
        return Ok(None);
    };
    let Some(original) = view
        .annotations
        .get(oci::ANNOTATION_ORIGINAL_INDEX)
        .and_then(|s| s.parse::<Digest>().ok())
    else {
        return Ok(None);
    };
    match store.get_manifest(repo, &original.to_string()).await {
        Ok(m) => Ok(Some(m)),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(RegistryError::Layout(crate::layout::LayoutError::Missing { .. })) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One graph of every resolved image; `source` is the index of the store
/// that resolved each (in [`BlobInfo::image`] terms, its first image).
pub fn into_graph(resolved: Vec<Resolved>) -> Graph {
    let mut g = Graph::default();
    for r in resolved {
        let image = g.images.len();
        g.images.push(r.entry);
        g.skipped.extend(r.skipped);
        for m in r.manifests {
            g.add_manifest(m);
        }
        for (d, class) in r.blobs {
            if !g.manifests.contains_key(&d.digest) {
                g.add_blob(BlobInfo {
                    digest: d.digest,
                    size: d.size,
                    class,
                    media_type: None,
                    image,
                });
            }
        }
    }
    g
}

/// Same ref name twice with different content would make index.json ambiguous.
pub fn check_ref_names(graph: &Graph) -> Result<()> {
    let mut names: std::collections::HashMap<&str, &Digest> = Default::default();
    for img in &graph.images {
        if let Some(n) = &img.ref_name {
            if let Some(prev) = names.insert(n, &img.digest) {
                if prev != &img.digest {
                    return Err(Error::Selection(format!(
                        "{n} is selected twice with different content ({prev} and {}); select it once",
                        img.digest
                    )));
                }
            }
        }
    }
    Ok(())
}
