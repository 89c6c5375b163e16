//! The hostile-bundle corpus of issue 11, generated here from one good
//! export (nothing binary is committed). Every case goes through the four
//! ways a bundle is read: `verify`, `import FILE`, `import -` (a pipe) and
//! `inspect`, each run as the real binary under `/usr/bin/time -v`, and
//! must end with the stated exit code and a message naming the object,
//! within a memory and a time bound, with nothing unescaped on the
//! terminal and no tag and no manifest at the target registry.
//!
//! Every case runs every time (no subset mode): the 63 cases take about 40 s
//! on 2 cores, three at a time. `AIRLOCK_CORPUS_KEEP=FILE` keeps the forged
//! files and writes their directory to FILE.

mod common;

use airlock::bundle::frames::{write_seek_table, FrameEntry, FramedWriter};
use airlock::bundle::{BundleIndex, MemberKind};
use airlock::digest::Digest;
use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Peak resident memory allowed to any one run of the binary.
const RSS_LIMIT_KIB: u64 = 128 * 1024;
/// Wall time allowed to any one run of the binary.
const TIME_LIMIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------ forging

/// One tar entry as an attacker writes it: every header field settable.
#[derive(Clone)]
struct Ent {
    path: Vec<u8>,
    data: Vec<u8>,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    /// The size the header claims (default: the data's length).
    claim: Option<u64>,
    /// The byte the padding is filled with (default 0).
    pad: u8,
}

impl Ent {
    fn new(path: &str, data: Vec<u8>) -> Ent {
        Ent {
            path: path.as_bytes().to_vec(),
            data,
            kind: b'0',
            mode: 0o644,
            uid: 0,
            gid: 0,
            claim: None,
            pad: 0,
        }
    }

    fn header(&self) -> [u8; 512] {
        let mut h = tar::Header::new_ustar();
        let n = self.path.len().min(100);
        h.as_mut_bytes()[..n].copy_from_slice(&self.path[..n]);
        h.set_size(self.claim.unwrap_or(self.data.len() as u64));
        h.set_mode(self.mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::new(self.kind));
        h.set_cksum();
        *h.as_bytes()
    }

    fn path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// A bundle written frame by frame like airlock's writer (a frame per
/// header, data starting a frame), with the frames kept apart so that a
/// case can splice, drop or corrupt them and write any seek table.
struct Framed {
    frames: Vec<Vec<u8>>,
    entries: Vec<FrameEntry>,
}

fn frame_entries(ents: &[Ent], end_blocks: bool) -> Framed {
    let mut w = FramedWriter::new(Vec::new(), 1, 1, 1 << 20).unwrap();
    for e in ents {
        w.cut().unwrap();
        w.write_all(&e.header()).unwrap();
        w.cut().unwrap();
        w.write_all(&e.data).unwrap();
        let pad = e.data.len().div_ceil(512) * 512 - e.data.len();
        w.write_all(&vec![e.pad; pad]).unwrap();
    }
    w.cut().unwrap();
    if end_blocks {
        w.write_all(&[0u8; 1024]).unwrap();
    }
    let (out, entries) = w.finish().unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    for e in &entries {
        frames.push(out[at..at + e.compressed as usize].to_vec());
        at += e.compressed as usize;
    }
    Framed { frames, entries }
}

impl Framed {
    /// Frames then a seek table that describes them.
    fn bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.frames.concat();
        write_seek_table(&mut out, &self.entries).unwrap();
        out
    }

    /// Frames only (a file without seek table).
    fn bare(&self) -> Vec<u8> {
        self.frames.concat()
    }

    /// Insert raw bytes before frame `i`, counted in the table as part of
    /// the frame before (the table still adds up to the file).
    fn splice(&mut self, i: usize, raw: Vec<u8>) {
        self.entries[i - 1].compressed += raw.len() as u32;
        self.frames.insert(i, raw);
        let merged = self.frames.remove(i);
        self.frames[i - 1].extend_from_slice(&merged);
    }
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(1).unwrap();
    c.include_checksum(true).unwrap();
    c.include_contentsize(true).unwrap();
    c.compress(data).unwrap()
}

fn skippable(magic_low: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x50 | magic_low, 0x2A, 0x4D, 0x18];
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// The good bundle, unpacked: its entries and its index.
#[derive(Clone)]
struct Good {
    ents: Vec<Ent>,
    index: BundleIndex,
}

impl Good {
    fn read(path: &Path) -> Good {
        let tar_bytes = zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap();
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let ents: Vec<Ent> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                Ent::new(&p, data)
            })
            .collect();
        let index = serde_json::from_slice(&ents[0].data).unwrap();
        Good { ents, index }
    }

    fn pos(&self, path: &str) -> usize {
        self.ents.iter().position(|e| e.path() == path).unwrap()
    }

    fn first(&self, kind: MemberKind) -> usize {
        let m = self.index.members.iter().find(|m| m.kind == kind).unwrap();
        self.pos(&m.path)
    }

    /// An attacker rewriting the bundle index (and `index.json` to agree,
    /// so that the checks behind it are reached).
    fn with_index(&self, edit: impl FnOnce(&mut BundleIndex)) -> Good {
        let mut g = self.clone();
        edit(&mut g.index);
        let layout = airlock::layout::index_json(&g.index.images);
        if let Some(m) = g.index.members.iter_mut().find(|m| m.path == "index.json") {
            m.digest = Digest::of(&layout);
            m.size = layout.len() as u64;
        }
        let at = g.pos("index.json");
        g.ents[at].data = layout;
        g.ents[0].data = serde_json::to_vec_pretty(&g.index).unwrap();
        g
    }

    fn bundle(&self) -> Vec<u8> {
        frame_entries(&self.ents, true).bytes()
    }

    fn manifests(&self) -> Vec<String> {
        self.index
            .members
            .iter()
            .filter(|m| m.kind == MemberKind::Manifest)
            .map(|m| m.path.clone())
            .collect()
    }
}

