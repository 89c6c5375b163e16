//! What a registry already holds, as a small file: every manifest and blob
//! digest (with its size) of every repository, or of those under a prefix.
//! The disconnected side takes it (`airlock inventory`) and carries it back,
//! so the next export can leave out what the site has.
//!
//! The file only ever removes blobs from a later export, so when in doubt an
//! entry is left out (a manifest that cannot be read is noted and skipped),
//! never guessed: a missing entry costs bytes, a wrong one a broken import.

use crate::digest::Digest;
use crate::error::ErrorKind;
use crate::progress::EventsHandle;
use crate::registry::{Registry, RegistryError};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MEDIA_TYPE: &str = "application/vnd.airlock.inventory.v1+json";
pub const SCHEMA: u32 = 1;
/// Largest inventory file `load` reads: about two million entries.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Most repositories `take` lists from a catalog.
pub const MAX_REPOSITORIES: usize = 100_000;
/// Most manifests one index may list (a referrers fallback index can be
/// long, a real image index never is).
const MAX_INDEX_ENTRIES: usize = 10_000;

/// A digest and its size.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryBlob {
    pub digest: Digest,
    pub size: u64,
}

/// The inventory file (`application/vnd.airlock.inventory.v1+json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    pub schema: u32,
    pub media_type: String,
    /// The tool that wrote it, e.g. `airlock 0.1.0`.
    pub tool: String,
    /// RFC 3339 (`SOURCE_DATE_EPOCH` when set).
    pub created: String,
    /// The registry host it describes.
    pub registry: String,
    /// Only repositories under this path were listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Repositories listed.
    pub repositories: usize,
    /// Configs, layers and artifact blobs: sorted by digest, each once.
    pub blobs: Vec<InventoryBlob>,
    /// Manifests and indexes: sorted by digest, each once.
    pub manifests: Vec<InventoryBlob>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("inventory {path} is {size} bytes, more than the {limit}-byte limit: not an inventory airlock wrote")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("inventory {path} is not a valid airlock inventory: {detail}. Take it again with `airlock inventory`")]
    Invalid { path: String, detail: String },
    #[error("inventory {path}: {detail}")]
    Signature { path: String, detail: String },
    #[error("inventory of {registry}: {detail}")]
    Take { registry: String, detail: String },
}

impl From<InventoryError> for crate::error::Error {
    /// A file that is not an inventory is corrupt input; a bad signature is
    /// a policy failure; reading the file or the registry is neither.
    fn from(e: InventoryError) -> Self {
        let kind = match e {
            InventoryError::TooLarge { .. } | InventoryError::Invalid { .. } => {
                ErrorKind::Integrity
            }
            InventoryError::Signature { .. } => ErrorKind::Policy,
            InventoryError::Io { .. } | InventoryError::Take { .. } => ErrorKind::Other,
        };
        crate::error::Error::Format(crate::error::FormatError {
            kind,
            source: Box::new(e),
        })
    }
}

pub type Result<T, E = crate::error::Error> = std::result::Result<T, E>;

impl Inventory {
    /// Pretty JSON and a newline; the same inventory gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Every digest the registry holds: blobs and manifests.
    pub fn blob_digests(&self) -> HashSet<Digest> {
        self.blobs
            .iter()
            .chain(&self.manifests)
            .map(|b| b.digest.clone())
            .collect()
    }
}

/// Sorted by digest, each digest once (the first size seen).
fn sorted_unique(mut v: Vec<InventoryBlob>) -> Vec<InventoryBlob> {
    v.sort();
    v.dedup_by(|a, b| a.digest == b.digest);
    v
}

/// Read an inventory file (at most [`MAX_FILE_BYTES`], checked before
/// reading) and check it is one: media type, schema, every digest valid.
/// Returns it with the sha256 of the file's bytes. Signatures are not
/// checked here (see [`verify_signature`]).
pub fn load(path: &Path) -> Result<(Inventory, Digest)> {
    use std::io::Read;
    let name = path.display().to_string();
    let io = |source| InventoryError::Io {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(InventoryError::TooLarge {
            path: name,
            size,
            limit: MAX_FILE_BYTES,
        }
        .into());
    }
    // The length may change under us (a FIFO reports 0): read one byte past the limit.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(InventoryError::TooLarge {
            path: name,
            size: bytes.len() as u64,
            limit: MAX_FILE_BYTES,
        }
        .into());
    }
    let inv = parse(&bytes).map_err(|detail| InventoryError::Invalid {
        path: name.clone(),
        detail,
    })?;
    Ok((inv, Digest::of(&bytes)))
}

