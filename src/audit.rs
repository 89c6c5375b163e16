//! The audit trail: one JSON line per import (or verify) appended to a log
//! file, so a site can answer later who brought what in, from which bundle,
//! under which keys and policy, with what result. Never a secret: only
//! names, digests and paths.

use crate::digest::Digest;
use crate::error::{Error, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of the audit log (`"schema": 1`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub schema: u32,
    /// RFC 3339 UTC.
    pub time: String,
    pub command: String,
    pub user: String,
    pub host: String,
    /// The bundle files (or `-`).
    pub bundle: Vec<String>,
    pub bundle_digest: Option<Digest>,
    /// The public key the bundle signature was required to verify with.
    pub bundle_key: Option<PathBuf>,
    /// What the trust decision rested on: key files, or a policy file and its sha256.
    pub trust: TrustInputs,
    pub destination: Option<String>,
    pub images: Vec<AuditImage>,
    pub counts: serde_json::Value,
    /// `ok`, or `error` with the error's text.
    pub result: String,
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustInputs {
    pub keys: Vec<KeyFile>,
    pub policy: Option<KeyFile>,
}

/// A file the decision rested on, with its sha256 (what was trusted then).
#[derive(Debug, Serialize)]
pub struct KeyFile {
    pub path: PathBuf,
    pub sha256: Option<Digest>,
}

impl KeyFile {
    pub fn of(path: &Path) -> KeyFile {
        KeyFile {
            path: path.to_path_buf(),
            sha256: std::fs::read(path).ok().map(|b| Digest::of(&b)),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditImage {
    pub source: String,
    pub destination: String,
    pub digest: Digest,
    /// admitted / rejected / not checked, and the rule that decided.
    pub verdict: String,
    pub rule: Option<String>,
}

impl AuditImage {
    /// An image's record: what the policy decided (`unchecked` says what
    /// was established when no keys or policy were given).
    pub fn new(
        source: &str,
        destination: &str,
        digest: &Digest,
        verdict: Option<&crate::trust::Verdict>,
        unchecked: &str,
    ) -> AuditImage {
        AuditImage {
            source: source.to_string(),
            destination: destination.to_string(),
            digest: digest.clone(),
            verdict: match verdict {
                None => unchecked.into(),
                Some(v) if v.admitted => "admitted".into(),
                Some(_) => "rejected".into(),
            },
            rule: verdict.and_then(|v| v.admitted_by.clone().or(v.rule.clone())),
        }
    }
}

impl AuditRecord {
    pub fn new(command: &str) -> AuditRecord {
        AuditRecord {
            schema: 1,
            time: crate::time::rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            ),
            command: command.into(),
            user: whoami(),
            host: hostname(),
            bundle: Vec::new(),
            bundle_digest: None,
            bundle_key: None,
            trust: TrustInputs::default(),
            destination: None,
            images: Vec::new(),
            counts: serde_json::Value::Null,
            result: "ok".into(),
            error: None,
        }
    }

    pub fn failed(&mut self, e: &dyn std::fmt::Display) {
        self.result = "error".into();
        self.error = Some(e.to_string());
    }

    /// Append as one line with one `write` to a file opened for appending:
    /// concurrent imports never interleave their lines.
    pub fn append(&self, log: &Path) -> Result<()> {
        let mut line = serde_json::to_vec(self).map_err(|e| Error::Io {
            path: log.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(log.display()))?;
        f.write_all(&line).map_err(Error::io(log.display()))?;
        f.sync_data().map_err(Error::io(log.display()))
    }
}

fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            std::fs::read_to_string("/proc/self/loginuid")
                .map(|u| format!("uid {}", u.trim()))
                .unwrap_or_else(|_| "unknown".into())
        })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
