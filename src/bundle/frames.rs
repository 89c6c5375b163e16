//! zstd frames that can be found again: every cut point starts a new frame,
//! frames are compressed in parallel, and a trailing skippable frame holds a
//! seek table in the zstd seekable format
//! (facebook/zstd contrib/seekable_format/zstd_seekable_compression_format.md).
//!
//! Why not the `zstd` crate's stream encoder or zeekstd: we need frame
//! boundaries exactly at tar member data (so a member can be read without
//! decompressing anything before it) and frames compressed on all cores
//! while the output stays byte-identical for the same input. Each frame is a
//! plain `zstd::bulk` compression; only the framing is ours.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

pub const SKIPPABLE_SEEK_TABLE_MAGIC: u32 = 0x184D_2A5E;
pub const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Largest amount of uncompressed data in one frame.
pub const DEFAULT_FRAME_MAX: usize = 2 << 20;
/// Frames are never larger than this (readers cap their window to it).
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEntry {
    pub compressed: u32,
    pub decompressed: u32,
}

/// (sequence, data, the data is already compressed).
type Job = (u64, Vec<u8>, bool);
type Done = (u64, io::Result<Vec<u8>>, usize);

/// Buffers go round (writer → worker → writer, worker → output → worker)
/// instead of being allocated per frame: memory stays at the frames in
/// flight, and no allocator churn of multi-MiB blocks.
type Pool = (
    mpsc::Sender<Vec<u8>>,
    std::sync::Arc<std::sync::Mutex<Receiver<Vec<u8>>>>,
);

fn pool() -> Pool {
    let (tx, rx) = mpsc::channel();
    (tx, std::sync::Arc::new(std::sync::Mutex::new(rx)))
}

fn take_from(pool: &Pool, capacity: usize) -> Vec<u8> {
    let reused = pool.1.lock().ok().and_then(|rx| rx.try_recv().ok());
    match reused {
        Some(mut v) => {
            v.clear();
            v
        }
        None => Vec::with_capacity(capacity),
    }
}

/// What the output thread gives back: the output and every frame's sizes.
type Finished<W> = io::Result<(W, Vec<FrameEntry>)>;

/// Frames written so far, shared with the output thread: the writer waits
/// on it so that at most `max_in_flight` frames are held in memory.
struct Written {
    count: std::sync::Mutex<(u64, Option<String>)>,
    changed: std::sync::Condvar,
}

/// Frames are compressed on `threads` workers and written, in order, by an
/// output thread of their own: whoever feeds the writer (the tar stream)
/// never waits for the disk, the output's hash (a `HashingWriter` as `W`)
/// runs beside the compression, and every frame reaches the file as soon as
/// it and the ones before it are done, so that a killed export leaves a
/// file whose complete members can be recovered.
pub struct FramedWriter<W: Write + Send + 'static> {
    frame_max: usize,
    buf: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    output: Option<JoinHandle<Finished<W>>>,
    written: std::sync::Arc<Written>,
    inputs: Pool,
    submitted: u64,
    max_in_flight: u64,
    /// The frames cut from now on hold already-compressed data.
    fast: bool,
}

/// The zstd level for data that is already compressed (gzip or zstd
/// layers): compressing it harder gains nothing and costs most of the CPU
/// of an export; the frame format is the same, so every reader is too.
pub const FAST_LEVEL: i32 = 1;

