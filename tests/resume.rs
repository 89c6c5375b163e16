//! Interrupted exports: kill -9 then a rerun that resumes, Ctrl-C that
//! leaves only its state, one writer per output, and a file that appears
//! at the output path while the export runs. The `airlock` binary is driven
//! through the fault proxy, which stalls the last blob of the bundle so
//! that the export is caught with every other blob written. Blobs stream
//! into the unfinished bundle in the state directory; a rerun recovers the
//! complete ones from it instead of downloading them again.

mod common;

use common::proxy::{Fault, Proxy, Rule};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A seeded registry behind a proxy, on a runtime of its own so that the
/// test thread may block on child processes.
struct Setup {
    proxy: Proxy,
    _src: TestRegistry,
    refs: Vec<String>,
    /// A full export, made before any fault: the reference.
    full: PathBuf,
    full_report: serde_json::Value,
    /// The last blob of the bundle (fetched last), and how many blobs it has.
    last_blob: String,
    blobs: usize,
    work: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (src, images) = rt.block_on(seeded_source());
    let proxy = rt.block_on(Proxy::start(&src.host, vec![]));
    let refs: Vec<String> = images
        .iter()
        .map(|i| format!("{}/{}:{}", proxy.host, i.repository, i.tag))
        .collect();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("ref")).unwrap();
    let full = work.path().join("ref/full.tar.zst");
    let out = run_ok(&mut cmd(&full, &refs, &["--json"]));
    let full_report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (index, _) = airlock::inspect::read_index(&full).unwrap();
    let blobs: Vec<_> = index
        .members
        .iter()
        .filter(|m| {
            matches!(
                m.kind,
                airlock::bundle::MemberKind::Small | airlock::bundle::MemberKind::Layer
            )
        })
        .collect();
    let last_blob = blobs
        .last()
        .expect("blobs in the bundle")
        .digest
        .to_string();
    let n = blobs.len();
    Setup {
        proxy,
        _src: src,
        refs,
        full,
        full_report,
        last_blob,
        blobs: n,
        work,
        _rt: rt,
    }
}

impl Setup {
    fn stall_last_blob(&self) {
        self.proxy.set_rules(vec![Rule {
            method: "GET",
            path_contains: format!("/blobs/{}", self.last_blob),
            fault: Fault::Stall,
            times: usize::MAX,
        }]);
    }

    fn out(&self) -> PathBuf {
        self.work.path().join("out").join("b.tar.zst")
    }

