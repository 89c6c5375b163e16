//! The bundle: one zstd-compressed tar of an OCI image layout, with our
//! bundle index first and a zstd seek table last. See docs/bundle-format.md.

//!
//! Sections of docs/bundle-format.md and where they live: §1–3 (tar, zstd
//! frames, seek table) `frames.rs`, `writer.rs`, `reader.rs`; §2 member
//! order and §4 the bundle index `index.rs`; §5 `index.json` is the OCI
//! layout's (`crate::layout`); §6 reader checks `reader.rs` and
//! `source.rs`; the output file rules (temp, fsync, rename, `.sha256`,
//! `.sig`) `sink.rs`.

pub mod frames;
mod index;
mod reader;
mod sink;
mod source;
pub mod volumes;
mod writer;

pub use index::*;
pub use reader::{
    member_error, parse_index, read_index_only, read_one_volume, read_stream, read_whole,
    read_whole_members, ReadCounts, SeekableBundle, StreamEvent,
};
pub use sink::{
    read_sidecar, sidecar_path, signature_path, write_atomically, BundleSink, Output, WriteOptions,
};
pub use source::BundleSource;
pub use writer::BundleWriter;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("bundle {bundle}: {detail}")]
    Corrupt { bundle: String, detail: String },
    #[error("bundle {bundle}: unexpected member {member:?} ({detail})")]
    UnexpectedMember {
        bundle: String,
        member: String,
        detail: String,
    },
    #[error("bundle {bundle}: member {member} does not match the bundle index: {detail}")]
    MemberMismatch {
        bundle: String,
        member: String,
        detail: String,
    },
    #[error("bundle {bundle}: the bundle index is invalid: {detail}")]
    BadIndex { bundle: String, detail: String },
    #[error("{path} is a directory, not a bundle file (give the volume files, or the bundle)")]
    NotAFile { path: String },
    #[error("{bundle}: volume {volume}: {detail}")]
    ForeignVolume {
        bundle: String,
        volume: u32,
        detail: String,
    },
    #[error("bundle {bundle} has {count} volumes; volume(s) {} not given (given: {given}); give every volume file", .missing.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))]
    MissingVolumes {
        bundle: Digest,
        count: u32,
        missing: Vec<u32>,
        given: String,
    },
    #[error("bundle {bundle}: {what} {digest} is referenced but not in the bundle")]
    Missing {
        bundle: String,
        what: String,
        digest: Digest,
    },
}

impl From<BundleError> for crate::error::Error {
    /// A bundle that cannot be read is an integrity failure, unless the file
    /// itself could not be opened or written.
    fn from(e: BundleError) -> Self {
        let kind = match e {
            BundleError::Io { .. } => crate::error::ErrorKind::Other,
            BundleError::NotAFile { .. } | BundleError::MissingVolumes { .. } => {
                crate::error::ErrorKind::Usage
            }
            _ => crate::error::ErrorKind::Integrity,
        };
        crate::error::Error::Format(crate::error::FormatError {
            kind,
            source: Box::new(e),
        })
    }
}

/// Padded size of a tar member's data.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(512) * 512
}

/// True for the only paths a bundle may hold.
pub fn is_layout_path(path: &str) -> bool {
    path == INDEX_PATH
        || path == "oci-layout"
        || path == "index.json"
        || path
            .strip_prefix("blobs/sha256/")
            .is_some_and(|h| Digest::from_hex(h).is_ok())
}
