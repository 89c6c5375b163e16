//! Deterministic test and demo images, pushed to a registry: multi-arch
//! OCI indexes (one with s390x), a Docker manifest list, shared base
//! layers, cosign `.sig` signatures (simple-signing payload, ECDSA P-256,
//! RFC 6979 so signatures are reproducible) on indexes and platform
//! manifests, one `.att` DSSE attestation, and one SBOM referrer published
//! through the referrers tag-schema fallback. Signed with the committed
//! test key `fixtures/keys/cosign-test.key`.

use crate::digest::Digest;
use crate::oci::{self, Descriptor};
use crate::registry::{BlobBody, Registry, RegistryError};
use base64::Engine as _;
use bytes::Bytes;
use p256::ecdsa::{signature::Signer, Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;
use serde_json::json;

pub const TEST_KEY_PEM: &str = include_str!("../fixtures/keys/cosign-test.key");
pub const TEST_PUB_PEM: &str = include_str!("../fixtures/keys/cosign-test.pub");

/// What was pushed, for tests and the demo to check against.
#[derive(Clone, Debug)]
pub struct FixtureImage {
    pub repository: String,
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    pub platforms: Vec<(String, Digest)>,
    /// Every artifact tag pushed for this image (`sha256-<hex>.sig`, ...).
    pub artifact_tags: Vec<(String, Digest)>,
}

struct Blob {
    bytes: Bytes,
    media_type: String,
}

impl Blob {
    fn new(bytes: Vec<u8>, media_type: &str) -> Blob {
        Blob {
            bytes: Bytes::from(bytes),
            media_type: media_type.into(),
        }
    }
    fn digest(&self) -> Digest {
        Digest::of(&self.bytes)
    }
    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest().to_string(), "size": self.bytes.len()})
    }
}

/// Pseudo-random but reproducible bytes (xorshift64*), half of them
/// compressible text so zstd has something to do.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        if (out.len() / 4096) % 2 == 0 {
            out.extend_from_slice(&v.to_le_bytes());
        } else {
            out.extend_from_slice(
                format!("line {:08} of fixture text\n", v % 100_000_000).as_bytes(),
            );
        }
    }
    out.truncate(len);
    out
}

/// A real tar layer holding one file; zstd-compressed when `zstd` is set.
fn layer(name: &str, seed: u64, len: usize, zstd: bool) -> (Blob, Digest) {
    let data = content(seed, len);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    // Writing to a Vec cannot fail.
    let _ = b.append_data(&mut h, name, &data[..]);
    let tar = b.into_inner().unwrap_or_default();
    let diff_id = Digest::of(&tar);
    if zstd {
        let z = zstd::bulk::compress(&tar, 3).unwrap_or_default();
        (Blob::new(z, oci::OCI_LAYER_ZSTD), diff_id)
    } else {
        (Blob::new(tar, oci::OCI_LAYER_TAR), diff_id)
    }
}

