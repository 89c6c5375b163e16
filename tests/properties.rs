//! Property tests (a bounded fuzz run in CI): the bundle reader under
//! random damage — flipped bytes, truncations, inserted frames — on every
//! read path (stream and random access) returns an error or exactly the
//! original members, never panics and never allocates more than a bound;
//! the selection-file and policy-file parsers never panic on any input.
//! `PROPTEST_CASES` raises the number of cases (default 256 each).

use airlock::bundle::{read_stream, BundleWriter, SeekableBundle, StreamEvent};
use airlock::digest::Digest;
use proptest::prelude::*;
use proptest::sample::Index;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

// ------------------------------------------------ allocation accounting

/// Counts live heap bytes and their peak, so a property can bound what one
/// read allocated (zstd's own buffers are C allocations, bounded by the
/// window cap instead).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What one read may allocate on top of what was live before it.
const ALLOC_LIMIT: usize = 64 << 20;

/// Run `f`; the most bytes it had allocated at once (other threads of the
/// test binary are counted too, so the bound is generous).
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

// ------------------------------------------------ a small valid bundle

struct Sample {
    bytes: Vec<u8>,
    /// Compressed offsets where a frame starts.
    boundaries: Vec<usize>,
    members: BTreeMap<String, Vec<u8>>,
    digest: Digest,
}

fn sample() -> &'static Sample {
    static S: OnceLock<Sample> = OnceLock::new();
    S.get_or_init(|| {
        // A blob larger than the frame size, so a member spans frames.
        let big: Vec<u8> = (0..9000u32).map(|i| (i * 7 % 251) as u8).collect();
        let small = b"{\"architecture\":\"amd64\"}".to_vec();
        let layout = airlock::layout::OCI_LAYOUT_BYTES.to_vec();
        let index_json = airlock::layout::index_json(&[]);
        let files = [
            ("oci-layout".to_string(), layout, "layout"),
            ("index.json".to_string(), index_json, "layout"),
            (Digest::of(&small).layout_path(), small, "small"),
            (Digest::of(&big).layout_path(), big, "layer"),
        ];
        let members: Vec<serde_json::Value> = files
            .iter()
            .map(|(p, d, k)| {
                serde_json::json!({"path": p, "digest": Digest::of(d), "size": d.len(), "kind": k})
            })
            .collect();
        let index = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 1,
            "mediaType": airlock::bundle::INDEX_MEDIA_TYPE,
            "tool": "properties",
            "created": "2026-01-01T00:00:00Z",
            "images": [],
            "members": members,
        }))
        .unwrap();
        let mut w = BundleWriter::new(Vec::new(), 3, 1, 4096).unwrap();
        w.append(
            airlock::bundle::INDEX_PATH,
            index.len() as u64,
            &mut &index[..],
        )
        .unwrap();
        for (p, d, _) in &files {
            w.append(p, d.len() as u64, &mut &d[..]).unwrap();
        }
        let (bytes, frames) = w.finish().unwrap();
        let mut boundaries = vec![0];
        for f in &frames {
            boundaries.push(boundaries.last().unwrap() + f.compressed as usize);
        }
        Sample {
            bytes,
            boundaries,
            members: files.into_iter().map(|(p, d, _)| (p, d)).collect(),
            digest: Digest::of(&index),
        }
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    /// A zstd frame of these bytes at a frame boundary.
    Frame(Index, Vec<u8>),
    /// A skippable frame with this payload at a frame boundary.
    Skippable(Index, u8, Vec<u8>),
    /// Raw bytes anywhere.
    Bytes(Index, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 0..2048))
            .prop_map(|(i, d)| Mutation::Frame(i, d)),
        1 => (any::<Index>(), 0..16u8, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(i, m, d)| Mutation::Skippable(i, m, d)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(i, d)| Mutation::Bytes(i, d)),
    ]
}

fn apply(s: &Sample, muts: &[Mutation]) -> Vec<u8> {
    let mut b = s.bytes.clone();
    for m in muts {
        match m {
            Mutation::Flip(i, x) if !b.is_empty() => {
                let at = i.index(b.len());
                b[at] ^= x;
            }
            Mutation::Truncate(i) => b.truncate(i.index(b.len() + 1)),
            Mutation::Frame(i, d) => {
                let at = s.boundaries[i.index(s.boundaries.len())].min(b.len());
                let f = zstd::bulk::compress(d, 1).unwrap();
                b.splice(at..at, f);
            }
            Mutation::Skippable(i, magic, d) => {
                let at = s.boundaries[i.index(s.boundaries.len())].min(b.len());
                let mut f = vec![0x50 | magic, 0x2A, 0x4D, 0x18];
                f.extend_from_slice(&(d.len() as u32).to_le_bytes());
                f.extend_from_slice(d);
                b.splice(at..at, f);
            }
            Mutation::Bytes(i, d) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, d.iter().copied());
            }
            Mutation::Flip(..) => {}
        }
    }
    b
}

