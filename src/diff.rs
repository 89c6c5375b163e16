//! `airlock diff A B`: what changed between two bundles, from their
//! indexes alone: images and tags added, removed or moved to another
//! digest, and how many bytes B carries that A did not (what a site that
//! imported A still has to take in).

use crate::bundle::BundleIndex;
use crate::digest::Digest;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Changed {
    /// `REPOSITORY:TAG` (or `REPOSITORY@DIGEST` for an untagged image).
    pub image: String,
    pub from: Digest,
    pub to: Digest,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleDiff {
    pub schema: u32,
    pub from: Digest,
    pub to: Digest,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<Changed>,
    pub unchanged: usize,
    /// Blobs and manifests in B that A did not carry.
    pub new_blobs: usize,
    pub new_bytes: u64,
    /// Bytes of B that A carried already.
    pub shared_bytes: u64,
}

fn images(index: &BundleIndex) -> BTreeMap<String, Digest> {
    index
        .images
        .iter()
        .map(|i| {
            let name = match &i.tag {
                Some(t) => format!("{}:{t}", i.repository),
                None => format!("{}@{}", i.repository, i.source_digest),
            };
            (name, i.digest.clone())
        })
        .collect()
}

pub fn diff(a: (&BundleIndex, &Digest), b: (&BundleIndex, &Digest)) -> BundleDiff {
    let (ia, ib) = (images(a.0), images(b.0));
    let mut out = BundleDiff {
        schema: 1,
        from: a.1.clone(),
        to: b.1.clone(),
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        unchanged: 0,
        new_blobs: 0,
        new_bytes: 0,
        shared_bytes: 0,
    };
    for (name, d) in &ib {
        match ia.get(name) {
            None => out.added.push(name.clone()),
            Some(old) if old != d => out.changed.push(Changed {
                image: name.clone(),
                from: old.clone(),
                to: d.clone(),
            }),
            Some(_) => out.unchanged += 1,
        }
    }
    out.removed = ia
        .keys()
        .filter(|n| !ib.contains_key(*n))
        .cloned()
        .collect();
    let held: HashSet<&Digest> =
        a.0.members
            .iter()
            .map(|m| &m.digest)
            .chain(a.0.external.iter().map(|e| &e.digest))
            .collect();
    for m in b.0.members.iter().filter(|m| m.path.starts_with("blobs/")) {
        if held.contains(&m.digest) {
            out.shared_bytes += m.size;
        } else {
            out.new_blobs += 1;
            out.new_bytes += m.size;
        }
    }
    out
}

/// The human form.
pub fn render(d: &BundleDiff) -> String {
    use std::fmt::Write as _;
    let p = crate::progress::printable;
    let mut s = String::new();
    let _ = writeln!(s, "from bundle {}\n  to bundle {}", d.from, d.to);
    for a in &d.added {
        let _ = writeln!(s, "+ {}", p(a));
    }
    for r in &d.removed {
        let _ = writeln!(s, "- {}", p(r));
    }
    for c in &d.changed {
        let _ = writeln!(s, "~ {}  {} -> {}", p(&c.image), c.from, c.to);
    }
    let _ = writeln!(
        s,
        "{} added, {} removed, {} changed, {} unchanged; {} new blobs ({}), {} already in the first",
        d.added.len(),
        d.removed.len(),
        d.changed.len(),
        d.unchanged,
        d.new_blobs,
        crate::progress::human_bytes(d.new_bytes),
        crate::progress::human_bytes(d.shared_bytes)
    );
    s
}
