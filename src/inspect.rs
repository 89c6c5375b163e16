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

/// One line per image: repository, tag, digest, platforms, size, and what
/// signs it (cosign signatures, attestations, SBOMs, referrers carried).
fn table(index: &BundleIndex) -> String {
    use crate::image::ArtifactKind;
    let rows: Vec<[String; 6]> = index
        .images
        .iter()
        .map(|i| {
            let count = |k: ArtifactKind| i.artifacts.iter().filter(|a| a.kind == k).count();
            let mut signed = Vec::new();
            for (k, name) in [
                (ArtifactKind::Signature, "sig"),
                (ArtifactKind::Attestation, "att"),
                (ArtifactKind::Sbom, "sbom"),
                (ArtifactKind::Referrer, "referrer"),
            ] {
                match count(k) {
                    0 => {}
                    1 => signed.push(name.to_string()),
                    n => signed.push(format!("{n} {name}")),
                }
            }
            let platforms: Vec<String> = i
                .platforms
                .iter()
                .map(|pl| pl.platform.clone().unwrap_or_else(|| "-".into()))
                .collect();
            [
                p(&i.repository),
                p(i.tag.as_deref().unwrap_or("-")),
                i.digest.to_string().chars().take(19).collect(),
                p(&platforms.join(",")),
                human_bytes(i.total_size),
                if signed.is_empty() {
                    "UNSIGNED".into()
                } else {
                    signed.join(", ")
                },
            ]
        })
        .collect();
    let header = [
        "REPOSITORY",
        "TAG",
        "DIGEST",
        "PLATFORMS",
        "SIZE",
        "SIGNED BY",
    ];
    let mut width = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
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
    s.push('\n');
    s.push_str(&table(index));
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
