//! The binary documents itself: completions, man pages, version, exit codes.

mod common;

use common::*;

#[test]
fn completions_and_man_pages_are_generated_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = airlock_ok(&["completions", shell]);
        // Every visible subcommand is completed.
        for sub in ["export", "import", "verify", "serve", "login", "inspect"] {
            assert!(out.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let man = airlock_ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH airlock 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("serve") && man.contains("export"));
    let page = airlock_ok(&["man", "import"]);
    assert!(page.contains(".TH airlock-import"));
    assert!(
        page.contains("verify\\-first"),
        "the import page lists its flags"
    );
    let (code, _, err) = airlock(&["man", "no-such"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn version_and_exit_codes() {
    let v = airlock_ok(&["--version"]);
    assert!(v.contains("bundle format 1") && v.contains("commit"), "{v}");
    let help = airlock_ok(&["--help"]);
    for code in ["0", "1", "2", "3", "4"] {
        assert!(help.contains(code), "exit code {code} not in --help");
    }
}

/// Without a terminal, long phases write a progress line every few
/// seconds (here every 0.3 s) with bytes, rate and ETA, then a last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_without_a_terminal() {
    use common::proxy::{Fault, Proxy, Rule};
    let (src, images) = seeded_source().await;
    let s = client(&src, test_config()).await;
    let platform = s
        .get_manifest(&images[0].repository, &images[0].platforms[0].1.to_string())
        .await
        .unwrap();
    let layer = platform.view().unwrap().layers[0].digest.clone();
    let proxy = Proxy::start(
        &src.host,
        vec![Rule {
            method: "GET",
            path_contains: format!("/blobs/{layer}"),
            fault: Fault::Stall,
            times: usize::MAX,
        }],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("p.tar.zst");
    let child = airlock_cmd()
        .env("AIRLOCK_PROGRESS_INTERVAL", "0.3")
        .args(["export", "-o", out.to_str().unwrap()])
        .arg(format!(
            "{}/{}:{}",
            proxy.host, images[0].repository, images[0].tag
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    proxy.release();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("export: ")).collect();
    assert!(lines.len() >= 2, "progress lines: {err}");
    assert!(lines.iter().any(|l| l.contains("/s, ETA")), "{err}");
    assert!(lines.last().unwrap().contains("done in"), "{err}");
    assert!(
        !err.contains('\r') && !err.contains('\x1b'),
        "no terminal codes in a log"
    );
}

#[test]
fn the_binary_documents_its_file_formats() {
    let sel = airlock_ok(&["help", "selection"]);
    assert!(sel.contains("versions:") && sel.contains("sets:"), "{sel}");
    let pol = airlock_ok(&["help", "policy"]);
    assert!(pol.contains("rules:"), "{pol}");
    assert!(airlock_ok(&["help", "json"]).contains("\"schema\": 1"));
    assert!(airlock_ok(&["help", "format"]).contains("seek table"));
    // Commands keep clap's own help.
    assert!(airlock_ok(&["help", "export"]).contains("--volume-size"));
}

/// `-v` logs every registry request, never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_logs_requests_without_secrets() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("v.tar.zst");
    let reference = format!("{}/{}:{}", src.host, images[0].repository, images[0].tag);
    let (code, _, err) = airlock(&[
        "export",
        "-v",
        "--creds",
        "someone:Verbose-s3cret",
        "-o",
        out.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(code, 0, "{err}");
    let manifest_line = format!(
        "GET http://{}/v2/{}/manifests/{}",
        src.host, images[0].repository, images[0].tag
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with(&manifest_line) && l.contains("-> 200")),
        "{err}"
    );
    assert!(
        err.contains("/blobs/sha256:"),
        "blob requests are logged too"
    );
    assert!(!err.contains("Verbose-s3cret"));
}
