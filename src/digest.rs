//! sha256 digests: parsing, formatting and hashing while data flows.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// A `sha256:<64 hex>` content digest. Only sha256 is accepted: it is what
/// every registry and cosign use, and refusing the rest keeps blob paths safe.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
pub struct DigestParseError(pub String);

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The cosign / referrers-fallback tag stem: `sha256-<hex>`.
    pub fn tag_stem(&self) -> String {
        format!("sha256-{}", self.hex())
    }
    pub fn layout_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }
    pub fn from_hex(hex_str: &str) -> Result<Digest, DigestParseError> {
        let valid = hex_str.len() == 64
            && hex_str
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestParseError(hex_str.to_string()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).map_err(|_| DigestParseError(hex_str.into()))?;
        Ok(Digest(out))
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(h) => Digest::from_hex(h).map_err(|_| DigestParseError(s.to_string())),
            None => Err(DigestParseError(s.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}
impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 with a byte count.
#[derive(Default, Clone)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(self) -> Digest {
        Digest(self.inner.finalize().into())
    }
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }
    pub fn finish(self) -> (Digest, u64) {
        let len = self.hasher.len();
        (self.hasher.finish(), len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }
    pub fn finish(self) -> (W, Digest, u64) {
        let len = self.hasher.len();
        (self.inner, self.hasher.finish(), len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `size` bytes and, at their end, fails instead of reporting
/// EOF unless they hash to `expected`. A consumer that commits only after
/// seeing EOF therefore never commits bad bytes.
pub struct VerifyingReader<R> {
    inner: io::Take<R>,
    hasher: Hasher,
    expected: Digest,
    size: u64,
    what: String,
    verified: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, size: u64, what: String) -> Self {
        VerifyingReader {
            inner: inner.take(size),
            hasher: Hasher::new(),
            expected,
            size,
            what,
            verified: false,
        }
    }
    /// Read what is left (if anything) so that the check runs.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }
}

/// Raised when bytes do not hash to the digest (or size) they claim. It
/// travels inside an `io::Error` and is found again in the error chain, so
/// that a corrupt blob is reported as such and never retried as a network
/// failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IntegrityError(pub String);

/// The error a [`VerifyingReader`] raises.
pub fn integrity_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, IntegrityError(msg))
}

/// True when `e` (or what it wraps) is an [`IntegrityError`].
pub fn is_integrity_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<IntegrityError>())
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verified {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            if self.hasher.len() != self.size {
                return Err(integrity_error(format!(
                    "{} is truncated: {} of {} bytes",
                    self.what,
                    self.hasher.len(),
                    self.size
                )));
            }
            let actual = std::mem::take(&mut self.hasher).finish();
            if actual != self.expected {
                return Err(integrity_error(format!(
                    "{} does not match its digest: expected {}, got {actual}",
                    self.what, self.expected
                )));
            }
            self.verified = true;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("sha256:E3B0".parse::<Digest>().is_err());
        assert!("sha512:00".parse::<Digest>().is_err());
        assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
    }
}
