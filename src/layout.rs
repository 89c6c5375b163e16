//! The OCI image layout inside a bundle: `oci-layout` and `index.json`.
//!
//! `index.json` names each tagged image `REPOSITORY:TAG` in
//! `org.opencontainers.image.ref.name`, which is what skopeo's
//! `oci:DIR:REF` selects on (it splits at the first colon after DIR), so
//! `skopeo copy oci:DIR:vendor/operator:1.2.3 docker://…` works on an
//! extracted bundle. Cosign signature tags are listed the same way.

use crate::bundle::{ArtifactKind, ImageEntry};
use crate::digest::Digest;
use crate::oci::ANNOTATION_REF_NAME;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

pub const OCI_LAYOUT_BYTES: &[u8] = b"{\"imageLayoutVersion\":\"1.0.0\"}";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LayoutDescriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LayoutIndex {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<LayoutDescriptor>,
}

/// The ref name of a tag in a repository, as written in `index.json`.
pub fn ref_name(repository: &str, tag: &str) -> String {
    format!("{repository}:{tag}")
}

/// Build `index.json`: every image (tagged ones named), then every
/// tagged artifact, then untagged referrers, each once.
pub fn index_json(images: &[ImageEntry]) -> Vec<u8> {
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
    let idx = LayoutIndex {
        schema_version: 2,
        media_type: crate::oci::OCI_INDEX,
        manifests,
    };
    let mut v = serde_json::to_vec(&idx).unwrap_or_default();
    v.push(b'\n');
    v
}
