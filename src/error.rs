//! The one error type of airlock's operations (export, import, verify,
//! copy, inspect), and the one place that says what kind of failure each
//! is. The CLI turns [`ErrorKind`] into an exit code; nothing matches on
//! message text.

use crate::layout::LayoutError;
use crate::registry::RegistryError;
use crate::trust::TrustError;

/// What kind of failure: decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad arguments or a selection that selects nothing (exit 2).
    Usage,
    /// The bundle or layout is corrupt, tampered with or incomplete (exit 3).
    Integrity,
    /// The content is intact but not trusted: policy or bundle signature (exit 4).
    Policy,
    /// Anything else: network, registry, files (exit 1).
    Other,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A store format's own error (a bundle's), classified by the store.
    #[error(transparent)]
    Format(FormatError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A blob that failed its check (digest, size, its container's framing).
    #[error("{origin}: {blob}: {detail}")]
    Blob {
        origin: String,
        blob: String,
        detail: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// What to copy, or where to, cannot be understood or selects nothing.
    #[error("{0}")]
    Selection(String),
    /// Arguments that cannot work together (a directory given for a file).
    #[error("{0}")]
    Usage(String),
    /// The destination refuses: an output that exists, unsigned images under
    /// --require-signatures, a name selected twice.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Target(String),
    /// `--locked`: a tag points elsewhere than the lock file says.
    #[error("{image} moved: the lock file has {locked}, the registry now has {now}; nothing was written. Review the change, then export without --locked (and --lock to record it)")]
    TagMoved {
        image: String,
        locked: crate::digest::Digest,
        now: crate::digest::Digest,
    },
    /// `--require-signatures` and an image (or its index) carries no signature.
    #[error("{0}")]
    Unsigned(String),
    #[error("tag conflicts at the target, nothing was pushed (use --on-existing-tag=overwrite or skip):\n  {}", .0.join("\n  "))]
    TagConflicts(Vec<String>),
    /// Artifact tags (signatures, attestations, SBOMs, referrers fallback
    /// indexes) whose update the `--on-existing-artifact` rule refuses.
    #[error("artifact tags at the target cannot be updated as the bundle asks, nothing was pushed (--on-existing-artifact=overwrite replaces them, skip keeps the registry's):\n  {}", .0.join("\n  "))]
    ArtifactConflicts(Vec<String>),
    /// An enforcing policy rule rejected images; `outcome` says what was not done.
    #[error("policy not met, {outcome}:\n  {}", .blocked.join("\n  "))]
    Policy {
        outcome: &'static str,
        blocked: Vec<String>,
    },
    #[error("{0}")]
    BundleSignature(String),
    /// Verified intact, but not every image is trusted (the report says which).
    #[error("{0}")]
    NotTrusted(String),
    /// An incremental bundle relies on blobs the destination does not have.
    #[error("{destination} lacks {} blob(s) this incremental bundle relies on; nothing was pushed. Import the base bundle first (or export a full bundle):\n  {}", .missing.len(), .missing.join("\n  "))]
    BaseMissing {
        destination: String,
        missing: Vec<String>,
    },
    #[error("read-back after push failed: {0}")]
    ReadBack(String),
    #[error("{bundle}: file sha256 {actual} does not match {sidecar} ({expected})")]
    Sidecar {
        bundle: String,
        sidecar: String,
        expected: String,
        actual: String,
    },
    /// A worker task panicked or was cancelled.
    #[error("{what}: internal task failed: {detail}")]
    Task { what: String, detail: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Format(f) => f.kind,
            Error::Graph(_) | Error::Blob { .. } | Error::Sidecar { .. } => ErrorKind::Integrity,
            // A blob that failed its check while it was being uploaded: the
            // source (a bundle) is at fault, not the registry.
            Error::Registry(RegistryError::Integrity { .. }) => ErrorKind::Integrity,
            Error::Registry(RegistryError::Io { source, .. })
                if crate::digest::is_integrity_error(source) =>
            {
                ErrorKind::Integrity
            }
            Error::Layout(e) | Error::Registry(RegistryError::Layout(e)) if e.is_integrity() => {
                ErrorKind::Integrity
            }
            Error::Policy { .. }
            | Error::BundleSignature(_)
            | Error::NotTrusted(_)
            | Error::Unsigned(_) => ErrorKind::Policy,
            Error::Usage(_) => ErrorKind::Usage,
            _ => ErrorKind::Other,
        }
    }

    pub fn io(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_string();
        move |source| Error::Io { path, source }
    }

    pub fn task(what: impl std::fmt::Display) -> impl FnOnce(tokio::task::JoinError) -> Error {
        let what = what.to_string();
        move |e| Error::Task {
            what,
            detail: e.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error of a format module that sits above this one (the bundle): kept
/// whole (downcast `source` to get it back) with the kind its module gave it,
/// so that this module depends on no store.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct FormatError {
    pub kind: ErrorKind,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// An error and its causes as one line, `outer: cause: cause`, each said
/// once. Many errors show their cause in their own message (`"{path}:
/// {source}"`, as thiserror's `{source}` does) and also return it as their
/// `source()`, which every caller walks (exit codes, broken pipes,
/// integrity); printing the whole chain would then say
/// `"stdout: No space left on device (os error 28): No space left on device
/// (os error 28)"`. A cause whose text is already shown is left out.
pub fn chain_text<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in chain {
        let t = e.to_string();
        if !t.is_empty() && !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_said_once() {
        let full = || std::io::Error::from_raw_os_error(28);
        let e = Error::Io {
            path: "stdout".into(),
            source: full(),
        };
        let text = chain_text(std::iter::successors(
            Some(&e as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        ));
        assert_eq!(text, format!("stdout: {}", full()));
        // Through anyhow's context, as the CLI prints it.
        let any = anyhow::Error::new(Error::Registry(RegistryError::Io {
            what: "spool file for blob x".into(),
            source: full(),
        }))
        .context("exporting");
        let text = chain_text(any.chain());
        assert_eq!(text.matches("os error 28").count(), 1, "{text}");
        assert!(
            text.starts_with("exporting: spool file for blob x: "),
            "{text}"
        );
    }
}