/// New manifest members (before the existing ones, in the index and the tar).
fn add_manifests(g: &Good, new: &[(Vec<u8>, &str)]) -> Good {
    let at = g.first(MemberKind::Manifest);
    let mut g = g.with_index(|idx| {
        let first = idx
            .members
            .iter()
            .position(|m| m.kind == MemberKind::Manifest)
            .unwrap();
        for (k, (bytes, media_type)) in new.iter().enumerate() {
            let d = Digest::of(bytes);
            idx.members.insert(
                first + k,
                airlock::bundle::Member {
                    path: d.layout_path(),
                    digest: d,
                    size: bytes.len() as u64,
                    kind: MemberKind::Manifest,
                    media_type: Some(media_type.to_string()),
                    volume: None,
                    chunks: Vec::new(),
                },
            );
        }
    });
    for (k, (bytes, _)) in new.iter().enumerate() {
        let path = Digest::of(bytes).layout_path();
        g.ents.insert(at + k, Ent::new(&path, bytes.clone()));
    }
    g
}

fn add_manifest(g: &Good, bytes: Vec<u8>, media_type: &str) -> (Good, Digest) {
    let d = Digest::of(&bytes);
    (add_manifests(g, &[(bytes, media_type)]), d)
}

// ------------------------------------------------------------ the cases

#[derive(Clone, Debug, PartialEq)]
enum Class {
    Allocation,
    Bomb,
    OneReader,
    Graph,
    Names,
    Terminal,
    Volumes,
}

#[derive(Clone, Debug)]
enum Outcome {
    /// Exit code and a text the error must contain (alternatives split by " | ").
    Fail(i32, String),
    /// Succeeds (what the command reads is sound); output still checked.
    Pass,
    /// Either, e.g. `inspect` that reads only the index.
    Any,
}

struct Case {
    name: String,
    class: Class,
    /// The files given (one bundle, or volumes).
    files: Vec<PathBuf>,
    /// `verify --file-hash` (and plain `verify` unless `verify_default` says).
    verify: Outcome,
    /// Plain `verify` (members, headers, index; no whole-file hash), where
    /// it differs.
    verify_default: Option<Outcome>,
    import: Outcome,
    pipe: Outcome,
    inspect: Outcome,
}

fn fail(code: i32, needle: &str) -> Outcome {
    Outcome::Fail(code, needle.to_string())
}

struct Builder {
    dir: PathBuf,
    cases: Vec<Case>,
}

impl Builder {
    /// A case whose every read path must fail with `code` naming `needle`.
    fn bad(&mut self, class: Class, name: &str, bytes: Vec<u8>, code: i32, needle: &str) {
        self.add(class, name, bytes, fail(code, needle), Outcome::Any);
    }

    fn add(&mut self, class: Class, name: &str, bytes: Vec<u8>, all: Outcome, inspect: Outcome) {
        let p = self.dir.join(format!("{name}.tar.zst"));
        std::fs::write(&p, bytes).unwrap();
        self.cases.push(Case {
            name: name.into(),
            class,
            files: vec![p],
            verify: all.clone(),
            verify_default: None,
            import: all.clone(),
            pipe: all,
            inspect,
        });
    }
}

