//! Reading a bundle: as a stream (a pipe, a data diode: one pass, in
//! order) or as a seekable file (random access to any member through the
//! seek table, for concurrent uploads without extraction).
//!
//! Every member is checked against the bundle index: path, size, and sha256
//! (by [`VerifyingReader`], which fails at the end instead of reporting EOF).

use super::frames::{check_file_frames, CheckedFrames, SeekTable};
use super::volumes::{Entry, VolumeLabel, LABEL_PATH, MAX_LABEL_BYTES};
use super::{is_layout_path, padded, BundleError, BundleIndex, Member, INDEX_MEDIA_TYPE};
use super::{FORMAT_VERSION, INDEX_PATH, MAX_INDEX_BYTES};
use crate::digest::{Digest, VerifyingReader};
use crate::progress::printable;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub enum StreamEvent<'a> {
    Index {
        index: &'a BundleIndex,
        digest: &'a Digest,
    },
    Member {
        member: &'a Member,
        data: &'a mut dyn Read,
    },
}

fn corrupt(bundle: &str, detail: impl std::fmt::Display) -> BundleError {
    BundleError::Corrupt {
        bundle: bundle.to_string(),
        detail: format!("truncated or corrupt archive: {detail}"),
    }
}

/// The ustar header checksum: the sum of all bytes, the checksum field counted as spaces.
fn ustar_checksum(block: &[u8; 512]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum()
}

/// Parse and sanity-check the bundle index bytes.
pub fn parse_index(bundle: &str, bytes: &[u8]) -> Result<BundleIndex, BundleError> {
    let bad = |detail: String| BundleError::BadIndex {
        bundle: bundle.to_string(),
        detail,
    };
    let index: BundleIndex = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("not valid JSON: {}", printable(&e.to_string()))))?;
    if index.schema_version != FORMAT_VERSION || index.media_type != INDEX_MEDIA_TYPE {
        return Err(bad(format!(
            "format {} version {} is not supported (this airlock reads {INDEX_MEDIA_TYPE} version {FORMAT_VERSION})",
            printable(&index.media_type), index.schema_version
        )));
    }
    let mut seen = HashSet::new();
    let mut external = HashSet::new();
    for m in &index.members {
        if !is_layout_path(&m.path) || m.path == INDEX_PATH {
            return Err(bad(format!(
                "member path {:?} is not an OCI layout path",
                printable(&m.path)
            )));
        }
        if !seen.insert(m.path.as_str()) {
            return Err(bad(format!("member {} is listed twice", m.path)));
        }
        if m.path.starts_with("blobs/") && m.path != m.digest.layout_path() {
            return Err(bad(format!(
                "member {} is listed with digest {}",
                m.path, m.digest
            )));
        }
        // What is read into memory has one limit everywhere, checked here,
        // before any reader allocates for it.
        let limit = match m.kind {
            super::MemberKind::Manifest => Some(crate::oci::MAX_MANIFEST_BYTES),
            super::MemberKind::Layout => Some(crate::layout::MAX_INDEX_JSON),
            _ => None,
        };
        if let Some(limit) = limit.filter(|l| m.size > *l) {
            return Err(bad(format!(
                "member {} ({:?}) claims {} bytes; at most {limit} are allowed",
                m.path, m.kind, m.size
            )));
        }
    }
    for required in ["oci-layout", "index.json"] {
        if !seen.contains(required) {
            return Err(bad(format!("no {required} member")));
        }
    }
    // The layout's own files say nothing the bundle index does not: what a
    // tool reading the extracted layout sees (index.json's ref names) is
    // exactly what the images of the bundle index are.
    for m in &index.members {
        let expected = match m.path.as_str() {
            "oci-layout" => Digest::of(crate::layout::OCI_LAYOUT_BYTES),
            "index.json" => Digest::of(&crate::layout::index_json(&index.images)),
            _ => continue,
        };
        if m.digest != expected {
            return Err(bad(format!(
                "{} does not match the images of the bundle index (another ref name, or another digest)",
                m.path
            )));
        }
    }
    for e in &index.external {
        if !matches!(e.kind, super::MemberKind::Small | super::MemberKind::Layer)
            || seen.contains(e.digest.layout_path().as_str())
            || !external.insert(&e.digest)
        {
            return Err(bad(format!(
                "external blob {} is listed twice, or is also a member",
                e.digest
            )));
        }
    }
    index.check_volumes(bundle)?;
    Ok(index)
}

/// The largest zstd window a reader accepts (16 MiB): the writer's frames
/// are never larger (`frames::MAX_FRAME`).
pub const MAX_WINDOW_LOG: u32 = 24;

