//! Rekor signed entry timestamps (SETs), checked offline.
//!
//! cosign stores, in the `dev.sigstore.cosign/bundle` annotation of a
//! signature layer, the Rekor entry it logged and Rekor's signature over it
//! (the SET). With the log's public key the SET proves, with no network, that
//! the entry was logged at `integratedTime`; the entry body then has to name
//! exactly the signature at hand (its content hash, its signature, its key or
//! certificate), or the SET proves nothing about it.
//!
//! Entry kinds read: `hashedrekord` 0.0.1 (cosign `.sig`), `intoto` 0.0.1 and
//! 0.0.2 and `dsse` 0.0.1 (cosign `.att`).

use crate::digest::Digest;
use serde::Deserialize;

pub const ANNOTATION_BUNDLE: &str = "dev.sigstore.cosign/bundle";

/// A Rekor log the site trusts: its id (hex sha256 of the DER public key) and key.
#[derive(Clone)]
pub struct RekorKey {
    pub log_id: String,
    key: p256::ecdsa::VerifyingKey,
}

impl RekorKey {
    /// From a DER SubjectPublicKeyInfo; only ECDSA P-256 logs sign SETs of this kind.
    pub fn from_der(der: &[u8]) -> Option<RekorKey> {
        use p256::pkcs8::DecodePublicKey;
        p256::ecdsa::VerifyingKey::from_public_key_der(der)
            .ok()
            .map(|key| RekorKey {
                log_id: Digest::of(der).hex(),
                key,
            })
    }

    /// From PEM (the `rekor.pub` that sigstore and containers/image distribute).
    pub fn from_pem(pem: &str) -> Option<RekorKey> {
        let (label, der) = der::pem::decode_vec(pem.trim().as_bytes()).ok()?;
        (label == "PUBLIC KEY")
            .then(|| RekorKey::from_der(&der))
            .flatten()
    }
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

/// A Rekor entry whose SET verified.
pub struct LoggedEntry {
    pub kind: String,
    pub api_version: String,
    pub spec: serde_json::Value,
    /// Unix seconds: when the log integrated the entry.
    pub integrated_time: i64,
}

use super::b64;

/// Why a Rekor SET or the entry it vouches for does not count.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlogError {
    #[error("the Rekor SET does not parse: {0}")]
    SetParse(serde_json::Error),
    #[error("Rekor log {log_id} is not one the site trusts")]
    UntrustedLog { log_id: String },
    /// The canonical JSON the SET covers could not be written.
    #[error("{0}")]
    Canonical(serde_json::Error),
    #[error("the SET signature is not base64 DER")]
    SetSignatureEncoding,
    #[error("the Rekor SET does not verify with the trusted Rekor key")]
    SetSignature,
    #[error("the Rekor entry body does not parse")]
    BodyParse,
    #[error("Rekor entry kind {kind} is not one of {}", .expected.join(", "))]
    WrongKind { kind: String, expected: Vec<String> },
    #[error("the Rekor entry is for other content than this signature")]
    OtherContent,
    #[error("the Rekor entry holds another signature")]
    OtherSignature,
    #[error("the Rekor entry names no readable key or certificate")]
    NoSigner,
    #[error("the Rekor entry names another signer")]
    OtherSigner,
}

/// Check the SET in a `dev.sigstore.cosign/bundle` annotation with a trusted
/// Rekor key, and return the entry it vouches for.
pub fn verify_set(annotation: &str, logs: &[RekorKey]) -> Result<LoggedEntry, TlogError> {
    let set: SetBundle = serde_json::from_str(annotation).map_err(TlogError::SetParse)?;
    let log = logs
        .iter()
        .find(|l| l.log_id == set.payload.log_id)
        .ok_or_else(|| TlogError::UntrustedLog {
            log_id: set.payload.log_id.clone(),
        })?;
    // The SET covers the RFC 8785 canonical JSON of these four fields; with
    // only ASCII strings and integers that is sorted keys, compact output.
    let canonical = serde_json::to_vec(&serde_json::json!({
        "body": set.payload.body,
        "integratedTime": set.payload.integrated_time,
        "logID": set.payload.log_id,
        "logIndex": set.payload.log_index,
    }))
    .map_err(TlogError::Canonical)?;
    let sig = b64(&set.set)
        .and_then(|d| p256::ecdsa::DerSignature::try_from(d.as_slice()).ok())
        .ok_or(TlogError::SetSignatureEncoding)?;
    {
        use p256::ecdsa::signature::Verifier;
        log.key
            .verify(&canonical, &sig)
            .map_err(|_| TlogError::SetSignature)?;
    }
    #[derive(Deserialize)]
    struct Body {
        kind: String,
        #[serde(rename = "apiVersion", default)]
        api_version: String,
        spec: serde_json::Value,
    }
    let body: Body = b64(&set.payload.body)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TlogError::BodyParse)?;
    Ok(LoggedEntry {
        kind: body.kind,
        api_version: body.api_version,
        spec: body.spec,
        integrated_time: set.payload.integrated_time,
    })
}

impl LoggedEntry {
    /// The sha256 (hex) the entry records for the signed content: the
    /// payload for `hashedrekord`, the whole DSSE envelope for `intoto`/`dsse`.
    fn content_hash(&self) -> Option<&str> {
        let s = &self.spec;
        match self.kind.as_str() {
            "hashedrekord" => s["data"]["hash"]["value"].as_str(),
            "intoto" => s["content"]["hash"]["value"].as_str(),
            "dsse" => s["envelopeHash"]["value"].as_str(),
            _ => None,
        }
    }

