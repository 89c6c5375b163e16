//! `airlock copy` between registries, layout directories and pipes: raw
//! manifest bytes and cosign signatures carried, names mapped as the
//! destination says, tag conflicts refused.

mod common;

use airlock::fixtures::FixtureImage;
use common::*;
use std::process::Stdio;

const OTHER_PUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/other-test.pub");

fn image<'a>(images: &'a [FixtureImage], repo: &str, tag: &str) -> &'a FixtureImage {
    images
        .iter()
        .find(|i| i.repository == repo && i.tag == tag)
        .unwrap()
}

fn docker(host: &str, img: &FixtureImage) -> String {
    format!("docker://{host}/{}:{}", img.repository, img.tag)
}

/// `airlock A | airlock B`; both must exit 0.
fn pipe(a: &[&str], b: &[&str]) {
    let mut first = airlock_cmd()
        .args(a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let second = airlock_cmd()
        .args(b)
        .stdin(Stdio::from(first.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reading = std::thread::spawn(move || second.wait_with_output().unwrap());
    let wrote = first.wait_with_output().unwrap();
    let read = reading.join().unwrap();
    assert!(
        wrote.status.success(),
        "airlock {a:?} | …: {}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    assert!(
        read.status.success(),
        "… | airlock {b:?}: {}",
        String::from_utf8_lossy(&read.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_to_registry_keeps_bytes_and_signatures() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let s = client(&src, test_config()).await;
    let d = client(&dst, test_config()).await;
    let op10 = image(&images, "vendor/operator", "1.0.0");
    let op11 = image(&images, "vendor/operator", "1.1.0");
    let agent = image(&images, "vendor/agent", "2.0.0");
    let gateway = image(&images, "vendor/gateway", "3.0.0");

    // Exactly the repository and tag given (signatures, platform signatures,
    // the attestation and its signature go along).
    let out = airlock_ok(&[
        "copy",
        "--json",
        &docker(&src.host, op11),
        &format!("docker://{}/mirror/x:1.1.0", dst.host),
    ]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap_or_else(|e| panic!("copy --json prints JSON on stdout ({e}): {out}"));
    assert_same_image(&s, &d, op11, "mirror/x", "1.1.0").await;
    assert_eq!(dst.catalog().await, vec!["mirror/x".to_string()]);

    // A repository without a tag: the source's tag.
    airlock_ok(&[
        "copy",
        &docker(&src.host, op10),
        &format!("docker://{}/mirror/y", dst.host),
    ]);
    assert_same_image(&s, &d, op10, "mirror/y", "1.0.0").await;

    // A source by digest, to a new tag (the SBOM referrer and the keyless
    // signature and attestation come along).
    airlock_ok(&[
        "copy",
        &format!("docker://{}/vendor/agent@{}", src.host, agent.digest),
        &format!("docker://{}/mirror/pinned:v2", dst.host),
    ]);
    assert_same_image(&s, &d, agent, "mirror/pinned", "v2").await;

    // Templates: {repo} is the source path, {name} its last component, a
    // bare host keeps the path.
    for img in [agent, gateway] {
        airlock_ok(&[
            "copy",
            &docker(&src.host, img),
            &format!("docker://{}/m/{{repo}}", dst.host),
        ]);
        assert_same_image(&s, &d, img, &format!("m/{}", img.repository), &img.tag).await;
    }
    airlock_ok(&[
        "copy",
        &docker(&src.host, op10),
        &format!("docker://{}/n/{{name}}", dst.host),
    ]);
    assert_same_image(&s, &d, op10, "n/operator", "1.0.0").await;
    let (code, _, err) = airlock(&[
        "copy",
        &docker(&src.host, gateway),
        &format!("docker://{}", dst.host),
    ]);
    assert_eq!(code, 0, "{err}");
    // Signed on its index, not per platform: a note, not UNSIGNED.
    assert!(
        err.contains("is signed; these platform manifests have no signature of their own")
            && !err.contains("UNSIGNED"),
        "{err}"
    );
    assert_same_image(&s, &d, gateway, "vendor/gateway", "3.0.0").await;

    // A bare HOST/REPO:TAG source keeps working.
    airlock_ok(&[
        "copy",
        &format!("{}/vendor/gateway:3.0.0", src.host),
        &format!("docker://{}/bare/gw:3.0.0", dst.host),
    ]);
    assert_same_image(&s, &d, gateway, "bare/gw", "3.0.0").await;

    // A selection file instead of SRC: both operator versions by pattern,
    // the per-image target honoured inside the template's prefix.
    let work = tempfile::tempdir().unwrap();
    let sel = work.path().join("images.yaml");
    std::fs::write(
        &sel,
        format!(
            "images:\n  - ref: {}/vendor/operator\n    tagPattern: \"1\\\\..*\"\n    target: sel/op\n",
            src.host
        ),
    )
    .unwrap();
    airlock_ok(&[
        "copy",
        "-f",
        sel.to_str().unwrap(),
        &format!("docker://{}/f/{{repo}}", dst.host),
    ]);
    assert_same_image(&s, &d, op10, "f/sel/op", "1.0.0").await;
    assert_same_image(&s, &d, op11, "f/sel/op", "1.1.0").await;
    // Neither SRC nor --file: a usage error, nothing copied.
    let (code, _, err) = airlock(&["copy", &format!("docker://{}/x", dst.host)]);
    assert_eq!(code, 2, "{err}");

    let mut repos = dst.catalog().await;
    repos.sort();
    assert_eq!(
        repos,
        vec![
            "bare/gw",
            "f/sel/op",
            "m/vendor/agent",
            "m/vendor/gateway",
            "mirror/pinned",
            "mirror/x",
            "mirror/y",
            "n/operator",
            "vendor/gateway"
        ],
        "every copy went to exactly the repository named"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_to_layout_to_registry_round_trip() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");
    for img in &images {
        airlock_ok(&["copy", &docker(&src.host, img), &oci(&dir, None)]);
    }
    assert_valid_layout(&dir);

    // Signatures read back from the layout verify with the vendor key.
    airlock_ok(&[
        "copy",
        "--key",
        COSIGN_TEST_PUB,
        &oci(&dir, None),
        &format!("docker://{}/rt/{{repo}}", dst.host),
    ]);
    let s = client(&src, test_config()).await;
    let d = client(&dst, test_config()).await;
    for img in &images {
        assert_same_image(&s, &d, img, &format!("rt/{}", img.repository), &img.tag).await;
    }

    // One image by its ref name, to a given repository and tag.
    let agent = image(&images, "vendor/agent", "2.0.0");
    airlock_ok(&[
        "copy",
        &oci(&dir, Some("vendor/agent:2.0.0")),
        &format!("docker://{}/one/agent:2.0.0", dst.host),
    ]);
    assert_same_image(&s, &d, agent, "one/agent", "2.0.0").await;

    // A key that signed nothing: refused before anything is written.
    let (code, _, err) = airlock(&[
        "copy",
        "--key",
        OTHER_PUB,
        &oci(&dir, None),
        &format!("docker://{}/neg/{{repo}}", dst.host),
    ]);
    assert_ne!(code, 0, "copy with a key that signed nothing succeeded");
    assert!(!err.contains("panicked"), "{err}");
    let leaked: Vec<_> = dst
        .catalog()
        .await
        .into_iter()
        .filter(|r| r.starts_with("neg/"))
        .collect();
    assert!(leaked.is_empty(), "refused copy wrote {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_stdout_piped_into_import() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let all = refs(&src, &images);

    let mut export_args = vec!["export", "-o", "-"];
    export_args.extend(all.iter().map(String::as_str));
    pipe(&export_args, &["import", "-", "--to", &dst.host]);
    let s = client(&src, test_config()).await;
    let d = client(&dst, test_config()).await;
    for img in &images {
        assert_same_image(&s, &d, img, &img.repository, &img.tag).await;
    }

    // stdout is exactly the bundle: the same bytes as the same export to a
    // file, and it verifies; the report (here --json) goes to stderr.
    let piped = work.path().join("stdout.tar.zst");
    let out = airlock_cmd()
        .env("SOURCE_DATE_EPOCH", "1767225600")
        .args(["export", "--json", "-o", "-"])
        .args(&all)
        .stdout(std::fs::File::create(&piped).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let file = work.path().join("file.tar.zst");
    let mut cmd = airlock_cmd();
    cmd.env("SOURCE_DATE_EPOCH", "1767225600")
        .args(["export", "-q", "-o", file.to_str().unwrap()])
        .args(&all);
    run_ok(&mut cmd);
    let (a, b) = (
        std::fs::read(&piped).unwrap(),
        std::fs::read(&file).unwrap(),
    );
    assert!(
        a == b,
        "export -o - wrote {} bytes on stdout, export -o FILE {} bytes: they differ",
        a.len(),
        b.len()
    );
    let (code, _, err) = airlock(&["verify", piped.to_str().unwrap()]);
    assert_eq!(code, 0, "verify of the bundle from stdout: {err}");
    let shown: serde_json::Value =
        serde_json::from_str(&airlock_ok(&["inspect", "--json", file.to_str().unwrap()])).unwrap();
    let digest = shown["bundleDigest"].as_str().unwrap();
    assert!(
        stderr.contains(digest),
        "the bundle digest {digest} is reported on stderr: {stderr}"
    );

    // copy with the other endpoints: registry -> stdout | stdin -> layout,
    // then layout -> bundle file -> registry.
    let agent = image(&images, "vendor/agent", "2.0.0");
    let dir = work.path().join("layout");
    pipe(
        &["copy", &docker(&src.host, agent), "-"],
        &["copy", "-", &oci(&dir, None)],
    );
    assert_eq!(
        layout_ref(&dir, "vendor/agent:2.0.0"),
        Some(agent.digest.to_string())
    );
    assert_valid_layout(&dir);
    let bundle = work.path().join("from-layout.tar.zst");
    airlock_ok(&["copy", &oci(&dir, None), bundle.to_str().unwrap()]);
    airlock_ok(&["verify", bundle.to_str().unwrap(), "--key", COSIGN_TEST_PUB]);
    airlock_ok(&[
        "copy",
        bundle.to_str().unwrap(),
        &format!("docker://{}/from-bundle/{{repo}}", dst.host),
    ]);
    assert_same_image(&s, &d, agent, "from-bundle/vendor/agent", "2.0.0").await;

    // A bundle read once from a pipe into a new bundle file (one pass into an
    // ordered sink: spooled blobs must outlive the reader): same members.
    let repacked = work.path().join("repacked.tar.zst");
    let out = airlock_cmd()
        .args(["copy", "-", repacked.to_str().unwrap()])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    airlock_ok(&["verify", repacked.to_str().unwrap()]);
    let members = |p: &std::path::Path| -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&airlock_ok(&["inspect", "--json", p.to_str().unwrap()])).unwrap();
        v["index"]["members"].as_array().unwrap().clone()
    };
    assert_eq!(
        members(&file),
        members(&repacked),
        "a repacked bundle holds the same members"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_conflict_is_refused_unless_asked() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let d = client(&dst, test_config()).await;
    let old = image(&images, "vendor/operator", "1.0.0");
    let new = image(&images, "vendor/operator", "1.1.0");
    let to = format!("docker://{}/mirror/op:1.0", dst.host);
    airlock_ok(&["copy", &docker(&src.host, old), &to]);
    let tags_before = d.list_tags("mirror/op").await.unwrap();

    let (code, _, err) = airlock(&["copy", &docker(&src.host, new), &to]);
    assert_ne!(code, 0, "a different image was copied over an existing tag");
    assert!(err.contains("--on-existing-tag"), "{err}");
    assert!(
        err.contains(&old.digest.to_string()) && err.contains(&new.digest.to_string()),
        "the refusal names both digests: {err}"
    );
    assert_eq!(
        d.head_manifest("mirror/op", "1.0").await.unwrap(),
        Some(old.digest.clone())
    );
    assert_eq!(
        d.head_manifest("mirror/op", &new.digest.to_string())
            .await
            .unwrap(),
        None,
        "nothing pushed on refusal"
    );
    assert_eq!(d.list_tags("mirror/op").await.unwrap(), tags_before);

    airlock_ok(&[
        "copy",
        "--on-existing-tag",
        "skip",
        &docker(&src.host, new),
        &to,
    ]);
    assert_eq!(
        d.head_manifest("mirror/op", "1.0").await.unwrap(),
        Some(old.digest.clone()),
        "skip leaves the tag"
    );
    airlock_ok(&[
        "copy",
        "--on-existing-tag",
        "overwrite",
        &docker(&src.host, new),
        &to,
    ]);
    assert_eq!(
        d.head_manifest("mirror/op", "1.0").await.unwrap(),
        Some(new.digest.clone()),
        "overwrite moves the tag"
    );

    // The same for a ref name in a layout directory.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");
    let to = oci(&dir, Some("op:1.0"));
    airlock_ok(&["copy", &docker(&src.host, old), &to]);
    assert_eq!(layout_ref(&dir, "op:1.0"), Some(old.digest.to_string()));
    let index_before = std::fs::read(dir.join("index.json")).unwrap();
    let blobs_before: Vec<_> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (code, _, err) = airlock(&["copy", &docker(&src.host, new), &to]);
    assert_ne!(
        code, 0,
        "a different image was copied over a layout ref name"
    );
    assert!(err.contains("--on-existing-tag"), "{err}");
    assert!(
        err.contains(&old.digest.to_string()) && err.contains(&new.digest.to_string()),
        "the refusal names both digests: {err}"
    );
    assert_eq!(
        std::fs::read(dir.join("index.json")).unwrap(),
        index_before,
        "index.json unchanged"
    );
    let blobs_after: Vec<_> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(blobs_after, blobs_before, "no blob written on refusal");
    airlock_ok(&[
        "copy",
        "--on-existing-tag",
        "overwrite",
        &docker(&src.host, new),
        &to,
    ]);
    assert_eq!(layout_ref(&dir, "op:1.0"), Some(new.digest.to_string()));
    assert_valid_layout(&dir);
}

/// `verify docker://…` audits images where they now live: every blob read
/// and hashed, signatures checked with the site's key; a signature swapped
/// at the registry is refused (exit 4), a missing image is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_at_the_registry_checks_what_is_there() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let op10 = image(&images, "vendor/operator", "1.0.0");
    let op11 = image(&images, "vendor/operator", "1.1.0");
    for img in [op10, op11] {
        airlock_ok(&[
            "copy",
            &docker(&src.host, img),
            &format!("docker://{}/v/op", dst.host),
        ]);
    }
    let at = |tag: &str| format!("docker://{}/v/op:{tag}", dst.host);
    let out = airlock_ok(&[
        "verify",
        "--json",
        &at("1.1.0"),
        &at("1.0.0"),
        "--key",
        COSIGN_TEST_PUB,
    ]);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["verified"], true, "{rep}");
    assert_eq!(rep["images"].as_array().unwrap().len(), 2, "{rep}");
    assert!(
        rep["policy"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["admitted"] == true),
        "{rep}"
    );

    // 1.1.0's signature tag now holds 1.0.0's signature (its blobs are in the
    // same repository, so the registry takes it): 1.1.0 is no longer signed.
    let d = client(&dst, test_config()).await;
    let sig10 = airlock::signatures::cosign_tag(&op10.digest, "sig");
    let sig11 = airlock::signatures::cosign_tag(&op11.digest, "sig");
    let swapped = d.get_manifest("v/op", &sig10).await.unwrap();
    d.put_manifest("v/op", &sig11, &swapped.bytes, &swapped.media_type)
        .await
        .unwrap();
    let (code, out, err) = airlock(&["verify", "--json", &at("1.1.0"), "--key", COSIGN_TEST_PUB]);
    assert_eq!(code, 4, "{out}{err}");
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["verified"], false, "{rep}");
    assert_eq!(rep["policy"][0]["admitted"], false, "{rep}");
    // The other image is untouched and still verifies.
    airlock_ok(&["verify", &at("1.0.0"), "--key", COSIGN_TEST_PUB]);
    // A tag that is not there: an error naming it, not a pass.
    let (code, _, err) = airlock(&["verify", &at("9.9.9"), "--key", COSIGN_TEST_PUB]);
    assert_ne!(code, 0);
    assert!(err.contains("9.9.9"), "{err}");
}
