//! What the site already has, for an incremental bundle: previous bundles
//! (their bundle index: from the bundle file, its volumes, or the
//! `airlock-bundle.json` kept on the connected side) and inventories of
//! the site's registry (`airlock inventory`). An export leaves out every
//! layer a base carried; the bundle lists them as external, and import
//! checks the destination has each before it pushes anything.

use crate::bundle::{self, BundleIndex, MemberKind};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::graph::{BaseRef, BlobClass, Graph};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct Base {
    pub refs: Vec<BaseRef>,
    /// Every blob a base holds, with the base it came from.
    blobs: HashMap<Digest, Digest>,
}

impl Base {
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// A previous bundle: its file, its volumes, their directory, or its
    /// bundle index alone (`airlock-bundle.json`).
    pub fn add_bundle(&mut self, paths: &[PathBuf]) -> Result<()> {
        let (index, digest) = read_base_index(paths)?;
        for m in &index.members {
            if matches!(m.kind, MemberKind::Small | MemberKind::Layer) {
                self.blobs.entry(m.digest.clone()).or_insert(digest.clone());
            }
        }
        // What that bundle relied on, the site had then too.
        for e in &index.external {
            let from = e.from.clone().unwrap_or_else(|| digest.clone());
            self.blobs.entry(e.digest.clone()).or_insert(from);
        }
        self.refs.push(BaseRef {
            kind: "bundle".into(),
            digest,
        });
        Ok(())
    }

    /// An inventory of the site's registry (`airlock inventory`): every
    /// blob and manifest it lists. With `keys`, its `.sig` must verify with
    /// one of them (an inventory carried back across the gap is input too).
    pub fn add_inventory(&mut self, path: &Path, keys: &[PathBuf]) -> Result<()> {
        let (inventory, digest) = crate::inventory::load(path)?;
        if !keys.is_empty() {
            let bytes = std::fs::read(path).map_err(Error::io(path.display()))?;
            crate::inventory::verify_signature(path, &bytes, keys)?;
        }
        self.add_digests("inventory", digest, inventory.blob_digests());
        Ok(())
    }

    /// Blobs known to be at the site, with what says so.
    pub fn add_digests(
        &mut self,
        kind: &str,
        digest: Digest,
        blobs: impl IntoIterator<Item = Digest>,
    ) {
        for b in blobs {
            self.blobs.entry(b).or_insert(digest.clone());
        }
        self.refs.push(BaseRef {
            kind: kind.into(),
            digest,
        });
    }

    /// Mark every layer a base holds as external. Manifests, configs and
    /// signature payloads always travel: the import checks the graph and the
    /// signatures from the bundle alone.
    pub fn apply(&self, graph: &mut Graph) -> (usize, u64) {
        let mut counted = (0, 0);
        for b in &graph.blobs {
            if b.class != BlobClass::Layer || b.media_type.is_some() {
                continue;
            }
            if let Some(from) = self.blobs.get(&b.digest) {
                graph.external.insert(b.digest.clone(), Some(from.clone()));
                counted.0 += 1;
                counted.1 += b.size;
            }
        }
        graph.bases = self.refs.clone();
        counted
    }
}

/// The bundle index of a base, and its bundle digest.
fn read_base_index(paths: &[PathBuf]) -> Result<(BundleIndex, Digest)> {
    if let [one] = paths {
        if one.is_file() && one.extension().is_some_and(|e| e == "json") {
            return read_index_json(one);
        }
    }
    let files = bundle::volumes::expand_paths(paths)?;
    Ok(crate::inspect::read_index(&files[0])?)
}

/// `airlock-bundle.json` on its own: its sha256 is the bundle digest.
fn read_index_json(path: &Path) -> Result<(BundleIndex, Digest)> {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(Error::io(&name))?
        .take(bundle::MAX_INDEX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io(&name))?;
    if bytes.len() as u64 > bundle::MAX_INDEX_BYTES {
        return Err(Error::Usage(format!(
            "{name} is larger than a bundle index may be"
        )));
    }
    let index = bundle::parse_index(&name, &bytes)?;
    Ok((index, Digest::of(&bytes)))
}
