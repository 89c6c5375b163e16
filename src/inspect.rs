//! `airlock inspect`: what a bundle holds, from its index alone (the
//! first member; with the seek table nothing else is decompressed).

use crate::bundle::volumes::VolumeLabel;
use crate::bundle::{self, BundleError, BundleIndex};
use crate::digest::Digest;
use crate::progress::{human_bytes, printable as p};
use std::fmt::Write as _;
use std::path::Path;

/// Read the bundle index and the bundle digest.
pub fn read_index(path: &Path) -> Result<(BundleIndex, Digest), BundleError> {
    read_head(path).map(|(i, d, _)| (i, d))
}

/// The bundle index, the bundle digest, and which volume the file is (for
/// one volume of a bundle cut into volumes). Only the start of the file is
/// decompressed.
pub fn read_head(path: &Path) -> Result<(BundleIndex, Digest, Option<VolumeLabel>), BundleError> {
    let name = path.display().to_string();
    if path.is_dir() {
        return Err(BundleError::NotAFile { path: name });
    }
    let file = std::fs::File::open(path).map_err(|source| BundleError::Io {
        path: name.clone(),
        source,
    })?;
    bundle::read_index_only(std::io::BufReader::new(file), &name)
}

/// A human summary of a bundle index (and of which volume a file is).
/// Every string from the index is shown through [`p`]: escaped and cut.
pub fn render(index: &BundleIndex, digest: &Digest, label: Option<&VolumeLabel>) -> String {
    let mut s = String::new();
    let total: u64 = index.members.iter().map(|m| m.size).sum();
    let _ = writeln!(s, "bundle digest: {digest}");
    if let Some(v) = &index.volumes {
        let here = label
            .map(|l| format!("; this file is volume {} of {}", l.volume, l.count))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "volumes:       {} of at most {}{here}",
            v.count,
            human_bytes(v.max_size)
        );
    }
    let _ = writeln!(
        s,
        "created:       {} by {}",
        p(&index.created),
        p(&index.tool)
    );
    let _ = writeln!(
        s,
        "members:       {} ({} uncompressed)",
        index.members.len() + 1,
        human_bytes(total)
    );
    for b in &index.base {
        let _ = writeln!(s, "base:          {} {}", p(&b.kind), b.digest);
    }
    if !index.external.is_empty() {
        let _ = writeln!(
            s,
            "incremental:   relies on {} blobs ({}) the site must have from its base",
            index.external.len(),
            human_bytes(index.external.iter().map(|e| e.size).sum())
        );
    }
    if let Some(root) = &index.trusted_root {
        let _ = writeln!(
            s,
            "trusted root:  {root} (carried; used only if the site pins this digest)"
        );
    }
    for img in &index.images {
        let _ = writeln!(s, "\n{}", p(&img.source));
        let _ = writeln!(
            s,
            "  digest:    {} ({}, {})",
            img.digest,
            p(&img.media_type),
            human_bytes(img.total_size)
        );
        if img.source_digest != img.digest {
            let _ = writeln!(
                s,
                "  original:  {} (platform-filtered; the vendor index is kept as a blob)",
                img.source_digest
            );
        }
        if let Some(index) = &img.platform_of {
            let _ = writeln!(
                s,
                "  single platform: this is one platform's manifest out of the vendor index {index}; a signature the vendor made over that index will not verify against it, only one over this manifest"
            );
        }
        if let Some(t) = &img.target {
            let _ = writeln!(s, "  target:    {}", p(t));
        }
        if let Some(t) = &img.tag_template {
            let _ = writeln!(s, "  tag template at import: {t}");
        }
        for pl in &img.platforms {
            let _ = writeln!(
                s,
                "  platform:  {:<14} {} ({})",
                p(pl.platform.as_deref().unwrap_or("-")),
                pl.digest,
                human_bytes(pl.size)
            );
        }
        for a in &img.artifacts {
            let _ = writeln!(
                s,
                "  {:<10} {} for {}{}{}",
                format!("{:?}:", a.kind).to_lowercase(),
                a.digest,
                a.subject,
                a.tag
                    .as_ref()
                    .map(|t| format!(" tag {}", p(t)))
                    .unwrap_or_default(),
                a.artifact_type
                    .as_ref()
                    .map(|t| format!(" type {}", p(t)))
                    .unwrap_or_default()
                    + &a.predicate_types
                        .iter()
                        .map(|t| format!(" predicate {}", p(t)))
                        .collect::<String>(),
            );
        }
        if img.artifacts.is_empty() {
            let _ = writeln!(s, "  (no signatures or attestations)");
        }
    }
    s
}
