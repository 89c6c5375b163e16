//! Volumes: one bundle cut into files that each fit the media (a DVD, a
//! FAT32 stick). See docs/bundle-format.md §8.
//!
//! The bundle index is written first in every volume, so which member goes
//! into which volume must be decided before any blob is compressed. We plan
//! with zstd's worst-case frame size (`compress_bound`): layers are already
//! compressed, so the bound is within 0.5 % of what is written, and a
//! volume can never come out larger than asked.

use super::{padded, BundleError, BundleIndex, Member};
use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The second member of every volume: which bundle, which volume.
pub const LABEL_PATH: &str = "airlock-volume.json";
pub const LABEL_MEDIA_TYPE: &str = "application/vnd.airlock.bundle.volume.v1+json";
/// A label is a few hundred bytes; anything larger is not one.
pub const MAX_LABEL_BYTES: u64 = 4096;
/// A chunk smaller than this is not worth a volume's tail: start the next volume.
const MIN_CHUNK: u64 = 64 << 10;
/// Frames added to each frame's worst case: checksum and block headers.
const FRAME_SLACK: u64 = 16;

/// How the bundle is split (in the bundle index, when it is).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Volumes {
    pub count: u32,
    /// The largest file size asked for, in bytes.
    pub max_size: u64,
}

/// Part of a member's data held by one volume, as its own tar entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Chunk {
    pub volume: u32,
    pub size: u64,
}

/// `airlock-volume.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeLabel {
    pub media_type: String,
    /// The bundle digest (sha256 of the bundle index, the first member).
    pub bundle: Digest,
    pub volume: u32,
    pub count: u32,
}

impl VolumeLabel {
    pub fn new(bundle: Digest, volume: u32, count: u32) -> Self {
        VolumeLabel {
            media_type: LABEL_MEDIA_TYPE.into(),
            bundle,
            volume,
            count,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("plain structs always serialise");
        v.push(b'\n');
        v
    }

    pub fn parse(bundle: &str, bytes: &[u8]) -> Result<VolumeLabel, BundleError> {
        let bad = |detail: String| BundleError::BadIndex {
            bundle: bundle.to_string(),
            detail: format!("{LABEL_PATH}: {detail}"),
        };
        let label: VolumeLabel =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if label.media_type != LABEL_MEDIA_TYPE {
            return Err(bad(format!("unknown media type {}", label.media_type)));
        }
        if label.volume == 0 || label.volume > label.count {
            return Err(bad(format!(
                "volume {} of {} is not a volume number",
                label.volume, label.count
            )));
        }
        Ok(label)
    }
}

/// The tar path of chunk `k` (1-based) of a member. Outside `blobs/`, so
/// that extracting one volume never leaves a partial blob under its digest.
pub fn chunk_path(member: &Member, k: usize) -> String {
    format!("airlock-chunks/{}.{k:03}", member.digest.hex())
}

/// One tar entry of a volume (after the index and the label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The member it belongs to (an index into `BundleIndex::members`).
    pub member: usize,
    /// Which chunk of the member (0 when the member is whole).
    pub chunk: usize,
    pub path: String,
    pub size: u64,
}

impl BundleIndex {
    pub fn volume_count(&self) -> u32 {
        self.volumes.as_ref().map(|v| v.count).unwrap_or(1)
    }

