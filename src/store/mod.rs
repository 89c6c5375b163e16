//! Where images are read from and written to. Every place airlock moves
//! images between is a [`Source`], a [`Sink`], or both:
//!
//! | store | source | sink |
//! |---|---|---|
//! | registry (`docker://HOST/REPO`) | [`registry::RegistrySource`] | [`registry::RegistrySink`] |
//! | bundle file / pipe (`B.tar.zst`, `-`) | [`crate::bundle::BundleSource`] | [`crate::bundle::BundleSink`] |
//! | OCI layout directory (`oci:DIR`) | [`dir::DirSource`] | [`dir::DirSink`] |
//! | nothing (verify) | | [`null::NullSink`] |
//!
//! The one engine, [`crate::copy::copy`], moves a resolved [`Graph`] from
//! any source to any sink. Sources hand out blobs as [`Blob`]s that can be
//! opened again from the start (every retry reopens) and that verify
//! their digest as they are read; sinks accept nothing else.
//!
//! The traits return boxed futures rather than being generic: the CLI picks
//! both ends at run time from the user's arguments (`airlock copy SRC DST`),
//! and one allocation per blob is nothing beside the I/O it starts.

pub mod dir;
pub mod discover;
pub mod endpoint;
#[cfg(feature = "test-util")]
pub mod memory;
pub mod null;
pub mod registry;
pub mod resolve;

use crate::body::Blob;
use crate::error::Result;
use crate::graph::{BlobInfo, Graph};
use futures_util::future::BoxFuture;
use std::collections::HashSet;

/// What the caller needs from [`Source::graph`] besides the manifests.
#[derive(Clone, Copy, Debug, Default)]
pub struct GraphRequest {
    /// Read the signature and attestation payloads (small blobs) the policy
    /// checks, into [`Graph::payloads`].
    pub payloads: bool,
}

pub trait Source: Send + Sync {
    /// How errors and reports name this source.
    fn name(&self) -> String;

    /// True when blobs can only be read once, in the source's order (a
    /// bundle on a pipe): [`Source::fetch`] is then called in
    /// [`Graph::blobs`] order, each blob at most once, and skipped blobs
    /// are read past (and verified).
    fn sequential(&self) -> bool {
        false
    }

    /// True when every blob is local and can be read twice cheaply (a bundle
    /// file, a layout directory): callers then check every blob before the
    /// first one reaches a destination.
    fn rereadable(&self) -> bool {
        false
    }

    /// Every image on offer, with every manifest's raw, digest-checked
    /// bytes and the list of blobs they need. Called once, before any blob.
    fn graph(&mut self, req: GraphRequest) -> BoxFuture<'_, Result<Graph>>;

    /// One blob of the graph, ready to be opened (again) and verified.
    fn fetch<'a>(&'a self, graph: &'a Graph, blob: &'a BlobInfo) -> BoxFuture<'a, Result<Blob>>;

    /// One blob for a sink that reads it exactly once, in order, soon (a
    /// bundle being written): a source may hand out a download in progress
    /// instead of a finished copy.
    fn fetch_once<'a>(
        &'a self,
        graph: &'a Graph,
        blob: &'a BlobInfo,
    ) -> BoxFuture<'a, Result<Blob>> {
        self.fetch(graph, blob)
    }

    /// After the last blob: anything the source must still check (the
    /// bundle's end, nothing hidden after it).
    fn finish(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// How a blob reached the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Bytes were written or uploaded.
    Stored,
    /// Mounted from another repository of the same registry: no bytes sent.
    Mounted,
    /// Already there.
    Present,
}

/// The sink's answer to [`Sink::prepare`].
#[derive(Debug, Default)]
pub struct Prepared {
    /// Blobs already at the destination (everywhere they are needed).
    pub present: HashSet<crate::digest::Digest>,
    /// Blobs the destination does not take (a bundle's carried trusted root
    /// is never pushed to a registry); neither moved nor counted.
    pub unwanted: HashSet<crate::digest::Digest>,
    /// Blobs must arrive in exactly this order (a bundle, a tar stream).
    pub order: Option<Vec<crate::digest::Digest>>,
    /// Each blob is read once, in order, as it is put (a bundle): the
    /// engine may hand it downloads in progress ([`Source::fetch_once`]).
    pub reads_once: bool,
}

/// What a sink did, for the reports of every command.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkReport {
    /// Per image, where it landed (`HOST/REPO:TAG`, `oci:DIR:REF`, a bundle path).
    pub destinations: Vec<String>,
    pub manifests_written: usize,
    pub manifests_present: usize,
    pub tags_set: usize,
    pub tags_skipped: Vec<String>,
    /// Artifact tags moved because the new manifest keeps and extends the
    /// registry's (`--on-existing-artifact=merge`).
    pub artifacts_updated: Vec<registry::ArtifactUpdate>,
    /// A file written (bundle): its sha256 and size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileReport>,
    /// The volumes written, when the bundle was cut into volumes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<FileReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileReport {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

