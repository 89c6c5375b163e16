//! Progress for long transfers: a live bar (bytes, rate, ETA) on a
//! terminal (indicatif), a plain line every few seconds otherwise (logs,
//! CI), silence with `--quiet`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static QUIET: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// `-v`: the registry client logs each request through the events.
pub fn set_verbose(v: bool) {
    VERBOSE.store(v, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

/// Every bar on the terminal, so that notes print above them.
fn bars() -> &'static indicatif::MultiProgress {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(|| {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(5))
    })
}

/// How often a progress line is written when stderr is not a terminal:
/// 5 s, or `AIRLOCK_PROGRESS_INTERVAL` seconds (a CI log may want fewer).
fn line_every() -> Duration {
    std::env::var("AIRLOCK_PROGRESS_INTERVAL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.1)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(5))
}

/// A human message on stderr (never on stdout, which `--json` owns).
pub fn note(msg: &str) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    if std::io::stderr().is_terminal() {
        let _ = bars().println(printable_text(msg));
        return;
    }
    let _ = writeln!(std::io::stderr().lock(), "{}", printable_text(msg));
}

/// Where the library's notes and progress go (unsigned-image warnings,
/// policy verdict lines, retries, transfer progress): the library never
/// prints; the CLI passes [`StderrEvents`], a library user what it wants.
pub trait Events: Send + Sync {
    fn note(&self, line: &str);
    /// A counter for a long phase; drawn or not, as the renderer decides.
    fn progress(&self, _label: &str, _total: u64) -> Progress {
        Progress::hidden()
    }
}

/// Notes and a live progress line on stderr (silenced by `--quiet`).
pub struct StderrEvents;

impl Events for StderrEvents {
    fn note(&self, line: &str) {
        note(line)
    }
    fn progress(&self, label: &str, total: u64) -> Progress {
        Progress::start(label, total)
    }
}

/// Nothing shown (the default for library calls).
pub struct NoEvents;

impl Events for NoEvents {
    fn note(&self, _line: &str) {}
}

/// An [`Events`] to keep in configuration structs (cloneable, printable).
#[derive(Clone)]
pub struct EventsHandle(pub Arc<dyn Events>);

impl Default for EventsHandle {
    fn default() -> Self {
        EventsHandle(Arc::new(NoEvents))
    }
}

impl std::fmt::Debug for EventsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventsHandle")
    }
}

/// A string from input (a bundle, a registry, a request) made safe to
/// print: control characters are escaped, so it cannot move the cursor,
/// erase a line or fake the output around it; and it is cut to
/// [`MAX_SHOWN`] characters, so a name of megabytes cannot flood a message.
pub fn printable(s: &str) -> String {
    printable_upto(s, MAX_SHOWN)
}

/// [`printable`] with another limit: at most `max` characters of `s`
/// (a registry's whole error message, up to 2 KiB).
pub fn printable_upto(s: &str, max: usize) -> String {
    let mut out = escape(s.chars().take(max), false);
    let kept: usize = s.chars().take(max).map(char::len_utf8).sum();
    if kept < s.len() {
        out.push_str(&format!("…({} more bytes)", s.len() - kept));
    }
    out
}

/// The most characters of one input string shown by [`printable`].
pub const MAX_SHOWN: usize = 256;

/// A whole message or report that may hold strings from input: control
/// characters escaped except the line breaks and tabs of its own layout.
/// Nothing is cut (use [`printable`] on each string for that).
pub fn printable_text(s: &str) -> String {
    escape(s.chars(), true)
}

fn escape(chars: impl Iterator<Item = char>, keep_layout: bool) -> String {
    chars
        .map(|c| {
            if c.is_control() && !(keep_layout && matches!(c, '\n' | '\t')) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    total: AtomicU64,
    done: AtomicU64,
    start: Instant,
    stop: AtomicBool,
    /// The terminal bar, when stderr is one.
    bar: Option<indicatif::ProgressBar>,
    /// Plain lines were written (then a last one says it finished).
    lines: AtomicBool,
}

impl Progress {
    /// A counter shown as a bar on a terminal, or as a line every few
    /// seconds on other stderr (nothing with `--quiet`).
    pub fn start(label: &str, total: u64) -> Progress {
        Progress::new(label, total, !QUIET.load(Ordering::Relaxed))
    }

    fn new(label: &str, total: u64, shown: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = (shown && terminal).then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{msg}: {bytes} / {total_bytes} ({binary_bytes_per_sec}, ETA {eta}) {wide_bar}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bars().add(
                indicatif::ProgressBar::new(total)
                    .with_style(style)
                    .with_message(label.to_string()),
            )
        });
        let p = Progress {
            inner: Arc::new(Inner {
                label: label.to_string(),
                total: AtomicU64::new(total),
                done: AtomicU64::new(0),
                start: Instant::now(),
                stop: AtomicBool::new(!shown),
                bar,
                lines: AtomicBool::new(false),
            }),
        };
        if shown && !terminal {
            let inner = Arc::downgrade(&p.inner);
            let every = line_every();
            std::thread::spawn(move || loop {
                std::thread::sleep(every);
                match inner.upgrade() {
                    Some(i) if !i.stop.load(Ordering::Relaxed) => i.line(),
                    _ => return,
                }
            });
        }
        p
    }

    /// A counter that never draws (library use, tests).
    pub fn hidden() -> Progress {
        Progress::new("", 0, false)
    }

    pub fn add(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.inner.bar {
            b.inc(n);
        }
    }
    pub fn add_total(&self, n: u64) {
        self.inner.total.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.inner.bar {
            b.inc_length(n);
        }
    }
    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }
    pub fn finish(&self) {
        if self.inner.stop.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(b) = &self.inner.bar {
            b.finish_and_clear();
            bars().remove(b);
        } else if self.inner.lines.load(Ordering::Relaxed) {
            self.inner.line();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Inner {
    /// One plain progress line: bytes, rate since the start, ETA.
    fn line(&self) {
        self.lines.store(true, Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if done >= total {
            format!("done in {secs:.1}s")
        } else if rate > 0.0 {
            format!("ETA {:.0}s", (total - done) as f64 / rate)
        } else {
            "ETA -".into()
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}: {} / {} ({}/s, {eta})",
            self.label,
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate as u64)
        );
    }
}
