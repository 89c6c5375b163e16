//! `airlock import`: a bundle into a registry (or an OCI layout directory).
//!
//! Order of trust: the bundle index and every manifest are read and
//! checked, the bundle signature and the policy decided, and (for a file)
//! every member re-hashed, all before the sink is prepared; the registry
//! sink then checks every tag for conflicts before the first blob. Each
//! blob is verified as it streams and its last bytes are held back until
//! the hash matches, so a bad blob is never committed. Then platform
//! manifests, indexes, tags, and finally signatures and referrers.

use crate::bundle::BundleSource;
use crate::copy::{copy, CopyOptions, CopyReport};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::graph::Graph;
use crate::progress::EventsHandle;
use crate::registry::Registries;
use crate::store::null::NullSink;
use crate::store::registry::RegistrySink;
use crate::store::{GraphRequest, Sink, Source};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::store::registry::{ArtifactUpdate, OnExistingArtifact, OnExistingTag, Target};

/// The error of an import (one error type for every operation).
pub type ImportError = Error;

#[derive(Clone)]
pub struct ImportOptions {
    pub target: Target,
    pub on_existing_tag: OnExistingTag,
    /// Signature, attestation, SBOM and referrers-index tags (registry targets).
    pub on_existing_artifact: OnExistingArtifact,
    pub jobs: usize,
    /// Checked before anything is pushed; `None` = digests only.
    pub policy: Option<Arc<crate::trust::Policy>>,
    /// Require a bundle signature: (public key, base64 signature over the bundle index).
    pub bundle_key: Option<(PathBuf, String)>,
    /// Re-hash every member of a bundle file before the first push (two
    /// passes). Without it each blob is verified as it is uploaded (its last
    /// bytes held back until the digest matches) and no manifest or tag is
    /// pushed before every blob of the graph was verified; a corrupt member
    /// can then leave valid blobs of the bundle unreferenced at the target.
    pub verify_first: bool,
}

impl ImportOptions {
    pub fn new(target: Target) -> Self {
        ImportOptions {
            target,
            on_existing_tag: OnExistingTag::Refuse,
            jobs: 6,
            policy: None,
            bundle_key: None,
            verify_first: false,
            on_existing_artifact: Default::default(),
        }
    }
}