fn build_cases(good: &Good, dir: &Path) -> Vec<Case> {
    let mut b = Builder {
        dir: dir.to_path_buf(),
        cases: Vec::new(),
    };
    let manifest = good.first(MemberKind::Manifest);
    let manifest_path = good.ents[manifest].path();
    let layer = good.first(MemberKind::Layer);
    let layer_path = good.ents[layer].path();
    let small = good.first(MemberKind::Small);

    // ---- unbounded allocation from a claimed size
    for (name, claim) in [
        ("manifest-1tib", 1u64 << 40),
        ("manifest-256mib", 256 << 20),
    ] {
        let g = good.with_index(|idx| {
            let m = idx
                .members
                .iter_mut()
                .find(|m| m.path == manifest_path)
                .unwrap();
            m.size = claim;
        });
        let mut g = g;
        g.ents[manifest].claim = Some(claim);
        b.add(
            Class::Allocation,
            name,
            g.bundle(),
            fail(3, &manifest_path),
            fail(3, &manifest_path),
        );
    }
    // The header alone lies: the index says the manifest's real size.
    let mut g = good.clone();
    g.ents[manifest].claim = Some(1 << 40);
    b.bad(
        Class::Allocation,
        "manifest-header-1tib",
        g.bundle(),
        3,
        &manifest_path,
    );
    // The bundle index's own header claims 1 TiB (base-256 size field).
    let mut g = good.clone();
    g.ents[0].claim = Some(1 << 40);
    b.add(
        Class::Allocation,
        "index-header-1tib",
        g.bundle(),
        fail(3, "airlock-bundle.json"),
        fail(3, "airlock-bundle.json"),
    );
    // A layer claiming 1 TiB in the index and its header.
    let g = good.with_index(|idx| {
        let m = idx
            .members
            .iter_mut()
            .find(|m| m.path == layer_path)
            .unwrap();
        m.size = 1 << 40;
    });
    let mut g = g;
    g.ents[layer].claim = Some(1 << 40);
    b.bad(Class::Allocation, "layer-1tib", g.bundle(), 3, &layer_path);
    // GNU long name (128 MiB claimed) and PAX records (384 MiB) before a member.
    for (name, path, kind, claim) in [
        ("gnu-longname-128mib", "././@LongLink", b'L', 128u64 << 20),
        ("pax-384mib", "PaxHeaders/x", b'x', 384 << 20),
        ("pax-global", "GlobalHead", b'g', 64 << 20),
    ] {
        let mut g = good.clone();
        let mut e = Ent::new(path, b"30 path=blobs/sha256/evil\n".to_vec());
        e.kind = kind;
        e.claim = Some(claim);
        g.ents.insert(manifest, e);
        b.bad(Class::Allocation, name, g.bundle(), 3, "only regular files");
    }
    // A huge long name where the index is (the name is not read or echoed).
    let mut g = good.clone();
    let mut e = Ent::new("././@LongLink", vec![b'A'; 1 << 20]);
    e.kind = b'L';
    e.claim = Some(128 << 20);
    g.ents.insert(0, e);
    b.add(
        Class::Allocation,
        "gnu-longname-first",
        g.bundle(),
        fail(3, "only regular files"),
        fail(3, "only regular files"),
    );
    // An oversized .sha256 sidecar (300 MB, sparse): only verify reads it.
    let p = dir.join("sidecar-300mb.tar.zst");
    std::fs::write(&p, good.bundle()).unwrap();
    let side = std::fs::File::create(dir.join("sidecar-300mb.tar.zst.sha256")).unwrap();
    side.set_len(300_000_000).unwrap();
    b.cases.push(Case {
        name: "sidecar-300mb".into(),
        class: Class::Allocation,
        files: vec![p],
        verify: fail(3, ".sha256"),
        // Without --file-hash the sidecar is not read at all.
        verify_default: Some(Outcome::Pass),
        import: Outcome::Pass,
        pipe: Outcome::Pass,
        inspect: Outcome::Pass,
    });

    // ---- decompression bombs and trailing data
    let zeros = zstd_frame(&vec![0u8; 16 << 20]);
    let bomb = zeros.repeat(4096);
    let mut f = frame_entries(&good.ents, true);
    for _ in 0..4096 {
        f.entries.push(FrameEntry {
            compressed: zeros.len() as u32,
            decompressed: 16 << 20,
        });
    }
    f.frames.push(bomb.clone());
    let bytes = f.bytes();
    b.bad(Class::Bomb, "zeros-64gib-after-end", bytes, 3, "after the");
    // The same zeros after the seek table (no table at the end any more).
    let mut bytes = good.bundle();
    bytes.extend_from_slice(&bomb);
    b.bad(Class::Bomb, "zeros-after-seek-table", bytes, 3, "after the");
    // A member after the end blocks.
    let mut ents = good.ents.clone();
    ents.push(Ent::new("", vec![0u8; 1024]));
    let mut f = frame_entries(&ents[..ents.len() - 1], true);
    let hidden = frame_entries(&[Ent::new("blobs/sha256/evil", b"evil".to_vec())], true);
    for (fr, e) in hidden.frames.into_iter().zip(hidden.entries) {
        f.frames.push(fr);
        f.entries.push(e);
    }
    b.bad(
        Class::Bomb,
        "member-after-end",
        f.bytes(),
        3,
        "blobs/sha256/evil",
    );
    // Data bytes (not a header) after the end blocks.
    let mut f = frame_entries(&good.ents, true);
    let junk = zstd_frame(b"#!/bin/sh\nrm -rf /\n");
    f.entries.push(FrameEntry {
        compressed: junk.len() as u32,
        decompressed: 19,
    });
    f.frames.push(junk);
    b.bad(Class::Bomb, "junk-after-end", f.bytes(), 3, "after the");
    // No end-of-archive blocks.
    b.bad(
        Class::Bomb,
        "no-end-blocks",
        frame_entries(&good.ents, false).bytes(),
        3,
        "end",
    );
    // One end block only.
    let mut f = frame_entries(&good.ents, false);
    let half = zstd_frame(&[0u8; 512]);
    f.entries.push(FrameEntry {
        compressed: half.len() as u32,
        decompressed: 512,
    });
    f.frames.push(half);
    b.bad(Class::Bomb, "one-end-block", f.bytes(), 3, "end");
    // A frame demanding a 1 GiB window (no content size, long window).
    let tar: Vec<u8> = zstd::decode_all(&good.bundle()[..]).unwrap();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.window_log(30).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(&tar).unwrap();
    b.bad(
        Class::Bomb,
        "window-1gib",
        enc.finish().unwrap(),
        3,
        "corrupt",
    );
    // A skippable frame with a payload between two frames (the table still adds up).
    let mut f = frame_entries(&good.ents, true);
    f.splice(3, skippable(0, &vec![7u8; 100_000]));
    b.bad(
        Class::Bomb,
        "skippable-in-middle",
        f.bytes(),
        3,
        "skippable",
    );
    // The same, in a file without seek table.
    let mut f = frame_entries(&good.ents, true);
    f.frames.insert(3, skippable(3, b"hidden payload"));
    b.bad(Class::Bomb, "skippable-no-table", f.bare(), 3, "skippable");
    // A seek table that lies: two frames' sizes swapped (sums unchanged).
    let mut f = frame_entries(&good.ents, true);
    let k = f.entries.len() - 3;
    f.entries.swap(1, k);
    b.bad(Class::Bomb, "seek-table-lies", f.bytes(), 3, "seek table");
    // A seek table whose sizes do not add up to the file.
    let mut f = frame_entries(&good.ents, true);
    f.entries[2].decompressed += 512;
    f.entries[2].compressed += 1;
    b.bad(
        Class::Bomb,
        "seek-table-corrupt",
        f.bytes(),
        3,
        "seek table",
    );
    // A seek table claiming 2^32-1 frames.
    let mut bytes = frame_entries(&good.ents, true).bare();
    let mut footer = u32::MAX.to_le_bytes().to_vec();
    footer.push(0);
    footer.extend_from_slice(&0x8F92_EAB1u32.to_le_bytes());
    bytes.extend_from_slice(&skippable(0xE, &footer));
    b.bad(Class::Bomb, "seek-table-4g-frames", bytes, 3, "seek table");
    // A bad frame checksum (the last byte of a layer data frame).
    let mut f = frame_entries(&good.ents, true);
    let di = f.frames.len() - 2; // the last data frame, before the end blocks
    let last = f.frames[di].len() - 1;
    f.frames[di][last] ^= 0x55;
    b.bad(Class::Bomb, "bad-frame-checksum", f.bytes(), 3, "checksum");
    // Non-zero tar padding after a small blob.
    let mut g = good.clone();
    let padded = (small..g.ents.len())
        .find(|i| !g.ents[*i].data.len().is_multiple_of(512))
        .unwrap();
    g.ents[padded].pad = b'X';
    b.bad(Class::Bomb, "nonzero-padding", g.bundle(), 3, "padding");

    // ---- one reader, one set of rules
    for (name, kind, at) in [
        ("index-symlink", b'2', 0usize),
        ("index-hardlink", b'1', 0),
        ("blob-symlink", b'2', small),
        ("blob-hardlink", b'1', layer),
        ("blob-chardev", b'3', small),
        ("blob-fifo", b'6', small),
        ("manifest-dir", b'5', manifest),
    ] {
        let mut g = good.clone();
        g.ents[at].kind = kind;
        b.add(
            Class::OneReader,
            name,
            g.bundle(),
            fail(3, "only regular files"),
            if at == 0 {
                fail(3, "only regular files")
            } else {
                Outcome::Any
            },
        );
    }
    let mut g = good.clone();
    g.ents[small].mode = 0o6777;
    b.bad(Class::OneReader, "mode-06777", g.bundle(), 3, "mode 6777");
    let mut g = good.clone();
    g.ents[layer].uid = 1000;
    g.ents[layer].gid = 1000;
    b.bad(
        Class::OneReader,
        "owner-1000",
        g.bundle(),
        3,
        "owner 1000:1000",
    );
    let mut g = good.clone();
    g.ents[0].mode = 0o4755;
    b.add(
        Class::OneReader,
        "index-setuid",
        g.bundle(),
        fail(3, "airlock-bundle.json"),
        fail(3, "airlock-bundle.json"),
    );
    let mut g = good.clone();
    let dup = g.ents[small].clone();
    g.ents.insert(small + 1, dup);
    // Every member after the copy is one place off: a reader that checks
    // members in parallel (verify, import of a file; largest first) may meet
    // any of them first: the copy where the next member should be, or, for a
    // later member, the middle of another's data where its header should be.
    // Either way the error is the class, not one name.
    b.bad(
        Class::OneReader,
        "duplicate-member",
        g.bundle(),
        3,
        "found where the index lists | has a bad checksum",
    );
    let mut g = good.clone();
    g.ents
        .insert(layer, Ent::new("blobs/sha256/unlisted", b"x".to_vec()));
    // As with the duplicate: every member after it is one place off, and a
    // parallel reader may meet one of those first.
    b.bad(
        Class::OneReader,
        "unlisted-member",
        g.bundle(),
        3,
        "blobs/sha256/unlisted | has a bad checksum",
    );
    let mut g = good.clone();
    g.ents.swap(small, small + 1);
    // The first of the pair finds the second's header; the second's header
    // position falls inside the first's data: either may be read first.
    b.bad(
        Class::OneReader,
        "out-of-order",
        g.bundle(),
        3,
        "found where the index lists | has a bad checksum",
    );
    let mut g = good.clone();
    g.ents.remove(layer);
    b.add(
        Class::OneReader,
        "member-missing",
        g.bundle(),
        fail(3, &layer_path),
        Outcome::Any,
    );
    // Random access (file import, and verify's parallel read of a file)
    // finds the members do not add up before reading any.
    b.cases.last_mut().unwrap().import = fail(3, "runs past the end of the archive");
    b.cases.last_mut().unwrap().verify = fail(3, "runs past the end of the archive");

    // ---- graph abuse
    let root = good.index.images[0].clone();
    let child = root.platforms[0].clone();
    let desc = serde_json::json!({"mediaType": child.media_type, "digest": child.digest, "size": child.size});
    for (name, times) in [("fanout-100000", 100_000usize), ("fanout-5000", 5_000)] {
        let idx_bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": vec![desc.clone(); times],
        }))
        .unwrap();
        let (g, d) = add_manifest(
            good,
            idx_bytes.clone(),
            "application/vnd.oci.image.index.v1+json",
        );
        let g = g.with_index(|idx| {
            let img = &mut idx.images[0];
            img.digest = d.clone();
            img.source_digest = d.clone();
            img.size = idx_bytes.len() as u64;
            img.artifacts.clear();
            img.platforms.truncate(1);
        });
        let needle = if times > 20_000 {
            "at most".to_string()
        } else {
            d.to_string()
        };
        b.bad(Class::Graph, name, g.bundle(), 3, &needle);
    }
    // Indexes nested 2,000 deep.
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let mut chain: Vec<(Vec<u8>, &str)> = Vec::new();
    let mut inner = desc.clone();
    let mut below = child.digest.clone();
    let mut top = (child.digest.clone(), 0u64);
    for _ in 0..2000 {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [inner],
        }))
        .unwrap();
        let d = Digest::of(&bytes);
        inner = serde_json::json!({"mediaType": INDEX, "digest": d, "size": bytes.len()});
        below = std::mem::replace(&mut top, (d, bytes.len() as u64)).0;
        chain.push((bytes, INDEX));
    }
    let g = add_manifests(good, &chain).with_index(|idx| {
        let img = &mut idx.images[0];
        img.digest = top.0.clone();
        img.source_digest = top.0.clone();
        img.size = top.1;
        img.artifacts.clear();
        img.platforms.truncate(1);
        img.platforms[0].digest = below.clone();
    });
    b.bad(Class::Graph, "nested-2000", g.bundle(), 3, "nested index");
    // A referrer whose subject is not in the bundle.
    let referrer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/x-evil",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of(b"elsewhere"), "size": 10},
    }))
    .unwrap();
    let (g, rd) = add_manifest(good, referrer, "application/vnd.oci.image.manifest.v1+json");
    let g = g.with_index(|idx| {
        let img = &mut idx.images[0];
        let mut a = img.artifacts[0].clone();
        a.kind = airlock::graph::ArtifactKind::Referrer;
        a.digest = rd.clone();
        a.subject = Digest::of(b"elsewhere");
        a.tag = None;
        img.artifacts.push(a);
    });
    b.bad(
        Class::Graph,
        "referrer-foreign-subject",
        g.bundle(),
        3,
        &rd.to_string(),
    );
    // The same referrer listed under the image, its own subject elsewhere.
    let (g, rd) = add_manifest(
        good,
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
            "layers": [],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of(b"elsewhere"), "size": 10},
        }))
        .unwrap(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let g = g.with_index(|idx| {
        let img = &mut idx.images[0];
        let mut a = img.artifacts[0].clone();
        a.kind = airlock::graph::ArtifactKind::Referrer;
        a.digest = rd.clone();
        a.subject = img.digest.clone();
        a.tag = None;
        img.artifacts.push(a);
    });
    b.bad(
        Class::Graph,
        "referrer-lies-about-subject",
        g.bundle(),
        3,
        &rd.to_string(),
    );

    // ---- names from the bundle
    let g = good.with_index(|idx| idx.images[0].tag = Some("../../x/manifests/y".into()));
    b.bad(
        Class::Names,
        "tag-traversal",
        g.bundle(),
        3,
        "../../x/manifests/y",
    );
    let g = good.with_index(|idx| idx.images[0].tag = Some("a".repeat(129)));
    b.bad(
        Class::Names,
        "tag-too-long",
        g.bundle(),
        3,
        "is not a valid tag",
    );
    for (name, repo) in [
        ("repo-uppercase", "Vendor/Agent"),
        ("repo-traversal", "../../evil"),
        ("repo-empty-component", "vendor//agent"),
    ] {
        let g = good.with_index(|idx| idx.images[0].repository = repo.into());
        b.bad(Class::Names, name, g.bundle(), 3, repo);
    }
    let g = good.with_index(|idx| idx.images[0].target = Some("/abs/evil".into()));
    b.bad(Class::Names, "target-invalid", g.bundle(), 3, "/abs/evil");
    let g = good.with_index(|idx| {
        if let Some(a) = idx.images[0].artifacts.iter_mut().find(|a| a.tag.is_some()) {
            a.tag = Some("1.2.3".into());
        }
    });
    b.bad(
        Class::Names,
        "signature-tagged-1.2.3",
        g.bundle(),
        3,
        "1.2.3",
    );
    // index.json naming the first image's ref for the second image's digest.
    let mut g = good.clone();
    let mut images = good.index.images.clone();
    images[0].digest = good.index.images[1].digest.clone();
    let forged = airlock::layout::index_json(&images);
    let at = g.pos("index.json");
    g.ents[at].data = forged.clone();
    let m = g
        .index
        .members
        .iter_mut()
        .find(|m| m.path == "index.json")
        .unwrap();
    m.digest = Digest::of(&forged);
    m.size = forged.len() as u64;
    g.ents[0].data = serde_json::to_vec_pretty(&g.index).unwrap();
    b.add(
        Class::Names,
        "index-json-other-digest",
        g.bundle(),
        fail(3, "index.json"),
        fail(3, "index.json"),
    );
    // A target outside the destination prefix: honoured only inside it.
    let g = good.with_index(|idx| idx.images[0].target = Some("outside/evil".into()));
    let p = dir.join("target-outside.tar.zst");
    std::fs::write(&p, g.bundle()).unwrap();
    b.cases.push(Case {
        name: "target-outside".into(),
        class: Class::Names,
        files: vec![p],
        verify: Outcome::Pass,
        verify_default: None,
        import: Outcome::Pass,
        pipe: Outcome::Pass,
        inspect: Outcome::Pass,
    });

    // ---- terminal injection: printed escaped, never raw
    let esc = "\u{1b}[2K\r\u{1b}[1A bundle digest: sha256:0000 \u{9b}31m";
    let g = good.with_index(|idx| idx.images[0].source = format!("vendor/agent{esc}"));
    b.add(
        Class::Terminal,
        "ansi-source",
        g.bundle(),
        Outcome::Pass,
        Outcome::Pass,
    );
    let g = good.with_index(|idx| {
        idx.tool = format!("airlock{esc}");
        idx.created = format!("2026{esc}");
    });
    b.add(
        Class::Terminal,
        "ansi-tool",
        g.bundle(),
        Outcome::Pass,
        Outcome::Pass,
    );
    let g = good.with_index(|idx| {
        for a in &mut idx.images[0].artifacts {
            a.artifact_type = Some(format!("application/x{esc}"));
            a.predicate_types = vec![format!("https://evil{esc}")];
        }
        for p in &mut idx.images[0].platforms {
            p.platform = Some(format!("linux{esc}"));
        }
    });
    b.add(
        Class::Terminal,
        "ansi-annotations",
        g.bundle(),
        Outcome::Pass,
        Outcome::Pass,
    );
    let g = good.with_index(|idx| idx.images[0].tag = Some(format!("1.0{esc}")));
    b.add(
        Class::Terminal,
        "ansi-tag",
        g.bundle(),
        fail(3, "is not a valid tag"),
        Outcome::Pass,
    );
    let g = good.with_index(|idx| {
        idx.images[0].repository = format!("vendor{esc}");
        idx.images[0].source = format!("{esc}{}", "x".repeat(1 << 20));
    });
    b.add(
        Class::Terminal,
        "ansi-repository-1mib-source",
        g.bundle(),
        fail(3, "is not a valid repository name"),
        Outcome::Pass,
    );
    b.cases
}

