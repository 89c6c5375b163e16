//! What to export: image references from the command line and/or
//! selection files (YAML), each with exact tags, tag rules (a regex,
//! a version range, include/exclude globs, the newest N), digests, a
//! platform filter, a target repository and a tag template; named sets of
//! images picked with `--set`.

use crate::digest::Digest;
use crate::oci::Platform;
use crate::reference::{is_valid_repository, Reference};
use crate::version::VersionRange;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

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
    /// The handle `sets` and `--set` use (default: the last path component).
    #[serde(default)]
    pub name: Option<String>,
    /// A version range over the version order (`">=1.300 <2"`).
    #[serde(default)]
    pub versions: Option<String>,
    /// Globs over tag names; a tag must match one.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs over tag names; a matching tag is dropped (applied last).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Keep the newest N versions the other rules leave.
    #[serde(default)]
    pub newest: Option<usize>,
    /// A missing exact tag (or a rule matching nothing) is a warning.
    #[serde(default)]
    pub optional: bool,
    /// Export the one platform the filter keeps as that platform's manifest
    /// itself (as `skopeo copy --override-arch`), not a filtered index.
    #[serde(default)]
    pub single_platform: bool,
    /// The tag at the destination (`{tag}`, `{version}`, `{date}`, `{digest12}`).
    #[serde(default)]
    pub tag_template: Option<String>,
}