/// The one check of a tar header block, for every read path (stream,
/// file, volume): a valid ustar checksum, a regular file with the mode and
/// owner docs/bundle-format.md §2 gives, at the path and with the size
/// expected here. `expected` is `None` where nothing may follow.
fn check_block(
    bundle: &str,
    block: &[u8; 512],
    expected: Option<(&str, Size)>,
) -> Result<u64, BundleError> {
    let header = tar::Header::from_byte_slice(block);
    let path = printable(&String::from_utf8_lossy(&header.path_bytes()));
    let what = expected.map(|(p, _)| p).unwrap_or("the end of the archive");
    if header.cksum().ok() != Some(ustar_checksum(block)) {
        return Err(corrupt(
            bundle,
            format!("the tar header where {what} should be has a bad checksum"),
        ));
    }
    let entry_type = header.entry_type();
    if entry_type != tar::EntryType::Regular {
        return Err(BundleError::UnexpectedMember {
            bundle: bundle.into(),
            member: path,
            detail: format!("entry type {entry_type:?}; only regular files are allowed"),
        });
    }
    let Some((expected_path, expected_size)) = expected else {
        return Err(BundleError::UnexpectedMember {
            bundle: bundle.into(),
            member: path,
            detail: "not listed in the bundle index".into(),
        });
    };
    if path != expected_path {
        let detail = if is_layout_path(&path) {
            format!("found where the index lists {expected_path}")
        } else {
            "not an OCI layout path".into()
        };
        return Err(BundleError::UnexpectedMember {
            bundle: bundle.into(),
            member: path,
            detail,
        });
    }
    let size = header
        .size()
        .map_err(|e| corrupt(bundle, format!("header of {path}: {e}")))?;
    match expected_size {
        Size::Exactly(n) if size != n => {
            return Err(BundleError::MemberMismatch {
                bundle: bundle.into(),
                member: path,
                detail: format!("size {size}, index says {n}"),
            })
        }
        Size::AtMost(n) if size > n => {
            return Err(BundleError::MemberMismatch {
                bundle: bundle.into(),
                member: path,
                detail: format!("{size} bytes is larger than the {n} allowed"),
            })
        }
        _ => {}
    }
    let mode = header.mode().unwrap_or(u32::MAX);
    let (uid, gid) = (header.uid().unwrap_or(1), header.gid().unwrap_or(1));
    if mode != 0o644 || uid != 0 || gid != 0 {
        return Err(BundleError::MemberMismatch {
            bundle: bundle.into(),
            member: path,
            detail: format!(
                "header mode {mode:o} owner {uid}:{gid}; a bundle member is mode 644, owner 0:0"
            ),
        });
    }
    Ok(size)
}

#[derive(Clone, Copy, Debug)]
enum Size {
    Exactly(u64),
    AtMost(u64),
}

/// An error reading a member: a digest/size mismatch names the member;
/// anything else is a damaged archive.
pub fn member_error(bundle: &str, member: &Member, e: io::Error) -> BundleError {
    if crate::digest::is_integrity_error(&e) {
        BundleError::MemberMismatch {
            bundle: bundle.into(),
            member: member.path.clone(),
            detail: e.to_string(),
        }
    } else {
        corrupt(bundle, format!("reading {}: {e}", member.path))
    }
}

/// Read a (small, bounded by the caller) member whole; its digest is checked
/// by the verifying reader it comes from.
pub fn read_whole(
    bundle: &str,
    member: &Member,
    data: &mut dyn Read,
) -> Result<Vec<u8>, BundleError> {
    let mut b = Vec::with_capacity(member.size.min(1 << 20) as usize);
    data.read_to_end(&mut b)
        .map_err(|e| member_error(bundle, member, e))?;
    Ok(b)
}

// ------------------------------------------------------------ the tar stream

/// The tar stream inside the zstd frames, read block by block with the
/// rules of docs/bundle-format.md §2. Ours rather than `tar::Archive`: that
/// one follows PAX and GNU extensions, skips padding and end blocks without
/// looking, and stops at the first end block, where we must check every
/// padding byte, the end blocks, that nothing follows them, and go on
/// across the volumes of a bundle read as one stream.
struct TarStream<R> {
    r: R,
    bundle: String,
}

impl<R: Read> TarStream<R> {
    fn block(&mut self, what: &str) -> Result<[u8; 512], BundleError> {
        let mut block = [0u8; 512];
        self.r
            .read_exact(&mut block)
            .map_err(|e| corrupt(&self.bundle, format!("archive ends before {what}: {e}")))?;
        Ok(block)
    }

    fn header(&mut self, path: &str, size: Size) -> Result<u64, BundleError> {
        let block = self.block(path)?;
        if block.iter().all(|b| *b == 0) {
            return Err(corrupt(
                &self.bundle,
                format!("archive ends before member {path}"),
            ));
        }
        check_block(&self.bundle, &block, Some((path, size)))
    }

    /// A small entry (the index, a label) whole: header, data, padding.
    fn small(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, BundleError> {
        let size = self.header(path, Size::AtMost(limit))?;
        // Grown as the bytes arrive: a header may claim the limit and stop.
        let mut bytes = Vec::with_capacity(size.min(1 << 20) as usize);
        (&mut self.r)
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| corrupt(&self.bundle, format!("reading {path}: {e}")))?;
        if bytes.len() as u64 != size {
            return Err(corrupt(&self.bundle, format!("archive ends inside {path}")));
        }
        self.padding(path, size)?;
        Ok(bytes)
    }

