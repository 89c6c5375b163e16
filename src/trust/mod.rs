//! Trust: verifying cosign signatures and attestations offline against
//! keys, identities and roots the site gives, and a policy saying which
//! images need what.
//!
//! Trust comes from the site, never from the bundle. Verified here:
//! key-based cosign `.sig` (simple-signing payload) and `.att` (DSSE), with
//! ECDSA P-256/P-384, RSA (PKCS#1 v1.5 and PSS) and Ed25519 keys, and their
//! Rekor SETs when Rekor keys are given (`tlog`); keyless `.sig` and `.att`
//! (Fulcio certificate, SCT, Rekor SET; `keyless`); sigstore bundles attached
//! as referrers (`bundles`, through sigstore-verify). All verification code
//! sits behind this module, so a crate swap stays a local change.
//!
//! Errors are typed (`thiserror`), one enum per step (`tlog::TlogError`,
//! `keyless::KeylessError`, `bundles::SigstoreBundleError`, …); callers match
//! on variants, never on message text. An inner error (I/O, JSON, DER,
//! sigstore-verify) is shown in the message and not returned by `source()`,
//! so a printer of the error chain does not repeat it.

pub mod bundles;
mod flags;
pub mod keyless;
pub mod tlog;

pub use flags::{FlagsError, PolicyFlags};

use crate::digest::Digest;
use crate::image::{ArtifactKind, ImageEntry};
use crate::oci::{ManifestView, COSIGN_SIMPLESIGNING, DSSE_ENVELOPE};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
pub const ANNOTATION_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("key file {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("policy file {path}: {detail}")]
    Policy { path: String, detail: String },
}

/// A public key of a type that cannot verify cosign signatures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error(
        "not a PEM public key (SubjectPublicKeyInfo) of type ECDSA P-256/P-384, RSA or Ed25519"
    )]
    Unsupported,
}

/// An identity rule (keyless signer, or SAN of a private-PKI certificate)
/// that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// `what` is `identity` or `issuer`.
    #[error("{what} regexp: {error}")]
    Regexp {
        what: &'static str,
        error: regex::Error,
    },
    /// Neither or both of the exact and the regexp form were given.
    #[error("give exactly one of {what} and {what}Regexp")]
    NotExactlyOne { what: &'static str },
}

enum KeyKind {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(Box<rsa::PublicKey>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A public key the site trusts, with the name it is reported under.
pub struct TrustedKey {
    pub name: String,
    /// The PEM text, for verifiers that take keys in that form.
    pub pem: String,
    /// DER SubjectPublicKeyInfo, to recognise the key in a Rekor entry.
    spki: Vec<u8>,
    kind: KeyKind,
}

impl TrustedKey {
    pub fn from_file(path: &Path) -> Result<TrustedKey, TrustError> {
        let err = |detail: String| TrustError::Key {
            path: path.display().to_string(),
            detail,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        TrustedKey::from_pem(&path.display().to_string(), &pem).map_err(|e| err(e.to_string()))
    }

    pub fn from_pem(name: &str, pem: &str) -> Result<TrustedKey, KeyError> {
        use p256::pkcs8::DecodePublicKey;
        let kind = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            KeyKind::P256(k)
        } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            KeyKind::P384(k)
        } else if let Ok(k) = rsa::PublicKey::from_public_key_pem(pem) {
            KeyKind::Rsa(Box::new(k))
        } else if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            KeyKind::Ed25519(k)
        } else {
            return Err(KeyError::Unsupported);
        };
        Ok(TrustedKey {
            name: name.to_string(),
            pem: pem.to_string(),
            spki: tlog::spki_of_pem(pem.as_bytes()).unwrap_or_default(),
            kind,
        })
    }

    /// Check `sig` (DER for ECDSA, raw for RSA and Ed25519) over `msg`.
    pub fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match &self.kind {
            KeyKind::P256(k) => {
                p256::ecdsa::DerSignature::try_from(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
            KeyKind::P384(k) => {
                p384::ecdsa::DerSignature::try_from(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
            KeyKind::Rsa(k) => {
                let pkcs1 = rsa::pkcs1v15::Signature::try_from(sig).is_ok_and(|s| {
                    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new((**k).clone())
                        .verify(msg, &s)
                        .is_ok()
                });
                pkcs1
                    || rsa::pss::Signature::try_from(sig).is_ok_and(|s| {
                        rsa::pss::VerifyingKey::<sha2::Sha256>::new((**k).clone())
                            .verify(msg, &s)
                            .is_ok()
                    })
            }
            KeyKind::Ed25519(k) => {
                ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
        }
    }
}

/// One signature or attestation found for an image, and what came of it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub kind: ArtifactKind,
    /// The manifest signed (image index or platform manifest).
    pub subject: Digest,
    pub artifact: Digest,
    /// The key that verified it, if one did.
    pub key: Option<String>,
    /// For attestations: the in-toto predicate type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    /// `critical.identity.docker-reference` of a cosign payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_reference: Option<String>,
    /// For keyless signatures: when Rekor logged it (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<String>,
    /// Why it does not count, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}
#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: ImageRef,
    #[serde(rename = "type")]
    kind: String,
}
#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference", default)]
    docker_reference: String,
}
#[derive(Deserialize)]
struct ImageRef {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSig>,
}
#[derive(Deserialize)]
struct EnvelopeSig {
    sig: String,
}
#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "predicateType", default)]
    predicate_type: String,
    #[serde(default)]
    subject: Vec<StatementSubject>,
}
#[derive(Deserialize)]
struct StatementSubject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// DSSE pre-authentication encoding (what a DSSE signature covers).
pub fn dsse_pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// Standard base64, ignoring line breaks as Go's decoder does (cosign and
/// containers/image write wrapped signatures).
pub(crate) fn b64(s: &str) -> Option<Vec<u8>> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

fn first_key<'k>(keys: &'k [TrustedKey], msg: &[u8], sig: &[u8]) -> Option<&'k TrustedKey> {
    keys.iter().find(|k| k.verifies(msg, sig))
}

