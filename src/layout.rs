//! The OCI image layout files (`oci-layout`, `index.json`), written inside
//! a bundle and into layout directories.
//!
//! `index.json` names each tagged image `REPOSITORY:TAG` in
//! `org.opencontainers.image.ref.name`, which is what skopeo's
//! `oci:DIR:REF` selects on (it splits at the first colon after DIR), so
//! `skopeo copy oci:DIR:vendor/operator:1.2.3 docker://…` works on an
//! extracted bundle. Cosign signature tags are listed the same way.

use crate::digest::Digest;
use crate::image::{ArtifactKind, ImageEntry};
use crate::oci::ANNOTATION_REF_NAME;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const OCI_LAYOUT_BYTES: &[u8] = b"{\"imageLayoutVersion\":\"1.0.0\"}";

/// A descriptor of `index.json` (what we write; unknown fields of an
/// existing index.json are not kept when a layout directory is updated).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LayoutDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl LayoutDescriptor {
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(ANNOTATION_REF_NAME)
            .map(String::as_str)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<LayoutDescriptor>,
}

/// The ref name of a tag in a repository, as written in `index.json`.
pub fn ref_name(repository: &str, tag: &str) -> String {
    format!("{repository}:{tag}")
}

/// Build `index.json`: every image (tagged ones named), then every
/// tagged artifact, then untagged referrers, each once.
pub fn index_json(images: &[ImageEntry]) -> Vec<u8> {
    index_bytes(entries(images))
}

/// `index.json` listing `manifests`.
pub fn index_bytes(manifests: Vec<LayoutDescriptor>) -> Vec<u8> {
    let idx = LayoutIndex {
        schema_version: 2,
        media_type: Some(crate::oci::OCI_INDEX.to_string()),
        manifests,
    };
    let mut v = serde_json::to_vec(&idx).expect("plain structs always serialise");
    v.push(b'\n');
    v
}

/// The descriptors of `index.json` for `images`.
pub fn entries(images: &[ImageEntry]) -> Vec<LayoutDescriptor> {
    let mut manifests = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |media_type: &str, digest: &Digest, size: u64, name: Option<String>| {
        if !seen.insert((digest.clone(), name.clone())) {
            return;
        }
        let mut annotations = BTreeMap::new();
        if let Some(n) = name {
            annotations.insert(ANNOTATION_REF_NAME.to_string(), n);
        }
        manifests.push(LayoutDescriptor {
            media_type: media_type.to_string(),
            digest: digest.clone(),
            size,
            annotations,
        });
    };
    for img in images {
        push(&img.media_type, &img.digest, img.size, img.ref_name.clone());
    }
    for img in images {
        for a in &img.artifacts {
            let name = a.tag.as_ref().map(|t| ref_name(&img.repository, t));
            if name.is_some() || a.kind == ArtifactKind::Referrer {
                push(&a.media_type, &a.digest, a.size, name);
            }
        }
    }
    manifests
}

/// What can be wrong with an OCI layout directory, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error("{dir} is not an OCI image layout: {detail}")]
    NotALayout { dir: String, detail: String },
    #[error("{path} is a symbolic link; a layout directory is read without following links")]
    Symlink { path: String },
    #[error("layout {dir}: {what} {digest} is not in the directory")]
    Missing {
        dir: String,
        what: String,
        digest: Digest,
    },
    #[error("layout {dir}: blob {digest} does not match its name: {detail}")]
    Mismatch {
        dir: String,
        digest: Digest,
        detail: String,
    },
    #[error("layout {dir}: {what} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        dir: String,
        what: String,
        size: u64,
        limit: u64,
    },
    #[error("layout {dir}: no image named {name:?} in index.json (it has: {have})")]
    NoSuchRef {
        dir: String,
        name: String,
        have: String,
    },
    #[error("layout {dir}: names already point to other content, nothing was written (use --on-existing-tag=overwrite or skip):\n  {}", .conflicts.join("\n  "))]
    Conflicts { dir: String, conflicts: Vec<String> },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl LayoutError {
    /// Corrupt or hostile content, as opposed to a missing name or a file error.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            LayoutError::Symlink { .. }
                | LayoutError::Missing { .. }
                | LayoutError::Mismatch { .. }
                | LayoutError::TooLarge { .. }
                | LayoutError::NotALayout { .. }
        )
    }
}

/// Refuse a path that is a symlink (or whose parents under `root` are).
pub fn check_no_symlinks(root: &Path, rel: &[&str]) -> std::result::Result<PathBuf, LayoutError> {
    let mut p = root.to_path_buf();
    for part in rel {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(LayoutError::Symlink {
                    path: p.display().to_string(),
                })
            }
            _ => {}
        }
    }
    Ok(p)
}

/// Open a regular file without following a symlink at its last component.
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// How a ref name maps to (repository, tag): `REPO:TAG` as airlock and
/// `skopeo copy … oci:DIR:REPO:TAG` write it, or a bare `TAG` (then the
/// repository is named after the directory).
pub fn split_ref_name(name: &str, default_repo: &str) -> (String, String) {
    if let Some((repo, tag)) = name.rsplit_once(':') {
        if crate::reference::is_valid_repository(repo) && crate::reference::is_valid_tag(tag) {
            return (repo.to_string(), tag.to_string());
        }
    }
    (default_repo.to_string(), name.to_string())
}

/// A repository name for a directory's bare ref names: its base name, made valid.
pub fn default_repository(dir: &Path) -> String {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().to_lowercase()))
        .unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    if crate::reference::is_valid_repository(&cleaned) {
        cleaned
    } else {
        "image".into()
    }
}

pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let f = open_nofollow(path)?;
    let len = f.metadata()?.len();
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is {len} bytes, more than {limit}", path.display()),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

/// The `(repository, tag)` of every named image of a layout directory's
/// `index.json` (not the `sha256-…` artifact names), and the repository
/// bare names stand for.
pub fn named_images(dir: &Path) -> Result<(String, Vec<(String, String)>), LayoutError> {
    let not_layout = |detail: String| LayoutError::NotALayout {
        dir: dir.display().to_string(),
        detail,
    };
    let path = check_no_symlinks(dir, &["index.json"])?;
    let bytes =
        read_limited(&path, MAX_INDEX_JSON).map_err(|e| not_layout(format!("index.json: {e}")))?;
    let index: LayoutIndex =
        serde_json::from_slice(&bytes).map_err(|e| not_layout(format!("index.json: {e}")))?;
    let default_repo = default_repository(dir);
    let names = index
        .manifests
        .iter()
        .filter_map(|d| d.ref_name())
        .map(|n| split_ref_name(n, &default_repo))
        .filter(|(_, tag)| !tag.starts_with("sha256-"))
        .collect();
    Ok((default_repo, names))
}

/// `index.json` is read into memory; a hostile one may not be huge.
pub const MAX_INDEX_JSON: u64 = 64 << 20;