fn check_bundle_signature(opts: &ImportOptions, digest: &Digest) -> Result<()> {
    match &opts.bundle_key {
        Some((key, sig)) => crate::trust::verify_bundle_signature(key, digest, sig)
            .map_err(|e| Error::BundleSignature(e.to_string())),
        None => Ok(()),
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    pub bundle_digest: Option<Digest>,
    pub images: Vec<ImportedImage>,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    pub bytes_sent: u64,
    pub bytes_skipped: u64,
    pub manifests_pushed: usize,
    pub manifests_present: usize,
    pub tags_set: usize,
    pub tags_skipped: Vec<String>,
    /// Artifact tags moved to a manifest that keeps and extends the registry's.
    pub artifacts_updated: Vec<ArtifactUpdate>,
    /// Per image, the policy decision (when a policy or keys were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<crate::trust::Verdict>>,
    pub seconds: f64,
    pub mode: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportedImage {
    pub source: String,
    pub target: String,
    pub digest: Digest,
    pub artifacts: usize,
}

/// Import a bundle file into the registry of `opts.target`.
pub async fn import_file(
    registries: &Registries,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport> {
    let mut sink = RegistrySink::new(registries, opts.target.clone(), opts.on_existing_tag)
        .with_on_existing_artifact(opts.on_existing_artifact)
        .with_jobs(opts.jobs);
    import_file_into(path, &mut sink, opts, &EventsHandle::default()).await
}

/// Import from a stream (`-` = stdin): one pass.
pub async fn import_stream(
    registries: &Registries,
    input: Box<dyn Read + Send>,
    name: &str,
    opts: &ImportOptions,
) -> Result<ImportReport> {
    let mut sink = RegistrySink::new(registries, opts.target.clone(), opts.on_existing_tag)
        .with_on_existing_artifact(opts.on_existing_artifact)
        .with_jobs(opts.jobs);
    import_into(
        BundleSource::stream_unhashed(input, name),
        &mut sink,
        opts,
        &EventsHandle::default(),
    )
    .await
}

/// A bundle file into any sink. A file without seek table is read twice:
/// checked whole first (nothing reaches the sink), then streamed.
pub async fn import_file_into(
    path: &Path,
    sink: &mut dyn Sink,
    opts: &ImportOptions,
    events: &EventsHandle,
) -> Result<ImportReport> {
    import_files_into(&[path.to_path_buf()], sink, opts, events).await
}

/// A bundle file, or the volumes of a bundle in any order (directories
/// stand for the bundle files in them), into any sink. Every volume must be
/// there and belong to the bundle before anything is pushed.
pub async fn import_files_into(
    paths: &[std::path::PathBuf],
    sink: &mut dyn Sink,
    opts: &ImportOptions,
    events: &EventsHandle,
) -> Result<ImportReport> {
    let source = BundleSource::open_files(paths)?;
    let path = paths.first().map(|p| p.as_path()).unwrap_or(Path::new("-"));
    if source.is_seekable() {
        return import_into(source, sink, opts, events).await;
    }
    events.0.note(&format!(
        "{} has no seek table: verifying it whole, then reading it as a stream",
        path.display()
    ));
    check_whole(source).await?;
    import_into(BundleSource::open_file(path)?, sink, opts, events).await
}

/// Read a one-pass bundle to its end, every member checked, nothing kept.
async fn check_whole(mut source: BundleSource) -> Result<Graph> {
    let graph = source.graph(GraphRequest::default()).await?;
    graph.walk(&source.name())?;
    let mut null = NullSink::reading_past(&source.name());
    copy(&mut source, &graph, &mut null, &CopyOptions::default()).await?;
    Ok(graph)
}

/// Any bundle source into any sink, with the import gate.
pub async fn import_into(
    mut source: BundleSource,
    sink: &mut dyn Sink,
    opts: &ImportOptions,
    events: &EventsHandle,
) -> Result<ImportReport> {
    let started = std::time::Instant::now();
    let name = source.name();
    let request = GraphRequest {
        payloads: opts.policy.is_some(),
    };
    let mut graph = source.graph(request).await?;
    let created = source
        .index()
        .map(|(i, _)| i.created.clone())
        .unwrap_or_else(crate::time::creation_time);
    retag(&mut graph, opts.target.tag_template.as_deref(), &created)?;
    let digest = source.index().map(|(_, d)| d.clone());
    if let Some(d) = &digest {
        check_bundle_signature(opts, d)?;
    }
    let gate = Gate {
        policy: opts.policy.as_deref(),
        require_signatures: false,
        outcome: "nothing was pushed",
        names_unique: false,
    };
    let passed = gate.check(&graph, &name, events.0.as_ref())?;
    let mode = match (source.is_seekable(), opts.verify_first) {
        (true, true) => {
            // Re-hash every member in parallel before the first push, so a
            // corrupt member anywhere pushes nothing at all.
            let mut null = NullSink::new(&name);
            let check = CopyOptions::new(cores().min(opts.jobs.max(1)), "verify", events.clone());
            copy(&mut source, &graph, &mut null, &check).await?;
            "seekable, verified first"
        }
        // Every blob hashed once, as it is uploaded; manifests and tags only
        // after the last one was proven (the engine commits last).
        (true, false) => "seekable",
        (false, _) => "stream",
    };
    let copy_opts = CopyOptions::new(opts.jobs, "import", events.clone());
    let copied = copy(&mut source, &graph, sink, &copy_opts).await?;
    Ok(report(
        &graph,
        &passed.graphs,
        copied,
        digest,
        passed.verdicts,
        mode,
        started,
    ))
}

/// Apply tag templates (`--tag-template`, else the image's own from the
/// selection file) to the tags the images get at the destination. Only the
/// image tag changes: digests do not, so signatures (`sha256-<hex>.sig`,
/// named by digest) still verify for the renamed tag.
pub fn retag(graph: &mut Graph, template: Option<&str>, created: &str) -> Result<()> {
    if let Some(t) = template {
        crate::selection::check_tag_template(t)
            .map_err(|e| Error::Usage(format!("--tag-template: {e}")))?;
    }
    let mut seen: std::collections::HashMap<(String, Option<String>, String), Digest> =
        Default::default();
    for img in &mut graph.images {
        let (Some(tag), Some(tmpl)) = (img.tag.clone(), template.or(img.tag_template.as_deref()))
        else {
            continue;
        };
        let new = crate::selection::render_tag_template(tmpl, &tag, &img.digest, created)
            .map_err(|e| Error::Usage(format!("{}: {e}", img.source)))?;
        let key = (img.repository.clone(), img.target.clone(), new.clone());
        if let Some(other) = seen.insert(key, img.digest.clone()) {
            if other != img.digest {
                return Err(Error::Usage(format!(
                    "tag template {tmpl:?} gives {} and another image of {} the same tag {new} ({other} and {}); use {{tag}} or {{digest12}} in it",
                    img.source, img.repository, img.digest
                )));
            }
        }
        img.ref_name = Some(crate::layout::ref_name(&img.repository, &new));
        img.tag = Some(new);
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn report(
    graph: &Graph,
    graphs: &[crate::graph::ImageGraph],
    copied: CopyReport,
    bundle_digest: Option<Digest>,
    policy: Option<Vec<crate::trust::Verdict>>,
    mode: &str,
    started: std::time::Instant,
) -> ImportReport {
    let images = graph
        .images
        .iter()
        .zip(graphs)
        .enumerate()
        .map(|(i, (img, g))| ImportedImage {
            source: img.source.clone(),
            target: copied.sink.destinations.get(i).cloned().unwrap_or_default(),
            digest: img.digest.clone(),
            artifacts: g.artifacts.len(),
        })
        .collect();
    ImportReport {
        bundle_digest,
        images,
        blobs_uploaded: copied.blobs_stored,
        blobs_mounted: copied.blobs_mounted,
        blobs_present: copied.blobs_present,
        bytes_sent: copied.bytes_sent,
        bytes_skipped: copied.bytes_skipped,
        manifests_pushed: copied.sink.manifests_written,
        manifests_present: copied.sink.manifests_present,
        tags_set: copied.sink.tags_set,
        tags_skipped: copied.sink.tags_skipped,
        artifacts_updated: copied.sink.artifacts_updated,
        policy,
        seconds: started.elapsed().as_secs_f64(),
        mode: mode.into(),
    }
}
