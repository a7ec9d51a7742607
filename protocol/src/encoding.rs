//! Canonical wire encoding: one format-version byte, then postcard.
//!
//! Every decoder takes a size limit and refuses input beyond it before
//! parsing, so a peer cannot make us allocate without bound; malformed input
//! is an error, never a panic.

use serde::{de::DeserializeOwned, Serialize};

/// The format version written in front of every encoded value.
pub const FORMAT_VERSION: u8 = 1;

/// Default limit for metadata documents (manifests, trust roots, frames).
pub const DEFAULT_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input was empty.
    #[error("empty input")]
    Empty,
    /// The input is larger than the caller allows.
    #[error("input of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    /// The leading format byte names a version this build cannot read.
    #[error("unsupported format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    /// The bytes do not decode as the expected type.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// Bytes were left over after a complete value.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
}

/// Encodes `value` canonically: `[FORMAT_VERSION] ++ postcard(value)`.
///
/// Postcard has one encoding per value for the types used here (no maps with
/// unordered keys: we use `BTreeMap`), so equal values give equal bytes and
/// signatures over the bytes are stable.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // Serialising into a Vec cannot fail for our types (no maps with
    // non-string keys, no unsupported serde features); fall back to an
    // empty body rather than panic, which any decoder then refuses.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(_) => vec![FORMAT_VERSION],
    }
}

/// Encodes `value` as `[version] ++ postcard(value)`, for a type whose newer
/// layouts carry their own version byte (a manifest that fixes inputs).
pub fn encode_version<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    match postcard::to_extend(value, vec![version]) {
        Ok(v) => v,
        Err(_) => vec![version],
    }
}

/// The version byte of `bytes`, after the size check.
pub fn peek_version(bytes: &[u8], limit: usize) -> Result<u8, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    bytes.first().copied().ok_or(DecodeError::Empty)
}

/// [`decode`] for a value written by [`encode_version`] with `version`.
pub fn decode_version<T: DeserializeOwned>(
    bytes: &[u8],
    version: u8,
    limit: usize,
    what: &'static str,
) -> Result<T, DecodeError> {
    let found = peek_version(bytes, limit)?;
    if found != version {
        return Err(DecodeError::UnsupportedVersion(found));
    }
    decode_body(&bytes[1..], what)
}

fn decode_body<T: DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::Malformed {
            what,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Decodes a value written by [`encode`], refusing anything over `limit`
/// bytes, with another version byte, malformed, or with trailing bytes.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    what: &'static str,
) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    decode_body(body, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: Vec<String>,
    }

    #[test]
    fn refuses_bad_input() {
        let good = encode(&Sample {
            a: 7,
            b: vec!["x".into()],
        });
        assert!(decode::<Sample>(&good, 1024, "sample").is_ok());
        assert_eq!(
            decode::<Sample>(&[], 1024, "sample"),
            Err(DecodeError::Empty)
        );
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        assert_eq!(
            decode::<Sample>(&wrong_version, 1024, "sample"),
            Err(DecodeError::UnsupportedVersion(9))
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            decode::<Sample>(&trailing, 1024, "sample"),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(matches!(
            decode::<Sample>(&good, 2, "sample"),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decode::<Sample>(&good[..good.len() - 1], 1024, "sample"),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A vector claiming u64::MAX elements in a 12-byte message.
        let mut bytes = vec![FORMAT_VERSION, 1];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode::<Sample>(&bytes, 1024, "sample").is_err());
    }
}
