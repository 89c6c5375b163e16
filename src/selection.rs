//! What to export: image references from the command line and/or a
//! selection file (YAML), each with tags, a tag pattern, digests, a
//! platform filter and an optional target repository.

use crate::digest::Digest;
use crate::oci::Platform;
use crate::reference::{is_valid_repository, Reference};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;

/// One entry of a selection file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelectionEntry {
    /// `registry/repository`, optionally with `:tag` or `@digest`.
    #[serde(alias = "repository", alias = "image")]
    pub r#ref: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A regular expression; every tag of the repository it matches fully is taken.
    #[serde(default)]
    pub tag_pattern: Option<String>,
    #[serde(default)]
    pub digests: Vec<String>,
    /// `os/arch[/variant]`; empty = every platform.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Repository path suggested for the target registry, e.g. `dynatrace-operator`.
    #[serde(default)]
    pub target: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionFile {
    images: Vec<SelectionEntry>,
}

/// A resolved request: one repository and what to take from it.
#[derive(Clone, Debug)]
pub struct ImageSelection {
    pub repo: Reference,
    pub tags: Vec<String>,
    pub tag_pattern: Option<regex::Regex>,
    pub digests: Vec<Digest>,
    pub platforms: Vec<Platform>,
    pub target: Option<String>,
    /// Set when the images come from an OCI layout directory (`oci:DIR`);
    /// `repo.registry` is then `oci:DIR`.
    pub layout: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("selection file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("{context}: {detail}")]
    Entry { context: String, detail: String },
}

impl ImageSelection {
    pub fn from_entry(e: &SelectionEntry, context: &str) -> Result<ImageSelection, SelectionError> {
        let err = |detail: String| SelectionError::Entry {
            context: context.to_string(),
            detail,
        };
        if let Some(rest) = e.r#ref.strip_prefix("oci:") {
            let mut all = layout_selections(e, rest, context)?;
            return match (all.pop(), all.is_empty()) {
                (Some(one), true) => Ok(one),
                _ => Err(err(
                    "this directory holds several repositories: give oci:DIR:REF".into(),
                )),
            };
        }
        let r = Reference::parse(e.r#ref.strip_prefix("docker://").unwrap_or(&e.r#ref))
            .map_err(|e| err(e.to_string()))?;
        let mut tags = e.tags.clone();
        let mut digests = Vec::new();
        if let Some(t) = &r.tag {
            tags.push(t.clone());
        }
        if let Some(d) = &r.digest {
            digests.push(d.clone());
        }
        for d in &e.digests {
            digests.push(
                d.parse()
                    .map_err(|_| err(format!("digest {d:?} is not sha256:<64 hex>")))?,
            );
        }
        for t in &tags {
            if !crate::reference::is_valid_tag(t) {
                return Err(err(format!("tag {t:?} is not a valid tag")));
            }
        }
        let tag_pattern = match &e.tag_pattern {
            Some(p) => Some(
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|x| err(format!("tagPattern {p:?}: {x}")))?,
            ),
            None => None,
        };
        if tags.is_empty() && digests.is_empty() && tag_pattern.is_none() {
            tags.push("latest".into());
        }
        let platforms = e
            .platforms
            .iter()
            .map(|p| {
                Platform::parse(p)
                    .ok_or_else(|| err(format!("platform {p:?} is not os/arch[/variant]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(t) = &e.target {
            if !is_valid_repository(t) {
                return Err(err(format!("target {t:?} is not a valid repository path")));
            }
        }
        dedup_tags(&mut tags);
        Ok(ImageSelection {
            repo: Reference {
                tag: None,
                digest: None,
                ..r
            },
            tags,
            tag_pattern,
            digests,
            platforms,
            target: e.target.clone(),
            layout: None,
        })
    }
}

fn parse_platforms(e: &SelectionEntry, context: &str) -> Result<Vec<Platform>, SelectionError> {
    e.platforms
        .iter()
        .map(|p| {
            Platform::parse(p).ok_or_else(|| SelectionError::Entry {
                context: context.to_string(),
                detail: format!("platform {p:?} is not os/arch[/variant]"),
            })
        })
        .collect()
}

/// `oci:DIR[:REF]` (`rest` is what follows `oci:`): REF, a ref name of
/// DIR's index.json split at the first colon after DIR as skopeo does, or
/// without it every named image of DIR, one selection per repository.
/// index.json is read once.
fn layout_selections(
    e: &SelectionEntry,
    rest: &str,
    context: &str,
) -> Result<Vec<ImageSelection>, SelectionError> {
    let err = |detail: String| SelectionError::Entry {
        context: context.to_string(),
        detail,
    };
    let (dir, reference) = match rest.split_once(':') {
        Some((d, r)) if !r.is_empty() => (d, Some(r)),
        _ => (rest.trim_end_matches(':'), None),
    };
    if dir.is_empty() {
        return Err(err("oci: needs a directory: oci:DIR[:REF]".into()));
    }
    let dir = std::path::PathBuf::from(dir);
    let (default_repo, named) =
        crate::layout::named_images(&dir).map_err(|x| err(x.to_string()))?;
    let mut by_repo: Vec<(String, Vec<String>)> = Vec::new();
    match reference {
        Some(r) => by_repo.push({
            let (repo, tag) = crate::layout::split_ref_name(r, &default_repo);
            (repo, vec![tag])
        }),
        None => {
            for (repo, tag) in named {
                match by_repo.iter_mut().find(|(r, _)| *r == repo) {
                    Some((_, tags)) => tags.push(tag),
                    None => by_repo.push((repo, vec![tag])),
                }
            }
        }
    }
    if by_repo.is_empty() {
        return Err(err(format!(
            "{} names no image in its index.json",
            dir.display()
        )));
    }
    if e.target.is_some() && by_repo.len() > 1 {
        return Err(err(
            "target names one repository; this directory holds several: give oci:DIR:REF".into(),
        ));
    }
    let platforms = parse_platforms(e, context)?;
    Ok(by_repo
        .into_iter()
        .map(|(repository, tags)| {
            let mut tags = [tags, e.tags.clone()].concat();
            dedup_tags(&mut tags);
            ImageSelection {
                repo: Reference {
                    registry: format!("oci:{}", dir.display()),
                    repository,
                    tag: None,
                    digest: None,
                },
                tags,
                tag_pattern: None,
                digests: vec![],
                platforms: platforms.clone(),
                target: e.target.clone(),
                layout: Some(dir.clone()),
            }
        })
        .collect())
}

/// Drop repeated tags, keeping each where it first appears (the list is not
/// sorted: a `ref:` tag comes after `tags:`, tag-pattern matches after both).
pub(crate) fn dedup_tags(tags: &mut Vec<String>) {
    let mut seen = HashSet::new();
    tags.retain(|t| seen.insert(t.clone()));
}

/// Parse a selection file.
pub fn load_file(path: &Path) -> Result<Vec<ImageSelection>, SelectionError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SelectionError::File {
        path: name.clone(),
        detail: e.to_string(),
    })?;
    parse_selection(&text, &name)
}

pub fn parse_selection(text: &str, name: &str) -> Result<Vec<ImageSelection>, SelectionError> {
    let file: SelectionFile = serde_saphyr::from_str(text).map_err(|e| SelectionError::File {
        path: name.to_string(),
        detail: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, e) in file.images.iter().enumerate() {
        let context = format!("{name}: images[{i}] ({})", e.r#ref);
        match e.r#ref.strip_prefix("oci:") {
            Some(rest) => out.extend(layout_selections(e, rest, &context)?),
            None => out.push(ImageSelection::from_entry(e, &context)?),
        }
    }
    Ok(out)
}

/// Command-line references, all with the same platform filter. `oci:DIR`
/// without a ref name takes every named image of the directory.
pub fn from_refs(
    refs: &[String],
    platforms: &[String],
) -> Result<Vec<ImageSelection>, SelectionError> {
    let mut out = Vec::new();
    for r in refs {
        let entry = SelectionEntry {
            r#ref: r.clone(),
            tags: vec![],
            tag_pattern: None,
            digests: vec![],
            platforms: platforms.to_vec(),
            target: None,
        };
        match r.strip_prefix("oci:") {
            Some(rest) => out.extend(layout_selections(&entry, rest, r)?),
            None => out.push(ImageSelection::from_entry(&entry, r)?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_selection_file() {
        let sel = parse_selection(
            r#"
images:
  - ref: public.ecr.aws/dynatrace/dynatrace-operator
    tags: ["1.4.0"]
    platforms: [linux/amd64, linux/arm64]
    target: dynatrace-operator
  - ref: 127.0.0.1:5000/vendor/agent
    tagPattern: "1\\.[0-9]+\\.0"
"#,
            "t.yaml",
        )
        .unwrap();
        assert_eq!(sel.len(), 2);
        assert_eq!(sel[0].tags, vec!["1.4.0"]);
        assert_eq!(sel[0].platforms.len(), 2);
        assert!(sel[1].tag_pattern.as_ref().unwrap().is_match("1.2.0"));
        assert!(!sel[1].tag_pattern.as_ref().unwrap().is_match("1.2.0-rc"));
    }

    #[test]
    fn a_tag_given_twice_is_selected_once() {
        let sel = parse_selection(
            "images:\n  - ref: a/b:1.0\n    tags: [\"1.0\", \"2.0\"]\n    tagPattern: \"[0-9.]+\"\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(sel[0].tags, vec!["1.0", "2.0"]);
        // What export adds for the tag pattern, in sorted order, after them.
        let mut tags = sel[0].tags.clone();
        tags.extend(["1.0", "1.5", "2.0"].map(String::from));
        dedup_tags(&mut tags);
        assert_eq!(tags, vec!["1.0", "2.0", "1.5"]);
    }

    #[test]
    fn a_selection_file_may_name_layout_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("oci-layout"), crate::layout::OCI_LAYOUT_BYTES).unwrap();
        let digest = crate::digest::Digest::of(b"x");
        let entry = |name: &str| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":1,"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}"#
            )
        };
        std::fs::write(
            d.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{},{},{}]}}"#,
                entry("vendor/app:1.0"),
                entry("vendor/app:sha256-00.sig"),
                entry("other/tool:2")
            ),
        )
        .unwrap();
        let text = format!(
            "images:\n  - ref: oci:{0}:vendor/app:1.0\n    platforms: [linux/amd64]\n  - ref: oci:{0}\n",
            d.display()
        );
        let sel = parse_selection(&text, "t.yaml").unwrap();
        assert_eq!(sel[0].layout.as_deref(), Some(d));
        assert_eq!(sel[0].repo.repository, "vendor/app");
        assert_eq!(sel[0].tags, vec!["1.0"]);
        assert_eq!(sel[0].platforms.len(), 1);
        // Without a ref name: every repository's images, never artifact tags.
        assert_eq!(sel.len(), 3);
        assert_eq!(sel[1].repo.repository, "vendor/app");
        assert_eq!(sel[1].tags, vec!["1.0"]);
        assert_eq!(sel[2].repo.repository, "other/tool");
        assert_eq!(sel[2].tags, vec!["2"]);
        // On the command line, every repository of the directory.
        let all = from_refs(&[format!("oci:{}", d.display())], &[]).unwrap();
        let repos: Vec<&str> = all.iter().map(|s| s.repo.repository.as_str()).collect();
        assert_eq!(repos, vec!["vendor/app", "other/tool"]);
        assert!(parse_selection("images:\n  - ref: oci:/nonexistent/dir:a:1\n", "t").is_err());
    }

    #[test]
    fn rejects_bad_entries() {
        for bad in [
            "images:\n  - ref: a/b\n    platforms: [linux]\n",
            "images:\n  - ref: a/b\n    unknown: 1\n",
            "images:\n  - ref: a/b\n    tagPattern: \"(\"\n",
            "images:\n  - ref: a/b\n    target: \"UP/per\"\n",
        ] {
            assert!(parse_selection(bad, "t").is_err(), "{bad}");
        }
    }
}
