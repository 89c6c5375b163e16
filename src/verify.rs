//! `airlock verify`: the offline audit of a bundle, a copy to nothing.
//! Every member's size and digest against the bundle index, every tar
//! header, padding and the archive's end, no member the index does not
//! list, the descriptor graph complete, and (with a policy) every image's
//! signatures. That pins every byte of the archive's content; the
//! whole-file sha256 (checked against `NAME.sha256`) proves the compressed
//! file byte for byte on top, at the cost of a second hash of every byte:
//! always for a stream (it is read once anyway), for a file when asked
//! (`--file-hash`; measured in README § Benchmark).

use crate::bundle::{read_sidecar, BundleSource};
use crate::copy::{copy, CopyOptions};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::null::NullSink;
use crate::store::{GraphRequest, Source};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};

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
    /// Empty when the whole file was not hashed (a file without `--file-hash`).
    pub file_sha256: String,
    /// `Some(true)` when `NAME.sha256` exists and matches; `None` when there
    /// is none, or the whole file was not hashed.
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
    /// Empty when the file was not hashed whole.
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

/// Verify the bundle at `path` (or a stream, when `input` is given), the
/// whole-file hash and its sidecar included.
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
            rt.block_on(verify_bundle(path, input, policy, &None, FileHash::Check))
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

/// Whether a bundle file is also hashed whole (for its `.sha256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileHash {
    Check,
    Skip,
}

/// The audit itself (or of `input`, a stream read once), nothing kept.
pub async fn verify_bundle(
    path: &Path,
    input: Option<Box<dyn Read + Send>>,
    policy: Option<&crate::trust::Policy>,
    bundle_key: &Option<(std::path::PathBuf, String)>,
    file_hash: FileHash,
) -> Result<VerifyReport> {
    match input {
        Some(raw) => {
            let source = BundleSource::stream(raw, &path.display().to_string());
            verify_source(source, policy, bundle_key).await
        }
        None => verify_volumes(&[path.to_path_buf()], policy, bundle_key, file_hash).await,
    }
}

/// A bundle file or the volumes of a bundle (files or directories, any
/// order). With a seek table, the members are hashed in parallel (and,
/// with [`FileHash::Check`], each file whole on a thread of its own, for
/// its `.sha256`); without one, the file is read once as a stream and
/// hashed whole on the way. With some volumes only, each given volume is
/// read alone, whole.
pub async fn verify_volumes(
    paths: &[PathBuf],
    policy: Option<&crate::trust::Policy>,
    bundle_key: &Option<(PathBuf, String)>,
    file_hash: FileHash,
) -> Result<VerifyReport> {
    let paths = crate::bundle::volumes::expand_paths(paths)?;
    let Some(set) = crate::bundle::SeekableBundle::open_set(&paths)? else {
        let path = &paths[0];
        let f = std::fs::File::open(path).map_err(Error::io(path.display()))?;
        let source = BundleSource::stream(Box::new(f), &path.display().to_string());
        let mut report = verify_source(source, policy, bundle_key).await?;
        let digest = Digest::from_hex(&report.file_sha256).unwrap_or_else(|_| Digest::of(b""));
        report.sidecar_ok = check_sidecar(path, true, &digest)?;
        return Ok(report);
    };
    let files = set.volume_files();
    let count = set.index.volume_count();
    let missing = set.missing_volumes();
    if !missing.is_empty() {
        if policy.is_some() {
            return Err(Error::Usage(format!(
                "a policy is checked on whole bundles: give every volume ({} of {count} given)",
                files.len()
            )));
        }
        return verify_some_volumes(&set, files, missing, bundle_key).await;
    }
    let hashing: Vec<_> = files
        .iter()
        .filter(|_| file_hash == FileHash::Check)
        .map(|(_, p)| {
            let p = p.clone();
            tokio::task::spawn_blocking(move || hash_file(&p))
        })
        .collect();
    let source = BundleSource::open_files(&paths)?;
    let mut report = verify_source(source, policy, bundle_key).await?;
    let mut digests = Vec::new();
    for (h, (_, p)) in hashing.into_iter().zip(&files) {
        digests.push(Some(h.await.map_err(Error::task(p.display()))??));
    }
    digests.resize(files.len(), None);
    let sidecar = |path: &Path, digest: &Option<Digest>| match digest {
        Some(d) => check_sidecar(path, true, d),
        None => Ok(None),
    };
    let hex = |digest: &Option<Digest>| digest.as_ref().map(|d| d.hex()).unwrap_or_default();
    if set.index.volumes.is_none() {
        report.file_sha256 = hex(&digests[0]);
        report.sidecar_ok = sidecar(&files[0].1, &digests[0])?;
        return Ok(report);
    }
    for ((v, path), digest) in files.iter().zip(digests) {
        let entries = set.index.volume_entries(*v);
        report.volumes.push(VolumeCheck {
            volume: *v,
            count,
            path: path.display().to_string(),
            file_sha256: hex(&digest),
            sidecar_ok: sidecar(path, &digest)?,
            members: entries.iter().filter(|e| e.chunk == 0).count(),
            chunks: entries.iter().filter(|e| e.chunk > 0).count(),
        });
    }
    Ok(report)
}

/// sha256 of a whole file, read in large blocks.
fn hash_file(path: &Path) -> Result<Digest> {
    let f = std::fs::File::open(path).map_err(Error::io(path.display()))?;
    let mut r = crate::digest::HashingReader::new(f);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(Error::io(path.display())(e)),
        }
    }
    Ok(r.finish().0)
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
            let mut hashing =
                crate::digest::HashingReader::new(std::io::BufReader::with_capacity(1 << 20, f));
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

/// Every member of a bundle source checked: its index, every manifest, the
/// graph, every blob (in parallel with random access), the layout files,
/// the end of each file; then the policy and the bundle signature.
async fn verify_source(
    mut source: BundleSource,
    policy: Option<&crate::trust::Policy>,
    bundle_key: &Option<(PathBuf, String)>,
) -> Result<VerifyReport> {
    let name = source.name();
    let request = GraphRequest {
        payloads: policy.is_some(),
    };
    let graph = source.graph(request).await?;
    let graphs = graph.walk(&name)?;
    let seekable = source.seekable();
    let (mut null, jobs) = match &seekable {
        Some(b) => {
            check_layout_members(b.clone(), &name).await?;
            (NullSink::new(&name), cores())
        }
        // A stream verifies every member as it reads past it.
        None => (NullSink::reading_past(&name), 6),
    };
    copy(
        &mut source,
        &graph,
        &mut null,
        &CopyOptions::new(jobs, "verify", Default::default()),
    )
    .await?;
    let file_sha256 = source.file_digest().map(|d| d.hex()).unwrap_or_default();
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
        file_sha256,
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
    Ok(report)
}

/// `oci-layout` and `index.json` are no blobs of the graph: read them too.
async fn check_layout_members(
    b: std::sync::Arc<crate::bundle::SeekableBundle>,
    name: &str,
) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        for (i, m) in b.index.members.iter().enumerate() {
            if m.kind == crate::bundle::MemberKind::Layout {
                b.read_member(i)?;
            }
        }
        Ok(())
    })
    .await
    .map_err(Error::task(name))?
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
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