    fn spawn(&self, extra: &[&str]) -> Child {
        std::fs::create_dir_all(self.out().parent().unwrap()).unwrap();
        cmd(&self.out(), &self.refs, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start airlock export")
    }

    /// Wait until the export has written every blob but the stalled one
    /// into its unfinished bundle (it is then blocked on the last one).
    fn wait_for_all_but_last(&self, child: &mut Child) {
        let state = airlock::output::state_dir(&self.out());
        let deadline = Instant::now() + Duration::from_secs(60);
        while complete_blobs_in_unfinished(&state) < self.blobs - 1
            || self.proxy.count("GET", &self.last_blob) == 0
        {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output_ref();
                panic!("export ended early ({status}): {out}");
            }
            assert!(
                Instant::now() < deadline,
                "export did not reach the last blob"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The same command again, the faults gone: every blob but the last is
    /// recovered from the unfinished bundle, only the last is fetched, and
    /// the bundle is byte for byte the one a fresh export writes.
    fn rerun_fetches_only_the_last_blob(&self) {
        self.proxy.set_rules(vec![]);
        self.proxy.release();
        let gets_before = self.proxy.count("GET", "/blobs/");
        let out = run_ok(&mut cmd(&self.out(), &self.refs, &["--json"]));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["reusedBlobs"], (self.blobs - 1) as u64, "{report}");
        assert_eq!(report["downloadedBlobs"], 1, "{report}");
        let full_bytes = self.full_report["downloadedBytes"].as_u64().unwrap();
        let rerun_bytes = report["downloadedBytes"].as_u64().unwrap();
        assert!(
            full_bytes > 0 && rerun_bytes < full_bytes,
            "the rerun downloaded {rerun_bytes} bytes, a full export {full_bytes}"
        );
        assert_eq!(
            self.proxy.count("GET", "/blobs/") - gets_before,
            1,
            "only the missing blob is fetched again"
        );
        assert_eq!(sha256_file(&self.out()), sha256_file(&self.full));
    }

    /// Names in the output directory.
    fn out_dir_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.out().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

trait ChildExt {
    fn wait_with_output_ref(&mut self) -> String;
}

impl ChildExt for Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

/// `airlock export -q -o OUT REFS… EXTRA…`, reproducible (fixed creation time).
fn cmd(out: &Path, refs: &[String], extra: &[&str]) -> std::process::Command {
    let mut c = airlock_cmd();
    c.env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["export", "-q", "-o"])
        .arg(out)
        .args(refs)
        .args(extra);
    c
}

/// Wait for a child with a deadline: (exit code, stdout, stderr).
fn wait(mut child: Child, within: Duration) -> (Option<i32>, String, String) {
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {within:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify_ok(bundle: &Path) {
    airlock_ok(&["verify", bundle.to_str().unwrap()]);
}

fn sha256_file(p: &Path) -> String {
    airlock::digest::Digest::of(&std::fs::read(p).unwrap()).hex()
}

/// Blobs complete and verified in the unfinished bundle(s) of `state`:
/// what a rerun recovers.
fn complete_blobs_in_unfinished(state: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(state) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(airlock::output::PARTIAL_OUTPUT_SUFFIX) {
            continue;
        }
        let Ok(f) = std::fs::File::open(e.path()) else {
            continue;
        };
        let _ = airlock::bundle::read_whole_members(f, &name, |m, data| {
            if matches!(
                m.kind,
                airlock::bundle::MemberKind::Small | airlock::bundle::MemberKind::Layer
            ) {
                std::io::copy(data, &mut std::io::sink())
                    .map_err(|e| airlock::bundle::member_error(&name, m, e))?;
                n += 1;
            }
            Ok(())
        });
    }
    n
}

/// Every file in `STATE/blobs/sha256` is a complete blob: its sha256 is its name.
fn assert_only_verified_blobs(state: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(state.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(
            sha256_file(&e.path()),
            name,
            "{name} is not what its name says"
        );
        n += 1;
    }
    n
}

#[test]
fn kill_9_mid_export_then_the_same_command_resumes() {
    let s = setup();
    s.stall_last_blob();
    let mut child = s.spawn(&[]);
    s.wait_for_all_but_last(&mut child);
    child.kill().unwrap(); // SIGKILL: nothing of airlock runs after it
    child.wait().unwrap();

    let state = airlock::output::state_dir(&s.out());
    assert_eq!(
        s.out_dir_names(),
        ["b.tar.zst.partial"],
        "the killed run left only its state directory"
    );
    assert_eq!(complete_blobs_in_unfinished(&state), s.blobs - 1);

    s.rerun_fetches_only_the_last_blob();
    verify_ok(&s.out());
    assert_eq!(
        s.out_dir_names(),
        ["b.tar.zst", "b.tar.zst.sha256"],
        "stale temp files and the state directory are gone"
    );
}

/// Signal an export blocked on its last blob: it must stop at once with
/// `code`, say in one line where its state is, and leave only that state
/// directory, holding nothing but complete blobs.
fn interrupt_mid_export(signal: libc::c_int, code: i32) {
    let s = setup();
    s.stall_last_blob();
    let mut child = s.spawn(&[]);
    s.wait_for_all_but_last(&mut child);
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid, which has not been reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0);
    let (status, _, stderr) = wait(child, Duration::from_secs(10));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?}",
        signalled.elapsed()
    );
    assert_eq!(status, Some(code), "{stderr}");
    let state = airlock::output::state_dir(&s.out());
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    assert!(stderr.contains("rerun the same command"), "{stderr}");

    assert_eq!(
        s.out_dir_names(),
        ["b.tar.zst.partial"],
        "nothing but the state directory"
    );
    let mut inside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(airlock::output::PARTIAL_OUTPUT_SUFFIX))
        .collect();
    inside.sort();
    assert_eq!(inside, ["blobs", "lock"], "no download in flight is kept");
    assert_eq!(complete_blobs_in_unfinished(&state), s.blobs - 1);
    // The rerun takes them from there and fetches only the last blob.
    s.rerun_fetches_only_the_last_blob();
    // The temp spool of older versions is not used for a file output.
    assert!(!s
        .out_dir_names()
        .iter()
        .any(|n| n.contains("airlock-spool")));
}