    /// The zero bytes that pad an entry's data to a block.
    fn padding(&mut self, path: &str, size: u64) -> Result<(), BundleError> {
        let mut pad = vec![0u8; (padded(size) - size) as usize];
        self.r
            .read_exact(&mut pad)
            .map_err(|e| corrupt(&self.bundle, format!("archive ends after {path}: {e}")))?;
        if pad.iter().any(|b| *b != 0) {
            return Err(corrupt(
                &self.bundle,
                format!("data hidden in the tar padding after {path}"),
            ));
        }
        Ok(())
    }

    /// The two zero blocks that end a tar archive; a header there is a
    /// member the index does not list.
    fn end(&mut self) -> Result<(), BundleError> {
        for _ in 0..2 {
            let block = self.block("the end-of-archive blocks")?;
            if block.iter().any(|b| *b != 0) {
                check_block(&self.bundle, &block, None)?;
            }
        }
        Ok(())
    }

    /// Nothing after the end (the seek table is a skippable frame, which
    /// the decoder skips). One block is enough to tell, and to name a
    /// member hidden there: a bomb of zeros behind the archive is refused
    /// without decompressing it.
    fn eof(&mut self) -> Result<(), BundleError> {
        let mut block = [0u8; 512];
        let mut got = 0;
        while got < block.len() {
            match self.r.read(&mut block[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(corrupt(&self.bundle, e)),
            }
        }
        if got == 0 {
            return Ok(());
        }
        Err(BundleError::UnexpectedMember {
            bundle: self.bundle.clone(),
            member: trailing_name(&block[..got]),
            detail: "found after the end of the archive".into(),
        })
    }
}

/// What follows the end of an archive, for a message: the path of a tar
/// header (bounded: a ustar name field), or how much data.
fn trailing_name(tail: &[u8]) -> String {
    for block in tail.chunks(512) {
        if block.iter().all(|b| *b == 0) {
            continue;
        }
        if let Ok(header) = <&[u8; 512]>::try_from(block) {
            if tar::Header::from_byte_slice(header).cksum().ok() == Some(ustar_checksum(header)) {
                let path = tar::Header::from_byte_slice(header)
                    .path_bytes()
                    .into_owned();
                return printable(&String::from_utf8_lossy(&path));
            }
        }
        return "<data>".into();
    }
    "<zero blocks>".into()
}

/// What the walk of a stream does next.
#[derive(Clone, Debug)]
enum Step {
    /// The index and label that open volume `v` (> 1) of a stream of volumes.
    Preamble(u32),
    Entry(Entry),
    End,
}

fn steps(index: &BundleIndex, only: Option<u32>) -> Vec<Step> {
    let mut out = Vec::new();
    let volumes: Vec<u32> = match only {
        Some(v) => vec![v],
        None => (1..=index.volume_count()).collect(),
    };
    for (n, v) in volumes.into_iter().enumerate() {
        if n > 0 {
            out.push(Step::Preamble(v));
        }
        out.extend(index.volume_entries(v).into_iter().map(Step::Entry));
        out.push(Step::End);
    }
    out
}

/// A bundle (or a stream of its volumes in order) read in one pass.
struct Walk<R> {
    t: TarStream<R>,
    index: BundleIndex,
    digest: Digest,
    label: Option<VolumeLabel>,
    /// Sizes of the index and label entries (where the members start).
    index_len: u64,
    label_len: u64,
    steps: Vec<Step>,
    pos: usize,
}

fn decoder<R: Read>(
    input: R,
    bundle: &str,
) -> Result<zstd::stream::read::Decoder<'static, BufReader<R>>, BundleError> {
    let mut dec = zstd::stream::read::Decoder::new(input).map_err(|e| corrupt(bundle, e))?;
    // airlock writes frames of at most 16 MiB (4 MiB by default); a frame
    // that asks for a larger window is refused, not allocated.
    dec.window_log_max(MAX_WINDOW_LOG)
        .map_err(|e| corrupt(bundle, e))?;
    Ok(dec)
}

/// A decoder for a bundle read from its first byte (a stream, or a file
/// read in order): its compressed bytes pass [`FrameRules`] on the way in,
/// so a stream obeys the same framing rules as a file with a seek table.
fn stream_decoder<R: Read>(
    input: R,
    bundle: &str,
) -> Result<zstd::stream::read::Decoder<'static, BufReader<CheckedFrames<R>>>, BundleError> {
    decoder(CheckedFrames::new(input), bundle)
}