impl<W: Write + Send + 'static> FramedWriter<W> {
    pub fn new(out: W, level: i32, threads: usize, frame_max: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let frame_max = frame_max.clamp(1, MAX_FRAME);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let mut workers = Vec::new();
        let (inputs, outputs) = (pool(), pool());
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            let (inputs, outputs) = (inputs.clone(), outputs.clone());
            let mut compressor = zstd::bulk::Compressor::new(level)?;
            compressor.include_checksum(true)?;
            compressor.include_contentsize(true)?;
            let mut fast = zstd::bulk::Compressor::new(FAST_LEVEL.min(level))?;
            fast.include_checksum(true)?;
            fast.include_contentsize(true)?;
            workers.push(std::thread::spawn(move || loop {
                let job = match rx.lock() {
                    Ok(guard) => guard.recv(),
                    Err(_) => return,
                };
                let Ok((seq, data, is_fast)) = job else {
                    return;
                };
                let mut out = take_from(&outputs, zstd::zstd_safe::compress_bound(data.len()));
                out.reserve(zstd::zstd_safe::compress_bound(data.len()));
                let c = if is_fast { &mut fast } else { &mut compressor };
                let result = c.compress_to_buffer(&data, &mut out).map(|_| out);
                let len = data.len();
                let _ = inputs.0.send(data);
                if tx.send((seq, result, len)).is_err() {
                    return;
                }
            }));
        }
        drop(done_tx);
        let written = std::sync::Arc::new(Written {
            count: std::sync::Mutex::new((0, None)),
            changed: std::sync::Condvar::new(),
        });
        let shared = written.clone();
        let output = std::thread::spawn(move || {
            let result = write_in_order(out, done_rx, &shared, &outputs.0);
            if let Err(e) = &result {
                if let Ok(mut c) = shared.count.lock() {
                    c.1 = Some(e.to_string());
                }
                shared.changed.notify_all();
            }
            result
        });
        Ok(FramedWriter {
            frame_max,
            buf: Vec::with_capacity(frame_max),
            jobs: Some(job_tx),
            workers,
            output: Some(output),
            written,
            inputs,
            submitted: 0,
            max_in_flight: (threads * 2) as u64,
            fast: false,
        })
    }

    /// Whether the frames cut from now on hold already-compressed data.
    pub fn set_fast(&mut self, fast: bool) {
        self.fast = fast;
    }

    /// End the current frame, so that the next byte starts a new one.
    pub fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.wait_for_room()?;
        let fresh = take_from(&self.inputs, self.frame_max);
        let data = std::mem::replace(&mut self.buf, fresh);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("frame writer already finished"))?;
        jobs.send((self.submitted, data, self.fast))
            .map_err(|_| self.stopped())?;
        self.submitted += 1;
        Ok(())
    }

    /// Block while `max_in_flight` frames are compressing or waiting for
    /// the output (memory is frames × their size, whatever the input).
    fn wait_for_room(&self) -> io::Result<()> {
        let mut c = self.written.count.lock().map_err(|_| self.stopped())?;
        loop {
            if let Some(e) = &c.1 {
                return Err(io::Error::other(e.clone()));
            }
            if self.submitted - c.0 < self.max_in_flight {
                return Ok(());
            }
            c = self.written.changed.wait(c).map_err(|_| self.stopped())?;
        }
    }

    fn stopped(&self) -> io::Error {
        let why = self
            .written
            .count
            .lock()
            .ok()
            .and_then(|c| c.1.clone())
            .unwrap_or_else(|| "compression worker stopped".into());
        io::Error::other(why)
    }

    /// Flush every frame, append the seek table, and give back the output.
    pub fn finish(mut self) -> io::Result<(W, Vec<FrameEntry>)> {
        self.cut()?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let output = self
            .output
            .take()
            .ok_or_else(|| io::Error::other("frame writer already finished"))?;
        let (mut out, frames) = output
            .join()
            .map_err(|_| io::Error::other("the output thread panicked"))??;
        if frames.len() as u64 != self.submitted {
            return Err(io::Error::other(format!(
                "{} of {} frames written",
                frames.len(),
                self.submitted
            )));
        }
        write_seek_table(&mut out, &frames)?;
        out.flush()?;
        Ok((out, frames))
    }
}

