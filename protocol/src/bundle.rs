//! The `.ferry` bundle file: signed manifest first, artifacts after, so a
//! reader verifies the metadata before it trusts a single artifact byte and
//! never needs the whole file in memory.
//!
//! Layout:
//! ```text
//! magic      8 bytes  "FERRYBN\x01"
//! header_len u32 LE   length of the encoded header
//! header     encoding::encode(SignedManifest { manifest bytes, signatures })
//! artifacts  each artifact's bytes, in manifest order, nothing after
//! ```

use crate::encoding::{self, DecodeError};
use crate::keys::{Digest, Hasher};
use crate::manifest::{ArtifactRef, SignedManifest};
use crate::trust::TrustRoot;
use crate::verify::{verify_manifest, VerifiedManifest, VerifyError};
use crate::{UnixTime, Version};
use std::io::Read;

pub const MAGIC: [u8; 8] = *b"FERRYBN\x01";
/// Largest header any reader accepts (manifest with baseline and test
/// vectors, plus signatures).
pub const HEADER_LIMIT: usize = 16 * 1024 * 1024;
/// Read size when streaming artifacts.
const CHUNK: usize = 64 * 1024;

impl SignedManifest {
    /// The preamble of a bundle file: magic, length, encoded header.
    pub fn to_preamble(&self) -> Vec<u8> {
        let header = encoding::encode(self);
        let mut out = Vec::with_capacity(12 + header.len());
        out.extend_from_slice(&MAGIC);
        // Headers are bounded far below u32::MAX by HEADER_LIMIT.
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out
    }
}

/// A bundle whose manifest and every artifact were verified.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedBundle {
    pub manifest: VerifiedManifest,
    pub header: SignedManifest,
}

/// Checks one artifact's bytes as they stream in: never more than declared,
/// and the digest at the end.
pub struct ArtifactVerifier {
    name: String,
    expected_len: u64,
    expected: Digest,
    seen: u64,
    hasher: Hasher,
}

impl ArtifactVerifier {
    pub fn new(artifact: &ArtifactRef) -> Self {
        Self::resume(artifact, 0, Hasher::new())
    }

    /// Continues from `seen` bytes already hashed into `hasher`.
    pub fn resume(artifact: &ArtifactRef, seen: u64, hasher: Hasher) -> Self {
        Self {
            name: artifact.name.clone(),
            expected_len: artifact.len,
            expected: artifact.sha256,
            seen,
            hasher,
        }
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.expected_len.saturating_sub(self.seen)
    }

    /// Feeds bytes; refuses the first byte past the declared length.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), VerifyError> {
        let after = self.seen + bytes.len() as u64;
        if after > self.expected_len {
            return Err(VerifyError::LengthMismatch {
                name: self.name.clone(),
                expected: self.expected_len,
                actual: after,
            });
        }
        self.seen = after;
        self.hasher.update(bytes);
        Ok(())
    }

    pub fn finish(self) -> Result<(), VerifyError> {
        if self.seen != self.expected_len {
            return Err(VerifyError::LengthMismatch {
                name: self.name,
                expected: self.expected_len,
                actual: self.seen,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(VerifyError::DigestMismatch {
                name: self.name,
                expected: self.expected,
                actual,
            });
        }
        Ok(())
    }
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), VerifyError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => VerifyError::Truncated(format!("ends inside {what}")),
        _ => VerifyError::Io(e.to_string()),
    })
}

/// Reads the preamble (magic, header) from `r`, leaving it at the first
/// artifact byte. Nothing is verified yet.
pub fn read_header(r: &mut impl Read) -> Result<SignedManifest, VerifyError> {
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        match r.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(VerifyError::Io(e.to_string())),
        }
    }
    // A short file that is not a prefix of the magic is simply not a bundle.
    if magic[..got] != MAGIC[..got] {
        return Err(VerifyError::BadMagic);
    }
    if got < magic.len() {
        return Err(VerifyError::Truncated("ends inside the magic bytes".into()));
    }
    let mut len = [0u8; 4];
    read_exact_or(r, &mut len, "the header length")?;
    let len = u32::from_le_bytes(len) as usize;
    if len > HEADER_LIMIT {
        return Err(VerifyError::Header(DecodeError::TooLarge {
            len,
            limit: HEADER_LIMIT,
        }));
    }
    let mut header = vec![0u8; len];
    read_exact_or(r, &mut header, "the header")?;
    encoding::decode(&header, HEADER_LIMIT, "bundle header").map_err(VerifyError::Header)
}

/// Reads and verifies a whole bundle from `r`: header first, then each
/// artifact streamed through `sink` (which may write it to disk), then a
/// check that nothing follows.
///
/// `sink` sees artifact bytes before their digest is known good; a caller
/// writing them must treat the output as untrusted until this returns `Ok`
/// (write to a temporary name, rename after).
pub fn read_verified(
    r: &mut impl Read,
    trust: &TrustRoot,
    now: UnixTime,
    highest_seen: Option<Version>,
    mut sink: impl FnMut(&ArtifactRef, &[u8]) -> std::io::Result<()>,
) -> Result<VerifiedBundle, VerifyError> {
    let header = read_header(r)?;
    let verified = verify_manifest(trust, &header, now, highest_seen)?;
    let mut buf = vec![0u8; CHUNK];
    for artifact in &verified.manifest().artifacts {
        let mut check = ArtifactVerifier::new(artifact);
        while check.remaining() > 0 {
            let want = check.remaining().min(CHUNK as u64) as usize;
            let n = match r.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VerifyError::Io(e.to_string())),
            };
            check.update(&buf[..n])?;
            sink(artifact, &buf[..n]).map_err(|e| VerifyError::Io(e.to_string()))?;
        }
        check.finish()?;
    }
    // Endless-data defence: exactly the declared bytes, then end of file.
    let mut one = [0u8; 1];
    loop {
        match r.read(&mut one) {
            Ok(0) => break,
            Ok(_) => return Err(VerifyError::TrailingData),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VerifyError::Io(e.to_string())),
        }
    }
    Ok(VerifiedBundle {
        manifest: verified,
        header,
    })
}

/// Verifies an in-memory bundle: `verify(trust, bundle, now, highest_seen)`.
pub fn verify(
    trust: &TrustRoot,
    bundle: &[u8],
    now: UnixTime,
    highest_seen: Option<Version>,
) -> Result<VerifiedBundle, VerifyError> {
    read_verified(&mut &bundle[..], trust, now, highest_seen, |_, _| Ok(()))
}

/// Writes a complete bundle: preamble then artifacts. `artifacts` must be in
/// manifest order; their lengths are not re-checked here (the builder
/// computed them).
pub fn write(
    out: &mut impl std::io::Write,
    header: &SignedManifest,
    artifacts: &mut [&mut dyn Read],
) -> std::io::Result<()> {
    out.write_all(&header.to_preamble())?;
    for a in artifacts.iter_mut() {
        std::io::copy(a, out)?;
    }
    Ok(())
}
