//! The copy engine (`airlock::copy::copy`) against in-memory stores: no
//! registry, no process. Each of the engine's four ways of moving blobs
//! (random or one-pass source, any-order or ordered sink) is held to the
//! promises the stores rely on: every blob once, nothing before `prepare`,
//! `commit` only after every put, the sink's order kept, a one-pass source
//! read in order, a bad blob never committed, the gate before everything.

use airlock::bundle::{BundleSink, BundleSource, Output, WriteOptions};
use airlock::copy::{copy, CopyOptions, CopyReport};
use airlock::digest::Digest;
use airlock::gate::Gate;
use airlock::progress::{EventsHandle, NoEvents};
use airlock::store::memory::{
    test_graph, Event, MemorySink, MemorySource, SinkOrder, TestContent, TestSpec, Timeline,
};
use airlock::store::null::NullSink;
use airlock::store::{GraphRequest, Sink, Source};
use airlock::{Error, ErrorKind};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The engine's four ways: source kind × sink kind.
#[derive(Clone, Copy, Debug)]
enum Mode {
    RandomAny,
    /// The sink wants the reverse of the source's order.
    RandomOrdered,
    OnePassAny,
    /// The sink wants the source's own order (the only one a pipe can give).
    OnePassOrdered,
}

const MODES: [Mode; 4] = [
    Mode::RandomAny,
    Mode::RandomOrdered,
    Mode::OnePassAny,
    Mode::OnePassOrdered,
];

impl Mode {
    fn source(self, c: &TestContent, t: &Timeline) -> MemorySource {
        let s = match self {
            Mode::RandomAny | Mode::RandomOrdered => MemorySource::new(c),
            Mode::OnePassAny | Mode::OnePassOrdered => MemorySource::sequential(c),
        };
        // Fetches under way together finish in reverse: an engine that
        // forwarded them as they complete would break any order.
        s.with_timeline(t)
            .with_fetch_delay(Duration::from_micros(300))
    }

    fn sink(self, t: &Timeline) -> MemorySink {
        let mut s = MemorySink::new().with_timeline(t);
        s.order = match self {
            Mode::RandomAny | Mode::OnePassAny => SinkOrder::Any,
            Mode::RandomOrdered => SinkOrder::Reversed,
            Mode::OnePassOrdered => SinkOrder::AsGraph,
        };
        s.put_delay = Some(Duration::from_millis(1));
        s
    }

    fn ordered(self) -> bool {
        matches!(self, Mode::RandomOrdered | Mode::OnePassOrdered)
    }

    /// The order the sink asks for, before the engine leaves blobs out.
    fn sink_order(self, c: &TestContent) -> Vec<Digest> {
        let mut o = c.order();
        if matches!(self, Mode::RandomOrdered) {
            o.reverse();
        }
        o
    }
}

fn content() -> TestContent {
    test_graph(TestSpec {
        images: 3,
        layers: 3,
        shared_layer: true,
        signed: false,
    })
}

fn opts(jobs: usize) -> CopyOptions {
    CopyOptions::new(jobs, "engine test", EventsHandle::default())
}

fn counts(ds: &[Digest]) -> HashMap<Digest, usize> {
    let mut m = HashMap::new();
    for d in ds {
        *m.entry(d.clone()).or_default() += 1;
    }
    m
}

