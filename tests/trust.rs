//! Offline signature verification with site-given keys and policies:
//! real third-party signatures (oc-mirror's signed multi-platform image),
//! the project's fixtures, forged variants, and every key type.

mod common;

use airlock::digest::Digest;
use airlock::registry::BlobBody;
use airlock::trust::Roots;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const REAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/realdata/oc-mirror");
const REAL_INDEX: &str = "sha256:0de0e983a4980f32b1aad2d7f7f387cea2d4e9517b47f336cef27f63735911fa";
const TEST_PUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/cosign-test.pub");
const OTHER_PUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/other-test.pub");

/// Push the real signed image and its five signature manifests, digests kept.
fn push_real(reg: &TestRegistry, repo: &str) {
    let dst = |tag: &str| format!("docker://{}/{repo}:{tag}", reg.host);
    skopeo_copy(
        &format!("oci:{REAL}/multi-platform-container-latest"),
        &dst("latest"),
    );
    for entry in std::fs::read_dir(REAL).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(hex) = name
            .strip_prefix("multi-platform-container-sha256-")
            .and_then(|n| n.strip_suffix("-sig"))
        {
            skopeo_copy(
                &format!("oci:{REAL}/{name}"),
                &dst(&format!("sha256-{hex}.sig")),
            );
        }
    }
}

