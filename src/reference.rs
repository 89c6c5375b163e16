//! Image references: `[registry/]repository[:tag][@sha256:digest]`, with the
//! docker conventions for Docker Hub (`nginx` = `docker.io/library/nginx`).

use crate::digest::Digest;
use std::fmt;

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host as the user names it (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/nginx`, `dynatrace/dynatrace-operator`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference {input:?}: {reason}")]
    Invalid { input: String, reason: &'static str },
}

fn invalid(input: &str, reason: &'static str) -> ReferenceError {
    ReferenceError::Invalid {
        input: input.to_string(),
        reason,
    }
}

/// Tags per the distribution spec: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Repository path components: lowercase alphanumerics separated by `.`, `_`, `__` or `-`.
pub fn is_valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(invalid(input, "empty"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| invalid(input, "digest must be sha256:<64 hex>"))?,
                ),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/', so a
        // registry port is not mistaken for a tag.
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(name_tag[last_slash + i + 1..].to_string()),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            if !is_valid_tag(t) {
                return Err(invalid(
                    input,
                    "tag must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !is_valid_repository(&repository) {
            return Err(invalid(
                input,
                "repository must be lowercase path components [a-z0-9._-]",
            ));
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The last path component, e.g. `dynatrace-operator`.
    pub fn name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }

    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let r = Reference::parse("public.ecr.aws/dynatrace/dynatrace-operator:1.4.0").unwrap();
        assert_eq!(r.registry, "public.ecr.aws");
        assert_eq!(r.repository, "dynatrace/dynatrace-operator");
        assert_eq!(r.tag.as_deref(), Some("1.4.0"));
        assert_eq!(r.name(), "dynatrace-operator");

        let r = Reference::parse("127.0.0.1:5000/vendor/agent").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.tag, None);

        let r = Reference::parse("nginx").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx");

        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = Reference::parse(&format!("localhost:5000/a/b:1@{d}")).unwrap();
        assert_eq!(r.digest.unwrap().to_string(), d);
        assert_eq!(r.tag.as_deref(), Some("1"));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "UPPER/case",
            "a/b:bad tag",
            "a/b@sha256:zz",
            "a//b",
            "host:5000/-x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
