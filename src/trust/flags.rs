//! The trust flags of the command line, and how they combine into one
//! [`Policy`]: keys, keyless identities (Fulcio via a trusted root), a
//! site's private PKI, Rekor keys. Policy semantics live here, not in the
//! CLI: with only `--ca-roots`, the identity flags name the PKI
//! certificate's SAN; with a trusted root they name a Fulcio identity.

use super::{
    identity_rule, keyless::PkiTrust, subject_matcher, Policy, RootSource, Roots, TrustError,
};
use std::path::PathBuf;

#[derive(Clone, Debug, Default)]
pub struct PolicyFlags {
    pub keys: Vec<PathBuf>,
    pub policy: Option<PathBuf>,
    pub certificate_identity: Option<String>,
    pub certificate_identity_regexp: Option<String>,
    pub certificate_oidc_issuer: Option<String>,
    pub certificate_oidc_issuer_regexp: Option<String>,
    pub trusted_root: Option<String>,
    pub rekor_keys: Vec<PathBuf>,
    pub ca_roots: Option<PathBuf>,
    pub ca_intermediates: Option<PathBuf>,
    pub require_tlog: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagsError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("--ca-roots needs --certificate-identity[-regexp]: {0}")]
    PkiIdentity(String),
    #[error("--ca-roots: {0}")]
    PkiRoots(String),
    #[error("--certificate-identity/--certificate-oidc-issuer: {0}")]
    Identity(String),
}

impl PolicyFlags {
    fn any_identity(&self) -> bool {
        self.certificate_identity.is_some()
            || self.certificate_identity_regexp.is_some()
            || self.certificate_oidc_issuer.is_some()
            || self.certificate_oidc_issuer_regexp.is_some()
    }

    fn pki(&self) -> Result<Option<PkiTrust>, FlagsError> {
        let Some(roots) = &self.ca_roots else {
            return Ok(None);
        };
        let subject = subject_matcher(
            self.certificate_identity.as_deref(),
            self.certificate_identity_regexp.as_deref(),
        )
        .map_err(|e| FlagsError::PkiIdentity(e.to_string()))?;
        PkiTrust::from_files(roots, self.ca_intermediates.as_deref(), vec![subject])
            .map(Some)
            .map_err(|e| FlagsError::PkiRoots(e.to_string()))
    }

    /// The policy the flags describe; `None` when they ask for none.
    pub fn load(&self) -> Result<Option<Policy>, FlagsError> {
        if let Some(p) = &self.policy {
            return Ok(Some(Policy::from_file(p)?));
        }
        let pki = self.pki()?;
        // With only a private PKI, the identity flags are its SAN, not a Fulcio identity.
        let keyless = (pki.is_none() || self.trusted_root.is_some()) && self.any_identity();
        let identities = if keyless {
            vec![identity_rule(
                self.certificate_identity.as_deref(),
                self.certificate_identity_regexp.as_deref(),
                self.certificate_oidc_issuer.as_deref(),
                self.certificate_oidc_issuer_regexp.as_deref(),
            )
            .map_err(|e| FlagsError::Identity(e.to_string()))?]
        } else {
            vec![]
        };
        if self.keys.is_empty() && identities.is_empty() && pki.is_none() {
            return Ok(None);
        }
        let roots = Roots {
            trusted_root: self.trusted_root.as_deref().map(RootSource::parse),
            rekor_keys: self.rekor_keys.clone(),
            require_tlog: self.require_tlog,
        };
        let policy = Policy::from_flags(&self.keys, identities, &roots)?;
        Ok(Some(match pki {
            Some(p) => policy.with_pki(p),
            None => policy,
        }))
    }
}
