//! Test harness: real CNCF distribution registries (`docker-registry`)
//! on 127.0.0.1 with free ports and temp storage, a TLS + htpasswd one
//! with a CA made here, and a fault-injecting proxy (see proxy.rs).
#![allow(dead_code)]

pub mod proxy;

use airlock::fixtures::FixtureImage;
use airlock::registry::{
    Credential, CredentialStore, Registries, Registry, RegistryConfig, RetryPolicy,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const USER: &str = "airlock";
pub const PASS: &str = "s3cret-test-pass";

pub struct TestRegistry {
    pub host: String,
    pub dir: tempfile::TempDir,
    pub ca: Option<PathBuf>,
    child: Child,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a set-up command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, a server certificate for 127.0.0.1 and a bcrypt htpasswd
/// (USER/PASS) in `dir`: `ca.crt`, `server.crt`, `server.key`, `htpasswd`.
pub fn make_tls(dir: &Path) -> PathBuf {
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=airlock test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
        ])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(p("ext.cnf"), "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("server.crt"))
        .arg("-extfile")
        .arg(p("ext.cnf")));
    let out = Command::new("htpasswd")
        .args(["-Bbn", USER, PASS])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(out.status.success());
    std::fs::write(p("htpasswd"), out.stdout).unwrap();
    p("ca.crt")
}

/// A client certificate signed by the test CA in `dir`: `client.cert`, `client.key`.
pub fn make_client_cert(dir: &Path) {
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-subj", "/CN=airlock test client", "-keyout"])
        .arg(p("client.key"))
        .arg("-out")
        .arg(p("client.csr")));
    std::fs::write(p("client-ext.cnf"), "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(p("client.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("client.cert"))
        .arg("-extfile")
        .arg(p("client-ext.cnf")));
}

impl TestRegistry {
    pub fn start() -> TestRegistry {
        Self::start_with(false)
    }
    pub fn start_secure() -> TestRegistry {
        Self::start_with(true)
    }

    /// TLS that also requires a client certificate signed by the test CA
    /// (`client.cert`/`client.key` in [`TestRegistry::dir`]), and htpasswd.
    pub fn start_mtls() -> TestRegistry {
        let reg = Self::start_with_mtls(true, true);
        make_client_cert(reg.dir.path());
        reg
    }

    /// The registry's own directory (CA, certificates, htpasswd).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn start_with(secure: bool) -> TestRegistry {
        Self::start_with_mtls(secure, false)
    }

    fn start_with_mtls(secure: bool, mtls: bool) -> TestRegistry {
        let mut dir = tempfile::tempdir().expect("temp dir");
        let ca = secure.then(|| make_tls(dir.path()));
        for _ in 0..5 {
            let port = free_port();
            let mut cfg = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test\n",
                dir.path().display()
            );
            if secure {
                let d = dir.path().display();
                cfg.push_str(&format!(
                    "  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n"
                ));
                if mtls {
                    cfg.push_str(&format!("    clientcas:\n      - {d}/ca.crt\n"));
                }
                cfg.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: airlock-test\n    path: {d}/htpasswd\n"
                ));
            }
            let cfg_path = dir.path().join("config.yml");
            std::fs::write(&cfg_path, cfg).unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg_path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("docker-registry installed (apt-get install docker-registry)");
            let mut reg = TestRegistry {
                host: format!("127.0.0.1:{port}"),
                dir,
                ca: ca.clone(),
                child,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(&reg.host).is_ok() {
                    return reg;
                }
                if let Ok(Some(_)) = reg.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = reg.child.kill();
            dir = reg.dir_take();
        }
        panic!("docker-registry did not start");
    }

    fn dir_take(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host)
    }

    /// Every `repo:tag` in the registry (no manifest is reachable by a
    /// tag when this is empty).
    pub async fn all_tags(&self) -> Vec<String> {
        let client = Registries::new(test_config());
        let mut out = Vec::new();
        if self.ca.is_some() {
            return out;
        }
        let reg = client.get(&self.host).await.unwrap();
        for repo in self.catalog().await {
            for t in reg.list_tags(&repo).await.unwrap_or_default() {
                out.push(format!("{repo}:{t}"));
            }
        }
        out
    }

    /// Repositories in the registry's catalog.
    pub async fn catalog(&self) -> Vec<String> {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            b = b.tls_certs_merge(
                reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap(),
            );
        }
        let mut req = b
            .build()
            .unwrap()
            .get(format!("{}/v2/_catalog", self.url()));
        if self.ca.is_some() {
            req = req.basic_auth(USER, Some(PASS));
        }
        let body = req.send().await.unwrap().bytes().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["repositories"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }
}

