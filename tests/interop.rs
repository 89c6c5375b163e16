//! skopeo reads what airlock writes (the extracted bundle is an OCI layout)
//! and writes what airlock reads; bundles are reproducible.

mod common;

use common::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_from_the_extracted_layout() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("b.tar.zst");
    cli_export(&src, &images, &bundle);

    // The README's promise: zstd -dc | tar -x gives an OCI layout.
    let dir = work.path().join("layout");
    std::fs::create_dir(&dir).unwrap();
    sh(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -C '{}' -x",
        bundle.display(),
        dir.display()
    )));
    assert!(dir.join("oci-layout").exists() && dir.join("index.json").exists());

    let d = client(&dst, test_config()).await;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    for img in &images {
        let listed = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["digest"] == img.digest.to_string());
        assert!(listed, "{} missing from index.json", img.repository);
        if img.media_type == airlock::oci::DOCKER_LIST {
            // skopeo 1.9 looks up only OCI media types in a layout's index.json
            // (and refuses to write a Docker list into one with --preserve-digests),
            // so this image is reachable by digest, not through skopeo's oci: ref.
            let oci = format!("oci:{}:{}:{}", dir.display(), img.repository, img.tag);
            let out = Command::new("skopeo")
                .args(["inspect", "--raw", &oci])
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "skopeo learnt Docker lists in layouts: update README"
            );
            continue;
        }
        let oci = format!("oci:{}:{}:{}", dir.display(), img.repository, img.tag);
        let raw = sh(Command::new("skopeo").args(["inspect", "--raw", &oci]));
        assert_eq!(
            airlock::digest::Digest::of(raw.as_bytes()),
            img.digest,
            "{oci}"
        );
        skopeo_copy(
            &oci,
            &format!("docker://{}/{}:{}", dst.host, img.repository, img.tag),
        );
        assert_eq!(
            d.head_manifest(&img.repository, &img.tag).await.unwrap(),
            Some(img.digest.clone())
        );
        // Signatures are layout refs too.
        let (sig_tag, sig_digest) = &img.artifact_tags[0];
        let sig_ref = format!("oci:{}:{}:{}", dir.display(), img.repository, sig_tag);
        skopeo_copy(
            &sig_ref,
            &format!("docker://{}/{}:{}", dst.host, img.repository, sig_tag),
        );
        assert_eq!(
            d.head_manifest(&img.repository, sig_tag)
                .await
                .unwrap()
                .as_ref(),
            Some(sig_digest)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airlock_exports_what_skopeo_pushed() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    // skopeo copies the operator (and its signature) into a second registry.
    let mid = TestRegistry::start();
    let img = &images[1];
    for tag in
        std::iter::once(img.tag.clone()).chain(img.artifact_tags.iter().map(|(t, _)| t.clone()))
    {
        skopeo_copy(
            &format!("docker://{}/{}:{tag}", src.host, img.repository),
            &format!("docker://{}/{}:{tag}", mid.host, img.repository),
        );
    }
    let bundle = work.path().join("b.tar.zst");
    let (code, out, err) = airlock(&[
        "export",
        "--json",
        "-o",
        bundle.to_str().unwrap(),
        &format!("{}/{}:{}", mid.host, img.repository, img.tag),
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["images"][0]["digest"], img.digest.to_string());
    assert_eq!(
        report["images"][0]["artifacts"].as_u64().unwrap() as usize,
        img.artifact_tags.len()
    );
    let dst = TestRegistry::start();
    let (code, _, err) = airlock(&["import", bundle.to_str().unwrap(), "--to", &dst.host]);
    assert_eq!(code, 0, "{err}");
    let raw = sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/{}:{}", dst.host, img.repository, img.tag),
    ]));
    assert_eq!(airlock::digest::Digest::of(raw.as_bytes()), img.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_input_gives_the_same_bundle_bytes() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let all = refs(&src, &images);
    let mut digests = vec![];
    for (name, threads) in [("a.tar.zst", "1"), ("b.tar.zst", "3")] {
        let out = work.path().join(name);
        let mut cmd = airlock_cmd();
        cmd.env("SOURCE_DATE_EPOCH", "1767225600")
            .args([
                "export",
                "-q",
                "--threads",
                threads,
                "-o",
                out.to_str().unwrap(),
            ])
            .args(&all);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        digests.push(airlock::digest::Digest::of(&std::fs::read(&out).unwrap()));
    }
    assert_eq!(
        digests[0], digests[1],
        "two exports of the same input differ"
    );
    let (_, out, _) = airlock(&[
        "inspect",
        "--json",
        work.path().join("a.tar.zst").to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["index"]["created"], "2026-01-01T00:00:00Z");
}
