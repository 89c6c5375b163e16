//! The descriptor graph of a bundle: for every image, which manifests and
//! blobs it needs and in which order they are pushed. Built from the
//! manifests' own bytes (never from claims in the bundle index alone), so
//! it doubles as the completeness check of `verify` and `import`.

use crate::bundle::{ArtifactKind, BundleError, BundleIndex, ImageEntry, MemberKind};
use crate::digest::Digest;
use crate::oci::{ManifestView, ANNOTATION_ORIGINAL_INDEX};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Manifest bytes by digest, each already checked against its digest.
pub type Manifests = HashMap<Digest, (Bytes, String)>;

#[derive(Clone, Debug)]
pub struct ManifestPush {
    pub digest: Digest,
    pub media_type: String,
    /// Tag to point at it once it is pushed.
    pub tag: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ImageGraph {
    pub entry: ImageEntry,
    /// Distinct blobs (configs, layers, artifact blobs) the image needs.
    pub blobs: Vec<Digest>,
    /// Manifests, children before parents; the image tag comes last.
    pub manifests: Vec<ManifestPush>,
    /// Signature / attestation / referrer manifests, pushed after the image.
    pub artifacts: Vec<ManifestPush>,
}

fn missing(bundle: &str, what: String, digest: &Digest) -> BundleError {
    BundleError::Missing {
        bundle: bundle.into(),
        what,
        digest: digest.clone(),
    }
}

fn view(
    bundle: &str,
    manifests: &Manifests,
    digest: &Digest,
    what: &str,
) -> Result<ManifestView, BundleError> {
    let (bytes, mt) = manifests
        .get(digest)
        .ok_or_else(|| missing(bundle, format!("{what} manifest"), digest))?;
    ManifestView::parse(bytes, Some(mt)).map_err(|e| BundleError::Corrupt {
        bundle: bundle.into(),
        detail: format!("{what}: {e}"),
    })
}

struct Walker<'a> {
    bundle: &'a str,
    index: &'a BundleIndex,
    manifests: &'a Manifests,
    blob_sizes: HashMap<&'a Digest, u64>,
}

