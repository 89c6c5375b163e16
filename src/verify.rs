//! `airlock verify`: the offline integrity audit of a bundle. One pass
//! over the file: the whole-file sha256 (checked against `NAME.sha256`
//! when present), every member's size and digest against the bundle index,
//! no member the index does not list, and the descriptor graph complete.
//! Signature checks against a site policy come with the trust module.

use crate::bundle::{self, BundleError, MemberKind, StreamEvent};
use crate::digest::{Digest, HashingReader};
use crate::graph::{self, Manifests};
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedImage {
    pub source: String,
    pub digest: Digest,
    pub platforms: Vec<String>,
    pub artifacts: usize,
    pub blobs: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub bundle: String,
    pub bundle_digest: Digest,
    pub file_sha256: String,
    /// `Some(true)` when `NAME.sha256` exists and matches.
    pub sidecar_ok: Option<bool>,
    pub created: String,
    pub tool: String,
    pub members: usize,
    pub bytes: u64,
    pub images: Vec<VerifiedImage>,
    /// Listed members no image needs (allowed, reported).
    pub unreferenced: Vec<String>,
    /// Per image, the policy decision (when a policy or keys were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<crate::trust::Verdict>>,
}

impl VerifyReport {
    /// True when a policy was given and an enforcing rule rejected an image.
    pub fn policy_failed(&self) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|v| v.iter().any(|v| v.blocks()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{bundle}: file sha256 {actual} does not match {sidecar} ({expected})")]
    Sidecar {
        bundle: String,
        sidecar: String,
        expected: String,
        actual: String,
    },
}

fn read_sidecar(path: &Path) -> Option<(String, String)> {
    let side = format!("{}.sha256", path.display());
    let text = std::fs::read_to_string(&side).ok()?;
    let hex = text.split_whitespace().next()?.to_ascii_lowercase();
    Some((side, hex))
}

/// Verify the bundle at `path` (or a stream, when `input` is given).
pub fn verify(
    path: &Path,
    input: Option<Box<dyn Read + Send>>,
) -> Result<VerifyReport, VerifyError> {
    verify_with_policy(path, input, None)
}

/// [`verify`], then every image against `policy` (offline: keys from the site).
pub fn verify_with_policy(
    path: &Path,
    input: Option<Box<dyn Read + Send>>,
    policy: Option<&crate::trust::Policy>,
) -> Result<VerifyReport, VerifyError> {
    let name = path.display().to_string();
    let from_file = input.is_none();
    let raw: Box<dyn Read + Send> = match input {
        Some(r) => r,
        None => Box::new(std::fs::File::open(path).map_err(|source| VerifyError::Io {
            path: name.clone(),
            source,
        })?),
    };
    let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, raw));
    let mut manifests: Manifests = HashMap::new();
    let mut small: HashMap<Digest, Vec<u8>> = HashMap::new();
    let mut bytes = 0u64;
    let (index, digest) = bundle::read_stream(&mut hashing, &name, |ev| {
        if let StreamEvent::Member { member, data } = ev {
            bytes += member.size;
            if member.kind == MemberKind::Manifest {
                let b = bundle::read_whole(&name, member, data)?;
                manifests.insert(
                    member.digest.clone(),
                    (
                        Bytes::from(b),
                        member.media_type.clone().unwrap_or_default(),
                    ),
                );
            } else if policy.is_some()
                && member.kind == MemberKind::Small
                && member.size <= crate::oci::MAX_MANIFEST_BYTES
            {
                // Signature payloads and envelopes are small blobs; keep them for the policy.
                small.insert(
                    member.digest.clone(),
                    bundle::read_whole(&name, member, data)?,
                );
            }
        }
        Ok(())
    })?;
    // The seek table trails the tar; hash it too for the whole-file digest.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|source| VerifyError::Io {
        path: name.clone(),
        source,
    })?;
    let (file_digest, _) = hashing.finish();
    let graphs = graph::build(&name, &index, &manifests)?;
    let sidecar_ok = match (from_file, read_sidecar(path)) {
        (true, Some((side, expected))) => {
            if expected != file_digest.hex() {
                return Err(VerifyError::Sidecar {
                    bundle: name,
                    sidecar: side,
                    expected,
                    actual: file_digest.hex(),
                });
            }
            Some(true)
        }
        _ => None,
    };
    let images = graphs
        .iter()
        .map(|g| VerifiedImage {
            source: g.entry.source.clone(),
            digest: g.entry.digest.clone(),
            platforms: g
                .entry
                .platforms
                .iter()
                .map(|p| p.platform.clone().unwrap_or_else(|| "-".into()))
                .collect(),
            artifacts: g.artifacts.len(),
            blobs: g.blobs.len(),
        })
        .collect();
    let policy = policy.map(|p| {
        let store = crate::trust::MemoryStore {
            manifests: manifests
                .iter()
                .map(|(d, (b, m))| (d.clone(), (b.to_vec(), m.clone())))
                .collect(),
            blobs: small,
        };
        index
            .images
            .iter()
            .map(|img| p.evaluate(img, &store))
            .collect()
    });
    Ok(VerifyReport {
        policy,
        bundle: name,
        bundle_digest: digest,
        file_sha256: file_digest.hex(),
        sidecar_ok,
        created: index.created.clone(),
        tool: index.tool.clone(),
        members: index.members.len() + 1,
        bytes,
        unreferenced: graph::unreferenced(&index, &graphs),
        images,
    })
}
