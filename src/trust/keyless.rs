//! Keyless cosign signatures (`.sig` with a Fulcio certificate and a Rekor
//! SET), verified offline against a trusted root the site gives:
//! 1. the Rekor SET (signed entry timestamp) verifies with a trusted Rekor
//!    key, over the canonical JSON of the entry;
//! 2. the entry (hashedrekord) names this payload's sha256, this signature
//!    and this certificate;
//! 3. the certificate chains to a trusted Fulcio CA, every link valid at the
//!    entry's integrated time (Fulcio leaves live ten minutes);
//! 4. the certificate's key verifies the signature over the payload bytes;
//! 5. its identity (SAN) and OIDC issuer match what the site requires.
//!
//! The chain carried in the signature is used only to find a path, never as
//! a trust anchor. Not covered: Fulcio SCTs, sigstore bundles, Rekor
//! inclusion proofs (the SET is the offline proof cosign itself checks).

use crate::digest::Digest;
use base64::Engine as _;
use der::{Decode, Encode};
use serde::Deserialize;
use std::path::Path;
use x509_cert::Certificate;

pub const ANNOTATION_CHAIN: &str = "dev.sigstore.cosign/chain";
pub const ANNOTATION_BUNDLE: &str = "dev.sigstore.cosign/bundle";
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
const OID_SAN: &str = "2.5.29.17";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// Fulcio CAs and Rekor keys the site trusts.
pub struct KeylessRoots {
    cas: Vec<Certificate>,
    /// (log id = hex sha256 of the DER public key, key)
    rekor: Vec<(String, p256::ecdsa::VerifyingKey)>,
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
    pub fn regex(pattern: &str) -> Result<Matcher, String> {
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .map(Matcher::Regex)
            .map_err(|e| e.to_string())
    }
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

fn log_id(spki_der: &[u8]) -> String {
    Digest::of(spki_der).hex()
}

impl KeylessRoots {
    /// A sigstore `trusted_root.json` (certificate authorities and tlogs).
    pub fn from_trusted_root(path: &Path) -> Result<KeylessRoots, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Root {
            #[serde(default)]
            certificate_authorities: Vec<Ca>,
            #[serde(default)]
            tlogs: Vec<Tlog>,
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
        let text = std::fs::read(path).map_err(|e| e.to_string())?;
        let root: Root = serde_json::from_slice(&text)
            .map_err(|e| format!("not a sigstore trusted_root.json: {e}"))?;
        let mut cas = Vec::new();
        for ca in root.certificate_authorities {
            for c in ca.cert_chain.certificates {
                let der = b64(&c.raw_bytes).ok_or("a CA certificate is not base64")?;
                cas.push(
                    Certificate::from_der(&der)
                        .map_err(|e| format!("a CA certificate does not parse: {e}"))?,
                );
            }
        }
        let mut rekor = Vec::new();
        for t in root.tlogs {
            let der = b64(&t.public_key.raw_bytes).ok_or("a tlog key is not base64")?;
            // Only ECDSA P-256 logs sign SETs of this kind; others are skipped.
            if let Ok(k) =
                <p256::ecdsa::VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(
                    &der,
                )
            {
                rekor.push((log_id(&der), k));
            }
        }
        if cas.is_empty() || rekor.is_empty() {
            return Err("the trusted root has no Fulcio CA or no ECDSA Rekor key".into());
        }
        Ok(KeylessRoots { cas, rekor })
    }

