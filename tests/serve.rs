//! `airlock serve`: a bundle (or a volume set) as a read-only registry.
//! skopeo pulls from it with every digest kept; curl checks each endpoint;
//! a tampered bundle in lazy mode never delivers the bad blob complete.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `airlock serve` on a free port, stopped (SIGTERM) on drop.
struct Served {
    child: Child,
    addr: String,
    /// The request log (stderr lines after the banner).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let mut child = airlock_cmd()
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("serve stopped: {seen:?}"))
                .unwrap();
            if let Some(rest) = line.split(" at http").nth(1) {
                let url = rest.split_whitespace().next().unwrap();
                break url
                    .trim_start_matches("s://")
                    .trim_start_matches("://")
                    .trim_end_matches("/v2/")
                    .to_string();
            }
            seen.push(line);
        };
        // Keep draining the request log so the server never blocks on stderr.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Served { child, addr, log }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// `curl -s -i`: (status, headers lowercased, body).
fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .unwrap();
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, raw[split..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

fn export_all(
    src: &TestRegistry,
    images: &[airlock::fixtures::FixtureImage],
    dir: &Path,
) -> PathBuf {
    let out = dir.join("mirror.tar.zst");
    cli_export(src, images, &out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_from_a_served_bundle_with_every_digest() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = export_all(&src, &images, work.path());
    let served = Served::start(&[bundle.to_str().unwrap(), "--prefix", "mirror"]);
    let base = format!("http://{}", served.addr);

    // The base endpoint and the catalog, paginated.
    let (status, head, _) = curl(&[&format!("{base}/v2/")]);
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let (_, head, body) = curl(&[&format!("{base}/v2/_catalog?n=1")]);
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["repositories"].as_array().unwrap().len(), 1);
    let link = header(&head, "link").expect("a Link to the next page");
    assert!(
        link.contains("last=mirror%2fvendor%2fagent") || link.contains("last=mirror/vendor/agent"),
        "{link}"
    );
    let (_, _, body) = curl(&[&format!("{base}/v2/_catalog")]);
    let all: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut expected: Vec<String> = images
        .iter()
        .map(|i| format!("mirror/{}", i.repository))
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(all["repositories"], serde_json::json!(expected));

    // Tags, with pagination; cosign tags are tags too.
    let op = &images[0];
    let (_, _, body) = curl(&[&format!("{base}/v2/mirror/{}/tags/list", op.repository)]);
    let tags: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&"1.0.0") && tags.contains(&"1.1.0"),
        "{tags:?}"
    );
    for (t, _) in &op.artifact_tags {
        assert!(tags.contains(&t.as_str()), "{t} not listed");
    }
    let (_, head, body) = curl(&[&format!("{base}/v2/mirror/{}/tags/list?n=2", op.repository)]);
    let first: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(first["tags"].as_array().unwrap().len(), 2);
    assert!(header(&head, "link").is_some());
    let last = first["tags"][1].as_str().unwrap();
    let (_, _, body) = curl(&[&format!(
        "{base}/v2/mirror/{}/tags/list?last={last}",
        op.repository
    )]);
    let rest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(rest["tags"].as_array().unwrap().len() + 2, tags.len());

    // Manifests: the vendor's bytes, type, digest; HEAD with the length.
    let url = format!("{base}/v2/mirror/{}/manifests/{}", op.repository, op.tag);
    let (status, head, body) = curl(&[&url]);
    assert_eq!(status, 200);
    assert_eq!(airlock::digest::Digest::of(&body), op.digest);
    assert_eq!(
        header(&head, "docker-content-digest"),
        Some(op.digest.to_string().as_str())
    );
    assert_eq!(header(&head, "content-type"), Some(op.media_type.as_str()));
    let (status, head, body) = curl(&["-I", &url]);
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&head, "content-length").map(|l| l.parse::<usize>().unwrap()),
        Some(
            airlock::oci::Manifest::hashed(curl(&[&url]).2, &op.media_type)
                .bytes
                .len()
        )
    );
    let (status, _, body) = curl(&[&format!(
        "{base}/v2/mirror/{}/manifests/9.9.9",
        op.repository
    )]);
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("MANIFEST_UNKNOWN"));
    let (status, _, body) = curl(&[&format!("{base}/v2/nothing/here/manifests/1")]);
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("NAME_UNKNOWN"));

    // Blobs: whole, HEAD, Range (a layer of the operator's first platform).
    let (_, _, pm) = curl(&[&format!(
        "{base}/v2/mirror/{}/manifests/{}",
        op.repository, op.platforms[0].1
    )]);
    let pm: serde_json::Value = serde_json::from_slice(&pm).unwrap();
    let layer = pm["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap();
    let layer = airlock::oci::Descriptor::blob(
        layer["digest"].as_str().unwrap().parse().unwrap(),
        layer["size"].as_u64().unwrap(),
    );
    let repo = format!("mirror/{}", op.repository);
    let burl = format!("{base}/v2/{repo}/blobs/{}", layer.digest);
    let (status, head, whole) = curl(&[&burl]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(airlock::digest::Digest::of(&whole), layer.digest);
    let (status, head, body) = curl(&["-I", &burl]);
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(
        header(&head, "content-length"),
        Some(layer.size.to_string().as_str())
    );
    let (start, end) = (layer.size / 3, layer.size / 3 + 70_000);
    let (status, head, part) = curl(&["-H", &format!("Range: bytes={start}-{end}"), &burl]);
    assert_eq!(status, 206);
    assert_eq!(part, whole[start as usize..=end as usize]);
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes {start}-{end}/{}", layer.size).as_str())
    );
    let (status, _, _) = curl(&["-H", &format!("Range: bytes={}-", layer.size), &burl]);
    assert_eq!(status, 416);

    // Referrers API (the agent's SBOM is an OCI 1.1 referrer), with the filter.
    let agent = images
        .iter()
        .find(|i| i.repository.ends_with("agent"))
        .unwrap();
    let rurl = format!(
        "{base}/v2/mirror/{}/referrers/{}",
        agent.repository, agent.digest
    );
    let (status, head, body) = curl(&[&rurl]);
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-type"), Some(airlock::oci::OCI_INDEX));
    let idx: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let refs = idx["manifests"].as_array().unwrap();
    assert!(!refs.is_empty(), "{idx}");
    let kind = refs[0]["artifactType"].as_str().unwrap().to_string();
    let (_, head, body) = curl(&[&format!("{rurl}?artifactType={}", kind.replace('+', "%2B"))]);
    assert_eq!(header(&head, "oci-filters-applied"), Some("artifacttype"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        refs.len()
    );
    let (_, _, body) = curl(&[&format!("{rurl}?artifactType=application/x-none")]);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["manifests"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Nothing can be written.
    for (method, path) in [
        (
            "PUT",
            format!("/v2/mirror/{}/manifests/evil", op.repository),
        ),
        (
            "POST",
            format!("/v2/mirror/{}/blobs/uploads/", op.repository),
        ),
        (
            "PATCH",
            format!("/v2/mirror/{}/blobs/uploads/1", op.repository),
        ),
        (
            "DELETE",
            format!("/v2/mirror/{}/manifests/{}", op.repository, op.digest),
        ),
    ] {
        let (status, _, body) = curl(&["-X", method, "--data", "x", &format!("{base}{path}")]);
        assert_eq!(status, 405, "{method} {path}");
        assert!(String::from_utf8_lossy(&body).contains("UNSUPPORTED"));
    }

    // skopeo copies every image out of it, digests kept, with its cosign
    // tags. (skopeo 1.9 cannot copy a referrers fallback index with
    // --preserve-digests; its digest is checked by curl instead.)
    let dst = TestRegistry::start();
    let s = client(&src, test_config()).await;
    let d = client(&dst, test_config()).await;
    // (The gateway fixture's zstd Docker layers are not a type skopeo 1.9 reads.)
    for img in images
        .iter()
        .filter(|i| i.media_type != airlock::oci::DOCKER_LIST)
    {
        skopeo_copy(
            &format!(
                "docker://{}/mirror/{}:{}",
                served.addr, img.repository, img.tag
            ),
            &format!("docker://{}/{}:{}", dst.host, img.repository, img.tag),
        );
        assert_eq!(
            d.get_manifest(&img.repository, &img.tag)
                .await
                .unwrap()
                .bytes,
            s.get_manifest(&img.repository, &img.tag)
                .await
                .unwrap()
                .bytes
        );
        for (t, digest) in &img.artifact_tags {
            if t.ends_with(".sig") || t.ends_with(".att") || t.ends_with(".sbom") {
                skopeo_copy(
                    &format!("docker://{}/mirror/{}:{t}", served.addr, img.repository),
                    &format!("docker://{}/{}:{t}", dst.host, img.repository),
                );
                assert_eq!(
                    d.head_manifest(&img.repository, t).await.unwrap().as_ref(),
                    Some(digest)
                );
            } else {
                let (_, head, _) = curl(&[
                    "-I",
                    &format!("{base}/v2/mirror/{}/manifests/{t}", img.repository),
                ]);
                assert_eq!(
                    header(&head, "docker-content-digest"),
                    Some(digest.to_string().as_str())
                );
            }
        }
        for (platform, pd) in &img.platforms {
            let got = d
                .get_manifest(&img.repository, &pd.to_string())
                .await
                .unwrap();
            assert_eq!(&got.digest, pd, "{platform}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_served_and_a_tampered_blob_never_completes() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = export_all(&src, &images[2..3], work.path());

    // A volume set, served from its directory.
    let vdir = work.path().join("vols");
    std::fs::create_dir(&vdir).unwrap();
    let (index, _) = airlock::inspect::read_index(&bundle).unwrap();
    let size = (index.members.iter().map(|m| m.size).max().unwrap() / 2)
        .max(2 * index.to_bytes().len() as u64 + (96 << 10));
    let mut args = vec![
        "export".to_string(),
        "-q".into(),
        "-o".into(),
        vdir.join("m.tar.zst").display().to_string(),
        "--volume-size".into(),
        size.to_string(),
    ];
    args.extend(refs(&src, &images[2..3]));
    let (code, _, err) = airlock(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    {
        let served = Served::start(&[vdir.to_str().unwrap()]);
        let dst = TestRegistry::start();
        let img = &images[2];
        skopeo_copy(
            &format!("docker://{}/{}:{}", served.addr, img.repository, img.tag),
            &format!("docker://{}/{}:{}", dst.host, img.repository, img.tag),
        );
        let d = client(&dst, test_config()).await;
        assert_eq!(
            d.head_manifest(&img.repository, &img.tag).await.unwrap(),
            Some(img.digest.clone())
        );
    }

    // Tamper with the last layer's compressed bytes (the frame before the
    // end blocks, before the seek table).
    let mut data = std::fs::read(&bundle).unwrap();
    let n = u32::from_le_bytes(data[data.len() - 9..data.len() - 5].try_into().unwrap()) as usize;
    let table_len = 8 + n * 8 + 9;
    let entry = |i: usize| {
        let at = data.len() - table_len + 8 + i * 8;
        u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize
    };
    let end_frame = entry(n - 1);
    let last_data = entry(n - 2);
    let flip = data.len() - table_len - end_frame - last_data / 2;
    data[flip] ^= 0x55;
    let bad = work.path().join("bad.tar.zst");
    std::fs::write(&bad, &data).unwrap();
    let last = index.members.last().unwrap();
    assert_eq!(last.kind, airlock::bundle::MemberKind::Layer);

    // Full verification refuses to serve it at all.
    let (code, _, err) = airlock(&["serve", bad.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 3, "{err}");

    // Lazy: served, but that blob is cut short, in every repository and range.
    let served = Served::start(&[bad.to_str().unwrap(), "--verify", "lazy"]);
    let url = format!(
        "http://{}/v2/{}/blobs/{}",
        served.addr, images[2].repository, last.digest
    );
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{size_download}", &url])
        .output()
        .unwrap();
    assert!(!out.status.success(), "curl must see the connection cut");
    let got: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(got < last.size, "{got} of {} bytes delivered", last.size);
    let (status, _, body) = curl(&["-H", "Range: bytes=0-99", &url]);
    assert_ne!(status, 206);
    assert!(body.len() < 100 || status >= 500);
    // Other blobs are still served whole.
    let first_layer = index
        .members
        .iter()
        .find(|m| m.kind == airlock::bundle::MemberKind::Layer)
        .unwrap();
    let (status, _, body) = curl(&[&format!(
        "http://{}/v2/{}/blobs/{}",
        served.addr, images[2].repository, first_layer.digest
    )]);
    assert_eq!(status, 200);
    assert_eq!(airlock::digest::Digest::of(&body), first_layer.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = export_all(&src, &images[..1], work.path());
    let ca = make_tls(work.path());
    let served = Served::start(&[
        bundle.to_str().unwrap(),
        "--tls-cert",
        work.path().join("server.crt").to_str().unwrap(),
        "--tls-key",
        work.path().join("server.key").to_str().unwrap(),
        "--htpasswd",
        work.path().join("htpasswd").to_str().unwrap(),
    ]);
    let base = format!("https://{}", served.addr);
    let cacert = ca.to_str().unwrap();
    // Anonymous: 401 with a Basic challenge; wrong password too.
    let (status, head, body) = curl(&["--cacert", cacert, &format!("{base}/v2/")]);
    assert_eq!(status, 401);
    assert!(header(&head, "www-authenticate")
        .unwrap()
        .starts_with("basic"));
    assert!(String::from_utf8_lossy(&body).contains("UNAUTHORIZED"));
    let (status, _, _) = curl(&[
        "--cacert",
        cacert,
        "-u",
        &format!("{USER}:wrong"),
        &format!("{base}/v2/"),
    ]);
    assert_eq!(status, 401);
    // Without the CA, TLS fails.
    let (status, _, _) = curl(&[&format!("{base}/v2/")]);
    assert_eq!(status, 0);
    // skopeo with the CA and the credentials.
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let dst = TestRegistry::start();
    let img = &images[0];
    sh(Command::new("skopeo").args([
        "copy",
        "-q",
        "--all",
        "--preserve-digests",
        "--src-cert-dir",
        certs.to_str().unwrap(),
        "--src-creds",
        &format!("{USER}:{PASS}"),
        "--dest-tls-verify=false",
        &format!("docker://{}/{}:{}", served.addr, img.repository, img.tag),
        &format!("docker://{}/{}:{}", dst.host, img.repository, img.tag),
    ]));
    let d = client(&dst, test_config()).await;
    assert_eq!(
        d.head_manifest(&img.repository, &img.tag).await.unwrap(),
        Some(img.digest.clone())
    );
}

/// airlock's own registry client finds OCI 1.1 referrers through the
/// referrers API (the distribution registry of the other tests has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airlock_discovers_referrers_through_the_api() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let agent = images
        .iter()
        .find(|i| i.repository.ends_with("agent"))
        .unwrap();
    let bundle = export_all(&src, std::slice::from_ref(agent), work.path());
    let (first, _) = airlock::inspect::read_index(&bundle).unwrap();
    let served = Served::start(&[bundle.to_str().unwrap()]);
    let again = work.path().join("again.tar.zst");
    let (code, _, err) = airlock(&[
        "export",
        "-q",
        "-o",
        again.to_str().unwrap(),
        &format!("{}/{}:{}", served.addr, agent.repository, agent.tag),
    ]);
    assert_eq!(code, 0, "{err}");
    let (second, _) = airlock::inspect::read_index(&again).unwrap();
    let referrers = |i: &airlock::bundle::BundleIndex| {
        i.images[0]
            .artifacts
            .iter()
            .filter(|a| a.kind == airlock::graph::ArtifactKind::Referrer)
            .map(|a| a.digest.clone())
            .collect::<Vec<_>>()
    };
    assert!(!referrers(&first).is_empty());
    assert_eq!(referrers(&second), referrers(&first));
    assert_eq!(second.images[0].digest, first.images[0].digest);
    let log = served.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.contains("/referrers/sha256:") && l.contains(" 200 ")),
        "no referrers API request in {log:?}"
    );
}

/// podman pulls from a served bundle (its own storage in a temp dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_from_a_served_bundle() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = export_all(&src, &images[..1], work.path());
    let served = Served::start(&[bundle.to_str().unwrap(), "--verify", "lazy"]);
    let img = &images[0];
    let root = work.path().join("podman");
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.args(["--root", root.join("root").to_str().unwrap()])
            .args(["--runroot", root.join("run").to_str().unwrap()])
            .args(["--storage-driver", "vfs"])
            .args(args);
        sh(&mut c)
    };
    let reference = format!("{}/{}:{}", served.addr, img.repository, img.tag);
    podman(&["pull", "-q", "--tls-verify=false", &reference]);
    let digest = podman(&["image", "inspect", "--format", "{{.Digest}}", &reference]);
    assert_eq!(digest.trim(), img.digest.to_string());
}
