//! Misbehaving registries and links, through the fault proxy: a trickling
//! body is a stall (named, bounded in time), credentials echoed in an error
//! body are never printed, an endless tag list is refused, uploads cut
//! mid-way continue where the registry stands, a slow but steady upload is
//! not a timeout, a registry's whole error message is shown.

mod common;

use airlock::digest::Digest;
use airlock::oci::Descriptor;
use common::proxy::{Fault, Proxy, Rule};
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The size of the large layer of the upload tests.
const BIG: usize = 4 << 20;

/// `size` bytes that zstd cannot shrink (the bundle carries them as they are).
fn noise(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One single-platform image `big/app:1.0` with one layer of `size` bytes,
/// in a registry of its own, exported into `dir/big.tar.zst`. Returns the
/// bundle, the manifest digest and the layer's descriptor.
async fn big_bundle(dir: &Path, size: usize) -> (PathBuf, Digest, Descriptor) {
    let src = TestRegistry::start();
    let reg = client(&src, test_config()).await;
    let repo = "big/app";
    let layer = bytes::Bytes::from(noise(size, 7));
    let config = bytes::Bytes::from_static(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let mut descs = Vec::new();
    for b in [&layer, &config] {
        let desc = Descriptor::blob(Digest::of(b), b.len() as u64);
        let bytes = b.clone();
        reg.push_blob(repo, &desc, None, move |offset| {
            let b = bytes.slice(offset as usize..);
            async move {
                let body: airlock::registry::BlobBody =
                    Box::pin(futures_util::stream::once(async move { Ok(b) }));
                Ok(body)
            }
        })
        .await
        .unwrap();
        descs.push(desc);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": airlock::oci::OCI_MANIFEST,
        "config": {"mediaType": airlock::oci::OCI_CONFIG, "digest": descs[1].digest.to_string(), "size": descs[1].size},
        "layers": [{"mediaType": airlock::oci::OCI_LAYER_TAR, "digest": descs[0].digest.to_string(), "size": descs[0].size}],
    });
    let bytes = bytes::Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let digest = reg
        .put_manifest(repo, "1.0", &bytes, airlock::oci::OCI_MANIFEST)
        .await
        .unwrap();
    let bundle = dir.join("big.tar.zst");
    let reference = format!("{}/{repo}:1.0", src.host);
    let out = bundle.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        airlock(&["export", "-q", "-o", out.to_str().unwrap(), &reference])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    (bundle, digest, descs.remove(0))
}

/// `airlock import BUNDLE --to HOST ARGS…` in a blocking task: (code, stderr).
async fn import_to(bundle: &Path, host: &str, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = vec![
        "import".into(),
        bundle.display().to_string(),
        "--to".into(),
        host.to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        airlock(&all.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    (code, err)
}

/// `big/app:1.0` at `dst` is the manifest `digest`, and its layer reads
/// back whole (size and sha256 checked by the download).
async fn assert_big_image(dst: &TestRegistry, digest: &Digest, layer: &Descriptor) {
    let reg = client(dst, test_config()).await;
    let got = reg.get_manifest("big/app", "1.0").await.unwrap();
    assert_eq!(
        &got.digest, digest,
        "the tag points at the bundle's manifest"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut f = tokio::fs::File::create(dir.path().join("layer"))
        .await
        .unwrap();
    reg.fetch_blob(
        "big/app",
        layer,
        &mut f,
        &airlock::progress::Progress::hidden(),
    )
    .await
    .expect("the layer reads back with its digest");
}

/// The upload tests' bed: a bundle with one large layer, and an empty
/// destination registry behind the fault proxy with the rules given (made
/// from the layer's descriptor, for rules that name it).
struct UploadBed {
    _work: tempfile::TempDir,
    bundle: PathBuf,
    digest: Digest,
    layer: Descriptor,
    dst: TestRegistry,
    proxy: Proxy,
}

impl UploadBed {
    async fn start(rules: impl FnOnce(&Descriptor) -> Vec<Rule>) -> UploadBed {
        let work = tempfile::tempdir().unwrap();
        let (bundle, digest, layer) = big_bundle(work.path(), BIG).await;
        let dst = TestRegistry::start();
        let proxy = Proxy::start(&dst.host, rules(&layer)).await;
        UploadBed {
            _work: work,
            bundle,
            digest,
            layer,
            dst,
            proxy,
        }
    }

    /// `airlock import` of the bundle through the proxy: exit code, stderr.
    async fn import(&self, args: &[&str]) -> (i32, String) {
        import_to(&self.bundle, &self.proxy.host, args).await
    }

    async fn assert_arrived(&self) {
        assert_big_image(&self.dst, &self.digest, &self.layer).await;
    }
}

fn cut_rules(after: u64, shared: bool, buffered: bool) -> Vec<Rule> {
    ["PUT", "PATCH"]
        .into_iter()
        .map(|method| Rule {
            method,
            path_contains: "/blobs/uploads/".into(),
            fault: Fault::Cut {
                after,
                shared,
                buffered,
            },
            times: usize::MAX,
        })
        .collect()
}

/// Every connection dies after 1000 KiB of an upload's body, and the registry
/// keeps what came (distribution then refuses the session: the bytes it
/// holds are not the offset its upload state says). The retry finds the
/// session gone, starts a new one in chunks that fit: the layer arrives,
/// having sent well under twice its size (restarting a 4 MiB PUT would
/// never finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_every_mebibyte_finishes_in_chunks() {
    let bed = UploadBed::start(|_| cut_rules(1000 << 10, false, false)).await;
    let started = Instant::now();
    let (code, err) = bed.import(&[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_resent_less_than_once(&bed.proxy);
    bed.assert_arrived().await;
}

/// Behind a front that buffers request bodies (nginx's default), a cut
/// request never reaches the registry, which then holds exactly the chunks
/// it answered: the link dies every 1.25 MiB of upload (across requests,
/// wherever that falls), and every retry continues from the offset the
/// registry reports, not from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_continues_from_the_registrys_offset() {
    let bed = UploadBed::start(|_| cut_rules(5 << 18, true, true)).await;
    let proxy = &bed.proxy;
    let (code, err) = bed.import(&[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("the registry holds"),
        "a resume is reported: {err}"
    );
    let resumed = proxy
        .ranges()
        .iter()
        .filter(|r| !r.starts_with("0-"))
        .count();
    assert!(
        resumed >= 2,
        "PATCHes from later offsets: {:?}",
        proxy.ranges()
    );
    assert_resent_less_than_once(proxy);
    bed.assert_arrived().await;
}

/// An upload slower than the request timeout but faster than the low-speed
/// limit is not a timeout: a 4 MiB PUT at 1 MiB/s finishes with a 2 s
/// request timeout, in one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_upload_outlasts_the_request_timeout() {
    let bed = UploadBed::start(|_| {
        vec![Rule {
            method: "PUT",
            path_contains: "/blobs/uploads/".into(),
            fault: Fault::SlowUpload(1 << 20),
            times: usize::MAX,
        }]
    })
    .await;
    let started = Instant::now();
    let (code, err) = bed
        .import(&[
            "--request-timeout",
            "2",
            "--low-speed-limit",
            "65536",
            "--low-speed-time",
            "2",
        ])
        .await;
    let took = started.elapsed();
    eprintln!("took {took:?}, {} bytes went up", bed.proxy.uploaded());
    assert_eq!(code, 0, "{err}");
    assert!(took > Duration::from_secs(3), "took {took:?}: {err}");
    assert!(!err.contains("retrying"), "{err}");
    bed.assert_arrived().await;
}

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

/// `airlock import` of one fixture image into a fresh registry behind a
/// proxy with these rules: (exit code, stderr, the registry's tags).
async fn import_through(rules: Vec<Rule>) -> (i32, String, Vec<String>) {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("r.tar.zst");
    cli_export(&src, &images[..1], &bundle);
    let dst = TestRegistry::start();
    let proxy = Proxy::start(&dst.host, rules).await;
    let (code, err) = import_to(&bundle, &proxy.host, &["--retries", "1"]).await;
    (code, err, dst.all_tags().await)
}

fn blob_puts(fault: Fault) -> Vec<Rule> {
    vec![Rule {
        method: "PUT",
        path_contains: "/blobs/uploads/".into(),
        fault,
        times: usize::MAX,
    }]
}

/// A registry that answers "201 Created" to an upload it never stored (no
/// digest in the answer) is caught as the upload ends (the blob is read
/// back), before any manifest or tag refers to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_says_created_but_keeps_no_blob_is_caught() {
    let (code, err, tags) = import_through(blob_puts(Fault::Created(None))).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("answered 201 but does not have the blob") && err.contains("sha256:"),
        "{err}"
    );
    assert!(tags.is_empty(), "no tag reached the registry: {tags:?}");
}

/// Reads of the registry (HEAD, GET) that were asked more than once.
fn asked_twice(proxy: &Proxy) -> Vec<String> {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for r in proxy.requests() {
        if r.starts_with("HEAD ") || r.starts_with("GET ") {
            *seen.entry(r).or_default() += 1;
        }
    }
    let mut twice: Vec<String> = seen
        .into_iter()
        .filter(|(r, n)| *n > 1 && r != "GET /v2/")
        .map(|(r, n)| format!("{n}× {r}"))
        .collect();
    twice.sort();
    twice
}

/// The destination registry's CPU is an import's limit, so an import asks
/// each question once: every tag, manifest and blob is HEADed once, nothing
/// written is asked about again but through the read-back of manifests and
/// tags, and a second import of the same bundle writes nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_asks_each_question_once() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("r.tar.zst");
    cli_export(&src, &images[..1], &bundle);
    let dst = TestRegistry::start();
    let proxy = Proxy::start(&dst.host, vec![]).await;
    let (code, err) = import_to(&bundle, &proxy.host, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(asked_twice(&proxy), Vec::<String>::new(), "first import");
    assert!(
        proxy.count("PUT", "/blobs/uploads/") > 0,
        "blobs were uploaded"
    );
    let first = proxy.requests().len();
    let (code, err) = import_to(&bundle, &proxy.host, &[]).await;
    assert_eq!(code, 0, "{err}");
    let again: Vec<String> = proxy.requests()[first..].to_vec();
    let writes: Vec<&String> = again
        .iter()
        .filter(|r| !r.starts_with("HEAD ") && !r.starts_with("GET "))
        .collect();
    assert!(
        writes.is_empty(),
        "a second import writes nothing: {writes:?}"
    );
    assert!(!dst.all_tags().await.is_empty());
}

/// A 201 naming another digest than the one uploaded is a refusal too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_answer_naming_another_digest_is_refused() {
    let other = format!("sha256:{}", "ab".repeat(32));
    let (code, err, tags) = import_through(blob_puts(Fault::Created(Some(other.clone())))).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("digest mismatch") && err.contains(&other),
        "{err}"
    );
    assert!(tags.is_empty(), "no tag reached the registry: {tags:?}");
}

