//! What an image is, wherever it is stored: the manifest or index a tag
//! points to, its platforms, and the supply-chain artifacts (signatures,
//! attestations, SBOMs, referrers) attached to it. Every store describes
//! what it offers with these types; the bundle index serialises them.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageEntry {
    /// The reference as selected, e.g. `registry.example/vendor/operator:1.2.3`.
    pub source: String,
    pub registry: String,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The manifest or index the tag points to at import.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// What the source tag resolved to; differs from `digest` when a
    /// platform filter replaced the vendor's index (kept as a blob).
    pub source_digest: Digest,
    pub platforms: Vec<PlatformEntry>,
    /// Suggested target repository (from the selection file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The `org.opencontainers.image.ref.name` of this image in `index.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_name: Option<String>,
    pub artifacts: Vec<Artifact>,
    /// Bytes of every distinct blob and manifest this image needs.
    pub total_size: u64,
    /// The tag at the destination, as a template (`{tag}-mirrored`), from
    /// the selection file; import's `--tag-template` wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_template: Option<String>,
    /// Set when the image is one platform's manifest taken out of this
    /// vendor index (`singlePlatform`): the tag names the manifest itself,
    /// so a signature the vendor made over the index does not verify
    /// against it; only the manifest's own signature does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_of: Option<Digest>,
    /// What the tag pointed to at the source when it was resolved (a lock
    /// file records it); not part of a bundle index.
    #[serde(skip)]
    pub resolved_digest: Option<Digest>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlatformEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// cosign `sha256-<hex>.sig`
    Signature,
    /// cosign `sha256-<hex>.att`
    Attestation,
    /// cosign `sha256-<hex>.sbom`
    Sbom,
    /// An OCI 1.1 referrer (manifest with a `subject`).
    Referrer,
    /// The referrers tag-schema fallback index tagged `sha256-<hex>`.
    ReferrersIndex,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// The manifest (image, platform or artifact) this artifact is about.
    pub subject: Digest,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// in-toto predicate types of an attestation (from its layers' `predicateType`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predicate_types: Vec<String>,
}