/// The output thread: frames in sequence order, each written once it and
/// every frame before it are compressed; flushed whenever it catches up.
fn write_in_order<W: Write>(
    mut out: W,
    done: Receiver<Done>,
    written: &Written,
    spent: &mpsc::Sender<Vec<u8>>,
) -> io::Result<(W, Vec<FrameEntry>)> {
    let mut waiting: BTreeMap<u64, (Vec<u8>, usize)> = BTreeMap::new();
    let mut frames: Vec<FrameEntry> = Vec::new();
    let mut next = 0u64;
    let mut block = true;
    loop {
        let item = if block {
            match done.recv() {
                Ok(item) => Some(item),
                Err(_) => break,
            }
        } else {
            done.try_recv().ok()
        };
        let Some((seq, data, dlen)) = item else {
            // Caught up: what is written reaches the file now, not at the end.
            out.flush()?;
            block = true;
            continue;
        };
        waiting.insert(seq, (data?, dlen));
        while let Some((data, dlen)) = waiting.remove(&next) {
            out.write_all(&data)?;
            frames.push(FrameEntry {
                compressed: u32::try_from(data.len()).map_err(io::Error::other)?,
                decompressed: u32::try_from(dlen).map_err(io::Error::other)?,
            });
            let _ = spent.send(data);
            next += 1;
            if let Ok(mut c) = written.count.lock() {
                c.0 = next;
            }
            written.changed.notify_all();
        }
        block = false;
    }
    if !waiting.is_empty() {
        return Err(io::Error::other(
            "a frame was lost between compression and output",
        ));
    }
    Ok((out, frames))
}

impl<W: Write + Send + 'static> Drop for FramedWriter<W> {
    fn drop(&mut self) {
        // An abandoned writer (a failed export): stop the workers, then the
        // output thread once they are gone; nothing waits for them.
        self.jobs = None;
    }
}

impl<W: Write + Send + 'static> Write for FramedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.frame_max - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.frame_max {
            self.cut()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn write_seek_table<W: Write>(out: &mut W, frames: &[FrameEntry]) -> io::Result<()> {
    let n = u32::try_from(frames.len()).map_err(io::Error::other)?;
    let payload = frames.len() * 8 + 9;
    out.write_all(&SKIPPABLE_SEEK_TABLE_MAGIC.to_le_bytes())?;
    out.write_all(&(payload as u32).to_le_bytes())?;
    let mut table = Vec::with_capacity(payload);
    for f in frames {
        table.extend_from_slice(&f.compressed.to_le_bytes());
        table.extend_from_slice(&f.decompressed.to_le_bytes());
    }
    table.extend_from_slice(&n.to_le_bytes());
    table.push(0); // descriptor: no checksums (members carry sha256 digests)
    table.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    out.write_all(&table)
}