/// Run an airlock command: it must fail the policy (exit 4).
fn fails_policy(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run an airlock command with `--json`: it must fail the policy (exit 4)
/// with `why` among the first image's reasons.
fn refused_by_policy(cmd: &mut Command, why: &str) {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reasons = json(&out)["policy"][0]["reasons"].to_string();
    assert!(reasons.contains(why), "{reasons}");
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_signed_multi_platform_image_crosses_with_a_policy() {
    let src = TestRegistry::start();
    push_real(&src, "vendor/multi");
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("real.tar.zst");
    let b = bundle.to_str().unwrap();
    let good = format!("{REAL}/multi-platform-container.cosign.pub");
    let wrong = format!("{REAL}/empty-image.cosign.pub");
    let image = format!("{}/vendor/multi:latest", src.host);

    // Export refuses with the wrong key, before writing anything.
    fails_policy(airlock_cmd().args(["export", "-o", b, "--key", &wrong, &image]));
    assert!(!bundle.exists());

    let out = run_ok(airlock_cmd().args(["export", "--json", "-o", b, "--key", &good, &image]));
    let rep = json(&out);
    assert_eq!(rep["images"][0]["digest"], REAL_INDEX);
    assert_eq!(rep["images"][0]["platforms"].as_array().unwrap().len(), 4);
    assert_eq!(rep["policy"][0]["admitted"], true);
    let findings = rep["policy"][0]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 5, "index + 4 platform signatures");
    assert!(
        findings.iter().all(|f| f["key"] == good.as_str()),
        "{findings:?}"
    );

    // The offline audit, in a network namespace with no network at all.
    let out = Command::new("unshare")
        .args([
            "-n",
            env!("CARGO_BIN_EXE_airlock"),
            "verify",
            "--json",
            b,
            "--key",
            &good,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "offline verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["policy"][0]["admittedBy"], good.as_str());

    // The signatures' Rekor SETs, checked offline with the real Rekor key:
    // every signature then carries the time Rekor logged it.
    let rekor = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/realdata/keyless/rekor.pub"
    );
    let out = Command::new("unshare")
        .args(["-n", env!("CARGO_BIN_EXE_airlock"), "verify", "--json", b])
        .args(["--key", &good, "--rekor-key", rekor, "--require-tlog"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings = json(&out)["policy"][0]["findings"].clone();
    let findings = findings.as_array().unwrap();
    assert_eq!(findings.len(), 5);
    assert!(
        findings.iter().all(|f| f["signedAt"]
            .as_str()
            .is_some_and(|t| t.starts_with("2025-"))),
        "{findings:?}"
    );
    // Another Rekor key: the SETs prove nothing, so the signatures do not count.
    let out = airlock_cmd()
        .args([
            "verify",
            "--json",
            b,
            "--key",
            &good,
            "--rekor-key",
            OTHER_PUB,
        ])
        .args(["--require-tlog"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let rep = json(&out);
    assert!(
        rep["policy"][0]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("is not one the site trusts"),
        "{rep}"
    );
    // Without a Rekor key, --require-tlog is a usage error, not a silent pass.
    let out = airlock_cmd()
        .args(["verify", b, "--key", &good, "--require-tlog"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = airlock_cmd()
        .args(["verify", "--json", b, "--key", &wrong])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(json(&out)["verified"], false);

    // Import: the wrong key pushes nothing; the right one lands every digest.
    let dst = TestRegistry::start();
    let out = airlock_cmd()
        .args(["import", b, "--to", &dst.host, "--key", &wrong])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains(REAL_INDEX));
    assert!(dst.catalog().await.is_empty());
    run_ok(airlock_cmd().args(["import", b, "--to", &dst.host, "--key", &good]));
    let d = client(&dst, test_config()).await;
    assert_eq!(
        d.head_manifest("vendor/multi", "latest")
            .await
            .unwrap()
            .unwrap()
            .to_string(),
        REAL_INDEX
    );

    // From a pipe, with the policy checked before the first push.
    let dst2 = TestRegistry::start();
    fails_policy(
        airlock_cmd()
            .args(["import", "-", "--to", &dst2.host, "--key", &wrong])
            .stdin(std::fs::File::open(&bundle).unwrap()),
    );
    assert!(dst2.catalog().await.is_empty());
    run_ok(
        airlock_cmd()
            .args(["import", "-", "--to", &dst2.host, "--key", &good])
            .stdin(std::fs::File::open(&bundle).unwrap()),
    );

    // A platform filter keeps the vendor's signature verifiable.
    let filtered = work.path().join("amd64.tar.zst");
    let out = run_ok(airlock_cmd().args([
        "export",
        "--json",
        "-o",
        filtered.to_str().unwrap(),
        "--key",
        &good,
        "--platform",
        "linux/amd64",
        &image,
    ]));
    assert_eq!(json(&out)["policy"][0]["digest"], REAL_INDEX);
}

fn policy_file(dir: &Path, mode: &str) -> PathBuf {
    let p = dir.join(format!("policy-{mode}.yaml"));
    std::fs::write(
        &p,
        format!(
            "rules:\n  - repositories: [\"vendor/operator\"]\n    keys: [\"{TEST_PUB}\"]\n    attestations: [\"https://cosign.sigstore.dev/attestation/v1\"]\n    mode: {mode}\n  - repositories: [\"**\"]\n    keys: [\"{TEST_PUB}\"]\n"
        ),
    )
    .unwrap();
    p
}

fn body(b: Vec<u8>) -> BlobBody {
    Box::pin(futures_util::stream::once(async move {
        Ok(bytes::Bytes::from(b))
    }))
}

/// Replace the `.sig` of `subject` in `repo` by an edited copy of `donor`'s.
async fn forge(
    reg: &airlock::registry::Registry,
    repo: &str,
    subject: &Digest,
    donor: &Digest,
    edit: &str,
) {
    let tag = format!("{}.sig", donor.tag_stem());
    let m = reg.get_manifest(repo, &tag).await.unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    let layer = &mut doc["layers"][0];
    match edit {
        "payload" => {
            let desc: airlock::oci::Descriptor = serde_json::from_value(layer.clone()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("blob");
            let mut f = tokio::fs::File::from_std(std::fs::File::create(&p).unwrap());
            reg.fetch_blob(repo, &desc, &mut f, &airlock::progress::Progress::hidden())
                .await
                .unwrap();
            let payload = std::fs::read(&p).unwrap();
            // Same claims, re-spaced: the signature no longer covers these bytes.
            let text = String::from_utf8(payload)
                .unwrap()
                .replace(subject.to_string().as_str(), &subject.to_string())
                .replace("{\"critical\"", "{ \"critical\"");
            let nd = Digest::of(text.as_bytes());
            let d2: airlock::oci::Descriptor = serde_json::from_value(serde_json::json!({"mediaType": desc.media_type, "digest": nd.to_string(), "size": text.len()})).unwrap();
            let bytes = text.into_bytes();
            reg.push_blob(repo, &d2, None, |offset| {
                let b = bytes[offset as usize..].to_vec();
                async move { Ok(body(b)) }
            })
            .await
            .unwrap();
            layer["digest"] = serde_json::json!(nd.to_string());
            layer["size"] = serde_json::json!(d2.size);
        }
        "annotation" => {
            layer["annotations"]
                .as_object_mut()
                .unwrap()
                .remove("dev.cosignproject.cosign/signature");
        }
        _ => {} // "other digest": the donor's signature, unchanged, under the subject's tag
    }
    let bytes = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap());
    reg.put_manifest(
        repo,
        &format!("{}.sig", subject.tag_stem()),
        &bytes,
        airlock::oci::OCI_MANIFEST,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rules_and_forged_signatures() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("b.tar.zst");
    let b = bundle.to_str().unwrap();
    cli_export(&src, &images, &bundle);

    // operator:1.0.0 has no attestation: enforce rejects it, warn lets it through.
    let enforce = policy_file(work.path(), "enforce");
    let out = airlock_cmd()
        .args(["verify", "--json", b, "--policy", enforce.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let v = json(&out);
    let verdicts = v["policy"].as_array().unwrap();
    let by_image = |needle: &str| {
        verdicts
            .iter()
            .find(|x| x["image"].as_str().unwrap().contains(needle))
            .unwrap()
            .clone()
    };
    assert_eq!(by_image("operator:1.0.0")["admitted"], false);
    assert!(by_image("operator:1.0.0")["reasons"][0]
        .as_str()
        .unwrap()
        .contains("attestation"));
    assert_eq!(by_image("operator:1.1.0")["admitted"], true);
    assert_eq!(by_image("agent:2.0.0")["admitted"], true);
    let warn = policy_file(work.path(), "warn");
    let out = run_ok(airlock_cmd().args(["verify", b, "--policy", warn.to_str().unwrap()]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("warning"));

    // Wrong key.
    let (code, _, _) = airlock(&["verify", b, "--key", OTHER_PUB]);
    assert_eq!(code, 4);

    // Forged signatures in the source registry, each exported and audited.
    let reg = client(&src, test_config()).await;
    let agent = images
        .iter()
        .find(|i| i.repository == "vendor/agent")
        .unwrap();
    let gateway = images
        .iter()
        .find(|i| i.repository == "vendor/gateway")
        .unwrap();
    let op = &images[0];
    forge(
        &reg,
        &agent.repository,
        &agent.digest,
        &agent.digest,
        "payload",
    )
    .await;
    forge(
        &reg,
        &gateway.repository,
        &gateway.digest,
        &gateway.digest,
        "annotation",
    )
    .await;
    // operator:1.0.0's index signature replaced by the signature of its amd64 manifest.
    forge(
        &reg,
        &op.repository,
        &op.digest,
        &op.platforms[0].1,
        "other",
    )
    .await;
    let forged = work.path().join("forged.tar.zst");
    cli_export(&src, &images, &forged);
    let out = airlock_cmd()
        .args([
            "verify",
            "--json",
            forged.to_str().unwrap(),
            "--key",
            TEST_PUB,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let v = json(&out);
    let reasons = |needle: &str| -> String {
        v["policy"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["image"].as_str().unwrap().contains(needle))
            .unwrap()["reasons"]
            .to_string()
    };
    assert!(
        reasons("agent:2.0.0").contains("no trusted key verifies"),
        "{}",
        reasons("agent")
    );
    assert!(
        reasons("gateway:3.0.0").contains("no dev.cosignproject.cosign/signature"),
        "{}",
        reasons("gateway")
    );
    assert!(
        reasons("operator:1.0.0").contains(&format!("payload signs {}", op.platforms[0].1)),
        "{}",
        reasons("operator:1.0.0")
    );
    assert!(v["policy"].as_array().unwrap().iter().any(|x| x["image"]
        .as_str()
        .unwrap()
        .contains("operator:1.1.0")
        && x["admitted"] == true));
}

#[test]
fn every_supported_key_type_verifies_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"{\"critical\":{}}").unwrap();
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            &["-sha256"],
        ),
        (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            &["-sha384"],
        ),
        (
            "rsa-pkcs1",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            &["-sha256"],
        ),
        (
            "rsa-pss",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            &[
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
            ],
        ),
        ("ed25519", &["-algorithm", "ED25519"], &[]),
    ];
    for (name, gen, dgst) in cases {
        let key = dir.path().join(format!("{name}.key"));
        let pubk = dir.path().join(format!("{name}.pub"));
        let sig = dir.path().join(format!("{name}.sig"));
        sh(Command::new("openssl")
            .arg("genpkey")
            .args(*gen)
            .arg("-out")
            .arg(&key));
        sh(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&pubk));
        if *name == "ed25519" {
            sh(Command::new("openssl")
                .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
                .arg(&key)
                .arg("-in")
                .arg(&msg)
                .arg("-out")
                .arg(&sig));
        } else {
            sh(Command::new("openssl")
                .arg("dgst")
                .args(*dgst)
                .arg("-sign")
                .arg(&key)
                .arg("-out")
                .arg(&sig)
                .arg(&msg));
        }
        let k = airlock::trust::TrustedKey::from_file(&pubk).unwrap();
        let m = std::fs::read(&msg).unwrap();
        let s = std::fs::read(&sig).unwrap();
        assert!(k.verifies(&m, &s), "{name}: valid signature rejected");
        assert!(
            !k.verifies(b"{\"critical\":{}} ", &s),
            "{name}: edited message accepted"
        );
        let other = airlock::trust::TrustedKey::from_file(Path::new(OTHER_PUB)).unwrap();
        assert!(!other.verifies(&m, &s), "{name}: wrong key accepted");
    }
    let garbage = dir.path().join("garbage.pub");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let err = airlock::trust::TrustedKey::from_file(&garbage)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("garbage.pub"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_signature_covers_the_bundle_index() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("s.tar.zst");
    let b = bundle.to_str().unwrap();
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/cosign-test.key");
    let image = format!("{}/{}:{}", src.host, images[0].repository, images[0].tag);
    let (code, _, err) = airlock(&["export", "-q", "-o", b, "--sign-key", key, &image]);
    assert_eq!(code, 0, "{err}");
    let sig = work.path().join("s.tar.zst.sig");
    assert!(sig.exists());

    let (code, out, err) = airlock(&["verify", b, "--bundle-key", TEST_PUB]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bundle signature: verified"), "{out}");
    let (code, _, err) = airlock(&["verify", b, "--bundle-key", OTHER_PUB]);
    assert_eq!(code, 4, "{err}");

    // The signature is the `cosign sign-blob` form over airlock-bundle.json:
    // what `cosign verify-blob --key PUB --signature S.sig airlock-bundle.json`
    // checks (ECDSA-SHA256, base64 DER). openssl stands in for cosign here.
    let index = work.path().join("airlock-bundle.json");
    sh(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{b}' | tar -xO airlock-bundle.json > '{}'",
        index.display()
    )));
    let raw_sig = work.path().join("sig.der");
    sh(Command::new("sh").arg("-c").arg(format!(
        "base64 -d '{}' > '{}'",
        sig.display(),
        raw_sig.display()
    )));
    sh(Command::new("openssl")
        .args(["dgst", "-sha256", "-verify", TEST_PUB, "-signature"])
        .arg(&raw_sig)
        .arg(&index));

    // The bundle index edited after signing (re-framed consistently, so only
    // the signature can tell): verify and import refuse, nothing is pushed.
    let tar_bytes = zstd::decode_all(std::fs::File::open(&bundle).unwrap()).unwrap();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut entries: Vec<(String, Vec<u8>)> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut d = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut d).unwrap();
            (p, d)
        })
        .collect();
    let text = String::from_utf8(entries[0].1.clone())
        .unwrap()
        .replace("\"created\": \"", "\"created\": \"1");
    entries[0].1 = text.into_bytes();
    let edited = work.path().join("edited.tar.zst");
    let mut w =
        airlock::bundle::BundleWriter::new(std::fs::File::create(&edited).unwrap(), 3, 1, 1 << 20)
            .unwrap();
    for (p, d) in &entries {
        w.append(p, d.len() as u64, &mut &d[..]).unwrap();
    }
    w.finish().unwrap();
    std::fs::copy(&sig, work.path().join("edited.tar.zst.sig")).unwrap();
    let e = edited.to_str().unwrap();
    let (code, _, err) = airlock(&["verify", e]);
    assert_eq!(
        code, 0,
        "the edit is consistent, only the signature catches it: {err}"
    );
    let (code, _, err) = airlock(&["verify", e, "--bundle-key", TEST_PUB]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("does not verify"), "{err}");
    let dst = TestRegistry::start();
    let (code, _, err) = airlock(&["import", e, "--to", &dst.host, "--bundle-key", TEST_PUB]);
    assert_eq!(code, 4, "{err}");
    assert!(dst.catalog().await.is_empty());
    let (code, _, err) = airlock(&["import", b, "--to", &dst.host, "--bundle-key", TEST_PUB]);
    assert_eq!(code, 0, "{err}");
}

mod keyless_real {
    use airlock::trust::keyless::{verify, IdentityRule, KeylessRoots, Matcher};
    use std::collections::BTreeMap;
    use std::path::Path;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/realdata/keyless");
    const SAN: &str =
        "https://github.com/stefanprodan/podinfo/.github/workflows/release.yml@refs/tags/6.4.0";
    const ISSUER: &str = "https://token.actions.githubusercontent.com";

    fn layer() -> (BTreeMap<String, String>, Vec<u8>) {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!("{DIR}/podinfo-sig-manifest.json")).unwrap(),
        )
        .unwrap();
        let ann: BTreeMap<String, String> =
            serde_json::from_value(m["layers"][0]["annotations"].clone()).unwrap();
        (
            ann,
            std::fs::read(format!("{DIR}/podinfo-sig-payload.json")).unwrap(),
        )
    }

    fn rule(subject: Matcher, issuer: &str) -> Vec<IdentityRule> {
        vec![IdentityRule {
            subject,
            issuer: Matcher::Exact(issuer.into()),
        }]
    }

    #[test]
    fn real_github_actions_signature_verifies_offline() {
        let (ann, payload) = layer();
        let prod = KeylessRoots::from_trusted_root(Path::new(&format!("{DIR}/trusted_root.json")))
            .unwrap();
        let s = verify(
            &ann,
            &payload,
            &prod,
            &rule(Matcher::Exact(SAN.into()), ISSUER),
        )
        .unwrap();
        assert_eq!(s.subject, SAN);
        assert_eq!(s.issuer, ISSUER);
        assert!(
            airlock::bundle::rfc3339(s.signed_at).starts_with("2023-06-26"),
            "{}",
            s.signed_at
        );
        // The same with the PEM forms of the Fulcio root and Rekor key.
        let pem = KeylessRoots::from_pem(
            Path::new(&format!("{DIR}/fulcio_v1.crt.pem")),
            Path::new(&format!("{DIR}/rekor.pub")),
        )
        .unwrap();
        let regex = Matcher::regex("https://github.com/stefanprodan/podinfo/.*").unwrap();
        verify(&ann, &payload, &pem, &rule(regex, ISSUER)).unwrap();
    }

    #[test]
    fn real_keyless_signature_negatives() {
        let (ann, payload) = layer();
        let prod = KeylessRoots::from_trusted_root(Path::new(&format!("{DIR}/trusted_root.json")))
            .unwrap();
        let ok = rule(Matcher::Exact(SAN.into()), ISSUER);
        let err =
            |a: &BTreeMap<String, String>, p: &[u8], roots: &KeylessRoots, r: &[IdentityRule]| {
                verify(a, p, roots, r).unwrap_err().to_string()
            };

        let e = err(
            &ann,
            &payload,
            &prod,
            &rule(
                Matcher::Exact(
                    "https://github.com/evil/repo/.github/workflows/x.yml@refs/heads/main".into(),
                ),
                ISSUER,
            ),
        );
        assert!(e.contains("no rule trusts"), "{e}");
        let e = err(
            &ann,
            &payload,
            &prod,
            &rule(Matcher::Exact(SAN.into()), "https://accounts.google.com"),
        );
        assert!(e.contains("no rule trusts"), "{e}");

        let mut edited = payload.clone();
        edited.push(b' ');
        let e = err(&ann, &edited, &prod, &ok);
        assert!(e.contains("other content"), "{e}");

        let mut a = ann.clone();
        let set =
            a["dev.sigstore.cosign/bundle"].replace("\"integratedTime\":", "\"integratedTime\":1");
        a.insert("dev.sigstore.cosign/bundle".into(), set);
        let e = err(&a, &payload, &prod, &ok);
        assert!(e.contains("SET does not verify"), "{e}");

        let mut a = ann.clone();
        a.remove("dev.sigstore.cosign/bundle");
        let e = err(&a, &payload, &prod, &ok);
        assert!(e.contains("no Rekor SET"), "{e}");

        // A real, but different (staging), trusted root: nothing verifies.
        let staging =
            KeylessRoots::from_trusted_root(Path::new(&format!("{DIR}/staging_trusted_root.json")))
                .unwrap();
        let e = err(&ann, &payload, &staging, &ok);
        assert!(e.contains("not one the site trusts"), "{e}");
    }
}

#[test]
fn keyless_policy_admits_by_identity_only() {
    use airlock::bundle::{Artifact, ArtifactKind};
    use airlock::trust::{identity_rule, MemoryStore, Policy};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/realdata/keyless");
    let manifest = std::fs::read(format!("{dir}/podinfo-sig-manifest.json")).unwrap();
    let payload = std::fs::read(format!("{dir}/podinfo-sig-payload.json")).unwrap();
    let subject: Digest = "sha256:57a654ace69ec02ba8973093b6a786faa15640575fbf0dbb603db55aca2ccec8"
        .parse()
        .unwrap();
    let sig = Digest::of(&manifest);
    let image = test_image(
        "ghcr.io/stefanprodan/podinfo:6.4.0".into(),
        "stefanprodan/podinfo",
        subject.clone(),
        Artifact {
            kind: ArtifactKind::Signature,
            subject,
            digest: sig.clone(),
            media_type: airlock::oci::OCI_MANIFEST.into(),
            size: manifest.len() as u64,
            tag: None,
            artifact_type: None,
            predicate_types: vec![],
        },
    );
    let mut store = MemoryStore::default();
    store
        .manifests
        .insert(sig, (manifest, airlock::oci::OCI_MANIFEST.into()));
    store.blobs.insert(Digest::of(&payload), payload);
    let root = PathBuf::from(format!("{dir}/trusted_root.json"));
    let issuer = "https://token.actions.githubusercontent.com";

    let ok = identity_rule(
        None,
        Some("https://github.com/stefanprodan/podinfo/.*"),
        Some(issuer),
        None,
    )
    .unwrap();
    let v = Policy::from_flags(&[], vec![ok], &Roots::with_trusted_root(&root))
        .unwrap()
        .evaluate(&image, &store);
    assert!(v.admitted, "{:?}", v.reasons);
    assert!(v
        .admitted_by
        .as_deref()
        .unwrap()
        .starts_with("keyless: https://github.com/stefanprodan/podinfo/"));
    assert!(v.findings[0]
        .signed_at
        .as_deref()
        .unwrap()
        .starts_with("2023-06-26"));

    let wrong = identity_rule(Some("someone@example.com"), None, Some(issuer), None).unwrap();
    let v = Policy::from_flags(&[], vec![wrong], &Roots::with_trusted_root(&root))
        .unwrap()
        .evaluate(&image, &store);
    assert!(
        !v.admitted && v.reasons[0].contains("which no rule trusts"),
        "{:?}",
        v.reasons
    );

    // A key-only policy does not admit a keyless signature.
    let v = Policy::from_keys(&[PathBuf::from(TEST_PUB)])
        .unwrap()
        .evaluate(&image, &store);
    assert!(
        !v.admitted && v.reasons[0].contains("keyless: no trusted root"),
        "{:?}",
        v.reasons
    );

    // The same through a policy file.
    let work = tempfile::tempdir().unwrap();
    let pf = work.path().join("p.yaml");
    std::fs::write(&pf, format!("trustedRoot: {}\nrules:\n  - repositories: [\"ghcr.io/stefanprodan/**\"]\n    keyless:\n      - identityRegexp: \"https://github.com/stefanprodan/.*\"\n        issuer: {issuer}\n", root.display())).unwrap();
    let v = Policy::from_file(&pf).unwrap().evaluate(&image, &store);
    assert!(v.admitted, "{:?}", v.reasons);
    std::fs::write(&pf, "rules:\n  - repositories: [\"**\"]\n    keyless:\n      - identity: x\n        issuer: y\n").unwrap();
    assert!(Policy::from_file(&pf)
        .err()
        .unwrap()
        .to_string()
        .contains("no trustedRoot"));
}

/// sigstore-conformance `bundle-verify`: every case directory is a bundle,
/// an artifact and the expected outcome (`_fail` must fail). Run through
/// airlock's bundle verifier both with the artifact bytes and with only its
/// sha256, as the suite asks.
#[test]
fn sigstore_conformance_bundle_verify_table() {
    use airlock::trust::bundles::{load_trusted_root, verify, Signed};
    use airlock::trust::keyless::{IdentityRule, Matcher};
    let base = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/realdata/sigstore-conformance/bundle-verify"
    ));
    let prod = load_trusted_root(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/realdata/keyless/trusted_root.json"
    )))
    .unwrap();
    let default_artifact = std::fs::read(base.join("a.txt")).unwrap();
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut dirs: Vec<_> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let (mut passed, mut mismatches) = (0, Vec::new());
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let expect_ok = !name.ends_with("_fail");
        let outcome = (|| -> Result<(), String> {
            let bundle = std::fs::read_to_string(dir.join("bundle.sigstore.json"))
                .map_err(|e| e.to_string())?;
            let artifact =
                std::fs::read(dir.join("artifact")).unwrap_or_else(|_| default_artifact.clone());
            let identity = read(dir.join("identity")).unwrap_or_else(|| "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main".into());
            let issuer = read(dir.join("issuer"))
                .unwrap_or_else(|| "https://token.actions.githubusercontent.com".into());
            let keys: Vec<(String, String)> = read(dir.join("key.pub"))
                .map(|k| ("key.pub".to_string(), k))
                .into_iter()
                .collect();
            let custom = dir.join("trusted_root.json");
            let root_owned;
            let root = if custom.exists() {
                root_owned = load_trusted_root(&custom).map_err(|e| e.to_string())?;
                &root_owned
            } else {
                &prod
            };
            let rules = [IdentityRule {
                subject: Matcher::Exact(identity),
                issuer: Matcher::Exact(issuer),
            }];
            verify(&bundle, Signed::Bytes(&artifact), root, &rules, &keys)
                .map_err(|e| e.to_string())?;
            verify(
                &bundle,
                Signed::Digest(&Digest::of(&artifact)),
                root,
                &rules,
                &keys,
            )
            .map_err(|e| e.to_string())?;
            Ok(())
        })();
        if outcome.is_ok() == expect_ok {
            passed += 1;
        } else {
            mismatches.push(format!(
                "{name}: expected {}, got {outcome:?}",
                if expect_ok { "success" } else { "failure" }
            ));
        }
    }
    eprintln!(
        "sigstore-conformance bundle-verify: {passed}/{} cases as expected",
        dirs.len()
    );
    assert!(dirs.len() >= 60, "conformance cases missing");
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// A real cosign v3 signature (sigstore bundle v0.3 attached as an OCI
/// referrer) admitted by identity, refused otherwise.
/// A selected image with one artifact (source, repository, signed digest).
fn test_image(
    source: String,
    repository: &str,
    subject: Digest,
    artifact: airlock::bundle::Artifact,
) -> airlock::bundle::ImageEntry {
    airlock::bundle::ImageEntry {
        registry: source.split('/').next().unwrap_or_default().into(),
        source,
        repository: repository.into(),
        tag: None,
        digest: subject.clone(),
        media_type: airlock::oci::OCI_INDEX.into(),
        size: 0,
        source_digest: subject,
        platforms: vec![],
        target: None,
        ref_name: None,
        artifacts: vec![artifact],
        total_size: 0,
        tag_template: None,
        platform_of: None,
        resolved_digest: None,
    }
}

