//! Public keys, key ids, digests and domain-separated ed25519 signatures.
//!
//! Byte arrays serialise as bytes in postcard and as lowercase hex in JSON, so
//! `ferry bundle inspect` prints readable documents while the wire stays
//! compact.

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use std::fmt;

macro_rules! byte_array {
    ($(#[$m:meta])* $name:ident, $len:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            pub fn from_hex(s: &str) -> Result<Self, hex::FromHexError> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out)?;
                Ok(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    // Fixed-size tuple: no length prefix in postcard.
                    serde::Serialize::serialize(&self.0, s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    Self::from_hex(&s).map_err(serde::de::Error::custom)
                } else {
                    let bytes = <[u8; $len]>::deserialize(d)?;
                    Ok(Self(bytes))
                }
            }
        }
    };
}

byte_array!(
    /// A SHA-256 digest: the identity of an artifact or a manifest.
    Digest,
    32
);
byte_array!(
    /// An ed25519 public key.
    PublicKey,
    32
);
byte_array!(
    /// The first 8 bytes of SHA-256 over a public key: short, stable, and
    /// what signatures name.
    KeyId,
    8
);

/// serde has no impl for `[u8; 64]`, so signatures carry their bytes as two
/// halves internally and present one hex string in JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBytes(pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureBytes({})", hex::encode(self.0))
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            let mut a = [0u8; 32];
            let mut b = [0u8; 32];
            a.copy_from_slice(&self.0[..32]);
            b.copy_from_slice(&self.0[32..]);
            (a, b).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = [0u8; 64];
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        } else {
            let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
            out[..32].copy_from_slice(&a);
            out[32..].copy_from_slice(&b);
        }
        Ok(Self(out))
    }
}

/// A signature together with the id of the key that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub key_id: KeyId,
    pub sig: SignatureBytes,
}

/// What a signature is over. The domain string is signed in front of the
/// message, so a signature made for one kind of document can never be
/// replayed as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    Manifest,
    TrustRoot,
    DesiredState,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::Manifest => b"ferry/v1/manifest\0",
            Domain::TrustRoot => b"ferry/v1/trust-root\0",
            Domain::DesiredState => b"ferry/v1/desired-state\0",
        }
    }
}

fn signed_message(domain: Domain, msg: &[u8]) -> Vec<u8> {
    let tag = domain.tag();
    let mut m = Vec::with_capacity(tag.len() + msg.len());
    m.extend_from_slice(tag);
    m.extend_from_slice(msg);
    m
}

impl PublicKey {
    pub fn id(&self) -> KeyId {
        let h = Sha256::digest(self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[..8]);
        KeyId(id)
    }

    pub fn from_signing_key(key: &SigningKey) -> Self {
        Self(key.verifying_key().to_bytes())
    }

    /// Checks `sig` over `msg` in `domain`. A key that is not a valid curve
    /// point verifies nothing.
    pub fn verify(&self, domain: Domain, msg: &[u8], sig: &Signature) -> bool {
        let Ok(vk) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let s = ed25519_dalek::Signature::from_bytes(&sig.sig.0);
        vk.verify(&signed_message(domain, msg), &s).is_ok()
    }
}

/// Signs `msg` in `domain` with `key`.
pub fn sign(domain: Domain, msg: &[u8], key: &SigningKey) -> Signature {
    let sig = key.sign(&signed_message(domain, msg));
    Signature {
        key_id: PublicKey::from_signing_key(key).id(),
        sig: SignatureBytes(sig.to_bytes()),
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
}

/// Incremental SHA-256 for streamed artifacts.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Self {
        Self(Sha256::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn domain_separation() {
        let k = key(1);
        let pk = PublicKey::from_signing_key(&k);
        let sig = sign(Domain::Manifest, b"hello", &k);
        assert!(pk.verify(Domain::Manifest, b"hello", &sig));
        assert!(!pk.verify(Domain::TrustRoot, b"hello", &sig));
        assert!(!pk.verify(Domain::Manifest, b"hellp", &sig));
        assert!(!PublicKey::from_signing_key(&key(2)).verify(Domain::Manifest, b"hello", &sig));
    }

    #[test]
    fn hex_in_json_bytes_in_postcard() {
        let d = sha256(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", d.to_hex()));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let bin = postcard::to_allocvec(&d).unwrap();
        assert_eq!(bin.len(), 32);
        let sig = sign(Domain::Manifest, b"m", &key(3));
        let bin = postcard::to_allocvec(&sig).unwrap();
        assert_eq!(bin.len(), 8 + 64);
        assert_eq!(postcard::from_bytes::<Signature>(&bin).unwrap(), sig);
        let json = serde_json::to_string(&sig).unwrap();
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), sig);
    }
}