/// Check one cosign signature layer: the payload must name `subject`, and
/// a trusted key must have signed the payload bytes exactly.
fn check_simple_signing(
    layer: &crate::oci::Descriptor,
    payload: &[u8],
    subject: &Digest,
    trust: &Trust,
    f: &mut Finding,
) {
    let keys = trust.keys;
    let Some(sig) = layer
        .annotations
        .get(ANNOTATION_SIGNATURE)
        .and_then(|s| b64(s))
    else {
        f.problem = Some("no dev.cosignproject.cosign/signature annotation".into());
        return;
    };
    let parsed: SimpleSigning = match serde_json::from_slice(payload) {
        Ok(p) => p,
        Err(e) => {
            f.problem = Some(format!(
                "payload is not a cosign simple-signing document: {e}"
            ));
            return;
        }
    };
    f.docker_reference = Some(parsed.critical.identity.docker_reference.clone());
    if parsed.critical.kind != "cosign container image signature" {
        f.problem = Some(format!(
            "payload type {:?} is not a cosign container image signature",
            parsed.critical.kind
        ));
        return;
    }
    if parsed.critical.image.digest != subject.to_string() {
        f.problem = Some(format!(
            "payload signs {}, not {subject}",
            parsed.critical.image.digest
        ));
        return;
    }
    if layer.annotations.contains_key(ANNOTATION_CERTIFICATE) {
        let result = certificate_signer(
            trust,
            |roots| keyless::verify(&layer.annotations, payload, roots, trust.identities),
            |pki| {
                keyless::verify_pki(
                    &layer.annotations,
                    payload,
                    std::slice::from_ref(&sig),
                    pki,
                    now(),
                )
            },
        );
        record_certificate_signer(result, "signature", f);
        return;
    }
    match first_key(keys, payload, &sig) {
        Some(k) => {
            f.key = Some(k.name.clone());
            check_keyed_tlog(&layer.annotations, payload, Some(&sig), k, trust, f);
        }
        None => f.problem = Some("no trusted key verifies this signature".into()),
    }
}

/// The Rekor SET of a key-based signature or attestation: checked whenever
/// the site gave Rekor keys, required when the rule says `requireTlog`. A SET
/// that fails makes the signature not count (cosign refuses it too).
fn check_keyed_tlog(
    annotations: &std::collections::BTreeMap<String, String>,
    content: &[u8],
    sig: Option<&[u8]>,
    key: &TrustedKey,
    trust: &Trust,
    f: &mut Finding,
) {
    let logs = trust.roots.map(|r| &r.rekor[..]).unwrap_or_default();
    let result = match annotations.get(tlog::ANNOTATION_BUNDLE) {
        Some(set) if !logs.is_empty() => tlog::verify_set(set, logs)
            .and_then(|entry| {
                let kinds: &[&str] = if sig.is_some() {
                    &["hashedrekord"]
                } else {
                    &["intoto", "dsse"]
                };
                entry.check_names(kinds, content, sig, &key.spki)?;
                Ok(Some(entry.integrated_time))
            })
            .map_err(RekorError::Tlog),
        Some(_) if trust.require_tlog => Err(RekorError::NoKey),
        None if trust.require_tlog => Err(RekorError::NoSet),
        _ => Ok(None),
    };
    match result {
        Ok(t) => f.signed_at = t.map(crate::time::rfc3339),
        Err(e) => {
            f.key = None;
            f.problem = Some(format!("Rekor: {e}"));
        }
    }
}

/// Why the Rekor SET of a key-based signature does not count.
#[derive(Debug, thiserror::Error)]
enum RekorError {
    #[error("no Rekor key given to check its SET (--rekor-key or a trusted root)")]
    NoKey,
    #[error("no Rekor SET, and the rule requires one")]
    NoSet,
    #[error(transparent)]
    Tlog(#[from] tlog::TlogError),
}

/// What one rule trusts: keys, keyless identities, and the roots for those.
pub struct Trust<'a> {
    pub keys: &'a [TrustedKey],
    /// The site's private PKI, for certificate signatures without Fulcio/Rekor.
    pub pki: Option<&'a keyless::PkiTrust>,
    /// Key-based signatures must carry a Rekor SET that verifies.
    pub require_tlog: bool,
    pub identities: &'a [keyless::IdentityRule],
    pub roots: Option<&'a keyless::KeylessRoots>,
    pub sigstore_root: Option<&'a bundles::TrustedRoot>,
}