/// The frames of a seekable file with their positions.
#[derive(Clone, Debug)]
pub struct SeekTable {
    /// (compressed offset, decompressed offset, entry)
    pub frames: Vec<(u64, u64, FrameEntry)>,
    pub decompressed_len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SeekTableError {
    #[error("no zstd seek table at the end of the file (truncated, or not written by airlock)")]
    Missing,
    #[error("seek table is inconsistent with the file size: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl SeekTable {
    pub fn read<R: Read + Seek>(f: &mut R) -> Result<SeekTable, SeekTableError> {
        let len = f.seek(SeekFrom::End(0))?;
        if len < 17 {
            return Err(SeekTableError::Missing);
        }
        let mut footer = [0u8; 9];
        f.seek(SeekFrom::End(-9))?;
        f.read_exact(&mut footer)?;
        let n = u32::from_le_bytes(footer[0..4].try_into().unwrap_or_default()) as u64;
        let descriptor = footer[4];
        let magic = u32::from_le_bytes(footer[5..9].try_into().unwrap_or_default());
        if magic != SEEKABLE_MAGIC {
            return Err(SeekTableError::Missing);
        }
        let entry_size = if descriptor & 0x80 != 0 { 12 } else { 8 };
        let table_len = n
            .checked_mul(entry_size)
            .and_then(|t| t.checked_add(9 + 8))
            .filter(|t| *t <= len)
            .ok_or_else(|| SeekTableError::Inconsistent(format!("{n} frames cannot fit")))?;
        f.seek(SeekFrom::End(-(table_len as i64)))?;
        let mut table = vec![0u8; table_len as usize];
        f.read_exact(&mut table)?;
        let head_magic = u32::from_le_bytes(table[0..4].try_into().unwrap_or_default());
        let size = u32::from_le_bytes(table[4..8].try_into().unwrap_or_default()) as u64;
        if head_magic != SKIPPABLE_SEEK_TABLE_MAGIC || size != table_len - 8 {
            return Err(SeekTableError::Inconsistent(
                "bad skippable frame header".into(),
            ));
        }
        let mut frames = Vec::with_capacity(n as usize);
        let (mut c, mut d) = (0u64, 0u64);
        for i in 0..n as usize {
            let at = 8 + i * entry_size as usize;
            let e = FrameEntry {
                compressed: u32::from_le_bytes(table[at..at + 4].try_into().unwrap_or_default()),
                decompressed: u32::from_le_bytes(
                    table[at + 4..at + 8].try_into().unwrap_or_default(),
                ),
            };
            frames.push((c, d, e));
            c += e.compressed as u64;
            d += e.decompressed as u64;
        }
        if c + table_len != len {
            return Err(SeekTableError::Inconsistent(format!(
                "frames cover {c} bytes, seek table {table_len}, file is {len}"
            )));
        }
        Ok(SeekTable {
            frames,
            decompressed_len: d,
        })
    }

    /// The frame holding decompressed `offset`: (compressed start, decompressed start).
    pub fn locate(&self, offset: u64) -> Option<(u64, u64)> {
        let i = self
            .frames
            .partition_point(|(_, d, e)| d + e.decompressed as u64 <= offset);
        self.frames.get(i).map(|(c, d, _)| (*c, *d))
    }
}

// ------------------------------------------------------------ frame rules

/// More frames than this in one file is not a bundle: the seek table is
/// read into memory (24 bytes a frame), so its size is bounded first.
/// 4 Mi frames hold 16 TiB of data at the default frame size.
pub const MAX_FRAMES: u64 = 1 << 22;

const ZSTD_MAGIC: u32 = 0xFD2F_B528;

/// Which part of the zstd framing comes next.
#[derive(Clone, Copy, Debug)]
enum Part {
    /// A frame's magic number (4 bytes), or the end of the input.
    Magic,
    /// The frame header descriptor and the 4-byte size of a skippable frame.
    Descriptor,
    /// The rest of a frame header (`n` bytes; the flags say which fields).
    Header {
        n: usize,
        fcs_at: usize,
        fcs_len: usize,
    },
    BlockHeader,
    /// `n` bytes of payload to pass over.
    Skip(u64),
    /// The 4-byte content checksum that ends a frame.
    Checksum,
    /// A skippable frame's payload: the seek table, kept (it is small).
    Table(u64),
}

/// The zstd framing of a bundle checked as its bytes go by, without
/// decompressing anything: every frame is a zstd frame with its content
/// size (at most [`MAX_FRAME`]) and checksum, no dictionary; the only
/// skippable frame allowed is a seek table, and it must describe exactly
/// the frames before it (since the previous table: a stream of volumes
/// has one per volume). docs/bundle-format.md §3.
///
/// A push parser: [`FrameRules::want`] says how many bytes it needs next
/// and whether it must see them ([`Want::Bytes`]) or may be told they were
/// passed over ([`Want::Skip`]), so one set of rules serves a stream (every
/// byte goes by) and a file (block payloads are seeked over).
pub struct FrameRules {
    part: Part,
    buf: Vec<u8>,
    /// Compressed offset of the current frame's start.
    frame_start: u64,
    offset: u64,
    content_size: u64,
    /// Frames since the last seek table: (compressed, decompressed).
    frames: Vec<FrameEntry>,
    /// True after a seek table: the input may end there.
    pub tables: u32,
}

/// What [`FrameRules`] needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Exactly this many bytes, to read.
    Bytes(usize),
    /// This many bytes that may be passed over unseen.
    Skip(u64),
}

impl Default for FrameRules {
    fn default() -> Self {
        FrameRules {
            part: Part::Magic,
            buf: Vec::new(),
            frame_start: 0,
            offset: 0,
            content_size: 0,
            frames: Vec::new(),
            tables: 0,
        }
    }
}

fn bad(offset: u64, detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("zstd framing at byte {offset}: {detail}"),
    )
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |v, x| (v << 8) | *x as u64)
}

impl FrameRules {
    pub fn want(&self) -> Want {
        match self.part {
            Part::Magic => Want::Bytes(4),
            Part::Descriptor => Want::Bytes(if self.buf.is_empty() { 1 } else { 4 }),
            Part::Header { n, .. } => Want::Bytes(n),
            Part::BlockHeader => Want::Bytes(3),
            Part::Skip(n) => Want::Skip(n),
            Part::Checksum => Want::Bytes(4),
            Part::Table(n) => Want::Bytes(n as usize),
        }
    }

