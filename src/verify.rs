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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// Each volume file, when the bundle is cut into volumes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeCheck>,
    /// Blobs an incremental bundle relies on without carrying them: the
    /// site must have them (import checks that it does).
    pub external_blobs: usize,
    pub external_bytes: u64,
    /// Volumes not given: only the given ones were checked, and the images
    /// (graph, policy) are checked when every volume is given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_volumes: Vec<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeCheck {
    pub volume: u32,
    pub count: u32,
    pub path: String,
    pub file_sha256: String,
    pub sidecar_ok: Option<bool>,
    /// Whole members verified in this volume (sha256 against the index).
    pub members: usize,
    /// Chunks of members cut across volumes (checked by the zstd frame
    /// checksums alone; the member's sha256 needs all its chunks).
    pub chunks: usize,
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
            let head = crate::inspect::read_head(path)?;
            if head.0.volumes.is_some() {
                return verify_volumes(&[path.to_path_buf()], policy, bundle_key).await;
            }
            Box::new(std::fs::File::open(path).map_err(Error::io(&name))?)
        }
    };
    verify_one(path, raw, from_file, policy, bundle_key).await
}

/// One bundle file (or stream), then its sidecar.
async fn verify_one(
    path: &Path,
    raw: Box<dyn Read + Send>,
    from_file: bool,
    policy: Option<&crate::trust::Policy>,
    bundle_key: &Option<(PathBuf, String)>,
) -> Result<VerifyReport> {
    let name = path.display().to_string();
    let (mut report, file_digest) = verify_read(&name, raw, policy, bundle_key).await?;
    report.sidecar_ok = check_sidecar(path, from_file, &file_digest)?;
    Ok(report)
}

/// The volumes of a bundle (files or directories, any order). With every
/// volume: one pass over them in order, as one stream, plus each volume's
/// sidecar. With some: each given volume checked alone.
pub async fn verify_volumes(
    paths: &[PathBuf],
    policy: Option<&crate::trust::Policy>,
    bundle_key: &Option<(PathBuf, String)>,
) -> Result<VerifyReport> {
    let paths = crate::bundle::volumes::expand_paths(paths)?;
    let set = crate::bundle::SeekableBundle::open_set(&paths)?.ok_or_else(|| {
        Error::from(crate::bundle::BundleError::Corrupt {
            bundle: paths[0].display().to_string(),
            detail: "no seek table at its end: truncated or damaged".into(),
        })
    })?;
    let files = set.volume_files();
    let count = set.index.volume_count();
    let missing = set.missing_volumes();
    if set.index.volumes.is_none() {
        let path = &files[0].1;
        let f = std::fs::File::open(path).map_err(Error::io(path.display()))?;
        return verify_one(path, Box::new(f), true, policy, bundle_key).await;
    }
    if !missing.is_empty() {
        if policy.is_some() {
            return Err(Error::Usage(format!(
                "a policy is checked on whole bundles: give every volume ({} of {count} given)",
                files.len()
            )));
        }
        return verify_some_volumes(&set, files, missing, bundle_key).await;
    }
    let name = format!("{} ({count} volumes)", files[0].1.display());
    let hashes = Arc::new(Mutex::new(Vec::new()));
    let chain = VolumeChain {
        files: files.iter().map(|(_, p)| p.clone()).collect(),
        next: 0,
        current: None,
        hashes: hashes.clone(),
    };
    let (mut report, _) = verify_read(&name, Box::new(chain), policy, bundle_key).await?;
    let hashes = hashes.lock().map(|h| h.clone()).unwrap_or_default();
    for ((v, path), (digest, size)) in files.iter().zip(hashes) {
        let _ = size;
        report.volumes.push(VolumeCheck {
            volume: *v,
            count,
            path: path.display().to_string(),
            file_sha256: digest.hex(),
            sidecar_ok: check_sidecar(path, true, &digest)?,
            members: set
                .index
                .volume_entries(*v)
                .iter()
                .filter(|e| e.chunk == 0)
                .count(),
            chunks: set
                .index
                .volume_entries(*v)
                .iter()
                .filter(|e| e.chunk > 0)
                .count(),
        });
    }
    report.file_sha256 = String::new();
    Ok(report)
}

