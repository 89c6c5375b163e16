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
use crate::version::Version;
use futures_util::{StreamExt, TryStreamExt};
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

/// Tags that name artifacts, not images: cosign's `sha256-<hex>.sig`,
/// `.att`, `.sbom` and the referrers fallback `sha256-<hex>`.
pub fn is_artifact_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let (hex, suffix) = rest.split_at(rest.len().min(64));
    hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && (suffix.is_empty() || suffix.starts_with('.'))
}

/// What a selection's rules pick from a repository's tags: the tag pattern,
/// `include` globs (or, with `versions`/`newest` and no globs, versions
/// only), the version range, `exclude` globs, then the newest N versions;
/// in version order. Artifact tags are never candidates.
pub fn rule_tags(sel: &ImageSelection, all_tags: &[String]) -> Vec<String> {
    let rule = &sel.rule;
    let mut picked: Vec<String> = all_tags
        .iter()
        .filter(|t| !is_artifact_tag(t))
        .filter(|t| sel.tag_pattern.as_ref().is_none_or(|p| p.is_match(t)))
        .filter(|t| {
            if !rule.include.is_empty() {
                rule.include.iter().any(|g| g.is_match(t))
            } else if rule.versions.is_some() || rule.newest.is_some() {
                Version::parse(t).is_some()
            } else {
                true
            }
        })
        .filter(|t| match &rule.versions {
            Some(range) => Version::parse(t).is_some_and(|v| range.contains(&v)),
            None => true,
        })
        .filter(|t| !rule.exclude.iter().any(|g| g.is_match(t)))
        .cloned()
        .collect();
    crate::version::sort_tags(&mut picked);
    if let Some(n) = rule.newest {
        // Versions are sorted before non-versions: the newest N are the
        // last N versions; tags that are not versions stay (a glob picked them).
        let versions = picked
            .iter()
            .filter(|t| Version::parse(t).is_some())
            .count();
        let drop = versions.saturating_sub(n);
        picked.drain(..drop);
    }
    picked
}

/// The tags a selection names: exact tags first, then what the rules pick
/// (in version order), each once. A rule that picks nothing is an error
/// naming the rule and some of the tags there are, or a warning (in
/// `warnings`) when the image is optional.
fn selected_tags(
    sel: &ImageSelection,
    all_tags: &[String],
    warnings: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut tags = sel.tags.clone();
    if sel.tag_pattern.is_some() || !sel.rule.is_empty() {
        let matched = rule_tags(sel, all_tags);
        if matched.is_empty() {
            let mut what = Vec::new();
            if let Some(p) = &sel.tag_pattern {
                what.push(format!("the pattern {}", p.as_str()));
            }
            if !sel.rule.is_empty() {
                what.push(sel.rule.describe());
            }
            let mut there: Vec<String> = all_tags
                .iter()
                .filter(|t| !is_artifact_tag(t))
                .cloned()
                .collect();
            crate::version::sort_tags(&mut there);
            let shown = there.len().min(8);
            let msg = format!(
                "{}: no tag matches {} (the repository has {} image tags, newest: {})",
                sel.repo,
                what.join(" and "),
                there.len(),
                there[there.len() - shown..].join(", ")
            );
            if sel.optional {
                warnings.push(format!("{msg}; optional, left out"));
            } else {
                return Err(Error::Selection(msg));
            }
        }
        tags.extend(matched);
    }
    crate::selection::dedup_tags(&mut tags);
    Ok(tags)
}

