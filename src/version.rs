//! The version order of tags, for `versions:` ranges and `newest: N`.
//!
//! Vendors tag with more than semver: `v1.4.0` and `1.4.0` are the same
//! version; `1.301.70.20241127-162512` is a dotted numeric version whose
//! last fields are a build timestamp; `1.301.70.20241127-162512-raw` is a
//! *variant* of that version (another build of the same release), not a
//! pre-release of it. Sorting tags as text puts `1.99.1` after `1.303.5`,
//! so tags are parsed into numeric fields and compared field by field.
//!
//! A tag is a version when it is `[v]N.N[.N…]`, then optionally a numeric
//! build suffix (`-162512`), a pre-release (`-rc.1`, `-alpha`, `-beta2`,
//! `-pre`, `-dev`, `-snapshot`), a variant suffix (any other `-word`:
//! `-raw`, `-ubi`, `-fips`) and `+build` metadata (ignored). Everything
//! else (`latest`, `latest-raw`, `stable`) is not a version: it sorts after
//! every version and is picked only by its exact name or a glob.

use std::cmp::Ordering;

/// Identifiers that make a suffix a pre-release rather than a variant.
const PRE_RELEASE_WORDS: [&str; 7] = ["alpha", "beta", "rc", "pre", "preview", "dev", "snapshot"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum PreIdent {
    Num(u64),
    Text(String),
}

impl Ord for PreIdent {
    fn cmp(&self, other: &Self) -> Ordering {
        // Semver: numeric identifiers sort before alphanumeric ones.
        match (self, other) {
            (PreIdent::Num(a), PreIdent::Num(b)) => a.cmp(b),
            (PreIdent::Num(_), PreIdent::Text(_)) => Ordering::Less,
            (PreIdent::Text(_), PreIdent::Num(_)) => Ordering::Greater,
            (PreIdent::Text(a), PreIdent::Text(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for PreIdent {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A parsed version. Equality and order ignore the variant: `1.2.0` and
/// `1.2.0-raw` are the same version.
#[derive(Clone, Debug)]
pub struct Version {
    fields: Vec<u64>,
    pre: Vec<PreIdent>,
    /// The variant suffix without its dash (`raw`), if any.
    pub variant: Option<String>,
    /// The tag without a leading `v`, a variant or `+build` (`{version}` of a tag template).
    pub core: String,
}

impl Version {
    pub fn parse(tag: &str) -> Option<Version> {
        let s = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
        let s = s.split_once('+').map(|(a, _)| a).unwrap_or(s);
        let mut parts = s.split('-');
        let numeric = parts.next()?;
        let mut fields = numeric
            .split('.')
            .map(|f| {
                (!f.is_empty() && f.len() <= 19 && f.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| f.parse::<u64>().ok())
                    .flatten()
            })
            .collect::<Option<Vec<u64>>>()?;
        // One bare number (`2024`, `7`) is too often not a version.
        if fields.len() < 2 {
            return None;
        }
        let mut core_len = numeric.len();
        let mut pre = Vec::new();
        let mut variant: Vec<&str> = Vec::new();
        for part in parts {
            if part.is_empty() {
                return None;
            }
            if variant.is_empty() && pre.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                // A build timestamp (`-162512`) continues the numeric fields.
                fields.push(part.parse().ok()?);
                core_len += 1 + part.len();
            } else if variant.is_empty() && pre.is_empty() && is_pre_release(part) {
                pre = part
                    .split('.')
                    .map(|i| match i.parse::<u64>() {
                        Ok(n) if i.bytes().all(|b| b.is_ascii_digit()) => PreIdent::Num(n),
                        _ => PreIdent::Text(i.to_ascii_lowercase()),
                    })
                    .collect();
                core_len += 1 + part.len();
            } else {
                variant.push(part);
            }
        }
        Some(Version {
            fields,
            pre,
            variant: (!variant.is_empty()).then(|| variant.join("-")),
            core: s[..core_len].to_string(),
        })
    }

    pub fn is_pre_release(&self) -> bool {
        !self.pre.is_empty()
    }
}

fn is_pre_release(part: &str) -> bool {
    let lower = part.to_ascii_lowercase();
    PRE_RELEASE_WORDS.iter().any(|w| {
        lower.strip_prefix(w).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(|c: char| c == '.' || c.is_ascii_digit())
        })
    })
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.fields.len().max(other.fields.len());
        for i in 0..n {
            // Missing fields are zero: `1.10` is `1.10.0`.
            let a = self.fields.get(i).copied().unwrap_or(0);
            let b = other.fields.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            // A pre-release comes before its release.
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.pre.cmp(&other.pre),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

/// The order of tags: versions by [`Version`] (a version without variant
/// before its variants, variants by name), then every non-version by text.
pub fn compare_tags(a: &str, b: &str) -> Ordering {
    match (Version::parse(a), Version::parse(b)) {
        (Some(x), Some(y)) => x
            .cmp(&y)
            .then_with(|| x.variant.cmp(&y.variant))
            .then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Sort tags in version order, oldest first.
pub fn sort_tags(tags: &mut [String]) {
    tags.sort_by(|a, b| compare_tags(a, b));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// A version range: comparators separated by spaces or commas, all of which
/// must hold (`">=1.300 <2"`, `">=v1.9.0, <v1.11"`, `"=1.4.0"`). A
/// pre-release is in range only when a comparator names a pre-release
/// itself, so `<2` does not pick `2.0.0-rc.1`.
#[derive(Clone, Debug)]
pub struct VersionRange {
    text: String,
    comparators: Vec<(Op, Version)>,
}

#[derive(Debug, thiserror::Error)]
#[error("version range {range:?}: {detail} (expected comparators such as \">=1.300 <2\")")]
pub struct RangeError {
    pub range: String,
    pub detail: String,
}

impl VersionRange {
    pub fn parse(text: &str) -> Result<VersionRange, RangeError> {
        let err = |detail: String| RangeError {
            range: text.to_string(),
            detail,
        };
        let mut comparators = Vec::new();
        for c in text.split([' ', ',']).filter(|c| !c.is_empty()) {
            let (op, rest) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("==", Op::Eq),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(p, op)| c.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, c));
            let v = Version::parse(rest)
                .or_else(|| {
                    // `<2` and `>=1` name a major version alone.
                    rest.strip_prefix(['v', 'V'])
                        .unwrap_or(rest)
                        .parse::<u64>()
                        .ok()
                        .and_then(|n| Version::parse(&format!("{n}.0")))
                })
                .ok_or_else(|| err(format!("{rest:?} is not a version")))?;
            comparators.push((op, v));
        }
        if comparators.is_empty() {
            return Err(err("no comparator".into()));
        }
        Ok(VersionRange {
            text: text.to_string(),
            comparators,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn contains(&self, v: &Version) -> bool {
        if v.is_pre_release() && !self.comparators.iter().any(|(_, c)| c.is_pre_release()) {
            return false;
        }
        self.comparators.iter().all(|(op, c)| match op {
            Op::Ge => v >= c,
            Op::Gt => v > c,
            Op::Le => v <= c,
            Op::Lt => v < c,
            Op::Eq => v == c,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(tags: &[&str]) -> Vec<String> {
        let mut t: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
        sort_tags(&mut t);
        t
    }

    #[test]
    fn vendor_versions_compare_field_by_field() {
        assert_eq!(
            sorted(&[
                "1.303.5.20250101-101010",
                "1.99.1.20230101-000000",
                "latest",
                "1.301.70.20241127-162512-raw",
                "1.301.70.20241127-162512",
                "1.301.70.20241120-090000",
            ]),
            vec![
                "1.99.1.20230101-000000",
                "1.301.70.20241120-090000",
                "1.301.70.20241127-162512",
                "1.301.70.20241127-162512-raw",
                "1.303.5.20250101-101010",
                "latest",
            ]
        );
    }

    #[test]
    fn semver_with_or_without_v_and_pre_releases_first() {
        assert_eq!(
            sorted(&[
                "v1.10.0",
                "v1.9.3",
                "1.9.0",
                "v1.10.0-rc.2",
                "v1.10.0-rc.10",
                "v1.10.0-alpha"
            ]),
            vec![
                "1.9.0",
                "v1.9.3",
                "v1.10.0-alpha",
                "v1.10.0-rc.2",
                "v1.10.0-rc.10",
                "v1.10.0"
            ]
        );
        assert_eq!(Version::parse("v1.4.0"), Version::parse("1.4.0"));
        assert!(Version::parse("1.4.0-raw").unwrap().variant.as_deref() == Some("raw"));
        assert!(!Version::parse("1.4.0-raw").unwrap().is_pre_release());
        assert!(Version::parse("1.4.0-rc1").unwrap().is_pre_release());
        assert_eq!(Version::parse("v1.4.0+build.7").unwrap().core, "1.4.0");
        assert_eq!(
            Version::parse("1.301.70.20241127-162512-raw").unwrap().core,
            "1.301.70.20241127-162512"
        );
        for not in [
            "latest",
            "latest-raw",
            "7",
            "stable",
            "1..2",
            "sha256-abc",
            "1.x",
        ] {
            assert!(Version::parse(not).is_none(), "{not}");
        }
    }

    #[test]
    fn ranges() {
        let r = VersionRange::parse(">=1.300 <2").unwrap();
        let ok = |t: &str| r.contains(&Version::parse(t).unwrap());
        assert!(ok("1.301.70.20241127-162512"));
        assert!(ok("1.301.70.20241127-162512-raw"));
        assert!(!ok("1.299.9.20240101-000000"));
        assert!(!ok("2.0.0"));
        assert!(!ok("2.0.0-rc.1"));
        let r = VersionRange::parse(">=v1.9.0, <v1.11").unwrap();
        assert!(r.contains(&Version::parse("v1.10.2").unwrap()));
        assert!(r.contains(&Version::parse("v1.9.0").unwrap()));
        assert!(!r.contains(&Version::parse("v1.11.0").unwrap()));
        assert!(!r.contains(&Version::parse("v1.8.9").unwrap()));
        let pre = VersionRange::parse(">=1.10.0-rc.1").unwrap();
        assert!(pre.contains(&Version::parse("1.10.0-rc.2").unwrap()));
        for bad in ["", ">=latest", "~1.2"] {
            assert!(VersionRange::parse(bad).is_err(), "{bad}");
        }
    }
}
