//! `airlock verify`: the offline audit of a bundle, a copy to nothing. One
//! pass over the file: the whole-file sha256 (checked against
//! `NAME.sha256` when present), every member's size and digest against the
//! bundle index, no member the index does not list, the descriptor graph
//! complete, and (with a policy) every image's signatures.

use crate::bundle::{read_sidecar, BundleSource};
use crate::copy::{copy, CopyOptions};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::null::NullSink;
use crate::store::{GraphRequest, Source};
use serde::Serialize;
use std::io::Read;
use std::path::Path;

/// The error of a verification (one error type for every operation).
pub type VerifyError = Error;

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
    /// The bundle signature, when a bundle key was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_signature: Option<SignatureCheck>,
    /// Intact, and (when asked) admitted by the policy and signed.
    pub verified: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureCheck {
    pub verified: bool,
    /// The key it was checked with.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VerifyReport {
    /// True when a policy was given and an enforcing rule rejected an image.
    pub fn policy_failed(&self) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|v| v.iter().any(|v| v.blocks()))
    }

    /// True when a bundle key was given and the signature does not verify.
    pub fn signature_failed(&self) -> bool {
        self.bundle_signature.as_ref().is_some_and(|s| !s.verified)
    }

    /// The error to end with when the bundle is intact but not trusted.
    pub fn trust_failure(&self) -> Option<Error> {
        if let Some(SignatureCheck { error: Some(e), .. }) = &self.bundle_signature {
            return Some(Error::BundleSignature(e.clone()));
        }
        self.policy_failed().then(|| {
            Error::NotTrusted(
                "policy not met: the bundle is intact, but the images above are not trusted".into(),
            )
        })
    }
}

/// The bundle signature over `digest`, with the site's key.
fn check_signature(
    bundle_key: &Option<(std::path::PathBuf, String)>,
    digest: &Digest,
) -> Option<SignatureCheck> {
    let (key, sig) = bundle_key.as_ref()?;
    let result = crate::trust::verify_bundle_signature(key, digest, sig);
    Some(SignatureCheck {
        verified: result.is_ok(),
        key: key.display().to_string(),
        error: result.err().map(|e| e.to_string()),
    })
}

/// Verify the bundle at `path` (or a stream, when `input` is given).
/// Blocking: runs its own runtime on a thread of its own.
pub fn verify(path: &Path, input: Option<Box<dyn Read + Send>>) -> Result<VerifyReport> {
    verify_with_policy(path, input, None)
}

/// [`verify`], then every image against `policy` (offline: keys from the site).
pub fn verify_with_policy(
    path: &Path,
    input: Option<Box<dyn Read + Send>>,
    policy: Option<&crate::trust::Policy>,
) -> Result<VerifyReport> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(Error::io("the async runtime"))?;
            rt.block_on(verify_bundle(path, input, policy, &None))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Task {
                what: path.display().to_string(),
                detail: "verification thread panicked".into(),
            })
        })
    })
}

