//! `airlock export`: images from registries (and OCI layout directories)
//! into one bundle: resolve the selection, pass the gate, copy into a
//! [`BundleSink`], sign the bundle index.

use crate::bundle::{self, BundleSink, Output, WriteOptions};
use crate::cache::{BlobCache, CacheTally};
use crate::copy::{copy, CopyOptions};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::graph::{BlobClass, BlobInfo, Graph};
use crate::output::OutputGuard;
use crate::progress::{human_bytes, Events, EventsHandle, NoEvents};
use crate::registry::Registries;
use crate::selection::ImageSelection;
use crate::store::registry::RegistrySource;
use crate::store::{GraphRequest, Source};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The error of an export (one error type for every operation).
pub type ExportError = Error;

#[derive(Clone)]
pub struct ExportOptions {
    /// Images failing it are refused before anything is written.
    pub policy: Option<Arc<crate::trust::Policy>>,
    /// Sign the bundle index; the signature goes to `NAME.sig`.
    pub sign_key: Option<PathBuf>,
    /// The bundle file; `-` writes it to stdout.
    pub output: PathBuf,
    pub jobs: usize,
    pub level: i32,
    pub threads: usize,
    pub frame_max: usize,
    pub require_signatures: bool,
    pub force: bool,
    /// Keep verified downloads here (`DIR/blobs/sha256/<hex>`) across runs
    /// instead of in the output's state directory; never deleted.
    pub cache_dir: Option<PathBuf>,
    /// A sigstore trusted_root.json to carry in the bundle (sites pin it by digest).
    pub carry_trusted_root: Option<PathBuf>,
    /// Cut the bundle into volumes of at most this many bytes.
    pub volume_size: Option<u64>,
    /// What the site has already: layers found here are left out.
    pub base: crate::base::Base,
    /// Write every resolved tag, its digest and the platforms kept here
    /// (a lock file, see [`crate::lock`]) once the export succeeded.
    pub lock: Option<PathBuf>,
    /// Warnings and verdict lines (default: dropped).
    pub events: Arc<dyn Events>,
}

impl ExportOptions {
    pub fn new(output: impl Into<PathBuf>) -> Self {
        let w = WriteOptions::default();
        ExportOptions {
            output: output.into(),
            jobs: 6,
            level: w.level,
            threads: w.threads,
            frame_max: w.frame_max,
            require_signatures: false,
            force: false,
            cache_dir: None,
            policy: None,
            sign_key: None,
            carry_trusted_root: None,
            volume_size: None,
            base: Default::default(),
            lock: None,
            events: Arc::new(NoEvents),
        }
    }

    fn to_stdout(&self) -> bool {
        self.output.as_os_str() == "-"
    }

