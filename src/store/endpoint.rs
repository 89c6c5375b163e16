//! Where a copy reads from or writes to, in the syntax a skopeo user
//! knows: `docker://HOST/REPO[:TAG|@DIGEST]` (or a bare `HOST/REPO:TAG`),
//! `oci:DIR[:REF]`, a bundle file (`B.tar.zst`), or `-` for a bundle on
//! stdin/stdout.

use crate::error::{Error, Result};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `HOST/PATH` with an optional tag or digest, `docker://` removed.
    Registry(String),
    Layout {
        dir: PathBuf,
        reference: Option<String>,
    },
    Bundle(PathBuf),
    Stdio,
}

fn looks_like_bundle(s: &str) -> bool {
    let p = std::path::Path::new(s);
    s.ends_with(".tar.zst")
        || s.ends_with(".tzst")
        || p.is_file()
        || s.starts_with('/')
        || s.starts_with("./")
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint> {
        let s = s.trim();
        if s == "-" {
            return Ok(Endpoint::Stdio);
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, reference) = match rest.split_once(':') {
                Some((d, r)) if !r.is_empty() => (d, Some(r.to_string())),
                _ => (rest.trim_end_matches(':'), None),
            };
            if dir.is_empty() {
                return Err(Error::Selection(format!("{s}: expected oci:DIR[:REF]")));
            }
            return Ok(Endpoint::Layout {
                dir: PathBuf::from(dir),
                reference,
            });
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(Endpoint::Registry(rest.to_string()));
        }
        if s.contains("://") {
            return Err(Error::Selection(format!(
                "{s}: unknown transport; use docker://, oci:, a bundle file or -"
            )));
        }
        if looks_like_bundle(s) {
            return Ok(Endpoint::Bundle(PathBuf::from(s)));
        }
        Ok(Endpoint::Registry(s.to_string()))
    }

    /// As written in an export's or copy's source list (`oci:…`, `docker://…`).
    pub fn source_ref(&self) -> Option<String> {
        match self {
            Endpoint::Registry(r) => Some(r.clone()),
            Endpoint::Layout { dir, reference } => Some(match reference {
                Some(r) => format!("oci:{}:{r}", dir.display()),
                None => format!("oci:{}", dir.display()),
            }),
            _ => None,
        }
    }
}

/// A registry destination: `HOST[/PATH][:TAG]`. A path with `{repo}` or
/// `{name}` (or no path) maps names as `import --to` does; any other path is
/// the exact repository every image goes to, with `TAG` replacing the
/// source tag.
pub struct RegistryDestination {
    pub target: crate::store::registry::Target,
    pub tag: Option<String>,
    pub exact: bool,
}

pub fn registry_destination(s: &str) -> Result<RegistryDestination> {
    let (host, path) = s.split_once('/').unwrap_or((s, ""));
    if path.is_empty() || path.contains('{') {
        return Ok(RegistryDestination {
            target: crate::store::registry::Target::parse(s)?,
            tag: None,
            exact: false,
        });
    }
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
        _ => (path, None),
    };
    if let Some(t) = &tag {
        if !crate::reference::is_valid_tag(t) {
            return Err(Error::Target(format!("{s}: {t:?} is not a valid tag")));
        }
    }
    Ok(RegistryDestination {
        target: crate::store::registry::Target::exact(host, repo)?,
        tag,
        exact: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(Endpoint::parse("-").unwrap(), Endpoint::Stdio);
        assert_eq!(
            Endpoint::parse("oci:/tmp/x:vendor/app:1.0").unwrap(),
            Endpoint::Layout {
                dir: "/tmp/x".into(),
                reference: Some("vendor/app:1.0".into())
            }
        );
        assert_eq!(
            Endpoint::parse("oci:dir").unwrap(),
            Endpoint::Layout {
                dir: "dir".into(),
                reference: None
            }
        );
        assert_eq!(
            Endpoint::parse("docker://h:5000/a/b:1").unwrap(),
            Endpoint::Registry("h:5000/a/b:1".into())
        );
        assert_eq!(
            Endpoint::parse("h:5000/a/b:1").unwrap(),
            Endpoint::Registry("h:5000/a/b:1".into())
        );
        assert_eq!(
            Endpoint::parse("mirror.tar.zst").unwrap(),
            Endpoint::Bundle("mirror.tar.zst".into())
        );
        assert!(Endpoint::parse("ftp://x").is_err());
    }

    #[test]
    fn registry_destinations() {
        let d = registry_destination("h:5000/mirror/app:2.0").unwrap();
        assert!(d.exact);
        assert_eq!(d.target.repository("vendor/x", None).unwrap(), "mirror/app");
        assert_eq!(d.tag.as_deref(), Some("2.0"));
        let d = registry_destination("h:5000/mirror/{name}").unwrap();
        assert!(!d.exact);
        assert_eq!(d.target.repository("vendor/x", None).unwrap(), "mirror/x");
        let d = registry_destination("h:5000").unwrap();
        assert_eq!(d.target.repository("vendor/x", None).unwrap(), "vendor/x");
    }
}