/// A registry that answers 201 to manifests without storing them is caught
/// by the read-back of every manifest and tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_drops_manifests_is_caught_by_the_read_back() {
    let (code, err, _) = import_through(vec![Rule {
        method: "PUT",
        path_contains: "/manifests/".into(),
        fault: Fault::Created(None),
        times: usize::MAX,
    }])
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("read-back after push failed") && err.contains("not found"),
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

/// A link that stops carrying an upload's body mid-way (the connection
/// open, nothing acknowledged) is a stall after the low-speed window, not
/// a wait of minutes; the retry gets the layer through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_and_retried() {
    let bed = UploadBed::start(|layer| {
        vec![Rule {
            // The layer's (its closing PUT names its digest), not the config's.
            method: "PUT",
            path_contains: layer.digest.hex(),
            fault: Fault::StallUpload { after: 1 << 20 },
            times: 1,
        }]
    })
    .await;
    let started = Instant::now();
    let (code, err) = bed
        .import(&["--low-speed-limit", "65536", "--low-speed-time", "2"])
        .await;
    let took = started.elapsed();
    eprintln!("took {took:?}, {} bytes went up", bed.proxy.uploaded());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stalled"), "{err}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    bed.assert_arrived().await;
}

/// A registry's error message is shown whole (a full disk is named at the
/// end of a long path, past the 300 characters once shown), credentials
/// still redacted; an OS error is said once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrys_whole_error_message_is_shown_and_an_os_error_once() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("m.tar.zst");
    cli_export(&src, &images[..1], &bundle);
    let dst = TestRegistry::start();
    let path = format!(
        "/var/lib/registry/docker/registry/v2/repositories/vendor/operator/_uploads/{}/data",
        "0123456789abcdef".repeat(20)
    );
    let detail = format!("filesystem: write {path}: no space left on device");
    let body = serde_json::json!({"errors": [
        {"code": "UNKNOWN", "message": "unknown error", "detail": detail},
        {"code": "DENIED", "message": "the password Sup3r-s3cret-pw is not welcome"},
    ]})
    .to_string();
    let proxy = Proxy::start(
        &dst.host,
        vec![Rule {
            method: "PUT",
            path_contains: "/blobs/uploads/".into(),
            fault: Fault::Answer(507, body),
            times: usize::MAX,
        }],
    )
    .await;
    let (code, err) = import_to(
        &bundle,
        &proxy.host,
        &["--retries", "1", "--creds", "mirror:Sup3r-s3cret-pw"],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "507: UNKNOWN: unknown error ({detail}); DENIED: the password <redacted> is not welcome"
        )),
        "{err}"
    );
    assert!(!err.contains("Sup3r-s3cret-pw"), "{err}");

    // Writing the bundle to a full stdout: the OS error once, not twice.
    let reference = refs(&src, &images[..1]).remove(0);
    let out = tokio::task::spawn_blocking(move || {
        airlock_cmd()
            .args(["export", "-q", "-o", "-", &reference])
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        err.matches("No space left on device").count(),
        1,
        "the OS error said once: {err}"
    );
}

/// The link carried less than twice the layer: retries continued where the
/// registry stood instead of sending the blob again from its first byte.
fn assert_resent_less_than_once(proxy: &Proxy) {
    let sent = proxy.uploaded();
    eprintln!(
        "{sent} bytes went up for a {BIG}-byte layer; PATCH ranges {:?}",
        proxy.ranges()
    );
    assert!(
        sent < 2 * BIG as u64,
        "{sent} bytes went up for a {BIG}-byte layer"
    );
}