/// An image whose one referrer is a sigstore bundle (as cosign v3 attaches
/// it), and a store holding it: for policy checks at library level.
fn bundle_referrer(
    bundle: &[u8],
    repository: &str,
) -> (
    impl Fn(&Digest) -> airlock::bundle::ImageEntry,
    airlock::trust::MemoryStore,
) {
    use airlock::bundle::{Artifact, ArtifactKind};
    let bt = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let layer = Digest::of(bundle);
    let layer_size = bundle.len();
    let repository = repository.to_string();
    let make_manifest = move |subject: &Digest| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": airlock::oci::OCI_MANIFEST, "artifactType": bt,
            "config": {"mediaType": airlock::oci::OCI_EMPTY, "digest": Digest::of(b"{}").to_string(), "size": 2},
            "layers": [{"mediaType": bt, "digest": layer.to_string(), "size": layer_size}],
            "subject": {"mediaType": airlock::oci::OCI_INDEX, "digest": subject.to_string(), "size": 1}
        }))
        .unwrap()
    };
    // One referrer manifest serves every subject asked about (its own subject
    // field is not what the policy checks; the bundle's statement is).
    let manifest = make_manifest(&Digest::of(b"subject"));
    let referrer = Digest::of(&manifest);
    let mut store = airlock::trust::MemoryStore::default();
    store.manifests.insert(
        referrer.clone(),
        (manifest.clone(), airlock::oci::OCI_MANIFEST.into()),
    );
    store.blobs.insert(Digest::of(bundle), bundle.to_vec());
    let size = manifest.len() as u64;
    let entry = move |subject: &Digest| {
        test_image(
            format!("registry.example/{repository}:v1"),
            &repository,
            subject.clone(),
            Artifact {
                kind: ArtifactKind::Referrer,
                subject: subject.clone(),
                digest: referrer.clone(),
                media_type: airlock::oci::OCI_MANIFEST.into(),
                size,
                tag: None,
                artifact_type: Some(bt.into()),
                predicate_types: vec![],
            },
        )
    };
    (entry, store)
}

