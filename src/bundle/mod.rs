//! The bundle: one zstd-compressed tar of an OCI image layout, with our
//! bundle index first and a zstd seek table last. See docs/bundle-format.md.

pub mod frames;
mod index;
mod reader;
mod writer;

pub use index::*;
pub use reader::{member_error, read_stream, read_whole, SeekableBundle, StreamEvent};
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
    #[error("bundle {bundle}: {what} {digest} is referenced but not in the bundle")]
    Missing {
        bundle: String,
        what: String,
        digest: Digest,
    },
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