impl<R: Read> Walk<R> {
    /// The start alone (the index, a label), for a reader that goes no
    /// further: one byte of the next block is read too, so that the decoder
    /// finishes the frames before it and checks their checksums (a read
    /// that stops at the index's last byte never gets there).
    fn head(r: R, bundle: &str) -> Result<Walk<R>, BundleError> {
        let mut w = Walk::start(r, bundle)?;
        let mut next = [0u8; 1];
        w.t.r
            .read_exact(&mut next)
            .map_err(|e| corrupt(bundle, format!("after the bundle index: {e}")))?;
        Ok(w)
    }

    /// Read the bundle index (and a volume's label) at the start.
    fn start(r: R, bundle: &str) -> Result<Walk<R>, BundleError> {
        let mut t = TarStream {
            r,
            bundle: bundle.to_string(),
        };
        let bytes = t.small(INDEX_PATH, MAX_INDEX_BYTES)?;
        let digest = Digest::of(&bytes);
        let index = parse_index(bundle, &bytes)?;
        let mut walk = Walk {
            t,
            index,
            digest,
            label: None,
            index_len: bytes.len() as u64,
            label_len: 0,
            steps: Vec::new(),
            pos: 0,
        };
        if walk.index.volumes.is_some() {
            walk.label = Some(walk.read_label()?);
        }
        Ok(walk)
    }

    fn read_label(&mut self) -> Result<VolumeLabel, BundleError> {
        let bytes = self.t.small(LABEL_PATH, MAX_LABEL_BYTES)?;
        self.label_len = bytes.len() as u64;
        let label = VolumeLabel::parse(&self.t.bundle, &bytes)?;
        if label.bundle != self.digest || label.count != self.index.volume_count() {
            return Err(BundleError::ForeignVolume {
                bundle: self.t.bundle.clone(),
                volume: label.volume,
                detail: format!(
                    "its label names bundle {} ({} volumes), its index is bundle {}",
                    label.bundle, label.count, self.digest
                ),
            });
        }
        Ok(label)
    }

    /// The next volume of a stream: the same index, then its label.
    fn preamble(&mut self, v: u32) -> Result<(), BundleError> {
        let bytes = self.t.small(INDEX_PATH, MAX_INDEX_BYTES)?;
        let digest = Digest::of(&bytes);
        if digest != self.digest {
            return Err(BundleError::ForeignVolume {
                bundle: self.t.bundle.clone(),
                volume: v,
                detail: format!(
                    "volume {v} belongs to bundle {digest}, the volumes before it to {}",
                    self.digest
                ),
            });
        }
        let label = self.read_label()?;
        if label.volume != v {
            return Err(BundleError::ForeignVolume {
                bundle: self.t.bundle.clone(),
                volume: label.volume,
                detail: format!(
                    "volume {} came where volume {v} was expected: stream the volumes in order",
                    label.volume
                ),
            });
        }
        Ok(())
    }

    fn run_boundaries(&mut self) -> Result<(), BundleError> {
        while let Some(step) = self.steps.get(self.pos).cloned() {
            match step {
                Step::Preamble(v) => self.preamble(v)?,
                Step::End => self.t.end()?,
                Step::Entry(_) => return Ok(()),
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// Every step; `visit` gets each member once, its data verified (a
    /// member cut into chunks is read across the volumes as one).
    fn run(
        &mut self,
        only_volume: bool,
        visit: &mut dyn FnMut(&Member, &mut dyn Read) -> Result<(), BundleError>,
    ) -> Result<ReadCounts, BundleError> {
        let mut counts = ReadCounts::default();
        loop {
            self.run_boundaries()?;
            let Some(Step::Entry(e)) = self.steps.get(self.pos).cloned() else {
                break;
            };
            let member = self.index.members[e.member].clone();
            self.t.header(&e.path, Size::Exactly(e.size))?;
            if e.chunk == 0 {
                let bundle = self.t.bundle.clone();
                let mut data = VerifyingReader::new(
                    (&mut self.t.r).take(e.size),
                    member.digest.clone(),
                    member.size,
                    member.path.clone(),
                );
                visit(&member, &mut data)?;
                data.drain()
                    .map_err(|err| member_error(&bundle, &member, err))?;
                self.t.padding(&e.path, e.size)?;
                self.pos += 1;
                counts.members += 1;
            } else if only_volume {
                // A chunk alone: its frames' checksums are checked as it is
                // decompressed; its sha256 is the whole member's.
                io::copy(&mut (&mut self.t.r).take(e.size), &mut io::sink())
                    .map_err(|err| corrupt(&self.t.bundle, format!("reading {}: {err}", e.path)))?;
                self.t.padding(&e.path, e.size)?;
                self.pos += 1;
                counts.chunks += 1;
            } else {
                let bundle = self.t.bundle.clone();
                let first_of = e.member;
                let mut data = VerifyingReader::new(
                    Chunks {
                        walk: self,
                        member: e.member,
                        left: e.size,
                        current: e,
                    },
                    member.digest.clone(),
                    member.size,
                    member.path.clone(),
                );
                visit(&member, &mut data)?;
                data.drain()
                    .map_err(|err| member_error(&bundle, &member, err))?;
                // The digest was checked at the member's last byte, before
                // the reader moved past the last chunk's padding.
                if let Some(Step::Entry(last)) = self.steps.get(self.pos).cloned() {
                    if last.member == first_of {
                        self.t.padding(&last.path, last.size)?;
                        self.pos += 1;
                    }
                }
                counts.members += 1;
            }
        }
        self.t.eof()?;
        Ok(counts)
    }
}

/// What a walk read.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadCounts {
    pub members: usize,
    pub chunks: usize,
}

/// A member cut into chunks, read from one stream of volumes: at the end of
/// a chunk, the volume's end, the next volume's preamble, the next chunk.
struct Chunks<'a, R> {
    walk: &'a mut Walk<R>,
    member: usize,
    current: Entry,
    left: u64,
}

impl<R: Read> Chunks<'_, R> {
    fn next_chunk(&mut self) -> Result<bool, BundleError> {
        let w = &mut *self.walk;
        w.t.padding(&self.current.path, self.current.size)?;
        w.pos += 1;
        w.run_boundaries()?;
        match w.steps.get(w.pos).cloned() {
            Some(Step::Entry(e))
                if e.member == self.member && e.chunk == self.current.chunk + 1 =>
            {
                w.t.header(&e.path, Size::Exactly(e.size))?;
                self.left = e.size;
                self.current = e;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl<R: Read> Read for Chunks<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.left == 0 {
            if self.current.chunk == 0 || !self.next_chunk().map_err(io::Error::other)? {
                self.current.chunk = 0;
                return Ok(0);
            }
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        let got = self.walk.t.r.read(&mut buf[..n])?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("archive ends inside {}", self.current.path),
            ));
        }
        self.left -= got as u64;
        Ok(got)
    }
}

