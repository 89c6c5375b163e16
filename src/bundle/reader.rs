//! Reading a bundle: as a stream (a pipe, a data diode: one pass, in
//! order) or as a seekable file (random access to any member through the
//! seek table, for concurrent uploads without extraction).
//!
//! Every member is checked against the bundle index: path, size, and sha256
//! (by [`VerifyingReader`], which fails at the end instead of reporting EOF).

use super::frames::SeekTable;
use super::{is_layout_path, padded, BundleError, BundleIndex, Member, INDEX_MEDIA_TYPE};
use super::{FORMAT_VERSION, INDEX_PATH, MAX_INDEX_BYTES};
use crate::digest::{Digest, VerifyingReader};
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
    let index: BundleIndex =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if index.schema_version != FORMAT_VERSION || index.media_type != INDEX_MEDIA_TYPE {
        return Err(bad(format!(
            "format {} version {} is not supported (this airlock reads {INDEX_MEDIA_TYPE} version {FORMAT_VERSION})",
            index.media_type, index.schema_version
        )));
    }
    let mut seen = HashSet::new();
    for m in &index.members {
        if !is_layout_path(&m.path) || m.path == INDEX_PATH {
            return Err(bad(format!(
                "member path {:?} is not an OCI layout path",
                m.path
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
    }
    for required in ["oci-layout", "index.json"] {
        if !seen.contains(required) {
            return Err(bad(format!("no {required} member")));
        }
    }
    Ok(index)
}

fn check_header(
    bundle: &str,
    path: &str,
    entry_type: tar::EntryType,
    size: u64,
    expected: Option<&Member>,
) -> Result<(), BundleError> {
    if entry_type != tar::EntryType::Regular {
        return Err(BundleError::UnexpectedMember {
            bundle: bundle.into(),
            member: path.into(),
            detail: format!("entry type {entry_type:?}; only regular files are allowed"),
        });
    }
    let Some(m) = expected else {
        return Err(BundleError::UnexpectedMember {
            bundle: bundle.into(),
            member: path.into(),
            detail: "not listed in the bundle index".into(),
        });
    };
    if path != m.path {
        let detail = if is_layout_path(path) {
            format!("found where the index lists {}", m.path)
        } else {
            "not an OCI layout path".into()
        };
        return Err(BundleError::UnexpectedMember {
            bundle: bundle.into(),
            member: path.into(),
            detail,
        });
    }
    if size != m.size {
        return Err(BundleError::MemberMismatch {
            bundle: bundle.into(),
            member: path.into(),
            detail: format!("size {size}, index says {}", m.size),
        });
    }
    Ok(())
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
    let mut b = Vec::with_capacity(member.size as usize);
    data.read_to_end(&mut b)
        .map_err(|e| member_error(bundle, member, e))?;
    Ok(b)
}

/// The bundle index from the first tar entry: its path, a size limit
/// checked before reading, its digest (the bundle digest), its checks.
fn index_member<R: Read>(
    mut first: tar::Entry<'_, R>,
    bundle: &str,
) -> Result<(BundleIndex, Digest), BundleError> {
    let path = first
        .path()
        .map_err(|e| corrupt(bundle, e))?
        .to_string_lossy()
        .into_owned();
    if path != INDEX_PATH {
        return Err(BundleError::UnexpectedMember {
            bundle: bundle.into(),
            member: path,
            detail: format!("the first member must be {INDEX_PATH}"),
        });
    }
    if first.size() > MAX_INDEX_BYTES {
        return Err(corrupt(bundle, "bundle index is implausibly large"));
    }
    let mut bytes = Vec::new();
    first
        .read_to_end(&mut bytes)
        .map_err(|e| corrupt(bundle, e))?;
    let digest = Digest::of(&bytes);
    Ok((parse_index(bundle, &bytes)?, digest))
}

/// Only the bundle index of a bundle read as a stream (nothing after it).
pub fn read_index_only<R: Read>(
    input: R,
    bundle: &str,
) -> Result<(BundleIndex, Digest), BundleError> {
    let dec = zstd::stream::read::Decoder::new(input).map_err(|e| corrupt(bundle, e))?;
    let mut archive = tar::Archive::new(dec);
    let mut entries = archive.entries().map_err(|e| corrupt(bundle, e))?;
    let first = entries
        .next()
        .ok_or_else(|| corrupt(bundle, "empty archive"))?
        .map_err(|e| corrupt(bundle, e))?;
    index_member(first, bundle)
}

/// Read a whole bundle in one pass, checking every member in order.
pub fn read_stream<R: Read>(
    input: R,
    bundle: &str,
    mut visit: impl FnMut(StreamEvent) -> Result<(), BundleError>,
) -> Result<(BundleIndex, Digest), BundleError> {
    let dec = zstd::stream::read::Decoder::new(input).map_err(|e| corrupt(bundle, e))?;
    let mut archive = tar::Archive::new(dec);
    let (index, digest) = {
        let mut entries = archive.entries().map_err(|e| corrupt(bundle, e))?;
        let first = entries
            .next()
            .ok_or_else(|| corrupt(bundle, "empty archive"))?
            .map_err(|e| corrupt(bundle, e))?;
        let (index, digest) = index_member(first, bundle)?;
        visit(StreamEvent::Index {
            index: &index,
            digest: &digest,
        })?;
        for member in &index.members {
            let entry = entries.next().ok_or_else(|| {
                corrupt(
                    bundle,
                    format!("archive ends before member {}", member.path),
                )
            })?;
            let entry = entry.map_err(|e| corrupt(bundle, e))?;
            let path = entry
                .path()
                .map_err(|e| corrupt(bundle, e))?
                .to_string_lossy()
                .into_owned();
            check_header(
                bundle,
                &path,
                entry.header().entry_type(),
                entry.size(),
                Some(member),
            )?;
            let mut data = VerifyingReader::new(
                entry,
                member.digest.clone(),
                member.size,
                member.path.clone(),
            );
            visit(StreamEvent::Member {
                member,
                data: &mut data,
            })?;
            data.drain().map_err(|e| member_error(bundle, member, e))?;
        }
        if let Some(extra) = entries.next() {
            let extra = extra.map_err(|e| corrupt(bundle, e))?;
            let path = extra
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            check_header(
                bundle,
                &path,
                extra.header().entry_type(),
                extra.size(),
                None,
            )?;
        }
        (index, digest)
    };
    // Decode to the very end so that a damaged tail is noticed too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| corrupt(bundle, e))?;
    Ok((index, digest))
}

/// A bundle file with a seek table: any member can be read on its own.
pub struct SeekableBundle {
    pub path: PathBuf,
    pub index: BundleIndex,
    pub digest: Digest,
    offsets: Vec<u64>,
    table: SeekTable,
}

impl SeekableBundle {
    /// `Ok(None)` when the file has no seek table (read it as a stream).
    pub fn open(path: &Path) -> Result<Option<SeekableBundle>, BundleError> {
        let name = path.display().to_string();
        let io_err = |source| BundleError::Io {
            path: name.clone(),
            source,
        };
        let mut f = File::open(path).map_err(io_err)?;
        let table = match SeekTable::read(&mut f) {
            Ok(t) => t,
            Err(super::frames::SeekTableError::Missing) => return Ok(None),
            Err(e) => return Err(corrupt(&name, e)),
        };
        f.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let mut dec =
            zstd::stream::read::Decoder::new(BufReader::new(f)).map_err(|e| corrupt(&name, e))?;
        let mut block = [0u8; 512];
        dec.read_exact(&mut block).map_err(|e| corrupt(&name, e))?;
        let header = tar::Header::from_byte_slice(&block);
        let hpath = header
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size = header.size().map_err(|e| corrupt(&name, e))?;
        if hpath != INDEX_PATH || size > MAX_INDEX_BYTES {
            return Err(BundleError::UnexpectedMember {
                bundle: name,
                member: hpath,
                detail: format!("the first member must be {INDEX_PATH}"),
            });
        }
        let mut bytes = vec![0u8; size as usize];
        dec.read_exact(&mut bytes).map_err(|e| corrupt(&name, e))?;
        let digest = Digest::of(&bytes);
        let index = parse_index(&name, &bytes)?;
        let offsets = index.data_offsets(size);
        if let (Some(last), Some(m)) = (offsets.last(), index.members.last()) {
            if last + padded(m.size) + 1024 > table.decompressed_len {
                return Err(corrupt(&name, "members run past the end of the archive"));
            }
        }
        Ok(Some(SeekableBundle {
            path: path.to_path_buf(),
            index,
            digest,
            offsets,
            table,
        }))
    }

    fn decoder_at(
        &self,
        offset: u64,
    ) -> Result<zstd::stream::read::Decoder<'static, BufReader<File>>, BundleError> {
        let name = self.path.display().to_string();
        let (c, d) = self
            .table
            .locate(offset)
            .ok_or_else(|| corrupt(&name, format!("no frame holds offset {offset}")))?;
        let mut f = File::open(&self.path).map_err(|source| BundleError::Io {
            path: name.clone(),
            source,
        })?;
        f.seek(SeekFrom::Start(c)).map_err(|e| corrupt(&name, e))?;
        let mut dec = zstd::stream::read::Decoder::new(f).map_err(|e| corrupt(&name, e))?;
        io::copy(&mut (&mut dec).take(offset - d), &mut io::sink())
            .map_err(|e| corrupt(&name, e))?;
        Ok(dec)
    }

    /// A reader of member `i`'s data, after checking its tar header, that
    /// verifies the data's digest at the end.
    pub fn open_member(
        &self,
        i: usize,
    ) -> Result<VerifyingReader<Box<dyn Read + Send>>, BundleError> {
        let name = self.path.display().to_string();
        let m = &self.index.members[i];
        let mut dec = self.decoder_at(self.offsets[i] - 512)?;
        let mut block = [0u8; 512];
        dec.read_exact(&mut block).map_err(|e| corrupt(&name, e))?;
        let header = tar::Header::from_byte_slice(&block);
        let cksum_ok = header.cksum().ok() == Some(ustar_checksum(&block));
        let path = String::from_utf8_lossy(header.path_bytes().as_ref()).into_owned();
        let size = header
            .size()
            .map_err(|e| corrupt(&name, format!("header of {}: {e}", m.path)))?;
        if !cksum_ok {
            return Err(corrupt(
                &name,
                format!("tar header of {} has a bad checksum", m.path),
            ));
        }
        check_header(&name, &path, header.entry_type(), size, Some(m))?;
        let boxed: Box<dyn Read + Send> = Box::new(dec);
        Ok(VerifyingReader::new(
            boxed,
            m.digest.clone(),
            m.size,
            format!("{} in {name}", m.path),
        ))
    }

    /// The archive must end right after the last listed member with the
    /// two zero blocks of a tar end: nothing may hide behind it.
    pub fn check_end(&self) -> Result<(), BundleError> {
        let name = self.path.display().to_string();
        let end = match (self.offsets.last(), self.index.members.last()) {
            (Some(o), Some(m)) => o + padded(m.size),
            _ => return Err(corrupt(&name, "no members")),
        };
        let mut tail = Vec::new();
        self.decoder_at(end)?
            .take(2048)
            .read_to_end(&mut tail)
            .map_err(|e| corrupt(&name, e))?;
        if self.table.decompressed_len != end + 1024 {
            // Name what follows if it is a tar header, else its size.
            let member = match tail.get(..512).filter(|h| h.iter().any(|b| *b != 0)) {
                Some(h) => String::from_utf8_lossy(&h[..100])
                    .trim_end_matches('\0')
                    .to_string(),
                None => format!(
                    "<{} bytes>",
                    self.table.decompressed_len.saturating_sub(end)
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
        Ok(())
    }

    /// Read a (small) member whole, verified.
    pub fn read_member(&self, i: usize) -> Result<Vec<u8>, BundleError> {
        let mut r = self.open_member(i)?;
        let mut out = Vec::with_capacity(self.index.members[i].size as usize);
        r.read_to_end(&mut out).map_err(|e| {
            member_error(&self.path.display().to_string(), &self.index.members[i], e)
        })?;
        Ok(out)
    }
}
