//! `airlock help selection|policy|format|json|threats`: the file formats and
//! contracts, printed by the binary itself (a site may have the binary and
//! nothing else), from the same documents the repository keeps.

const README: &str = include_str!("../README.md");
const TRUST: &str = include_str!("../docs/trust.md");
const FORMAT: &str = include_str!("../docs/bundle-format.md");
const JSON: &str = include_str!("../docs/json.md");
const THREATS: &str = include_str!("../docs/threat-model.md");

/// The topics and what each is.
pub const TOPICS: &[(&str, &str)] = &[
    (
        "selection",
        "the selection file (-f images.yaml): keys, version order, sets",
    ),
    (
        "policy",
        "the policy file (--policy): rules, keys, keyless identities, attestations",
    ),
    (
        "format",
        "the bundle format: tar of an OCI layout in zstd frames, index, volumes",
    ),
    ("json", "the --json documents: schema 1, fields, errors"),
    (
        "threats",
        "the threat model: what an attacker controls, what airlock promises",
    ),
];

/// The section of `doc` under `heading` (up to the next heading of the same
/// or a higher level).
fn section(doc: &str, heading: &str) -> Option<String> {
    let start = doc.find(heading)?;
    let level = heading.chars().take_while(|c| *c == '#').count();
    let body = &doc[start..];
    let end = body[heading.len()..]
        .match_indices("\n#")
        .find(|(i, _)| {
            let rest = &body[heading.len() + i + 1..];
            let l = rest.chars().take_while(|c| *c == '#').count();
            l >= 1 && l <= level && rest[l..].starts_with(' ')
        })
        .map(|(i, _)| heading.len() + i + 1)
        .unwrap_or(body.len());
    Some(body[..end].trim_end().to_string() + "\n")
}

/// The text of a topic, or `None` for an unknown one.
pub fn topic(name: &str) -> Option<String> {
    match name {
        "selection" => section(README, "### Selection files"),
        "policy" => section(TRUST, "## Policy file"),
        "format" => Some(FORMAT.to_string()),
        "json" => Some(JSON.to_string()),
        "threats" => Some(THREATS.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_topic_has_its_text() {
        for (name, _) in super::TOPICS {
            let text = super::topic(name).unwrap_or_default();
            assert!(text.len() > 200, "{name}: {text}");
        }
        let sel = super::topic("selection").unwrap();
        assert!(sel.contains("versions") && sel.contains("sets"));
        assert!(
            !sel.contains("### `airlock import"),
            "the section stops at the next heading"
        );
        assert!(super::topic("policy").unwrap().contains("rules:"));
        assert!(super::topic("nope").is_none());
    }
}
