//! The gate every copy passes before its first byte reaches a destination:
//! the graph is complete, no name is claimed twice, unsigned images are
//! named (and refused under `--require-signatures`), and every image is
//! admitted by the policy. Export, import, verify and copy share it, so
//! "signed" and "admitted" mean the same thing everywhere.

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::graph::{Graph, ImageEntry, ImageGraph};
use crate::progress::Events;
use crate::trust::{Policy, Verdict};
use std::collections::HashSet;

pub struct Gate<'a> {
    pub policy: Option<&'a Policy>,
    /// Refuse images or platforms without a signature.
    pub require_signatures: bool,
    /// What did not happen when the policy refuses (`no bundle written`).
    pub outcome: &'static str,
    /// Whether the destination writes an `index.json` (names must be unique).
    pub names_unique: bool,
}

/// What the gate found.
#[derive(Debug, Default)]
pub struct Passed {
    pub graphs: Vec<ImageGraph>,
    /// Per image (same order as the graph's), the manifests without a signature.
    pub unsigned: Vec<Vec<String>>,
    pub verdicts: Option<Vec<Verdict>>,
}

/// Manifests of `image` that leave it unsigned: none when the image (the
/// index the tag names, or a single manifest) carries a signature — a plain
/// `cosign sign` of a multi-arch image signs only the index, and verifying
/// that signature covers every platform the index lists by digest.
/// Otherwise the image and every platform without a signature of its own.
pub fn unsigned_subjects(image: &ImageEntry) -> Vec<String> {
    let signed = signed_subjects(image);
    if signed.contains(&image.source_digest) {
        return Vec::new();
    }
    let mut out = vec![format!("{} (image)", image.source_digest)];
    for p in &image.platforms {
        if p.digest != image.source_digest && !signed.contains(&p.digest) {
            out.push(format!(
                "{} ({})",
                p.digest,
                p.platform.as_deref().unwrap_or("platform unknown")
            ));
        }
    }
    out
}

fn signed_subjects(image: &ImageEntry) -> HashSet<&Digest> {
    image
        .artifacts
        .iter()
        .filter(|a| crate::trust::signs_image(a))
        .map(|a| &a.subject)
        .collect()
}

/// Platform manifests of a signed image that carry no signature of their own.
fn index_only(image: &ImageEntry) -> usize {
    let signed = signed_subjects(image);
    if !signed.contains(&image.source_digest) {
        return 0;
    }
    image
        .platforms
        .iter()
        .filter(|p| p.digest != image.source_digest && !signed.contains(&p.digest))
        .count()
}

fn unsigned_note(img: &ImageEntry, unsigned: &[String]) -> String {
    format!(
        "UNSIGNED: {} has no signature for {} (no policy given: digests checked only)",
        img.source,
        unsigned.join(", ")
    )
}

impl Gate<'_> {
    /// Check `graph` (read from `source`); notes go to `events`.
    pub fn check(&self, graph: &Graph, source: &str, events: &dyn Events) -> Result<Passed> {
        let graphs = graph.walk(source)?;
        for line in &graph.skipped {
            events.note(&format!("warning: {line}"));
        }
        if self.names_unique {
            crate::store::resolve::check_ref_names(graph)?;
        }
        let unsigned: Vec<Vec<String>> = graph.images.iter().map(unsigned_subjects).collect();
        self.check_signatures(graph, &unsigned, events)?;
        let verdicts = match self.policy {
            Some(p) => Some(self.check_policy(p, graph, events)?),
            None => None,
        };
        Ok(Passed {
            graphs,
            unsigned,
            verdicts,
        })
    }

    fn check_signatures(
        &self,
        graph: &Graph,
        unsigned: &[Vec<String>],
        events: &dyn Events,
    ) -> Result<()> {
        let mut missing = Vec::new();
        let by_index: Vec<&ImageEntry> =
            graph.images.iter().filter(|i| index_only(i) > 0).collect();
        if !by_index.is_empty() && self.policy.is_none() {
            // One line for every image, not a warning per platform: a plain
            // `cosign sign` of a multi-arch image signs only the index.
            let names: Vec<&str> = by_index.iter().map(|i| i.source.as_str()).collect();
            events.note(&format!(
                "note: {} {} signed; these platform manifests have no signature of their own (the index signature covers them): {}",
                names.join(", "),
                if names.len() == 1 { "is" } else { "are" },
                by_index.iter().map(|i| index_only(i)).sum::<usize>()
            ));
        }
        for (img, u) in graph.images.iter().zip(unsigned) {
            if u.is_empty() {
                continue;
            }
            if self.policy.is_none() && !self.require_signatures {
                events.note(&unsigned_note(img, u));
            }
            missing.push(format!("{}: {}", img.source, u.join(", ")));
        }
        if self.require_signatures && !missing.is_empty() {
            return Err(Error::Unsigned(format!(
                "--require-signatures: unsigned images, {} (sign them, or leave them out of the selection):\n  {}",
                self.outcome,
                missing.join("\n  ")
            )));
        }
        Ok(())
    }

    fn check_policy(
        &self,
        policy: &Policy,
        graph: &Graph,
        events: &dyn Events,
    ) -> Result<Vec<Verdict>> {
        let verdicts = evaluate(policy, graph);
        for v in &verdicts {
            events.note(&v.line());
        }
        let blocked = crate::trust::blocked(&verdicts);
        if !blocked.is_empty() {
            return Err(Error::Policy {
                outcome: self.outcome,
                blocked,
            });
        }
        Ok(verdicts)
    }
}

/// The policy's verdict on every image of `graph` (nothing refused here).
pub fn evaluate(policy: &Policy, graph: &Graph) -> Vec<Verdict> {
    graph
        .images
        .iter()
        .map(|img| policy.evaluate(img, graph))
        .collect()
}