pub const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle";
/// cosign v3 signs images with a DSSE statement of this type: a signature, not an attestation.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// A sigstore bundle attached as a referrer (cosign v3): a signature when it
/// holds a message signature or a cosign-sign statement, else an attestation.
fn check_sigstore_bundle(data: &[u8], subject: &Digest, trust: &Trust, f: &mut Finding) {
    let json: serde_json::Value = match serde_json::from_slice(data) {
        Ok(v) => v,
        Err(e) => {
            f.problem = Some(format!("sigstore bundle is not JSON: {e}"));
            return;
        }
    };
    f.predicate_type = json["dsseEnvelope"]["payload"]
        .as_str()
        .and_then(b64)
        .and_then(|p| serde_json::from_slice::<Statement>(&p).ok())
        .map(|s| s.predicate_type);
    f.kind = match f.predicate_type.as_deref() {
        None | Some(COSIGN_SIGN_PREDICATE) => ArtifactKind::Signature,
        Some(_) => ArtifactKind::Attestation,
    };
    let Some(root) = trust.sigstore_root else {
        f.problem = Some("sigstore bundle: no trusted root given (--trusted-root)".into());
        return;
    };
    let keys: Vec<(String, String)> = trust
        .keys
        .iter()
        .map(|k| (k.name.clone(), k.pem.clone()))
        .collect();
    let text = String::from_utf8_lossy(data);
    match bundles::verify(
        &text,
        bundles::Signed::Digest(subject),
        root,
        trust.identities,
        &keys,
    ) {
        Ok(s) if s.issuer.is_empty() => f.key = Some(s.subject),
        Ok(s) => {
            f.key = Some(format!("keyless: {} ({})", s.subject, s.issuer));
            f.signed_at = (s.signed_at > 0).then(|| crate::time::rfc3339(s.signed_at));
        }
        Err(e) => f.problem = Some(format!("sigstore bundle: {e}")),
    }
}

fn check_dsse(
    layer: &crate::oci::Descriptor,
    envelope: &[u8],
    subject: &Digest,
    trust: &Trust,
    f: &mut Finding,
) {
    let env: Envelope = match serde_json::from_slice(envelope) {
        Ok(e) => e,
        Err(e) => {
            f.problem = Some(format!("not a DSSE envelope: {e}"));
            return;
        }
    };
    let Some(payload) = b64(&env.payload) else {
        f.problem = Some("DSSE payload is not base64".into());
        return;
    };
    if let Ok(st) = serde_json::from_slice::<Statement>(&payload) {
        f.predicate_type = Some(st.predicate_type.clone());
        if !st
            .subject
            .iter()
            .any(|s| s.digest.get("sha256") == Some(&subject.hex()))
        {
            f.problem = Some(format!("the statement's subjects do not include {subject}"));
            return;
        }
    } else {
        f.problem = Some("DSSE payload is not an in-toto statement".into());
        return;
    }
    let sigs: Vec<Vec<u8>> = env.signatures.iter().filter_map(|s| b64(&s.sig)).collect();
    if layer.annotations.contains_key(ANNOTATION_CERTIFICATE) {
        let result = certificate_signer(
            trust,
            |roots| {
                keyless::verify_attestation(
                    &layer.annotations,
                    envelope,
                    &env.payload_type,
                    &payload,
                    &sigs,
                    roots,
                    trust.identities,
                )
            },
            |pki| {
                let pae = dsse_pae(&env.payload_type, &payload);
                keyless::verify_pki(&layer.annotations, &pae, &sigs, pki, now())
            },
        );
        record_certificate_signer(result, "attestation", f);
        return;
    }
    let pae = dsse_pae(&env.payload_type, &payload);
    match sigs.iter().find_map(|sig| first_key(trust.keys, &pae, sig)) {
        Some(k) => {
            f.key = Some(k.name.clone());
            check_keyed_tlog(&layer.annotations, envelope, None, k, trust, f);
        }
        None => f.problem = Some("no trusted key verifies this attestation".into()),
    }
}

/// Why a certificate-based signature was not admitted.
#[derive(Debug, thiserror::Error)]
enum CertError {
    /// The rule gives nothing to check a certificate with.
    #[error("keyless: no trusted root and certificate identity given (--trusted-root, --certificate-identity, --certificate-oidc-issuer; or --ca-roots for a private PKI)")]
    NoTrust,
    /// Every way the rule gives failed, each for its reason.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Failed(Vec<CertAttempt>),
}

