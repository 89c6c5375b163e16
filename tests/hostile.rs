//! Bad and hostile bundles: each gets a clear error naming the object, and
//! nothing of it reaches the registry.

mod common;

use airlock::bundle::{BundleIndex, BundleWriter, MemberKind};
use airlock::import::{self, ImportOptions, OnExistingTag, Target};
use airlock::registry::Registries;
use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};

type Entries = Vec<(String, Vec<u8>, tar::EntryType)>;

fn unpack(bundle: &Path) -> Entries {
    let tar_bytes = zstd::decode_all(std::fs::File::open(bundle).unwrap()).unwrap();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let t = e.header().entry_type();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data, t)
        })
        .collect()
}

/// Re-frame entries into a seekable bundle, writing names as given (even hostile ones).
fn repack(entries: &Entries, out: &Path) {
    repack_at_level(entries, out, 3)
}

fn repack_at_level(entries: &Entries, out: &Path, level: i32) {
    let mut w = BundleWriter::new(std::fs::File::create(out).unwrap(), level, 1, 1 << 20).unwrap();
    for (path, data, t) in entries {
        if *t == tar::EntryType::Regular && !path.contains("..") {
            w.append(path, data.len() as u64, &mut &data[..]).unwrap();
        } else {
            // Hand-made header: tar::Header::set_path refuses `..`, an attacker does not.
            let mut h = tar::Header::new_ustar();
            h.as_mut_bytes()[..path.len()].copy_from_slice(path.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(*t);
            h.set_cksum();
            // BundleWriter::append only writes regular headers; write this one raw.
            let mut raw = h.as_bytes().to_vec();
            raw.extend_from_slice(data);
            raw.resize(raw.len().div_ceil(512) * 512, 0);
            w.append_raw_for_tests(&raw).unwrap();
        }
    }
    w.finish().unwrap();
}

fn index_of(entries: &Entries) -> BundleIndex {
    serde_json::from_slice(&entries[0].1).unwrap()
}

/// Replace the bundle index, keeping `index.json` consistent with it, as
/// an attacker forging a whole bundle would (so the checks behind that one
/// are reached).
fn set_index(entries: &mut Entries, index: &BundleIndex) {
    let mut index = index.clone();
    let layout_index = airlock::layout::index_json(&index.images);
    if let Some(m) = index.members.iter_mut().find(|m| m.path == "index.json") {
        m.digest = airlock::digest::Digest::of(&layout_index);
        m.size = layout_index.len() as u64;
    }
    if let Some(e) = entries.iter_mut().find(|e| e.0 == "index.json") {
        e.1 = layout_index;
    }
    entries[0].1 = serde_json::to_vec_pretty(&index).unwrap();
}

fn first_of_kind(entries: &Entries, kind: MemberKind) -> usize {
    let idx = index_of(entries);
    let m = idx.members.iter().find(|m| m.kind == kind).unwrap();
    entries.iter().position(|(p, _, _)| *p == m.path).unwrap()
}

async fn exported() -> (TestRegistry, tempfile::TempDir, PathBuf) {
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    let out = export_to(&src, &images[..2], work.path(), "good.tar.zst").await;
    (src, work, out)
}

/// Refused in both import modes: one pass (no tag, no image manifest may
/// reach the registry; valid blobs may) and `--verify-first` (nothing at all).
async fn assert_rejected(bundle: &Path, expect: &str) {
    let dst = TestRegistry::start();
    let mut opts = ImportOptions {
        target: Target::parse(&dst.host).unwrap(),
        on_existing_tag: OnExistingTag::Refuse,
        on_existing_artifact: Default::default(),
        jobs: 4,
        policy: None,
        bundle_key: None,
        verify_first: false,
    };
    let err = import::import_file(&Registries::new(test_config()), bundle, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(
        dst.all_tags().await.is_empty(),
        "no tag may reach the registry"
    );
    let dst = TestRegistry::start();
    opts.target = Target::parse(&dst.host).unwrap();
    opts.verify_first = true;
    let err = import::import_file(&Registries::new(test_config()), bundle, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(
        dst.catalog().await.is_empty(),
        "nothing may reach the registry: {:?}",
        dst.catalog().await
    );
    let (code, _, stderr) = airlock(&["verify", bundle.to_str().unwrap()]);
    assert_eq!(code, 3, "verify must report an integrity failure: {stderr}");
    assert!(
        stderr.contains(expect),
        "verify: expected {expect:?} in: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bundles_are_rejected_with_nothing_pushed() {
    let (_src, work, good) = exported().await;
    let base = unpack(&good);
    let (code, _, err) = airlock(&["verify", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // A layer byte flipped (its digest no longer matches).
    let mut e = base.clone();
    let i = first_of_kind(&e, MemberKind::Layer);
    let mid = e[i].1.len() / 2;
    e[i].1[mid] ^= 0xff;
    let p = work.path().join("layer.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, &e[i].0).await;

    // A manifest edited.
    let mut e = base.clone();
    let i = first_of_kind(&e, MemberKind::Manifest);
    e[i].1[10] ^= 0x01;
    let p = work.path().join("manifest.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, &e[i].0).await;

    // The bundle index edited: a member's listed size changed.
    let mut e = base.clone();
    let mut idx = index_of(&e);
    let m = idx
        .members
        .iter_mut()
        .find(|m| m.kind == MemberKind::Small)
        .unwrap();
    m.size += 1;
    let path = m.path.clone();
    set_index(&mut e, &idx);
    let p = work.path().join("index.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, &path).await;

    // An extra member the index does not list.
    let mut e = base.clone();
    e.push((
        "evil.sh".into(),
        b"#!/bin/sh\n".to_vec(),
        tar::EntryType::Regular,
    ));
    let p = work.path().join("extra.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, "evil.sh").await;

    // Path traversal in place of a listed member.
    let mut e = base.clone();
    let i = first_of_kind(&e, MemberKind::Layer);
    e[i].0 = "../../etc/cron.d/x".into();
    let p = work.path().join("traversal.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, "../../etc/cron.d/x").await;

    // A symlink where a blob should be.
    let mut e = base.clone();
    let i = first_of_kind(&e, MemberKind::Small);
    e[i].2 = tar::EntryType::Symlink;
    let p = work.path().join("symlink.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, "only regular files").await;

    // An artifact listed under a tag its kind and subject do not give: a
    // bundle cannot make an import set any other tag (here `latest`).
    let mut e = base.clone();
    let mut idx = index_of(&e);
    let a = idx
        .images
        .iter_mut()
        .flat_map(|i| i.artifacts.iter_mut())
        .find(|a| a.tag.is_some())
        .unwrap();
    a.tag = Some("latest".into());
    let digest = a.digest.to_string();
    set_index(&mut e, &idx);
    let p = work.path().join("artifact-tag.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, &digest).await;

    // An image tag that is not a tag (it would become part of a registry URL).
    let mut e = base.clone();
    let mut idx = index_of(&e);
    idx.images[0].tag = Some("1.0/../../other/manifests/x".into());
    set_index(&mut e, &idx);
    let p = work.path().join("image-tag.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, "is not a valid tag").await;

    // An artifact about something that is not part of its image.
    let mut e = base.clone();
    let mut idx = index_of(&e);
    let a = &mut idx.images[0].artifacts[0];
    a.subject = airlock::digest::Digest::of(b"someone else");
    let digest = a.digest.to_string();
    set_index(&mut e, &idx);
    let p = work.path().join("artifact-subject.tar.zst");
    repack(&e, &p);
    assert_rejected(&p, &digest).await;

    // Truncated file (no seek table any more; the stream ends early).
    let data = std::fs::read(&good).unwrap();
    let p = work.path().join("truncated.tar.zst");
    std::fs::write(&p, &data[..data.len() * 3 / 5]).unwrap();
    assert_rejected(&p, "truncated or corrupt").await;

    // Not a bundle at all.
    let p = work.path().join("garbage.tar.zst");
    std::fs::write(&p, b"this is not zstd").unwrap();
    assert_rejected(&p, "truncated or corrupt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_manifest_from_a_pipe_pushes_nothing() {
    let (_src, work, good) = exported().await;
    let mut e = unpack(&good);
    let i = first_of_kind(&e, MemberKind::Manifest);
    e[i].1[5] ^= 0x01;
    let p = work.path().join("m.tar.zst");
    repack(&e, &p);
    let dst = TestRegistry::start();
    let out = airlock_cmd()
        .args(["import", "-", "--to", &dst.host])
        .stdin(std::fs::File::open(&p).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&e[i].0), "{stderr}");
    assert!(dst.catalog().await.is_empty());
}

/// What `verify --file-hash` adds to a plain verify: the compressed file
/// byte for byte against its `.sha256`. The same content framed otherwise
/// passes a plain verify (every member, header and the index are intact)
/// and fails the file hash; a wrong sidecar is only read with the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_hash_is_checked_only_when_asked() {
    let (_src, work, good) = exported().await;
    let sidecar = |p: &Path| PathBuf::from(format!("{}.sha256", p.display()));
    let good_line = std::fs::read_to_string(sidecar(&good)).unwrap();
    let good_hex = good_line.split_whitespace().next().unwrap().to_string();

    let (code, doc) = {
        let (code, out, err) = airlock(&["verify", "--json", good.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        (
            code,
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        )
    };
    assert_eq!(code, 0);
    assert_eq!(
        doc["fileSha256"], "",
        "a plain verify does not hash the file"
    );
    assert!(doc["sidecarOk"].is_null());
    let (code, out, err) = airlock(&["verify", "--json", "--file-hash", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["fileSha256"], good_hex.as_str());
    assert_eq!(doc["sidecarOk"], true);

    // The same members compressed at another level, under the exported
    // file's sidecar.
    let reframed = work.path().join("reframed.tar.zst");
    repack_at_level(&unpack(&good), &reframed, 19);
    assert_ne!(
        std::fs::read(&reframed).unwrap(),
        std::fs::read(&good).unwrap(),
        "the test needs other bytes"
    );
    std::fs::write(
        sidecar(&reframed),
        format!("{good_hex}  reframed.tar.zst\n"),
    )
    .unwrap();
    let (code, out, err) = airlock(&["verify", reframed.to_str().unwrap()]);
    assert_eq!(code, 0, "the content is intact: {err}");
    assert!(
        out.contains("--file-hash"),
        "says the file was not hashed: {out}"
    );
    let (code, _, err) = airlock(&["verify", "--file-hash", reframed.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("reframed.tar.zst.sha256"),
        "names the sidecar: {err}"
    );
}
