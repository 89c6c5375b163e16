//! Finding the supply-chain artifacts attached to a manifest: cosign's
//! `sha256-<hex>.sig/.att/.sbom` tags and OCI 1.1 referrers (through the
//! referrers API, or the `sha256-<hex>` tag-schema fallback index).
//! Verification of what is found is the trust module's job (issue 3).

use super::Resolver;
use crate::digest::Digest;
use crate::image::{Artifact, ArtifactKind};
use crate::oci::{ManifestError, ManifestView};
use crate::registry::{RawManifest, RegistryError};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};

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
    /// Artifacts left out because their manifest is of a media type the
    /// client refuses (e.g. an OCI 1.1-rc artifact manifest), one line each:
    /// repository, subject, artifact (tag or digest) and why.
    pub skipped: Vec<String>,
    seen: HashSet<Digest>,
    /// Answers fetched ahead, concurrently ([`Discovery::prefetch`]), each
    /// used once by the walk, which keeps its order. Failures are not kept:
    /// the walk asks again and reports them where they belong.
    manifests: HashMap<String, RawManifest>,
    referrers: HashMap<Digest, Option<Vec<crate::oci::Descriptor>>>,
}

/// Requests a prefetch keeps in flight.
const PREFETCH: usize = 8;

/// Run `asks` [`PREFETCH`] at a time; the answers that came back (a
/// failure is left for the walk to meet again, where it is reported).
async fn answered<K, V, E>(
    asks: Vec<impl std::future::Future<Output = (K, Result<V, E>)>>,
) -> Vec<(K, V)> {
    futures_util::stream::iter(asks)
        .buffer_unordered(PREFETCH)
        .filter_map(|(k, r)| async move { r.ok().map(|v| (k, v)) })
        .collect()
        .await
}

/// The media type of a manifest the client refused for its type alone:
/// such an artifact is skipped; every other error stays fatal.
fn refused_media_type(e: &RegistryError) -> Option<&str> {
    match e {
        RegistryError::Manifest {
            source: ManifestError::UnsupportedMediaType { media_type, .. },
            ..
        } => Some(media_type),
        _ => None,
    }
}

impl<'a> Discovery<'a> {
    pub fn new(registry: &'a dyn Resolver, repo: &'a str, tags: &'a HashSet<String>) -> Self {
        Discovery {
            registry,
            repo,
            tags,
            found: Vec::new(),
            skipped: Vec::new(),
            seen: HashSet::new(),
            manifests: HashMap::new(),
            referrers: HashMap::new(),
        }
    }

    /// Ask for what [`Discovery::discover`] will ask about `subjects` first
    /// (their cosign tags and fallback index, when listed, and their
    /// referrers), all at once: the walk then waits for one round trip per
    /// level instead of one per request.
    pub async fn prefetch(&mut self, subjects: &[Digest]) {
        let mut tags: Vec<String> = Vec::new();
        for s in subjects {
            for (suffix, _) in COSIGN_SUFFIXES {
                tags.push(cosign_tag(s, suffix));
            }
            tags.push(s.tag_stem());
        }
        tags.retain(|t| self.tags.contains(t));
        let (registry, repo) = (self.registry, self.repo);
        // Futures made up front, not in a stream's closure: a closure over
        // borrowed data there makes the future not provably Send.
        let asks: Vec<_> = tags
            .into_iter()
            .map(|t| async move {
                let m = registry.get_manifest(repo, &t).await;
                (t, m)
            })
            .collect();
        self.manifests.extend(answered(asks).await);
        let asks: Vec<_> = subjects
            .iter()
            .cloned()
            .map(|s| async move {
                let r = registry.referrers(repo, &s).await;
                (s, r)
            })
            .collect();
        self.referrers.extend(answered(asks).await);
    }