/// Some volumes only: each one read alone (its whole members against the
/// bundle index, its chunks by their frame checksums, its end, its sidecar).
async fn verify_some_volumes(
    set: &crate::bundle::SeekableBundle,
    files: Vec<(u32, PathBuf)>,
    missing: Vec<u32>,
    bundle_key: &Option<(PathBuf, String)>,
) -> Result<VerifyReport> {
    let mut volumes = Vec::new();
    for (v, path) in files {
        let name = path.display().to_string();
        let p = path.clone();
        let (digest, counts) = tokio::task::spawn_blocking(move || -> Result<_> {
            let f = std::fs::File::open(&p).map_err(Error::io(p.display()))?;
            let mut hashing = crate::digest::HashingReader::new(std::io::BufReader::new(f));
            let (_, _, _, counts) =
                crate::bundle::read_one_volume(&mut hashing, &p.display().to_string())?;
            std::io::copy(&mut hashing, &mut std::io::sink()).map_err(Error::io(p.display()))?;
            Ok((hashing.finish().0, counts))
        })
        .await
        .map_err(Error::task(&name))??;
        volumes.push(VolumeCheck {
            volume: v,
            count: set.index.volume_count(),
            path: name,
            file_sha256: digest.hex(),
            sidecar_ok: check_sidecar(&path, true, &digest)?,
            members: counts.members,
            chunks: counts.chunks,
        });
    }
    let index = &set.index;
    let bundle_signature = check_signature(bundle_key, &set.digest);
    let mut report = VerifyReport {
        bundle: set.path.display().to_string(),
        bundle_digest: set.digest.clone(),
        file_sha256: String::new(),
        sidecar_ok: None,
        created: index.created.clone(),
        tool: index.tool.clone(),
        members: index.members.len() + 1,
        bytes: index.members.iter().map(|m| m.size).sum(),
        images: Vec::new(),
        unreferenced: Vec::new(),
        policy: None,
        bundle_signature,
        verified: false,
        volumes,
        missing_volumes: missing,
        external_blobs: index.external.len(),
        external_bytes: index.external.iter().map(|e| e.size).sum(),
    };
    report.verified = !report.signature_failed();
    Ok(report)
}

/// Volume files read one after the other as one stream, each hashed on
/// its own for its sidecar.
struct VolumeChain {
    files: Vec<PathBuf>,
    next: usize,
    current: Option<crate::digest::HashingReader<std::fs::File>>,
    hashes: Arc<Mutex<Vec<(Digest, u64)>>>,
}

impl Read for VolumeChain {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.files.get(self.next) else {
                    return Ok(0);
                };
                self.next += 1;
                self.current = Some(crate::digest::HashingReader::new(std::fs::File::open(
                    path,
                )?));
            }
            if let Some(r) = self.current.as_mut() {
                let n = r.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
            }
            if let Some(done) = self.current.take() {
                if let Ok(mut h) = self.hashes.lock() {
                    h.push(done.finish());
                }
            }
        }
    }
}

/// One pass over a bundle stream: every member, the graph, the policy.
async fn verify_read(
    name: &str,
    raw: Box<dyn Read + Send>,
    policy: Option<&crate::trust::Policy>,
    bundle_key: &Option<(PathBuf, String)>,
) -> Result<(VerifyReport, Digest)> {
    let name = name.to_string();
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
        sidecar_ok: None,
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
        volumes: Vec::new(),
        missing_volumes: Vec::new(),
        external_blobs: index.external.len(),
        external_bytes: index.external.iter().map(|e| e.size).sum(),
    };
    report.verified = !report.policy_failed() && !report.signature_failed();
    Ok((report, file_digest))
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
