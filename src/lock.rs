//! Lock files: every tag an export resolved, with the digest it pointed to
//! and the platforms kept. `export --lock FILE` writes one (plain JSON a
//! reviewer can read and commit); `export --locked FILE` exports exactly
//! what it lists and refuses a tag that has moved since (vendors promise
//! never to move a version tag; a lock makes the promise checkable).

use crate::digest::Digest;
use crate::graph::Graph;
use crate::reference::Reference;
use crate::selection::{ImageSelection, TagRule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lock format's version (a reader refuses a newer one).
pub const LOCK_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockFile {
    pub lock_version: u32,
    pub images: Vec<LockedImage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockedImage {
    /// The selection handle (`name:` in the selection file).
    pub name: String,
    /// A registry host, or `oci:DIR` for a layout directory.
    pub registry: String,
    pub repository: String,
    /// Absent for an image selected by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// What the tag pointed to (the vendor's index for a multi-arch image).
    pub digest: Digest,
    /// The platforms kept; empty for a single-platform image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_template: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_platform: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock file {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("lock file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl LockFile {
    /// What a resolved graph selected. `names` are the handles of the
    /// selections, by image (as [`Graph::images`]).
    pub fn from_graph(graph: &Graph, selections: &[ImageSelection]) -> LockFile {
        let images = graph
            .images
            .iter()
            .map(|img| {
                let sel = selections.iter().find(|s| {
                    s.repo.registry == img.registry && s.repo.repository == img.repository
                });
                LockedImage {
                    name: sel
                        .map(|s| s.name.clone())
                        .unwrap_or_else(|| img.repository.clone()),
                    registry: img.registry.clone(),
                    repository: img.repository.clone(),
                    tag: img.tag.clone(),
                    digest: img
                        .resolved_digest
                        .clone()
                        .unwrap_or_else(|| img.source_digest.clone()),
                    platforms: img
                        .platforms
                        .iter()
                        .filter_map(|p| p.platform.clone())
                        .collect(),
                    target: img.target.clone(),
                    tag_template: img.tag_template.clone(),
                    single_platform: img.platform_of.is_some(),
                }
            })
            .collect();
        LockFile {
            lock_version: LOCK_VERSION,
            images,
        }
    }

    pub fn write(&self, path: &Path) -> crate::error::Result<()> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        crate::bundle::write_atomically(path, &text)
    }

    /// JSON, or the same keys in YAML (a reviewer may reformat it).
    pub fn read(path: &Path) -> Result<LockFile, LockError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            path: name.clone(),
            source,
        })?;
        let err = |detail: String| LockError::Read {
            path: name.clone(),
            detail,
        };
        let lock: LockFile = if text.trim_start().starts_with('{') {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            serde_saphyr::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        if lock.lock_version > LOCK_VERSION {
            return Err(err(format!(
                "lockVersion {} is newer than this airlock reads ({LOCK_VERSION})",
                lock.lock_version
            )));
        }
        if lock.images.is_empty() {
            return Err(err("no images".into()));
        }
        Ok(lock)
    }

    /// Selections of exactly the locked tags, each pinned to its digest;
    /// images of one repository with the same options share a selection
    /// (one tag listing per repository).
    pub fn selections(&self, path: &Path) -> Result<Vec<ImageSelection>, LockError> {
        let err = |detail: String| LockError::Read {
            path: path.display().to_string(),
            detail,
        };
        type Key = (
            String,
            String,
            Vec<String>,
            Option<String>,
            Option<String>,
            bool,
        );
        let mut groups: BTreeMap<Key, ImageSelection> = BTreeMap::new();
        let mut order: Vec<Key> = Vec::new();
        for (i, img) in self.images.iter().enumerate() {
            let platforms = img
                .platforms
                .iter()
                .map(|p| {
                    crate::oci::Platform::parse(p).ok_or_else(|| {
                        err(format!(
                            "images[{i}]: platform {p:?} is not os/arch[/variant]"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(t) = img
                .tag
                .as_deref()
                .filter(|t| !crate::reference::is_valid_tag(t))
            {
                return Err(err(format!("images[{i}]: {t:?} is not a valid tag")));
            }
            let key: Key = (
                img.registry.clone(),
                img.repository.clone(),
                img.platforms.clone(),
                img.target.clone(),
                img.tag_template.clone(),
                img.single_platform,
            );
            let sel = groups.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                ImageSelection {
                    repo: Reference {
                        registry: img.registry.clone(),
                        repository: img.repository.clone(),
                        tag: None,
                        digest: None,
                    },
                    tags: vec![],
                    tag_pattern: None,
                    digests: vec![],
                    platforms: platforms.clone(),
                    target: img.target.clone(),
                    layout: img.registry.strip_prefix("oci:").map(PathBuf::from),
                    name: img.name.clone(),
                    rule: TagRule::default(),
                    optional: false,
                    single_platform: img.single_platform,
                    tag_template: img.tag_template.clone(),
                    pinned: BTreeMap::new(),
                }
            });
            match &img.tag {
                Some(t) => {
                    sel.tags.push(t.clone());
                    sel.pinned.insert(t.clone(), img.digest.clone());
                }
                None => sel.digests.push(img.digest.clone()),
            }
        }
        Ok(order
            .into_iter()
            .filter_map(|k| groups.remove(&k))
            .collect())
    }
}