/// Fast retries so fault tests stay quick.
pub fn test_config() -> RegistryConfig {
    RegistryConfig {
        credentials: CredentialStore {
            files: Some(vec![]),
            ..Default::default()
        },
        retry: RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

pub fn secure_config(reg: &TestRegistry) -> RegistryConfig {
    let mut c = test_config();
    c.ca_files = reg.ca.iter().cloned().collect();
    c.credentials.explicit.insert(
        reg.host.clone(),
        Credential::Basic {
            username: USER.into(),
            password: PASS.into(),
        },
    );
    c
}

pub async fn client(reg: &TestRegistry, config: RegistryConfig) -> Arc<Registry> {
    Registries::new(config)
        .get(&reg.host)
        .await
        .expect("connect to the test registry")
}

/// A source registry holding the fixture set under `vendor/`.
pub async fn seeded_source() -> (TestRegistry, Vec<FixtureImage>) {
    let src = TestRegistry::start();
    let reg = client(&src, test_config()).await;
    let images = airlock::fixtures::seed(&reg, "vendor/", 1)
        .await
        .expect("seed fixtures");
    (src, images)
}

pub fn airlock_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
    c.env("DOCKER_CONFIG", "/nonexistent-airlock-test")
        .env_remove("REGISTRY_AUTH_FILE");
    c
}

/// Run the CLI; returns (exit code, stdout, stderr).
pub fn airlock(args: &[&str]) -> (i32, String, String) {
    let out = airlock_cmd().args(args).output().expect("run airlock");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

pub fn refs(src: &TestRegistry, images: &[FixtureImage]) -> Vec<String> {
    images
        .iter()
        .map(|i| format!("{}/{}:{}", src.host, i.repository, i.tag))
        .collect()
}

/// Run a command that must succeed; its stdout.
/// `skopeo copy` into a test registry (plain HTTP), every platform, digests kept.
pub fn skopeo_copy(from: &str, to: &str) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "-q",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if from.starts_with("docker://") {
        cmd.arg("--src-tls-verify=false");
    }
    sh(cmd.args([from, to]));
}

pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Export `images` from `src` into `dir/NAME` with the library.
pub async fn export_to(
    src: &TestRegistry,
    images: &[FixtureImage],
    dir: &Path,
    name: &str,
) -> PathBuf {
    let out = dir.join(name);
    let sel = airlock::selection::from_refs(&refs(src, images), &[]).unwrap();
    airlock::export::export(
        &Registries::new(test_config()),
        &sel,
        &airlock::export::ExportOptions::new(&out),
    )
    .await
    .unwrap();
    out
}

/// Run a command that must succeed, showing its stderr if it does not.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `airlock export -q -o OUT` of every fixture image, through the CLI.
pub fn cli_export(src: &TestRegistry, images: &[FixtureImage], out: &Path) {
    let mut args = vec![
        "export".to_string(),
        "-q".into(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(refs(src, images));
    let (code, _, err) = airlock(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
}

// ------------------------------------------------ OCI layout directories

/// The committed cosign test public key (signs every fixture image).
pub const COSIGN_TEST_PUB: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/cosign-test.pub");

/// Run the CLI, which must exit 0; its stdout.
pub fn airlock_ok(args: &[&str]) -> String {
    let (code, out, err) = airlock(args);
    assert_eq!(code, 0, "airlock {args:?} exited {code}: {err}");
    out
}

/// `(ref name, digest, media type)` of every descriptor in `DIR/index.json`.
pub fn layout_entries(dir: &Path) -> Vec<(Option<String>, String, String)> {
    let raw = std::fs::read(dir.join("index.json"))
        .unwrap_or_else(|e| panic!("{}/index.json: {e}", dir.display()));
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["schemaVersion"], 2, "index.json schemaVersion");
    v["manifests"]
        .as_array()
        .expect("index.json has manifests")
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .map(str::to_string),
                m["digest"].as_str().unwrap().to_string(),
                m["mediaType"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The digest `DIR/index.json` names `ref_name`, if exactly one entry has it.
pub fn layout_ref(dir: &Path, ref_name: &str) -> Option<String> {
    let hits: Vec<_> = layout_entries(dir)
        .into_iter()
        .filter(|(n, _, _)| n.as_deref() == Some(ref_name))
        .collect();
    assert!(
        hits.len() <= 1,
        "{ref_name} named twice in index.json: {hits:?}"
    );
    hits.into_iter().next().map(|(_, d, _)| d)
}

/// A blob file of a layout.
pub fn layout_blob_path(dir: &Path, digest: &airlock::digest::Digest) -> PathBuf {
    dir.join(digest.layout_path())
}

/// A layout directory is complete and sound: `oci-layout` says 1.0.0, every
/// blob file is a regular file whose sha256 is its name, and every manifest
/// `index.json` names (and everything it references, recursively) is there.
/// Returns the number of blob files.
pub fn assert_valid_layout(dir: &Path) -> usize {
    let ol: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(ol["imageLayoutVersion"], "1.0.0", "{}", dir.display());
    let blobs = dir.join("blobs/sha256");
    let mut n = 0;
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            e.file_type().unwrap().is_file(),
            "{name}: not a regular file"
        );
        let got = airlock::digest::Digest::of(&std::fs::read(e.path()).unwrap());
        assert_eq!(got.hex(), name, "blob file content does not match its name");
        n += 1;
    }
    let mut todo: Vec<String> = layout_entries(dir).into_iter().map(|e| e.1).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = todo.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        let digest: airlock::digest::Digest = d.parse().unwrap();
        let bytes = std::fs::read(layout_blob_path(dir, &digest))
            .unwrap_or_else(|e| panic!("{d} referenced but missing from the layout: {e}"));
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let descs = ["manifests", "layers", "blobs"]
                .iter()
                .filter_map(|k| v[*k].as_array())
                .flatten()
                .chain(v.get("config"))
                .chain(v.get("subject"));
            for desc in descs {
                if let Some(cd) = desc["digest"].as_str() {
                    todo.push(cd.to_string());
                }
            }
        }
    }
    n
}

/// `oci:DIR` or `oci:DIR:REF`.
pub fn oci(dir: &Path, reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!("oci:{}:{r}", dir.display()),
        None => format!("oci:{}", dir.display()),
    }
}