/// Only the bundle index (and a volume's label) of a bundle read as a stream.
pub fn read_index_only<R: Read>(
    input: R,
    bundle: &str,
) -> Result<(BundleIndex, Digest, Option<VolumeLabel>), BundleError> {
    let w = Walk::head(stream_decoder(input, bundle)?, bundle)?;
    Ok((w.index, w.digest, w.label))
}

/// Read a whole bundle in one pass (or its volumes, concatenated in
/// order), checking every member in order.
pub fn read_stream<R: Read>(
    input: R,
    bundle: &str,
    mut visit: impl FnMut(StreamEvent) -> Result<(), BundleError>,
) -> Result<(BundleIndex, Digest), BundleError> {
    let mut w = Walk::start(stream_decoder(input, bundle)?, bundle)?;
    if let Some(label) = &w.label {
        if label.volume != 1 {
            return Err(BundleError::ForeignVolume {
                bundle: bundle.into(),
                volume: label.volume,
                detail: format!(
                    "a stream of volumes starts with volume 1 of {}; this is volume {}",
                    label.count, label.volume
                ),
            });
        }
    }
    visit(StreamEvent::Index {
        index: &w.index,
        digest: &w.digest,
    })?;
    w.steps = steps(&w.index, None);
    w.run(false, &mut |member, data| {
        visit(StreamEvent::Member { member, data })
    })?;
    Ok((w.index, w.digest))
}

/// One volume of a bundle on its own: every whole member verified against
/// the index, every chunk read (zstd checksums), the end checked.
pub fn read_one_volume<R: Read>(
    input: R,
    bundle: &str,
) -> Result<(BundleIndex, Digest, VolumeLabel, ReadCounts), BundleError> {
    let mut w = Walk::start(stream_decoder(input, bundle)?, bundle)?;
    let label = w.label.clone().ok_or_else(|| BundleError::BadIndex {
        bundle: bundle.into(),
        detail: "not a volume".into(),
    })?;
    w.steps = steps(&w.index, Some(label.volume));
    let counts = w.run(true, &mut |_, _| Ok(()))?;
    Ok((w.index, w.digest, label, counts))
}

/// Every whole member of one file of a bundle (the bundle, or any one of
/// its volumes), each verified before `visit` sees its end; chunks of
/// members cut across volumes are read past. For recovering what an
/// unfinished export wrote: the caller expects an error where it stops.
pub fn read_whole_members<R: Read>(
    input: R,
    bundle: &str,
    mut visit: impl FnMut(&Member, &mut dyn Read) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut w = Walk::start(stream_decoder(input, bundle)?, bundle)?;
    let volume = w.label.as_ref().map(|l| l.volume);
    w.steps = steps(&w.index, volume);
    w.run(volume.is_some(), &mut |m, data| visit(m, data))?;
    Ok(())
}

// ------------------------------------------------------------ random access

/// One file of a seekable bundle: a whole bundle or one volume.
struct VolumeFile {
    path: PathBuf,
    table: SeekTable,
    /// Where the label's data ends (the first entry's header starts).
    preamble_end: u64,
    /// Where the last entry's data ends (the end blocks start).
    end: u64,
}

/// Where a member's data (or one chunk of it) lies.
#[derive(Clone, Debug)]
struct Part {
    /// Volume number − 1.
    file: usize,
    offset: u64,
    size: u64,
    path: String,
}

