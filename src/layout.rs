//! The OCI image layout files (`oci-layout`, `index.json`), written inside
//! a bundle and into layout directories.
//!
//! `index.json` names each tagged image `REPOSITORY:TAG` in
//! `org.opencontainers.image.ref.name`, which is what skopeo's
//! `oci:DIR:REF` selects on (it splits at the first colon after DIR), so
//! `skopeo copy oci:DIR:vendor/operator:1.2.3 docker://…` works on an
//! extracted bundle. Cosign signature tags are listed the same way.

use crate::digest::Digest;
use crate::image::{ArtifactKind, ImageEntry};
use crate::oci::ANNOTATION_REF_NAME;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub const OCI_LAYOUT_BYTES: &[u8] = b"{\"imageLayoutVersion\":\"1.0.0\"}";

/// A descriptor of `index.json` (what we write; unknown fields of an
/// existing index.json are not kept when a layout directory is updated).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LayoutDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl LayoutDescriptor {
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(ANNOTATION_REF_NAME)
            .map(String::as_str)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<LayoutDescriptor>,
}

/// The ref name of a tag in a repository, as written in `index.json`.
pub fn ref_name(repository: &str, tag: &str) -> String {
    format!("{repository}:{tag}")
}

/// Build `index.json`: every image (tagged ones named), then every
/// tagged artifact, then untagged referrers, each once.
pub fn index_json(images: &[ImageEntry]) -> Vec<u8> {
    index_bytes(entries(images))
}

/// `index.json` listing `manifests`.
pub fn index_bytes(manifests: Vec<LayoutDescriptor>) -> Vec<u8> {
    let idx = LayoutIndex {
        schema_version: 2,
        media_type: Some(crate::oci::OCI_INDEX.to_string()),
        manifests,
    };
    let mut v = serde_json::to_vec(&idx).expect("plain structs always serialise");
    v.push(b'\n');
    v
}

/// The descriptors of `index.json` for `images`.
pub fn entries(images: &[ImageEntry]) -> Vec<LayoutDescriptor> {
    let mut manifests = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |media_type: &str, digest: &Digest, size: u64, name: Option<String>| {
        if !seen.insert((digest.clone(), name.clone())) {
            return;
        }
        let mut annotations = BTreeMap::new();
        if let Some(n) = name {
            annotations.insert(ANNOTATION_REF_NAME.to_string(), n);
        }
        manifests.push(LayoutDescriptor {
            media_type: media_type.to_string(),
            digest: digest.clone(),
            size,
            annotations,
        });
    };
    for img in images {
        push(&img.media_type, &img.digest, img.size, img.ref_name.clone());
    }
    for img in images {
        for a in &img.artifacts {
            let name = a.tag.as_ref().map(|t| ref_name(&img.repository, t));
            if name.is_some() || a.kind == ArtifactKind::Referrer {
                push(&a.media_type, &a.digest, a.size, name);
            }
        }
    }
    manifests
}