fn body_of(bytes: Bytes) -> BlobBody {
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

async fn push_blob(reg: &Registry, repo: &str, blob: &Blob) -> Result<(), RegistryError> {
    let desc: Descriptor =
        serde_json::from_value(blob.descriptor()).map_err(|e| RegistryError::Protocol {
            what: "fixture".into(),
            detail: e.to_string(),
        })?;
    let bytes = blob.bytes.clone();
    reg.push_blob(repo, &desc, None, || {
        let b = bytes.clone();
        async move { Ok(body_of(b)) }
    })
    .await?;
    Ok(())
}

async fn push_manifest(
    reg: &Registry,
    repo: &str,
    tag: Option<&str>,
    doc: &serde_json::Value,
    media_type: &str,
) -> Result<(Bytes, Digest), RegistryError> {
    let bytes = Bytes::from(serde_json::to_vec(doc).unwrap_or_default());
    let digest = Digest::of(&bytes);
    reg.put_manifest(repo, tag.unwrap_or(&digest.to_string()), &bytes, media_type)
        .await?;
    Ok((bytes, digest))
}

pub struct Signer256(SigningKey);

impl Signer256 {
    pub fn test_key() -> Signer256 {
        Signer256(SigningKey::from_pkcs8_pem(TEST_KEY_PEM).expect("committed test key parses"))
    }
    /// base64 of the ASN.1 DER ECDSA-P256-SHA256 signature, as cosign writes it.
    pub fn sign_b64(&self, msg: &[u8]) -> String {
        let sig: Signature = self.0.sign(msg);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }
}

fn cosign_config(layer_digest: &Digest) -> Blob {
    let doc = json!({"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[layer_digest.to_string()]},"config":{}});
    Blob::new(
        serde_json::to_vec(&doc).unwrap_or_default(),
        oci::OCI_CONFIG,
    )
}

/// Push a cosign `.sig` for `subject` in `repo`; returns (tag, digest).
pub async fn push_signature(
    reg: &Registry,
    repo: &str,
    subject: &Digest,
    signer: &Signer256,
) -> Result<(String, Digest), RegistryError> {
    let payload = json!({"critical":{"identity":{"docker-reference":format!("{}/{repo}", reg.host())},"image":{"docker-manifest-digest":subject.to_string()},"type":"cosign container image signature"},"optional":null});
    let payload = Blob::new(
        serde_json::to_vec(&payload).unwrap_or_default(),
        oci::COSIGN_SIMPLESIGNING,
    );
    let sig = signer.sign_b64(&payload.bytes);
    let config = cosign_config(&payload.digest());
    push_blob(reg, repo, &payload).await?;
    push_blob(reg, repo, &config).await?;
    let mut layer = payload.descriptor();
    layer["annotations"] = json!({"dev.cosignproject.cosign/signature": sig});
    let doc = json!({"schemaVersion":2,"mediaType":oci::OCI_MANIFEST,"config":config.descriptor(),"layers":[layer]});
    let tag = crate::signatures::cosign_tag(subject, "sig");
    let (_, d) = push_manifest(reg, repo, Some(&tag), &doc, oci::OCI_MANIFEST).await?;
    Ok((tag, d))
}

async fn push_attestation(
    reg: &Registry,
    repo: &str,
    subject: &Digest,
    signer: &Signer256,
) -> Result<(String, Digest), RegistryError> {
    let predicate_type = "https://cosign.sigstore.dev/attestation/v1";
    let statement = json!({"_type":"https://in-toto.io/Statement/v0.1","predicateType":predicate_type,"subject":[{"name":format!("{}/{repo}", reg.host()),"digest":{"sha256":subject.hex()}}],"predicate":{"Data":"airlock fixture attestation","Timestamp":"2026-01-01T00:00:00Z"}});
    let statement = serde_json::to_vec(&statement).unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = signer.sign_b64(&crate::trust::dsse_pae(
        "application/vnd.in-toto+json",
        &statement,
    ));
    let envelope = json!({"payloadType":"application/vnd.in-toto+json","payload":b64.encode(&statement),"signatures":[{"keyid":"","sig":sig}]});
    let env = Blob::new(
        serde_json::to_vec(&envelope).unwrap_or_default(),
        oci::DSSE_ENVELOPE,
    );
    let config = cosign_config(&env.digest());
    push_blob(reg, repo, &env).await?;
    push_blob(reg, repo, &config).await?;
    let mut layer = env.descriptor();
    layer["annotations"] =
        json!({"dev.cosignproject.cosign/signature":"","predicateType":predicate_type});
    let doc = json!({"schemaVersion":2,"mediaType":oci::OCI_MANIFEST,"config":config.descriptor(),"layers":[layer]});
    let tag = crate::signatures::cosign_tag(subject, "att");
    let (_, d) = push_manifest(reg, repo, Some(&tag), &doc, oci::OCI_MANIFEST).await?;
    Ok((tag, d))
}

/// An SBOM referrer of `subject`, listed in the `sha256-<hex>` fallback index.
async fn push_sbom_referrer(
    reg: &Registry,
    repo: &str,
    subject: (&Digest, &str, usize),
) -> Result<(String, Digest), RegistryError> {
    let sbom = Blob::new(
        format!(
            "{{\"spdxVersion\":\"SPDX-2.3\",\"name\":\"{repo}\",\"subject\":\"{}\"}}",
            subject.0
        )
        .into_bytes(),
        "application/spdx+json",
    );
    let empty = Blob::new(b"{}".to_vec(), oci::OCI_EMPTY);
    push_blob(reg, repo, &sbom).await?;
    push_blob(reg, repo, &empty).await?;
    let artifact_type = "application/spdx+json";
    let doc = json!({"schemaVersion":2,"mediaType":oci::OCI_MANIFEST,"artifactType":artifact_type,
        "config":empty.descriptor(),"layers":[sbom.descriptor()],
        "subject":{"mediaType":subject.1,"digest":subject.0.to_string(),"size":subject.2}});
    let (bytes, d) = push_manifest(reg, repo, None, &doc, oci::OCI_MANIFEST).await?;
    let fallback = json!({"schemaVersion":2,"mediaType":oci::OCI_INDEX,"manifests":[
        {"mediaType":oci::OCI_MANIFEST,"digest":d.to_string(),"size":bytes.len(),"artifactType":artifact_type}]});
    let tag = subject.0.tag_stem();
    let (_, fd) = push_manifest(reg, repo, Some(&tag), &fallback, oci::OCI_INDEX).await?;
    Ok((tag, fd))
}

struct Spec {
    repo: &'static str,
    tag: &'static str,
    archs: &'static [&'static str],
    docker: bool,
    sign_platforms: bool,
    attest: bool,
    sbom: bool,
}

const SPECS: &[Spec] = &[
    Spec {
        repo: "operator",
        tag: "1.0.0",
        archs: &["amd64", "arm64"],
        docker: false,
        sign_platforms: true,
        attest: false,
        sbom: false,
    },
    Spec {
        repo: "operator",
        tag: "1.1.0",
        archs: &["amd64", "arm64"],
        docker: false,
        sign_platforms: true,
        attest: true,
        sbom: false,
    },
    Spec {
        repo: "agent",
        tag: "2.0.0",
        archs: &["amd64", "arm64", "s390x"],
        docker: false,
        sign_platforms: false,
        attest: false,
        sbom: true,
    },
    Spec {
        repo: "gateway",
        tag: "3.0.0",
        archs: &["amd64", "arm64"],
        docker: true,
        sign_platforms: false,
        attest: false,
        sbom: false,
    },
];

/// Push the fixture set under `prefix` (e.g. `vendor/`). `scale` multiplies
/// layer sizes (1 ≈ 3 MiB of blobs in all).
pub async fn seed(
    reg: &Registry,
    prefix: &str,
    scale: usize,
) -> Result<Vec<FixtureImage>, RegistryError> {
    let signer = Signer256::test_key();
    let scale = scale.max(1);
    let mut out = Vec::new();
    for (n, spec) in SPECS.iter().enumerate() {
        let repo = format!("{prefix}{}", spec.repo);
        let (mt_list, mt_manifest, mt_config) = if spec.docker {
            (
                oci::DOCKER_LIST,
                oci::DOCKER_MANIFEST,
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (oci::OCI_INDEX, oci::OCI_MANIFEST, oci::OCI_CONFIG)
        };
        let mut children = Vec::new();
        let mut platforms = Vec::new();
        for (a, arch) in spec.archs.iter().enumerate() {
            // Shared by every image of this arch (cross-repository dedup and mounts).
            let (base, base_id) = layer("base.bin", 1000 + a as u64, 192 * 1024 * scale, false);
            // Shared by both versions of a repository.
            let (deps, deps_id) = layer(
                "deps.bin",
                2000 + (spec.repo.len() * 10 + a) as u64,
                96 * 1024 * scale,
                true,
            );
            let (app, app_id) = layer(
                "app.bin",
                3000 + (n * 10 + a) as u64,
                64 * 1024 * scale,
                true,
            );
            let mut base = base;
            let mut deps = deps;
            let mut app = app;
            if spec.docker {
                base.media_type = "application/vnd.docker.image.rootfs.diff.tar".into();
                deps.media_type = "application/vnd.docker.image.rootfs.diff.tar.zstd".into();
                app.media_type = "application/vnd.docker.image.rootfs.diff.tar.zstd".into();
            }
            let cfg = json!({"architecture":arch,"os":"linux","config":{"Labels":{"fixture":format!("{repo}:{}", spec.tag)}},
                "rootfs":{"type":"layers","diff_ids":[base_id.to_string(),deps_id.to_string(),app_id.to_string()]}});
            let config = Blob::new(serde_json::to_vec(&cfg).unwrap_or_default(), mt_config);
            for b in [&base, &deps, &app, &config] {
                push_blob(reg, &repo, b).await?;
            }
            let doc = json!({"schemaVersion":2,"mediaType":mt_manifest,"config":config.descriptor(),
                "layers":[base.descriptor(),deps.descriptor(),app.descriptor()]});
            let (bytes, d) = push_manifest(reg, &repo, None, &doc, mt_manifest).await?;
            children.push(
                json!({"mediaType":mt_manifest,"digest":d.to_string(),"size":bytes.len(),
                "platform":{"architecture":arch,"os":"linux"}}),
            );
            platforms.push((format!("linux/{arch}"), d));
        }
        let index = json!({"schemaVersion":2,"mediaType":mt_list,"manifests":children});
        let (ibytes, idigest) = push_manifest(reg, &repo, Some(spec.tag), &index, mt_list).await?;
        let mut artifact_tags = vec![push_signature(reg, &repo, &idigest, &signer).await?];
        if spec.sign_platforms {
            for (_, d) in &platforms {
                artifact_tags.push(push_signature(reg, &repo, d, &signer).await?);
            }
        }
        if spec.attest {
            let att = push_attestation(reg, &repo, &idigest, &signer).await?;
            // A signature of the attestation, found by recursive discovery.
            artifact_tags.push(push_signature(reg, &repo, &att.1, &signer).await?);
            artifact_tags.push(att);
        }
        if spec.sbom {
            artifact_tags
                .push(push_sbom_referrer(reg, &repo, (&idigest, mt_list, ibytes.len())).await?);
        }
        out.push(FixtureImage {
            repository: repo,
            tag: spec.tag.into(),
            digest: idigest,
            media_type: mt_list.into(),
            platforms,
            artifact_tags,
        });
    }
    Ok(out)
}
