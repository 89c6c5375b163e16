//! The bundle index (`airlock-bundle.json`): the first tar member, listing
//! every other member with its digest and size, and every image with what
//! it carries. Its sha256 is the bundle digest.

use crate::digest::Digest;
pub use crate::image::{Artifact, ArtifactKind, ImageEntry, PlatformEntry};
pub use crate::time::{creation_time, rfc3339};
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
    /// What an incremental bundle was cut against (docs/bundle-format.md §9).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base: Vec<crate::graph::BaseRef>,
    /// Blobs the images need that this bundle does not carry: the site has
    /// them from a base. Not members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<ExternalBlob>,
    /// Set when the bundle is cut into volumes (docs/bundle-format.md §8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<super::volumes::Volumes>,
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
    /// The volume holding the member (a bundle in volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<u32>,
    /// Or, for a member larger than a volume, its chunks in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<super::volumes::Chunk>,
}

/// A blob an incremental bundle relies on without carrying it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalBlob {
    pub digest: Digest,
    pub size: u64,
    pub kind: MemberKind,
    /// The base (bundle digest or inventory digest) that carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Digest>,
}

impl BundleIndex {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Our own document: serialised once, then hashed as written.
        let mut v = serde_json::to_vec_pretty(self).expect("plain structs always serialise");
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

impl BundleIndex {
    #[cfg(test)]
    pub(crate) fn for_tests(members: Vec<Member>) -> BundleIndex {
        BundleIndex {
            schema_version: FORMAT_VERSION,
            media_type: INDEX_MEDIA_TYPE.into(),
            tool: "test".into(),
            created: "2026-01-01T00:00:00Z".into(),
            images: Vec::new(),
            members,
            trusted_root: None,
            base: Vec::new(),
            external: Vec::new(),
            volumes: None,
        }
    }

    /// The index of a bundle holding `graph`, with its members in tar
    /// order (docs/bundle-format.md §2): the layout files, every manifest,
    /// then small blobs (configs, signature payloads, a carried trusted
    /// root), then layers. Returns `index.json`'s bytes too.
    pub fn for_graph(graph: &crate::graph::Graph) -> (BundleIndex, Vec<u8>) {
        use crate::graph::BlobClass;
        let index_json = crate::layout::index_json(&graph.images);
        let layout = |path: &str, bytes: &[u8]| Member {
            path: path.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            kind: MemberKind::Layout,
            media_type: None,
            volume: None,
            chunks: Vec::new(),
        };
        let mut members = vec![
            layout("oci-layout", crate::layout::OCI_LAYOUT_BYTES),
            layout("index.json", &index_json),
        ];
        members.extend(graph.manifests.values().map(|m| Member {
            path: m.digest.layout_path(),
            digest: m.digest.clone(),
            size: m.bytes.len() as u64,
            kind: MemberKind::Manifest,
            media_type: Some(m.media_type.clone()),
            volume: None,
            chunks: Vec::new(),
        }));
        for (class, kind) in [
            (BlobClass::Small, MemberKind::Small),
            (BlobClass::Layer, MemberKind::Layer),
        ] {
            members.extend(
                graph
                    .blobs
                    .iter()
                    .filter(|b| {
                        b.class == class
                            && !graph.manifests.contains_key(&b.digest)
                            && !graph.external.contains_key(&b.digest)
                    })
                    .map(|b| Member {
                        path: b.digest.layout_path(),
                        digest: b.digest.clone(),
                        size: b.size,
                        kind,
                        media_type: b.media_type.clone(),
                        volume: None,
                        chunks: Vec::new(),
                    }),
            );
        }
        let index = BundleIndex {
            schema_version: FORMAT_VERSION,
            media_type: INDEX_MEDIA_TYPE.into(),
            tool: format!("airlock {}", env!("CARGO_PKG_VERSION")),
            created: creation_time(),
            images: graph.images.clone(),
            members,
            trusted_root: graph.trusted_root.clone(),
            base: graph.bases.clone(),
            external: graph
                .blobs
                .iter()
                .filter_map(|b| {
                    let from = graph.external.get(&b.digest)?;
                    Some(ExternalBlob {
                        digest: b.digest.clone(),
                        size: b.size,
                        kind: match b.class {
                            BlobClass::Small => MemberKind::Small,
                            BlobClass::Layer => MemberKind::Layer,
                        },
                        from: from.clone(),
                    })
                })
                .collect(),
            volumes: None,
        };
        (index, index_json)
    }
}
