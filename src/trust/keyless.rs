//! Keyless cosign signatures and attestations (`.sig`/`.att` with a Fulcio
//! certificate and a Rekor SET), verified offline against a trusted root the
//! site gives:
//! 1. the Rekor SET (signed entry timestamp) verifies with a trusted Rekor
//!    key, over the canonical JSON of the entry (`tlog.rs`);
//! 2. the entry (hashedrekord for `.sig`, intoto/dsse for `.att`) names this
//!    payload or envelope, this signature and this certificate;
//! 3. the certificate chains to a trusted Fulcio CA, every link valid at the
//!    entry's integrated time (Fulcio leaves live ten minutes);
//! 4. its embedded SCT verifies with a trusted CT log key;
//! 5. the certificate's key verifies the signature (payload or DSSE PAE);
//! 6. its identity (SAN) and OIDC issuer match what the site requires.
//!
//! Also here: certificates of a site's private PKI (no log, no SCT). The chain
//! carried in a signature is used only to find a path, never as a trust
//! anchor. Rekor inclusion proofs are not part of these legacy formats: the
//! SET is the offline proof cosign itself checks.

use super::tlog::{RekorKey, TlogError, ANNOTATION_BUNDLE};
use crate::digest::Digest;
use der::{Decode, Encode, Tagged};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use x509_cert::Certificate;

pub const ANNOTATION_CHAIN: &str = "dev.sigstore.cosign/chain";
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
const OID_SAN: &str = "2.5.29.17";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// Fulcio CAs, Rekor keys and CT log keys the site trusts.
pub struct KeylessRoots {
    cas: Vec<Certificate>,
    pub rekor: Vec<RekorKey>,
    /// (log id = hex sha256 of the DER public key, key): Fulcio's CT logs.
    ctlogs: Vec<(String, p256::ecdsa::VerifyingKey)>,
    /// A trusted root must give CT logs (as cosign requires SCTs); PEM roots cannot.
    require_sct: bool,
}

/// What must be true of the signer: exact strings or regular expressions.
#[derive(Clone, Debug)]
pub struct IdentityRule {
    pub subject: Matcher,
    pub issuer: Matcher,
}

#[derive(Clone, Debug)]
pub enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == s,
            Matcher::Regex(r) => r.is_match(s),
        }
    }
    pub fn regex(pattern: &str) -> Result<Matcher, regex::Error> {
        regex::Regex::new(&format!("^(?:{pattern})$")).map(Matcher::Regex)
    }
}

/// Keyless trust material (a trusted root, Fulcio CA and Rekor key files, the
/// CA files of a private PKI) that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootsError {
    /// A trusted_root.json could not be read (the message is the I/O error's).
    #[error("{0}")]
    Read(std::io::Error),
    #[error("not a sigstore trusted_root.json: {0}")]
    Json(serde_json::Error),
    #[error("a CA certificate is not base64")]
    CaBase64,
    #[error("a CA certificate does not parse: {0}")]
    CaParse(der::Error),
    #[error("a tlog key is not base64")]
    TlogKeyBase64,
    #[error("a CT log key is not base64")]
    CtLogKeyBase64,
    #[error("the trusted root has no Fulcio CA and no ECDSA Rekor key")]
    Empty,
    #[error("{path}: {error}")]
    ReadFile { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Pem { path: String, error: der::Error },
    #[error("{path}: no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path}: not an ECDSA P-256 public key (PEM)")]
    NotRekorKey { path: String },
}

/// What a certificate chain is checked against: Fulcio CAs at the signing
/// time Rekor logged, or the CAs of the site's private PKI at verification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Anchors {
    Fulcio,
    SitePki,
}

impl Anchors {
    fn ca(self) -> &'static str {
        match self {
            Anchors::Fulcio => "Fulcio CA",
            Anchors::SitePki => "CA of the site's PKI",
        }
    }
    fn time(self) -> &'static str {
        match self {
            Anchors::Fulcio => "the signing time",
            Anchors::SitePki => "verification time",
        }
    }
}

/// Why a certificate does not chain to a trusted CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("the certificate was not valid at {} {}", .anchors.time(), crate::time::rfc3339(*.at))]
    LeafNotValid { anchors: Anchors, at: i64 },
    #[error("the issuing {} was not valid at {}", .anchors.ca(), .anchors.time())]
    CaNotValid { anchors: Anchors },
    #[error("the certificate does not chain to a trusted {}", .anchors.ca())]
    Untrusted { anchors: Anchors },
    #[error("certificate chain too long")]
    TooLong,
}

