//! Every `--json` document has the shape docs/json.md promises (the list in
//! its `keys` block is read here, so the doc and the code cannot drift).

mod common;

use common::*;
use serde_json::Value;

fn promised() -> Vec<(String, String, Vec<String>)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json.md")).unwrap();
    let block = doc
        .split("```keys\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2].split('|').map(String::from).collect(),
            )
        })
        .collect()
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every value at `path` (`a.b`, `a[].b`) in `v`.
fn at<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur = vec![v];
    for part in path.split('.') {
        let (key, each) = match part.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (part, false),
        };
        let mut next = Vec::new();
        for c in cur {
            if let Some(x) = c.get(key) {
                if each {
                    next.extend(x.as_array().into_iter().flatten());
                } else {
                    next.push(x);
                }
            } else {
                next.push(&Value::Null);
                if !c.as_object().is_some_and(|o| o.contains_key(key)) {
                    panic!("{path}: key {key:?} missing in {c}");
                }
            }
        }
        cur = next;
    }
    cur
}

fn check(command: &str, doc: &Value) {
    let mut checked = 0;
    for (c, path, types) in promised().iter().filter(|(c, _, _)| c == command) {
        let values = at(doc, path);
        assert!(
            !values.is_empty() || path.contains("[]"),
            "{c} {path}: absent in {doc}"
        );
        for v in values {
            assert!(
                types.iter().any(|t| t == type_of(v)),
                "{c} {path}: {} is not {types:?}",
                type_of(v)
            );
        }
        checked += 1;
    }
    assert!(checked > 3, "no keys promised for {command}");
    assert_eq!(doc["schema"], 1);
}

fn json(args: &[&str]) -> (i32, Value) {
    let (code, out, err) = airlock(args);
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out} / {err}"));
    (code, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_the_promised_shape() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a.tar.zst");
    let b = work.path().join("b.tar.zst");
    let refs = refs(&src, &images);
    let mut args = vec![
        "export",
        "--json",
        "-o",
        a.to_str().unwrap(),
        refs[0].as_str(),
    ];
    let (code, doc) = json(&args);
    assert_eq!(code, 0);
    check("export", &doc);
    assert_eq!(doc["command"], "export");
    assert!(doc["policy"].is_null());
    args = vec![
        "export",
        "--json",
        "-o",
        b.to_str().unwrap(),
        "--key",
        COSIGN_TEST_PUB,
        refs[0].as_str(),
        refs[2].as_str(),
    ];
    let (code, doc) = json(&args);
    assert_eq!(code, 0);
    check("export", &doc);
    assert!(doc["policy"].is_array());

    let dst = TestRegistry::start();
    let (code, doc) = json(&["import", "--json", a.to_str().unwrap(), "--to", &dst.host]);
    assert_eq!(code, 0);
    check("import", &doc);
    let (code, doc) = json(&[
        "verify",
        "--json",
        b.to_str().unwrap(),
        "--key",
        COSIGN_TEST_PUB,
    ]);
    assert_eq!(code, 0);
    check("verify", &doc);
    assert!(doc["policy"].is_array());
    let (code, doc) = json(&["inspect", "--json", b.to_str().unwrap()]);
    assert_eq!(code, 0);
    check("inspect", &doc);
    // The same image has the same fields and types in every report.
    assert_eq!(
        doc["images"][0]["artifacts"],
        json(&["verify", "--json", b.to_str().unwrap()]).1["images"][0]["artifacts"]
    );
    let (code, doc) = json(&["diff", "--json", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(code, 0);
    check("diff", &doc);

    // Errors are JSON documents too, with the usual exit code.
    let bad = work.path().join("bad.tar.zst");
    std::fs::write(&bad, b"not a bundle").unwrap();
    let (code, doc) = json(&["verify", "--json", bad.to_str().unwrap()]);
    assert_eq!(code, 3);
    check("error", &doc);
    assert_eq!(doc["verified"], false);
    assert_eq!(doc["error"]["kind"], "integrity");
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, doc) = json(&[
        "import",
        "--json",
        empty.to_str().unwrap(),
        "--to",
        &dst.host,
    ]);
    assert_eq!(code, 2);
    check("error", &doc);
    assert_eq!(doc["command"], "import");
}