/// `repo:tag` at `d` is `img` byte for byte, with its platform manifests and
/// every artifact tag (signatures, attestations, referrers index) of the source.
pub async fn assert_same_image(
    s: &Registry,
    d: &Registry,
    img: &FixtureImage,
    repo: &str,
    tag: &str,
) {
    let want = s.get_manifest(&img.repository, &img.tag).await.unwrap();
    let got = d
        .get_manifest(repo, tag)
        .await
        .unwrap_or_else(|e| panic!("{repo}:{tag} at the destination: {e}"));
    assert_eq!(got.digest, img.digest, "{repo}:{tag} digest");
    assert_eq!(got.bytes, want.bytes, "{repo}:{tag} raw bytes");
    for (platform, pd) in &img.platforms {
        let a = s
            .get_manifest(&img.repository, &pd.to_string())
            .await
            .unwrap();
        let b = d
            .get_manifest(repo, &pd.to_string())
            .await
            .unwrap_or_else(|e| panic!("{repo}@{pd} ({platform}): {e}"));
        assert_eq!(a.bytes, b.bytes, "{repo}@{pd} ({platform}) raw bytes");
    }
    for (atag, digest) in &img.artifact_tags {
        assert_eq!(
            d.head_manifest(repo, atag).await.unwrap().as_ref(),
            Some(digest),
            "{repo}:{atag} (artifact of {}:{})",
            img.repository,
            img.tag
        );
    }
}