/// Volume cases: a volume set of the good images and one of another bundle.
fn volume_cases(vols: &[PathBuf], foreign: &[PathBuf], dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut case = |name: &str, files: Vec<PathBuf>, v: Outcome, i: Outcome, p: Outcome| {
        cases.push(Case {
            name: name.into(),
            class: Class::Volumes,
            files,
            verify: v,
            verify_default: None,
            import: i,
            pipe: p,
            inspect: Outcome::Any,
        })
    };
    let mut with_foreign = vols.to_vec();
    with_foreign[1] = foreign[1].clone();
    case(
        "volume-foreign",
        with_foreign,
        fail(3, "bundle"),
        fail(3, "bundle"),
        fail(3, "belongs to bundle"),
    );
    let mut dup = vols.to_vec();
    dup.push(vols[1].clone());
    case(
        "volume-duplicate",
        dup,
        fail(3, "given twice"),
        fail(3, "given twice"),
        fail(3, "after the end"),
    );
    let mut missing = vols.to_vec();
    missing.remove(1);
    case(
        "volume-missing",
        missing,
        Outcome::Pass,
        fail(2, "volume(s) 2 not given"),
        fail(3, "volume 2 was expected"),
    );
    let bytes = std::fs::read(&vols[1]).unwrap();
    let cut = dir.join("cut.002.tar.zst");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut truncated = vols.to_vec();
    truncated[1] = cut;
    case(
        "volume-truncated",
        truncated,
        fail(3, "cut.002.tar.zst"),
        fail(3, "cut.002.tar.zst"),
        fail(3, "truncated or corrupt"),
    );
    // Volume 2 relabelled as volume 3, and as a volume of another bundle.
    let relabel = |edit: &dyn Fn(&mut serde_json::Value), out: &str| {
        let tar = zstd::decode_all(std::fs::File::open(&vols[1]).unwrap()).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let mut ents: Vec<Ent> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                Ent::new(&p, data)
            })
            .collect();
        let mut label: serde_json::Value = serde_json::from_slice(&ents[1].data).unwrap();
        edit(&mut label);
        ents[1].data = serde_json::to_vec_pretty(&label).unwrap();
        let p = dir.join(out);
        std::fs::write(&p, frame_entries(&ents, true).bytes()).unwrap();
        let mut set = vols.to_vec();
        set[1] = p;
        set
    };
    let lie_number = relabel(&|l| l["volume"] = 3.into(), "lie-number.002.tar.zst");
    case(
        "volume-label-lies-number",
        lie_number,
        fail(3, "volume"),
        fail(3, "volume"),
        fail(3, "volume"),
    );
    let other = Digest::of(b"another bundle").to_string();
    let lie_bundle = relabel(
        &|l| l["bundle"] = other.clone().into(),
        "lie-bundle.002.tar.zst",
    );
    case(
        "volume-label-lies-bundle",
        lie_bundle,
        fail(3, "its label names bundle"),
        fail(3, "its label names bundle"),
        fail(3, "its label names bundle"),
    );
    cases
}

