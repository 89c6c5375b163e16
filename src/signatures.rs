//! Finding the supply-chain artifacts attached to a manifest: cosign's
//! `sha256-<hex>.sig/.att/.sbom` tags and OCI 1.1 referrers (through the
//! referrers API, or the `sha256-<hex>` tag-schema fallback index).
//! Verification of what is found is the trust module's job (issue 3).

use crate::bundle::{Artifact, ArtifactKind};
use crate::digest::Digest;
use crate::oci::ManifestView;
use crate::registry::{RawManifest, RegistryError};
use crate::store::Resolver;
use std::collections::HashSet;

/// How deep to follow artifacts of artifacts (signatures of attestations).
pub const MAX_DEPTH: usize = 2;

pub const COSIGN_SUFFIXES: [(&str, ArtifactKind); 3] = [
    ("sig", ArtifactKind::Signature),
    ("att", ArtifactKind::Attestation),
    ("sbom", ArtifactKind::Sbom),
];

pub fn cosign_tag(subject: &Digest, suffix: &str) -> String {
    format!("{}.{suffix}", subject.tag_stem())
}

/// Collects the artifacts of one repository's subjects.
pub struct Discovery<'a> {
    pub registry: &'a dyn Resolver,
    pub repo: &'a str,
    pub tags: &'a HashSet<String>,
    pub found: Vec<(Artifact, RawManifest)>,
    seen: HashSet<Digest>,
}

impl<'a> Discovery<'a> {
    pub fn new(registry: &'a dyn Resolver, repo: &'a str, tags: &'a HashSet<String>) -> Self {
        Discovery {
            registry,
            repo,
            tags,
            found: Vec::new(),
            seen: HashSet::new(),
        }
    }

    fn record(
        &mut self,
        kind: ArtifactKind,
        subject: &Digest,
        tag: Option<String>,
        m: RawManifest,
    ) -> Option<Digest> {
        if !self.seen.insert(m.digest.clone()) {
            return None;
        }
        let view = ManifestView::parse(&m.bytes, Some(&m.media_type)).ok();
        let artifact_type = view.as_ref().and_then(|v| v.effective_artifact_type());
        let predicate_types = view
            .iter()
            .flat_map(|v| v.layers.iter())
            .filter_map(|l| l.annotations.get("predicateType").cloned())
            .collect();
        let digest = m.digest.clone();
        self.found.push((
            Artifact {
                kind,
                subject: subject.clone(),
                digest: m.digest.clone(),
                media_type: m.media_type.clone(),
                size: m.bytes.len() as u64,
                tag,
                artifact_type,
                predicate_types,
            },
            m,
        ));
        Some(digest)
    }

    /// Everything attached to `subject`, recursively up to `depth` levels.
    pub async fn discover(&mut self, subject: &Digest, depth: usize) -> Result<(), RegistryError> {
        let mut next = Vec::new();
        for (suffix, kind) in COSIGN_SUFFIXES {
            let tag = cosign_tag(subject, suffix);
            if self.tags.contains(&tag) {
                let m = self.registry.get_manifest(self.repo, &tag).await?;
                next.extend(self.record(kind, subject, Some(tag), m));
            }
        }
        let referrers = match self.registry.referrers(self.repo, subject).await? {
            Some(list) => list,
            None => {
                let stem = subject.tag_stem();
                if self.tags.contains(&stem) {
                    let idx = self.registry.get_manifest(self.repo, &stem).await?;
                    let view = ManifestView::parse(&idx.bytes, Some(&idx.media_type)).map_err(
                        |source| RegistryError::Manifest {
                            what: format!("referrers fallback tag {stem} in {}", self.repo),
                            source,
                        },
                    )?;
                    self.record(ArtifactKind::ReferrersIndex, subject, Some(stem), idx);
                    view.manifests
                } else {
                    Vec::new()
                }
            }
        };
        for d in referrers {
            let m = self
                .registry
                .get_manifest(self.repo, &d.digest.to_string())
                .await?;
            next.extend(self.record(ArtifactKind::Referrer, subject, None, m));
        }
        if depth > 0 {
            for d in next {
                Box::pin(self.discover(&d, depth - 1)).await?;
            }
        }
        Ok(())
    }
}
