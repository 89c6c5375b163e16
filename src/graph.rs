//! The descriptor graph: what a source offers (images, their manifests as
//! raw bytes, the blobs they need) and, per image, which manifests and
//! blobs it needs and in which order they are pushed. The walk reads the
//! manifests' own bytes (never claims in a bundle index alone), so it is
//! also the completeness check of every copy: export, import, verify.

use crate::digest::Digest;
pub use crate::image::{Artifact, ArtifactKind, ImageEntry, PlatformEntry};
use crate::oci::{Manifest, ManifestView, ANNOTATION_ORIGINAL_INDEX};
// Names from a source (a bundle's `source`, tags) are input: every message
// shows them escaped and cut.
use crate::progress::printable;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A graph that is not whole or not consistent: an integrity failure of
/// the source (a bundle, a layout directory), naming the object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    #[error("{origin}: {what} {digest} is referenced but not there")]
    Missing {
        origin: String,
        what: String,
        digest: Digest,
    },
    #[error("{origin}: member {member} does not match: {detail}")]
    Mismatch {
        origin: String,
        member: String,
        detail: String,
    },
    #[error("{origin}: {detail}")]
    Inconsistent { origin: String, detail: String },
}

/// Whether a blob is small metadata (a config, a signature payload) or a
/// layer; a bundle stores the first kind before the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlobClass {
    Small,
    Layer,
}

/// One blob a graph needs.
#[derive(Clone, Debug)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub class: BlobClass,
    /// Set for blobs that are not image content (a carried trusted root).
    pub media_type: Option<String>,
    /// The first image (index in [`Graph::images`]) that needs it: a
    /// registry source fetches it from that image's repository.
    pub image: usize,
}

/// A previous bundle or a site inventory that an incremental bundle
/// leaves blobs out against.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseRef {
    /// `bundle` (its bundle digest) or `inventory` (the inventory file's sha256).
    pub kind: String,
    pub digest: Digest,
}

/// Everything a source offers for a copy, resolved before any blob moves.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub images: Vec<ImageEntry>,
    /// Every manifest and index, raw and digest-checked.
    pub manifests: BTreeMap<Digest, Manifest>,
    /// Every blob, once each, in the source's order.
    pub blobs: Vec<BlobInfo>,
    /// A sigstore trusted root carried along (a blob of [`Graph::blobs`]).
    pub trusted_root: Option<Digest>,
    /// Small blobs read for the policy (signature payloads), verified.
    pub payloads: HashMap<Digest, Bytes>,
    /// Artifacts the source has but the copy leaves out, each named with why.
    pub skipped: Vec<String>,
    /// Blobs of [`Graph::blobs`] an incremental bundle relies on without
    /// carrying them, each with the base that carried it (when known): the
    /// destination must have them already.
    pub external: BTreeMap<Digest, Option<Digest>>,
    /// What an incremental bundle was cut against.
    pub bases: Vec<BaseRef>,
    /// Position of each blob in `blobs` (filled by [`Graph::add_blob`]).
    positions: HashMap<Digest, usize>,
}

impl Graph {
    pub fn blob(&self, digest: &Digest) -> Option<&BlobInfo> {
        match self.positions.get(digest) {
            Some(&i) => self.blobs.get(i).filter(|b| &b.digest == digest),
            // Blobs pushed without add_blob (a test's hand-made graph).
            None => self.blobs.iter().find(|b| &b.digest == digest),
        }
    }

    /// Add a blob once; returns false when it was there already.
    pub fn add_blob(&mut self, blob: BlobInfo) -> bool {
        if self.blob(&blob.digest).is_some() {
            return false;
        }
        self.positions.insert(blob.digest.clone(), self.blobs.len());
        self.blobs.push(blob);
        true
    }

    pub fn add_manifest(&mut self, m: Manifest) {
        self.manifests.entry(m.digest.clone()).or_insert(m);
    }