/// One way of checking a certificate that failed.
#[derive(Debug, thiserror::Error)]
enum CertAttempt {
    #[error(transparent)]
    Fulcio(keyless::KeylessError),
    #[error("site PKI: {0}")]
    SitePki(keyless::KeylessError),
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Who made a certificate-based signature: a Fulcio identity (checked with
/// the trusted root) or a certificate of the site's own PKI; the label names which.
fn certificate_signer(
    trust: &Trust,
    fulcio: impl FnOnce(&keyless::KeylessRoots) -> Result<keyless::Signer, keyless::KeylessError>,
    pki: impl FnOnce(&keyless::PkiTrust) -> Result<keyless::Signer, keyless::KeylessError>,
) -> Result<(String, Option<i64>), CertError> {
    let mut tried = Vec::new();
    if let Some(roots) = trust.roots.filter(|r| r.has_fulcio()) {
        if !trust.identities.is_empty() {
            match fulcio(roots) {
                Ok(s) => {
                    return Ok((
                        format!("keyless: {} ({})", s.subject, s.issuer),
                        Some(s.signed_at),
                    ))
                }
                Err(e) => tried.push(CertAttempt::Fulcio(e)),
            }
        }
    }
    if let Some(p) = trust.pki {
        match pki(p) {
            Ok(s) => {
                return Ok((
                    format!("certificate: {} (issued by {})", s.subject, s.issuer),
                    None,
                ))
            }
            Err(e) => tried.push(CertAttempt::SitePki(e)),
        }
    }
    if tried.is_empty() {
        Err(CertError::NoTrust)
    } else {
        Err(CertError::Failed(tried))
    }
}

fn record_certificate_signer(
    result: Result<(String, Option<i64>), CertError>,
    what: &str,
    f: &mut Finding,
) {
    match result {
        Ok((label, t)) => {
            f.key = Some(label);
            f.signed_at = t.map(crate::time::rfc3339);
        }
        Err(e @ CertError::NoTrust) => f.problem = Some(e.to_string()),
        Err(e @ CertError::Failed(_)) => f.problem = Some(format!("keyless {what}: {e}")),
    }
}

/// Everything needed to check an image's artifacts: manifest bytes and small blobs by digest.
pub trait ArtifactStore {
    fn manifest(&self, digest: &Digest) -> Option<(Vec<u8>, String)>;
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>>;
}

/// Check every signature and attestation carried for `image`.
pub fn check_image(image: &ImageEntry, store: &dyn ArtifactStore, trust: &Trust) -> Vec<Finding> {
    let mut out = Vec::new();
    for a in &image.artifacts {
        if !carries_signatures(a) {
            continue;
        }
        let mut base = Finding {
            kind: a.kind,
            subject: a.subject.clone(),
            artifact: a.digest.clone(),
            key: None,
            predicate_type: None,
            docker_reference: None,
            signed_at: None,
            problem: None,
        };

        let Some((bytes, mt)) = store.manifest(&a.digest) else {
            base.problem = Some("artifact manifest missing".into());
            out.push(base);
            continue;
        };
        let view = match ManifestView::parse(&bytes, Some(&mt)) {
            Ok(v) => v,
            Err(e) => {
                base.problem = Some(e.to_string());
                out.push(base);
                continue;
            }
        };
        for layer in &view.layers {
            let mut f = base.clone();
            let Some(data) = store.blob(&layer.digest) else {
                f.problem = Some(format!("blob {} missing", layer.digest));
                out.push(f);
                continue;
            };
            match layer.media_type.as_str() {
                COSIGN_SIMPLESIGNING => {
                    check_simple_signing(layer, &data, &a.subject, trust, &mut f)
                }
                DSSE_ENVELOPE => check_dsse(layer, &data, &a.subject, trust, &mut f),
                mt if mt.starts_with(SIGSTORE_BUNDLE) => {
                    check_sigstore_bundle(&data, &a.subject, trust, &mut f)
                }
                other => f.problem = Some(format!("layer media type {other} is not a signature")),
            }
            out.push(f);
        }
    }
    out
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IdentityFile {
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    identity_regexp: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    issuer_regexp: Option<String>,
}

/// Build an identity rule from exact/regex alternatives (exactly one of each).
pub fn identity_rule(
    identity: Option<&str>,
    identity_regexp: Option<&str>,
    issuer: Option<&str>,
    issuer_regexp: Option<&str>,
) -> Result<keyless::IdentityRule, IdentityError> {
    let pick = |exact: Option<&str>, re: Option<&str>, what: &'static str| match (exact, re) {
        (Some(e), None) => Ok(keyless::Matcher::Exact(e.to_string())),
        (None, Some(r)) => {
            keyless::Matcher::regex(r).map_err(|error| IdentityError::Regexp { what, error })
        }
        _ => Err(IdentityError::NotExactlyOne { what }),
    };
    Ok(keyless::IdentityRule {
        subject: pick(identity, identity_regexp, "identity")?,
        issuer: pick(issuer, issuer_regexp, "issuer")?,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFile {
    /// Keyless signers (certificate identity and OIDC issuer).
    #[serde(default)]
    keyless: Vec<IdentityFile>,
    /// Globs over `registry/repository` (`*` within a path component, `**` across).
    repositories: Vec<String>,
    #[serde(default)]
    keys: Vec<PathBuf>,
    /// in-toto predicate types that must be attested by one of the keys.
    #[serde(default)]
    attestations: Vec<String>,
    /// Key-based signatures must carry a Rekor SET that verifies.
    #[serde(default)]
    require_tlog: bool,
    /// Certificates of the site's private PKI (no Fulcio, Rekor or CT log).
    #[serde(default)]
    certificates: Option<PkiFile>,
    #[serde(default)]
    mode: Mode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PkiFile {
    roots: PathBuf,
    #[serde(default)]
    intermediates: Option<PathBuf>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    identity_regexp: Option<String>,
}

/// One SAN matcher from exact/regex alternatives (exactly one).
pub fn subject_matcher(
    identity: Option<&str>,
    identity_regexp: Option<&str>,
) -> Result<keyless::Matcher, IdentityError> {
    let what = "identity";
    match (identity, identity_regexp) {
        (Some(e), None) => Ok(keyless::Matcher::Exact(e.to_string())),
        (None, Some(r)) => {
            keyless::Matcher::regex(r).map_err(|error| IdentityError::Regexp { what, error })
        }
        _ => Err(IdentityError::NotExactlyOne { what }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    /// sigstore trusted_root.json for keyless rules (relative to the policy
    /// file), or `sha256:<hex>` to use the copy the bundle carries.
    #[serde(default)]
    trusted_root: Option<String>,
    /// Rekor public keys (PEM) for the SETs of key-based signatures.
    #[serde(default)]
    rekor_keys: Vec<PathBuf>,
    rules: Vec<RuleFile>,
}

pub struct Rule {
    pub patterns: Vec<String>,
    matcher: globset::GlobSet,
    pub keys: Vec<TrustedKey>,
    pub identities: Vec<keyless::IdentityRule>,
    pub attestations: Vec<String>,
    pub require_tlog: bool,
    pub pki: Option<keyless::PkiTrust>,
    pub mode: Mode,
}

/// The roots keyless and tlog checks use.
#[derive(Default)]
pub struct LoadedRoots {
    pub keyless: Option<keyless::KeylessRoots>,
    pub sigstore: Option<bundles::TrustedRoot>,
}

fn rekor_keys(paths: &[PathBuf]) -> Result<Vec<tlog::RekorKey>, TrustError> {
    paths
        .iter()
        .map(|p| {
            keyless::rekor_key_file(p).map_err(|e| TrustError::Key {
                path: p.display().to_string(),
                detail: e.to_string(),
            })
        })
        .collect()
}

/// A trusted root file and/or Rekor keys.
fn load_all_roots(
    trusted_root: Option<&Path>,
    rekor: Vec<tlog::RekorKey>,
) -> Result<LoadedRoots, TrustError> {
    match trusted_root {
        Some(p) => {
            let (mut k, s) = load_roots(p).map_err(|e| TrustError::Key {
                path: p.display().to_string(),
                detail: e.to_string(),
            })?;
            k.rekor.extend(rekor);
            Ok(LoadedRoots {
                keyless: Some(k),
                sigstore: Some(s),
            })
        }
        None if rekor.is_empty() => Ok(LoadedRoots::default()),
        None => Ok(LoadedRoots {
            keyless: Some(keyless::KeylessRoots::rekor_only(rekor)),
            sigstore: None,
        }),
    }
}

/// The roots loaded now, the digest of a root to take from the bundle later,
/// and the Rekor keys to add to it then.
fn resolve_roots(
    source: Option<RootSource>,
    rekor_paths: &[PathBuf],
) -> Result<(LoadedRoots, Option<Digest>, Vec<tlog::RekorKey>), TrustError> {
    let rekor = rekor_keys(rekor_paths)?;
    match source {
        Some(RootSource::Pinned(d)) => Ok((load_all_roots(None, rekor.clone())?, Some(d), rekor)),
        Some(RootSource::File(p)) => Ok((load_all_roots(Some(&p), rekor)?, None, vec![])),
        None => Ok((load_all_roots(None, rekor)?, None, vec![])),
    }
}

/// Where the trusted root comes from: a file the site holds, or the copy a
/// bundle carries, used only when its sha256 is the one the site pinned.
#[derive(Clone, Debug)]
pub enum RootSource {
    File(PathBuf),
    Pinned(Digest),
}

impl RootSource {
    /// `sha256:<hex>` pins the bundle's copy; anything else is a file.
    pub fn parse(s: &str) -> RootSource {
        match s.parse::<Digest>() {
            Ok(d) if s.starts_with("sha256:") => RootSource::Pinned(d),
            _ => RootSource::File(PathBuf::from(s)),
        }
    }
}

/// A trusted root (a file the site gives, or the copy a bundle carries) that
/// cannot be used.
#[derive(Debug, thiserror::Error)]
enum RootError {
    #[error("the pinned trusted root {0} is not in this bundle (export --carry-trusted-root)")]
    NotCarried(Digest),
    #[error("the bundle's trusted root is not {0}")]
    OtherDigest(Digest),
    #[error("the carried trusted root is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Keyless(#[from] keyless::RootsError),
    #[error(transparent)]
    Sigstore(#[from] bundles::TrustedRootError),
}

/// The trusted root a bundle carries, accepted only under the pinned digest.
fn carried_roots(
    pinned: &Digest,
    store: &dyn ArtifactStore,
    extra_rekor: &[tlog::RekorKey],
) -> Result<LoadedRoots, RootError> {
    let bytes = store
        .blob(pinned)
        .ok_or_else(|| RootError::NotCarried(pinned.clone()))?;
    if Digest::of(&bytes) != *pinned {
        return Err(RootError::OtherDigest(pinned.clone()));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| RootError::NotUtf8)?;
    let mut k = keyless::KeylessRoots::from_trusted_root_json(&bytes)?;
    k.rekor.extend(extra_rekor.iter().cloned());
    Ok(LoadedRoots {
        keyless: Some(k),
        sigstore: Some(bundles::parse_trusted_root(text)?),
    })
}

impl LoadedRoots {
    fn has_fulcio(&self) -> bool {
        self.keyless.as_ref().is_some_and(|k| k.has_fulcio())
    }
}

/// One `trusted_root.json`, read for both keyless paths (legacy `.sig` and bundles).
fn load_roots(path: &Path) -> Result<(keyless::KeylessRoots, bundles::TrustedRoot), RootError> {
    Ok((
        keyless::KeylessRoots::from_trusted_root(path)?,
        bundles::load_trusted_root(path)?,
    ))
}

/// Trust roots given on the command line.
#[derive(Default)]
pub struct Roots {
    /// sigstore trusted_root.json (Fulcio CAs, Rekor and CT log keys).
    pub trusted_root: Option<RootSource>,
    /// Extra Rekor public keys (PEM).
    pub rekor_keys: Vec<PathBuf>,
    /// Key-based signatures must carry a verified Rekor SET.
    pub require_tlog: bool,
}

impl Roots {
    pub fn with_trusted_root(path: &Path) -> Roots {
        Roots {
            trusted_root: Some(RootSource::File(path.to_path_buf())),
            ..Roots::default()
        }
    }
}

/// What a site requires, rule by rule; the first rule matching an image decides.
pub struct Policy {
    pub rules: Vec<Rule>,
    roots: LoadedRoots,
    /// A trusted root to take from the bundle, by digest.
    pinned_root: Option<Digest>,
    /// Rekor keys given beside a pinned root.
    extra_rekor: Vec<tlog::RekorKey>,
    carried: std::sync::OnceLock<Result<LoadedRoots, RootError>>,
}

fn glob_set(
    patterns: &[String],
    err: impl Fn(String) -> TrustError,
) -> Result<globset::GlobSet, TrustError> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(
            globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| err(format!("pattern {p:?}: {e}")))?,
        );
    }
    b.build().map_err(|e| err(e.to_string()))
}

impl Policy {
    /// `--key` shortcuts: every image must carry a valid signature from one of these.
    pub fn from_keys(paths: &[PathBuf]) -> Result<Policy, TrustError> {
        Policy::from_flags(paths, vec![], &Roots::default())
    }

    /// Add the site's private PKI to the shortcut rule (`--ca-roots`).
    pub fn with_pki(mut self, pki: keyless::PkiTrust) -> Policy {
        if let Some(r) = self.rules.first_mut() {
            r.pki = Some(pki);
        }
        self
    }

    /// The command-line shortcuts: keys and/or one keyless identity, for every image.
    pub fn from_flags(
        paths: &[PathBuf],
        identities: Vec<keyless::IdentityRule>,
        roots_given: &Roots,
    ) -> Result<Policy, TrustError> {
        let flag_err = |d: String| TrustError::Policy {
            path: "command line".into(),
            detail: d,
        };
        let keys = paths
            .iter()
            .map(|p| TrustedKey::from_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        let (roots, pinned_root, extra_rekor) =
            resolve_roots(roots_given.trusted_root.clone(), &roots_given.rekor_keys)?;
        if !identities.is_empty() && pinned_root.is_none() && !roots.has_fulcio() {
            return Err(flag_err(
                "--certificate-identity needs --trusted-root (a sigstore trusted_root.json, or the sha256 of the one the bundle carries)".into(),
            ));
        }
        let patterns = vec!["**".to_string()];
        let matcher = glob_set(&patterns, flag_err)?;
        Ok(Policy {
            rules: vec![Rule {
                patterns,
                matcher,
                keys,
                identities,
                attestations: vec![],
                require_tlog: roots_given.require_tlog,
                pki: None,
                mode: Mode::Enforce,
            }],
            roots,
            pinned_root,
            extra_rekor,
            carried: Default::default(),
        })
    }

    /// A policy file (YAML); key paths are relative to the file.
    pub fn from_file(path: &Path) -> Result<Policy, TrustError> {
        let name = path.display().to_string();
        let err = |detail: String| TrustError::Policy {
            path: name.clone(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: PolicyFile = serde_saphyr::from_str(&text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rekor_paths: Vec<PathBuf> = file.rekor_keys.iter().map(|k| base.join(k)).collect();
        let source = file
            .trusted_root
            .as_deref()
            .map(|r| match RootSource::parse(r) {
                RootSource::File(p) => RootSource::File(base.join(p)),
                pinned => pinned,
            });
        let (roots, pinned_root, extra_rekor) = resolve_roots(source, &rekor_paths)?;
        let mut rules = Vec::new();
        for (i, r) in file.rules.into_iter().enumerate() {
            if r.keys.is_empty() && r.keyless.is_empty() && r.certificates.is_none() {
                return Err(err(format!(
                    "rules[{i}] names no keys, no keyless signers and no certificates"
                )));
            }
            let pki = match &r.certificates {
                None => None,
                Some(c) => {
                    let at =
                        |e: &dyn std::fmt::Display| err(format!("rules[{i}].certificates: {e}"));
                    let subject =
                        subject_matcher(c.identity.as_deref(), c.identity_regexp.as_deref())
                            .map_err(|e| at(&e))?;
                    let pki = keyless::PkiTrust::from_files(
                        &base.join(&c.roots),
                        c.intermediates.as_ref().map(|p| base.join(p)).as_deref(),
                        vec![subject],
                    )
                    .map_err(|e| at(&e))?;
                    Some(pki)
                }
            };
            if !r.keyless.is_empty() && pinned_root.is_none() && !roots.has_fulcio() {
                return Err(err(format!(
                    "rules[{i}] has keyless signers but the policy has no trustedRoot"
                )));
            }
            let keys = r
                .keys
                .iter()
                .map(|k| TrustedKey::from_file(&base.join(k)))
                .collect::<Result<Vec<_>, _>>()?;
            let identities = r
                .keyless
                .iter()
                .map(|k| {
                    identity_rule(
                        k.identity.as_deref(),
                        k.identity_regexp.as_deref(),
                        k.issuer.as_deref(),
                        k.issuer_regexp.as_deref(),
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("rules[{i}].keyless: {e}")))?;
            let matcher = glob_set(&r.repositories, err)?;
            rules.push(Rule {
                patterns: r.repositories,
                matcher,
                keys,
                identities,
                attestations: r.attestations,
                require_tlog: r.require_tlog,
                pki,
                mode: r.mode,
            });
        }
        Ok(Policy {
            rules,
            roots,
            pinned_root,
            extra_rekor,
            carried: Default::default(),
        })
    }

    fn rule_for(&self, image: &ImageEntry) -> Option<&Rule> {
        let name = format!("{}/{}", image.registry, image.repository);
        self.rules
            .iter()
            .find(|r| r.matcher.is_match(&name) || r.matcher.is_match(&image.repository))
    }

    /// The digest of the trusted root to take from the bundle, if pinned.
    pub fn pinned_root(&self) -> Option<&Digest> {
        self.pinned_root.as_ref()
    }

    fn roots_for(&self, store: &dyn ArtifactStore) -> Result<&LoadedRoots, &RootError> {
        match &self.pinned_root {
            None => Ok(&self.roots),
            Some(d) => self
                .carried
                .get_or_init(|| carried_roots(d, store, &self.extra_rekor))
                .as_ref(),
        }
    }

    /// Decide on one image.
    pub fn evaluate(&self, image: &ImageEntry, store: &dyn ArtifactStore) -> Verdict {
        let refused = |rule: Option<&Rule>, reason: String| Verdict {
            image: image.source.clone(),
            digest: image.source_digest.clone(),
            rule: rule.map(|r| r.patterns.join(", ")),
            admitted: false,
            enforced: true,
            admitted_by: None,
            reasons: vec![reason],
            findings: vec![],
        };
        let Some(rule) = self.rule_for(image) else {
            return refused(None, "no policy rule matches this repository".into());
        };
        let roots = match self.roots_for(store) {
            Ok(r) => r,
            Err(e) => return refused(Some(rule), e.to_string()),
        };
        let trust = Trust {
            keys: &rule.keys,
            pki: rule.pki.as_ref(),
            require_tlog: rule.require_tlog,
            identities: &rule.identities,
            roots: roots.keyless.as_ref(),
            sigstore_root: roots.sigstore.as_ref(),
        };
        let findings = check_image(image, store, &trust);
        let signed_by = findings
            .iter()
            .find(|f| {
                f.kind == ArtifactKind::Signature
                    && f.subject == image.source_digest
                    && f.key.is_some()
            })
            .and_then(|f| f.key.clone());
        let mut reasons = Vec::new();
        if signed_by.is_none() {
            let seen: Vec<String> = findings
                .iter()
                .filter(|f| f.subject == image.source_digest && f.kind == ArtifactKind::Signature)
                .filter_map(|f| f.problem.clone())
                .collect();
            reasons.push(if seen.is_empty() {
                format!("no signature for {}", image.source_digest)
            } else {
                format!(
                    "no valid signature for {}: {}",
                    image.source_digest,
                    seen.join("; ")
                )
            });
        }
        for pt in &rule.attestations {
            let ok = findings.iter().any(|f| {
                f.kind == ArtifactKind::Attestation
                    && f.key.is_some()
                    && f.predicate_type.as_deref() == Some(pt)
                    && f.subject == image.source_digest
            });
            if !ok {
                reasons.push(format!("no valid attestation of type {pt}"));
            }
        }
        Verdict {
            image: image.source.clone(),
            digest: image.source_digest.clone(),
            rule: Some(rule.patterns.join(", ")),
            admitted: reasons.is_empty(),
            enforced: rule.mode == Mode::Enforce,
            admitted_by: signed_by,
            reasons,
            findings,
        }
    }
}

/// The decision on one image, with the evidence.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub image: String,
    /// The signed digest (the vendor's, for a platform-filtered index).
    pub digest: Digest,
    pub rule: Option<String>,
    pub admitted: bool,
    pub enforced: bool,
    pub admitted_by: Option<String>,
    pub reasons: Vec<String>,
    pub findings: Vec<Finding>,
}

/// The report lines of the images an enforcing rule rejected.
pub fn blocked(verdicts: &[Verdict]) -> Vec<String> {
    verdicts
        .iter()
        .filter(|v| v.blocks())
        .map(|v| v.line())
        .collect()
}

impl Verdict {
    /// Fails the run: not admitted under an enforcing rule.
    pub fn blocks(&self) -> bool {
        !self.admitted && self.enforced
    }
    pub fn line(&self) -> String {
        if self.admitted {
            format!(
                "trusted  {}  {}  signed by {}",
                self.image,
                self.digest,
                self.admitted_by.as_deref().unwrap_or("-")
            )
        } else {
            format!(
                "{}  {}  {}: {}",
                if self.enforced {
                    "REJECTED"
                } else {
                    "warning "
                },
                self.image,
                self.digest,
                self.reasons.join("; ")
            )
        }
    }
}

/// Manifests and small blobs held in memory for policy checks.
#[derive(Default)]
pub struct MemoryStore {
    pub manifests: std::collections::HashMap<Digest, (Vec<u8>, String)>,
    pub blobs: std::collections::HashMap<Digest, Vec<u8>>,
}

impl ArtifactStore for MemoryStore {
    fn manifest(&self, digest: &Digest) -> Option<(Vec<u8>, String)> {
        self.manifests.get(digest).cloned()
    }
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        self.blobs.get(digest).cloned()
    }
}

/// Artifacts that sign the image they are attached to: a cosign `.sig`
/// tag or a sigstore-bundle referrer (cosign v3). The one rule for
/// "signed" at export, import, verify and copy.
pub fn signs_image(a: &crate::image::Artifact) -> bool {
    a.kind == ArtifactKind::Signature
        || a.artifact_type
            .as_deref()
            .is_some_and(|t| t.starts_with(SIGSTORE_BUNDLE))
}

/// Artifacts whose blobs are signatures or attestations: cosign `.sig`/`.att`
/// tags, and sigstore-bundle referrers (cosign v3).
pub fn carries_signatures(a: &crate::image::Artifact) -> bool {
    matches!(a.kind, ArtifactKind::Signature | ArtifactKind::Attestation)
        || a.artifact_type
            .as_deref()
            .is_some_and(|t| t.starts_with(SIGSTORE_BUNDLE))
}

/// Finds a manifest's bytes and media type by digest.
pub type ManifestLookup<'a> = dyn Fn(&Digest) -> Option<(Vec<u8>, String)> + 'a;

/// The blobs (signature payloads, DSSE envelopes) the artifacts of `images` need.
pub fn artifact_blobs(images: &[ImageEntry], manifests: &ManifestLookup) -> Vec<Digest> {
    let mut out = Vec::new();
    for img in images {
        for a in &img.artifacts {
            if !carries_signatures(a) {
                continue;
            }
            if let Some((bytes, mt)) = manifests(&a.digest) {
                if let Ok(v) = ManifestView::parse(&bytes, Some(&mt)) {
                    out.extend(
                        v.layers
                            .iter()
                            .filter(|l| l.size <= crate::oci::MAX_MANIFEST_BYTES)
                            .map(|l| l.digest.clone()),
                    );
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Signs bundle indexes: an unencrypted PKCS#8 PEM ECDSA P-256 key (what
/// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes).
/// cosign's own encrypted key format (scrypt + secretbox) is not read.
pub struct BundleSigner(p256::ecdsa::SigningKey);

impl BundleSigner {
    pub fn from_file(path: &Path) -> Result<BundleSigner, TrustError> {
        use p256::pkcs8::DecodePrivateKey;
        let err = |detail: String| TrustError::Key {
            path: path.display().to_string(),
            detail,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        if pem.contains("ENCRYPTED COSIGN PRIVATE KEY")
            || pem.contains("ENCRYPTED SIGSTORE PRIVATE KEY")
        {
            return Err(err("cosign's encrypted key format is not supported; use an unencrypted PKCS#8 PEM P-256 key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)".into()));
        }
        p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
            .map(BundleSigner)
            .map_err(|_| err("not an unencrypted PKCS#8 PEM ECDSA P-256 private key".into()))
    }

    /// base64 DER ECDSA-SHA256 over `msg`: the `cosign sign-blob` signature format.
    pub fn sign_b64(&self, msg: &[u8]) -> String {
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = self.0.sign(msg);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }
}

/// Check a bundle signature (base64, as `cosign sign-blob` writes it) made
/// over the bundle index, given only the bundle digest (its sha256).
pub fn verify_bundle_signature(
    key: &Path,
    bundle_digest: &Digest,
    signature_b64: &str,
) -> Result<(), TrustError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey;
    let err = |detail: String| TrustError::Key {
        path: key.display().to_string(),
        detail,
    };
    let pem = std::fs::read_to_string(key).map_err(|e| err(e.to_string()))?;
    let vk = p256::ecdsa::VerifyingKey::from_public_key_pem(&pem)
        .map_err(|_| err("bundle keys must be ECDSA P-256 public keys (PEM)".into()))?;
    let sig = b64(signature_b64)
        .and_then(|d| p256::ecdsa::DerSignature::try_from(d.as_slice()).ok())
        .ok_or_else(|| err("the bundle signature is not base64 DER ECDSA".into()))?;
    let prehash = hex::decode(bundle_digest.hex()).map_err(|e| err(e.to_string()))?;
    let sig: p256::ecdsa::Signature = sig
        .try_into()
        .map_err(|_| err("malformed signature".into()))?;
    vk.verify_prehash(&prehash, &sig)
        .map_err(|_| err(format!("the bundle signature does not verify for bundle digest {bundle_digest}: the bundle index was changed or signed by another key")))
}