    fn bundle_output(&self) -> Output {
        if self.to_stdout() {
            Output::Stdout
        } else {
            Output::File(self.output.clone())
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    pub source: String,
    pub digest: Digest,
    pub source_digest: Digest,
    pub platforms: Vec<String>,
    pub artifacts: usize,
    pub unsigned: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    pub bundle: String,
    pub bundle_digest: Digest,
    pub file_sha256: String,
    pub file_size: u64,
    /// The volume files, when the bundle was cut into volumes (then
    /// `fileSha256` is empty and `fileSize` their total).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::store::FileReport>,
    pub images: Vec<ImageSummary>,
    pub manifests: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    /// Layers left out because a base has them (an incremental bundle).
    pub external_blobs: usize,
    pub external_bytes: u64,
    /// Blobs reused from the state directory or `--cache-dir` (a resumed
    /// export) and blobs downloaded (`reusedBlobs`, `reusedBytes`,
    /// `downloadedBlobs`, `downloadedBytes`).
    #[serde(flatten)]
    pub fetched: CacheTally,
    /// Per image, the policy decision (when a policy or keys were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<crate::trust::Verdict>>,
    /// `NAME.sig`, when the bundle was signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    pub seconds: f64,
}

/// The trusted root to carry: read whole (it is small) and checked to be one.
fn read_trusted_root(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(Error::io(path.display()))?;
    if meta.len() > crate::oci::MAX_MANIFEST_BYTES {
        return Err(Error::Selection(format!(
            "--carry-trusted-root {}: {} bytes is too large for a trusted root",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(Error::io(path.display()))?;
    crate::trust::keyless::KeylessRoots::from_trusted_root_json(&bytes)
        .map_err(|e| Error::Selection(format!("--carry-trusted-root {}: {e}", path.display())))?;
    Ok(bytes)
}

/// A trusted root rides along as a small blob the bundle index names.
fn carry(graph: &mut Graph, bytes: Vec<u8>) {
    let digest = Digest::of(&bytes);
    graph.add_blob(BlobInfo {
        digest: digest.clone(),
        size: bytes.len() as u64,
        class: BlobClass::Small,
        media_type: Some(bundle::TRUSTED_ROOT_MEDIA_TYPE.into()),
        image: 0,
    });
    graph.payloads.insert(digest.clone(), bytes.into());
    graph.trusted_root = Some(digest);
}

fn summaries(graph: &Graph, unsigned: Vec<Vec<String>>) -> Vec<ImageSummary> {
    graph
        .images
        .iter()
        .zip(unsigned)
        .map(|(img, unsigned)| ImageSummary {
            source: img.source.clone(),
            digest: img.digest.clone(),
            source_digest: img.source_digest.clone(),
            platforms: img
                .platforms
                .iter()
                .map(|p| p.platform.clone().unwrap_or_else(|| "-".into()))
                .collect(),
            artifacts: img.artifacts.len(),
            unsigned,
        })
        .collect()
}

/// Resolve the selection and write the bundle at `opts.output`.
///
/// A bundle file is guarded by [`OutputGuard`] (one export per output) and
/// its downloads kept in the state directory `NAME.partial/` (or
/// `opts.cache_dir`): a failed or interrupted export (its future dropped)
/// keeps every verified blob, and the same call resumes from them.
pub async fn export(
    registries: &Registries,
    selection: &[ImageSelection],
    opts: &ExportOptions,
) -> Result<ExportReport> {
    let write = WriteOptions {
        level: opts.level,
        threads: opts.threads,
        frame_max: opts.frame_max,
        force: opts.force,
        queue: opts.jobs.max(1),
        volume_size: opts.volume_size,
    };
    // Refuses an existing output before a state directory is made for it.
    let mut sink = BundleSink::new(opts.bundle_output(), write)?;
    let guard = match &opts.bundle_output() {
        Output::File(path) => {
            let guard = OutputGuard::acquire(path)?;
            sink.keep_partial_in(guard.dir());
            Some(guard)
        }
        Output::Stdout if opts.cache_dir.is_some() => {
            return Err(Error::Usage(
                "--cache-dir needs a bundle file (-o FILE), not stdout".into(),
            ))
        }
        Output::Stdout => None,
    };
    let cache = match &guard {
        Some(g) => {
            let root = opts.cache_dir.as_deref().unwrap_or(g.dir());
            let tmp = crate::output::temp_dir(g.dir());
            let cache = Arc::new(BlobCache::open(root, &tmp)?);
            // What a killed or failed run wrote into its bundle is not
            // downloaded again.
            let recovered = crate::output::recover_partial_outputs(g.dir(), &cache)?;
            if recovered.blobs > 0 {
                opts.events.note(&format!(
                    "{} blobs ({}) recovered from the unfinished bundle of an earlier run",
                    recovered.blobs,
                    crate::progress::human_bytes(recovered.bytes)
                ));
            }
            Some(cache)
        }
        None => None,
    };
    let result = export_with(registries, selection, opts, sink, cache.clone()).await;
    match (result, guard) {
        (Ok(report), Some(g)) => {
            g.finish()?;
            Ok(report)
        }
        (Err(e), Some(g)) => {
            if e.kind() == crate::error::ErrorKind::Integrity {
                // A source that sent bad bytes: nothing of this run is worth
                // resuming from.
                g.discard_partial_output();
            }
            let kept = g.kept_blobs();
            if kept > 0 || g.has_partial_output() {
                opts.events.note(&format!(
                    "what was downloaded is kept in {}: rerun the same command to resume, or \
                     delete that directory to start over",
                    g.dir().display()
                ));
            } else if let (Some(c), Some(_)) = (&cache, &opts.cache_dir) {
                if c.tally().downloaded_blobs > 0 {
                    opts.events.note(&format!(
                        "verified blobs kept in {}: rerun the same command to resume",
                        c.root().display()
                    ));
                }
            }
            Err(e)
        }
        (result, None) => result,
    }
}

async fn export_with(
    registries: &Registries,
    selection: &[ImageSelection],
    opts: &ExportOptions,
    mut sink: BundleSink,
    cache: Option<Arc<BlobCache>>,
) -> Result<ExportReport> {
    let started = std::time::Instant::now();
    let signer = opts
        .sign_key
        .as_deref()
        .map(crate::trust::BundleSigner::from_file)
        .transpose()?;
    let carried = opts
        .carry_trusted_root
        .as_deref()
        .map(read_trusted_root)
        .transpose()?;
    let mut source = match &cache {
        Some(c) if opts.cache_dir.is_some() => {
            RegistrySource::with_cache(registries, selection.to_vec(), opts.jobs, c.clone())
                .keep_every_download()
        }
        Some(c) => RegistrySource::with_cache(registries, selection.to_vec(), opts.jobs, c.clone()),
        None => RegistrySource::new(registries, selection.to_vec(), opts.jobs, None)?,
    };
    let request = GraphRequest {
        payloads: opts.policy.is_some(),
    };
    let mut graph = source.graph(request).await?;
    if let Some(bytes) = carried {
        carry(&mut graph, bytes);
    }
    let (external_blobs, external_bytes) = opts.base.apply(&mut graph);
    let gate = Gate {
        policy: opts.policy.as_deref(),
        require_signatures: opts.require_signatures,
        outcome: "no bundle written",
        names_unique: true,
    };
    let passed = gate.check(&graph, &source.name(), opts.events.as_ref())?;
    let lock = opts
        .lock
        .as_ref()
        .map(|p| (p, crate::lock::LockFile::from_graph(&graph, selection)));
    let copy_opts = CopyOptions::new(opts.jobs, "export", EventsHandle(opts.events.clone()));
    let copied = copy(&mut source, &graph, &mut sink, &copy_opts).await?;
    let fetched = cache.as_ref().map(|c| c.tally()).unwrap_or_default();
    if fetched.reused_blobs > 0 {
        opts.events.note(&format!(
            "resumed: reused {} verified blobs ({}) from {}, downloaded {} ({})",
            fetched.reused_blobs,
            human_bytes(fetched.reused_bytes),
            cache
                .as_ref()
                .map(|c| c.root().display().to_string())
                .unwrap_or_default(),
            fetched.downloaded_blobs,
            human_bytes(fetched.downloaded_bytes),
        ));
    }
    let index_bytes = sink.index_bytes().unwrap_or_default().to_vec();
    let volumes = copied.sink.volumes.clone();
    let signature = match (signer, &opts.bundle_output()) {
        (Some(s), Output::File(out)) => {
            // Every volume carries the same index: each gets the signature.
            let signature = s.sign_b64(&index_bytes);
            let mut files: Vec<PathBuf> = volumes.iter().map(|v| PathBuf::from(&v.path)).collect();
            if files.is_empty() {
                files.push(out.clone());
            }
            for f in &files {
                bundle::write_atomically(&bundle::signature_path(f), signature.as_bytes())?;
            }
            Some(bundle::signature_path(&files[0]).display().to_string())
        }
        (Some(_), Output::Stdout) => {
            return Err(Error::Selection(
                "--sign-key needs a bundle file (-o FILE), not stdout".into(),
            ))
        }
        (None, _) => None,
    };
    if let Some((path, lock)) = lock {
        lock.write(path)?;
    }
    let file = copied
        .sink
        .file
        .clone()
        .unwrap_or(crate::store::FileReport {
            path: opts.output.display().to_string(),
            sha256: String::new(),
            size: 0,
        });
    Ok(ExportReport {
        bundle: if opts.to_stdout() {
            "stdout".into()
        } else {
            opts.output.display().to_string()
        },
        bundle_digest: Digest::of(&index_bytes),
        file_sha256: file.sha256,
        file_size: if volumes.is_empty() {
            file.size
        } else {
            volumes.iter().map(|v| v.size).sum()
        },
        volumes,
        images: summaries(&graph, passed.unsigned),
        manifests: graph.manifests.len(),
        blobs: graph.blobs.len() - external_blobs,
        blob_bytes: graph
            .blobs
            .iter()
            .filter(|b| b.media_type.is_none() && !graph.external.contains_key(&b.digest))
            .map(|b| b.size)
            .sum(),
        external_blobs,
        external_bytes,
        fetched,
        policy: passed.verdicts,
        signature,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One image of a dry-run plan: what the bundle index will say of it
/// (the same fields), and what the plan adds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedImage {
    #[serde(flatten)]
    pub entry: crate::graph::ImageEntry,
    /// Signatures (cosign `.sig`, sigstore bundles) and attestations found.
    pub signatures: usize,
    pub attestations: usize,
    /// Manifests that leave the image unsigned (empty when it is signed).
    pub unsigned: Vec<String>,
    /// Where `import --to` (given to the plan as `--to`) would put it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// What `export` would write, resolved and gated, with no layer
/// downloaded (signature payloads are, for the policy).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub images: Vec<PlannedImage>,
    pub manifests: usize,
    /// Blobs the bundle would carry (not those a base has).
    pub blobs: usize,
    pub blob_bytes: u64,
    /// Layers a base has (an incremental bundle leaves them out).
    pub external_blobs: usize,
    pub external_bytes: u64,
    /// Manifests and carried blobs: the bundle's content before compression.
    pub total_bytes: u64,
    /// Per image, the policy decision (when a policy or keys were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<crate::trust::Verdict>>,
    pub warnings: Vec<String>,
    /// Why the real export would fail (then the dry run fails too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_fail: Option<String>,
}

/// `export --dry-run`: resolve and gate as the export would, download no
/// layer, and say what it would write. Resolution errors are returned; a
/// refusal by the gate, or an output that is in the way, is reported in
/// [`Plan::would_fail`] and returned beside the plan so the caller can show
/// both and exit with the error's kind. `to` names the destination an
/// import would use, to show each image's resolved name.
pub async fn plan(
    registries: &Registries,
    selection: &[ImageSelection],
    opts: &ExportOptions,
    to: Option<&crate::import::Target>,
) -> Result<(Plan, Option<Error>)> {
    let mut source = RegistrySource::new(registries, selection.to_vec(), opts.jobs, None)?;
    let request = GraphRequest {
        payloads: opts.policy.is_some(),
    };
    let mut graph = source.graph(request).await?;
    if let Some(bytes) = opts
        .carry_trusted_root
        .as_deref()
        .map(read_trusted_root)
        .transpose()?
    {
        carry(&mut graph, bytes);
    }
    let (external_blobs, external_bytes) = opts.base.apply(&mut graph);
    let gate = Gate {
        policy: opts.policy.as_deref(),
        require_signatures: opts.require_signatures,
        outcome: "the export would write no bundle",
        names_unique: true,
    };
    let warnings = graph.skipped.clone();
    let quiet = NoEvents;
    let (verdicts, mut failure) = match gate.check(&graph, &source.name(), &quiet) {
        Ok(passed) => (passed.verdicts, None),
        Err(e) => (
            opts.policy
                .as_deref()
                .map(|p| crate::gate::evaluate(p, &graph)),
            Some(e),
        ),
    };
    if failure.is_none() && !opts.to_stdout() && !opts.force && opts.output.exists() {
        failure = Some(Error::Refused(format!(
            "{} exists: the export would refuse to replace it (give --force, or another -o)",
            opts.output.display()
        )));
    }
    if let (Some(path), None) = (&opts.lock, &failure) {
        crate::lock::LockFile::from_graph(&graph, selection).write(path)?;
    }
    let created = crate::time::creation_time();
    let mut images = Vec::new();
    for img in &graph.images {
        let destination = match to {
            Some(t) => {
                let repo = t.repository(&img.repository, img.target.as_deref())?;
                Some(match &img.tag {
                    Some(tag) => {
                        let tag = match &img.tag_template {
                            Some(tt) => crate::selection::render_tag_template(
                                tt,
                                tag,
                                &img.digest,
                                &created,
                            )
                            .map_err(|e| Error::Selection(format!("{}: {e}", img.source)))?,
                            None => tag.clone(),
                        };
                        format!("{}/{repo}:{tag}", t.host)
                    }
                    None => format!("{}/{repo}@{}", t.host, img.digest),
                })
            }
            None => None,
        };
        let count =
            |k: crate::graph::ArtifactKind| img.artifacts.iter().filter(|a| a.kind == k).count();
        images.push(PlannedImage {
            signatures: img
                .artifacts
                .iter()
                .filter(|a| crate::trust::signs_image(a))
                .count(),
            attestations: count(crate::graph::ArtifactKind::Attestation),
            unsigned: crate::gate::unsigned_subjects(img),
            destination,
            entry: img.clone(),
        });
    }
    let carried = |b: &&BlobInfo| !graph.external.contains_key(&b.digest);
    let blob_bytes: u64 = graph.blobs.iter().filter(carried).map(|b| b.size).sum();
    let manifest_bytes: u64 = graph.manifests.values().map(|m| m.bytes.len() as u64).sum();
    let plan = Plan {
        images,
        manifests: graph.manifests.len(),
        blobs: graph.blobs.iter().filter(carried).count(),
        blob_bytes,
        external_blobs,
        external_bytes,
        total_bytes: blob_bytes + manifest_bytes,
        policy: verdicts,
        warnings,
        would_fail: failure.as_ref().map(|e| e.to_string()),
    };
    Ok((plan, failure))
}