// ------------------------------------------------------------ running

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    rss_kib: u64,
    elapsed: Duration,
}

/// The binary under `/usr/bin/time -v`: exit code, output, peak RSS.
fn run_timed(args: &[String], stdin: Option<&Path>) -> Run {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v")
        .arg("-o")
        .arg(report.path())
        .arg(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent-airlock-test")
        .env_remove("REGISTRY_AUTH_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        Some(p) => cmd.stdin(std::fs::File::open(p).unwrap()),
        None => cmd.stdin(Stdio::null()),
    };
    let started = Instant::now();
    let out = cmd.output().expect("/usr/bin/time (apt-get install time)");
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let rss_kib = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS in the /usr/bin/time report: {text}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        rss_kib,
        elapsed,
    }
}

/// Control characters a terminal acts on (newlines and tabs are ours).
fn raw_control(s: &str) -> Option<char> {
    s.chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
}

#[derive(Default)]
struct Stats {
    max_rss_kib: u64,
    max_rss_what: String,
    max_time: Duration,
    max_time_what: String,
    runs: usize,
}

fn check(case: &Case, what: &str, want: &Outcome, r: &Run, stats: &Mutex<Stats>) -> Vec<String> {
    let mut problems = Vec::new();
    let label = format!("{} / {what}", case.name);
    {
        let mut s = stats.lock().unwrap();
        s.runs += 1;
        if r.rss_kib > s.max_rss_kib {
            s.max_rss_kib = r.rss_kib;
            s.max_rss_what = label.clone();
        }
        if r.elapsed > s.max_time {
            s.max_time = r.elapsed;
            s.max_time_what = label.clone();
        }
    }
    let shown = |s: &str| {
        s.chars()
            .take(600)
            .collect::<String>()
            .escape_debug()
            .to_string()
    };
    if r.rss_kib > RSS_LIMIT_KIB {
        problems.push(format!(
            "{label}: peak RSS {} KiB > {RSS_LIMIT_KIB} KiB",
            r.rss_kib
        ));
    }
    if r.elapsed > TIME_LIMIT {
        problems.push(format!("{label}: took {:?} > {TIME_LIMIT:?}", r.elapsed));
    }
    for (stream, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if let Some(c) = raw_control(text) {
            problems.push(format!(
                "{label}: raw control character {c:?} on {stream}: {}",
                shown(text)
            ));
        }
        // An error echoing a name from the bundle stays readable.
        if text.len() > 64 << 10 {
            problems.push(format!("{label}: {} bytes on {stream}", text.len()));
        }
    }
    match want {
        Outcome::Fail(code, needle) => {
            if r.code != *code {
                problems.push(format!(
                    "{label}: exit {} (want {code}); stderr: {}",
                    r.code,
                    shown(&r.stderr)
                ));
            } else if !needle.split(" | ").any(|n| r.stderr.contains(n)) {
                problems.push(format!(
                    "{label}: the error does not name {needle:?}: {}",
                    shown(&r.stderr)
                ));
            }
        }
        Outcome::Pass => {
            if r.code != 0 {
                problems.push(format!(
                    "{label}: exit {} (want 0): {}",
                    r.code,
                    shown(&r.stderr)
                ));
            }
        }
        Outcome::Any => {
            if r.code != 0 && r.code != 3 {
                problems.push(format!("{label}: exit {}: {}", r.code, shown(&r.stderr)));
            }
        }
    }
    problems
}