    async fn get_manifest(&mut self, reference: &str) -> Result<RawManifest, RegistryError> {
        match self.manifests.remove(reference) {
            Some(m) => Ok(m),
            None => self.registry.get_manifest(self.repo, reference).await,
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

    /// The manifest of an artifact, or `None` when it was skipped for its
    /// media type (and noted in `skipped`).
    async fn fetch(
        &mut self,
        subject: &Digest,
        reference: &str,
    ) -> Result<Option<RawManifest>, RegistryError> {
        match self.get_manifest(reference).await {
            Ok(m) => Ok(Some(m)),
            Err(e) => match refused_media_type(&e) {
                Some(media_type) => {
                    self.skipped.push(format!(
                        "{}/{}: artifact {reference} of {subject} skipped: its manifest is of media type {media_type}, which airlock does not carry (only OCI and Docker v2 image indexes and manifests)",
                        self.registry.location(),
                        self.repo,
                    ));
                    Ok(None)
                }
                None => Err(e),
            },
        }
    }

    /// The `sha256-<hex>` referrers fallback index, recorded, and what it lists.
    async fn fallback_index(
        &mut self,
        subject: &Digest,
    ) -> Result<Option<Vec<crate::oci::Descriptor>>, RegistryError> {
        let stem = subject.tag_stem();
        if !self.tags.contains(&stem) {
            return Ok(None);
        }
        let idx = self.get_manifest(&stem).await?;
        let view = ManifestView::parse(&idx.bytes, Some(&idx.media_type)).map_err(|source| {
            RegistryError::Manifest {
                what: format!("referrers fallback tag {stem} in {}", self.repo),
                source,
            }
        })?;
        self.record(ArtifactKind::ReferrersIndex, subject, Some(stem), idx);
        Ok(Some(view.manifests))
    }

    /// Everything attached to `subject`, recursively up to `depth` levels.
    /// An artifact whose manifest media type the client refuses is skipped
    /// (see `skipped`); any other error fails the whole discovery.
    pub async fn discover(&mut self, subject: &Digest, depth: usize) -> Result<(), RegistryError> {
        let mut next = Vec::new();
        for (suffix, kind) in COSIGN_SUFFIXES {
            let tag = cosign_tag(subject, suffix);
            if self.tags.contains(&tag) {
                if let Some(m) = self.fetch(subject, &tag).await? {
                    next.extend(self.record(kind, subject, Some(tag), m));
                }
            }
        }
        // The tag-schema fallback index is carried whenever it is there (a
        // layout directory or a registry may have both it and a referrers
        // API); its referrers are read from it when there is no API.
        let fallback = self.fallback_index(subject).await?;
        let listed = match self.referrers.remove(subject) {
            Some(r) => r,
            None => self.registry.referrers(self.repo, subject).await?,
        };
        let referrers = match listed {
            Some(mut list) => {
                for d in fallback.unwrap_or_default() {
                    if !list.iter().any(|x| x.digest == d.digest) {
                        list.push(d);
                    }
                }
                list
            }
            None => fallback.unwrap_or_default(),
        };
        for d in referrers {
            if let Some(m) = self.fetch(subject, &d.digest.to_string()).await? {
                next.extend(self.record(ArtifactKind::Referrer, subject, None, m));
            }
        }
        if depth > 0 {
            for d in next {
                Box::pin(self.discover(&d, depth - 1)).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OCI 1.1-rc artifact manifest (as ORAS and cosign experiments
    /// pushed them) is refused by `get_manifest` for its media type alone:
    /// discovery skips it. Errors of any other kind stay fatal.
    #[test]
    fn only_a_refused_media_type_is_skipped() {
        let artifact = br#"{"mediaType":"application/vnd.oci.artifact.manifest.v1+json","artifactType":"application/vnd.example.sbom","blobs":[],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2}}"#;
        // What get_manifest does with the body it received.
        let refused = ManifestView::parse(artifact, None)
            .map(|_| ())
            .map_err(|source| RegistryError::Manifest {
                what: "manifest r/a:x".into(),
                source,
            })
            .unwrap_err();
        assert_eq!(
            refused_media_type(&refused),
            Some("application/vnd.oci.artifact.manifest.v1+json")
        );

        let not_json = RegistryError::Manifest {
            what: "manifest r/a:x".into(),
            source: ManifestView::parse(b"{", None).unwrap_err(),
        };
        let fatal = [
            not_json,
            RegistryError::NotFound {
                what: "manifest r/a@sha256:00".into(),
            },
            RegistryError::Connect {
                host: "r".into(),
                detail: "connection refused".into(),
            },
            RegistryError::Auth {
                host: "r".into(),
                scope: "repository:a:pull".into(),
                detail: "401".into(),
            },
            RegistryError::Status {
                what: "manifest r/a:x".into(),
                status: 500,
                body: String::new(),
            },
            RegistryError::DigestMismatch {
                what: "manifest r/a:x".into(),
                expected: Digest::of(b"a"),
                actual: Digest::of(b"b"),
            },
        ];
        for e in &fatal {
            assert_eq!(refused_media_type(e), None, "{e}");
        }
    }
}
