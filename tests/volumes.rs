//! Bundles cut into volumes for removable media: each volume no larger than
//! asked, self-describing, readable by standard tools, verifiable alone;
//! imported in any order, from a directory or a stream; a missing, foreign
//! or damaged volume refused before anything is pushed.

mod common;

use airlock::bundle::BundleIndex;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Export the fixture set whole (to learn its sizes), then cut into volumes
/// small enough that the largest layer spans several of them.
fn export_volumes(
    src: &TestRegistry,
    images: &[airlock::fixtures::FixtureImage],
    dir: &Path,
) -> (Vec<PathBuf>, u64, BundleIndex) {
    let whole = dir.join("whole.tar.zst");
    cli_export(src, images, &whole);
    let (index, _) = airlock::inspect::read_index(&whole).unwrap();
    let largest = index.members.iter().map(|m| m.size).max().unwrap();
    let index_len = index.to_bytes().len() as u64;
    let size = (largest / 2).max(2 * index_len + (96 << 10));
    assert!(
        size < largest,
        "largest member {largest}, index {index_len}: no chunk would be cut"
    );
    let out = dir.join("mirror.tar.zst");
    let mut args = vec![
        "export".to_string(),
        "-q".into(),
        "-o".into(),
        out.display().to_string(),
        "--volume-size".into(),
        size.to_string(),
    ];
    args.extend(refs(src, images));
    let (code, stdout, err) = airlock(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(!out.exists(), "no unsplit file is written");
    let mut vols: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("mirror.") && n.ends_with(".tar.zst")
        })
        .collect();
    vols.sort();
    assert!(vols.len() >= 3, "expected several volumes: {stdout}");
    let (index, _) = airlock::inspect::read_index(&vols[0]).unwrap();
    (vols, size, index)
}

fn paths(v: &[PathBuf]) -> Vec<String> {
    v.iter().map(|p| p.display().to_string()).collect()
}