pub trait Sink: Send + Sync {
    fn name(&self) -> String;

    /// Once, with the whole graph, after the caller's gate (policy, tag
    /// conflicts) and before any blob: check what the destination holds and
    /// refuse what it must refuse. Nothing is written before this returns.
    fn prepare<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<Prepared>>;

    /// One blob; a registry uploads it once and mounts it wherever else it
    /// is needed (one outcome per target repository).
    fn put_blob<'a>(&'a self, blob: &'a BlobInfo, data: Blob) -> BoxFuture<'a, Result<Vec<Put>>>;

    /// After the last blob: manifests (children first), tags, index files;
    /// a file is completed and renamed into place.
    fn commit<'a>(&'a mut self, graph: &'a Graph) -> BoxFuture<'a, Result<SinkReport>>;
}

/// What resolving images needs of a store that holds manifests by name: a
/// registry, or an OCI layout directory. Resolution (tags, tag patterns,
/// the platform filter, signatures and referrers) is written once, in
/// [`resolve`], over this trait.
pub trait Resolver: Send + Sync {
    /// Where it is, for messages: a registry host, `oci:DIR`.
    fn location(&self) -> String;
    /// A manifest by tag or digest, its digest checked.
    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, std::result::Result<crate::oci::Manifest, crate::registry::RegistryError>>;
    fn list_tags<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Vec<String>, crate::registry::RegistryError>>;
    /// The referrers of `subject`; `None` when the store has no referrers
    /// API (then the `sha256-<hex>` tag fallback is read).
    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        subject: &'a crate::digest::Digest,
    ) -> BoxFuture<
        'a,
        std::result::Result<Option<Vec<crate::oci::Descriptor>>, crate::registry::RegistryError>,
    >;
    /// A blob into `out` (truncated first), its size and digest checked.
    fn fetch_blob<'a>(
        &'a self,
        repo: &'a str,
        blob: &'a crate::oci::Descriptor,
        out: &'a mut tokio::fs::File,
    ) -> BoxFuture<'a, std::result::Result<(), crate::registry::RegistryError>>;
    /// A blob chunk by chunk into `target`, size and digest checked before
    /// it returns; only a registry streams (a layout directory is local).
    fn fetch_blob_chunks<'a>(
        &'a self,
        _repo: &'a str,
        blob: &'a crate::oci::Descriptor,
        _target: &'a mut dyn crate::registry::ChunkTarget,
    ) -> BoxFuture<'a, std::result::Result<(), crate::registry::RegistryError>> {
        Box::pin(async move {
            Err(crate::registry::RegistryError::Protocol {
                what: format!("blob {}", blob.digest),
                detail: format!("{} cannot stream blobs", self.location()),
            })
        })
    }
}

impl Resolver for crate::registry::Registry {
    fn location(&self) -> String {
        self.host().to_string()
    }
    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, std::result::Result<crate::oci::Manifest, crate::registry::RegistryError>>
    {
        Box::pin(crate::registry::Registry::get_manifest(
            self, repo, reference,
        ))
    }
    fn list_tags<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Vec<String>, crate::registry::RegistryError>> {
        Box::pin(crate::registry::Registry::list_tags(self, repo))
    }
    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        subject: &'a crate::digest::Digest,
    ) -> BoxFuture<
        'a,
        std::result::Result<Option<Vec<crate::oci::Descriptor>>, crate::registry::RegistryError>,
    > {
        Box::pin(crate::registry::Registry::referrers(self, repo, subject))
    }
    fn fetch_blob<'a>(
        &'a self,
        repo: &'a str,
        blob: &'a crate::oci::Descriptor,
        out: &'a mut tokio::fs::File,
    ) -> BoxFuture<'a, std::result::Result<(), crate::registry::RegistryError>> {
        Box::pin(async move {
            let hidden = crate::progress::Progress::hidden();
            crate::registry::Registry::fetch_blob(self, repo, blob, out, &hidden).await
        })
    }
    fn fetch_blob_chunks<'a>(
        &'a self,
        repo: &'a str,
        blob: &'a crate::oci::Descriptor,
        target: &'a mut dyn crate::registry::ChunkTarget,
    ) -> BoxFuture<'a, std::result::Result<(), crate::registry::RegistryError>> {
        Box::pin(crate::registry::Registry::fetch_blob_chunks(
            self, repo, blob, target,
        ))
    }
}