/// The head of one file: its seek table, index, label.
struct Head {
    path: PathBuf,
    table: SeekTable,
    index: BundleIndex,
    digest: Digest,
    label: Option<VolumeLabel>,
    preamble_end: u64,
}

fn open_head(path: &Path) -> Result<Option<Head>, BundleError> {
    let name = path.display().to_string();
    let io_err = |source| BundleError::Io {
        path: name.clone(),
        source,
    };
    if path.is_dir() {
        return Err(BundleError::NotAFile { path: name });
    }
    let mut f = File::open(path).map_err(io_err)?;
    // A table that is missing or does not add up to the file is unusable:
    // the caller reads the file as a stream instead (docs/bundle-format.md §3).
    let table = match SeekTable::read(&mut f) {
        Ok(t) => t,
        Err(super::frames::SeekTableError::Io(e)) => return Err(io_err(e)),
        Err(_) => return Ok(None),
    };
    // A table that is there must describe the frames exactly: a frame it
    // does not list (a skippable payload, a spliced frame) is refused, not
    // skipped; only block headers are read, payloads are seeked over.
    check_file_frames(&mut f, &table).map_err(|e| {
        corrupt(
            &name,
            format!("the seek table does not agree with the frames: {e}"),
        )
    })?;
    f.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let w = Walk::head(decoder(BufReader::new(f), &name)?, &name)?;
    let mut preamble_end = 512 + padded(w.index_len);
    if w.label.is_some() {
        preamble_end += 512 + padded(w.label_len);
    }
    Ok(Some(Head {
        path: path.to_path_buf(),
        table,
        index: w.index,
        digest: w.digest,
        label: w.label,
        preamble_end,
    }))
}

/// A bundle file with a seek table, or a set of volume files: any member
/// can be read on its own, through the frame that starts it.
pub struct SeekableBundle {
    /// The first file given (names the bundle in messages).
    pub path: PathBuf,
    pub index: BundleIndex,
    pub digest: Digest,
    /// By volume number − 1; `None` for a volume that was not given.
    files: Vec<Option<VolumeFile>>,
    /// Per member, where its data lies: one part, or one per chunk.
    parts: Vec<Vec<Part>>,
}

impl SeekableBundle {
    /// `Ok(None)` when the file has no seek table (read it as a stream).
    pub fn open(path: &Path) -> Result<Option<SeekableBundle>, BundleError> {
        SeekableBundle::open_set(&[path.to_path_buf()])
    }

    /// The volumes of one bundle, in any order (or one bundle file). Each
    /// must carry the same bundle index; a file from another bundle, a
    /// volume given twice, or a volume without its seek table is named.
    /// Volumes not given are allowed here: see [`Self::missing_volumes`].
    pub fn open_set(paths: &[PathBuf]) -> Result<Option<SeekableBundle>, BundleError> {
        let mut heads = Vec::new();
        for p in paths {
            match open_head(p)? {
                Some(h) => heads.push(h),
                None if paths.len() == 1 => return Ok(None),
                None => return Err(corrupt(
                    &p.display().to_string(),
                    "no seek table at its end: this volume is truncated or damaged; copy it again",
                )),
            }
        }
        let Some(first) = heads.first() else {
            return Err(BundleError::BadIndex {
                bundle: "(no files)".into(),
                detail: "no bundle file given".into(),
            });
        };
        let (index, digest, path) = (
            first.index.clone(),
            first.digest.clone(),
            first.path.clone(),
        );
        let count = index.volume_count() as usize;
        let mut files: Vec<Option<VolumeFile>> = (0..count).map(|_| None).collect();
        for h in heads {
            let name = h.path.display().to_string();
            if h.digest != digest {
                return Err(BundleError::ForeignVolume {
                    bundle: name,
                    volume: h.label.as_ref().map(|l| l.volume).unwrap_or(1),
                    detail: format!(
                        "it belongs to bundle {}, {} to bundle {digest}: give the volumes of one bundle",
                        h.digest,
                        path.display()
                    ),
                });
            }
            let v = match (&h.label, index.volumes.is_some()) {
                (Some(l), true) => l.volume as usize,
                (None, false) if count == 1 => 1,
                _ => {
                    return Err(BundleError::BadIndex {
                        bundle: name,
                        detail:
                            "a volume without its label, or a label in a bundle without volumes"
                                .into(),
                    })
                }
            };
            if let Some(other) = &files[v - 1] {
                return Err(BundleError::ForeignVolume {
                    bundle: name,
                    volume: v as u32,
                    detail: format!("volume {v} is given twice (also {})", other.path.display()),
                });
            }
            files[v - 1] = Some(VolumeFile {
                path: h.path,
                table: h.table,
                preamble_end: h.preamble_end,
                end: h.preamble_end,
            });
        }
        let mut parts: Vec<Vec<Part>> = vec![Vec::new(); index.members.len()];
        for (vi, file) in files.iter_mut().enumerate() {
            let entries = index.volume_entries(vi as u32 + 1);
            let Some(file) = file else {
                for e in entries {
                    parts[e.member].push(Part {
                        file: vi,
                        offset: 0,
                        size: e.size,
                        path: e.path,
                    });
                }
                continue;
            };
            let mut at = file.preamble_end;
            for e in entries {
                let data = at + 512;
                at = data + padded(e.size);
                if at + 1024 > file.table.decompressed_len {
                    return Err(BundleError::MemberMismatch {
                        bundle: file.path.display().to_string(),
                        member: e.path,
                        detail: format!(
                            "with the {} bytes listed it runs past the end of the archive ({} bytes): a member before it is missing, or the archive is truncated",
                            e.size, file.table.decompressed_len
                        ),
                    });
                }
                parts[e.member].push(Part {
                    file: vi,
                    offset: data,
                    size: e.size,
                    path: e.path,
                });
            }
            file.end = at;
            if at + 1024 > file.table.decompressed_len {
                return Err(corrupt(
                    &file.path.display().to_string(),
                    "members run past the end of the archive",
                ));
            }
        }
        Ok(Some(SeekableBundle {
            path,
            index,
            digest,
            files,
            parts,
        }))
    }