fn run_case(i: usize, case: &Case, host: &str, stats: &Mutex<Stats>) -> Vec<String> {
    let files: Vec<String> = case.files.iter().map(|p| p.display().to_string()).collect();
    let mut problems = Vec::new();
    let mut args = vec!["verify".to_string(), "--file-hash".to_string()];
    args.extend(files.iter().cloned());
    problems.extend(check(
        case,
        "verify --file-hash",
        &case.verify,
        &run_timed(&args, None),
        stats,
    ));
    let mut args = vec!["verify".to_string()];
    args.extend(files.iter().cloned());
    problems.extend(check(
        case,
        "verify",
        case.verify_default.as_ref().unwrap_or(&case.verify),
        &run_timed(&args, None),
        stats,
    ));

    // The strict mode, where a refused file leaves nothing at all (the
    // default one-pass import promises no manifest and no tag, checked for
    // the pipe below the same way).
    let mut args = vec!["import".to_string(), "--verify-first".to_string()];
    args.extend(files.iter().cloned());
    args.extend(["--to".into(), format!("{host}/c{i}f")]);
    problems.extend(check(
        case,
        "import",
        &case.import,
        &run_timed(&args, None),
        stats,
    ));

    // The pipe: the files one after the other, as `cat` would give them.
    let joined = tempfile::NamedTempFile::new().unwrap();
    {
        let mut w = std::fs::File::create(joined.path()).unwrap();
        for f in &case.files {
            std::io::copy(&mut std::fs::File::open(f).unwrap(), &mut w).unwrap();
        }
    }
    let args = vec![
        "import".into(),
        "-".into(),
        "--to".into(),
        format!("{host}/c{i}p"),
    ];
    let r = run_timed(&args, Some(joined.path()));
    problems.extend(check(case, "import -", &case.pipe, &r, stats));

    let args = vec!["inspect".to_string(), files[0].clone()];
    problems.extend(check(
        case,
        "inspect",
        &case.inspect,
        &run_timed(&args, None),
        stats,
    ));
    problems
}

