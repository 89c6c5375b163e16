//! TLS with a private CA, htpasswd auth, credentials files, injected
//! network faults, and the errors a user meets.

mod common;

use airlock::export::{self, ExportOptions};
use airlock::import::{self, ImportOptions, OnExistingTag, Target};
use airlock::registry::Registries;
use airlock::selection;
use common::proxy::{Fault, Proxy, Rule};
use common::*;
use std::io::Write;
use std::process::Stdio;

async fn bundle_of(
    src: &TestRegistry,
    images: &[airlock::fixtures::FixtureImage],
    dir: &std::path::Path,
) -> std::path::PathBuf {
    export_to(src, images, dir, "b.tar.zst").await
}

fn import_with_password(bundle: &str, to: &str, ca: Option<&str>, password: &str) -> (i32, String) {
    let mut args = vec![
        "import",
        bundle,
        "--to",
        to,
        "--username",
        USER,
        "--password-stdin",
        "--retries",
        "2",
    ];
    if let Some(ca) = ca {
        args.extend(["--ca-file", ca]);
    }
    let mut child = airlock_cmd()
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_htpasswd_registry_as_target_and_source() {
    let (src, images) = seeded_source().await;
    let sec = TestRegistry::start_secure();
    let work = tempfile::tempdir().unwrap();
    let bundle = bundle_of(&src, &images[..1], work.path()).await;
    let b = bundle.to_str().unwrap();
    let ca = sec.ca.as_ref().unwrap().to_str().unwrap();

    let (code, text) = import_with_password(b, &sec.host, None, PASS);
    assert_ne!(code, 0);
    assert!(
        text.contains("--ca-file"),
        "TLS failure should suggest --ca-file: {text}"
    );

    let (code, text) = import_with_password(b, &sec.host, Some(ca), "wrong-password-123");
    assert_ne!(code, 0);
    assert!(text.contains("authentication"), "{text}");
    assert!(
        !text.contains("wrong-password-123"),
        "a secret was echoed: {text}"
    );

    let (code, text) = import_with_password(b, &sec.host, Some(ca), PASS);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains(PASS));

    // Credentials from a docker config.json (DOCKER_CONFIG).
    let cfg = work.path().join("docker");
    std::fs::create_dir(&cfg).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    std::fs::write(
        cfg.join("config.json"),
        format!("{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}", sec.host),
    )
    .unwrap();
    run_ok(airlock_cmd().env("DOCKER_CONFIG", &cfg).args([
        "import",
        b,
        "--to",
        &format!("{}/viaconfig", sec.host),
        "--ca-file",
        ca,
    ]));

    // Export from the secure registry, with bearer-less basic auth over TLS.
    let reg = client(&sec, secure_config(&sec)).await;
    let fx = airlock::fixtures::seed(&reg, "sec/", 1).await.unwrap();
    let sel = selection::from_refs(&[format!("{}/sec/operator:1.0.0", sec.host)], &[]).unwrap();
    let out = work.path().join("sec.tar.zst");
    let rep = export::export(
        &Registries::new(secure_config(&sec)),
        &sel,
        &ExportOptions::new(&out),
    )
    .await
    .unwrap();
    assert_eq!(rep.images[0].digest, fx[0].digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_survives_injected_faults() {
    let (src, images) = seeded_source().await;
    let rules = vec![
        Rule {
            method: "GET",
            path_contains: "/blobs/sha256:".into(),
            fault: Fault::Status(503, None),
            times: 2,
        },
        Rule {
            method: "GET",
            path_contains: "/blobs/sha256:".into(),
            fault: Fault::Status(429, Some(1)),
            times: 1,
        },
        Rule {
            method: "GET",
            path_contains: "/blobs/sha256:".into(),
            fault: Fault::Drop,
            times: 1,
        },
        Rule {
            method: "GET",
            path_contains: "/blobs/sha256:".into(),
            fault: Fault::Truncate,
            times: 2,
        },
        Rule {
            method: "GET",
            path_contains: "/manifests/".into(),
            fault: Fault::Status(502, None),
            times: 1,
        },
        Rule {
            method: "GET",
            path_contains: "/manifests/".into(),
            fault: Fault::Truncate,
            times: 1,
        },
        Rule {
            method: "GET",
            path_contains: "/tags/list".into(),
            fault: Fault::Status(500, None),
            times: 1,
        },
    ];
    let proxy = Proxy::start(&src.host, rules).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.tar.zst");
    let sel = selection::from_refs(
        &[
            format!("{}/vendor/operator:1.1.0", proxy.host),
            format!("{}/vendor/agent:2.0.0", proxy.host),
        ],
        &[],
    )
    .unwrap();
    let started = std::time::Instant::now();
    let rep = export::export(
        &Registries::new(test_config()),
        &sel,
        &ExportOptions::new(&out),
    )
    .await
    .unwrap();
    assert_eq!(proxy.injected().len(), 9, "{:?}", proxy.injected());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(rep.images[0].digest, images[1].digest);
    airlock::verify::verify(&out, None).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_survives_injected_faults() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = bundle_of(&src, &images, work.path()).await;
    let dst = TestRegistry::start();
    let rules = vec![
        Rule {
            method: "POST",
            path_contains: "/blobs/uploads/".into(),
            fault: Fault::Status(503, None),
            times: 2,
        },
        Rule {
            method: "PATCH",
            path_contains: "/blobs/uploads/".into(),
            fault: Fault::Drop,
            times: 2,
        },
        Rule {
            method: "PUT",
            path_contains: "/blobs/uploads/".into(),
            fault: Fault::Status(500, None),
            times: 2,
        },
        Rule {
            method: "PUT",
            path_contains: "/manifests/".into(),
            fault: Fault::Status(429, None),
            times: 2,
        },
        Rule {
            method: "HEAD",
            path_contains: "/blobs/".into(),
            fault: Fault::Drop,
            times: 1,
        },
    ];
    let proxy = Proxy::start(&dst.host, rules).await;
    let mut cfg = test_config();
    cfg.upload_chunk_size = Some(100_000);
    let opts = ImportOptions {
        target: Target::parse(&proxy.host).unwrap(),
        on_existing_tag: OnExistingTag::Refuse,
        on_existing_artifact: Default::default(),
        jobs: 3,
        policy: None,
        bundle_key: None,
        verify_first: false,
    };
    import::import_file(&Registries::new(cfg), &bundle, &opts)
        .await
        .unwrap();
    assert_eq!(proxy.injected().len(), 9, "{:?}", proxy.injected());
    let d = client(&dst, test_config()).await;
    for img in &images {
        assert_eq!(
            d.head_manifest(&img.repository, &img.tag).await.unwrap(),
            Some(img.digest.clone())
        );
    }
}

/// A cosign tag whose manifest is of a media type the client refuses (an
/// OCI 1.1-rc artifact manifest, served by the proxy in place of the
/// registry's `.sig`) is skipped with a warning naming it, and the export
/// goes on without it. A tag that is listed but not found stays fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_skips_an_artifact_of_a_refused_media_type() {
    const ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
    let (src, images) = seeded_source().await;
    let (img, sig) = images
        .iter()
        .find_map(|i| {
            let sig = airlock::signatures::cosign_tag(&i.digest, "sig");
            i.artifact_tags
                .iter()
                .any(|(t, _)| *t == sig)
                .then_some((i, sig))
        })
        .expect("a fixture image signed at its top digest");
    let body = format!(
        r#"{{"mediaType":"{ARTIFACT_MANIFEST}","artifactType":"application/vnd.example.sig","blobs":[],"subject":{{"mediaType":"{}","digest":"{}","size":1}}}}"#,
        img.media_type, img.digest
    );
    let proxy = Proxy::start(
        &src.host,
        vec![Rule {
            method: "GET",
            path_contains: format!("/manifests/{sig}"),
            fault: Fault::Respond(ARTIFACT_MANIFEST, body.into_bytes()),
            times: usize::MAX,
        }],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.tar.zst");
    let image = format!("{}/{}:{}", proxy.host, img.repository, img.tag);
    let args = ["export", "-o", out.to_str().unwrap(), &image];
    // The proxy runs on this runtime: block only this worker.
    let (code, _, err) = tokio::task::block_in_place(|| airlock(&args));
    assert_eq!(code, 0, "{err}");
    assert!(!proxy.injected().is_empty());
    for needle in [
        format!(
            "warning: {}/{}: artifact {sig} of {} skipped",
            proxy.host, img.repository, img.digest
        ),
        ARTIFACT_MANIFEST.to_string(),
        format!("has no signature for {}", img.digest),
    ] {
        assert!(err.contains(&needle), "{needle:?} not in: {err}");
    }

    proxy.set_rules(vec![Rule {
        method: "GET",
        path_contains: format!("/manifests/{sig}"),
        fault: Fault::Status(404, None),
        times: usize::MAX,
    }]);
    let out2 = work.path().join("c.tar.zst");
    let args = ["export", "-q", "-o", out2.to_str().unwrap(), &image];
    let (code, _, err) = tokio::task::block_in_place(|| airlock(&args));
    assert_ne!(
        code, 0,
        "a listed tag that is not found must fail the export"
    );
    assert!(err.contains(&format!("{sig} not found")), "{err}");
    assert!(!out2.exists());
}

/// The command fails (exit 1) with every needle in its error message.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (code, _, err) = airlock(args);
    assert_eq!(code, 1, "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_name_what_is_wrong() {
    let (src, _images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.tar.zst");
    let o = out.to_str().unwrap();

    fails_with(
        &[
            "export",
            "-o",
            o,
            &format!("{}/vendor/operator:9.9.9", src.host),
        ],
        &["vendor/operator:9.9.9", "not found"],
    );

    fails_with(
        &[
            "export",
            "-o",
            o,
            "--platform",
            "linux/riscv64",
            &format!("{}/vendor/agent:2.0.0", src.host),
        ],
        &["no platform matches", "linux/s390x"],
    );

    // --require-signatures on an unsigned image (exit 4) is in tests/selection.rs:
    // every fixture image here is signed on its index, which satisfies it.
    // Trust material that is not what the flag says: named, nothing written.
    let not_a_root = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/cosign-test.pub");
    let agent = format!("{}/vendor/agent:2.0.0", src.host);
    fails_with(
        &[
            "export",
            "-o",
            o,
            "--carry-trusted-root",
            not_a_root,
            &agent,
        ],
        &["--carry-trusted-root", not_a_root, "trusted_root.json"],
    );
    fails_with(
        &[
            "export",
            "-o",
            o,
            "--ca-roots",
            not_a_root,
            "--certificate-identity",
            "x",
            &agent,
        ],
        &["--ca-roots", not_a_root],
    );
    fails_with(
        &[
            "export",
            "-o",
            o,
            "--trusted-root",
            "/nonexistent/root.json",
            "--certificate-identity",
            "x",
            "--certificate-oidc-issuer",
            "y",
            &agent,
        ],
        &["/nonexistent/root.json"],
    );
    fails_with(
        &[
            "export",
            "-o",
            o,
            "--key",
            not_a_root,
            "--rekor-key",
            "/nonexistent/rekor.pub",
            &agent,
        ],
        &["/nonexistent/rekor.pub"],
    );
    assert!(!out.exists(), "no bundle may be written on refusal");
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "no temp files left behind"
    );

    let operator = format!("{}/vendor/operator:1.0.0", src.host);
    let (code, _, err) = airlock(&["export", "-o", o, &operator]);
    assert_eq!(code, 0, "{err}");
    fails_with(&["export", "-o", o, &operator], &["already exists"]);

    fails_with(&["export", "-o", o, "Not A Ref"], &["Not A Ref"]);

    fails_with(&["import", o, "--to", "127.0.0.1:1"], &["127.0.0.1:1"]);

    fails_with(
        &["import", "/nonexistent.tar.zst", "--to", &src.host],
        &["/nonexistent.tar.zst"],
    );
}

/// A blob download cut off half way is resumed from the next byte with a
/// `Range` request (not fetched again from the start), and the bundle is
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_with_a_range_request() {
    let (src, images) = seeded_source().await;
    let s = client(&src, test_config()).await;
    let platform = s
        .get_manifest(&images[0].repository, &images[0].platforms[0].1.to_string())
        .await
        .unwrap();
    let layer = platform.view().unwrap().layers[0].clone();
    let proxy = Proxy::start(
        &src.host,
        vec![Rule {
            method: "GET",
            path_contains: format!("/blobs/{}", layer.digest),
            fault: Fault::Truncate,
            times: 1,
        }],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b.tar.zst");
    let sel = selection::from_refs(
        &[format!(
            "{}/{}:{}",
            proxy.host, images[0].repository, images[0].tag
        )],
        &[],
    )
    .unwrap();
    export::export(
        &Registries::new(test_config()),
        &sel,
        &ExportOptions::new(&out),
    )
    .await
    .unwrap();
    assert_eq!(proxy.injected().len(), 1, "{:?}", proxy.injected());
    let gets: Vec<String> = proxy
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&layer.digest.to_string()))
        .cloned()
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(!gets[0].contains("range="), "{gets:?}");
    // The truncating proxy passed on half the body (and the head).
    let from: u64 = gets[1]
        .split("range=bytes=")
        .nth(1)
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or_else(|| panic!("the retry asks for the rest: {gets:?}"));
    assert!(from > 0 && from < layer.size, "{from} of {}", layer.size);
    airlock::verify::verify(&out, None).unwrap();
}
