//! Sigstore bundles (v0.1–v0.3: cosign v3 image signatures and
//! attestations attached as OCI 1.1 referrers), verified offline with
//! sigstore-rust's `sigstore-verify` against a trusted root the site gives.
//!
//! Why that crate: it verifies bundles with a local `trusted_root.json` and
//! no network client (Fulcio chain and SCTs, Rekor inclusion proofs,
//! checkpoints and SETs, RFC 3161 timestamps, DSSE and message signatures),
//! is conformance-tested, and does not drag in the OIDC and registry
//! clients of the `sigstore` crate (see docs/trust.md). It is pinned to an
//! exact version: its API is still moving. Identity rules are matched here
//! (exact or regex) on the identity the verifier extracted.

use super::keyless::{IdentityRule, Signer};
use crate::digest::Digest;
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

pub use sigstore_verify::trust_root::TrustedRoot;

/// What was signed: the bytes, or (for OCI images) the manifest digest.
pub enum Signed<'a> {
    Bytes(&'a [u8]),
    Digest(&'a Digest),
}

/// A trusted root sigstore-verify cannot use.
#[derive(Debug, thiserror::Error)]
#[error("not a usable sigstore trusted_root.json: {0}")]
pub struct TrustedRootError(pub sigstore_verify::trust_root::Error);

/// Why a sigstore bundle does not count.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigstoreBundleError {
    #[error("not a sigstore bundle: {0}")]
    NotABundle(sigstore_verify::types::Error),
    #[error("trusted root: {0}")]
    TrustedRoot(sigstore_verify::Error),
    /// The subject digest is not hex (cannot happen for a parsed `Digest`).
    #[error("{0}")]
    Digest(hex::FromHexError),
    #[error("no trusted key given for a key-signed bundle")]
    NoTrustedKey,
    /// sigstore-verify refused it (for a key-signed bundle: with the last key tried).
    #[error("{0}")]
    Verify(sigstore_verify::Error),
    #[error("the certificate names no identity")]
    NoIdentity,
    #[error("the certificate names no OIDC issuer")]
    NoIssuer,
    #[error("signed by {subject} ({issuer}), which no rule trusts")]
    Untrusted { subject: String, issuer: String },
}

pub fn load_trusted_root(path: &std::path::Path) -> Result<TrustedRoot, TrustedRootError> {
    TrustedRoot::from_file(path).map_err(TrustedRootError)
}

pub fn parse_trusted_root(json: &str) -> Result<TrustedRoot, TrustedRootError> {
    TrustedRoot::from_json(json).map_err(TrustedRootError)
}

/// Verify one bundle; keyless bundles must match an identity rule, keyed
/// ones must verify with one of `keys` (name, PEM); a keyed result has an
/// empty issuer and the key's name as subject.
pub fn verify(
    bundle_json: &str,
    signed: Signed,
    root: &TrustedRoot,
    identities: &[IdentityRule],
    keys: &[(String, String)],
) -> Result<Signer, SigstoreBundleError> {
    let bundle = sigstore_verify::types::Bundle::from_json(bundle_json)
        .map_err(SigstoreBundleError::NotABundle)?;
    let verifier = Verifier::new(root).map_err(SigstoreBundleError::TrustedRoot)?;
    let artifact: sigstore_verify::types::Artifact = match signed {
        Signed::Bytes(b) => sigstore_verify::types::Artifact::from_blob(b),
        Signed::Digest(d) => {
            let mut raw = [0u8; 32];
            hex::decode_to_slice(d.hex(), &mut raw).map_err(SigstoreBundleError::Digest)?;
            sigstore_verify::types::Artifact::from_digest(sigstore_verify::types::Sha256Hash::new(
                raw,
            ))
        }
    };
    let keyed = matches!(
        bundle.verification_material.content,
        sigstore_verify::types::bundle::VerificationMaterialContent::PublicKey { .. }
    );
    if keyed {
        let mut last = SigstoreBundleError::NoTrustedKey;
        for (name, pem) in keys {
            let Ok(key) = sigstore_verify::types::DerPublicKey::from_pem(pem) else {
                continue;
            };
            match verifier.verify(
                artifact.clone(),
                &bundle,
                &PublicKeyVerificationPolicy::new(key),
            ) {
                Ok(r) => {
                    return Ok(Signer {
                        subject: name.clone(),
                        issuer: String::new(),
                        signed_at: r.integrated_time().map(|t| t.as_second()).unwrap_or(0),
                    })
                }
                Err(e) => last = SigstoreBundleError::Verify(e),
            }
        }
        return Err(last);
    }
    let result = verifier
        .verify(artifact, &bundle, &VerificationPolicy::any_identity())
        .map_err(SigstoreBundleError::Verify)?;
    let subject = result
        .identity()
        .map(|s| s.as_str().to_string())
        .ok_or(SigstoreBundleError::NoIdentity)?;
    let issuer = result
        .issuer()
        .map(str::to_string)
        .ok_or(SigstoreBundleError::NoIssuer)?;
    if !identities
        .iter()
        .any(|r| r.subject.matches(&subject) && r.issuer.matches(&issuer))
    {
        return Err(SigstoreBundleError::Untrusted { subject, issuer });
    }
    let signed_at = result
        .integrated_time()
        .or_else(|| result.verified_timestamps().first().copied())
        .map(|t| t.as_second())
        .unwrap_or(0);
    Ok(Signer {
        subject,
        issuer,
        signed_at,
    })
}
