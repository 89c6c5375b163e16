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
pub const DEFAULT_FRAME_MAX: usize = 4 << 20;
/// Frames are never larger than this (readers cap their window to it).
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEntry {
    pub compressed: u32,
    pub decompressed: u32,
}

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>, usize);

pub struct FramedWriter<W: Write> {
    out: W,
    frame_max: usize,
    buf: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    submitted: u64,
    written: u64,
    waiting: BTreeMap<u64, (Vec<u8>, usize)>,
    max_in_flight: u64,
    frames: Vec<FrameEntry>,
    compressed_bytes: u64,
}

impl<W: Write> FramedWriter<W> {
    pub fn new(out: W, level: i32, threads: usize, frame_max: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let frame_max = frame_max.clamp(1, MAX_FRAME);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let mut workers = Vec::new();
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            let mut compressor = zstd::bulk::Compressor::new(level)?;
            compressor.include_checksum(true)?;
            compressor.include_contentsize(true)?;
            workers.push(std::thread::spawn(move || loop {
                let job = match rx.lock() {
                    Ok(guard) => guard.recv(),
                    Err(_) => return,
                };
                let Ok((seq, data)) = job else { return };
                let out = compressor.compress(&data);
                if tx.send((seq, out, data.len())).is_err() {
                    return;
                }
            }));
        }
        Ok(FramedWriter {
            out,
            frame_max,
            buf: Vec::with_capacity(frame_max),
            jobs: Some(job_tx),
            results: done_rx,
            workers,
            submitted: 0,
            written: 0,
            waiting: BTreeMap::new(),
            max_in_flight: (threads * 3) as u64,
            frames: Vec::new(),
            compressed_bytes: 0,
        })
    }

    /// End the current frame, so that the next byte starts a new one.
    pub fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.frame_max));
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("frame writer already finished"))?;
        jobs.send((self.submitted, data))
            .map_err(|_| io::Error::other("compression worker stopped"))?;
        self.submitted += 1;
        self.drain(false)?;
        while self.submitted - self.written >= self.max_in_flight {
            self.drain(true)?;
        }
        Ok(())
    }

    fn drain(&mut self, block: bool) -> io::Result<()> {
        let mut first = block;
        loop {
            let next = if first {
                first = false;
                self.results
                    .recv()
                    .map_err(|_| io::Error::other("compression worker stopped"))?
            } else {
                match self.results.try_recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            let (seq, data, dlen) = next;
            self.waiting.insert(seq, (data?, dlen));
        }
        while let Some((data, dlen)) = self.waiting.remove(&self.written) {
            self.out.write_all(&data)?;
            self.frames.push(FrameEntry {
                compressed: u32::try_from(data.len()).map_err(io::Error::other)?,
                decompressed: u32::try_from(dlen).map_err(io::Error::other)?,
            });
            self.compressed_bytes += data.len() as u64;
            self.written += 1;
        }
        Ok(())
    }

    /// Flush every frame, append the seek table, and give back the output.
    pub fn finish(mut self) -> io::Result<(W, Vec<FrameEntry>)> {
        self.cut()?;
        self.jobs = None;
        while self.written < self.submitted {
            self.drain(true)?;
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        write_seek_table(&mut self.out, &self.frames)?;
        self.out.flush()?;
        let frames = std::mem::take(&mut self.frames);
        let FramedWriter { out, .. } = self;
        Ok((out, frames))
    }
}

impl<W: Write> Write for FramedWriter<W> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_seek() {
        let mut w = FramedWriter::new(Vec::new(), 3, 2, 1000).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data[..123]).unwrap();
        w.cut().unwrap();
        w.write_all(&data[123..]).unwrap();
        let (out, frames) = w.finish().unwrap();
        assert_eq!(frames[0].decompressed, 123);
        assert!(frames.iter().all(|f| f.decompressed <= 1000));
        // Standard decoders read it whole, skipping the seek table.
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
        let mut cur = io::Cursor::new(&out);
        let table = SeekTable::read(&mut cur).unwrap();
        assert_eq!(table.decompressed_len, 10_000);
        let (c, d) = table.locate(5000).unwrap();
        let mut dec = zstd::stream::read::Decoder::new(&out[c as usize..]).unwrap();
        let mut skip = vec![0u8; (5000 - d) as usize];
        dec.read_exact(&mut skip).unwrap();
        let mut got = [0u8; 10];
        dec.read_exact(&mut got).unwrap();
        assert_eq!(&got, &data[5000..5010]);
        // Deterministic whatever the thread count.
        let mut w1 = FramedWriter::new(Vec::new(), 3, 1, 1000).unwrap();
        w1.write_all(&data[..123]).unwrap();
        w1.cut().unwrap();
        w1.write_all(&data[123..]).unwrap();
        assert_eq!(w1.finish().unwrap().0, out);
        // A truncated file has no seek table.
        let mut cut = io::Cursor::new(&out[..out.len() - 3]);
        assert!(SeekTable::read(&mut cut).is_err());
    }
}
