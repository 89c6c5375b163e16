//! `import --audit-log`: one JSON line per import, appended, never a secret.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_imports_append_two_lines() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("m.tar.zst");
    cli_export(&src, &images[..2], &bundle);
    let (_, digest) = airlock::inspect::read_index(&bundle).unwrap();
    let dst = TestRegistry::start();
    let log = work.path().join("audit.jsonl");
    let run = |to: &str| {
        airlock(&[
            "import",
            bundle.to_str().unwrap(),
            "--to",
            to,
            "--audit-log",
            log.to_str().unwrap(),
            "--key",
            COSIGN_TEST_PUB,
            "--creds",
            "someone:hunter2-secret",
        ])
    };
    let (code, _, err) = run(&dst.host);
    assert_eq!(code, 0, "{err}");
    // The same bundle under another template whose repository is not valid: refused.
    let (code, _, _) = run(&format!("{}/Bad_Name", dst.host));
    assert_ne!(code, 0);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("hunter2"), "a secret reached the audit log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let ok = &lines[0];
    assert_eq!(ok["schema"], 1);
    assert_eq!(ok["command"], "import");
    assert_eq!(ok["result"], "ok");
    assert_eq!(ok["bundleDigest"], digest.to_string());
    assert_eq!(ok["trust"]["keys"][0]["path"], COSIGN_TEST_PUB);
    assert!(ok["trust"]["keys"][0]["sha256"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let imgs = ok["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 2);
    for (line, img) in imgs.iter().zip(&images[..2]) {
        assert_eq!(line["digest"], img.digest.to_string());
        assert_eq!(line["verdict"], "admitted");
        assert!(line["destination"].as_str().unwrap().starts_with(&dst.host));
    }
    assert!(ok["counts"]["manifestsPushed"].as_u64().unwrap() > 0);
    assert!(!ok["user"].as_str().unwrap().is_empty() && !ok["host"].as_str().unwrap().is_empty());
    let failed = &lines[1];
    assert_eq!(failed["result"], "error");
    assert!(
        failed["error"].as_str().unwrap().contains("Bad_Name"),
        "{failed}"
    );
}