impl SelectionEntry {
    /// An entry for a command-line reference.
    pub fn for_ref(r: &str, platforms: &[String]) -> SelectionEntry {
        SelectionEntry {
            r#ref: r.to_string(),
            tags: vec![],
            tag_pattern: None,
            digests: vec![],
            platforms: platforms.to_vec(),
            target: None,
            name: None,
            versions: None,
            include: vec![],
            exclude: vec![],
            newest: None,
            optional: false,
            single_platform: false,
            tag_template: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionFile {
    /// Set name → image handles.
    #[serde(default)]
    sets: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    images: Vec<SelectionEntry>,
}

/// A glob over tag names, kept with its text for messages.
#[derive(Clone, Debug)]
pub struct TagGlob {
    pub text: String,
    matcher: globset::GlobMatcher,
}

impl TagGlob {
    fn parse(text: &str) -> Result<TagGlob, String> {
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("glob {text:?}: {e}"))?;
        Ok(TagGlob {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn is_match(&self, tag: &str) -> bool {
        self.matcher.is_match(tag)
    }
}

/// The tag rules of an entry beyond exact tags: what `versions`,
/// `include`, `exclude` and `newest` say.
#[derive(Clone, Debug, Default)]
pub struct TagRule {
    pub versions: Option<VersionRange>,
    pub include: Vec<TagGlob>,
    pub exclude: Vec<TagGlob>,
    pub newest: Option<usize>,
}

impl TagRule {
    pub fn is_empty(&self) -> bool {
        self.versions.is_none()
            && self.include.is_empty()
            && self.exclude.is_empty()
            && self.newest.is_none()
    }

    /// `versions ">=1.300 <2", include [1.*], exclude [*-raw], newest 2`, for messages.
    pub fn describe(&self) -> String {
        let globs = |g: &[TagGlob]| {
            g.iter()
                .map(|g| g.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if let Some(v) = &self.versions {
            parts.push(format!("versions {:?}", v.as_str()));
        }
        if !self.include.is_empty() {
            parts.push(format!("include [{}]", globs(&self.include)));
        }
        if !self.exclude.is_empty() {
            parts.push(format!("exclude [{}]", globs(&self.exclude)));
        }
        if let Some(n) = self.newest {
            parts.push(format!("newest {n}"));
        }
        parts.join(", ")
    }

    fn parse(e: &SelectionEntry) -> Result<TagRule, String> {
        let globs = |list: &[String]| {
            list.iter()
                .map(|g| TagGlob::parse(g))
                .collect::<Result<Vec<_>, _>>()
        };
        if e.newest == Some(0) {
            return Err("newest: 0 selects nothing; leave it out to keep every match".into());
        }
        Ok(TagRule {
            versions: e
                .versions
                .as_deref()
                .map(VersionRange::parse)
                .transpose()
                .map_err(|x| x.to_string())?,
            include: globs(&e.include)?,
            exclude: globs(&e.exclude)?,
            newest: e.newest,
        })
    }
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
    /// The handle sets use (default: the repository's last path component).
    pub name: String,
    pub rule: TagRule,
    /// Missing exact tags and rules that match nothing are warnings.
    pub optional: bool,
    /// Export the one kept platform as its own manifest (see [`SelectionEntry`]).
    pub single_platform: bool,
    /// The tag at the destination (applied by import).
    pub tag_template: Option<String>,
    /// From a lock file: the digest each tag must still point to.
    pub pinned: BTreeMap<String, Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("selection file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("{context}: {detail}")]
    Entry { context: String, detail: String },
    #[error("--set {name}: no set or image of that name in {files}; known sets: {sets}; known images: {images}")]
    UnknownSet {
        name: String,
        files: String,
        sets: String,
        images: String,
    },
    #[error("{file}: set {set} names image {handle:?}, which no selection file defines; known images: {images}")]
    UnknownHandle {
        file: String,
        set: String,
        handle: String,
        images: String,
    },
}

/// Placeholders a tag template may use.
const TEMPLATE_KEYS: [&str; 4] = ["{tag}", "{version}", "{date}", "{digest12}"];

/// A tag template has only known placeholders and something that varies
/// per image (else every image would get the same tag).
pub fn check_tag_template(t: &str) -> Result<(), String> {
    let mut rest = t.to_string();
    for k in TEMPLATE_KEYS {
        rest = rest.replace(k, "");
    }
    if rest.contains(['{', '}']) {
        return Err(format!(
            "tag template {t:?}: unknown placeholder; use {}",
            TEMPLATE_KEYS.join(", ")
        ));
    }
    if !["{tag}", "{version}", "{digest12}"]
        .iter()
        .any(|k| t.contains(k))
    {
        return Err(format!(
            "tag template {t:?} gives every image the same tag; use {{tag}}, {{version}} or {{digest12}}"
        ));
    }
    Ok(())
}

/// The tag a template gives an image: `{tag}`; `{version}` (the tag
/// without a leading `v` or a variant suffix, or the tag itself when it is
/// not a version); `{date}` (`YYYYMMDD` of `created`, the bundle's creation
/// time); `{digest12}` (the first 12 hex digits of the image digest).
pub fn render_tag_template(
    template: &str,
    tag: &str,
    digest: &Digest,
    created: &str,
) -> Result<String, String> {
    let version = crate::version::Version::parse(tag)
        .map(|v| v.core)
        .unwrap_or_else(|| tag.to_string());
    let date: String = created
        .get(..10)
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let out = template
        .replace("{tag}", tag)
        .replace("{version}", &version)
        .replace("{date}", &date)
        .replace("{digest12}", &digest.hex()[..12]);
    if !crate::reference::is_valid_tag(&out) {
        return Err(format!(
            "tag template {template:?} gives {out:?} for tag {tag}, which is not a valid tag"
        ));
    }
    Ok(out)
}

/// The default handle: the last path component of a repository.
fn default_name(repository: &str) -> String {
    repository
        .rsplit('/')
        .next()
        .unwrap_or(repository)
        .to_string()
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
        let rule = TagRule::parse(e).map_err(err)?;
        if tags.is_empty() && digests.is_empty() && tag_pattern.is_none() && rule.is_empty() {
            tags.push("latest".into());
        }
        if let Some(t) = &e.tag_template {
            check_tag_template(t).map_err(err)?;
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
            name: e
                .name
                .clone()
                .unwrap_or_else(|| default_name(&r.repository)),
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
            rule,
            optional: e.optional,
            single_platform: e.single_platform,
            tag_template: e.tag_template.clone(),
            pinned: BTreeMap::new(),
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
    let rule = TagRule::parse(e).map_err(err)?;
    if let Some(t) = &e.tag_template {
        check_tag_template(t).map_err(err)?;
    }
    Ok(by_repo
        .into_iter()
        .map(|(repository, tags)| {
            let mut tags = [tags, e.tags.clone()].concat();
            dedup_tags(&mut tags);
            ImageSelection {
                name: e.name.clone().unwrap_or_else(|| default_name(&repository)),
                rule: rule.clone(),
                optional: e.optional,
                single_platform: e.single_platform,
                tag_template: e.tag_template.clone(),
                pinned: BTreeMap::new(),
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

/// Parse a selection file (every image of it).
pub fn load_file(path: &Path) -> Result<Vec<ImageSelection>, SelectionError> {
    load_files(&[path.to_path_buf()], &[])
}

/// One parsed selection file: its images and its sets.
struct Parsed {
    name: String,
    images: Vec<ImageSelection>,
    sets: BTreeMap<String, Vec<String>>,
}

fn parse_file(text: &str, name: &str) -> Result<Parsed, SelectionError> {
    let file: SelectionFile = serde_saphyr::from_str(text).map_err(|e| SelectionError::File {
        path: name.to_string(),
        detail: e.to_string(),
    })?;
    if file.images.is_empty() {
        return Err(SelectionError::File {
            path: name.to_string(),
            detail: "no images: list them under `images:`".into(),
        });
    }
    let mut images = Vec::new();
    for (i, e) in file.images.iter().enumerate() {
        let context = format!("{name}: images[{i}] ({})", e.r#ref);
        match e.r#ref.strip_prefix("oci:") {
            Some(rest) => images.extend(layout_selections(e, rest, &context)?),
            None => images.push(ImageSelection::from_entry(e, &context)?),
        }
    }
    Ok(Parsed {
        name: name.to_string(),
        images,
        sets: file.sets,
    })
}

pub fn parse_selection(text: &str, name: &str) -> Result<Vec<ImageSelection>, SelectionError> {
    parse_file(text, name).map(|p| p.images)
}

/// Several selection files, and the sets (or image handles) `--set` names:
/// without `sets`, every image of every file; with them, the images of
/// each set (a set name found in several files takes the union) or the
/// image(s) of that handle, each image once, in file order.
pub fn load_files(
    paths: &[PathBuf],
    sets: &[String],
) -> Result<Vec<ImageSelection>, SelectionError> {
    let mut files = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SelectionError::File {
            path: name.clone(),
            detail: e.to_string(),
        })?;
        files.push(parse_file(&text, &name)?);
    }
    select_sets(files, sets)
}

fn select_sets(files: Vec<Parsed>, sets: &[String]) -> Result<Vec<ImageSelection>, SelectionError> {
    let handles: Vec<String> = {
        let mut h: Vec<String> = files
            .iter()
            .flat_map(|f| f.images.iter().map(|i| i.name.clone()))
            .collect();
        h.sort();
        h.dedup();
        h
    };
    // Every set must name known images, whether or not it is picked now:
    // a typo surfaces the first time the file is used.
    for f in &files {
        for (set, members) in &f.sets {
            if let Some(bad) = members.iter().find(|m| !handles.contains(m)) {
                return Err(SelectionError::UnknownHandle {
                    file: f.name.clone(),
                    set: set.clone(),
                    handle: bad.clone(),
                    images: handles.join(", "),
                });
            }
        }
    }
    let all: Vec<ImageSelection> = files.iter().flat_map(|f| f.images.clone()).collect();
    if sets.is_empty() {
        return Ok(all);
    }
    let mut wanted: HashSet<&str> = HashSet::new();
    for name in sets {
        let members: Vec<&str> = files
            .iter()
            .filter_map(|f| f.sets.get(name))
            .flatten()
            .map(String::as_str)
            .collect();
        if !members.is_empty() {
            wanted.extend(members);
        } else if handles.contains(name) {
            wanted.insert(name);
        } else {
            let mut known: Vec<&str> = files
                .iter()
                .flat_map(|f| f.sets.keys().map(String::as_str))
                .collect();
            known.sort();
            known.dedup();
            return Err(SelectionError::UnknownSet {
                name: name.clone(),
                files: files
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                sets: if known.is_empty() {
                    "(none)".into()
                } else {
                    known.join(", ")
                },
                images: handles.join(", "),
            });
        }
    }
    Ok(all
        .into_iter()
        .filter(|i| wanted.contains(i.name.as_str()))
        .collect())
}

/// Command-line references, all with the same platform filter. `oci:DIR`
/// without a ref name takes every named image of the directory.
pub fn from_refs(
    refs: &[String],
    platforms: &[String],
) -> Result<Vec<ImageSelection>, SelectionError> {
    let mut out = Vec::new();
    for r in refs {
        let entry = SelectionEntry::for_ref(r, platforms);
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

#[cfg(test)]
mod set_tests {
    use super::*;

    const OBSERVABILITY: &str = r#"
sets:
  kubernetes-observability: [operator, activegate]
  application-observability: [operator, activegate, codemodules]
images:
  - ref: r.example/vendor/dynatrace-operator
    name: operator
    tags: ["v1.4.0"]
  - ref: r.example/vendor/activegate
    versions: ">=1.300 <2"
    exclude: ["*-raw"]
    newest: 2
  - ref: r.example/vendor/codemodules
    tags: ["1.301.70.20241127-162512"]
    optional: true
    tagTemplate: "{tag}-mirrored"
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn sets_pick_images_across_files() {
        let d = tempfile::tempdir().unwrap();
        let a = write(d.path(), "a.yaml", OBSERVABILITY);
        let b = write(
            d.path(),
            "b.yaml",
            "sets:\n  full: [operator, activegate, codemodules, oneagent]\nimages:\n  - ref: r.example/vendor/oneagent\n    newest: 1\n",
        );
        let names = |sel: Vec<ImageSelection>| sel.into_iter().map(|s| s.name).collect::<Vec<_>>();
        let files = [a.clone(), b.clone()];
        assert_eq!(
            names(load_files(&files, &["kubernetes-observability".into()]).unwrap()),
            vec!["operator", "activegate"]
        );
        assert_eq!(
            names(load_files(&files, &["full".into()]).unwrap()),
            vec!["operator", "activegate", "codemodules", "oneagent"]
        );
        // A handle works as a set of one; sets are unioned, each image once.
        assert_eq!(
            names(
                load_files(
                    &files,
                    &["oneagent".into(), "kubernetes-observability".into()]
                )
                .unwrap()
            ),
            vec!["operator", "activegate", "oneagent"]
        );
        assert_eq!(load_files(&files, &[]).unwrap().len(), 4);
        let err = load_files(&files, &["apm".into()]).unwrap_err().to_string();
        assert!(
            err.contains("--set apm")
                && err.contains("application-observability, full, kubernetes-observability")
                && err.contains("activegate, codemodules, oneagent, operator"),
            "{err}"
        );
        let typo = write(
            d.path(),
            "c.yaml",
            "sets:\n  s: [operater]\nimages:\n  - ref: r.example/x\n",
        );
        let err = load_files(&[a, typo], &[]).unwrap_err().to_string();
        assert!(
            err.contains("\"operater\"") && err.contains("operator"),
            "{err}"
        );
    }

    #[test]
    fn new_keys_parse_and_bad_ones_are_named() {
        let sel = parse_selection(OBSERVABILITY, "t.yaml").unwrap();
        assert_eq!(sel[1].rule.newest, Some(2));
        assert!(sel[1].tags.is_empty(), "a rule replaces the default latest");
        assert!(sel[2].optional);
        assert_eq!(sel[2].tag_template.as_deref(), Some("{tag}-mirrored"));
        for (bad, needle) in [
            (
                "images:\n  - ref: a/b\n    versions: \">=latest\"\n",
                "latest",
            ),
            ("images:\n  - ref: a/b\n    include: [\"[\"]\n", "glob"),
            ("images:\n  - ref: a/b\n    newest: 0\n", "newest: 0"),
            (
                "images:\n  - ref: a/b\n    tagTemplate: \"{nope}\"\n",
                "unknown placeholder",
            ),
            (
                "images:\n  - ref: a/b\n    tagTemplate: \"mirrored\"\n",
                "same tag",
            ),
        ] {
            let err = parse_selection(bad, "t").unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("a/b"), "{bad}: {err}");
        }
    }
}