fn parse(bytes: &[u8]) -> std::result::Result<Inventory, String> {
    // The media type first, so that another JSON file is named as such.
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(MEDIA_TYPE) => {}
        Some(other) => return Err(format!("media type {other:?}, expected {MEDIA_TYPE:?}")),
        None => return Err(format!("no mediaType (expected {MEDIA_TYPE:?})")),
    }
    let mut inv: Inventory = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if inv.schema != SCHEMA {
        return Err(format!(
            "schema {}, this airlock reads schema {SCHEMA}",
            inv.schema
        ));
    }
    if inv.registry.is_empty() {
        return Err("no registry named".into());
    }
    inv.blobs = sorted_unique(std::mem::take(&mut inv.blobs));
    inv.manifests = sorted_unique(std::mem::take(&mut inv.manifests));
    Ok(inv)
}

/// Check `PATH.sig` (written by `airlock inventory --sign-key`, the bundle
/// signature format: base64 DER ECDSA P-256 over the file's bytes) with
/// each key in turn; returns the key that verifies it.
pub fn verify_signature(path: &Path, bytes: &[u8], keys: &[PathBuf]) -> Result<PathBuf> {
    use std::io::Read;
    let sig_path = crate::bundle::signature_path(path);
    let err = |detail: String| InventoryError::Signature {
        path: path.display().to_string(),
        detail,
    };
    let mut sig = String::new();
    std::fs::File::open(&sig_path)
        .and_then(|f| f.take(4096).read_to_string(&mut sig))
        .map_err(|e| {
            err(format!(
                "cannot read its signature {}: {e}",
                sig_path.display()
            ))
        })?;
    let digest = Digest::of(bytes);
    let mut failures = Vec::new();
    for key in keys {
        match crate::trust::verify_bundle_signature(key, &digest, sig.trim()) {
            Ok(()) => return Ok(key.clone()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if failures.is_empty() {
        failures.push("no key given".into());
    }
    Err(err(format!(
        "the signature {} does not verify: {}",
        sig_path.display(),
        failures.join("; ")
    ))
    .into())
}

/// Take the inventory of `registry` (every repository of its catalog, or
/// those at or under `prefix`): every tag of every repository (cosign and
/// referrers fallback tags included), every manifest those tags lead to
/// (index children, referrers the registry's API lists), and every blob
/// those manifests name. `jobs` requests at once.
pub async fn take(
    registry: &Registry,
    prefix: Option<&str>,
    jobs: usize,
    events: &EventsHandle,
) -> Result<Inventory> {
    let prefix = prefix
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty());
    if let Some(p) = prefix {
        if !crate::reference::is_valid_repository(p) {
            return Err(InventoryError::Take {
                registry: registry.host().to_string(),
                detail: format!("{p:?} is not a valid repository path"),
            }
            .into());
        }
    }
    let repos: Vec<String> = registry
        .catalog(MAX_REPOSITORIES)
        .await?
        .into_iter()
        .filter(|r| match prefix {
            Some(p) => r == p || r.starts_with(&format!("{p}/")),
            None => true,
        })
        .collect();
    let jobs = jobs.max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(jobs));
    let walks = futures_util::stream::iter(repos.iter())
        .map(|repo| walk_repository(registry, repo, &permits, jobs, events))
        .buffer_unordered(jobs)
        .collect::<Vec<_>>()
        .await;
    let mut blobs = BTreeMap::new();
    let mut manifests = BTreeMap::new();
    for walk in walks {
        let (b, m) = walk?;
        blobs.extend(b);
        manifests.extend(m);
    }
    let list = |m: BTreeMap<Digest, u64>| {
        m.into_iter()
            .map(|(digest, size)| InventoryBlob { digest, size })
            .collect()
    };
    Ok(Inventory {
        schema: SCHEMA,
        media_type: MEDIA_TYPE.into(),
        tool: format!("airlock {}", env!("CARGO_PKG_VERSION")),
        created: crate::time::creation_time(),
        registry: registry.host().to_string(),
        prefix: prefix.map(str::to_string),
        repositories: repos.len(),
        blobs: list(blobs),
        manifests: list(manifests),
    })
}

type Sizes = BTreeMap<Digest, u64>;

/// A manifest that cannot be read as one (unsupported, foreign layers) or
/// is gone (deleted since the tag list) is left out with a note; anything
/// else (network, auth) stops the inventory.
fn skippable(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::NotFound { .. } | RegistryError::Manifest { .. }
    )
}