/// The policy's verdict on a real sigstore bundle attached as the referrer of
/// `subject`, for a signer matching `identity` (a regex) from `issuer`.
fn judge_bundle(
    bundle: &str,
    root: &str,
    subject: &str,
    identity: &str,
    issuer: &str,
) -> airlock::trust::Verdict {
    let real = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/realdata");
    let bundle = std::fs::read(format!("{real}/{bundle}")).unwrap();
    let (entry, store) = bundle_referrer(&bundle, "vendor/image");
    let subject: Digest = subject.parse().unwrap();
    // What export/import load for the policy includes the bundle blob.
    let wanted =
        airlock::trust::artifact_blobs(&[entry(&subject)], &|d| store.manifests.get(d).cloned());
    assert_eq!(wanted, vec![Digest::of(&bundle)]);
    let rule = airlock::trust::identity_rule(None, Some(identity), Some(issuer), None).unwrap();
    let root = PathBuf::from(format!("{real}/{root}"));
    airlock::trust::Policy::from_flags(&[], vec![rule], &Roots::with_trusted_root(&root))
        .unwrap()
        .evaluate(&entry(&subject), &store)
}

const OTHER_DIGEST: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// cosign v3's real image signature bundle (kubewarden-controller v1.34.0)
/// and cosign's real OCI attestation bundle (cosign/pkg/cosign/testdata):
/// verified with their trusted roots, reported as signature / attestation of
/// their predicate type; refused for another image or another signer, and
/// never taken on their own word without a trusted root.
#[test]
fn cosign_bundles_are_verified_by_policy() {
    use airlock::bundle::ArtifactKind;
    let gha = "https://token.actions.githubusercontent.com";
    let kw_id = "https://github.com/kubewarden/kubewarden-controller/.*";
    let kw = |subject: &str, id: &str| {
        judge_bundle(
            "keyless/kubewarden-bundle_v03.json",
            "keyless/trusted_root.json",
            subject,
            id,
            gha,
        )
    };
    let kw_digest = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";
    let v = kw(kw_digest, kw_id);
    assert!(v.admitted, "{:?} {:?}", v.reasons, v.findings);
    assert_eq!(v.findings[0].kind, ArtifactKind::Signature);
    assert_eq!(
        v.findings[0].predicate_type.as_deref(),
        Some("https://sigstore.dev/cosign/sign/v1")
    );
    let v = kw(OTHER_DIGEST, kw_id);
    assert!(!v.admitted, "a bundle for another digest was accepted");
    let v = kw(kw_digest, "https://github.com/evil/.*");
    assert!(
        !v.admitted && v.reasons[0].contains("no rule trusts"),
        "{:?}",
        v.reasons
    );

    let att = |subject: &str, id: &str| {
        judge_bundle(
            "cosign/oci-attestation.sigstore.json",
            "cosign/trusted_root_pgi.json",
            subject,
            id,
            "https://github.com/login/oauth",
        )
    };
    let att_digest = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4";
    let v = att(att_digest, r"cody@soyland\.com");
    let f = &v.findings[0];
    assert_eq!(f.kind, ArtifactKind::Attestation, "{f:?}");
    assert_eq!(
        f.predicate_type.as_deref(),
        Some("https://cosign.sigstore.dev/attestation/v1")
    );
    assert_eq!(
        f.key.as_deref(),
        Some("keyless: cody@soyland.com (https://github.com/login/oauth)"),
        "{f:?}"
    );
    // An attestation is not a signature: the image itself is still unsigned.
    assert!(
        !v.admitted && v.reasons[0].contains("no signature"),
        "{:?}",
        v.reasons
    );
    let v = att(OTHER_DIGEST, r"cody@soyland\.com");
    assert!(
        v.findings[0].key.is_none() && v.findings[0].problem.is_some(),
        "{:?}",
        v.findings
    );
    let v = att(att_digest, r"mallory@example\.com");
    let problem = v.findings[0].problem.clone().unwrap_or_default();
    assert!(problem.contains("no rule trusts"), "{problem}");

    // Without a trusted root, a bundle is never taken on its own word.
    let real = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/realdata");
    let bundle = std::fs::read(format!("{real}/keyless/kubewarden-bundle_v03.json")).unwrap();
    let (entry, store) = bundle_referrer(&bundle, "vendor/image");
    let v = airlock::trust::Policy::from_keys(&[PathBuf::from(TEST_PUB)])
        .unwrap()
        .evaluate(&entry(&kw_digest.parse().unwrap()), &store);
    assert!(
        !v.admitted && v.reasons[0].contains("no trusted root"),
        "{:?}",
        v.reasons
    );
}