/// Why a Fulcio certificate's embedded SCT does not count.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SctError {
    #[error("the trusted root lists no CT log to check the certificate's SCT with")]
    NoCtLog,
    #[error("the certificate carries no SCT (signed certificate timestamp)")]
    Missing,
    #[error("the SCT extension does not parse")]
    ExtensionParse,
    #[error("the SCT list does not parse")]
    ListParse,
    #[error("precertificate: {0}")]
    Precertificate(der::Error),
    /// The issuer's public key could not be encoded.
    #[error("{0}")]
    IssuerKey(der::Error),
    #[error("the certificate's SCT does not verify with the trusted CT log key")]
    BadSignature,
    #[error("the certificate's SCT is from no CT log the site trusts")]
    UnknownLog,
}

/// Why a certificate-based signature or attestation (Fulcio or private PKI)
/// does not count.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeylessError {
    #[error("no certificate")]
    NoCertificate,
    #[error("the certificate does not parse: {0}")]
    CertificateParse(der::Error),
    #[error("no base64 signature annotation")]
    NoSignature,
    #[error("no Rekor SET (dev.sigstore.cosign/bundle): cannot tell when it was signed")]
    NoSet,
    #[error(transparent)]
    Tlog(#[from] TlogError),
    /// The certificate's public key could not be encoded.
    #[error("{0}")]
    Spki(der::Error),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Sct(#[from] SctError),
    #[error("the certificate names no identity (SAN)")]
    NoIdentity,
    #[error("the certificate names no OIDC issuer")]
    NoIssuer,
    #[error("signed by {subject} ({issuer}), which no rule trusts")]
    Untrusted { subject: String, issuer: String },
    /// A private-PKI certificate none of whose SANs a rule trusts.
    #[error("certificate for {}, which no rule trusts", .names.join(", "))]
    UntrustedNames { names: Vec<String> },
    #[error("the certificate's key does not verify the signature")]
    BadSignature,
    #[error("the certificate's key does not verify the envelope")]
    BadEnvelope,
}

use super::b64;

fn log_id(spki_der: &[u8]) -> String {
    Digest::of(spki_der).hex()
}

impl KeylessRoots {
    /// A sigstore `trusted_root.json` (certificate authorities and tlogs).
    pub fn from_trusted_root(path: &Path) -> Result<KeylessRoots, RootsError> {
        let text = std::fs::read(path).map_err(RootsError::Read)?;
        KeylessRoots::from_trusted_root_json(&text)
    }

    pub fn from_trusted_root_json(text: &[u8]) -> Result<KeylessRoots, RootsError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Root {
            #[serde(default)]
            certificate_authorities: Vec<Ca>,
            #[serde(default)]
            tlogs: Vec<Tlog>,
            #[serde(default)]
            ctlogs: Vec<Tlog>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Ca {
            cert_chain: Chain,
        }
        #[derive(Deserialize)]
        struct Chain {
            certificates: Vec<Raw>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            raw_bytes: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Tlog {
            public_key: Raw,
        }

        let root: Root = serde_json::from_slice(text).map_err(RootsError::Json)?;
        let mut cas = Vec::new();
        for ca in root.certificate_authorities {
            for c in ca.cert_chain.certificates {
                let der = b64(&c.raw_bytes).ok_or(RootsError::CaBase64)?;
                cas.push(Certificate::from_der(&der).map_err(RootsError::CaParse)?);
            }
        }
        let mut rekor = Vec::new();
        for t in root.tlogs {
            let der = b64(&t.public_key.raw_bytes).ok_or(RootsError::TlogKeyBase64)?;
            // Only ECDSA P-256 logs sign SETs of this kind; others are skipped.
            rekor.extend(RekorKey::from_der(&der));
        }
        let mut ctlogs = Vec::new();
        for t in root.ctlogs {
            let der = b64(&t.public_key.raw_bytes).ok_or(RootsError::CtLogKeyBase64)?;
            if let Ok(k) =
                <p256::ecdsa::VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(
                    &der,
                )
            {
                ctlogs.push((log_id(&der), k));
            }
        }
        if cas.is_empty() && rekor.is_empty() {
            return Err(RootsError::Empty);
        }
        Ok(KeylessRoots {
            cas,
            rekor,
            ctlogs,
            require_sct: true,
        })
    }

    /// A Fulcio CA bundle (PEM) and a Rekor public key (PEM). No CT log
    /// keys come this way, so SCTs are not checked (see `check_sct`).
    pub fn from_pem(fulcio: &Path, rekor: &Path) -> Result<KeylessRoots, RootsError> {
        let path = || fulcio.display().to_string();
        let pem = std::fs::read(fulcio).map_err(|error| RootsError::ReadFile {
            path: path(),
            error,
        })?;
        let cas = Certificate::load_pem_chain(&pem).map_err(|error| RootsError::Pem {
            path: path(),
            error,
        })?;
        let k = rekor_key_file(rekor)?;
        Ok(KeylessRoots {
            cas,
            rekor: vec![k],
            ctlogs: vec![],
            require_sct: false,
        })
    }

    /// Only Rekor keys: enough to check the SETs of key-based signatures.
    pub fn rekor_only(rekor: Vec<RekorKey>) -> KeylessRoots {
        KeylessRoots {
            cas: vec![],
            rekor,
            ctlogs: vec![],
            require_sct: false,
        }
    }

    pub fn has_fulcio(&self) -> bool {
        !self.cas.is_empty()
    }
}

/// A Rekor public key file (PEM, ECDSA P-256).
pub fn rekor_key_file(path: &Path) -> Result<RekorKey, RootsError> {
    let text = std::fs::read_to_string(path).map_err(|error| RootsError::ReadFile {
        path: path.display().to_string(),
        error,
    })?;
    RekorKey::from_pem(&text).ok_or_else(|| RootsError::NotRekorKey {
        path: path.display().to_string(),
    })
}

/// What a verified keyless signature says about its signer.
#[derive(Clone, Debug)]
pub struct Signer {
    pub subject: String,
    pub issuer: String,
    /// Rekor integrated time (Unix seconds): when the signature was logged.
    pub signed_at: i64,
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a certificate signature algorithm (ECDSA or RSA PKCS#1).
fn hash_of(alg: &str) -> Option<Hash> {
    match alg {
        OID_ECDSA_SHA256 | "1.2.840.113549.1.1.11" => Some(Hash::Sha256),
        OID_ECDSA_SHA384 | "1.2.840.113549.1.1.12" => Some(Hash::Sha384),
        "1.2.840.113549.1.1.13" => Some(Hash::Sha512),
        _ => None,
    }
}

/// `sig` over `msg` with the certificate's key: ECDSA P-256/P-384 (DER) or
/// RSA (PKCS#1 v1.5, or PSS), hashed with `hash`.
fn verify_with_cert_key(cert: &Certificate, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    use sha2::Digest as _;
    let Ok(spki) = cert.tbs_certificate().subject_public_key_info().to_der() else {
        return false;
    };
    let prehash: Vec<u8> = match hash {
        Hash::Sha256 => sha2::Sha256::digest(msg).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(msg).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(msg).to_vec(),
    };
    if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(&spki) {
        return p256::ecdsa::DerSignature::try_from(sig)
            .ok()
            .and_then(|s| p256::ecdsa::Signature::try_from(s).ok())
            .is_some_and(|s| k.verify_prehash(&prehash, &s).is_ok());
    }
    if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(&spki) {
        return p384::ecdsa::DerSignature::try_from(sig)
            .ok()
            .and_then(|s| p384::ecdsa::Signature::try_from(s).ok())
            .is_some_and(|s| k.verify_prehash(&prehash, &s).is_ok());
    }
    if let Ok(k) = rsa::PublicKey::from_public_key_der(&spki) {
        fn rsa_ok<D>(k: &rsa::PublicKey, msg: &[u8], sig: &[u8]) -> bool
        where
            D: sha2::Digest + der::oid::AssociatedOid + sha2::digest::FixedOutputReset,
        {
            let pkcs1 = rsa::pkcs1v15::Signature::try_from(sig).is_ok_and(|s| {
                rsa::pkcs1v15::VerifyingKey::<D>::new(k.clone())
                    .verify(msg, &s)
                    .is_ok()
            });
            pkcs1
                || rsa::pss::Signature::try_from(sig).is_ok_and(|s| {
                    rsa::pss::VerifyingKey::<D>::new(k.clone())
                        .verify(msg, &s)
                        .is_ok()
                })
        }
        return match hash {
            Hash::Sha256 => rsa_ok::<sha2::Sha256>(&k, msg, sig),
            Hash::Sha384 => rsa_ok::<sha2::Sha384>(&k, msg, sig),
            Hash::Sha512 => rsa_ok::<sha2::Sha512>(&k, msg, sig),
        };
    }
    false
}

/// `issuer` signed `child`.
fn issued_by(child: &Certificate, issuer: &Certificate) -> bool {
    if child.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
        return false;
    }
    let Ok(tbs) = child.tbs_certificate().to_der() else {
        return false;
    };
    let Some(sig) = child.signature().as_bytes() else {
        return false;
    };
    hash_of(&child.signature_algorithm().oid.to_string())
        .is_some_and(|hash| verify_with_cert_key(issuer, hash, &tbs, sig))
}

fn valid_at(cert: &Certificate, t: i64) -> bool {
    let v = cert.tbs_certificate().validity();
    let nb = v.not_before.to_unix_duration().as_secs() as i64;
    let na = v.not_after.to_unix_duration().as_secs() as i64;
    nb <= t && t <= na
}

/// Walk from the leaf to a trusted Fulcio CA, each link valid at `t`.
/// Returns the certificate that issued the leaf (for the SCT check).
fn chains_to_trusted(
    leaf: &Certificate,
    untrusted: &[Certificate],
    roots: &KeylessRoots,
    t: i64,
) -> Result<Certificate, ChainError> {
    chain_to(leaf, untrusted, &roots.cas, Anchors::Fulcio, t)
}

/// Walk from the leaf to one of `cas`, each link valid at `t`.
fn chain_to(
    leaf: &Certificate,
    untrusted: &[Certificate],
    cas: &[Certificate],
    anchors: Anchors,
    t: i64,
) -> Result<Certificate, ChainError> {
    if !valid_at(leaf, t) {
        return Err(ChainError::LeafNotValid { anchors, at: t });
    }
    let mut cur = leaf.clone();
    let mut leaf_issuer = None;
    for _ in 0..6 {
        if let Some(ca) = cas.iter().find(|ca| issued_by(&cur, ca)) {
            if !valid_at(ca, t) {
                return Err(ChainError::CaNotValid { anchors });
            }
            return Ok(leaf_issuer.unwrap_or_else(|| ca.clone()));
        }
        let next = untrusted
            .iter()
            .find(|c| **c != cur && issued_by(&cur, c) && valid_at(c, t))
            .ok_or(ChainError::Untrusted { anchors })?;
        leaf_issuer.get_or_insert_with(|| next.clone());
        cur = next.clone();
    }
    Err(ChainError::TooLong)
}

fn identity(cert: &Certificate) -> (Option<String>, Option<String>) {
    let mut subject = None;
    let mut issuer = None;
    for ext in cert
        .tbs_certificate()
        .extensions()
        .map(|e| e.iter())
        .into_iter()
        .flatten()
    {
        let oid = ext.extn_id.to_string();
        let raw = ext.extn_value.as_bytes();
        if oid == OID_SAN {
            if let Ok(san) = x509_cert::ext::pkix::SubjectAltName::from_der(raw) {
                for name in san.0 {
                    match name {
                        x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(u) => {
                            subject = Some(u.to_string())
                        }
                        x509_cert::ext::pkix::name::GeneralName::Rfc822Name(m) => {
                            subject = Some(m.to_string())
                        }
                        _ => {}
                    }
                }
            }
        } else if oid == OID_ISSUER_V2 {
            if let Ok(s) = der::asn1::Utf8StringRef::from_der(raw) {
                issuer = Some(s.as_str().to_string());
            }
        } else if oid == OID_ISSUER_V1 && issuer.is_none() {
            issuer = String::from_utf8(raw.to_vec()).ok();
        }
    }
    (subject, issuer)
}

/// The signing certificate and the untrusted chain carried beside it.
fn carried_certificates(
    annotations: &BTreeMap<String, String>,
) -> Result<(Certificate, Vec<Certificate>), KeylessError> {
    let cert_pem = annotations
        .get(super::ANNOTATION_CERTIFICATE)
        .ok_or(KeylessError::NoCertificate)?;
    let leaf = <Certificate as der::DecodePem>::from_pem(cert_pem.as_bytes())
        .map_err(KeylessError::CertificateParse)?;
    let untrusted = annotations
        .get(ANNOTATION_CHAIN)
        .map(|c| Certificate::load_pem_chain(c.as_bytes()).unwrap_or_default())
        .unwrap_or_default();
    Ok((leaf, untrusted))
}

fn logged_entry(
    annotations: &BTreeMap<String, String>,
    roots: &KeylessRoots,
) -> Result<super::tlog::LoggedEntry, KeylessError> {
    let set = annotations
        .get(ANNOTATION_BUNDLE)
        .ok_or(KeylessError::NoSet)?;
    Ok(super::tlog::verify_set(set, &roots.rekor)?)
}

fn spki(cert: &Certificate) -> Result<Vec<u8>, der::Error> {
    cert.tbs_certificate().subject_public_key_info().to_der()
}

/// Chain, SCT and identity of a Fulcio certificate used at time `t`.
fn check_certificate(
    leaf: &Certificate,
    untrusted: &[Certificate],
    roots: &KeylessRoots,
    t: i64,
    rules: &[IdentityRule],
) -> Result<Signer, KeylessError> {
    let issuer_cert = chains_to_trusted(leaf, untrusted, roots, t)?;
    check_sct(leaf, &issuer_cert, roots)?;
    let (subject, issuer) = identity(leaf);
    let subject = subject.ok_or(KeylessError::NoIdentity)?;
    let issuer = issuer.ok_or(KeylessError::NoIssuer)?;
    if !rules
        .iter()
        .any(|r| r.subject.matches(&subject) && r.issuer.matches(&issuer))
    {
        return Err(KeylessError::Untrusted { subject, issuer });
    }
    Ok(Signer {
        subject,
        issuer,
        signed_at: t,
    })
}

/// Verify one keyless cosign signature layer over `payload`.
pub fn verify(
    annotations: &BTreeMap<String, String>,
    payload: &[u8],
    roots: &KeylessRoots,
    rules: &[IdentityRule],
) -> Result<Signer, KeylessError> {
    let (leaf, untrusted) = carried_certificates(annotations)?;
    let sig = annotations
        .get(super::ANNOTATION_SIGNATURE)
        .and_then(|s| b64(s))
        .ok_or(KeylessError::NoSignature)?;
    // 1-2. The SET, and the logged entry is this payload, signature, certificate.
    let entry = logged_entry(annotations, roots)?;
    let leaf_key = spki(&leaf).map_err(KeylessError::Spki)?;
    entry.check_names(&["hashedrekord"], payload, Some(&sig), &leaf_key)?;
    // 3-5. Chain and SCT at the logged time, the signature, who signed.
    let signer = check_certificate(&leaf, &untrusted, roots, entry.integrated_time, rules)?;
    if !verify_with_cert_key(&leaf, Hash::Sha256, payload, &sig) {
        return Err(KeylessError::BadSignature);
    }
    Ok(signer)
}

/// Verify one keyless cosign attestation layer (a DSSE envelope, logged in
/// Rekor as an `intoto` or `dsse` entry): the same checks as for `.sig`,
/// with the signature over the DSSE pre-authentication encoding.
pub fn verify_attestation(
    annotations: &BTreeMap<String, String>,
    envelope: &[u8],
    payload_type: &str,
    payload: &[u8],
    signatures: &[Vec<u8>],
    roots: &KeylessRoots,
    rules: &[IdentityRule],
) -> Result<Signer, KeylessError> {
    let (leaf, untrusted) = carried_certificates(annotations)?;
    let entry = logged_entry(annotations, roots)?;
    let leaf_key = spki(&leaf).map_err(KeylessError::Spki)?;
    entry.check_names(&["intoto", "dsse"], envelope, None, &leaf_key)?;
    let signer = check_certificate(&leaf, &untrusted, roots, entry.integrated_time, rules)?;
    let pae = super::dsse_pae(payload_type, payload);
    if !signatures
        .iter()
        .any(|sig| verify_with_cert_key(&leaf, Hash::Sha256, &pae, sig))
    {
        return Err(KeylessError::BadEnvelope);
    }
    Ok(signer)
}

/// A private PKI the site trusts for one rule: signatures made with
/// certificates it issued, with no Fulcio, Rekor or CT log involved (what
/// `cosign verify --ca-roots --insecure-ignore-tlog` accepts).
pub struct PkiTrust {
    roots: Vec<Certificate>,
    intermediates: Vec<Certificate>,
    /// The certificate's SAN (email, URI or DNS name) must match one.
    pub subjects: Vec<Matcher>,
}

fn pem_certificates(path: &Path) -> Result<Vec<Certificate>, RootsError> {
    let name = || path.display().to_string();
    let pem = std::fs::read(path).map_err(|error| RootsError::ReadFile {
        path: name(),
        error,
    })?;
    let certs = Certificate::load_pem_chain(&pem).map_err(|error| RootsError::Pem {
        path: name(),
        error,
    })?;
    if certs.is_empty() {
        return Err(RootsError::NoCertificate { path: name() });
    }
    Ok(certs)
}

impl PkiTrust {
    pub fn from_files(
        roots: &Path,
        intermediates: Option<&Path>,
        subjects: Vec<Matcher>,
    ) -> Result<PkiTrust, RootsError> {
        Ok(PkiTrust {
            roots: pem_certificates(roots)?,
            intermediates: intermediates
                .map(pem_certificates)
                .transpose()?
                .unwrap_or_default(),
            subjects,
        })
    }
}

/// Every SAN of a certificate (emails, URIs, DNS names).
fn subject_names(cert: &Certificate) -> Vec<String> {
    use x509_cert::ext::pkix::name::GeneralName;
    let mut out = Vec::new();
    for ext in cert.tbs_certificate().extensions().into_iter().flatten() {
        if ext.extn_id.to_string() != OID_SAN {
            continue;
        }
        if let Ok(san) = x509_cert::ext::pkix::SubjectAltName::from_der(ext.extn_value.as_bytes()) {
            for name in san.0 {
                match name {
                    GeneralName::UniformResourceIdentifier(u) => out.push(u.to_string()),
                    GeneralName::Rfc822Name(m) => out.push(m.to_string()),
                    GeneralName::DnsName(d) => out.push(d.to_string()),
                    _ => {}
                }
            }
        }
    }
    out
}

/// Verify a signature (over `msg`: a payload, or a DSSE PAE) made with a
/// certificate of the site's private PKI. With no transparency log there is
/// no trusted signing time: the chain must be valid now, as cosign checks it.
pub fn verify_pki(
    annotations: &BTreeMap<String, String>,
    msg: &[u8],
    signatures: &[Vec<u8>],
    pki: &PkiTrust,
    now: i64,
) -> Result<Signer, KeylessError> {
    let (leaf, carried) = carried_certificates(annotations)?;
    let mut untrusted = pki.intermediates.clone();
    untrusted.extend(carried);
    chain_to(&leaf, &untrusted, &pki.roots, Anchors::SitePki, now)?;
    if !signatures
        .iter()
        .any(|sig| verify_with_cert_key(&leaf, Hash::Sha256, msg, sig))
    {
        return Err(KeylessError::BadSignature);
    }
    let names = subject_names(&leaf);
    let Some(subject) = names
        .iter()
        .find(|n| pki.subjects.iter().any(|m| m.matches(n)))
        .cloned()
    else {
        return Err(KeylessError::UntrustedNames { names });
    };
    Ok(Signer {
        subject,
        issuer: leaf.tbs_certificate().issuer().to_string(),
        signed_at: 0,
    })
}

const OID_CT_PRECERT_SCTS: &str = "1.3.6.1.4.1.11129.2.4.2";

/// Fulcio embeds a signed certificate timestamp (RFC 6962 §3.3) from its CT
/// log in every leaf; cosign requires one from a trusted log. Required with
/// a trusted_root.json; PEM roots (Fulcio CA + Rekor key files) carry no CT
/// log key, so then it is not checked. Written here because sigstore-verify
/// keeps its SCT code private.
fn check_sct(
    leaf: &Certificate,
    issuer: &Certificate,
    roots: &KeylessRoots,
) -> Result<(), SctError> {
    if !roots.require_sct {
        return Ok(());
    }
    if roots.ctlogs.is_empty() {
        return Err(SctError::NoCtLog);
    }
    let ext = extension(leaf, OID_CT_PRECERT_SCTS).ok_or(SctError::Missing)?;
    let list = der::asn1::OctetString::from_der(ext.extn_value.as_bytes())
        .map_err(|_| SctError::ExtensionParse)?;
    let scts = parse_sct_list(list.as_bytes()).ok_or(SctError::ListParse)?;
    let precert_tbs = tbs_without_scts(leaf).map_err(SctError::Precertificate)?;
    let issuer_key_hash = Digest::of(&spki(issuer).map_err(SctError::IssuerKey)?);
    for sct in &scts {
        let Some((_, key)) = roots
            .ctlogs
            .iter()
            .find(|(id, _)| *id == hex::encode(sct.log_id))
        else {
            continue;
        };
        let mut msg = vec![0u8, 0u8];
        msg.extend_from_slice(&sct.timestamp.to_be_bytes());
        msg.extend_from_slice(&1u16.to_be_bytes());
        msg.extend_from_slice(&hex::decode(issuer_key_hash.hex()).unwrap_or_default());
        msg.extend_from_slice(&(precert_tbs.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&precert_tbs);
        msg.extend_from_slice(&(sct.extensions.len() as u16).to_be_bytes());
        msg.extend_from_slice(&sct.extensions);
        use p256::ecdsa::signature::Verifier;
        let ok = sct.hash_sig_alg == [4, 3]
            && p256::ecdsa::DerSignature::try_from(sct.signature.as_slice())
                .is_ok_and(|s| key.verify(&msg, &s).is_ok());
        if ok {
            return Ok(());
        }
        return Err(SctError::BadSignature);
    }
    Err(SctError::UnknownLog)
}

fn extension<'a>(cert: &'a Certificate, oid: &str) -> Option<&'a x509_cert::ext::Extension> {
    cert.tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id.to_string() == oid)
}

struct Sct {
    log_id: [u8; 32],
    timestamp: u64,
    extensions: Vec<u8>,
    hash_sig_alg: [u8; 2],
    signature: Vec<u8>,
}

/// The TLS-encoded `SignedCertificateTimestampList` (RFC 6962 §3.3).
fn parse_sct_list(b: &[u8]) -> Option<Vec<Sct>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        (b.len() >= n).then(|| {
            let (h, t) = b.split_at(n);
            *b = t;
            h
        })
    }
    fn u16_of(b: &mut &[u8]) -> Option<usize> {
        take(b, 2).map(|x| u16::from_be_bytes([x[0], x[1]]) as usize)
    }
    let mut b = b;
    let total = u16_of(&mut b)?;
    let mut list = take(&mut b, total)?;
    let mut out = Vec::new();
    while !list.is_empty() {
        let n = u16_of(&mut list)?;
        let mut s = take(&mut list, n)?;
        if take(&mut s, 1)? != [0] {
            continue; // only v1 SCTs exist
        }
        let log_id: [u8; 32] = take(&mut s, 32)?.try_into().ok()?;
        let timestamp = u64::from_be_bytes(take(&mut s, 8)?.try_into().ok()?);
        let en = u16_of(&mut s)?;
        let extensions = take(&mut s, en)?.to_vec();
        let hash_sig_alg: [u8; 2] = take(&mut s, 2)?.try_into().ok()?;
        let sn = u16_of(&mut s)?;
        let signature = take(&mut s, sn)?.to_vec();
        out.push(Sct {
            log_id,
            timestamp,
            extensions,
            hash_sig_alg,
            signature,
        });
    }
    Some(out)
}