/// Directories under `root` named `name`, anywhere.
fn find_dirs(root: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if e.file_name() == name {
                out.push(p.clone());
            }
            find_dirs(&p, name, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus() {
    let started = Instant::now();
    let (src, images) = seeded_source().await;
    let work = tempfile::tempdir().unwrap();
    if let Ok(keep) = std::env::var("AIRLOCK_CORPUS_KEEP") {
        // For a look at the forged files after a failure.
        eprintln!("corpus files in {}", work.path().display());
        std::fs::write(keep, work.path().display().to_string()).unwrap();
    }
    let good_path = export_to(&src, &images[..2], work.path(), "good.tar.zst").await;
    let good = Good::read(&good_path);
    // The forger's own round trip is sound: a re-framed good bundle verifies.
    let reframed = work.path().join("reframed.tar.zst");
    std::fs::write(&reframed, good.bundle()).unwrap();
    let (code, _, err) = airlock(&["verify", reframed.to_str().unwrap()]);
    assert_eq!(code, 0, "the forged good bundle must verify: {err}");
    assert!(good.manifests().len() > 2);

    let dir = work.path().join("cases");
    std::fs::create_dir(&dir).unwrap();
    let mut cases = build_cases(&good, &dir);

    // Volumes: the same images cut in three or more, and another bundle's.
    let vdir = work.path().join("vols");
    std::fs::create_dir(&vdir).unwrap();
    let largest = good.index.members.iter().map(|m| m.size).max().unwrap();
    let index_len = good.ents[0].data.len() as u64;
    let size = (largest / 2).max(2 * index_len + (96 << 10));
    let export_volumes = |imgs: &[airlock::fixtures::FixtureImage], name: &str| {
        let out = vdir.join(format!("{name}.tar.zst"));
        let sel = airlock::selection::from_refs(&refs(&src, imgs), &[]).unwrap();
        let mut opts = airlock::export::ExportOptions::new(&out);
        opts.volume_size = Some(size);
        let registries = airlock::registry::Registries::new(test_config());
        let name = name.to_string();
        async move {
            airlock::export::export(&registries, &sel, &opts)
                .await
                .unwrap();
            let mut v: Vec<PathBuf> = std::fs::read_dir(out.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy().into_owned();
                    n.starts_with(&format!("{name}.")) && n.ends_with(".tar.zst")
                })
                .collect();
            v.sort();
            v
        }
    };
    let vols = export_volumes(&images[..2], "mirror").await;
    let foreign = export_volumes(&images[..1], "other").await;
    assert!(
        vols.len() >= 3 && foreign.len() >= 2,
        "{vols:?} {foreign:?}"
    );
    cases.extend(volume_cases(&vols, &foreign, &vdir));

    assert!(cases.len() >= 40, "{} cases", cases.len());
    for class in [
        Class::Allocation,
        Class::Bomb,
        Class::OneReader,
        Class::Graph,
        Class::Names,
        Class::Terminal,
        Class::Volumes,
    ] {
        let n = cases.iter().filter(|c| c.class == class).count();
        eprintln!("class {class:?}: {n} cases");
        assert!(n >= 2, "class {class:?} has {n} cases");
    }
    let built = started.elapsed();

    let dst = TestRegistry::start();
    let cases = Arc::new(cases);
    let next = Arc::new(Mutex::new(0usize));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (cases, next, stats, problems, host) = (
                cases.clone(),
                next.clone(),
                stats.clone(),
                problems.clone(),
                dst.host.clone(),
            );
            std::thread::spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(case) = cases.get(i) else { return };
                let p = run_case(i, case, &host, &stats);
                problems.lock().unwrap().extend(p);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    // Nothing of a refused bundle is at the target: no manifest, no tag
    // (distribution keeps both under a repository's `_manifests`).
    let repos = dst.dir.path().join("data/docker/registry/v2/repositories");
    let mut manifests = Vec::new();
    find_dirs(&repos, "_manifests", &mut manifests);
    let mut problems = problems.lock().unwrap().clone();
    for (i, case) in cases.iter().enumerate() {
        for (suffix, want) in [("f", &case.import), ("p", &case.pipe)] {
            let prefix = repos.join(format!("c{i}{suffix}"));
            let landed: Vec<_> = manifests
                .iter()
                .filter(|m| m.starts_with(&prefix))
                .collect();
            match want {
                Outcome::Pass => {
                    if landed.is_empty() {
                        problems.push(format!(
                            "{}: imported, but nothing under c{i}{suffix}",
                            case.name
                        ));
                    }
                }
                _ => {
                    if !landed.is_empty() {
                        problems.push(format!(
                            "{}: manifests or tags pushed: {landed:?}",
                            case.name
                        ));
                    }
                    // A file is checked whole first: not even a blob.
                    if suffix == "f" && prefix.exists() {
                        problems.push(format!(
                            "{}: a file import wrote {}",
                            case.name,
                            prefix.display()
                        ));
                    }
                }
            }
        }
    }
    // A target is honoured only inside the destination the user named.
    let outside: Vec<_> = manifests
        .iter()
        .filter(|m| {
            !m.strip_prefix(&repos)
                .unwrap()
                .to_string_lossy()
                .starts_with('c')
        })
        .collect();
    if !outside.is_empty() {
        problems.push(format!("repositories outside the --to prefix: {outside:?}"));
    }
    if let Some(i) = cases.iter().position(|c| c.name == "target-outside") {
        if !repos
            .join(format!("c{i}f/outside/evil/_manifests"))
            .exists()
        {
            problems.push("target-outside: not placed under the --to prefix".into());
        }
    }

    let s = stats.lock().unwrap();
    eprintln!(
        "{} cases, {} runs: peak RSS {} KiB ({}), slowest {:?} ({}); forging {:?}, total {:?}",
        cases.len(),
        s.runs,
        s.max_rss_kib,
        s.max_rss_what,
        s.max_time,
        s.max_time_what,
        built,
        started.elapsed()
    );
    if std::env::var("AIRLOCK_CORPUS_KEEP").is_ok() {
        let _ = work.keep();
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