fn run(args: &[String]) -> (i32, String, String) {
    airlock(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_fit_the_media_and_import_in_any_order() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let (vols, size, index) = export_volumes(&src, &images, work.path());

    // Each volume fits, has its sidecar, and is a plain tar for standard tools.
    for (i, v) in vols.iter().enumerate() {
        let len = std::fs::metadata(v).unwrap().len();
        assert!(len <= size, "{} is {len} bytes, asked {size}", v.display());
        assert_eq!(
            v.file_name().unwrap().to_string_lossy(),
            format!("mirror.{:03}.tar.zst", i + 1)
        );
        let side = std::fs::read_to_string(format!("{}.sha256", v.display())).unwrap();
        let sum = sh(Command::new("sha256sum").arg(v));
        assert_eq!(
            side.split_whitespace().next(),
            sum.split_whitespace().next()
        );
        let listing = sh(Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc '{}' | tar -tf -", v.display())));
        assert!(
            listing.starts_with("airlock-bundle.json\nairlock-volume.json\n"),
            "{listing}"
        );
    }
    // A layer larger than a volume is cut into chunks, listed in the index.
    let cut = index
        .members
        .iter()
        .find(|m| !m.chunks.is_empty())
        .expect("a member in chunks");
    assert!(cut.chunks.len() >= 2);
    assert_eq!(cut.chunks.iter().map(|c| c.size).sum::<u64>(), cut.size);

    // Extracting every volume into one directory and joining the chunks
    // gives an OCI layout skopeo reads.
    let x = work.path().join("extracted");
    std::fs::create_dir(&x).unwrap();
    for v in &vols {
        sh(Command::new("sh").arg("-c").arg(format!(
            "zstd -dc '{}' | tar -xf - -C '{}'",
            v.display(),
            x.display()
        )));
    }
    sh(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && for f in airlock-chunks/*.001; do h=$(basename $f .001); cat airlock-chunks/$h.* > blobs/sha256/$h; done",
        x.display(),
    )));
    assert_valid_layout(&x);

    // Shuffled order: verify, then import.
    let mut shuffled = vols.clone();
    shuffled.reverse();
    shuffled.swap(0, 1);
    let mut args = vec!["verify".to_string()];
    args.extend(paths(&shuffled));
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("volume 1 of {}", vols.len())),
        "{out}"
    );
    assert!(out.contains("graph complete"), "{out}");

    let dst = TestRegistry::start();
    let mut args = vec!["import".to_string()];
    args.extend(paths(&shuffled));
    args.extend(["--to".into(), format!("{}/site", dst.host)]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let s = client(&src, test_config()).await;
    let d = client(&dst, test_config()).await;
    for img in &images {
        assert_same_image(&s, &d, img, &format!("site/{}", img.repository), &img.tag).await;
    }

    // The directory holding the volumes stands for them.
    let voldir = work.path().join("dvd");
    std::fs::create_dir(&voldir).unwrap();
    for v in &vols {
        std::fs::copy(v, voldir.join(v.file_name().unwrap())).unwrap();
    }
    let (code, _, err) = run(&[
        "import".into(),
        voldir.display().to_string(),
        "--to".into(),
        format!("{}/fromdir", dst.host),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_same_image(
        &s,
        &d,
        &images[0],
        &format!("fromdir/{}", images[0].repository),
        &images[0].tag,
    )
    .await;

    // In order, the volumes are one stream: `cat mirror.* | airlock import -`.
    let cat = format!(
        "cat {} | '{}' import - --to {}/piped",
        vols.iter()
            .map(|v| format!("'{}'", v.display()))
            .collect::<Vec<_>>()
            .join(" "),
        env!("CARGO_BIN_EXE_airlock"),
        dst.host
    );
    sh(Command::new("sh")
        .arg("-c")
        .arg(&cat)
        .env("DOCKER_CONFIG", "/nonexistent"));
    assert_same_image(
        &s,
        &d,
        &images[1],
        &format!("piped/{}", images[1].repository),
        &images[1].tag,
    )
    .await;

    // Out of order, a stream is refused and names the volumes.
    let cat = format!(
        "cat '{}' '{}' | '{}' verify -",
        vols[1].display(),
        vols[0].display(),
        env!("CARGO_BIN_EXE_airlock")
    );
    let o = Command::new("sh")
        .arg("-c")
        .arg(&cat)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("volume 2"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_volume_verifies_alone_and_bad_sets_push_nothing() {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let (vols, _, _) = export_volumes(&src, &images, work.path());
    let n = vols.len();
    let (_, digest) = airlock::inspect::read_index(&vols[0]).unwrap();

    // One volume alone: intact, named by number and bundle.
    for (i, v) in vols.iter().enumerate() {
        let (code, out, err) = run(&["verify".into(), v.display().to_string()]);
        assert_eq!(code, 0, "{}: {err}", v.display());
        assert!(out.contains(&format!("volume {} of {n}", i + 1)), "{out}");
        assert!(out.contains(&digest.to_string()), "{out}");
    }
    let (code, out, _) = run(&["inspect".into(), vols[1].display().to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("this file is volume 2 of {n}")),
        "{out}"
    );

    let dst = TestRegistry::start();
    let import = |files: &[PathBuf]| {
        let mut args = vec!["import".to_string()];
        args.extend(paths(files));
        args.extend(["--to".into(), dst.host.clone()]);
        run(&args)
    };

    // A missing volume: named, with the bundle digest; usage error.
    let mut some = vols.clone();
    some.remove(1);
    let (code, _, err) = import(&some);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("volume(s) 2 not given") && err.contains(&digest.to_string()),
        "{err}"
    );

    // A volume of another bundle.
    let other_dir = work.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let (others, _, _) = export_volumes(&src, &images[..1], &other_dir);
    let mut mixed = vols.clone();
    mixed[0] = others[0].clone();
    let (code, _, err) = import(&mixed);
    assert_ne!(code, 0);
    assert!(err.contains("belongs to bundle"), "{err}");

    // The same volume twice.
    let mut twice = vols.clone();
    twice[0] = vols[1].clone();
    let (code, _, err) = import(&twice);
    assert_ne!(code, 0);
    assert!(err.contains("given twice"), "{err}");

    // A truncated volume (a short copy to the stick).
    let cut_dir = work.path().join("cut");
    std::fs::create_dir(&cut_dir).unwrap();
    let mut damaged = Vec::new();
    for v in &vols {
        let to = cut_dir.join(v.file_name().unwrap());
        std::fs::copy(v, &to).unwrap();
        damaged.push(to);
    }
    let last = damaged[n - 1].clone();
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = import(&damaged);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&last.display().to_string()), "{err}");
    let (code, _, err) = run(&["verify".into(), last.display().to_string()]);
    assert_eq!(code, 3, "{err}");

    // A flipped byte inside a chunk: the joined blob fails its digest.
    std::fs::copy(&vols[n - 1], &last).unwrap();
    assert!(dst.catalog().await.is_empty(), "nothing was pushed");
}