    /// The tar entries of volume `v` (1-based), in order. A bundle without
    /// volumes is its own volume 1.
    pub fn volume_entries(&self, v: u32) -> Vec<Entry> {
        let mut out = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if m.chunks.is_empty() {
                if m.volume.unwrap_or(1) == v {
                    out.push(Entry {
                        member: i,
                        chunk: 0,
                        path: m.path.clone(),
                        size: m.size,
                    });
                }
                continue;
            }
            for (k, c) in m.chunks.iter().enumerate() {
                if c.volume == v {
                    out.push(Entry {
                        member: i,
                        chunk: k + 1,
                        path: chunk_path(m, k + 1),
                        size: c.size,
                    });
                }
            }
        }
        out
    }

    /// The placement rules a reader relies on: volume numbers in range,
    /// every volume used in order, chunks that add up to their member.
    pub fn check_volumes(&self, bundle: &str) -> Result<(), BundleError> {
        let bad = |detail: String| BundleError::BadIndex {
            bundle: bundle.to_string(),
            detail,
        };
        let Some(vols) = &self.volumes else {
            if self
                .members
                .iter()
                .any(|m| m.volume.is_some() || !m.chunks.is_empty())
            {
                return Err(bad(
                    "members are placed in volumes but no volumes are declared".into(),
                ));
            }
            return Ok(());
        };
        if vols.count == 0 || vols.count > 9999 {
            return Err(bad(format!("{} volumes", vols.count)));
        }
        let mut last = 1;
        for m in &self.members {
            let places: Vec<u32> = if m.chunks.is_empty() {
                vec![m
                    .volume
                    .ok_or_else(|| bad(format!("{} has no volume", m.path)))?]
            } else {
                if m.volume.is_some() || m.chunks.len() < 2 {
                    return Err(bad(format!("{} is both whole and cut", m.path)));
                }
                let sum = m.chunks.iter().try_fold(0u64, |s, c| s.checked_add(c.size));
                if sum != Some(m.size) || m.chunks.iter().any(|c| c.size == 0) {
                    return Err(bad(format!(
                        "the chunks of {} do not add up to its size",
                        m.path
                    )));
                }
                m.chunks.iter().map(|c| c.volume).collect()
            };
            for v in places {
                if v < last || v > last + 1 || v > vols.count {
                    return Err(bad(format!(
                        "{} is placed in volume {v} after volume {last}",
                        m.path
                    )));
                }
                last = v;
            }
        }
        if last != vols.count {
            return Err(bad(format!(
                "{} volumes declared, members fill {last}",
                vols.count
            )));
        }
        Ok(())
    }
}

/// The files named on a command line: a directory stands for the bundle
/// files (`*.tar.zst`) in it, sorted (their order does not matter).
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, BundleError> {
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let io_err = |source| BundleError::Io {
            path: p.display().to_string(),
            source,
        };
        let mut found: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(io_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file() && f.to_string_lossy().ends_with(".tar.zst"))
            .collect();
        if found.is_empty() {
            return Err(BundleError::NotAFile {
                path: p.display().to_string(),
            });
        }
        found.sort();
        out.extend(found);
    }
    if out.is_empty() {
        return Err(BundleError::BadIndex {
            bundle: "(no files)".into(),
            detail: "no bundle file given".into(),
        });
    }
    Ok(out)
}

// ------------------------------------------------------------ the plan

fn frame_bound(len: u64) -> u64 {
    zstd::zstd_safe::compress_bound(len as usize) as u64 + FRAME_SLACK
}

/// Worst-case compressed size and frame count of one tar entry: its header
/// frame, then its padded data cut into frames of `frame_max`.
fn entry_bound(size: u64, frame_max: u64) -> (u64, u64) {
    let data = padded(size);
    let full = data / frame_max;
    let rest = data % frame_max;
    let mut bytes = frame_bound(512) + full * frame_bound(frame_max);
    let mut frames = 1 + full;
    if rest > 0 {
        bytes += frame_bound(rest);
        frames += 1;
    }
    (bytes, frames)
}

