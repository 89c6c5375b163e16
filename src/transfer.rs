//! `airlock copy SRC DST`: any source to any destination (registry, OCI
//! layout directory, bundle file, stdin/stdout), with the same selection,
//! platform filter, trust and tag rules as export and import, and the same
//! gate: the whole graph resolved, complete and admitted before the first
//! byte is written.

use crate::bundle::{BundleSink, BundleSource, Output, WriteOptions};
use crate::copy::{copy, CopyOptions, CopyReport};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::graph::Graph;
use crate::progress::EventsHandle;
use crate::registry::Registries;
use crate::store::dir::DirSink;
use crate::store::endpoint::{registry_destination, Endpoint};
use crate::store::null::NullSink;
use crate::store::registry::{OnExistingArtifact, OnExistingTag, RegistrySink, RegistrySource};
use crate::store::{GraphRequest, Sink, Source};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct TransferOptions {
    /// Images selected by a selection file, copied with (or instead of) SRC.
    pub selection: Vec<crate::selection::ImageSelection>,
    /// Keep only these platforms (registry and layout sources).
    pub platforms: Vec<String>,
    pub on_existing_tag: OnExistingTag,
    /// Signature, attestation, SBOM and referrers-index tags (registry destinations).
    pub on_existing_artifact: OnExistingArtifact,
    pub require_signatures: bool,
    /// Replace an existing bundle file.
    pub force: bool,
    pub jobs: usize,
    pub policy: Option<Arc<crate::trust::Policy>>,
    /// Require a bundle source's signature: (public key, base64 signature).
    pub bundle_key: Option<(PathBuf, String)>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopiedImage {
    pub source: String,
    pub digest: Digest,
    pub artifacts: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferReport {
    pub images: Vec<CopiedImage>,
    pub destinations: Vec<String>,
    pub copy: CopyReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Vec<crate::trust::Verdict>>,
    pub seconds: f64,
}

enum From<'a> {
    Selected(RegistrySource<'a>),
    Bundle(Box<BundleSource>),
}

impl From<'_> {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            From::Selected(s) => s,
            From::Bundle(b) => b.as_mut(),
        }
    }
}

fn open_source<'a>(
    registries: &'a Registries,
    source: Option<&Endpoint>,
    opts: &TransferOptions,
) -> Result<From<'a>> {
    let Some(source) = source else {
        if opts.selection.is_empty() {
            return Err(Error::Usage("nothing to copy: give SRC or --file".into()));
        }
        let sel = opts.selection.clone();
        return Ok(From::Selected(RegistrySource::new(
            registries, sel, opts.jobs, None,
        )?));
    };
    let bundle = matches!(source, Endpoint::Bundle(_) | Endpoint::Stdio);
    if bundle && !(opts.platforms.is_empty() && opts.selection.is_empty()) {
        return Err(Error::Usage(
            "--platform and --file select at registries or layout directories; a bundle is copied as it is".into(),
        ));
    }
    Ok(match source {
        Endpoint::Bundle(p) => From::Bundle(Box::new(BundleSource::open_file(p)?)),
        Endpoint::Stdio => From::Bundle(Box::new(BundleSource::stream_unhashed(
            Box::new(std::io::stdin()),
            "stdin",
        ))),
        other => {
            let r = other.source_ref().unwrap_or_default();
            let mut sel = crate::selection::from_refs(&[r], &opts.platforms)
                .map_err(|e| Error::Selection(e.to_string()))?;
            sel.extend(opts.selection.iter().cloned());
            From::Selected(RegistrySource::new(registries, sel, opts.jobs, None)?)
        }
    })
}

/// One image when a destination names exactly one.
fn single_image<'g>(graph: &'g mut Graph, dest: &str) -> Result<&'g mut crate::graph::ImageEntry> {
    if graph.images.len() != 1 {
        return Err(Error::Selection(format!(
            "{dest} names one image, the source has {}: name a repository template (docker://HOST/PATH/{{repo}}) or a directory without ref name",
            graph.images.len()
        )));
    }
    Ok(&mut graph.images[0])
}

