//! airlock: carry signed, multi-arch container images across an air gap.
//!
//! The CLI (`src/main.rs`) is a thin layer over this library; see
//! `docs/architecture.md` for how the modules fit together.

pub mod bundle;
pub mod digest;
pub mod export;
pub mod fixtures;
pub mod graph;
pub mod import;
pub mod inspect;
pub mod layout;
pub mod oci;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod selection;
pub mod signatures;
pub mod trust;
pub mod verify;
