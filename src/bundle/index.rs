//! The bundle index (`airlock-bundle.json`): the first tar member, listing
//! every other member with its digest and size, and every image with what
//! it carries. Its sha256 is the bundle digest.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};

pub const INDEX_PATH: &str = "airlock-bundle.json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.airlock.bundle.index.v1+json";
pub const FORMAT_VERSION: u32 = 1;
/// The bundle index is read into memory; a hostile one may not be huge.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleIndex {
    pub schema_version: u32,
    pub media_type: String,
    /// The tool that wrote the bundle, e.g. `airlock 0.1.0`.
    pub tool: String,
    /// RFC 3339 UTC; from `SOURCE_DATE_EPOCH` when set, for reproducible bundles.
    pub created: String,
    pub images: Vec<ImageEntry>,
    /// Every tar member after this index, in tar order.
    pub members: Vec<Member>,
    /// A sigstore trusted_root.json carried as a convenience (a blob member).
    /// Never trusted by itself: a site uses it only by pinning this digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<Digest>,
}

pub const TRUSTED_ROOT_MEDIA_TYPE: &str =
    "application/vnd.dev.sigstore.trustedroot+json;version=0.1";

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum MemberKind {
    /// `oci-layout` and `index.json`.
    Layout,
    /// An image manifest, index or artifact manifest.
    Manifest,
    /// A config or an artifact's blob (signature payload, SBOM, ...).
    Small,
    Layer,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub path: String,
    pub digest: Digest,
    pub size: u64,
    pub kind: MemberKind,
    /// For manifests: the media type to push them with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

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

impl BundleIndex {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Our own document: serialised once, then hashed as written.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn member(&self, digest: &Digest) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| &m.digest == digest && m.path.starts_with("blobs/"))
    }

    /// Offset of each member's data in the uncompressed tar, given the
    /// size of this index: every member is a 512-byte header then its data
    /// padded to 512 bytes, in the listed order, after the index itself.
    pub fn data_offsets(&self, index_len: u64) -> Vec<u64> {
        let mut at = 512 + super::padded(index_len);
        self.members
            .iter()
            .map(|m| {
                let data = at + 512;
                at = data + super::padded(m.size);
                data
            })
            .collect()
    }
}

/// `created` for a new bundle: `SOURCE_DATE_EPOCH` if set, else now.
pub fn creation_time() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    rfc3339(secs)
}

/// Civil date from Unix seconds (Howard Hinnant's algorithm), UTC.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_392_000), "2026-11-23T00:00:00Z");
    }
}
