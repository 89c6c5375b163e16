//! OCI / Docker manifest media types and a read-only *view* of manifests.
//!
//! The raw bytes fetched from a registry stay the source of truth (their
//! sha256 is the digest); these views are parsed only to walk the graph and
//! are never serialised back.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const COSIGN_SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Set on a platform-filtered index: the digest of the vendor's original index.
pub const ANNOTATION_ORIGINAL_INDEX: &str = "dev.airlock.original-index";

/// Media types we accept for manifests, in the `Accept` header and in bundles.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Registries refuse larger manifests; so do we, so a hostile bundle or
/// registry cannot make us buffer gigabytes as "a manifest".
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

pub fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}
pub fn is_manifest_type(mt: &str) -> bool {
    MANIFEST_MEDIA_TYPES.contains(&mt)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next()?.to_string();
        let architecture = it.next()?.to_string();
        let variant = it.next().map(str::to_string);
        if os.is_empty() || architecture.is_empty() || it.next().is_some() {
            return None;
        }
        Some(Platform {
            os,
            architecture,
            variant,
        })
    }
    /// True when `self` (a filter) selects `other`; a filter without a variant
    /// selects every variant.
    pub fn selects(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A manifest or index as its raw bytes, with the media type to serve it
/// with and its digest. Built only where the digest was checked (a registry
/// answer, a verified bundle member or layout blob) or computed over the
/// bytes themselves; nothing re-serialises it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub bytes: bytes::Bytes,
    pub media_type: String,
    pub digest: Digest,
}

impl Manifest {
    /// Our own document (a filtered index): hashed as it is.
    pub fn hashed(bytes: impl Into<bytes::Bytes>, media_type: &str) -> Manifest {
        let bytes = bytes.into();
        Manifest {
            digest: Digest::of(&bytes),
            media_type: media_type.to_string(),
            bytes,
        }
    }

    pub fn view(&self) -> Result<ManifestView, ManifestError> {
        ManifestView::parse(&self.bytes, Some(&self.media_type))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub urls: Vec<String>,
}

impl Descriptor {
    /// A bare blob descriptor: what a store needs to move bytes.
    pub fn blob(digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest,
            size,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
            urls: vec![],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawView {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// What the graph walk needs to know of a manifest or index.
#[derive(Clone, Debug)]
pub struct ManifestView {
    pub media_type: String,
    /// Index children (empty for an image manifest).
    pub manifests: Vec<Descriptor>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {digest} is not valid JSON: {source}")]
    Json {
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("manifest {digest} has unsupported media type {media_type:?} (supported: OCI index/manifest, Docker v2 list/manifest)")]
    UnsupportedMediaType { digest: Digest, media_type: String },
    #[error("manifest {digest} is schemaVersion {version}, only 2 is supported (Docker schema 1 images must be converted first)")]
    SchemaVersion { digest: Digest, version: u32 },
    #[error("manifest {digest}: layer {layer} has external urls (foreign layers are not carried)")]
    ForeignLayer { digest: Digest, layer: Digest },
}

impl ManifestView {
    /// Parse `raw`, using `content_type` (from the registry or the bundle)
    /// when the document does not carry its own `mediaType`.
    pub fn parse(raw: &[u8], content_type: Option<&str>) -> Result<ManifestView, ManifestError> {
        let digest = Digest::of(raw);
        let v: RawView = serde_json::from_slice(raw).map_err(|source| ManifestError::Json {
            digest: digest.clone(),
            source,
        })?;
        if let Some(ver) = v.schema_version {
            if ver != 2 {
                return Err(ManifestError::SchemaVersion {
                    digest,
                    version: ver,
                });
            }
        }
        let media_type = v
            .media_type
            .clone()
            .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()))
            .filter(|m| !m.is_empty() && m != "application/json")
            .unwrap_or_else(|| {
                if v.manifests.is_some() {
                    OCI_INDEX.to_string()
                } else {
                    OCI_MANIFEST.to_string()
                }
            });
        if !is_manifest_type(&media_type) {
            return Err(ManifestError::UnsupportedMediaType { digest, media_type });
        }
        let layers = v.layers.unwrap_or_default();
        if let Some(l) = layers.iter().find(|l| !l.urls.is_empty()) {
            return Err(ManifestError::ForeignLayer {
                digest,
                layer: l.digest.clone(),
            });
        }
        Ok(ManifestView {
            media_type,
            manifests: v.manifests.unwrap_or_default(),
            config: v.config,
            layers,
            subject: v.subject,
            artifact_type: v.artifact_type,
            annotations: v.annotations,
        })
    }

    pub fn is_index(&self) -> bool {
        is_index_type(&self.media_type)
    }

    /// Blobs (config + layers) of an image manifest.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }

    /// The artifact type as cosign / ORAS define it: `artifactType`, else the config media type.
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type.clone().or_else(|| {
            self.config
                .as_ref()
                .map(|c| c.media_type.clone())
                .filter(|m| m != OCI_CONFIG && m != OCI_EMPTY)
        })
    }
}

/// Build an index holding only the children `keep` selects. Each kept child
/// descriptor is copied byte for byte from the original JSON, so its
/// digest, size, platform and annotations are exactly the vendor's.
pub fn filter_index(
    raw: &[u8],
    media_type: &str,
    original: &Digest,
    keep: impl Fn(&Descriptor) -> bool,
) -> Result<Vec<u8>, ManifestError> {
    #[derive(Deserialize)]
    struct Children<'a> {
        #[serde(borrow)]
        manifests: Vec<&'a serde_json::value::RawValue>,
    }
    let json_err = |source| ManifestError::Json {
        digest: original.clone(),
        source,
    };
    let children: Children = serde_json::from_slice(raw).map_err(json_err)?;
    let mut kept = Vec::new();
    for child in children.manifests {
        let d: Descriptor = serde_json::from_str(child.get()).map_err(json_err)?;
        if keep(&d) {
            kept.push(child.get());
        }
    }
    let annotations = serde_json::json!({ ANNOTATION_ORIGINAL_INDEX: original.to_string() });
    let mut out = format!(
        "{{\"schemaVersion\":2,\"mediaType\":{},\"manifests\":[",
        serde_json::Value::String(media_type.to_string())
    );
    out.push_str(&kept.join(","));
    out.push_str("],\"annotations\":");
    out.push_str(&annotations.to_string());
    out.push('}');
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_keeps_descriptor_bytes() {
        let raw = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"z":"1","a":"2"}},
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":2,"platform":{"architecture":"arm64","os":"linux"}}]}"#;
        let orig = Digest::of(raw);
        let amd = Platform::parse("linux/amd64").unwrap();
        let out = filter_index(raw, OCI_INDEX, &orig, |d| {
            d.platform.as_ref().is_some_and(|p| amd.selects(p))
        })
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains(r#""annotations":{"z":"1","a":"2"}"#), "{s}");
        assert!(!s.contains("arm64"));
        let v = ManifestView::parse(s.as_bytes(), None).unwrap();
        assert_eq!(v.manifests.len(), 1);
        assert_eq!(v.annotations[ANNOTATION_ORIGINAL_INDEX], orig.to_string());
    }

    #[test]
    fn rejects_schema1_and_unknown_types() {
        assert!(matches!(
            ManifestView::parse(br#"{"schemaVersion":1,"name":"x"}"#, None),
            Err(ManifestError::SchemaVersion { .. })
        ));
        assert!(matches!(
            ManifestView::parse(br#"{"schemaVersion":2,"mediaType":"text/html"}"#, None),
            Err(ManifestError::UnsupportedMediaType { .. })
        ));
    }
}