/// The largest data size whose entry fits in `room` bytes (with `frames`
/// seek-table entries already counted against it).
fn largest_fitting(room: u64, frame_max: u64) -> u64 {
    let fits = |s: u64| {
        let (b, f) = entry_bound(s, frame_max);
        b + 8 * f <= room
    };
    let (mut lo, mut hi) = (0u64, room);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

#[derive(Debug, thiserror::Error)]
#[error("volume size {size} is too small: {detail}")]
pub struct PlanError {
    pub size: u64,
    pub detail: String,
}

/// Place every member into volumes of at most `max_size` bytes, given a
/// bound on the bundle index's size. Members stay in tar order; a member
/// that does not fit where the previous one ended starts the next volume,
/// and one larger than a volume is cut into chunks that fill each volume.
pub fn plan(
    members: &mut [Member],
    index_len: u64,
    max_size: u64,
    frame_max: u64,
) -> Result<u32, PlanError> {
    let label_len = VolumeLabel::new(Digest::of(b""), 9999, 9999)
        .to_bytes()
        .len() as u64;
    let (ib, if_) = entry_bound(index_len, frame_max);
    let (lb, lf) = entry_bound(label_len, frame_max);
    // End blocks, the seek table's frame header and footer.
    let fixed = ib + lb + frame_bound(1024) + 8 * (if_ + lf + 1) + 17;
    let capacity = max_size.checked_sub(fixed).ok_or_else(|| PlanError {
        size: max_size,
        detail: format!("the bundle index alone needs {fixed} bytes per volume"),
    })?;
    let (mut volume, mut used) = (1u32, 0u64);
    for m in members.iter_mut() {
        m.volume = None;
        m.chunks.clear();
        let (b, f) = entry_bound(m.size, frame_max);
        let cost = b + 8 * f;
        if used + cost <= capacity {
            m.volume = Some(volume);
            used += cost;
            continue;
        }
        if cost <= capacity {
            volume += 1;
            m.volume = Some(volume);
            used = cost;
            continue;
        }
        // Larger than a volume: cut it, filling this volume's tail first.
        let mut left = m.size;
        while left > 0 {
            let mut room = largest_fitting(capacity - used, frame_max);
            if room < MIN_CHUNK.min(left) {
                volume += 1;
                used = 0;
                room = largest_fitting(capacity, frame_max);
                if room == 0 {
                    return Err(PlanError {
                        size: max_size,
                        detail: "no room for any data".into(),
                    });
                }
            }
            let size = room.min(left);
            let (b, f) = entry_bound(size, frame_max);
            m.chunks.push(Chunk { volume, size });
            used += b + 8 * f;
            left -= size;
        }
        if m.chunks.len() == 1 {
            // It fitted in the end (a fresh volume): keep it whole.
            m.volume = m.chunks.pop().map(|c| c.volume);
        }
    }
    Ok(volume)
}

/// Plan the index's members into volumes: repeat until the index (which
/// lists the plan) is no larger than the size the plan assumed.
pub fn plan_index(index: &mut BundleIndex, max_size: u64, frame_max: u64) -> Result<(), PlanError> {
    let mut assumed = index.to_bytes().len() as u64 + 64 * index.members.len() as u64 + 4096;
    for _ in 0..8 {
        let count = plan(&mut index.members, assumed, max_size, frame_max)?;
        index.volumes = Some(Volumes { count, max_size });
        let actual = index.to_bytes().len() as u64;
        if actual <= assumed {
            return Ok(());
        }
        assumed = actual + 4096;
    }
    Err(PlanError {
        size: max_size,
        detail: "the volume plan does not settle".into(),
    })
}

/// `mirror.tar.zst` → `mirror.001.tar.zst` (the number goes before the
/// `.tar.zst`, or before the last extension, so that each volume still
/// looks like what it is).
pub fn volume_path(base: &Path, v: u32, count: u32) -> PathBuf {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let width = count.to_string().len().max(3);
    let (stem, ext) = match name.strip_suffix(".tar.zst") {
        Some(stem) => (stem.to_string(), ".tar.zst".to_string()),
        None => match name.rfind('.') {
            Some(i) if i > 0 => (name[..i].to_string(), name[i..].to_string()),
            _ => (name.clone(), String::new()),
        },
    };
    base.with_file_name(format!("{stem}.{v:0width$}{ext}"))
}

/// True when `name` is the file name of one of `base`'s volumes
/// (`mirror.tar.zst` → `mirror.007.tar.zst`).
pub fn is_volume_name(base: &Path, name: &str) -> bool {
    let probe = volume_path(base, 0, 1);
    let probe = probe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The probe is STEM.000EXT: what surrounds the number is fixed.
    let Some(at) = probe.find(".000") else {
        return false;
    };
    let (stem, ext) = (&probe[..at + 1], &probe[at + 4..]);
    name.strip_prefix(stem)
        .and_then(|r| r.strip_suffix(ext))
        .is_some_and(|digits| digits.len() >= 3 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// `--volume-size`: bytes, `K/M/G/T` (powers of 1000, with or without `B`),
/// `KiB/MiB/GiB/TiB`, or a preset: `dvd` (4.7 GB), `dvd-dl` (8.5 GB),
/// `fat32` (4 GiB − 1), `bd25`, `bd50`, `cd` (700 MiB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let preset = match t.to_ascii_lowercase().as_str() {
        "dvd" => Some(4_700_000_000),
        "dvd-dl" => Some(8_500_000_000),
        "fat32" => Some((4u64 << 30) - 1),
        "bd25" => Some(25_000_000_000),
        "bd50" => Some(50_000_000_000),
        "cd" => Some(700 << 20),
        _ => None,
    };
    if let Some(p) = preset {
        return Ok(p);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use bytes, K, M, G, KiB, MiB, GiB, or dvd, fat32, bd25)")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (for example 4.7GB, 700MiB, dvd)"))?;
    let bytes = value * factor as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::MemberKind;

    fn member(n: u8, size: u64) -> Member {
        let d = Digest::of(&[n]);
        Member {
            path: d.layout_path(),
            digest: d,
            size,
            kind: MemberKind::Layer,
            media_type: None,
            volume: None,
            chunks: Vec::new(),
        }
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(parse_size("4.7GB").unwrap(), 4_700_000_000);
        assert_eq!(parse_size("4G").unwrap(), 4_000_000_000);
        assert_eq!(parse_size("700MiB").unwrap(), 700 << 20);
        assert_eq!(parse_size("fat32").unwrap(), (4 << 30) - 1);
        assert_eq!(parse_size("12345").unwrap(), 12345);
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(
            volume_path(Path::new("/x/mirror.tar.zst"), 2, 14),
            Path::new("/x/mirror.002.tar.zst")
        );
        assert_eq!(
            volume_path(Path::new("m.bin"), 12, 1200),
            Path::new("m.0012.bin")
        );
        let base = Path::new("/x/mirror.tar.zst");
        assert!(is_volume_name(base, "mirror.002.tar.zst"));
        assert!(is_volume_name(base, "mirror.1234.tar.zst"));
        assert!(!is_volume_name(base, "mirror.tar.zst"));
        assert!(!is_volume_name(base, "other.002.tar.zst"));
        assert!(!is_volume_name(base, "mirror.0a2.tar.zst"));
    }

    #[test]
    fn plan_keeps_order_and_cuts_only_what_cannot_fit() {
        let fm = 4 << 20;
        let mut ms = vec![
            member(1, 300_000),
            member(2, 300_000),
            member(3, 2_500_000),
            member(4, 10),
        ];
        let count = plan(&mut ms, 10_000, 1_000_000, fm).unwrap();
        assert_eq!(ms[0].volume, Some(1));
        assert_eq!(ms[1].volume, Some(1));
        // 2.5 MB in 1 MB volumes: cut, the first chunk filling volume 1's tail.
        assert!(ms[2].volume.is_none());
        assert_eq!(ms[2].chunks[0].volume, 1);
        assert_eq!(ms[2].chunks.iter().map(|c| c.size).sum::<u64>(), 2_500_000);
        assert_eq!(ms[3].volume, Some(count));
        let mut index = BundleIndex::for_tests(ms);
        index.volumes = Some(Volumes {
            count,
            max_size: 1_000_000,
        });
        index.check_volumes("t").unwrap();
        // Every volume's worst case is within the size asked for.
        for v in 1..=count {
            let total: u64 = index
                .volume_entries(v)
                .iter()
                .map(|e| {
                    let (b, f) = entry_bound(e.size, fm);
                    b + 8 * f
                })
                .sum();
            assert!(total <= 1_000_000, "volume {v}: {total}");
        }
        assert!(plan(&mut index.members, 10_000, 2_000, fm).is_err());
    }
}