    /// The signer's key or certificate as logged (PEM bytes).
    fn signer_pem(&self) -> Option<Vec<u8>> {
        let s = &self.spec;
        let b64_text = match (self.kind.as_str(), self.api_version.as_str()) {
            ("hashedrekord", _) => s["signature"]["publicKey"]["content"].as_str(),
            ("intoto", "0.0.2") => s["content"]["envelope"]["signatures"][0]["publicKey"].as_str(),
            ("intoto", _) => s["publicKey"].as_str(),
            ("dsse", _) => s["signatures"][0]["verifier"].as_str(),
            _ => None,
        }?;
        b64(b64_text)
    }

    /// The entry is about `content` (payload or envelope bytes), signed by
    /// the holder of `signer_spki` (DER SubjectPublicKeyInfo, from a key or
    /// from a certificate) and, for `hashedrekord`, with signature `sig`.
    pub fn check_names(
        &self,
        expected_kinds: &[&str],
        content: &[u8],
        sig: Option<&[u8]>,
        signer_spki: &[u8],
    ) -> Result<(), TlogError> {
        if !expected_kinds.contains(&self.kind.as_str()) {
            return Err(TlogError::WrongKind {
                kind: self.kind.clone(),
                expected: expected_kinds.iter().map(|k| k.to_string()).collect(),
            });
        }
        if self.content_hash() != Some(Digest::of(content).hex().as_str()) {
            return Err(TlogError::OtherContent);
        }
        if let Some(sig) = sig {
            let logged = self.spec["signature"]["content"].as_str().and_then(b64);
            if logged.as_deref() != Some(sig) {
                return Err(TlogError::OtherSignature);
            }
        }
        let logged = self
            .signer_pem()
            .and_then(|pem| spki_of_pem(&pem))
            .ok_or(TlogError::NoSigner)?;
        if logged != signer_spki {
            return Err(TlogError::OtherSigner);
        }
        Ok(())
    }
}

/// DER SubjectPublicKeyInfo from a PEM public key or certificate.
pub fn spki_of_pem(pem: &[u8]) -> Option<Vec<u8>> {
    use der::Encode;
    let (label, der) = der::pem::decode_vec(trim_ascii(pem)).ok()?;
    match label {
        "PUBLIC KEY" => Some(der),
        "CERTIFICATE" => {
            use der::Decode;
            let c = x509_cert::Certificate::from_der(&der).ok()?;
            c.tbs_certificate().subject_public_key_info().to_der().ok()
        }
        _ => None,
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(0);
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const OC: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/realdata/oc-mirror/multi-platform-container-sha256-0de0e983a4980f32b1aad2d7f7f387cea2d4e9517b47f336cef27f63735911fa-sig"
    );

    /// The real signature layer of oc-mirror's index: (annotations, payload).
    fn real_layer() -> (std::collections::BTreeMap<String, String>, Vec<u8>) {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{OC}/index.json")).unwrap()).unwrap();
        let blob = |d: &str| {
            std::fs::read(format!(
                "{OC}/blobs/sha256/{}",
                d.trim_start_matches("sha256:")
            ))
            .unwrap()
        };
        let m: serde_json::Value =
            serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap()))
                .unwrap();
        let layer = &m["layers"][0];
        (
            serde_json::from_value(layer["annotations"].clone()).unwrap(),
            blob(layer["digest"].as_str().unwrap()),
        )
    }

    #[test]
    fn real_keyed_signature_set_names_its_payload_signature_and_key() {
        let (ann, payload) = real_layer();
        let rekor = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/realdata/keyless/rekor.pub"
        ))
        .unwrap();
        let logs = [RekorKey::from_pem(&rekor).unwrap()];
        let key_pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/realdata/oc-mirror/multi-platform-container.cosign.pub"
        ))
        .unwrap();
        let key = spki_of_pem(&key_pem).unwrap();
        let sig = b64(&ann["dev.cosignproject.cosign/signature"]).unwrap();
        let set = &ann[ANNOTATION_BUNDLE];

        let entry = verify_set(set, &logs).unwrap();
        entry
            .check_names(&["hashedrekord"], &payload, Some(&sig), &key)
            .unwrap();
        assert!(entry.integrated_time > 1_700_000_000);

        let e = entry
            .check_names(&["hashedrekord"], b"other payload", Some(&sig), &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other content"), "{e}");
        let e = entry
            .check_names(&["hashedrekord"], &payload, Some(b"other"), &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another signature"), "{e}");
        let other = spki_of_pem(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/keys/other-test.pub"
            ))
            .unwrap(),
        )
        .unwrap();
        let e = entry
            .check_names(&["hashedrekord"], &payload, Some(&sig), &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another signer"), "{e}");
        let e = entry
            .check_names(&["intoto"], &payload, Some(&sig), &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind hashedrekord"), "{e}");

        // An edited integrated time breaks the SET.
        let mut v: serde_json::Value = serde_json::from_str(set).unwrap();
        v["Payload"]["integratedTime"] = serde_json::json!(1);
        let e = verify_set(&v.to_string(), &logs).err().unwrap().to_string();
        assert!(e.contains("does not verify"), "{e}");
        // Another log's key.
        let other_log = RekorKey::from_pem(
            &String::from_utf8(
                std::fs::read(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/fixtures/keys/other-test.pub"
                ))
                .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let e = verify_set(set, &[other_log]).err().unwrap().to_string();
        assert!(e.contains("not one the site trusts"), "{e}");
    }
}
