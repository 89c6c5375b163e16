//! Selection against a registry seeded with a vendor's tag shapes (both
//! version schemes, `-raw` variants, `latest`/`latest-raw`, cosign
//! signatures, 12 image tags per repository): rules, sets, several files,
//! optional and required tags, the dry-run plan against what the export
//! writes, lock files and a moved tag, platform errors, tag templates.

mod common;

use airlock::fixtures::{FixtureImage, VendorTag};
use common::*;
use serde_json::Value;
use std::path::Path;

async fn vendor_source() -> (TestRegistry, Vec<FixtureImage>) {
    let src = TestRegistry::start();
    let reg = client(&src, test_config()).await;
    let images = airlock::fixtures::seed_vendor(&reg, "vendor/")
        .await
        .expect("seed the vendor tags");
    (src, images)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// `export --dry-run --json ARGS`: exit code, the plan, stderr.
fn dry_run(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["export", "--dry-run", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = airlock(&all);
    let plan = serde_json::from_str(&out).unwrap_or(Value::Null);
    (code, plan, err)
}

/// `(repository's last component, tag)` of every planned image, in order.
fn picked(plan: &Value) -> Vec<(String, String)> {
    plan["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in {plan}"))
        .iter()
        .map(|i| {
            let repo = i["repository"].as_str().unwrap();
            (
                repo.rsplit('/').next().unwrap().to_string(),
                i["tag"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

fn tags(plan: &Value) -> Vec<String> {
    picked(plan).into_iter().map(|(_, t)| t).collect()
}

const SETS: &str = r#"
sets:
  kubernetes-observability: [operator, activegate]
  application-observability: [operator, activegate, codemodules]
images:
  - ref: {H}/vendor/operator
    versions: ">=v1.9 <v1.11"
  - ref: {H}/vendor/activegate
    include: ["1.*"]
    exclude: ["*-raw", "latest*"]
    newest: 2
  - ref: {H}/vendor/codemodules
    name: codemodules
    tags: ["1.301.70.20241127-162512", "1.999.0.20990101-000000"]
    optional: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_sets_and_several_files_pick_vendor_tags() {
    let (src, _) = vendor_source().await;
    let h = src.host.as_str();
    let work = tempfile::tempdir().unwrap();
    let a = write(work.path(), "a.yaml", &SETS.replace("{H}", h));
    let b = write(
        work.path(),
        "b.yaml",
        &format!(
            "sets:\n  newest-only: [oneagent]\nimages:\n  - ref: {h}/vendor/codemodules\n    name: oneagent\n    newest: 1\n    exclude: [\"*-raw\"]\n"
        ),
    );

    // A range across v1.9 / v1.10 in version order (text order would put
    // v1.10 before v1.9); the release candidate is not in it.
    let (code, plan, err) = dry_run(&["-f", &a, "--set", "kubernetes-observability"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        picked(&plan),
        [
            ("operator", "v1.9.0"),
            ("operator", "v1.9.1"),
            ("operator", "v1.9.2"),
            ("operator", "v1.10.0"),
            ("operator", "v1.10.1"),
            ("operator", "v1.10.2"),
            ("activegate", "1.303.5.20250105-080000"),
            ("activegate", "1.305.2.20250301-120000"),
        ]
        .map(|(r, t)| (r.to_string(), t.to_string()))
    );
    // Nothing from a cosign tag, ever: every tag listed is an image tag.
    assert!(tags(&plan).iter().all(|t| !t.starts_with("sha256-")));

    // A set across two files plus a handle; a missing optional tag is a
    // warning and the rest of the image is exported.
    let (code, plan, err) = dry_run(&[
        "-f",
        &a,
        "-f",
        &b,
        "--set",
        "application-observability",
        "--set",
        "newest-only",
    ]);
    assert_eq!(code, 0, "{err}");
    let got = picked(&plan);
    assert_eq!(got.len(), 6 + 2 + 1 + 1, "{got:?}");
    assert!(got.contains(&("codemodules".into(), "1.301.70.20241127-162512".into())));
    assert!(
        got.contains(&("codemodules".into(), "2.0.1.20250401-090000".into())),
        "newest 1 of codemodules without -raw: {got:?}"
    );
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("codemodules:1.999.0.20990101-000000 not found; optional"),
        "{warnings}"
    );

    // Every image of every file without --set; -raw and latest-raw by glob.
    let c = write(
        work.path(),
        "c.yaml",
        &format!("images:\n  - ref: {h}/vendor/activegate\n    include: [\"*-raw\"]\n"),
    );
    let (code, plan, err) = dry_run(&["-f", &c]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        tags(&plan),
        vec![
            "1.301.70.20241127-162512-raw",
            "1.303.5.20250105-080000-raw",
            "1.305.2.20250301-120000-raw",
            "2.0.1.20250401-090000-raw",
            "latest-raw"
        ]
    );

    // An unknown set names the known ones; a missing required tag names
    // the image and the way out; a rule matching nothing shows what is there.
    let (code, _, err) = dry_run(&["-f", &a, "-f", &b, "--set", "full-stack"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--set full-stack")
            && err.contains("application-observability, kubernetes-observability, newest-only")
            && err.contains("activegate, codemodules, oneagent, operator"),
        "{err}"
    );
    let required = write(
        work.path(),
        "required.yaml",
        &format!("images:\n  - ref: {h}/vendor/operator\n    tags: [\"v1.10.1\", \"v9.9.9\"]\n"),
    );
    let (code, _, err) = dry_run(&["-f", &required]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{h}/vendor/operator:v9.9.9 not found")) && err.contains("optional"),
        "{err}"
    );
    let none = write(
        work.path(),
        "none.yaml",
        &format!("images:\n  - ref: {h}/vendor/operator\n    versions: \">=3\"\n"),
    );
    let (code, _, err) = dry_run(&["-f", &none]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no tag matches versions \">=3\"") && err.contains("v2.0.0"),
        "{err}"
    );
}

/// The fields a bundle index keeps of an image, from the plan or the index.
fn image_view(v: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in [
        "source",
        "repository",
        "tag",
        "digest",
        "sourceDigest",
        "mediaType",
        "platforms",
        "artifacts",
        "totalSize",
    ] {
        out.insert(k.into(), v[k].clone());
    }
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_is_what_the_export_writes_and_a_lock_refuses_a_moved_tag() {
    let (src, _) = vendor_source().await;
    let h = src.host.as_str();
    let work = tempfile::tempdir().unwrap();
    let sel = write(
        work.path(),
        "images.yaml",
        &format!(
            "images:\n  - ref: {h}/vendor/operator\n    versions: \">=v1.10 <v2\"\n    platforms: [linux/arm64]\n  - ref: {h}/vendor/activegate\n    newest: 1\n    exclude: [\"*-raw\"]\n"
        ),
    );
    let out = work.path().join("b.tar.zst");
    let o = out.to_str().unwrap();
    let lock = work.path().join("images.lock");
    let l = lock.to_str().unwrap();

    let (code, plan, err) = dry_run(&["-f", &sel, "-o", o, "--key", COSIGN_TEST_PUB]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.exists(), "a dry run writes nothing");
    let verdicts = plan["policy"].as_array().expect("a verdict per image");
    assert_eq!(verdicts.len(), 6);
    assert!(verdicts.iter().all(|v| v["admitted"] == true), "{plan}");
    assert!(plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["signatures"].as_u64() >= Some(1)));

    airlock_ok(&["export", "-q", "-f", &sel, "-o", o, "--lock", l]);
    let shown = airlock_ok(&["inspect", "--json", o]);
    let index: Value = serde_json::from_str(&shown).unwrap();
    let written: Vec<Value> = index["index"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(image_view)
        .collect();
    let planned: Vec<Value> = plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(image_view)
        .collect();
    assert_eq!(planned, written, "the plan is what the export wrote");
    let members: u64 = index["index"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["path"].as_str().unwrap().starts_with("blobs/"))
        .map(|m| m["size"].as_u64().unwrap())
        .sum();
    assert_eq!(
        plan["totalBytes"].as_u64().unwrap(),
        members,
        "the planned size is the bundle's blobs and manifests"
    );

    // The lock lists every tag with the digest it pointed to and the
    // platforms kept; --locked exports exactly that.
    let locked: Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
    let entries = locked["images"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    let v1101 = entries
        .iter()
        .find(|e| e["tag"] == "v1.10.1")
        .expect("v1.10.1 locked");
    assert_eq!(v1101["platforms"], serde_json::json!(["linux/arm64"]));
    let out2 = work.path().join("again.tar.zst");
    airlock_ok(&["export", "-q", "--locked", l, "-o", out2.to_str().unwrap()]);
    let again: Value =
        serde_json::from_str(&airlock_ok(&["inspect", "--json", out2.to_str().unwrap()])).unwrap();
    assert_eq!(
        again["index"]["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(image_view)
            .collect::<Vec<_>>(),
        written
    );

    // The vendor moves v1.10.1: --locked refuses, naming the tag and both digests.
    let reg = client(&src, test_config()).await;
    let moved = airlock::fixtures::push_vendor_tag(
        &reg,
        "vendor/operator",
        "v1.10.1",
        VendorTag {
            archs: &["amd64", "arm64"],
            sign_index: true,
            sign_platforms: false,
            salt: 1,
        },
    )
    .await
    .unwrap();
    let out3 = work.path().join("moved.tar.zst");
    for dry in [false, true] {
        let mut args = vec!["export", "--locked", l, "-o", out3.to_str().unwrap()];
        if dry {
            args.push("--dry-run");
        }
        let (code, _, err) = airlock(&args);
        assert_eq!(code, 1, "{err}");
        let was = v1101["digest"].as_str().unwrap();
        assert!(
            err.contains(&format!("{h}/vendor/operator:v1.10.1 moved"))
                && err.contains(was)
                && err.contains(&moved.digest.to_string()),
            "{err}"
        );
        assert!(!out3.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platforms_tag_templates_and_index_signatures() {
    let (src, images) = vendor_source().await;
    let dst = TestRegistry::start();
    let h = src.host.as_str();
    let work = tempfile::tempdir().unwrap();
    let find = |repo: &str, tag: &str| {
        images
            .iter()
            .find(|i| i.repository == format!("vendor/{repo}") && i.tag == tag)
            .unwrap()
            .clone()
    };

    // --platform applies to selection files too; matching nothing names
    // what the image has; a single-arch image that does not match is refused.
    let ag = write(
        work.path(),
        "ag.yaml",
        &format!(
            "images:\n  - ref: {h}/vendor/activegate\n    tags: [\"1.305.2.20250301-120000\"]\n"
        ),
    );
    let (code, _, err) = dry_run(&["-f", &ag, "--platform", "linux/s390x"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("activegate:1.305.2.20250301-120000: no platform matches")
            && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    let (code, _, err) = dry_run(&[
        &format!("{h}/vendor/codemodules:1.305.2.20250301-120000"),
        "--platform",
        "linux/arm64",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("codemodules:1.305.2.20250301-120000 is a single-platform image (linux/amd64), not linux/arm64: refused"),
        "{err}"
    );
    let (code, plan, err) = dry_run(&[
        &format!("{h}/vendor/codemodules:1.305.2.20250301-120000"),
        "--platform",
        "linux/amd64",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tags(&plan), vec!["1.305.2.20250301-120000"]);

    // singlePlatform: the arm64 manifest itself, with its own signature.
    let sel = write(
        work.path(),
        "images.yaml",
        &format!(
            "images:\n  - ref: {h}/vendor/activegate\n    tags: [\"1.305.2.20250301-120000\"]\n    platforms: [linux/arm64]\n    singlePlatform: true\n    tagTemplate: \"{{version}}-{{date}}\"\n    target: dynatrace/activegate\n  - ref: {h}/vendor/operator\n    versions: \">=v1.10.1 <v1.11\"\n"
        ),
    );
    let out = work.path().join("b.tar.zst");
    let o = out.to_str().unwrap();
    // An index signature satisfies --require-signatures (operator signs only its index).
    airlock_ok(&[
        "export",
        "-q",
        "-f",
        &sel,
        "-o",
        o,
        "--key",
        COSIGN_TEST_PUB,
        "--require-signatures",
    ]);
    let ag_img = find("activegate", "1.305.2.20250301-120000");
    let arm64 = &ag_img
        .platforms
        .iter()
        .find(|(p, _)| p == "linux/arm64")
        .unwrap()
        .1;
    let index: Value = serde_json::from_str(&airlock_ok(&["inspect", "--json", o])).unwrap();
    let first = &index["index"]["images"][0];
    assert_eq!(first["digest"], arm64.to_string());
    assert_eq!(first["platformOf"], ag_img.digest.to_string());
    assert!(first["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["kind"] == "signature" && a["subject"] == arm64.to_string()));
    let shown = airlock_ok(&["inspect", o]);
    assert!(
        shown.contains(&format!("out of the vendor index {}", ag_img.digest))
            && shown.contains("will not verify against it"),
        "{shown}"
    );

    // Tags at the destination: --tag-template wins over the file's; the
    // file's target goes under the --to prefix; signatures verify at the
    // renamed tags (they are named by digest, which never changes).
    let created = index["index"]["created"].as_str().unwrap();
    let date: String = created[..10]
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let (code, dest, err) = dry_run(&["-f", &sel, "--to", &format!("{}/mirror", dst.host)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        dest["images"][0]["destination"],
        format!(
            "{}/mirror/dynatrace/activegate:1.305.2.20250301-120000-{date}",
            dst.host
        )
        .as_str(),
        "dry-run dates the tag today, like the export it plans"
    );
    airlock_ok(&["import", "-q", o, "--to", &format!("{}/mirror", dst.host)]);
    let ag_ref = format!(
        "docker://{}/mirror/dynatrace/activegate:1.305.2.20250301-120000-{date}",
        dst.host
    );
    airlock_ok(&["verify", &ag_ref, "--key", COSIGN_TEST_PUB]);
    airlock_ok(&[
        "import",
        "-q",
        o,
        "--to",
        &format!("{}/site", dst.host),
        "--tag-template",
        "{tag}-mirrored",
    ]);
    for tag in ["v1.10.1-mirrored", "v1.10.2-mirrored"] {
        airlock_ok(&[
            "verify",
            &format!("docker://{}/site/vendor/operator:{tag}", dst.host),
            "--key",
            COSIGN_TEST_PUB,
        ]);
    }
    let d = client(&dst, test_config()).await;
    assert_eq!(
        d.head_manifest("site/vendor/operator", "v1.10.1-mirrored")
            .await
            .unwrap(),
        Some(find("operator", "v1.10.1").digest),
        "same digest under the new tag"
    );
    assert_eq!(
        d.head_manifest("site/vendor/operator", "v1.10.1")
            .await
            .unwrap(),
        None,
        "the template replaces the tag"
    );
    // Control: the verification that passed is the key's, a wrong key fails.
    let other_key = work.path().join("other.pub");
    let key = sh(std::process::Command::new("openssl").args([
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
    ]));
    let key_file = work.path().join("other.key");
    std::fs::write(&key_file, key).unwrap();
    sh(std::process::Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&key_file)
        .arg("-out")
        .arg(&other_key));
    let (code, _, err) = airlock(&[
        "verify",
        &format!(
            "docker://{}/site/vendor/operator:v1.10.1-mirrored",
            dst.host
        ),
        "--key",
        other_key.to_str().unwrap(),
    ]);
    assert_eq!(code, 4, "{err}");

    // An unsigned image under --require-signatures: the policy exit code.
    let (code, _, err) = airlock(&[
        "export",
        "-o",
        work.path().join("u.tar.zst").to_str().unwrap(),
        "--require-signatures",
        &format!("{h}/vendor/operator:v1.8.0"),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("operator:v1.8.0"), "{err}");
    // Signed on the index only: one summary line, no per-platform warning.
    let (code, _, err) = airlock(&[
        "export",
        "-o",
        work.path().join("s.tar.zst").to_str().unwrap(),
        &format!("{h}/vendor/operator:v1.10.1"),
        &format!("{h}/vendor/operator:v1.10.2"),
    ]);
    assert_eq!(code, 0, "{err}");
    let notes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("no signature of their own"))
        .collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(!err.contains("UNSIGNED"), "{err}");
}