    /// A Fulcio CA bundle (PEM) and a Rekor public key (PEM).
    pub fn from_pem(fulcio: &Path, rekor: &Path) -> Result<KeylessRoots, String> {
        use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
        let pem = std::fs::read(fulcio).map_err(|e| format!("{}: {e}", fulcio.display()))?;
        let cas =
            Certificate::load_pem_chain(&pem).map_err(|e| format!("{}: {e}", fulcio.display()))?;
        let text =
            std::fs::read_to_string(rekor).map_err(|e| format!("{}: {e}", rekor.display()))?;
        let k = p256::ecdsa::VerifyingKey::from_public_key_pem(&text)
            .map_err(|_| format!("{}: not an ECDSA P-256 public key", rekor.display()))?;
        let der = k.to_public_key_der().map_err(|e| e.to_string())?;
        Ok(KeylessRoots {
            cas,
            rekor: vec![(log_id(der.as_bytes()), k)],
        })
    }
}

/// What a verified keyless signature says about its signer.
#[derive(Clone, Debug)]
pub struct Signer {
    pub subject: String,
    pub issuer: String,
    /// Rekor integrated time (Unix seconds): when the signature was logged.
    pub signed_at: i64,
}

#[derive(Deserialize)]
struct SetBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: SetPayload,
}
#[derive(Deserialize)]
struct SetPayload {
    body: String,
    #[serde(rename = "integratedTime")]
    integrated_time: i64,
    #[serde(rename = "logIndex")]
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

fn verify_with_cert_key(cert: &Certificate, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey;
    use sha2::Digest as _;
    let Ok(spki) = cert.tbs_certificate().subject_public_key_info().to_der() else {
        return false;
    };
    let prehash: Vec<u8> = match alg {
        OID_ECDSA_SHA256 => sha2::Sha256::digest(msg).to_vec(),
        OID_ECDSA_SHA384 => sha2::Sha384::digest(msg).to_vec(),
        _ => return false,
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
    verify_with_cert_key(
        issuer,
        &child.signature_algorithm().oid.to_string(),
        &tbs,
        sig,
    )
}

fn valid_at(cert: &Certificate, t: i64) -> bool {
    let v = cert.tbs_certificate().validity();
    let nb = v.not_before.to_unix_duration().as_secs() as i64;
    let na = v.not_after.to_unix_duration().as_secs() as i64;
    nb <= t && t <= na
}

/// Walk from the leaf to a trusted CA, each link valid at `t`.
fn chains_to_trusted(
    leaf: &Certificate,
    untrusted: &[Certificate],
    roots: &KeylessRoots,
    t: i64,
) -> Result<(), String> {
    if !valid_at(leaf, t) {
        return Err(format!(
            "the certificate was not valid at the signing time {}",
            crate::bundle::rfc3339(t)
        ));
    }
    let mut cur = leaf.clone();
    for _ in 0..6 {
        if let Some(ca) = roots.cas.iter().find(|ca| issued_by(&cur, ca)) {
            if !valid_at(ca, t) {
                return Err("the issuing Fulcio CA was not valid at the signing time".into());
            }
            return Ok(());
        }
        let next = untrusted
            .iter()
            .find(|c| issued_by(&cur, c) && valid_at(c, t))
            .ok_or("the certificate does not chain to a trusted Fulcio CA")?;
        cur = next.clone();
    }
    Err("certificate chain too long".into())
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

/// Verify one keyless cosign signature layer over `payload`.
pub fn verify(
    annotations: &std::collections::BTreeMap<String, String>,
    payload: &[u8],
    roots: &KeylessRoots,
    rules: &[IdentityRule],
) -> Result<Signer, String> {
    let cert_pem = annotations
        .get(super::ANNOTATION_CERTIFICATE)
        .ok_or("no certificate")?;
    let leaf = <Certificate as der::DecodePem>::from_pem(cert_pem.as_bytes())
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let untrusted = annotations
        .get(ANNOTATION_CHAIN)
        .map(|c| Certificate::load_pem_chain(c.as_bytes()).unwrap_or_default())
        .unwrap_or_default();
    let sig_b64 = annotations
        .get(super::ANNOTATION_SIGNATURE)
        .ok_or("no signature annotation")?;
    let sig = b64(sig_b64).ok_or("the signature is not base64")?;
    let set: SetBundle = serde_json::from_str(
        annotations
            .get(ANNOTATION_BUNDLE)
            .ok_or("no Rekor SET (dev.sigstore.cosign/bundle): cannot tell when it was signed")?,
    )
    .map_err(|e| format!("the Rekor SET does not parse: {e}"))?;

    // 1. The SET, over the canonical (sorted, compact) JSON of the entry.
    let key = roots
        .rekor
        .iter()
        .find(|(id, _)| *id == set.payload.log_id)
        .map(|(_, k)| k)
        .ok_or_else(|| {
            format!(
                "Rekor log {} is not in the trusted root",
                set.payload.log_id
            )
        })?;
    let canonical = serde_json::to_vec(&serde_json::json!({
        "body": set.payload.body,
        "integratedTime": set.payload.integrated_time,
        "logID": set.payload.log_id,
        "logIndex": set.payload.log_index,
    }))
    .map_err(|e| e.to_string())?;
    let set_sig = b64(&set.set)
        .and_then(|d| p256::ecdsa::DerSignature::try_from(d.as_slice()).ok())
        .ok_or("the SET signature is not base64 DER")?;
    {
        use p256::ecdsa::signature::Verifier;
        key.verify(&canonical, &set_sig)
            .map_err(|_| "the Rekor SET does not verify with the trusted Rekor key")?;
    }

    // 2. The logged entry is this payload, this signature, this certificate.
    #[derive(Deserialize)]
    struct Body {
        kind: String,
        spec: serde_json::Value,
    }
    let body: Body = b64(&set.payload.body)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the Rekor entry body does not parse")?;
    if body.kind != "hashedrekord" {
        return Err(format!(
            "Rekor entry kind {} is not hashedrekord",
            body.kind
        ));
    }
    let logged_hash = body.spec["data"]["hash"]["value"]
        .as_str()
        .unwrap_or_default();
    if logged_hash != Digest::of(payload).hex() {
        return Err("the Rekor entry is for other content than this payload".into());
    }
    let logged_sig = body.spec["signature"]["content"].as_str().and_then(b64);
    if logged_sig.as_deref() != Some(&sig[..]) {
        return Err("the Rekor entry holds another signature".into());
    }
    let logged_cert = body.spec["signature"]["publicKey"]["content"]
        .as_str()
        .and_then(b64)
        .and_then(|pem| <Certificate as der::DecodePem>::from_pem(&pem).ok());
    if logged_cert.as_ref() != Some(&leaf) {
        return Err("the Rekor entry names another certificate".into());
    }

    // 3. The chain, at the time Rekor logged the signature.
    let t = set.payload.integrated_time;
    chains_to_trusted(&leaf, &untrusted, roots, t)?;

    // 4. The signature itself.
    if !verify_with_cert_key(&leaf, OID_ECDSA_SHA256, payload, &sig) {
        return Err("the certificate's key does not verify the signature".into());
    }

    // 5. Who signed.
    let (subject, issuer) = identity(&leaf);
    let subject = subject.ok_or("the certificate names no identity (SAN)")?;
    let issuer = issuer.ok_or("the certificate names no OIDC issuer")?;
    if !rules
        .iter()
        .any(|r| r.subject.matches(&subject) && r.issuer.matches(&issuer))
    {
        return Err(format!(
            "signed by {subject} ({issuer}), which no rule trusts"
        ));
    }
    Ok(Signer {
        subject,
        issuer,
        signed_at: t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Fulcio leaf lives ten minutes: outside its validity the chain fails,
    /// even though every signature in it is fine.
    #[test]
    fn certificate_outside_its_validity_is_refused() {
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
        let e = chains_to_trusted(&leaf, &chain, &roots, na + 1).unwrap_err();
        assert!(e.contains("not valid at the signing time"), "{e}");
        let e = chains_to_trusted(&leaf, &chain, &roots, nb - 1).unwrap_err();
        assert!(e.contains("not valid at the signing time"), "{e}");
        // The carried chain alone is no anchor.
        let pem_only = KeylessRoots {
            cas: vec![],
            rekor: roots.rekor.clone(),
        };
        assert!(chains_to_trusted(&leaf, &chain, &pem_only, nb + 60).is_err());
    }
}