impl Walker<'_> {
    fn need_blob(
        &self,
        out: &mut Vec<Digest>,
        seen: &mut HashSet<Digest>,
        d: &crate::oci::Descriptor,
        what: &str,
    ) -> Result<(), BundleError> {
        match self.blob_sizes.get(&d.digest) {
            None => Err(missing(self.bundle, what.to_string(), &d.digest)),
            Some(size) if *size != d.size => Err(BundleError::MemberMismatch {
                bundle: self.bundle.into(),
                member: d.digest.layout_path(),
                detail: format!(
                    "{what} is referenced with size {}, bundle holds {size} bytes",
                    d.size
                ),
            }),
            Some(_) => {
                if seen.insert(d.digest.clone()) {
                    out.push(d.digest.clone());
                }
                Ok(())
            }
        }
    }

    fn image(&self, entry: &ImageEntry) -> Result<ImageGraph, BundleError> {
        let name = &entry.source;
        let root = view(self.bundle, self.manifests, &entry.digest, name)?;
        let mut blobs = Vec::new();
        let mut seen = HashSet::new();
        let mut manifests = Vec::new();
        let children: Vec<(Digest, String)> = if root.is_index() {
            root.manifests
                .iter()
                .map(|d| (d.digest.clone(), d.media_type.clone()))
                .collect()
        } else {
            vec![]
        };
        let listed: BTreeSet<&Digest> = entry.platforms.iter().map(|p| &p.digest).collect();
        let walked: BTreeSet<&Digest> = if root.is_index() {
            children.iter().map(|(d, _)| d).collect()
        } else {
            [&entry.digest].into_iter().collect()
        };
        if listed != walked {
            return Err(BundleError::BadIndex {
                bundle: self.bundle.into(),
                detail: format!(
                    "{name}: its platform list does not match the manifests of {}",
                    entry.digest
                ),
            });
        }
        if entry.source_digest != entry.digest {
            // A platform-filtered index must be a true subset of the vendor's.
            let original = view(
                self.bundle,
                self.manifests,
                &entry.source_digest,
                &format!("{name} original index"),
            )?;
            let claimed = root.annotations.get(ANNOTATION_ORIGINAL_INDEX);
            let vendor: HashSet<&Digest> = original.manifests.iter().map(|d| &d.digest).collect();
            if claimed != Some(&entry.source_digest.to_string())
                || children.iter().any(|(d, _)| !vendor.contains(d))
            {
                return Err(BundleError::BadIndex {
                    bundle: self.bundle.into(),
                    detail: format!(
                        "{name}: filtered index {} is not a subset of the original {}",
                        entry.digest, entry.source_digest
                    ),
                });
            }
        }
        for (d, _) in &children {
            let v = view(self.bundle, self.manifests, d, &format!("{name} platform"))?;
            if v.is_index() {
                return Err(BundleError::Corrupt {
                    bundle: self.bundle.into(),
                    detail: format!("{name}: nested index {d} is not supported"),
                });
            }
            for b in v.blobs() {
                self.need_blob(
                    &mut blobs,
                    &mut seen,
                    b,
                    &format!("blob of {name} platform {d}"),
                )?;
            }
            let mt = &self.manifests[d].1;
            manifests.push(ManifestPush {
                digest: d.clone(),
                media_type: mt.clone(),
                tag: None,
            });
        }
        if !root.is_index() {
            for b in root.blobs() {
                self.need_blob(&mut blobs, &mut seen, b, &format!("blob of {name}"))?;
            }
        }
        manifests.push(ManifestPush {
            digest: entry.digest.clone(),
            media_type: entry.media_type.clone(),
            tag: entry.tag.clone(),
        });

        let mut artifacts = Vec::new();
        let mut fallback = Vec::new();
        for a in &entry.artifacts {
            let v = view(
                self.bundle,
                self.manifests,
                &a.digest,
                &format!("{name} {:?}", a.kind),
            )?;
            if a.kind == ArtifactKind::ReferrersIndex {
                for c in &v.manifests {
                    if !self.manifests.contains_key(&c.digest) {
                        return Err(missing(
                            self.bundle,
                            format!("referrer listed by {name} {}", a.digest),
                            &c.digest,
                        ));
                    }
                }
            } else {
                for b in v.blobs() {
                    self.need_blob(
                        &mut blobs,
                        &mut seen,
                        b,
                        &format!("blob of {name} artifact {}", a.digest),
                    )?;
                }
            }
            let push = ManifestPush {
                digest: a.digest.clone(),
                media_type: self.manifests[&a.digest].1.clone(),
                tag: a.tag.clone(),
            };
            if a.kind == ArtifactKind::ReferrersIndex {
                fallback.push(push);
            } else {
                artifacts.push(push);
            }
        }
        // The fallback index lists referrers: they go first.
        artifacts.extend(fallback);
        Ok(ImageGraph {
            entry: entry.clone(),
            blobs,
            manifests,
            artifacts,
        })
    }
}

/// Walk every image of the bundle; fails on the first missing or
/// inconsistent object, naming it.
pub fn build(
    bundle: &str,
    index: &BundleIndex,
    manifests: &Manifests,
) -> Result<Vec<ImageGraph>, BundleError> {
    let blob_sizes = index
        .members
        .iter()
        .filter(|m| m.kind != MemberKind::Layout)
        .map(|m| (&m.digest, m.size))
        .collect();
    let w = Walker {
        bundle,
        index,
        manifests,
        blob_sizes,
    };
    if w.index.images.is_empty() {
        return Err(BundleError::BadIndex {
            bundle: bundle.into(),
            detail: "no images".into(),
        });
    }
    w.index.images.iter().map(|e| w.image(e)).collect()
}

/// Members no image needs (reported by `verify`; harmless but unexpected).
pub fn unreferenced(index: &BundleIndex, graphs: &[ImageGraph]) -> Vec<String> {
    let mut used: HashSet<&Digest> = HashSet::new();
    for g in graphs {
        used.extend(g.blobs.iter());
        used.extend(g.manifests.iter().map(|m| &m.digest));
        used.extend(g.artifacts.iter().map(|m| &m.digest));
        used.insert(&g.entry.source_digest);
    }
    used.extend(index.trusted_root.iter());
    index
        .members
        .iter()
        .filter(|m| m.kind != MemberKind::Layout && !used.contains(&m.digest))
        .map(|m| m.path.clone())
        .collect()
}