/// The TBS certificate as the CT log saw it: without the SCT extension.
/// x509-cert gives no mutable access, so the DER is edited element-wise.
fn tbs_without_scts(cert: &Certificate) -> Result<Vec<u8>, der::Error> {
    let tbs = cert.tbs_certificate().to_der()?;
    let mut fields: Vec<der::Any> = Vec::from_der(&tbs)?;
    if let Some(last) = fields.last_mut() {
        if last.tag().is_context_specific() && last.tag().number().value() == 3 {
            let exts: Vec<x509_cert::ext::Extension> = Vec::from_der(last.value())?;
            let kept: Vec<_> = exts
                .into_iter()
                .filter(|e| e.extn_id.to_string() != OID_CT_PRECERT_SCTS)
                .collect();
            *last = der::Any::new(last.tag(), kept.to_der()?)?;
        }
    }
    fields.to_der()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Fulcio leaf lives ten minutes: outside its validity the chain fails,
    /// even though every signature in it is fine.
    #[test]
    fn certificate_outside_its_validity_is_refused() {
        let (leaf, chain, roots) = podinfo();
        let nb = leaf
            .tbs_certificate()
            .validity()
            .not_before
            .to_unix_duration()
            .as_secs() as i64;
        let na = leaf
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs() as i64;
        chains_to_trusted(&leaf, &chain, &roots, nb + 60).unwrap();
        let e = chains_to_trusted(&leaf, &chain, &roots, na + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid at the signing time"), "{e}");
        let e = chains_to_trusted(&leaf, &chain, &roots, nb - 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid at the signing time"), "{e}");
        // The carried chain alone is no anchor.
        let pem_only = KeylessRoots::rekor_only(roots.rekor.clone());
        assert!(chains_to_trusted(&leaf, &chain, &pem_only, nb + 60).is_err());
    }

    fn podinfo() -> (Certificate, Vec<Certificate>, KeylessRoots) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/realdata/keyless");
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!("{dir}/podinfo-sig-manifest.json")).unwrap(),
        )
        .unwrap();
        let ann = &m["layers"][0]["annotations"];
        let leaf = <Certificate as der::DecodePem>::from_pem(
            ann["dev.sigstore.cosign/certificate"]
                .as_str()
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let chain = Certificate::load_pem_chain(ann[ANNOTATION_CHAIN].as_str().unwrap().as_bytes())
            .unwrap();
        let roots = KeylessRoots::from_trusted_root(Path::new(&format!("{dir}/trusted_root.json")))
            .unwrap();
        (leaf, chain, roots)
    }

    /// The real Fulcio leaf's embedded SCT verifies with the real CT log key
    /// of the production trusted root; an edited SCT or another root's CT
    /// logs do not.
    #[test]
    fn real_embedded_sct_is_checked() {
        let (leaf, chain, roots) = podinfo();
        assert!(!roots.ctlogs.is_empty());
        let t = leaf
            .tbs_certificate()
            .validity()
            .not_before
            .to_unix_duration()
            .as_secs() as i64;
        let issuer = chains_to_trusted(&leaf, &chain, &roots, t + 1).unwrap();
        check_sct(&leaf, &issuer, &roots).unwrap();

        // Wrong issuer key hash (the root instead of the intermediate).
        let root = chain.last().unwrap();
        let e = check_sct(&leaf, root, &roots).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");

        // One byte of the SCT's signature changed (the certificate still parses).
        let mut der = leaf.to_der().unwrap();
        let ext = extension(&leaf, OID_CT_PRECERT_SCTS)
            .unwrap()
            .extn_value
            .as_bytes()
            .to_vec();
        let at = der
            .windows(ext.len())
            .position(|w| w == ext.as_slice())
            .unwrap();
        let last = at + ext.len() - 3;
        der[last] ^= 0x01;
        let edited = Certificate::from_der(&der).unwrap();
        let e = check_sct(&edited, &issuer, &roots).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");

        // The staging root's CT logs did not log this certificate.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/realdata/keyless");
        let mut staging =
            KeylessRoots::from_trusted_root(Path::new(&format!("{dir}/staging_trusted_root.json")))
                .unwrap();
        staging.cas = roots.cas.clone();
        let e = check_sct(&leaf, &issuer, &staging).unwrap_err().to_string();
        assert!(e.contains("no CT log the site trusts"), "{e}");
    }

    /// Hostile SCT lists (lengths past the end, empty) are refused, not read past.
    #[test]
    fn broken_sct_lists_do_not_parse() {
        assert!(parse_sct_list(&[]).is_none());
        assert!(parse_sct_list(&[0, 50, 0, 1]).is_none());
        assert!(parse_sct_list(&[0, 4, 0, 2, 0, 1]).is_none());
        let mut truncated = vec![0u8, 40, 0, 38, 0];
        truncated.extend_from_slice(&[7u8; 35]);
        assert!(parse_sct_list(&truncated).is_none());
        assert_eq!(parse_sct_list(&[0, 0]).map(|l| l.len()), Some(0));
    }
}
