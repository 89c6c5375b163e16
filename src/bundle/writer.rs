//! Writing the tar stream into zstd frames.
//!
//! Tar headers are built with the `tar` crate, but we write them ourselves
//! instead of using `tar::Builder`: a frame must end exactly between a
//! member's header and its data, and the builder has no hook there.

use super::frames::{FrameEntry, FramedWriter};
use std::io::{self, Read, Write};

pub struct BundleWriter<W: Write + Send + 'static> {
    out: FramedWriter<W>,
}

impl<W: Write + Send + 'static> BundleWriter<W> {
    pub fn new(out: W, level: i32, threads: usize, frame_max: usize) -> io::Result<Self> {
        Ok(BundleWriter {
            out: FramedWriter::new(out, level, threads, frame_max)?,
        })
    }

    /// Append one regular file of exactly `size` bytes read from `data`.
    pub fn append(&mut self, path: &str, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(path)?;
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        // The header gets a frame of its own and the data starts the next
        // one: a reader can check any member's header, then stream its data,
        // without decompressing anything else.
        self.out.cut()?;
        self.out.set_fast(false);
        self.out.write_all(h.as_bytes())?;
        // Member data starts a frame: readers can seek straight to it.
        self.out.cut()?;
        // gzip or zstd data (most layers) is compressed at the fast level:
        // decided from the bytes themselves, so the output stays the same
        // for the same input.
        let mut head = [0u8; 4];
        let n = read_up_to(&mut data.take(size), &mut head)?;
        self.out.set_fast(
            head[..n].starts_with(&[0x1f, 0x8b]) || head[..n] == [0x28, 0xb5, 0x2f, 0xfd],
        );
        self.out.write_all(&head[..n])?;
        let copied = n as u64 + io::copy(&mut data.take(size - n as u64), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: source gave {copied} of {size} bytes"),
            ));
        }
        let pad = (super::padded(size) - size) as usize;
        self.out.write_all(&[0u8; 512][..pad])?;
        expect_end(path, data)
    }

    /// Raw tar bytes (a header and padded data), for tests that forge
    /// hostile archives; never used to write a real bundle.
    #[cfg(feature = "test-util")]
    pub fn append_raw_for_tests(&mut self, raw: &[u8]) -> io::Result<()> {
        self.out.write_all(raw)?;
        self.out.cut()
    }

    /// Write the end-of-archive blocks and the seek table.
    pub fn finish(mut self) -> io::Result<(W, Vec<FrameEntry>)> {
        self.out.cut()?;
        self.out.set_fast(false);
        self.out.write_all(&[0u8; 1024])?;
        self.out.finish()
    }
}

/// Fill `buf` as far as `r` has bytes.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// One more read at a member's end: a verifying reader checks its digest
/// on the read that finds no more bytes (a `take` of exactly the size never
/// makes that read), and a source longer than it claimed is an error.
pub fn expect_end(path: &str, data: &mut dyn Read) -> io::Result<()> {
    let mut probe = [0u8; 1];
    match data.read(&mut probe)? {
        0 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: the source has more bytes than the index lists"),
        )),
    }
}
