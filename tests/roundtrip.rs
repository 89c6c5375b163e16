//! Export → bundle → import against real registries: every digest kept.

mod common;

use airlock::export::{self, ExportOptions};
use airlock::import::{self, ImportOptions, OnExistingTag, Target};
use airlock::registry::Registries;
use airlock::selection;
use common::*;

fn import_opts(host: &str, template: &str) -> ImportOptions {
    ImportOptions {
        target: Target::parse(&format!("{host}/{template}")).unwrap(),
        on_existing_tag: OnExistingTag::Refuse,
        on_existing_artifact: Default::default(),
        jobs: 4,
        policy: None,
        bundle_key: None,
        verify_first: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_every_digest_and_signature() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let sel_file = work.path().join("images.yaml");
    // One image per repository; the operator gets the vendor-guide target name.
    std::fs::write(
        &sel_file,
        format!(
            "images:\n  - ref: {0}/vendor/operator\n    tags: [\"1.0.0\", \"1.1.0\"]\n    target: dynatrace-operator\n  - ref: {0}/vendor/agent:2.0.0\n  - ref: {0}/vendor/gateway\n    tagPattern: \"3\\\\..*\"\n",
            src.host
        ),
    )
    .unwrap();
    let sel = selection::load_file(&sel_file).unwrap();
    let registries = Registries::new(test_config());
    let out = work.path().join("bundle.tar.zst");
    let report = export::export(&registries, &sel, &ExportOptions::new(&out))
        .await
        .unwrap();
    assert_eq!(report.images.len(), 4);
    assert!(out.exists());
    let side = std::fs::read_to_string(work.path().join("bundle.tar.zst.sha256")).unwrap();
    assert_eq!(side, format!("{}  bundle.tar.zst\n", report.file_sha256));

    let (code, shown, err) = airlock(&["inspect", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains("predicate https://cosign.sigstore.dev/attestation/v1"),
        "{shown}"
    );
    assert!(shown.contains("type application/spdx+json"), "{shown}");
    let v = airlock::verify::verify(&out, None).unwrap();
    assert_eq!(v.bundle_digest, report.bundle_digest);
    assert_eq!(v.sidecar_ok, Some(true));
    assert!(v.unreferenced.is_empty(), "{:?}", v.unreferenced);

    let rep = import::import_file(&registries, &out, &import_opts(&dst.host, "mirror/{name}"))
        .await
        .unwrap();
    assert_eq!(rep.images.len(), 4);
    assert!(
        rep.blobs_mounted > 0,
        "shared base layers should be mounted across repositories"
    );

    let s = client(&src, test_config()).await;
    let d = client(&dst, test_config()).await;
    for img in &images {
        let target = if img.repository.ends_with("operator") {
            // A target stands for the template's variable part: inside mirror/.
            "mirror/dynatrace-operator".to_string()
        } else {
            format!("mirror/{}", img.repository.rsplit('/').next().unwrap())
        };
        let a = s.get_manifest(&img.repository, &img.tag).await.unwrap();
        let b = d.get_manifest(&target, &img.tag).await.unwrap();
        assert_eq!(a.bytes, b.bytes, "{target}:{} raw bytes", img.tag);
        assert_eq!(b.digest, img.digest);
        for (_, pd) in &img.platforms {
            let pa = s
                .get_manifest(&img.repository, &pd.to_string())
                .await
                .unwrap();
            let pb = d.get_manifest(&target, &pd.to_string()).await.unwrap();
            assert_eq!(pa.bytes, pb.bytes);
        }
        for (tag, digest) in &img.artifact_tags {
            let got = d.get_manifest(&target, tag).await.unwrap();
            assert_eq!(&got.digest, digest, "{target}:{tag}");
        }
    }
    // The signature tag of each index is there under the cosign name.
    let sig = format!("{}.sig", images[0].digest.tag_stem());
    assert!(d
        .head_manifest("mirror/dynatrace-operator", &sig)
        .await
        .unwrap()
        .is_some());

    // A second import has nothing to send.
    let again = import::import_file(&registries, &out, &import_opts(&dst.host, "mirror/{name}"))
        .await
        .unwrap();
    assert_eq!(again.blobs_uploaded, 0);
    assert_eq!(again.bytes_sent, 0);
    assert_eq!(again.manifests_pushed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_filter_keeps_vendor_index_and_its_signature() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let agent = images
        .iter()
        .find(|i| i.repository == "vendor/agent")
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.tar.zst");
    let sel = selection::from_refs(
        &[format!("{}/vendor/agent:2.0.0", src.host)],
        &["linux/amd64".into(), "linux/s390x".into()],
    )
    .unwrap();
    let registries = Registries::new(test_config());
    export::export(&registries, &sel, &ExportOptions::new(&out))
        .await
        .unwrap();

    let (index, _) = airlock::inspect::read_index(&out).unwrap();
    let e = &index.images[0];
    assert_eq!(
        e.source_digest, agent.digest,
        "the vendor digest is recorded"
    );
    assert_ne!(e.digest, agent.digest, "a filtered index has a new digest");
    let plats: Vec<_> = e
        .platforms
        .iter()
        .map(|p| p.platform.clone().unwrap())
        .collect();
    assert_eq!(plats, vec!["linux/amd64", "linux/s390x"]);
    assert!(
        index.member(&agent.digest).is_some(),
        "original index bytes kept as a blob"
    );

    import::import_file(&registries, &out, &import_opts(&dst.host, "{repo}"))
        .await
        .unwrap();
    let d = client(&dst, test_config()).await;
    let tagged = d.get_manifest("vendor/agent", "2.0.0").await.unwrap();
    assert_eq!(tagged.digest, e.digest);
    let view = airlock::oci::ManifestView::parse(&tagged.bytes, None).unwrap();
    assert_eq!(view.manifests.len(), 2);
    // The vendor's signature of the original index came along.
    let sig_tag = format!("{}.sig", agent.digest.tag_stem());
    let want = agent
        .artifact_tags
        .iter()
        .find(|(t, _)| *t == sig_tag)
        .unwrap();
    assert_eq!(
        d.head_manifest("vendor/agent", &sig_tag).await.unwrap(),
        Some(want.1.clone())
    );
    // The arm64 manifest was left out.
    let arm = &agent
        .platforms
        .iter()
        .find(|(p, _)| p == "linux/arm64")
        .unwrap()
        .1;
    assert_eq!(
        d.head_manifest("vendor/agent", &arm.to_string())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_tag_is_refused_unless_asked() {
    let src = TestRegistry::start();
    let s = client(&src, test_config()).await;
    let vendor = airlock::fixtures::seed(&s, "vendor/", 1).await.unwrap();
    let other = airlock::fixtures::seed(&s, "other/", 1).await.unwrap();
    let dst = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let registries = Registries::new(test_config());
    let mut bundles = vec![];
    for (name, prefix) in [("a.tar.zst", "vendor"), ("b.tar.zst", "other")] {
        let out = work.path().join(name);
        let sel =
            selection::from_refs(&[format!("{}/{prefix}/operator:1.0.0", src.host)], &[]).unwrap();
        export::export(&registries, &sel, &ExportOptions::new(&out))
            .await
            .unwrap();
        bundles.push(out);
    }
    let opts = import_opts(&dst.host, "{name}");
    import::import_file(&registries, &bundles[0], &opts)
        .await
        .unwrap();
    let d = client(&dst, test_config()).await;
    let old = vendor[0].digest.clone();
    let new = other[0].digest.clone();
    assert_ne!(old, new);

    let err = import::import_file(&registries, &bundles[1], &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&old.to_string()) && err.contains(&new.to_string()),
        "{err}"
    );
    assert!(err.contains("operator:1.0.0"), "{err}");
    assert_eq!(
        d.head_manifest("operator", &new.to_string()).await.unwrap(),
        None,
        "nothing pushed on refusal"
    );

    let mut skip = opts.clone();
    skip.on_existing_tag = OnExistingTag::Skip;
    let rep = import::import_file(&registries, &bundles[1], &skip)
        .await
        .unwrap();
    assert!(!rep.tags_skipped.is_empty());
    assert_eq!(
        d.head_manifest("operator", "1.0.0").await.unwrap(),
        Some(old.clone())
    );
    assert_eq!(
        d.head_manifest("operator", &new.to_string()).await.unwrap(),
        Some(new.clone())
    );

    let mut over = opts.clone();
    over.on_existing_tag = OnExistingTag::Overwrite;
    import::import_file(&registries, &bundles[1], &over)
        .await
        .unwrap();
    assert_eq!(
        d.head_manifest("operator", "1.0.0").await.unwrap(),
        Some(new)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_import_resumes_without_resending() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.tar.zst");
    let registries = Registries::new(test_config());
    let sel = selection::from_refs(&refs(&src, &images), &[]).unwrap();
    export::export(&registries, &sel, &ExportOptions::new(&out))
        .await
        .unwrap();

    // Every manifest PUT fails: the import dies after the blobs went in.
    let proxy = proxy::Proxy::start(
        &dst.host,
        vec![proxy::Rule {
            method: "PUT",
            path_contains: "/manifests/".into(),
            fault: proxy::Fault::Status(500, None),
            times: usize::MAX,
        }],
    )
    .await;
    let via_proxy = Registries::new(test_config());
    let err = import::import_file(&via_proxy, &out, &import_opts(&proxy.host, "{repo}"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    let d = client(&dst, test_config()).await;
    assert_eq!(
        d.head_manifest("vendor/operator", "1.0.0").await.unwrap(),
        None,
        "no tag before its manifests"
    );

    let rep = import::import_file(&registries, &out, &import_opts(&dst.host, "{repo}"))
        .await
        .unwrap();
    assert_eq!(
        rep.bytes_sent, 0,
        "blobs from the interrupted run are not sent again"
    );
    assert!(rep.blobs_present > 0);
    assert!(rep.manifests_pushed > 0);
    assert_eq!(
        d.head_manifest("vendor/operator", "1.0.0").await.unwrap(),
        Some(images[0].digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_from_a_pipe_with_chunked_uploads() {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.tar.zst");
    let all = refs(&src, &images);
    let mut args = vec!["export", "-q", "-o", out.to_str().unwrap()];
    args.extend(all.iter().map(|s| s.as_str()));
    let (code, _, err) = airlock(&args);
    assert_eq!(code, 0, "{err}");

    let mut child = airlock_cmd()
        .args([
            "import",
            "-",
            "--to",
            &dst.host,
            "--upload-chunk-size",
            "65536",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = std::fs::read(&out).unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for chunk in data.chunks(10_000) {
            stdin.write_all(chunk).unwrap();
        }
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mode"], "stream");
    assert_eq!(report["images"].as_array().unwrap().len(), 4);
    let d = client(&dst, test_config()).await;
    for img in &images {
        assert_eq!(
            d.head_manifest(&img.repository, &img.tag).await.unwrap(),
            Some(img.digest.clone())
        );
    }
}