    /// Volume numbers that were not given.
    pub fn missing_volumes(&self) -> Vec<u32> {
        (1..=self.files.len() as u32)
            .filter(|v| self.files[*v as usize - 1].is_none())
            .collect()
    }

    /// The files given, by volume number.
    pub fn volume_files(&self) -> Vec<(u32, PathBuf)> {
        self.files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (i as u32 + 1, f.path.clone())))
            .collect()
    }

    /// Every volume must be there before anything is read for real.
    pub fn require_complete(&self) -> Result<(), BundleError> {
        let missing = self.missing_volumes();
        if missing.is_empty() {
            return Ok(());
        }
        Err(BundleError::MissingVolumes {
            bundle: self.digest.clone(),
            count: self.files.len() as u32,
            missing,
            given: self
                .volume_files()
                .iter()
                .map(|(v, p)| format!("{v}: {}", p.display()))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn file(&self, i: usize, member: &str) -> Result<&VolumeFile, BundleError> {
        self.files
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| BundleError::MissingVolumes {
                bundle: self.digest.clone(),
                count: self.files.len() as u32,
                missing: vec![i as u32 + 1],
                given: format!("{member} is in it"),
            })
    }

    fn decoder_at(
        file: &VolumeFile,
        offset: u64,
    ) -> Result<zstd::stream::read::Decoder<'static, BufReader<File>>, BundleError> {
        let name = file.path.display().to_string();
        let (c, d) = file
            .table
            .locate(offset)
            .ok_or_else(|| corrupt(&name, format!("no frame holds offset {offset}")))?;
        let mut f = File::open(&file.path).map_err(|source| BundleError::Io {
            path: name.clone(),
            source,
        })?;
        f.seek(SeekFrom::Start(c)).map_err(|e| corrupt(&name, e))?;
        let mut dec = decoder(f, &name)?;
        io::copy(&mut (&mut dec).take(offset - d), &mut io::sink())
            .map_err(|e| corrupt(&name, e))?;
        Ok(dec)
    }

    /// One part's data, after checking its tar header.
    fn open_part(&self, part: &Part) -> Result<Box<dyn Read + Send>, BundleError> {
        let file = self.file(part.file, &part.path)?;
        let name = file.path.display().to_string();
        let mut dec = Self::decoder_at(file, part.offset - 512)?;
        let mut block = [0u8; 512];
        dec.read_exact(&mut block).map_err(|e| corrupt(&name, e))?;
        check_block(&name, &block, Some((&part.path, Size::Exactly(part.size))))?;
        Ok(Box::new(PartData {
            dec,
            left: part.size,
            pad: (padded(part.size) - part.size) as usize,
            path: part.path.clone(),
        }))
    }

    /// A reader of member `i`'s data (its chunks joined, each header
    /// checked as it is reached) that verifies the digest at the end.
    pub fn open_member(
        &self,
        i: usize,
    ) -> Result<VerifyingReader<Box<dyn Read + Send>>, BundleError> {
        let m = &self.index.members[i];
        let parts = &self.parts[i];
        let first = parts.first().ok_or_else(|| BundleError::BadIndex {
            bundle: self.path.display().to_string(),
            detail: format!("{} is in no volume", m.path),
        })?;
        let name = self.file(first.file, &m.path)?.path.display().to_string();
        let data: Box<dyn Read + Send> = if parts.len() == 1 {
            self.open_part(first)?
        } else {
            for p in parts {
                self.file(p.file, &p.path)?;
            }
            let readers = parts
                .iter()
                .map(|p| self.open_part(p).map_err(io::Error::other))
                .collect::<Vec<_>>();
            Box::new(Joined {
                parts: readers.into_iter(),
                current: None,
            })
        };
        Ok(VerifyingReader::new(
            data,
            m.digest.clone(),
            m.size,
            format!("{} in {name}", m.path),
        ))
    }

    /// Every file must end right after its last entry with the two zero
    /// blocks of a tar end: nothing may hide behind it.
    pub fn check_end(&self) -> Result<(), BundleError> {
        for file in self.files.iter().flatten() {
            let name = file.path.display().to_string();
            let end = file.end;
            let mut tail = Vec::new();
            Self::decoder_at(file, end)?
                .take(2048)
                .read_to_end(&mut tail)
                .map_err(|e| corrupt(&name, e))?;
            if file.table.decompressed_len != end + 1024 {
                let member = match trailing_name(&tail) {
                    named if named != "<zero blocks>" => named,
                    _ => format!(
                        "<{} bytes>",
                        file.table.decompressed_len.saturating_sub(end)
                    ),
                };
                return Err(BundleError::UnexpectedMember {
                    bundle: name,
                    member,
                    detail: "found after the last member the index lists".into(),
                });
            }
            if tail.len() != 1024 || tail.iter().any(|b| *b != 0) {
                return Err(corrupt(&name, "the tar end-of-archive blocks are missing"));
            }
        }
        Ok(())
    }

    /// Read a (small) member whole, verified.
    pub fn read_member(&self, i: usize) -> Result<Vec<u8>, BundleError> {
        let mut r = self.open_member(i)?;
        let mut out = Vec::with_capacity(self.index.members[i].size.min(1 << 20) as usize);
        r.read_to_end(&mut out).map_err(|e| {
            member_error(&self.path.display().to_string(), &self.index.members[i], e)
        })?;
        Ok(out)
    }
}

