//! airlock: carry signed, multi-arch container images across an air gap.
//!
//! The CLI (`src/main.rs`) is a thin layer over this library; see
//! `docs/architecture.md` for how the modules fit together.

#![forbid(unsafe_code)]

pub mod audit;
pub mod base;
pub mod body;
pub mod bundle;
pub mod cache;
pub mod copy;
pub mod diff;
pub mod digest;
pub mod error;
pub mod export;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod gate;
pub mod graph;
pub mod help;
pub mod image;
pub mod import;
pub mod inspect;
pub mod inventory;
pub mod layout;
pub mod lock;
pub mod oci;
pub mod output;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod selection;
pub mod serve;
/// Artifact discovery moved to [`store::discover`]; kept under its old name.
pub use store::discover as signatures;
pub mod store;
pub mod stream;
pub mod time;
pub mod transfer;
pub mod trust;
pub mod verify;
pub mod version;

pub use error::{Error, ErrorKind};