/// Names the destination gives: an exact repository and tag, a ref name.
fn rename_for(graph: &mut Graph, dest: &Endpoint) -> Result<()> {
    match dest {
        Endpoint::Registry(r) => {
            let d = registry_destination(r)?;
            if d.exact {
                let repos: std::collections::HashSet<&str> =
                    graph.images.iter().map(|i| i.repository.as_str()).collect();
                if repos.len() > 1 {
                    return Err(Error::Selection(format!(
                        "{r} is one repository, the source has images of {}: use docker://HOST/PATH/{{repo}}",
                        repos.len()
                    )));
                }
            }
            if let Some(tag) = d.tag {
                let img = single_image(graph, r)?;
                img.ref_name = Some(crate::layout::ref_name(&img.repository, &tag));
                img.tag = Some(tag);
            }
        }
        Endpoint::Layout {
            reference: Some(name),
            dir,
        } => {
            let img = single_image(graph, &format!("oci:{}:{name}", dir.display()))?;
            img.ref_name = Some(name.clone());
        }
        _ => {}
    }
    Ok(())
}

fn bundle_signature(from: &From<'_>, opts: &TransferOptions) -> Result<()> {
    if let (From::Bundle(b), Some((key, sig))) = (from, &opts.bundle_key) {
        if let Some((_, digest)) = b.index() {
            crate::trust::verify_bundle_signature(key, digest, sig)
                .map_err(|e| Error::BundleSignature(e.to_string()))?;
        }
    }
    Ok(())
}

/// Copy every image `source` offers to `destination`.
pub async fn transfer(
    registries: &Registries,
    source: Option<&Endpoint>,
    destination: &Endpoint,
    opts: &TransferOptions,
    events: &EventsHandle,
) -> Result<TransferReport> {
    let started = std::time::Instant::now();
    let mut sink = open_sink(registries, destination, opts)?;
    // One writer per bundle file, as for export (a copy keeps no blobs to
    // resume from, so its state directory holds only the lock).
    let guard = match destination {
        Endpoint::Bundle(p) => Some(crate::output::OutputGuard::acquire(p)?),
        _ => None,
    };
    let mut from = open_source(registries, source, opts)?;
    let request = GraphRequest {
        payloads: opts.policy.is_some(),
    };
    let name = from.source().name();
    let mut graph = from.source().graph(request).await?;
    bundle_signature(&from, opts)?;
    rename_for(&mut graph, destination)?;
    let gate = Gate {
        policy: opts.policy.as_deref(),
        require_signatures: opts.require_signatures,
        outcome: "nothing was copied",
        names_unique: matches!(
            destination,
            Endpoint::Layout { .. } | Endpoint::Bundle(_) | Endpoint::Stdio
        ),
    };
    let passed = gate.check(&graph, &name, events.0.as_ref())?;
    if from.source().rereadable() {
        // Local blobs: check every one before the first reaches the destination.
        let mut null = NullSink::new(&name);
        let check = CopyOptions::new(opts.jobs, "verify", events.clone());
        copy(from.source(), &graph, &mut null, &check).await?;
    }
    let copy_opts = CopyOptions::new(opts.jobs, "copy", events.clone());
    let copied = copy(from.source(), &graph, sink.as_mut(), &copy_opts).await?;
    if let Some(g) = guard {
        g.finish()?;
    }
    Ok(TransferReport {
        images: graph
            .images
            .iter()
            .zip(&passed.graphs)
            .map(|(i, g)| CopiedImage {
                source: i.source.clone(),
                digest: i.digest.clone(),
                artifacts: g.artifacts.len(),
            })
            .collect(),
        destinations: copied.sink.destinations.clone(),
        copy: copied,
        policy: passed.verdicts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn open_sink<'a>(
    registries: &'a Registries,
    destination: &Endpoint,
    opts: &TransferOptions,
) -> Result<Box<dyn Sink + 'a>> {
    let write = WriteOptions {
        force: opts.force,
        queue: opts.jobs.max(1),
        ..Default::default()
    };
    Ok(match destination {
        Endpoint::Registry(r) => {
            let d = registry_destination(r)?;
            Box::new(
                RegistrySink::new(registries, d.target, opts.on_existing_tag)
                    .with_on_existing_artifact(opts.on_existing_artifact)
                    .with_jobs(opts.jobs),
            )
        }
        Endpoint::Layout { dir, .. } => Box::new(DirSink::new(dir, opts.on_existing_tag)),
        Endpoint::Bundle(p) => Box::new(BundleSink::new(Output::File(p.clone()), write)?),
        Endpoint::Stdio => Box::new(BundleSink::new(Output::Stdout, write)?),
    })
}