    /// Bytes of every blob.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    /// Walk every image; fails on the first missing or inconsistent
    /// object, naming it (`name` names the source in the error).
    pub fn walk(&self, name: &str) -> Result<Vec<ImageGraph>, GraphError> {
        let mut blob_sizes: HashMap<&Digest, u64> =
            self.blobs.iter().map(|b| (&b.digest, b.size)).collect();
        for m in self.manifests.values() {
            blob_sizes.insert(&m.digest, m.bytes.len() as u64);
        }
        let w = Walker {
            bundle: name,
            manifests: &self.manifests,
            blob_sizes,
        };
        if self.images.is_empty() {
            return Err(GraphError::Inconsistent {
                origin: name.into(),
                detail: "no images".into(),
            });
        }
        self.images.iter().map(|e| w.image(e)).collect()
    }

    /// Blobs and manifests no image needs (reported by `verify`).
    pub fn unreferenced(&self, graphs: &[ImageGraph]) -> Vec<Digest> {
        let used = used_digests(graphs);
        let blobs = self.blobs.iter().map(|b| &b.digest);
        blobs
            .chain(self.manifests.keys())
            .filter(|d| !used.contains(*d) && self.trusted_root.as_ref() != Some(*d))
            .cloned()
            .collect()
    }
}

/// Every digest some image needs.
pub fn used_digests(graphs: &[ImageGraph]) -> HashSet<&Digest> {
    let mut used: HashSet<&Digest> = HashSet::new();
    for g in graphs {
        used.extend(g.blobs.iter());
        used.extend(g.manifests.iter().map(|m| &m.digest));
        used.extend(g.artifacts.iter().map(|m| &m.digest));
        used.insert(&g.entry.source_digest);
    }
    used
}

impl crate::trust::ArtifactStore for Graph {
    fn manifest(&self, digest: &Digest) -> Option<(Vec<u8>, String)> {
        self.manifests
            .get(digest)
            .map(|m| (m.bytes.to_vec(), m.media_type.clone()))
    }
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        self.payloads.get(digest).map(|b| b.to_vec())
    }
}

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

fn missing(bundle: &str, what: String, digest: &Digest) -> GraphError {
    GraphError::Missing {
        origin: bundle.into(),
        what,
        digest: digest.clone(),
    }
}

fn view(
    bundle: &str,
    manifests: &BTreeMap<Digest, Manifest>,
    digest: &Digest,
    what: &str,
) -> Result<ManifestView, GraphError> {
    let m = manifests
        .get(digest)
        .ok_or_else(|| missing(bundle, format!("{what} manifest"), digest))?;
    m.view().map_err(|e| GraphError::Inconsistent {
        origin: bundle.into(),
        detail: format!("{what}: {e}"),
    })
}

/// More platforms than any real image has: a hostile index, refused before
/// anything is pushed (each one costs requests at the destination).
pub const MAX_PLATFORMS: usize = 1024;

/// The distinct blobs an image needs, in the order first met.
#[derive(Default)]
struct Needed {
    blobs: Vec<Digest>,
    seen: HashSet<Digest>,
}

struct Walker<'a> {
    bundle: &'a str,
    manifests: &'a BTreeMap<Digest, Manifest>,
    blob_sizes: HashMap<&'a Digest, u64>,
}