const TEST_ROOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/keys/test-trusted-root.json"
);

/// The fixtures' keyless signature and SLSA attestation (Fulcio-style leaf
/// with an SCT, Rekor SETs over `hashedrekord` and `intoto` entries, from the
/// fixtures' own test sigstore) cross the gap through the real registry on
/// identity alone, and are refused for another identity or another root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_signatures_and_attestations_cross_by_identity() {
    use airlock::fixtures::sigstore::{TEST_IDENTITY, TEST_ISSUER};
    let (src, images) = seeded_source().await;
    let agent = images
        .iter()
        .find(|i| i.repository.ends_with("agent"))
        .unwrap();
    let operator = images
        .iter()
        .find(|i| i.repository.ends_with("operator"))
        .unwrap();
    let agent_ref = format!("{}/{}:{}", src.host, agent.repository, agent.tag);
    let operator_ref = format!("{}/{}:{}", src.host, operator.repository, operator.tag);
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("keyless.tar.zst");
    let b = b.to_str().unwrap();
    let identity = [
        "--certificate-identity",
        TEST_IDENTITY,
        "--certificate-oidc-issuer",
        TEST_ISSUER,
        "--trusted-root",
        TEST_ROOT,
    ];

    // Only the agent is signed keyless: the operator is refused before writing.
    fails_policy(
        airlock_cmd()
            .args(["export", "-o", b, &operator_ref])
            .args(identity),
    );
    assert!(!Path::new(b).exists());

    let out = run_ok(
        airlock_cmd()
            .args(["export", "--json", "-o", b, &agent_ref])
            .args(identity),
    );
    let verdict = json(&out)["policy"][0].clone();
    assert_eq!(verdict["admitted"], true, "{verdict}");
    assert_eq!(
        verdict["admittedBy"],
        format!("keyless: {TEST_IDENTITY} ({TEST_ISSUER})").as_str()
    );

    // The audit, offline, with a policy requiring the keyless SLSA attestation.
    let policy = work.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "trustedRoot: {TEST_ROOT}\nrules:\n  - repositories: [\"**/agent\"]\n    keyless:\n      - identity: {TEST_IDENTITY}\n        issuer: {TEST_ISSUER}\n    attestations: [\"{}\"]\n",
            airlock::fixtures::SLSA_PROVENANCE_V1
        ),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args(["-n", env!("CARGO_BIN_EXE_airlock"), "verify", "--json", b])
        .args(["--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = json(&out);
    let findings = rep["policy"][0]["findings"].as_array().unwrap().clone();
    let att = findings
        .iter()
        .find(|f| f["kind"] == "attestation")
        .unwrap_or_else(|| panic!("{findings:?}"));
    assert_eq!(att["predicateType"], airlock::fixtures::SLSA_PROVENANCE_V1);
    assert_eq!(att["signedAt"], "2026-01-15T10:00:45Z", "{att}");
    assert!(
        att["key"].as_str().unwrap().starts_with("keyless: "),
        "{att}"
    );
    // The keyless signature layer carries the time Rekor logged it.
    assert!(findings.iter().any(|f| f["kind"] == "signature"
        && f["problem"].is_null()
        && f["signedAt"] == "2026-01-15T10:00:30Z"));

    // Another identity, or the real production root: refused.
    let wrong = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("refs/tags/v2.0.0", "refs/heads/main");
    std::fs::write(&policy, wrong).unwrap();
    let out = airlock_cmd()
        .args(["verify", "--json", b, "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let reasons = json(&out)["policy"][0]["reasons"].to_string();
    assert!(reasons.contains("which no rule trusts"), "{reasons}");
    assert!(reasons.contains("no valid attestation"), "{reasons}");
    let prod = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/realdata/keyless/trusted_root.json"
    );
    refused_by_policy(
        airlock_cmd()
            .args(["verify", "--json", b])
            .args(["--certificate-identity", TEST_IDENTITY])
            .args([
                "--certificate-oidc-issuer",
                TEST_ISSUER,
                "--trusted-root",
                prod,
            ]),
        "is not one the site trusts",
    );

    // A private PKI checks certificates at verification time (no transparency
    // log gives a signing time): the ten-minute Fulcio-style leaf is refused.
    let pki_root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/realdata/containers-image/signature/fixtures/pki_root_crts.pem"
    );
    refused_by_policy(
        airlock_cmd()
            .args(["verify", "--json", b, "--ca-roots", pki_root])
            .args(["--certificate-identity", TEST_IDENTITY]),
        "site PKI: the certificate was not valid at verification time",
    );

    // Import on identity: every digest lands, the keyless signature with it.
    let dst = TestRegistry::start();
    run_ok(
        airlock_cmd()
            .args(["import", b, "--to", &dst.host])
            .args(identity),
    );
    let d = client(&dst, test_config()).await;
    assert_eq!(
        d.head_manifest(&agent.repository, &agent.tag)
            .await
            .unwrap(),
        Some(agent.digest.clone())
    );
    let sig_tag = format!("{}.sig", agent.digest.tag_stem());
    let sig = d.get_manifest(&agent.repository, &sig_tag).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&sig.bytes).unwrap();
    assert!(
        doc["layers"][1]["annotations"]["dev.sigstore.cosign/certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    // A bundle may carry the trusted root; the site uses it only under the
    // digest it pinned.
    let carried = work.path().join("carried.tar.zst");
    let c = carried.to_str().unwrap();
    run_ok(
        airlock_cmd()
            .args([
                "export",
                "-o",
                c,
                "--carry-trusted-root",
                TEST_ROOT,
                &agent_ref,
            ])
            .args(identity),
    );
    let pin = Digest::of(&std::fs::read(TEST_ROOT).unwrap()).to_string();
    let pinned = [
        "--certificate-identity",
        TEST_IDENTITY,
        "--certificate-oidc-issuer",
        TEST_ISSUER,
        "--trusted-root",
        &pin,
    ];
    let out = run_ok(airlock_cmd().args(["inspect", c]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("trusted root:  {pin}")));
    let out = run_ok(airlock_cmd().args(["verify", "--json", c]).args(pinned));
    let rep = json(&out);
    assert_eq!(rep["policy"][0]["admitted"], true, "{rep}");
    assert_eq!(rep["unreferenced"], serde_json::json!([]), "{rep}");
    // Another pin: the carried root is not used, nothing is admitted.
    let other_pin = format!("sha256:{}", "0".repeat(64));
    refused_by_policy(
        airlock_cmd()
            .args(["verify", "--json", c])
            .args(&pinned[..4])
            .args(["--trusted-root", &other_pin]),
        "is not in this bundle",
    );
    // A bundle without a carried root cannot satisfy a pin either.
    let out = airlock_cmd()
        .args(["verify", b])
        .args(pinned)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    // Import with the pin, from the file and from a pipe; the root is not pushed.
    let dst = TestRegistry::start();
    run_ok(
        airlock_cmd()
            .args(["import", c, "--to", &dst.host])
            .args(pinned),
    );
    assert_eq!(dst.catalog().await, vec![agent.repository.clone()]);
    let dst = TestRegistry::start();
    run_ok(
        airlock_cmd()
            .args(["import", "-", "--to", &dst.host])
            .args(pinned)
            .stdin(std::fs::File::open(&carried).unwrap()),
    );
    assert_eq!(dst.catalog().await, vec![agent.repository.clone()]);
}

/// Keyless attestations and signatures from the fixtures' test sigstore,
/// checked at library level: the valid ones verify, and every edit fails
/// with the reason named.
#[test]
fn keyless_attestation_negatives() {
    use airlock::fixtures::sigstore::{TestSigstore, TEST_IDENTITY, TEST_ISSUER};
    use airlock::trust::keyless::{
        verify, verify_attestation, IdentityRule, KeylessRoots, Matcher,
    };
    let ts = TestSigstore::new();
    let roots = KeylessRoots::from_trusted_root(Path::new(TEST_ROOT)).unwrap();
    let rules = [IdentityRule {
        subject: Matcher::Exact(TEST_IDENTITY.into()),
        issuer: Matcher::Exact(TEST_ISSUER.into()),
    }];
    let statement = br#"{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v1","subject":[{"name":"x","digest":{"sha256":"00"}}],"predicate":{}}"#;
    let (envelope, ann) = ts.attest(statement, TEST_IDENTITY);
    let env: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    };
    let sigs = vec![b64(env["signatures"][0]["sig"].as_str().unwrap())];
    let pt = "application/vnd.in-toto+json";
    let check = |ann: &std::collections::BTreeMap<String, String>,
                 envelope: &[u8],
                 payload: &[u8],
                 roots: &KeylessRoots| {
        verify_attestation(ann, envelope, pt, payload, &sigs, roots, &rules)
    };
    let s = check(&ann, &envelope, statement, &roots).unwrap();
    assert_eq!(s.subject, TEST_IDENTITY);

    // The envelope is not what Rekor logged.
    let mut edited = envelope.clone();
    edited.push(b' ');
    let e = check(&ann, &edited, statement, &roots)
        .unwrap_err()
        .to_string();
    assert!(e.contains("other content"), "{e}");
    // Same envelope, another statement claimed: the signature does not cover it.
    let e = check(&ann, &envelope, b"{}", &roots)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not verify the envelope"), "{e}");
    // The certificate of another signing event.
    let (_, other) = ts.attest(b"{\"other\":1}", TEST_IDENTITY);
    let taking = |key: &str, from: &std::collections::BTreeMap<String, String>| {
        let mut a = ann.clone();
        a.insert(key.into(), from[key].clone());
        a
    };
    let swapped = taking("dev.sigstore.cosign/certificate", &other);
    let e = check(&swapped, &envelope, statement, &roots)
        .unwrap_err()
        .to_string();
    assert!(e.contains("another signer"), "{e}");
    // The SET of a hashedrekord (signature) entry does not vouch for an attestation.
    let sig_ann = ts.sign(b"payload", TEST_IDENTITY);
    let wrong_kind = taking("dev.sigstore.cosign/bundle", &sig_ann);
    let e = check(&wrong_kind, &envelope, statement, &roots)
        .unwrap_err()
        .to_string();
    assert!(e.contains("kind hashedrekord"), "{e}");

    // A trusted root without CT logs: the SCT cannot be checked, so nothing admits.
    let dir = tempfile::tempdir().unwrap();
    let mut root: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(TEST_ROOT).unwrap()).unwrap();
    root["ctlogs"] = serde_json::json!([]);
    let no_ct = dir.path().join("no-ct.json");
    std::fs::write(&no_ct, root.to_string()).unwrap();
    let no_ct = KeylessRoots::from_trusted_root(&no_ct).unwrap();
    let e = check(&ann, &envelope, statement, &no_ct)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no CT log"), "{e}");
    let e = verify(&sig_ann, b"payload", &no_ct, &rules)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no CT log"), "{e}");
    verify(&sig_ann, b"payload", &roots, &rules).unwrap();
}