    /// `n` bytes of a [`Want::Skip`] went by.
    pub fn skipped(&mut self, n: u64) -> io::Result<()> {
        self.offset += n;
        match self.part {
            Part::Skip(left) if n <= left => {
                self.part = if n < left {
                    Part::Skip(left - n)
                } else {
                    Part::BlockHeader
                };
                Ok(())
            }
            _ => Err(bad(self.offset, "internal: skipped bytes not asked for")),
        }
    }

    /// The bytes a [`Want::Bytes`] asked for.
    pub fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        let at = self.offset;
        self.offset += b.len() as u64;
        match self.part {
            Part::Magic => {
                let magic = le(b) as u32;
                self.frame_start = at;
                if magic == ZSTD_MAGIC {
                    self.buf.clear();
                    self.part = Part::Descriptor;
                } else if magic & 0xFFFF_FFF0 == 0x184D_2A50 {
                    if magic != SKIPPABLE_SEEK_TABLE_MAGIC {
                        return Err(bad(at, format!("skippable frame {magic:#x}: a bundle holds no data outside its frames")));
                    }
                    self.buf = vec![1]; // marks a skippable frame's size field
                    self.part = Part::Descriptor;
                } else {
                    return Err(bad(at, format!("{magic:#010x} is not a zstd frame")));
                }
            }
            Part::Descriptor if self.buf == [1] => {
                // The seek table's size: entries of the frames before it.
                let size = le(b);
                let expected = self.frames.len() as u64 * 8 + 9;
                if size != expected {
                    return Err(bad(at, format!("skippable frame of {size} bytes where the seek table of {} frames ({expected} bytes) may be", self.frames.len())));
                }
                self.buf.clear();
                self.part = Part::Table(size);
            }
            Part::Descriptor => {
                let d = b[0];
                if d & 0x08 != 0 || d & 0x03 != 0 {
                    return Err(bad(at, "reserved bit or dictionary id set"));
                }
                if d & 0x04 == 0 {
                    return Err(bad(at, "a frame without content checksum"));
                }
                let single = d & 0x20 != 0;
                let fcs_len = match d >> 6 {
                    0 if single => 1,
                    0 => 0,
                    1 => 2,
                    2 => 4,
                    _ => 8,
                };
                if fcs_len == 0 {
                    return Err(bad(at, "a frame without content size"));
                }
                let window = usize::from(!single);
                self.part = Part::Header {
                    n: window + fcs_len,
                    fcs_at: window,
                    fcs_len,
                };
            }
            Part::Header {
                fcs_at, fcs_len, ..
            } => {
                // The decoder caps the window too; said here with the offset.
                if fcs_at == 1 && 10 + (b[0] >> 3) as u32 > super::reader::MAX_WINDOW_LOG {
                    return Err(bad(
                        at,
                        format!(
                            "a frame asks for a 2^{} byte window; at most 2^{} are allowed",
                            10 + (b[0] >> 3),
                            super::reader::MAX_WINDOW_LOG
                        ),
                    ));
                }
                let mut size = le(&b[fcs_at..fcs_at + fcs_len]);
                if fcs_len == 2 {
                    size += 256;
                }
                if size > MAX_FRAME as u64 {
                    return Err(bad(
                        at,
                        format!("a frame of {size} bytes; frames hold at most {MAX_FRAME}"),
                    ));
                }
                self.content_size = size;
                self.part = Part::BlockHeader;
            }
            Part::BlockHeader => {
                let h = le(b);
                let last = h & 1 == 1;
                let size = match (h >> 1) & 3 {
                    0 | 2 => h >> 3,
                    1 => 1,
                    _ => return Err(bad(at, "reserved block type")),
                };
                self.part = match (size, last) {
                    (0, true) => Part::Checksum,
                    (0, false) => Part::BlockHeader,
                    (n, _) => Part::Skip(n),
                };
                if last && size > 0 {
                    // After the payload: the checksum, not another block.
                    self.buf = vec![2];
                }
            }
            Part::Checksum => self.end_frame()?,
            Part::Table(_) => self.table(at, b)?,
            Part::Skip(_) => return Err(bad(at, "internal: bytes given where a skip was asked")),
        }
        Ok(())
    }

    fn end_frame(&mut self) -> io::Result<()> {
        let compressed = u32::try_from(self.offset - self.frame_start)
            .map_err(|_| bad(self.frame_start, "a frame larger than 4 GiB"))?;
        self.frames.push(FrameEntry {
            compressed,
            decompressed: self.content_size as u32,
        });
        if self.frames.len() as u64 > MAX_FRAMES {
            return Err(bad(self.offset, format!("more than {MAX_FRAMES} frames")));
        }
        self.buf.clear();
        self.part = Part::Magic;
        Ok(())
    }

    fn table(&mut self, at: u64, b: &[u8]) -> io::Result<()> {
        let n = self.frames.len();
        let footer = &b[n * 8..];
        if le(&footer[..4]) != n as u64
            || footer[4] != 0
            || le(&footer[5..9]) != SEEKABLE_MAGIC as u64
        {
            return Err(bad(
                at,
                format!("the seek table is not the table of the {n} frames before it"),
            ));
        }
        for (i, f) in self.frames.iter().enumerate() {
            let e = &b[i * 8..i * 8 + 8];
            if le(&e[..4]) != f.compressed as u64 || le(&e[4..]) != f.decompressed as u64 {
                return Err(bad(
                    at,
                    format!(
                    "the seek table says frame {i} is {} bytes ({} uncompressed); it is {} ({})",
                    le(&e[..4]), le(&e[4..]), f.compressed, f.decompressed
                ),
                ));
            }
        }
        self.frames.clear();
        self.tables += 1;
        self.part = Part::Magic;
        Ok(())
    }

    /// The input ended: between frames, not inside one.
    pub fn finish(&self) -> io::Result<()> {
        match self.part {
            Part::Magic => Ok(()),
            _ => Err(bad(self.offset, "the input ends inside a frame")),
        }
    }
}