impl Walker<'_> {
    fn need_blob(
        &self,
        need: &mut Needed,
        d: &crate::oci::Descriptor,
        what: &str,
    ) -> Result<(), GraphError> {
        match self.blob_sizes.get(&d.digest) {
            None => Err(missing(self.bundle, what.to_string(), &d.digest)),
            Some(size) if *size != d.size => Err(GraphError::Mismatch {
                origin: self.bundle.into(),
                member: d.digest.layout_path(),
                detail: format!(
                    "{what} is referenced with size {}, bundle holds {size} bytes",
                    d.size
                ),
            }),
            Some(_) => {
                if need.seen.insert(d.digest.clone()) {
                    need.blobs.push(d.digest.clone());
                }
                Ok(())
            }
        }
    }

    fn media_type(&self, d: &Digest) -> Result<String, GraphError> {
        self.manifests
            .get(d)
            .map(|m| m.media_type.clone())
            .ok_or_else(|| missing(self.bundle, "manifest".into(), d))
    }

    /// The platforms the bundle index lists are the root's own children.
    fn check_platform_list(
        &self,
        entry: &ImageEntry,
        root: &ManifestView,
    ) -> Result<(), GraphError> {
        let listed: BTreeSet<&Digest> = entry.platforms.iter().map(|p| &p.digest).collect();
        let walked: BTreeSet<&Digest> = if root.is_index() {
            root.manifests.iter().map(|d| &d.digest).collect()
        } else {
            [&entry.digest].into_iter().collect()
        };
        if listed != walked {
            return Err(GraphError::Inconsistent {
                origin: self.bundle.into(),
                detail: format!(
                    "{}: its platform list does not match the manifests of {}",
                    printable(&entry.source),
                    entry.digest
                ),
            });
        }
        Ok(())
    }

    /// A platform-filtered index must be a true subset of the vendor's.
    fn check_filtered(&self, entry: &ImageEntry, root: &ManifestView) -> Result<(), GraphError> {
        if entry.source_digest == entry.digest {
            return Ok(());
        }
        let name = &printable(&entry.source);
        let original = view(
            self.bundle,
            self.manifests,
            &entry.source_digest,
            &format!("{name} original index"),
        )?;
        let claimed = root.annotations.get(ANNOTATION_ORIGINAL_INDEX);
        let vendor: HashSet<&Digest> = original.manifests.iter().map(|d| &d.digest).collect();
        if claimed != Some(&entry.source_digest.to_string())
            || root.manifests.iter().any(|d| !vendor.contains(&d.digest))
        {
            return Err(GraphError::Inconsistent {
                origin: self.bundle.into(),
                detail: format!(
                    "{name}: filtered index {} is not a subset of the original {}",
                    entry.digest, entry.source_digest
                ),
            });
        }
        Ok(())
    }

    /// Platform manifests (children first, the tagged root last) and their blobs.
    fn platforms(
        &self,
        entry: &ImageEntry,
        root: &ManifestView,
        need: &mut Needed,
    ) -> Result<Vec<ManifestPush>, GraphError> {
        let name = &printable(&entry.source);
        if root.manifests.len() > MAX_PLATFORMS {
            return Err(GraphError::Inconsistent {
                origin: self.bundle.into(),
                detail: format!(
                    "{name}: index {} lists {} manifests, more than the {MAX_PLATFORMS} an image may have",
                    entry.digest,
                    root.manifests.len()
                ),
            });
        }
        let mut manifests = Vec::new();
        let mut seen = HashSet::new();
        for child in &root.manifests {
            let d = &child.digest;
            if !seen.insert(d) {
                continue; // listed twice: pushed and checked once
            }
            let v = view(self.bundle, self.manifests, d, &format!("{name} platform"))?;
            if v.is_index() {
                return Err(GraphError::Inconsistent {
                    origin: self.bundle.into(),
                    detail: format!("{name}: nested index {d} is not supported"),
                });
            }
            for b in v.blobs() {
                self.need_blob(need, b, &format!("blob of {name} platform {d}"))?;
            }
            manifests.push(ManifestPush {
                digest: d.clone(),
                media_type: self.media_type(d)?,
                tag: None,
            });
        }
        if !root.is_index() {
            for b in root.blobs() {
                self.need_blob(need, b, &format!("blob of {name}"))?;
            }
        }
        manifests.push(ManifestPush {
            digest: entry.digest.clone(),
            media_type: entry.media_type.clone(),
            tag: entry.tag.clone(),
        });
        Ok(manifests)
    }

    /// Signature, attestation and referrer manifests; a fallback index
    /// lists referrers, so it is pushed after them.
    fn artifacts(
        &self,
        entry: &ImageEntry,
        need: &mut Needed,
    ) -> Result<Vec<ManifestPush>, GraphError> {
        let name = &printable(&entry.source);
        let mut artifacts = Vec::new();
        let mut fallback = Vec::new();
        // An artifact is about this image: its index, the vendor's index, a
        // platform, or another of its artifacts (a signature of an attestation).
        let mut subjects: HashSet<&Digest> = [&entry.digest, &entry.source_digest].into();
        subjects.extend(entry.platforms.iter().map(|p| &p.digest));
        subjects.extend(entry.artifacts.iter().map(|a| &a.digest));
        let mut seen = HashSet::new();
        for a in &entry.artifacts {
            if !subjects.contains(&a.subject) {
                return Err(GraphError::Inconsistent {
                    origin: self.bundle.into(),
                    detail: format!(
                        "{name}: artifact {} is about {}, which is not part of the image",
                        a.digest, a.subject
                    ),
                });
            }
            if !seen.insert(&a.digest) {
                continue; // listed twice: pushed once
            }
            let what = format!("{name} {:?}", a.kind);
            let v = view(self.bundle, self.manifests, &a.digest, &what)?;
            self.check_artifact_names(name, a, &v)?;
            if a.kind == ArtifactKind::ReferrersIndex {
                if let Some(c) = v
                    .manifests
                    .iter()
                    .find(|c| !self.manifests.contains_key(&c.digest))
                {
                    let what = format!("referrer listed by {name} {}", a.digest);
                    return Err(missing(self.bundle, what, &c.digest));
                }
            } else {
                for b in v.blobs() {
                    self.need_blob(need, b, &format!("blob of {name} artifact {}", a.digest))?;
                }
            }
            let push = ManifestPush {
                digest: a.digest.clone(),
                media_type: self.media_type(&a.digest)?,
                tag: a.tag.clone(),
            };
            if a.kind == ArtifactKind::ReferrersIndex {
                fallback.push(push);
            } else {
                artifacts.push(push);
            }
        }
        artifacts.extend(fallback);
        Ok(artifacts)
    }

    /// An artifact's tag is the one its kind and subject give (a bundle
    /// cannot make an import set any other tag), and a referrer's own
    /// `subject` is the subject it is listed under.
    fn check_artifact_names(
        &self,
        name: &str,
        a: &Artifact,
        v: &ManifestView,
    ) -> Result<(), GraphError> {
        let stem = a.subject.tag_stem();
        let expected = match a.kind {
            ArtifactKind::Signature => Some(format!("{stem}.sig")),
            ArtifactKind::Attestation => Some(format!("{stem}.att")),
            ArtifactKind::Sbom => Some(format!("{stem}.sbom")),
            ArtifactKind::ReferrersIndex => Some(stem),
            ArtifactKind::Referrer => None,
        };
        let subject_ok = a.kind != ArtifactKind::Referrer
            || v.subject.as_ref().is_some_and(|s| s.digest == a.subject);
        if a.tag != expected || !subject_ok {
            return Err(GraphError::Inconsistent {
                origin: self.bundle.into(),
                detail: format!(
                    "{name}: artifact {} ({:?}, tag {:?}) does not match its subject {}",
                    a.digest,
                    a.kind,
                    a.tag.as_deref().map(printable),
                    a.subject
                ),
            });
        }
        Ok(())
    }

    fn image(&self, entry: &ImageEntry) -> Result<ImageGraph, GraphError> {
        // The tag becomes part of a registry URL and a layout ref name.
        if let Some(t) = entry
            .tag
            .as_deref()
            .filter(|t| !crate::reference::is_valid_tag(t))
        {
            return Err(GraphError::Inconsistent {
                origin: self.bundle.into(),
                detail: format!(
                    "{}: {:?} is not a valid tag",
                    printable(&entry.source),
                    printable(t)
                ),
            });
        }
        // So do the repository and a selection target: names from a source
        // are input, checked against the distribution grammar.
        for (what, name) in [
            ("repository", Some(&entry.repository)),
            ("target", entry.target.as_ref()),
        ] {
            if let Some(n) = name.filter(|n| !crate::reference::is_valid_repository(n)) {
                return Err(GraphError::Inconsistent {
                    origin: self.bundle.into(),
                    detail: format!(
                        "{}: {what} {:?} is not a valid repository name",
                        printable(&entry.source),
                        printable(n)
                    ),
                });
            }
        }
        let root = view(
            self.bundle,
            self.manifests,
            &entry.digest,
            &printable(&entry.source),
        )?;
        self.check_platform_list(entry, &root)?;
        self.check_filtered(entry, &root)?;
        let mut need = Needed::default();
        let manifests = self.platforms(entry, &root, &mut need)?;
        let artifacts = self.artifacts(entry, &mut need)?;
        Ok(ImageGraph {
            entry: entry.clone(),
            blobs: need.blobs,
            manifests,
            artifacts,
        })
    }
}