/// One part's data read at random, then what the stream reader checks
/// after it too: zero padding, and one byte of the next block, so that the
/// decoder finishes the data's last frame and checks its checksum (a read
/// that stops at the data's last byte never gets there).
struct PartData<R> {
    dec: R,
    left: u64,
    pad: usize,
    path: String,
}

impl<R: Read> PartData<R> {
    /// A frame that does not decode (a bad checksum, corrupt data) is a
    /// damaged bundle, not a failure to read the file.
    fn damaged(&self, e: io::Error) -> io::Error {
        if e.raw_os_error().is_some() {
            return e;
        }
        crate::digest::integrity_error(format!("{}: {e}", self.path))
    }

    /// After the data's last byte, before handing it out (a verifying
    /// reader stops at the size and never asks for more).
    fn check_tail(&mut self) -> io::Result<()> {
        let mut tail = [0u8; 513];
        let tail = &mut tail[..self.pad + 1];
        self.dec.read_exact(tail).map_err(|e| self.damaged(e))?;
        if tail[..self.pad].iter().any(|b| *b != 0) {
            return Err(crate::digest::integrity_error(format!(
                "data hidden in the tar padding after {}",
                self.path
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for PartData<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.dec.read(&mut buf[..n]).map_err(|e| self.damaged(e))?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("archive ends inside {}", self.path),
            ));
        }
        self.left -= got as u64;
        if self.left == 0 {
            self.check_tail()?;
        }
        Ok(got)
    }
}

/// The chunks of one member, one after the other. Each chunk's reader is
/// opened up front (its header is checked then), read in turn.
struct Joined {
    parts: std::vec::IntoIter<io::Result<Box<dyn Read + Send>>>,
    current: Option<Box<dyn Read + Send>>,
}

impl Read for Joined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.current.is_none() {
                match self.parts.next() {
                    Some(r) => self.current = Some(r?),
                    None => return Ok(0),
                }
            }
            if let Some(r) = self.current.as_mut() {
                let n = r.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
            }
            self.current = None;
        }
    }
}

impl SeekableBundle {
    /// Member `i`'s bytes from `start`, `len` of them, not verified: for a
    /// `Range` request on a member already verified whole. Starts at the
    /// frame holding `start`, so a range costs at most one frame of skipping.
    pub fn open_range(
        &self,
        i: usize,
        start: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send>, BundleError> {
        let mut readers: Vec<io::Result<Box<dyn Read + Send>>> = Vec::new();
        let (mut at, mut left) = (start, len);
        for part in &self.parts[i] {
            if left == 0 {
                break;
            }
            if at >= part.size {
                at -= part.size;
                continue;
            }
            let file = self.file(part.file, &part.path)?;
            let n = (part.size - at).min(left);
            let dec = Self::decoder_at(file, part.offset + at)?;
            readers.push(Ok(Box::new(dec.take(n))));
            left -= n;
            at = 0;
        }
        Ok(Box::new(Joined {
            parts: readers.into_iter(),
            current: None,
        }))
    }

    /// Member index of each blob (configs, layers, artifact blobs, manifests).
    pub fn blob_members(&self) -> Vec<(Digest, usize)> {
        self.index
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.path.starts_with("blobs/"))
            .map(|(i, m)| (m.digest.clone(), i))
            .collect()
    }
}
