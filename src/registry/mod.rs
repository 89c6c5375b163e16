//! A focused OCI distribution (v2) client on reqwest + tokio.
//!
//! Why our own and not `oci-client`: we need raw manifest bytes on every
//! path (its typed push re-serialises and changes digests), whole-blob
//! retries that restart the hash, cross-repository mounts that treat a 202
//! as "upload instead", token scopes covering mount sources, docker
//! `config.json` / credential helpers, per-registry TLS, and a
//! streaming upload whose last byte is held back until its digest is
//! proven. None of these fit its API (see docs/architecture.md).

pub mod auth;
mod client;

pub use auth::{Credential, CredentialStore};
pub use client::{
    BlobBody, BlobIntegrityError, ChunkTarget, LowSpeed, PushOutcome, RawManifest, Registries,
    Registry, RegistryConfig, RetryPolicy,
};

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {host}: {detail}")]
    Connect { host: String, detail: String },
    #[error("TLS failure talking to {host}: {detail}. If the registry uses a private CA, pass it with --ca-file; for a test registry, --insecure {host}")]
    Tls { host: String, detail: String },
    #[error("authentication to {host} failed for {scope}: {detail}. Check the credentials (docker login, REGISTRY_AUTH_FILE, or --username with --password-stdin)")]
    Auth {
        host: String,
        scope: String,
        detail: String,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what}: digest mismatch, expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: registry answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: {detail}")]
    Protocol { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} stalled: {detail}; the link or the registry is too slow (--low-speed-limit, --low-speed-time)")]
    Stalled { what: String, detail: String },
    #[error("{what}: {detail} (--request-timeout)")]
    Timeout { what: String, detail: String },
    #[error("{what}: refused by the blob source: {detail}")]
    Integrity { what: String, detail: String },
    #[error("{what}: {source}")]
    Manifest {
        what: String,
        source: crate::oci::ManifestError,
    },
    #[error(transparent)]
    Credentials(#[from] auth::CredentialError),
    /// An OCI layout directory read as a store of manifests.
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
}