fn fetches(events: &[Event]) -> Vec<Digest> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Fetch(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn size_of(c: &TestContent, ds: &HashSet<Digest>) -> u64 {
    ds.iter().map(|d| c.bytes(d).len() as u64).sum()
}

/// Each blob of `want`, exactly once, and nothing else.
fn assert_each_once(what: &str, got: &[Digest], want: &[Digest]) {
    let got_counts = counts(got);
    for (d, n) in &got_counts {
        assert_eq!(*n, 1, "{what}: {d} {n} times");
    }
    let got: HashSet<&Digest> = got.iter().collect();
    let want: HashSet<&Digest> = want.iter().collect();
    assert_eq!(got, want, "{what}: not the expected blobs");
}

async fn run(
    source: &mut MemorySource,
    c: &TestContent,
    sink: &mut MemorySink,
    jobs: usize,
) -> Result<CopyReport, Error> {
    copy(source, &c.graph, sink, &opts(jobs)).await
}

#[tokio::test]
async fn every_blob_arrives_exactly_once() {
    let c = content();
    let all = c.order();
    assert_eq!(all.len(), 3 * 4 + 1, "3 configs, 9 own layers, 1 shared");
    for mode in MODES {
        for jobs in [1, 4] {
            let t = Timeline::default();
            let mut source = mode.source(&c, &t);
            let mut sink = mode.sink(&t);
            let report = run(&mut source, &c, &mut sink, jobs)
                .await
                .unwrap_or_else(|e| panic!("{mode:?} jobs={jobs}: {e}"));
            let what = format!("{mode:?} jobs={jobs}");
            assert_each_once(&format!("{what}: fetches"), &source.fetched(), &all);
            assert_each_once(&format!("{what}: puts"), &sink.puts(), &all);
            if mode.ordered() {
                assert_eq!(sink.puts(), mode.sink_order(&c), "{what}: put order");
            }
            for d in &all {
                assert_eq!(
                    sink.stored(d).as_ref(),
                    Some(c.bytes(d)),
                    "{what}: bytes of {d}"
                );
            }
            assert_eq!(report.blobs_stored, all.len(), "{what}: blobs_stored");
            assert_eq!(
                report.bytes_sent,
                c.graph.blob_bytes(),
                "{what}: bytes_sent"
            );
            assert_eq!(report.blobs_present, 0, "{what}: blobs_present");
            assert_eq!(report.bytes_skipped, 0, "{what}: bytes_skipped");
            assert_eq!(source.finish_calls(), 1, "{what}: source finished once");
            assert!(sink.committed(), "{what}: committed");
        }
    }
}

#[tokio::test]
async fn present_blobs_are_skipped_and_counted_unwanted_blobs_are_neither() {
    let c = content();
    let all = c.order();
    // The shared layer, a config and a layer of another image are present;
    // a layer in the middle is unwanted.
    let present: HashSet<Digest> = [all[1].clone(), all[0].clone(), all[6].clone()].into();
    let unwanted: HashSet<Digest> = [all[9].clone()].into();
    let moved: Vec<Digest> = all
        .iter()
        .filter(|d| !present.contains(*d) && !unwanted.contains(*d))
        .cloned()
        .collect();
    for mode in MODES {
        let t = Timeline::default();
        let mut source = mode.source(&c, &t);
        let mut sink = mode.sink(&t);
        sink.present = present.clone();
        sink.unwanted = unwanted.clone();
        let report = run(&mut source, &c, &mut sink, 4)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_each_once(&format!("{mode:?}: fetches"), &source.fetched(), &moved);
        assert_each_once(&format!("{mode:?}: puts"), &sink.puts(), &moved);
        assert_eq!(
            report.blobs_present,
            present.len(),
            "{mode:?}: blobs_present"
        );
        assert_eq!(
            report.bytes_skipped,
            size_of(&c, &present),
            "{mode:?}: bytes_skipped (present blobs only)"
        );
        assert_eq!(report.blobs_stored, moved.len(), "{mode:?}: blobs_stored");
        assert_eq!(
            report.bytes_sent,
            c.graph.blob_bytes() - size_of(&c, &present) - size_of(&c, &unwanted),
            "{mode:?}: bytes_sent"
        );
        assert_eq!(report.blobs_mounted, 0, "{mode:?}: blobs_mounted");
        assert!(sink.committed(), "{mode:?}: committed");
    }
}

#[tokio::test]
async fn an_ordered_sink_receives_blobs_in_its_order() {
    let c = content();
    let all = c.order();
    let present: HashSet<Digest> = [all[4].clone()].into();
    for mode in [Mode::RandomOrdered, Mode::OnePassOrdered] {
        for jobs in [1, 6] {
            let t = Timeline::default();
            let mut source = mode.source(&c, &t);
            let mut sink = mode.sink(&t);
            sink.present = present.clone();
            run(&mut source, &c, &mut sink, jobs)
                .await
                .unwrap_or_else(|e| panic!("{mode:?} jobs={jobs}: {e}"));
            let want: Vec<Digest> = mode
                .sink_order(&c)
                .into_iter()
                .filter(|d| !present.contains(d))
                .collect();
            assert_eq!(sink.puts(), want, "{mode:?} jobs={jobs}: put order");
            assert_eq!(
                sink.max_in_flight(),
                1,
                "{mode:?} jobs={jobs}: one put at a time"
            );
        }
    }
    // The reversed order really differs from the source's: the check above
    // is not the source's order by accident.
    assert_ne!(Mode::RandomOrdered.sink_order(&c), all);
}

#[tokio::test]
async fn a_one_pass_source_refuses_a_sink_order_before_anything_moves() {
    let c = content();
    let t = Timeline::default();
    let mut source = Mode::OnePassAny.source(&c, &t);
    let mut sink = MemorySink::new().with_timeline(&t);
    sink.order = SinkOrder::Reversed;
    let err = run(&mut source, &c, &mut sink, 4)
        .await
        .expect_err("a pipe cannot be read in reverse");
    assert!(matches!(err, Error::Refused(_)), "{err:?}");
    assert_eq!(t.events(), vec![Event::Prepare], "only prepare happened");
    assert!(source.fetched().is_empty(), "nothing fetched");
    assert_eq!(sink.stored_count(), 0);
}

#[tokio::test]
async fn a_one_pass_source_is_read_in_graph_order_with_puts_in_parallel() {
    let c = content();
    let all = c.order();
    // Blobs skipped in the middle are read past, not asked for.
    let present: HashSet<Digest> = [all[2].clone(), all[7].clone()].into();
    let want: Vec<Digest> = all
        .iter()
        .filter(|d| !present.contains(*d))
        .cloned()
        .collect();
    let jobs = 4;
    let t = Timeline::default();
    let mut source = Mode::OnePassAny.source(&c, &t);
    let mut sink = Mode::OnePassAny.sink(&t);
    sink.put_delay = Some(Duration::from_millis(5));
    sink.present = present;
    run(&mut source, &c, &mut sink, jobs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source.fetched(), want, "fetch order");
    assert!(
        sink.max_in_flight() > 1,
        "puts overlap with jobs={jobs}: at most {} at once",
        sink.max_in_flight()
    );
    assert!(
        sink.max_in_flight() <= jobs,
        "{} puts at once, more than jobs={jobs}",
        sink.max_in_flight()
    );
}

#[tokio::test]
async fn prepare_comes_first_and_commit_after_every_put() {
    let c = content();
    for mode in MODES {
        let t = Timeline::default();
        let mut source = mode.source(&c, &t);
        let mut sink = mode.sink(&t);
        sink.put_delay = Some(Duration::from_millis(2));
        run(&mut source, &c, &mut sink, 4)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let events = t.events();
        assert_eq!(
            events.first(),
            Some(&Event::Prepare),
            "{mode:?}: {events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| **e == Event::Prepare).count(),
            1,
            "{mode:?}: one prepare"
        );
        assert_eq!(events.last(), Some(&Event::Commit), "{mode:?}: {events:?}");
        assert_eq!(
            events.iter().filter(|e| **e == Event::Commit).count(),
            1,
            "{mode:?}: one commit"
        );
        let finish = events.iter().position(|e| *e == Event::Finish);
        assert!(
            finish.is_some_and(|f| f + 1 == events.len() - 1),
            "{mode:?}: the source finishes right before the commit: {events:?}"
        );
        // Every put started has finished (its bytes stored) before commit.
        let puts = sink.puts();
        let stored: Vec<Digest> = events
            .iter()
            .filter_map(|e| match e {
                Event::Stored(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        assert_each_once(&format!("{mode:?}: stored"), &stored, &puts);
        assert_each_once(&format!("{mode:?}: fetches"), &fetches(&events), &puts);
    }
}

#[tokio::test]
async fn a_corrupt_blob_fails_the_copy_naming_it_and_nothing_is_committed() {
    let c = content();
    let all = c.order();
    for bad in [&all[0], &all[5], all.last().unwrap()] {
        for mode in MODES {
            let t = Timeline::default();
            let mut source = mode.source(&c, &t);
            source.corrupt(bad);
            let mut sink = mode.sink(&t);
            let err = run(&mut source, &c, &mut sink, 4)
                .await
                .expect_err(&format!("{mode:?}: copy of corrupt {bad} succeeded"));
            let msg = err.to_string();
            assert!(
                msg.contains(&bad.hex()),
                "{mode:?}: error names {bad}: {msg}"
            );
            assert_eq!(err.kind(), ErrorKind::Integrity, "{mode:?}: {msg}");
            assert!(
                !t.events().contains(&Event::Commit),
                "{mode:?}: committed after {msg}: {:?}",
                t.events()
            );
            assert!(sink.stored(bad).is_none(), "{mode:?}: corrupt bytes kept");
        }
    }
    // The fault is in the blob, not the setup: the same copy without it passes.
    let t = Timeline::default();
    let mut source = MemorySource::new(&c).with_timeline(&t);
    let mut sink = MemorySink::new().with_timeline(&t);
    run(&mut source, &c, &mut sink, 4).await.unwrap();
}

#[tokio::test]
async fn a_blob_reopens_from_its_first_byte() {
    let c = content();
    for mode in MODES {
        let t = Timeline::default();
        let mut source = mode.source(&c, &t);
        let mut sink = mode.sink(&t);
        sink.fail_first_attempt = true;
        run(&mut source, &c, &mut sink, 4)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_stored_whole(&format!("{mode:?}"), &sink, &c, 2);
    }
}

/// Every blob of `c` stored byte for byte, each opened `opens` times.
fn assert_stored_whole(what: &str, sink: &MemorySink, c: &TestContent, opens: usize) {
    for d in c.order() {
        assert_eq!(sink.opens(&d), opens, "{what}: {d} opened");
        let got = sink
            .stored(&d)
            .unwrap_or_else(|| panic!("{what}: {d} not stored"));
        assert_eq!(&got, c.bytes(&d), "{what}: {d} stored bytes");
    }
}

/// The real blobs of a bundle (members of a file, spooled blobs of a
/// stream) reopen from their first byte too.
#[tokio::test]
async fn a_bundle_blob_reopens_from_its_first_byte() {
    let c = content();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.tar.zst");
    let mut bundle = BundleSink::new(
        Output::File(path.clone()),
        WriteOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut source = MemorySource::new(&c);
    copy(&mut source, &c.graph, &mut bundle, &opts(4))
        .await
        .expect("bundle written");

    let mut file = BundleSource::open_file(&path).unwrap();
    assert!(!file.sequential(), "a bundle file is random access");
    let graph = file.graph(GraphRequest::default()).await.unwrap();
    let mut sink = MemorySink::new();
    sink.fail_first_attempt = true;
    copy(&mut file, &graph, &mut sink, &opts(4))
        .await
        .expect("copy from the bundle file");
    assert_stored_whole("bundle file", &sink, &c, 2);

    let input = std::fs::File::open(&path).unwrap();
    let mut stream = BundleSource::stream(Box::new(input), "engine stream");
    assert!(stream.sequential(), "a bundle stream is one pass");
    let graph = stream.graph(GraphRequest::default()).await.unwrap();
    let mut sink = MemorySink::new();
    sink.fail_first_attempt = true;
    copy(&mut stream, &graph, &mut sink, &opts(4))
        .await
        .expect("copy from the bundle stream");
    assert_stored_whole("bundle stream", &sink, &c, 2);
}

/// A sink's order that lists one blob twice and leaves another out has as
/// many entries as the blobs to move; the engine must still refuse it
/// before the first put (a bundle would otherwise hold a member twice and
/// lack one).
#[tokio::test]
async fn a_sink_order_with_a_blob_twice_and_one_missing_is_refused_before_any_put() {
    let c = content();
    let mut order = c.order();
    let dropped = order.remove(3);
    let twice = order[4].clone();
    order.insert(5, twice.clone());
    assert_eq!(order.len(), c.graph.blobs.len());
    let t = Timeline::default();
    let mut source = MemorySource::new(&c).with_timeline(&t);
    let mut sink = MemorySink::new().with_timeline(&t);
    sink.order = SinkOrder::Exactly(order);
    let result = run(&mut source, &c, &mut sink, 4).await;
    assert!(
        sink.puts().is_empty(),
        "puts of a broken sink order (blob {dropped} never put, {twice} put twice): {:?}; copy returned {result:?}",
        sink.puts()
    );
    assert!(result.is_err(), "copy with a broken sink order succeeded");
}

/// What `transfer` and `import_into` do: the graph, the gate, a check of
/// every local blob, then the copy.
async fn gated_copy(
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    gate: &Gate<'_>,
) -> Result<CopyReport, Error> {
    let name = source.name();
    let graph = source.graph(GraphRequest { payloads: false }).await?;
    gate.check(&graph, &name, &NoEvents)?;
    if source.rereadable() {
        let mut null = NullSink::new(&name);
        copy(source, &graph, &mut null, &opts(4)).await?;
    }
    copy(source, &graph, sink, &opts(4)).await
}

fn gate(require_signatures: bool) -> Gate<'static> {
    Gate {
        policy: None,
        require_signatures,
        outcome: "nothing was copied",
        names_unique: true,
    }
}

#[tokio::test]
async fn the_gate_refuses_an_unsigned_image_before_prepare() {
    let unsigned = content();
    for sequential in [false, true] {
        let t = Timeline::default();
        let mut source = if sequential {
            MemorySource::sequential(&unsigned)
        } else {
            MemorySource::new(&unsigned)
        }
        .with_timeline(&t);
        let mut sink = MemorySink::new().with_timeline(&t);
        let err = gated_copy(&mut source, &mut sink, &gate(true))
            .await
            .expect_err("unsigned images under --require-signatures");
        assert!(matches!(err, Error::Unsigned(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("mem.example/app0:v1") && msg.contains("nothing was copied"),
            "{msg}"
        );
        assert!(
            t.events().is_empty(),
            "sink or source touched: {:?}",
            t.events()
        );
    }

    // Controls: the same images pass without the requirement, and signed
    // ones pass with it (the refusal above is the gate's, for the signatures).
    let t = Timeline::default();
    let mut source = MemorySource::new(&unsigned).with_timeline(&t);
    let mut sink = MemorySink::new().with_timeline(&t);
    gated_copy(&mut source, &mut sink, &gate(false))
        .await
        .expect("unsigned images without --require-signatures");
    assert!(sink.committed());

    let signed = test_graph(TestSpec {
        signed: true,
        ..TestSpec::default()
    });
    for sequential in [false, true] {
        let t = Timeline::default();
        let mut source = if sequential {
            MemorySource::sequential(&signed)
        } else {
            MemorySource::new(&signed)
        }
        .with_timeline(&t);
        let mut sink = MemorySink::new().with_timeline(&t);
        gated_copy(&mut source, &mut sink, &gate(true))
            .await
            .unwrap_or_else(|e| panic!("signed images, sequential={sequential}: {e}"));
        assert_eq!(t.position(&Event::Prepare).map(|_| ()), Some(()));
        assert_stored_whole("signed", &sink, &signed, 1);
    }
}
