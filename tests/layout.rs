//! OCI image layout directories as copy endpoints: skopeo writes a layout
//! airlock reads, airlock writes layouts skopeo reads, `import --to oci:DIR`
//! writes a layout, and hostile layouts are refused with nothing written.

mod common;

use airlock::digest::Digest;
use airlock::oci::{DOCKER_LIST, OCI_INDEX};
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn skopeo_raw_digest(reference: &str) -> Digest {
    Digest::of(sh(Command::new("skopeo").args(["inspect", "--raw", reference])).as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_layout_to_registry_and_to_a_bundle() {
    let (src, images) = seeded_source().await;
    // vendor/operator:1.0.0: an OCI index, its index and platforms cosign-signed.
    let img = &images[0];
    assert_eq!(img.media_type, OCI_INDEX);
    assert!(img.artifact_tags.len() >= 3);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");

    // skopeo writes the layout: the image as vendor/app:1.0, and its cosign
    // signatures under the same repository, as airlock's own layouts name them.
    skopeo_copy(
        &format!("docker://{}/{}:{}", src.host, img.repository, img.tag),
        &oci(&dir, Some("vendor/app:1.0")),
    );
    for (tag, _) in &img.artifact_tags {
        skopeo_copy(
            &format!("docker://{}/{}:{tag}", src.host, img.repository),
            &oci(&dir, Some(&format!("vendor/app:{tag}"))),
        );
    }
    assert_eq!(
        layout_ref(&dir, "vendor/app:1.0"),
        Some(img.digest.to_string()),
        "skopeo kept the digest"
    );

    // airlock reads it into a registry.
    let dst = TestRegistry::start();
    airlock_ok(&[
        "copy",
        &oci(&dir, Some("vendor/app:1.0")),
        &format!("docker://{}/vendor/app:1.0", dst.host),
    ]);
    let s = client(&src, test_config()).await;
    let d = client(&dst, test_config()).await;
    assert_same_image(&s, &d, img, "vendor/app", "1.0").await;
    assert_eq!(dst.catalog().await, vec!["vendor/app".to_string()]);

    // And into a bundle, which verifies (with the vendor key too).
    let bundle = work.path().join("b.tar.zst");
    airlock_ok(&[
        "export",
        "-o",
        bundle.to_str().unwrap(),
        &oci(&dir, Some("vendor/app:1.0")),
    ]);
    airlock_ok(&["verify", bundle.to_str().unwrap()]);
    airlock_ok(&["verify", bundle.to_str().unwrap(), "--key", COSIGN_TEST_PUB]);
    let shown: serde_json::Value = serde_json::from_str(&airlock_ok(&[
        "inspect",
        "--json",
        bundle.to_str().unwrap(),
    ]))
    .unwrap();
    let bundled = shown["index"]["images"].as_array().unwrap();
    assert_eq!(bundled.len(), 1, "{shown}");
    assert_eq!(bundled[0]["digest"], img.digest.to_string());

    // A layout and a registry reference in one export.
    let agent = images
        .iter()
        .find(|i| i.repository == "vendor/agent")
        .unwrap();
    let mixed = work.path().join("mixed.tar.zst");
    airlock_ok(&[
        "export",
        "-o",
        mixed.to_str().unwrap(),
        &oci(&dir, Some("vendor/app:1.0")),
        &format!("{}/vendor/agent:2.0.0", src.host),
    ]);
    airlock_ok(&["verify", mixed.to_str().unwrap(), "--key", COSIGN_TEST_PUB]);
    let shown: serde_json::Value =
        serde_json::from_str(&airlock_ok(&["inspect", "--json", mixed.to_str().unwrap()])).unwrap();
    let mut bundled: Vec<String> = shown["index"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_string())
        .collect();
    bundled.sort();
    let mut want = vec![img.digest.to_string(), agent.digest.to_string()];
    want.sort();
    assert_eq!(bundled, want, "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airlock_layout_is_read_by_skopeo_and_by_airlock() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");
    for img in &images {
        airlock_ok(&[
            "copy",
            &format!("docker://{}/{}:{}", src.host, img.repository, img.tag),
            &oci(&dir, None),
        ]);
    }
    assert_valid_layout(&dir);
    let entries = layout_entries(&dir);
    for img in &images {
        let name = format!("{}:{}", img.repository, img.tag);
        let hit = entries
            .iter()
            .find(|(n, _, _)| n.as_deref() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not named in index.json: {entries:?}"));
        assert_eq!(hit.1, img.digest.to_string(), "{name}");
        assert_eq!(hit.2, img.media_type, "{name} media type in index.json");
        let sigs: Vec<_> = img
            .artifact_tags
            .iter()
            .filter(|(t, _)| t.ends_with(".sig"))
            .collect();
        assert!(!sigs.is_empty());
        for (tag, digest) in sigs {
            assert_eq!(
                layout_ref(&dir, &format!("{}:{tag}", img.repository)),
                Some(digest.to_string()),
                "signature {}:{tag} in index.json",
                img.repository
            );
        }
    }

    // skopeo reads it (OCI types; skopeo 1.9 does not select Docker lists
    // in a layout, see tests/interop.rs).
    let dst = TestRegistry::start();
    let d = client(&dst, test_config()).await;
    let mut through_skopeo = 0;
    for img in images.iter().filter(|i| i.media_type != DOCKER_LIST) {
        let r = oci(&dir, Some(&format!("{}:{}", img.repository, img.tag)));
        assert_eq!(skopeo_raw_digest(&r), img.digest, "{r}");
        skopeo_copy(
            &r,
            &format!("docker://{}/{}:{}", dst.host, img.repository, img.tag),
        );
        assert_eq!(
            d.head_manifest(&img.repository, &img.tag).await.unwrap(),
            Some(img.digest.clone()),
            "skopeo copy of {r}"
        );
        // The signature, by its ref name, too.
        let (sig_tag, sig_digest) = &img.artifact_tags[0];
        assert!(sig_tag.ends_with(".sig"));
        skopeo_copy(
            &oci(&dir, Some(&format!("{}:{sig_tag}", img.repository))),
            &format!("docker://{}/{}:{sig_tag}", dst.host, img.repository),
        );
        assert_eq!(
            d.head_manifest(&img.repository, sig_tag)
                .await
                .unwrap()
                .as_ref(),
            Some(sig_digest)
        );
        through_skopeo += 1;
    }
    assert_eq!(through_skopeo, 3);

    // airlock reads the whole layout (every named image) into a registry.
    let dst2 = TestRegistry::start();
    let out = airlock_ok(&[
        "copy",
        "--json",
        &oci(&dir, None),
        &format!("docker://{}", dst2.host),
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut copied: Vec<String> = report["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in the --json report: {out}"))
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_string())
        .collect();
    copied.sort();
    let mut want: Vec<String> = images.iter().map(|i| i.digest.to_string()).collect();
    want.sort();
    assert_eq!(
        copied, want,
        "every named image, and the sha256-… artifact tags not as images of their own"
    );
    let d2 = client(&dst2, test_config()).await;
    for img in &images {
        assert_eq!(
            d2.head_manifest(&img.repository, &img.tag).await.unwrap(),
            Some(img.digest.clone()),
            "{}:{} at the second destination",
            img.repository,
            img.tag
        );
        for (tag, digest) in img
            .artifact_tags
            .iter()
            .filter(|(t, _)| t.ends_with(".sig"))
        {
            assert_eq!(
                d2.head_manifest(&img.repository, tag)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(digest),
                "{}:{tag} at the second destination",
                img.repository
            );
        }
    }
    let mut repos = dst2.catalog().await;
    repos.sort();
    assert_eq!(
        repos,
        vec!["vendor/agent", "vendor/gateway", "vendor/operator"],
        "the sha256-… artifact tags are not images of their own"
    );
}

/// `DIR/blobs/sha256/*` file names.
fn blob_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn named(dir: &Path) -> BTreeSet<(String, String)> {
    layout_entries(dir)
        .into_iter()
        .filter_map(|(n, d, _)| n.map(|n| (n, d)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_into_a_layout_directory() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("b.tar.zst");
    cli_export(&src, &images, &bundle);
    // The bundle's own layout, for comparison.
    let extracted = work.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    sh(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -C '{}' -x",
        bundle.display(),
        extracted.display()
    )));

    let dir = work.path().join("imported");
    airlock_ok(&["import", bundle.to_str().unwrap(), "--to", &oci(&dir, None)]);
    assert_valid_layout(&dir);
    assert_eq!(
        named(&dir),
        named(&extracted),
        "ref names and digests as in the bundle's index.json"
    );
    assert_eq!(
        blob_names(&dir),
        blob_names(&extracted),
        "every blob of the bundle, and nothing else"
    );
    for img in &images {
        assert_eq!(
            layout_ref(&dir, &format!("{}:{}", img.repository, img.tag)),
            Some(img.digest.to_string())
        );
        for (tag, digest) in img
            .artifact_tags
            .iter()
            .filter(|(t, _)| t.ends_with(".sig"))
        {
            assert_eq!(
                layout_ref(&dir, &format!("{}:{tag}", img.repository)),
                Some(digest.to_string()),
                "{}:{tag}",
                img.repository
            );
        }
    }
    let agent = images
        .iter()
        .find(|i| i.repository == "vendor/agent")
        .unwrap();
    assert_eq!(
        skopeo_raw_digest(&oci(&dir, Some("vendor/agent:2.0.0"))),
        agent.digest
    );
    // The referrers fallback index of the SBOM (tag `sha256-<hex>`) came along too.
    let (_, sbom_index) = agent
        .artifact_tags
        .iter()
        .find(|(t, _)| *t == agent.digest.tag_stem())
        .unwrap();
    assert!(
        layout_blob_path(&dir, sbom_index).exists(),
        "referrers index of the agent"
    );

    // A second import changes nothing and succeeds.
    let before = layout_entries(&dir);
    let (code, _, err) = airlock(&["import", bundle.to_str().unwrap(), "--to", &oci(&dir, None)]);
    assert_eq!(code, 0, "re-import into the same layout: {err}");
    let after = layout_entries(&dir);
    assert_eq!(
        after.len(),
        before.len(),
        "no duplicate entries in index.json"
    );
    assert_eq!(
        after.iter().collect::<BTreeSet<_>>(),
        before.iter().collect::<BTreeSet<_>>()
    );
    assert_valid_layout(&dir);
}

fn cp_r(from: &Path, to: &Path) {
    sh(Command::new("cp").arg("-a").arg(from).arg(to));
}

fn json_blob(dir: &Path, digest: &str) -> serde_json::Value {
    let d: Digest = digest.parse().unwrap();
    serde_json::from_slice(&std::fs::read(layout_blob_path(dir, &d)).unwrap()).unwrap()
}

/// What went wrong in the hostile cases: every case runs, then all are shown.
type Problems = Vec<String>;

/// Copying `from` to the registry must fail, name `expect`, and push nothing.
async fn refused_to_registry(
    p: &mut Problems,
    case: &str,
    from: &str,
    expect: &str,
    dst: &TestRegistry,
) {
    let prefix = format!("hostile/{case}/");
    let (code, out, err) = airlock(&[
        "copy",
        from,
        &format!("docker://{}/{prefix}{{repo}}", dst.host),
    ]);
    if code == 0 {
        p.push(format!(
            "{case}: copy {from} to a registry succeeded: {out}{err}"
        ));
    }
    if err.contains("panicked") {
        p.push(format!("{case}: copy {from} panicked: {err}"));
    }
    if code != 0 && !err.contains(expect) {
        p.push(format!(
            "{case}: expected {expect:?} in the error of copy {from}: {err}"
        ));
    }
    let written: Vec<_> = dst
        .catalog()
        .await
        .into_iter()
        .filter(|r| r.starts_with(&prefix))
        .collect();
    if !written.is_empty() {
        p.push(format!(
            "{case}: copy {from} (exit {code}) wrote to the registry: {written:?}"
        ));
    }
}

/// Every way of reading `bad` (by `reference`, and whole) must fail, name
/// `expect`, and write nothing: no repository at the registry, no
/// destination `index.json`, no bundle.
async fn refused(
    p: &mut Problems,
    case: &str,
    bad: &Path,
    reference: &str,
    expect: &str,
    dst: &TestRegistry,
    work: &Path,
) {
    let sources = [oci(bad, Some(reference)), oci(bad, None)];
    for (n, from) in sources.iter().enumerate() {
        refused_to_registry(p, &format!("{case}{n}"), from, expect, dst).await;

        let out_dir = work.join(format!("out-{case}-{n}"));
        let (code, _, err) = airlock(&["copy", from, &oci(&out_dir, None)]);
        if code == 0 {
            p.push(format!("{case}: copy {from} to a layout succeeded"));
        } else if !err.contains(expect) {
            p.push(format!(
                "{case}: expected {expect:?} in the error of copy {from} to a layout: {err}"
            ));
        }
        if out_dir.exists() {
            p.push(format!(
                "{case}: copy {from} was refused but created {} (index.json there: {})",
                out_dir.display(),
                out_dir.join("index.json").exists()
            ));
        }

        let bundle = work.join(format!("out-{case}-{n}.tar.zst"));
        let (code, _, err) = airlock(&["export", "-o", bundle.to_str().unwrap(), from]);
        if code == 0 {
            p.push(format!("{case}: export of {from} succeeded"));
        } else if !err.contains(expect) {
            p.push(format!(
                "{case}: expected {expect:?} in the error of export {from}: {err}"
            ));
        }
        let bundle_name = format!("out-{case}-{n}.tar.zst");
        let left: Vec<_> = std::fs::read_dir(work)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.contains(&bundle_name))
            .collect();
        if !left.is_empty() {
            p.push(format!("{case}: export of {from} left {left:?}"));
        }
    }
}

fn flip_a_byte(file: &Path) {
    let mut data = std::fs::read(file).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(file, &data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layouts_are_refused_with_nothing_written() {
    let (src, images) = seeded_source().await;
    let operator = &images[0];
    let agent = images
        .iter()
        .find(|i| i.repository == "vendor/agent")
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good");
    for img in [operator, agent] {
        airlock_ok(&[
            "copy",
            &format!("docker://{}/{}:{}", src.host, img.repository, img.tag),
            &oci(&good, None),
        ]);
    }
    assert_valid_layout(&good);
    const OP: &str = "vendor/operator:1.0.0";
    let index_digest = layout_ref(&good, OP).unwrap();
    assert_eq!(index_digest, operator.digest.to_string());
    // Every config and layer of the operator's platform manifests.
    let index = json_blob(&good, &index_digest);
    let mut blobs: Vec<Digest> = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        let manifest = json_blob(&good, m["digest"].as_str().unwrap());
        for desc in std::iter::once(&manifest["config"])
            .chain(manifest["layers"].as_array().unwrap().iter())
        {
            blobs.push(desc["digest"].as_str().unwrap().parse().unwrap());
        }
    }
    assert_eq!(blobs.len(), 8);
    let manifest = json_blob(&good, index["manifests"][0]["digest"].as_str().unwrap());
    let layer: Digest = manifest["layers"][2]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let layer_rel = PathBuf::from(layer.layout_path());

    // The good layout goes through (so the refusals below are about the damage).
    let check = TestRegistry::start();
    airlock_ok(&[
        "copy",
        &oci(&good, None),
        &format!("docker://{}/ok/{{repo}}", check.host),
    ]);

    let dst = TestRegistry::start();
    let mut p = Problems::new();

    // (a) A layer blob replaced by a symlink to a file outside the directory,
    // with the same name and the very same bytes.
    let bad = work.path().join("symlink");
    cp_r(&good, &bad);
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_file = outside.join(layer.hex());
    std::fs::copy(good.join(&layer_rel), &outside_file).unwrap();
    std::fs::remove_file(bad.join(&layer_rel)).unwrap();
    std::os::unix::fs::symlink(&outside_file, bad.join(&layer_rel)).unwrap();
    refused(&mut p, "symlink", &bad, OP, &layer.hex(), &dst, work.path()).await;

    // (b) A byte of a layer flipped: its content no longer matches its name.
    let bad = work.path().join("flipped");
    cp_r(&good, &bad);
    flip_a_byte(&bad.join(&layer_rel));
    refused(&mut p, "flipped", &bad, OP, &layer.hex(), &dst, work.path()).await;
    // The same for every config and layer: whichever blob the copy reaches
    // first or last, nothing reaches the registry.
    for (i, blob) in blobs.iter().enumerate() {
        let bad = work.path().join(format!("flipped-{i}"));
        cp_r(&good, &bad);
        flip_a_byte(&layout_blob_path(&bad, blob));
        let case = format!("flipped-blob-{i}");
        refused_to_registry(&mut p, &case, &oci(&bad, Some(OP)), &blob.hex(), &dst).await;
    }

    // (c) index.json names a manifest that has no blob file.
    let bad = work.path().join("missing");
    cp_r(&good, &bad);
    let index_d: Digest = index_digest.parse().unwrap();
    std::fs::remove_file(layout_blob_path(&bad, &index_d)).unwrap();
    refused(
        &mut p,
        "missing",
        &bad,
        OP,
        &index_d.hex(),
        &dst,
        work.path(),
    )
    .await;

    // (d) The whole blobs/sha256 directory is a symlink to an identical copy
    // outside: still a symlink out of the layout.
    let bad = work.path().join("dirlink");
    cp_r(&good, &bad);
    let outside_blobs = work.path().join("outside-blobs");
    cp_r(&good.join("blobs/sha256"), &outside_blobs);
    std::fs::remove_dir_all(bad.join("blobs/sha256")).unwrap();
    std::os::unix::fs::symlink(&outside_blobs, bad.join("blobs/sha256")).unwrap();
    refused(
        &mut p,
        "dirlink",
        &bad,
        OP,
        "blobs/sha256",
        &dst,
        work.path(),
    )
    .await;

    // (e) The agent's SBOM referrer (listed in index.json without a ref
    // name) and (f) its referrers fallback index (ref name
    // `vendor/agent:sha256-<hex>`) no longer match their names.
    const AGENT: &str = "vendor/agent:2.0.0";
    let (_, fallback) = agent
        .artifact_tags
        .iter()
        .find(|(t, _)| *t == agent.digest.tag_stem())
        .unwrap();
    let fallback_index = json_blob(&good, &fallback.to_string());
    let referrer: Digest = fallback_index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        layout_entries(&good)
            .iter()
            .any(|(n, d, _)| n.is_none() && *d == referrer.to_string()),
        "the referrer is listed in index.json"
    );
    for (case, digest) in [("referrer", &referrer), ("fallback", fallback)] {
        let bad = work.path().join(case);
        cp_r(&good, &bad);
        flip_a_byte(&layout_blob_path(&bad, digest));
        refused(&mut p, case, &bad, AGENT, &digest.hex(), &dst, work.path()).await;
    }

    // (g) The same referrer, damaged, in a layout that lists it only in
    // index.json (no fallback index: as other tools write referrers).
    let only_listed = work.path().join("only-listed");
    cp_r(&good, &only_listed);
    let index_path = only_listed.join("index.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let fallback_name = format!("vendor/agent:{}", agent.digest.tag_stem());
    v["manifests"].as_array_mut().unwrap().retain(|m| {
        m["annotations"]["org.opencontainers.image.ref.name"] != fallback_name.as_str()
    });
    std::fs::write(&index_path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(layout_ref(&only_listed, &fallback_name), None);
    // Undamaged, it goes through, and a registry without the referrers API
    // gets the tag-schema fallback index for it (as oras writes it).
    airlock_ok(&[
        "copy",
        &oci(&only_listed, Some(AGENT)),
        &format!("docker://{}/only-listed/{{repo}}", check.host),
    ]);
    let c = client(&check, test_config()).await;
    let fallback_at_dst = c
        .get_manifest("only-listed/vendor/agent", &agent.digest.tag_stem())
        .await
        .expect("the referrers fallback tag is written at a registry without the API");
    let listed: serde_json::Value = serde_json::from_slice(&fallback_at_dst.bytes).unwrap();
    assert!(
        listed["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["digest"] == referrer.to_string().as_str()),
        "the fallback index lists the referrer: {listed}"
    );
    flip_a_byte(&layout_blob_path(&only_listed, &referrer));
    refused(
        &mut p,
        "only-listed",
        &only_listed,
        AGENT,
        &referrer.hex(),
        &dst,
        work.path(),
    )
    .await;

    // (h) index.json itself a symlink to an identical file outside.
    let bad = work.path().join("index-link");
    cp_r(&good, &bad);
    let outside_index = work.path().join("outside-index.json");
    std::fs::copy(good.join("index.json"), &outside_index).unwrap();
    std::fs::remove_file(bad.join("index.json")).unwrap();
    std::os::unix::fs::symlink(&outside_index, bad.join("index.json")).unwrap();
    refused(
        &mut p,
        "index-link",
        &bad,
        OP,
        "index.json",
        &dst,
        work.path(),
    )
    .await;

    assert!(
        p.is_empty(),
        "hostile layouts, {} problems:\n{}",
        p.len(),
        p.join("\n")
    );
}