#[test]
fn ctrl_c_stops_promptly_and_keeps_only_verified_blobs() {
    interrupt_mid_export(libc::SIGINT, 130);
}

#[test]
fn sigterm_stops_like_ctrl_c() {
    interrupt_mid_export(libc::SIGTERM, 143);
}

#[test]
fn two_exports_to_one_output_one_is_refused_at_once() {
    let s = setup();
    s.stall_last_blob();
    let mut first = s.spawn(&["--json"]);
    s.wait_for_all_but_last(&mut first);

    let started = Instant::now();
    let out = cmd(&s.out(), &s.refs, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another airlock export is writing b.tar.zst"),
        "{stderr}"
    );
    let lock = airlock::output::state_dir(&s.out()).join("lock");
    assert!(stderr.contains(&lock.display().to_string()), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );
    // The refused export took nothing from the running one.
    assert_eq!(
        complete_blobs_in_unfinished(&airlock::output::state_dir(&s.out())),
        s.blobs - 1
    );

    s.proxy.release();
    let (code, stdout, stderr) = wait(first, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["fileSha256"].as_str().unwrap(),
        sha256_file(&s.out()),
        "the file is the winner's"
    );
    verify_ok(&s.out());
    assert_eq!(s.out_dir_names(), ["b.tar.zst", "b.tar.zst.sha256"]);
}

#[test]
fn a_file_that_appears_at_the_output_is_not_replaced_without_force() {
    let s = setup();
    s.stall_last_blob();
    let mut child = s.spawn(&[]);
    s.wait_for_all_but_last(&mut child);
    let foreign = b"someone else's file\n";
    std::fs::write(s.out(), foreign).unwrap();
    s.proxy.release();
    let (code, _, stderr) = wait(child, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&s.out().display().to_string()) && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(s.out()).unwrap(), foreign, "left as it was");
    // No temp output, no sidecar for a bundle that was not published; the
    // unfinished bundle (here whole) stays in the state for the rerun.
    assert_eq!(s.out_dir_names(), ["b.tar.zst", "b.tar.zst.partial"]);
    let state = airlock::output::state_dir(&s.out());
    assert_eq!(complete_blobs_in_unfinished(&state), s.blobs);

    let out = run_ok(&mut cmd(&s.out(), &s.refs, &["--json", "--force"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reusedBlobs"], s.blobs as u64, "{report}");
    assert_eq!(report["downloadedBlobs"], 0, "{report}");
    verify_ok(&s.out());
    assert_eq!(s.out_dir_names(), ["b.tar.zst", "b.tar.zst.sha256"]);
}

#[test]
fn a_cache_dir_is_kept_and_a_corrupt_entry_is_fetched_again() {
    let s = setup();
    let cache = s.work.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    std::fs::create_dir_all(s.out().parent().unwrap()).unwrap();
    let out = run_ok(&mut cmd(
        &s.out(),
        &s.refs,
        &["--json", "--cache-dir", cache_arg],
    ));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["downloadedBlobs"], s.blobs as u64, "{first}");
    assert_eq!(
        assert_only_verified_blobs(&cache),
        s.blobs,
        "the cache is kept"
    );
    assert_eq!(s.out_dir_names(), ["b.tar.zst", "b.tar.zst.sha256"]);

    // A power cut can leave a renamed blob without its data: same size,
    // other bytes. It is re-hashed, deleted and downloaded again.
    let last = cache
        .join("blobs/sha256")
        .join(s.last_blob.trim_start_matches("sha256:"));
    let len = std::fs::metadata(&last).unwrap().len() as usize;
    std::fs::write(&last, vec![0u8; len]).unwrap();
    let second_out = s.work.path().join("out/c.tar.zst");
    let out = run_ok(&mut cmd(
        &second_out,
        &s.refs,
        &["--json", "--cache-dir", cache_arg],
    ));
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(second["reusedBlobs"], (s.blobs - 1) as u64, "{second}");
    assert_eq!(second["downloadedBlobs"], 1, "{second}");
    assert_eq!(assert_only_verified_blobs(&cache), s.blobs);
    verify_ok(&second_out);
    assert_eq!(sha256_file(&second_out), sha256_file(&s.full));
}
