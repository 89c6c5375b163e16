//! Misbehaving registries and links, through the fault proxy: a trickling
//! body is a stall (named, bounded in time), credentials echoed in an error
//! body are never printed, an endless tag list is refused.

mod common;

use common::proxy::{Fault, Proxy, Rule};
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_blob_is_a_stall_named_in_bounded_time() {
    let (src, images) = seeded_source().await;
    let s = client(&src, test_config()).await;
    let pm = s
        .get_manifest(&images[0].repository, &images[0].platforms[0].1.to_string())
        .await
        .unwrap();
    let layer = pm.view().unwrap().layers[0].digest.clone();
    let proxy = Proxy::start(
        &src.host,
        vec![Rule {
            method: "GET",
            path_contains: format!("/blobs/{layer}"),
            fault: Fault::Trickle(200),
            times: usize::MAX,
        }],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("t.tar.zst");
    let started = Instant::now();
    let (code, _, err) = tokio::task::spawn_blocking({
        let out = out.clone();
        let reference = format!("{}/{}:{}", proxy.host, images[0].repository, images[0].tag);
        move || {
            airlock(&[
                "export",
                "-q",
                "--retries",
                "2",
                "--low-speed-limit",
                "1000",
                "--low-speed-time",
                "2",
                "-o",
                out.to_str().unwrap(),
                &reference,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stalled") && err.contains(&layer.to_string()),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_echoed_by_a_registry_are_never_printed() {
    let (src, images) = seeded_source().await;
    let img = &images[0];
    let proxy = Proxy::start(
        &src.host,
        vec![
            Rule {
                method: "GET",
                path_contains: "/manifests/".into(),
                fault: Fault::Challenge,
                times: 1,
            },
            Rule {
                method: "GET",
                path_contains: "/manifests/".into(),
                fault: Fault::EchoAuth,
                times: usize::MAX,
            },
        ],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("c.tar.zst");
    let reference = format!("{}/{}:{}", proxy.host, img.repository, img.tag);
    let (code, stdout, err) = tokio::task::spawn_blocking(move || {
        airlock(&[
            "export",
            "--retries",
            "1",
            "--creds",
            "mirror:Sup3r-s3cret-pw",
            "-o",
            out.to_str().unwrap(),
            &reference,
        ])
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    let printed = format!("{stdout}{err}");
    assert!(
        printed.contains("<redacted>"),
        "the echo reached the message: {printed}"
    );
    assert!(!printed.contains("Sup3r-s3cret-pw"), "{printed}");
    let b64 = "bWlycm9yOlN1cDNyLXMzY3JldC1wdw=="; // base64("mirror:Sup3r-s3cret-pw")
    assert!(!printed.contains(b64), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_tag_list_is_refused() {
    let (src, images) = seeded_source().await;
    let proxy = Proxy::start(
        &src.host,
        vec![Rule {
            method: "GET",
            path_contains: "/tags/list".into(),
            fault: Fault::EndlessTags,
            times: usize::MAX,
        }],
    )
    .await;
    let reg = airlock::registry::Registries::new(test_config())
        .get(&proxy.host)
        .await
        .unwrap();
    let started = Instant::now();
    let err = reg
        .list_tags(&images[0].repository)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("loops"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        proxy.count("GET", "/tags/list") <= 3,
        "noticed at once, not after thousands of pages"
    );
}

/// A registry that answers 201 to uploads and manifests without storing
/// them is caught by the read-back, blob by blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_drops_uploads_is_caught_by_the_read_back() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("r.tar.zst");
    cli_export(&src, &images[..1], &bundle);
    let dst = TestRegistry::start();
    let proxy = Proxy::start(
        &dst.host,
        vec![
            Rule {
                method: "PUT",
                path_contains: "/blobs/uploads/".into(),
                fault: Fault::Status(201, None),
                times: usize::MAX,
            },
            Rule {
                method: "PUT",
                path_contains: "/manifests/".into(),
                fault: Fault::Status(201, None),
                times: usize::MAX,
            },
        ],
    )
    .await;
    let host = proxy.host.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        airlock(&[
            "import",
            bundle.to_str().unwrap(),
            "--to",
            &host,
            "--retries",
            "1",
        ])
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("read-back") && err.contains("not there"),
        "{err}"
    );
}

#[test]
fn a_password_on_stdin_with_a_bundle_on_stdin_is_refused() {
    let (code, _, err) = airlock(&[
        "import",
        "-",
        "--to",
        "127.0.0.1:1",
        "--username",
        "u",
        "--password-stdin",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("stdin"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = airlock(&[
        "export",
        "-o",
        dir.path().to_str().unwrap(),
        "127.0.0.1:1/x:1",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a directory"), "{err}");
}