/// Every member through the one-pass reader: `Some` when it accepted the input.
fn read_as_stream(bytes: &[u8]) -> Option<(Digest, BTreeMap<String, Vec<u8>>)> {
    let mut got = BTreeMap::new();
    let mut digest = None;
    let r = read_stream(bytes, "prop", |ev| {
        match ev {
            StreamEvent::Index { digest: d, .. } => digest = Some(d.clone()),
            StreamEvent::Member { member, data } => {
                let mut v = Vec::new();
                data.read_to_end(&mut v)
                    .map_err(|e| airlock::bundle::member_error("prop", member, e))?;
                got.insert(member.path.clone(), v);
            }
        }
        Ok(())
    });
    r.ok()
        .map(|_| (digest.unwrap_or_else(|| Digest::of(b"")), got))
}

/// Every member through random access (when the file has a usable seek table).
fn read_as_file(bytes: &[u8]) -> Option<(Digest, BTreeMap<String, Vec<u8>>)> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    let b = SeekableBundle::open(f.path()).ok()??;
    let mut got = BTreeMap::new();
    for (i, m) in b.index.members.iter().enumerate() {
        got.insert(m.path.clone(), b.read_member(i).ok()?);
    }
    b.check_end().ok()?;
    Some((b.digest.clone(), got))
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_bundles_give_an_error_or_the_original_members(
        muts in prop::collection::vec(mutation(), 1..4)
    ) {
        let s = sample();
        let bytes = apply(s, &muts);
        for (path, read) in [
            ("stream", read_as_stream as fn(&[u8]) -> _),
            ("file", read_as_file),
        ] {
            let (got, peak) = peak_of(|| read(&bytes));
            prop_assert!(peak <= ALLOC_LIMIT, "{path}: {peak} bytes allocated");
            if let Some((digest, members)) = got {
                prop_assert_eq!(&digest, &s.digest, "{} accepted another bundle index", path);
                prop_assert!(members == s.members, "{path}: accepted changed member bytes");
            }
        }
    }

    #[test]
    fn the_selection_parser_never_panics_on_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&raw);
        let _ = airlock::selection::parse_selection(&text, "fuzz.yaml");
    }

    #[test]
    fn the_parsers_never_panic_on_yaml_shaped_input(
        tokens in prop::collection::vec(prop::sample::select(YAML_TOKENS), 0..48)
    ) {
        let text: String = tokens.concat();
        let _ = airlock::selection::parse_selection(&text, "fuzz.yaml");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.yaml");
        std::fs::write(&p, &text).unwrap();
        let _ = airlock::trust::Policy::from_file(&p);
    }

    #[test]
    fn the_policy_parser_never_panics_on_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.yaml");
        std::fs::write(&p, &raw).unwrap();
        let _ = airlock::trust::Policy::from_file(&p);
    }
}

/// Pieces of the two files' grammar, so that random input reaches past the
/// first YAML error into the fields.
const YAML_TOKENS: &[&str] = &[
    "images:\n",
    "rules:\n",
    "  - ",
    "ref: ",
    "tags: ",
    "tagPattern: ",
    "digests: ",
    "platforms: ",
    "target: ",
    "repositories: ",
    "keys: ",
    "keyless:\n",
    "identity: ",
    "issuer: ",
    "attestations: ",
    "mode: ",
    "requireTlog: ",
    "trustedRoot: ",
    "certificates:\n",
    "roots: ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "\n",
    "    ",
    "&a ",
    "*a ",
    "\"",
    "'",
    "registry.example/vendor/agent",
    ":1.0",
    "@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "oci:/nonexistent",
    "linux/amd64",
    "\"(\"",
    "**",
    "sha256:",
    "-1",
    "99999999999999999999",
    "true",
    "~",
    "!!binary ",
    "\u{1b}[2K",
];

/// The YAML alias bomb ("billion laughs"): refused or read quickly, in bounded memory.
#[test]
fn yaml_alias_bombs_stay_bounded() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("images: *a11\nrules: *a11\n");
    let started = std::time::Instant::now();
    let (sel, peak) = peak_of(|| airlock::selection::parse_selection(&text, "bomb.yaml"));
    assert!(sel.is_err(), "an alias bomb is not a selection");
    assert!(
        peak <= ALLOC_LIMIT,
        "{peak} bytes allocated for a selection bomb"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, &text).unwrap();
    let (policy, peak) = peak_of(|| airlock::trust::Policy::from_file(&p));
    assert!(policy.is_err(), "an alias bomb is not a policy");
    assert!(
        peak <= ALLOC_LIMIT,
        "{peak} bytes allocated for a policy bomb"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// The sample itself reads back on both paths: the properties above can fail.
#[test]
fn the_undamaged_sample_reads_back() {
    let s = sample();
    let (d, m) = read_as_stream(&s.bytes).expect("stream");
    assert_eq!((d, m), (s.digest.clone(), s.members.clone()));
    let (d, m) = read_as_file(&s.bytes).expect("file");
    assert_eq!((d, m), (s.digest.clone(), s.members.clone()));
}
