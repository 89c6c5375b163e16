//! Registry access as the containers tools do it: `login`/`logout` writing
//! the auth file skopeo reads, `--authfile`/`REGISTRY_AUTH_FILE`, `--creds`,
//! `--cert-dir` with a client certificate (mTLS), certs.d per host,
//! `--tls-verify=false`.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Run the CLI with `stdin` on its standard input.
fn airlock_stdin(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = airlock_cmd();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn seeded(
    reg: &TestRegistry,
    config: airlock::registry::RegistryConfig,
) -> Vec<airlock::fixtures::FixtureImage> {
    let c = client(reg, config).await;
    airlock::fixtures::seed(&c, "vendor/", 1).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_writes_the_auth_file_skopeo_reads_and_export_uses_it() {
    let sec = TestRegistry::start_secure();
    let images = seeded(&sec, secure_config(&sec)).await;
    let work = tempfile::tempdir().unwrap();
    let authfile = work.path().join("auth.json");
    let ca = sec.dir().join("ca.crt");
    let (af, ca_s) = (authfile.to_str().unwrap(), ca.to_str().unwrap());

    // A wrong password is refused and nothing is saved.
    let (code, _, err) = airlock_stdin(
        &[
            "login",
            &sec.host,
            "-u",
            USER,
            "--password-stdin",
            "--authfile",
            af,
            "--ca-file",
            ca_s,
        ],
        "wrong\n",
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains(&sec.host), "{err}");
    assert!(!authfile.exists());

    let (code, out, err) = airlock_stdin(
        &[
            "login",
            &sec.host,
            "-u",
            USER,
            "--password-stdin",
            "--authfile",
            af,
            "--ca-file",
            ca_s,
        ],
        &format!("{PASS}\n"),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Login Succeeded"), "{out}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&authfile).unwrap()).unwrap();
    assert!(saved["auths"][&sec.host]["auth"].is_string(), "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&authfile).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "credentials must not be world-readable");
    }

    // skopeo reads the same file.
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let img = &images[0];
    let reference = format!("{}/{}:{}", sec.host, img.repository, img.tag);
    sh(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--authfile",
        af,
        "--cert-dir",
        certs.to_str().unwrap(),
        &format!("docker://{reference}"),
    ]));

    // airlock export with --authfile, and with REGISTRY_AUTH_FILE.
    let out1 = work.path().join("a.tar.zst");
    let (code, _, err) = airlock(&[
        "export",
        "-q",
        "--authfile",
        af,
        "--ca-file",
        ca_s,
        "-o",
        out1.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(code, 0, "{err}");
    let out2 = work.path().join("b.tar.zst");
    let o = airlock_cmd()
        .env("REGISTRY_AUTH_FILE", af)
        .args([
            "export",
            "-q",
            "--cert-dir",
            certs.to_str().unwrap(),
            "-o",
            out2.to_str().unwrap(),
            &reference,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (index, _) = airlock::inspect::read_index(&out2).unwrap();
    assert_eq!(index.images[0].digest, img.digest);

    // logout removes the entry; the export is then refused by the registry.
    let (code, out, err) = airlock(&["logout", &sec.host, "--authfile", af]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Removed"), "{out}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&authfile).unwrap()).unwrap();
    assert!(saved["auths"].get(&sec.host).is_none());
    let out3 = work.path().join("c.tar.zst");
    let (code, _, err) = airlock(&[
        "export",
        "-q",
        "--authfile",
        af,
        "--ca-file",
        ca_s,
        "-o",
        out3.to_str().unwrap(),
        &reference,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains(&sec.host), "{err}");

    // --creds, and --tls-verify=false instead of the CA.
    let out4 = work.path().join("d.tar.zst");
    let (code, _, err) = airlock(&[
        "export",
        "-q",
        "--creds",
        &format!("{USER}:{PASS}"),
        "--tls-verify=false",
        "-o",
        out4.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_cert_dir_and_certs_d() {
    let reg = TestRegistry::start_mtls();
    let d = reg.dir();
    let mut config = secure_config(&reg);
    let images = seeded(&reg, {
        // The registry's own directory holds ca.crt, server.* and client.*:
        // a cert dir of its own for the seeding client.
        let dir = d.join("seed-certs");
        std::fs::create_dir(&dir).unwrap();
        for f in ["ca.crt", "client.cert", "client.key"] {
            std::fs::copy(d.join(f), dir.join(f)).unwrap();
        }
        config.cert_dirs = vec![dir];
        config
    })
    .await;
    let img = &images[0];
    let reference = format!("{}/{}:{}", reg.host, img.repository, img.tag);
    let work = tempfile::tempdir().unwrap();

    // Without a client certificate the registry refuses the connection.
    let ca_only = work.path().join("ca-only");
    std::fs::create_dir(&ca_only).unwrap();
    std::fs::copy(d.join("ca.crt"), ca_only.join("ca.crt")).unwrap();
    let out = work.path().join("x.tar.zst");
    let (code, _, _) = airlock(&[
        "export",
        "-q",
        "--creds",
        &format!("{USER}:{PASS}"),
        "--cert-dir",
        ca_only.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        &reference,
    ]);
    assert_ne!(code, 0);

    // --cert-dir with ca.crt + client.cert + client.key.
    let full = work.path().join("full");
    std::fs::create_dir(&full).unwrap();
    for f in ["ca.crt", "client.cert", "client.key"] {
        std::fs::copy(d.join(f), full.join(f)).unwrap();
    }
    let (code, _, err) = airlock(&[
        "export",
        "-q",
        "--creds",
        &format!("{USER}:{PASS}"),
        "--cert-dir",
        full.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(code, 0, "{err}");

    // certs.d: ROOT/HOST:PORT/ read for that host only (library config; the
    // CLI reads /etc/containers/certs.d and /etc/docker/certs.d).
    let root = work.path().join("certs.d");
    std::fs::create_dir_all(root.join(&reg.host)).unwrap();
    for f in ["ca.crt", "client.cert", "client.key"] {
        std::fs::copy(d.join(f), root.join(&reg.host).join(f)).unwrap();
    }
    let mut config = test_config();
    config.certs_d = vec![root];
    config.credentials.explicit.insert(
        reg.host.clone(),
        airlock::registry::auth::Credential::Basic {
            username: USER.into(),
            password: PASS.into(),
        },
    );
    let c = client(&reg, config).await;
    assert_eq!(
        c.head_manifest(&img.repository, &img.tag).await.unwrap(),
        Some(img.digest.clone())
    );
}