/// The audit itself: one pass over the file (or `input`), nothing kept.
pub async fn verify_bundle(
    path: &Path,
    input: Option<Box<dyn Read + Send>>,
    policy: Option<&crate::trust::Policy>,
    bundle_key: &Option<(std::path::PathBuf, String)>,
) -> Result<VerifyReport> {
    let name = path.display().to_string();
    let from_file = input.is_none();
    let raw: Box<dyn Read + Send> = match input {
        Some(r) => r,
        None => {
            if path.is_dir() {
                return Err(Error::Usage(format!(
                    "{name} is a directory, not a bundle file"
                )));
            }
            Box::new(std::fs::File::open(path).map_err(Error::io(&name))?)
        }
    };
    let mut source = BundleSource::stream(raw, &name);
    let request = GraphRequest {
        payloads: policy.is_some(),
    };
    let graph = source.graph(request).await?;
    let graphs = graph.walk(&name)?;
    let mut null = NullSink::reading_past(&name);
    copy(&mut source, &graph, &mut null, &CopyOptions::default()).await?;
    let file_digest = source.file_digest().cloned().ok_or_else(|| Error::Task {
        what: name.clone(),
        detail: "the file digest is missing after the read".into(),
    })?;
    let sidecar_ok = check_sidecar(path, from_file, &file_digest)?;
    let (index, bundle_digest) = source.index().cloned().ok_or_else(|| Error::Task {
        what: name.clone(),
        detail: "the bundle index is missing after the read".into(),
    })?;
    let images = graphs.iter().map(verified_image).collect();
    let bundle_signature = check_signature(bundle_key, &bundle_digest);
    let mut report = VerifyReport {
        bundle_signature,
        verified: false,
        policy: policy.map(|p| crate::gate::evaluate(p, &graph)),
        bundle: name,
        bundle_digest,
        file_sha256: file_digest.hex(),
        sidecar_ok,
        created: index.created.clone(),
        tool: index.tool.clone(),
        members: index.members.len() + 1,
        bytes: index.members.iter().map(|m| m.size).sum(),
        unreferenced: graph
            .unreferenced(&graphs)
            .iter()
            .map(|d| d.layout_path())
            .collect(),
        images,
    };
    report.verified = !report.policy_failed() && !report.signature_failed();
    Ok(report)
}

fn check_sidecar(path: &Path, from_file: bool, file_digest: &Digest) -> Result<Option<bool>> {
    match (from_file, read_sidecar(path)) {
        (true, Some((side, expected))) => {
            if expected != file_digest.hex() {
                return Err(Error::Sidecar {
                    bundle: path.display().to_string(),
                    sidecar: side,
                    expected,
                    actual: file_digest.hex(),
                });
            }
            Ok(Some(true))
        }
        _ => Ok(None),
    }
}

/// The audit of images where they now live (`verify docker://…`,
/// `verify oci:DIR`): every manifest and blob read and hashed, the graph
/// complete, every image judged by the policy; only the registry (or the
/// directory) is contacted.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagesReport {
    pub source: String,
    pub images: Vec<VerifiedImage>,
    pub blobs: usize,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<crate::trust::Verdict>>,
    /// Intact and (when asked) admitted by the policy.
    pub verified: bool,
}

impl ImagesReport {
    pub fn trust_failure(&self) -> Option<Error> {
        (!self.verified).then(|| {
            Error::NotTrusted(
                "policy not met: the images are intact, but the ones above are not trusted".into(),
            )
        })
    }
}

/// Verify images at registries or in layout directories (a registry
/// source copied to nothing, then the policy).
pub async fn verify_images(
    registries: &crate::registry::Registries,
    selection: Vec<crate::selection::ImageSelection>,
    policy: Option<&crate::trust::Policy>,
    jobs: usize,
    events: &crate::progress::EventsHandle,
) -> Result<ImagesReport> {
    let mut source =
        crate::store::registry::RegistrySource::new(registries, selection, jobs, None)?;
    let request = GraphRequest {
        payloads: policy.is_some(),
    };
    let graph = source.graph(request).await?;
    let name = source.name();
    let graphs = graph.walk(&name)?;
    for line in &graph.skipped {
        events.0.note(&format!("warning: {line}"));
    }
    let mut null = NullSink::new(&name);
    copy(
        &mut source,
        &graph,
        &mut null,
        &CopyOptions::new(jobs, "verify", events.clone()),
    )
    .await?;
    let policy = policy.map(|p| crate::gate::evaluate(p, &graph));
    let verified = !policy
        .as_ref()
        .is_some_and(|v| v.iter().any(|v| v.blocks()));
    Ok(ImagesReport {
        source: name,
        images: graphs.iter().map(verified_image).collect(),
        blobs: graph.blobs.len(),
        bytes: graph.blob_bytes(),
        policy,
        verified,
    })
}

fn verified_image(g: &crate::graph::ImageGraph) -> VerifiedImage {
    VerifiedImage {
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
    }
}