mod containers_image {
    //! containers/image's cosign vectors (fixtures/realdata/containers-image,
    //! see its PROVENANCE.md): each `dir-img-cosign-*` holds an image manifest
    //! and signature layers in the "dir:" form; every VALID case must be
    //! admitted with the inputs named there, every MUST-FAIL case refused.
    use super::*;
    use airlock::bundle::{Artifact, ArtifactKind};
    use airlock::trust::{identity_rule, MemoryStore, Policy, RootSource, Verdict};
    use base64::Engine as _;

    const FIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/realdata/containers-image/signature/fixtures"
    );
    const PROD_ROOT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/realdata/keyless/trusted_root.json"
    );

    /// The image (digest of manifest.json, or of nothing) and a store holding
    /// one signature manifest with a layer per `signature-N` file named.
    fn load(case: &str, signatures: &[&str]) -> (airlock::bundle::ImageEntry, MemoryStore) {
        let dir = format!("{FIX}/{case}");
        let subject = std::fs::read(format!("{dir}/manifest.json"))
            .map(|m| Digest::of(&m))
            .unwrap_or_else(|_| Digest::of(b""));
        let mut store = MemoryStore::default();
        let mut layers = Vec::new();
        for s in signatures {
            let raw = std::fs::read(format!("{dir}/{s}")).unwrap();
            let json = raw
                .strip_prefix(b"\x00sigstore-json\n")
                .expect("containers/image sigstore-json signature");
            let v: serde_json::Value = serde_json::from_slice(json).unwrap();
            let payload = base64::engine::general_purpose::STANDARD
                .decode(v["payload"].as_str().unwrap())
                .unwrap();
            let d = Digest::of(&payload);
            layers.push(
                serde_json::json!({"mediaType": v["mimeType"], "digest": d.to_string(),
                "size": payload.len(), "annotations": v["annotations"]}),
            );
            store.blobs.insert(d, payload);
        }
        let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
            "mediaType": airlock::oci::OCI_MANIFEST,
            "config": {"mediaType": airlock::oci::OCI_CONFIG, "digest": Digest::of(b"{}").to_string(), "size": 2},
            "layers": layers}))
        .unwrap();
        let sig = Digest::of(&manifest);
        store.manifests.insert(
            sig.clone(),
            (manifest.clone(), airlock::oci::OCI_MANIFEST.into()),
        );
        let image = test_image(
            format!("registry.example/{case}:latest"),
            case,
            subject.clone(),
            Artifact {
                kind: ArtifactKind::Signature,
                subject,
                digest: sig,
                media_type: airlock::oci::OCI_MANIFEST.into(),
                size: manifest.len() as u64,
                tag: None,
                artifact_type: None,
                predicate_types: vec![],
            },
        );
        (image, store)
    }

    fn keys(names: &[&str]) -> Policy {
        let paths: Vec<PathBuf> = names
            .iter()
            .map(|n| PathBuf::from(format!("{FIX}/{n}")))
            .collect();
        Policy::from_keys(&paths).unwrap()
    }

    fn with_tlog(key: &str, rekor: &str) -> Policy {
        let roots = Roots {
            trusted_root: None,
            rekor_keys: vec![PathBuf::from(format!("{FIX}/{rekor}"))],
            require_tlog: true,
        };
        Policy::from_flags(&[PathBuf::from(format!("{FIX}/{key}"))], vec![], &roots).unwrap()
    }

    fn keyless(identity: &str, issuer: &str) -> Policy {
        let rule = identity_rule(Some(identity), None, Some(issuer), None).unwrap();
        let roots = Roots {
            trusted_root: Some(RootSource::File(PathBuf::from(PROD_ROOT))),
            ..Roots::default()
        };
        Policy::from_flags(&[], vec![rule], &roots).unwrap()
    }

    fn decide(case: &str, sigs: &[&str], policy: &Policy) -> Verdict {
        let (image, store) = load(case, sigs);
        policy.evaluate(&image, &store)
    }

    fn refused(v: &Verdict, why: &str) {
        assert!(!v.admitted, "{case} admitted", case = v.image);
        let all = format!("{:?}", v.reasons);
        assert!(all.contains(why), "{}: {all}", v.image);
    }

    #[test]
    fn containers_image_cosign_vectors() {
        let one = &["signature-1"][..];
        // VALID cases.
        for case in ["dir-img-cosign-valid", "dir-img-cosign-valid-with-tag"] {
            let v = decide(case, one, &keys(&["cosign.pub"]));
            assert!(v.admitted, "{case}: {:?}", v.reasons);
        }
        let v = decide(
            "dir-img-cosign-valid-2",
            &["signature-1", "signature-2"],
            &keys(&["cosign.pub"]),
        );
        assert!(
            v.admitted && v.findings.iter().all(|f| f.key.is_some()),
            "{v:?}"
        );
        let v = decide(
            "dir-img-cosign-key-rekor-valid",
            one,
            &with_tlog("cosign2.pub", "rekor.pub"),
        );
        assert!(v.admitted, "{:?}", v.reasons);
        assert_eq!(
            v.findings[0].signed_at.as_deref(),
            Some("2023-01-20T21:57:39Z")
        );
        let v = decide(
            "dir-img-cosign-fulcio-rekor-valid",
            one,
            &keyless("mitr@redhat.com", "https://github.com/login/oauth"),
        );
        assert!(v.admitted, "{:?}", v.reasons);
        assert_eq!(
            v.admitted_by.as_deref(),
            Some("keyless: mitr@redhat.com (https://github.com/login/oauth)")
        );
        let v = decide(
            "dir-img-cosign-mixed",
            &["signature-1", "signature-2"],
            &keys(&["cosign.pub"]),
        );
        assert!(
            v.admitted,
            "mixed: any valid signature admits: {:?}",
            v.reasons
        );

        // MUST-FAIL cases.
        refused(
            &decide("dir-img-cosign-valid", one, &keys(&["cosign2.pub"])),
            "no trusted key verifies",
        );
        refused(
            &decide(
                "dir-img-cosign-mixed",
                &["signature-1"],
                &keys(&["cosign.pub", "cosign2.pub"]),
            ),
            "no trusted key verifies",
        );
        for case in [
            "dir-img-cosign-modified-manifest",
            "dir-img-cosign-manifest-digest-error",
            "dir-img-cosign-no-manifest",
        ] {
            refused(
                &decide(case, one, &keys(&["cosign.pub"])),
                "payload signs sha256:634a8f35",
            );
        }
        refused(
            &decide(
                "dir-img-cosign-other-attachment",
                one,
                &keys(&["cosign.pub"]),
            ),
            "layer media type text/plain is not a signature",
        );
        refused(
            &decide(
                "dir-img-cosign-fulcio-rekor-valid",
                one,
                &keyless("someone@example.com", "https://github.com/login/oauth"),
            ),
            "which no rule trusts",
        );
        // Key-only signature, but the rule requires a Rekor SET.
        refused(
            &decide(
                "dir-img-cosign-valid",
                one,
                &with_tlog("cosign.pub", "rekor.pub"),
            ),
            "no Rekor SET",
        );
        // RSA is not a Rekor key.
        let err = Policy::from_flags(
            &[PathBuf::from(format!("{FIX}/cosign2.pub"))],
            vec![],
            &Roots {
                trusted_root: None,
                rekor_keys: vec![PathBuf::from(format!("{FIX}/some-rsa-key.pub"))],
                require_tlog: true,
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("not an ECDSA P-256 public key"), "{err}");
        // Private PKI (RSA leaf and CAs, no Rekor): valid with the site's PKI
        // roots; without them, or for another identity, refused.
        let pki = |identity: &str, intermediates: bool| {
            let trust = airlock::trust::keyless::PkiTrust::from_files(
                Path::new(&format!("{FIX}/pki_root_crts.pem")),
                intermediates
                    .then(|| PathBuf::from(format!("{FIX}/pki_intermediate_crts.pem")))
                    .as_deref(),
                vec![airlock::trust::keyless::Matcher::Exact(identity.into())],
            )
            .unwrap();
            Policy::from_flags(&[], vec![], &Roots::default())
                .unwrap()
                .with_pki(trust)
        };
        for (identity, intermediates) in [("qiwan@redhat.com", true), ("myhost.example.com", false)]
        {
            let v = decide(
                "dir-img-cosign-pki-valid",
                one,
                &pki(identity, intermediates),
            );
            assert!(v.admitted, "{identity}: {:?}", v.reasons);
            let by = v.admitted_by.clone().unwrap();
            assert!(
                by.starts_with(&format!("certificate: {identity} (issued by ")),
                "{by}"
            );
        }
        refused(
            &decide(
                "dir-img-cosign-pki-valid",
                one,
                &pki("someone@example.com", true),
            ),
            "which no rule trusts",
        );
        refused(
            &decide(
                "dir-img-cosign-pki-valid",
                one,
                &keyless("qiwan@redhat.com", "https://github.com/login/oauth"),
            ),
            "no Rekor SET",
        );
        // Another CA (Fulcio's root) does not anchor it.
        let fulcio_as_pki = Policy::from_flags(&[], vec![], &Roots::default())
            .unwrap()
            .with_pki(
                airlock::trust::keyless::PkiTrust::from_files(
                    Path::new(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/fixtures/realdata/keyless/fulcio_v1.crt.pem"
                    )),
                    None,
                    vec![airlock::trust::keyless::Matcher::Exact(
                        "qiwan@redhat.com".into(),
                    )],
                )
                .unwrap(),
            );
        refused(
            &decide("dir-img-cosign-pki-valid", one, &fulcio_as_pki),
            "does not chain to a trusted CA of the site's PKI",
        );
    }

    /// containers/image's standalone SET vector: a Fulcio-signed payload.
    #[test]
    fn containers_image_rekor_set_vector() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/realdata/containers-image/signature/internal/testdata"
        );
        let read = |f: &str| std::fs::read(format!("{dir}/{f}")).unwrap();
        let logs = [airlock::trust::tlog::RekorKey::from_pem(
            &String::from_utf8(read("rekor.pub")).unwrap(),
        )
        .unwrap()];
        let set = String::from_utf8(read("rekor-set")).unwrap();
        let entry = airlock::trust::tlog::verify_set(&set, &logs).unwrap();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8(read("rekor-sig")).unwrap().trim())
            .unwrap();
        let cert = airlock::trust::tlog::spki_of_pem(&read("rekor-cert")).unwrap();
        entry
            .check_names(&["hashedrekord"], &read("rekor-payload"), Some(&sig), &cert)
            .unwrap();
        let e = entry
            .check_names(&["hashedrekord"], b"another payload", Some(&sig), &cert)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other content"), "{e}");
    }
}