impl FrameRules {
    /// After a block payload: the next block header, or the checksum when
    /// that block was the last.
    fn after_skip(&mut self) {
        if self.buf == [2] {
            self.buf.clear();
            self.part = Part::Checksum;
        }
    }
}

/// A stream's compressed bytes checked by [`FrameRules`] as they are read.
pub struct CheckedFrames<R> {
    inner: R,
    rules: FrameRules,
    /// Bytes of a header being gathered.
    pending: Vec<u8>,
}

impl<R: Read> CheckedFrames<R> {
    pub fn new(inner: R) -> Self {
        CheckedFrames {
            inner,
            rules: FrameRules::default(),
            pending: Vec::new(),
        }
    }

    fn feed(&mut self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            match self.rules.want() {
                Want::Skip(n) => {
                    let k = (b.len() as u64).min(n);
                    self.rules.skipped(k)?;
                    if k == n {
                        self.rules.after_skip();
                    }
                    b = &b[k as usize..];
                }
                Want::Bytes(n) => {
                    let k = (n - self.pending.len()).min(b.len());
                    self.pending.extend_from_slice(&b[..k]);
                    b = &b[k..];
                    if self.pending.len() == n {
                        let header = std::mem::take(&mut self.pending);
                        self.rules.bytes(&header)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for CheckedFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if !self.pending.is_empty() {
                return Err(bad(
                    self.rules.offset,
                    "the input ends inside a frame header",
                ));
            }
            self.rules.finish()?;
        } else {
            self.feed(&buf[..n])?;
        }
        Ok(n)
    }
}

/// The frames of a file, seeking over block payloads, against its seek
/// table: the table must describe exactly the frames there are.
pub fn check_file_frames<R: Read + Seek>(f: &mut R, table: &SeekTable) -> io::Result<()> {
    let end: u64 = table
        .frames
        .iter()
        .map(|(_, _, e)| e.compressed as u64)
        .sum();
    f.seek(SeekFrom::Start(0))?;
    let mut rules = FrameRules::default();
    let mut r = io::BufReader::with_capacity(16 << 10, f);
    let mut buf = [0u8; 16];
    while rules.offset < end {
        match rules.want() {
            Want::Skip(n) => {
                r.seek_relative(n as i64)?;
                rules.skipped(n)?;
                rules.after_skip();
            }
            Want::Bytes(n) => {
                r.read_exact(&mut buf[..n])?;
                rules.bytes(&buf[..n])?;
            }
        }
    }
    rules.finish()?;
    let got = &rules.frames;
    if got.len() != table.frames.len() {
        return Err(bad(
            end,
            format!(
                "the seek table lists {} frames, the file has {}",
                table.frames.len(),
                got.len()
            ),
        ));
    }
    for (i, (g, (_, _, e))) in got.iter().zip(&table.frames).enumerate() {
        if g != e {
            return Err(bad(
                end,
                format!(
                    "the seek table says frame {i} is {} bytes ({} uncompressed); it is {} ({})",
                    e.compressed, e.decompressed, g.compressed, g.decompressed
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_seek() {
        // Frames are at least 4096 bytes (the writer's clamp).
        let mut w = FramedWriter::new(Vec::new(), 3, 2, 4096).unwrap();
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data[..123]).unwrap();
        w.cut().unwrap();
        w.write_all(&data[123..]).unwrap();
        let (out, frames) = w.finish().unwrap();
        assert_eq!(frames[0].decompressed, 123);
        assert!(frames.iter().all(|f| f.decompressed <= 4096));
        // Standard decoders read it whole, skipping the seek table.
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
        let mut cur = io::Cursor::new(&out);
        let table = SeekTable::read(&mut cur).unwrap();
        assert_eq!(table.decompressed_len, 40_000);
        let (c, d) = table.locate(20_000).unwrap();
        let mut dec = zstd::stream::read::Decoder::new(&out[c as usize..]).unwrap();
        let mut skip = vec![0u8; (20_000 - d) as usize];
        dec.read_exact(&mut skip).unwrap();
        let mut got = [0u8; 10];
        dec.read_exact(&mut got).unwrap();
        assert_eq!(&got, &data[20_000..20_010]);
        // Deterministic whatever the thread count.
        let mut w1 = FramedWriter::new(Vec::new(), 3, 1, 4096).unwrap();
        w1.write_all(&data[..123]).unwrap();
        w1.cut().unwrap();
        w1.write_all(&data[123..]).unwrap();
        assert_eq!(w1.finish().unwrap().0, out);
        // A truncated file has no seek table.
        let mut cut = io::Cursor::new(&out[..out.len() - 3]);
        assert!(SeekTable::read(&mut cut).is_err());
    }

    fn read_checked(bytes: &[u8]) -> io::Result<u64> {
        io::copy(&mut CheckedFrames::new(bytes), &mut io::sink())
    }

    #[test]
    fn frame_rules_accept_the_writer_and_refuse_what_it_never_writes() {
        let mut w = FramedWriter::new(Vec::new(), 3, 1, 4096).unwrap();
        w.write_all(&[7u8; 10_000]).unwrap();
        let (out, frames) = w.finish().unwrap();
        read_checked(&out).unwrap();
        let mut file = io::Cursor::new(&out);
        let table = SeekTable::read(&mut file).unwrap();
        check_file_frames(&mut file, &table).unwrap();
        let frames_len = out.len() - (frames.len() * 8 + 17);

        // A skippable frame with a payload between frames.
        let mut spliced = out[..frames_len].to_vec();
        spliced.extend_from_slice(&[0x50, 0x2A, 0x4D, 0x18, 1, 0, 0, 0, b'x']);
        spliced.extend_from_slice(&out[frames_len..]);
        let e = read_checked(&spliced).unwrap_err().to_string();
        assert!(e.contains("skippable frame"), "{e}");

        // A seek table that lies about one frame.
        let mut lying = out.clone();
        lying[frames_len + 8 + 4] ^= 1; // frame 0's decompressed size
        let e = read_checked(&lying).unwrap_err().to_string();
        assert!(e.contains("seek table says frame 0"), "{e}");

        // A frame without content size or checksum (another tool's output).
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.include_contentsize(false).unwrap();
        let bare = c.compress(b"hello").unwrap();
        let e = read_checked(&bare).unwrap_err().to_string();
        assert!(e.contains("without content"), "{e}");

        // A frame cut short.
        let e = read_checked(&out[..frames_len - 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ends inside a frame"), "{e}");
    }
}