/// One repository: its tags, then the manifests they lead to, wave by wave
/// (every wave's requests at once, within the shared permits).
async fn walk_repository(
    reg: &Registry,
    repo: &str,
    permits: &tokio::sync::Semaphore,
    jobs: usize,
    events: &EventsHandle,
) -> Result<(Sizes, Sizes)> {
    let tags = {
        let _p = permits.acquire().await;
        reg.list_tags(repo).await?
    };
    let mut blobs = Sizes::new();
    let mut manifests = Sizes::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut wave: Vec<String> = tags;
    while !wave.is_empty() {
        wave.retain(|r| seen.insert(r.clone()));
        let fetched: Vec<_> = futures_util::stream::iter(wave.drain(..))
            .map(|reference| async move {
                let _p = permits.acquire().await;
                let got = reg.get_manifest(repo, &reference).await;
                let referrers = match &got {
                    Ok(m) => reg
                        .referrers(repo, &m.digest)
                        .await
                        .map(Option::unwrap_or_default),
                    Err(_) => Ok(vec![]),
                };
                (reference, got, referrers)
            })
            .buffer_unordered(jobs)
            .collect()
            .await;
        for (reference, got, referrers) in fetched {
            let m = match got {
                Ok(m) => m,
                Err(e) if skippable(&e) => {
                    events.0.note(&format!(
                        "inventory: left out {}/{repo}:{reference}: {e}",
                        reg.host()
                    ));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            seen.insert(m.digest.to_string());
            manifests.insert(m.digest.clone(), m.bytes.len() as u64);
            let view = m.view().map_err(|source| RegistryError::Manifest {
                what: format!("manifest {}/{repo}@{}", reg.host(), m.digest),
                source,
            })?;
            if view.manifests.len() > MAX_INDEX_ENTRIES {
                return Err(InventoryError::Take {
                    registry: reg.host().to_string(),
                    detail: format!(
                        "{repo}@{} lists {} manifests, more than {MAX_INDEX_ENTRIES}",
                        m.digest,
                        view.manifests.len()
                    ),
                }
                .into());
            }
            for child in view.manifests.iter().chain(referrers?.iter()) {
                let d = child.digest.to_string();
                if !seen.contains(&d) {
                    wave.push(d);
                }
            }
            for b in view.blobs() {
                blobs.insert(b.digest.clone(), b.size);
            }
        }
        wave.sort();
        wave.dedup();
    }
    Ok((blobs, manifests))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inventory {
        Inventory {
            schema: SCHEMA,
            media_type: MEDIA_TYPE.into(),
            tool: "airlock test".into(),
            created: "2026-01-01T00:00:00Z".into(),
            registry: "registry.example".into(),
            prefix: Some("vendor".into()),
            repositories: 1,
            blobs: vec![InventoryBlob {
                digest: Digest::of(b"layer"),
                size: 5,
            }],
            manifests: vec![InventoryBlob {
                digest: Digest::of(b"manifest"),
                size: 8,
            }],
        }
    }

    #[test]
    fn bytes_round_trip_and_are_deterministic() {
        let inv = sample();
        let bytes = inv.to_bytes();
        assert_eq!(bytes, sample().to_bytes());
        assert!(bytes.ends_with(b"}\n"));
        assert_eq!(parse(&bytes).unwrap(), inv);
        assert_eq!(
            inv.blob_digests(),
            [Digest::of(b"layer"), Digest::of(b"manifest")].into()
        );
    }

    #[test]
    fn other_documents_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["schema"] = 2.into();
        let e = parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.contains("schema 2"), "{e}");
        let e = parse(br#"{"schemaVersion":2}"#).unwrap_err();
        assert!(e.contains("no mediaType"), "{e}");
    }
}