/// Every image a selection names at `store`, and warnings (optional tags
/// left out).
pub async fn resolve_selection(
    store: &dyn Resolver,
    sel: &ImageSelection,
) -> Result<(Vec<Resolved>, Vec<String>)> {
    let repo = sel.repo.repository.as_str();
    let all_tags: Vec<String> = store.list_tags(repo).await?;
    let tag_set: HashSet<String> = all_tags.iter().cloned().collect();
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    for tag in selected_tags(sel, &all_tags, &mut warnings)? {
        let root = match store.get_manifest(repo, &tag).await {
            Ok(root) => root,
            Err(RegistryError::NotFound { .. }) if sel.optional => {
                warnings.push(format!(
                    "{} not found; optional, left out",
                    sel.repo.with_tag(&tag)
                ));
                continue;
            }
            Err(RegistryError::NotFound { .. }) => {
                return Err(Error::Selection(format!(
                    "image {} not found: check the repository and tag (or mark the image optional: true)",
                    sel.repo.with_tag(&tag)
                )))
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(locked) = sel.pinned.get(&tag) {
            if *locked != root.digest {
                return Err(Error::TagMoved {
                    image: sel.repo.with_tag(&tag).to_string(),
                    locked: locked.clone(),
                    now: root.digest.clone(),
                });
            }
        }
        out.push(resolve_root(store, sel, Some(tag), root, &tag_set).await?);
    }
    for d in &sel.digests {
        let root = store.get_manifest(repo, &d.to_string()).await?;
        out.push(resolve_root(store, sel, None, root, &tag_set).await?);
    }
    Ok((out, warnings))
}

/// A single-arch image under a platform filter: its config says which
/// platform it is; one the filter does not select is refused, not carried
/// as if it were what was asked for.
async fn check_single_arch(
    store: &dyn Resolver,
    sel: &ImageSelection,
    view: &ManifestView,
    shown: &str,
) -> Result<()> {
    let Some(config) = &view.config else {
        return Ok(());
    };
    if config.size > oci::MAX_MANIFEST_BYTES {
        return Err(Error::Selection(format!(
            "{shown}: config {} is too large to read its platform",
            config.digest
        )));
    }
    let tmp = tempfile::tempfile().map_err(Error::io("a temp file for an image config"))?;
    let mut f = tokio::fs::File::from_std(tmp);
    store
        .fetch_blob(&sel.repo.repository, config, &mut f)
        .await?;
    let mut bytes = Vec::new();
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    f.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(Error::io("image config"))?;
    f.read_to_end(&mut bytes)
        .await
        .map_err(Error::io("image config"))?;
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    let c: Config = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Selection(format!(
            "{shown}: config {} is not an image config ({e}); cannot tell its platform",
            config.digest
        ))
    })?;
    let have = oci::Platform {
        os: c.os,
        architecture: c.architecture,
        variant: c.variant,
    };
    if sel.platforms.iter().any(|f| f.selects(&have)) {
        return Ok(());
    }
    let want: Vec<String> = sel.platforms.iter().map(|p| p.to_string()).collect();
    Err(Error::Selection(format!(
        "{shown} is a single-platform image ({have}), not {}: refused; drop the platform filter for it or select another tag",
        want.join(", ")
    )))
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
        if !sel.platforms.is_empty() {
            check_single_arch(store, sel, &view, shown).await?;
        }
        image_blobs(&view, &mut w.blobs);
        w.platforms.push(platform_entry(None, root));
        w.manifests.push(root.clone());
        return Ok(w);
    }
    let selected = select_platforms(sel, &view, shown)?;
    if sel.single_platform && selected.len() != 1 {
        let kept: Vec<String> = selected
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
            .collect();
        return Err(Error::Selection(format!(
            "{shown}: singlePlatform exports one platform's manifest, but the platform filter keeps {} ({}); list exactly one platform",
            selected.len(),
            kept.join(", ")
        )));
    }
    if !sel.single_platform {
        w.manifests = filtered_root(root, &selected, view.manifests.len(), what(&root.digest))?;
    }
    // Every platform manifest asked for at once; checked in order.
    let references: Vec<String> = selected.iter().map(|c| c.digest.to_string()).collect();
    let asks: Vec<_> = references
        .iter()
        .map(|r| store.get_manifest(repo, r))
        .collect();
    // In order, stopping at the first failure (no further requests).
    let fetched: Vec<_> = futures_util::stream::iter(asks)
        .buffered(8)
        .try_collect()
        .await?;
    for (child, m) in selected.iter().zip(fetched) {
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
    // singlePlatform: the tag names the one platform manifest, the vendor's
    // index stays behind (its signature cannot verify against the manifest).
    let platform_of =
        (tagged.digest != root.digest && sel.single_platform).then(|| root.digest.clone());
    let mut source_digest = match platform_of {
        Some(_) => tagged.digest.clone(),
        None => root.digest.clone(),
    };
    if tagged.digest == root.digest {
        if let Some(original) = original_of(store, repo, &root).await? {
            source_digest = original.digest.clone();
            manifests.push(original);
        }
    }

    let mut discovery = Discovery::new(store, repo, tags);
    // The subjects whose artifacts are carried, in the order they are
    // walked: asked about all at once first, then walked.
    let mut subjects = Vec::new();
    if source_digest != root.digest {
        subjects.push(source_digest.clone());
    }
    if platform_of.is_none() {
        subjects.push(root.digest.clone());
    }
    for p in &platforms {
        if p.digest != root.digest && p.digest != source_digest && !subjects.contains(&p.digest) {
            subjects.push(p.digest.clone());
        }
    }
    discovery.prefetch(&subjects).await;
    for s in &subjects {
        discovery.discover(s, MAX_DEPTH).await?;
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
        tag_template: sel.tag_template.clone(),
        platform_of,
        resolved_digest: Some(root.digest.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with both version schemes, variants, moving tags and
    /// cosign artifacts, as a vendor's looks.
    fn vendor_tags() -> Vec<String> {
        let hex = "ab".repeat(32);
        [
            "1.299.9.20240901-101010",
            "1.301.70.20241127-162512",
            "1.301.70.20241127-162512-raw",
            "1.303.5.20250105-080000",
            "1.303.5.20250105-080000-raw",
            "1.99.1.20230101-000000",
            "v1.9.0",
            "v1.10.0",
            "v1.10.1",
            "v1.10.1-rc.1",
            "latest",
            "latest-raw",
            &format!("sha256-{hex}.sig"),
            &format!("sha256-{hex}.att"),
            &format!("sha256-{hex}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn picked(yaml_rules: &str) -> Vec<String> {
        let text = format!("images:\n  - ref: r.example/v/app\n{yaml_rules}");
        let sel = crate::selection::parse_selection(&text, "t.yaml").unwrap();
        rule_tags(&sel[0], &vendor_tags())
    }

    #[test]
    fn rules_pick_in_version_order_and_never_artifacts() {
        assert_eq!(
            picked("    versions: \">=1.300 <2\"\n    exclude: [\"*-raw\"]\n"),
            vec!["1.301.70.20241127-162512", "1.303.5.20250105-080000"]
        );
        assert_eq!(
            picked(
                "    include: [\"1.*\"]\n    exclude: [\"*-raw\", \"latest*\"]\n    newest: 2\n"
            ),
            vec!["1.301.70.20241127-162512", "1.303.5.20250105-080000"]
        );
        assert_eq!(
            picked("    versions: \">=v1.9 <v1.11\"\n"),
            vec!["v1.9.0", "v1.10.0", "v1.10.1"],
            "v1.10 after v1.9, the release candidate left out"
        );
        assert_eq!(
            picked("    newest: 1\n"),
            vec!["1.303.5.20250105-080000-raw"]
        );
        assert_eq!(
            picked("    include: [\"latest*\"]\n"),
            vec!["latest", "latest-raw"]
        );
        // A regex matching everything still never takes artifact tags.
        let all = picked("    tagPattern: \".*\"\n");
        assert_eq!(all.len(), 12);
        assert!(all.iter().all(|t| !is_artifact_tag(t)));
        assert_eq!(all.last().map(String::as_str), Some("latest-raw"));
        assert_eq!(all[0], "v1.9.0");
        assert!(is_artifact_tag(&format!("sha256-{}", "0".repeat(64))));
        assert!(!is_artifact_tag("sha256-short.sig"));
    }
}
