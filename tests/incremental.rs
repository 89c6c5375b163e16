//! Incremental bundles: month 2 leaves out the layers month 1 carried;
//! import checks the site has them (mounting across repositories) before
//! anything is pushed, and refuses, naming them, when it does not.

mod common;

use airlock::fixtures::FixtureImage;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn export(src: &TestRegistry, images: &[&FixtureImage], out: &Path, extra: &[String]) -> String {
    let mut args = vec!["export".to_string(), "-o".into(), out.display().to_string()];
    args.extend(extra.iter().cloned());
    for i in images {
        args.push(format!("{}/{}:{}", src.host, i.repository, i.tag));
    }
    let (code, stdout, err) = airlock(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    stdout
}

fn import(bundle: &Path, to: &str) -> (i32, String, String) {
    airlock(&["import", bundle.to_str().unwrap(), "--to", to])
}

fn index(p: &Path) -> (airlock::bundle::BundleIndex, airlock::digest::Digest) {
    airlock::inspect::read_index(p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn month_two_carries_only_what_is_new() {
    let (src, images) = seeded_source().await;
    // operator 1.0.0 and 1.1.0 share their base and deps layers; every
    // image of one architecture shares the base layer.
    let (op1, op2, agent, gateway) = (&images[0], &images[1], &images[2], &images[3]);
    let work = tempfile::tempdir().unwrap();
    let m1 = work.path().join("m1.tar.zst");
    export(&src, &[op1, agent, gateway], &m1, &[]);
    let full = work.path().join("m2-full.tar.zst");
    export(&src, &[op2, agent, gateway], &full, &[]);
    let m2 = work.path().join("m2.tar.zst");
    let out = export(
        &src,
        &[op2, agent, gateway],
        &m2,
        &["--base".into(), m1.display().to_string()],
    );
    assert!(out.contains("incremental:"), "{out}");

    let (i1, d1) = index(&m1);
    let (i2, _) = index(&m2);
    let carried: std::collections::HashSet<_> =
        i1.members.iter().map(|m| m.digest.clone()).collect();
    assert!(!i2.external.is_empty());
    for e in &i2.external {
        assert!(
            carried.contains(&e.digest),
            "{} was not in month 1",
            e.digest
        );
        assert_eq!(e.from.as_ref(), Some(&d1));
        assert!(
            i2.member(&e.digest).is_none(),
            "{} is external and a member",
            e.digest
        );
    }
    assert_eq!(i2.base[0].digest, d1);
    let (full_len, inc_len) = (
        std::fs::metadata(&full).unwrap().len(),
        std::fs::metadata(&m2).unwrap().len(),
    );
    assert!(
        inc_len * 3 < full_len,
        "incremental {inc_len} vs full {full_len}"
    );

    // inspect: one table row per image, with what signs it.
    let (code, text, _) = airlock(&["inspect", m1.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        text.contains("REPOSITORY") && text.contains("SIGNED BY"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with(&op1.repository) && l.contains(&op1.tag))
        .unwrap_or_else(|| panic!("no row for {}: {text}", op1.repository));
    assert!(row.contains("linux/amd64") && row.contains("sig"), "{row}");

    // `airlock diff` says what month 2 changes and what it adds.
    let (code, out, err) = airlock(&[
        "diff",
        m1.to_str().unwrap(),
        full.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        d["added"],
        serde_json::json!([format!("{}:{}", op2.repository, op2.tag)])
    );
    assert_eq!(
        d["removed"],
        serde_json::json!([format!("{}:{}", op1.repository, op1.tag)])
    );
    assert_eq!(d["unchanged"], 2);
    let new_bytes = d["newBytes"].as_u64().unwrap();
    let carried: u64 = i2
        .members
        .iter()
        .filter(|m| m.path.starts_with("blobs/"))
        .map(|m| m.size)
        .sum();
    // The incremental bundle carries what is new, plus the manifests,
    // configs and signatures that always travel.
    assert!(
        new_bytes > 0 && new_bytes <= carried,
        "new {new_bytes}, carried {carried}"
    );
    let (_, text, _) = airlock(&["diff", m1.to_str().unwrap(), full.to_str().unwrap()]);
    assert!(
        text.contains(&format!("+ {}:{}", op2.repository, op2.tag)),
        "{text}"
    );

    // The base given as its bundle index alone (kept on the connected side).
    let kept = work.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    sh(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -xf - -C '{}' airlock-bundle.json",
        m1.display(),
        kept.display()
    )));
    let m2b = work.path().join("m2b.tar.zst");
    export(
        &src,
        &[op2, agent, gateway],
        &m2b,
        &[
            "--base".into(),
            kept.join("airlock-bundle.json").display().to_string(),
        ],
    );
    assert_eq!(index(&m2b).0.external, i2.external);

    // Verify alone: intact, and says what it expects the site to have.
    let (code, out, err) = airlock(&["verify", m2.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("relies on {} blobs", i2.external.len())),
        "{out}"
    );

    // Into an empty registry: refused before anything is pushed, every
    // missing blob named with the bundle that carried it.
    let empty = TestRegistry::start();
    let (code, _, err) = import(&m2, &empty.host);
    assert_ne!(code, 0);
    assert!(
        err.contains("lacks") && err.contains(&d1.to_string()),
        "{err}"
    );
    for e in &i2.external {
        assert!(
            err.contains(&e.digest.to_string()),
            "{} not named: {err}",
            e.digest
        );
    }
    assert!(empty.catalog().await.is_empty(), "nothing pushed");

    // Into the site that imported month 1: complete, digests as at the source.
    let site = TestRegistry::start();
    let (code, _, err) = import(&m1, &site.host);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = import(&m2, &site.host);
    assert_eq!(code, 0, "{err}");
    let s = client(&src, test_config()).await;
    let d = client(&site, test_config()).await;
    for img in [op2, agent, gateway] {
        assert_same_image(&s, &d, img, &img.repository, &img.tag).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_held_in_another_repository_are_mounted() {
    let (src, images) = seeded_source().await;
    let (op1, agent, gateway) = (&images[0], &images[2], &images[3]);
    let work = tempfile::tempdir().unwrap();
    // Month 1 had no operator; the operator shares the base layer with them.
    let m1 = work.path().join("m1.tar.zst");
    export(&src, &[agent, gateway], &m1, &[]);
    let m2: PathBuf = work.path().join("m2.tar.zst");
    export(
        &src,
        &[op1],
        &m2,
        &["--base".into(), m1.display().to_string()],
    );
    let (i2, _) = index(&m2);
    assert!(!i2.external.is_empty(), "the shared base layer is left out");

    let site = TestRegistry::start();
    assert_eq!(import(&m1, &format!("{}/mirror", site.host)).0, 0);
    let (code, _, err) = import(&m2, &format!("{}/mirror", site.host));
    assert_eq!(code, 0, "{err}");
    let s = client(&src, test_config()).await;
    let d = client(&site, test_config()).await;
    assert_same_image(&s, &d, op1, &format!("mirror/{}", op1.repository), &op1.tag).await;
    // The external layer is now in the operator's repository too.
    for e in &i2.external {
        let desc = airlock::oci::Descriptor::blob(e.digest.clone(), e.size);
        assert!(d
            .blob_exists(&format!("mirror/{}", op1.repository), &desc)
            .await
            .unwrap());
    }
}

/// The site's inventory, signed on the disconnected side and carried back,
/// is a base too: month 2 leaves out what the site's registry holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_site_inventory_is_a_base() {
    let (src, images) = seeded_source().await;
    let (op1, op2, agent) = (&images[0], &images[1], &images[2]);
    let work = tempfile::tempdir().unwrap();
    let m1 = work.path().join("m1.tar.zst");
    export(&src, &[op1, agent], &m1, &[]);
    let site = TestRegistry::start();
    assert_eq!(import(&m1, &site.host).0, 0);

    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/cosign-test.key");
    let inv = work.path().join("site.json");
    let (code, _, err) = airlock(&[
        "inventory",
        "--registry",
        &site.host,
        "-o",
        inv.to_str().unwrap(),
        "--sign-key",
        key,
    ]);
    assert_eq!(code, 0, "{err}");
    let inv_digest = airlock::digest::Digest::of(&std::fs::read(&inv).unwrap());

    let m2 = work.path().join("m2.tar.zst");
    export(
        &src,
        &[op2, agent],
        &m2,
        &[
            "--base-inventory".into(),
            inv.display().to_string(),
            "--inventory-key".into(),
            COSIGN_TEST_PUB.into(),
        ],
    );
    let (i2, _) = index(&m2);
    assert!(!i2.external.is_empty());
    assert!(i2
        .external
        .iter()
        .all(|e| e.from.as_ref() == Some(&inv_digest)));
    assert_eq!(i2.base[0].kind, "inventory");
    let (code, _, err) = import(&m2, &site.host);
    assert_eq!(code, 0, "{err}");
    let s = client(&src, test_config()).await;
    let d = client(&site, test_config()).await;
    assert_same_image(&s, &d, op2, &op2.repository, &op2.tag).await;

    // An inventory edited after it was signed is refused.
    let mut text = std::fs::read_to_string(&inv).unwrap();
    text = text.replacen("\"size\": ", "\"size\": 1", 1);
    std::fs::write(&inv, text).unwrap();
    let m3 = work.path().join("m3.tar.zst");
    let mut args = vec!["export".to_string(), "-o".into(), m3.display().to_string()];
    args.extend([
        "--base-inventory".into(),
        inv.display().to_string(),
        "--inventory-key".into(),
        COSIGN_TEST_PUB.into(),
    ]);
    args.push(format!("{}/{}:{}", src.host, op2.repository, op2.tag));
    let (code, _, err) = airlock(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 4, "{err}");
    assert!(!m3.exists());
}
