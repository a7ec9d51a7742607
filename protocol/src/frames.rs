//! Frames of the agent ⇄ control-plane protocol over QUIC.
//!
//! Each frame is `encoding::encode`d and sent length-prefixed (u32 LE) on a
//! QUIC stream; [`FrameReader`] reassembles frames from arbitrary byte
//! pieces without doing any I/O.
//!
//! Streams:
//! - enrollment: a connection *without* a client certificate opens one
//!   bidirectional stream, sends [`AgentFrame::Enroll`] and reads one
//!   [`ServerFrame::Enrolled`] or [`ServerFrame::Refused`]; nothing else is
//!   served to it.
//! - control: an enrolled device (mutual TLS) opens one bidirectional
//!   stream, sends `Hello`, then `Report`/`Progress`/`Heartbeat`; the server
//!   pushes `DesiredState` and `Heartbeat` on it.
//! - fetch: one bidirectional stream per download: `Fetch { digest, offset }`
//!   answered by `FetchStart`, then `Chunk`s up to the end, or `FetchRefused`.
//!   QUIC's per-stream flow control paces the chunks.
//!
//! Trust roots: after `Enrolled` the enrollment stream carries one
//! [`ServerFrame::TrustRoots`] with every version of the tenant's root, so a
//! device pinned to an older one can follow the chain to the current one.
//! On the control stream the agent says which root it holds
//! ([`AgentFrame::TrustRoot`]) and the control plane answers with the
//! successors it lacks; the agent accepts them only as a valid successor
//! chain of the root it holds. New variants sit at the end of each enum, and
//! the control plane sends `TrustRoots` on the control stream only to agents
//! that sent `TrustRoot`, so older agents never see it.

use crate::desired::SignedDesiredState;
use crate::encoding::{self, DecodeError};
use crate::keys::{Digest, PublicKey};
use crate::model::{ModelName, Version};
use crate::trust::SignedTrustRoot;
use serde::{Deserialize, Serialize};

/// Protocol revision spoken in `Hello`; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame either side accepts.
pub const FRAME_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstalledBundle {
    pub model: ModelName,
    pub version: Version,
    pub manifest_digest: Digest,
    pub active: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActivationOutcome {
    Activated,
    Refused { code: String, reason: String },
    RolledBack { to: Version, reason: String },
}

/// Frames the agent sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentFrame {
    Hello {
        protocol: u16,
        agent_version: String,
        target: String,
        target_triple: String,
        runtimes: Vec<String>,
        installed: Vec<InstalledBundle>,
        last_sequence: Option<u64>,
    },
    /// Ask for `digest` starting at byte `offset` (resume).
    Fetch {
        digest: Digest,
        offset: u64,
    },
    Report {
        model: ModelName,
        version: Version,
        outcome: ActivationOutcome,
    },
    Heartbeat {
        at: u64,
    },
    /// Enrollment over a connection without a client certificate: the
    /// device's freshly generated ed25519 public key (32 raw bytes) and the
    /// operator's one-time token.
    Enroll {
        protocol: u16,
        token: String,
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
        hostname: String,
    },
    /// Download progress for the operator's view (`received` of `total`).
    Progress {
        manifest_digest: Digest,
        received: u64,
        total: u64,
    },
    /// A desired-state document the agent refused (replayed, expired, bad
    /// signature), so the control plane can audit it.
    DesiredStateRefused {
        sequence: Option<u64>,
        code: String,
        reason: String,
    },
    /// The trust root the device holds now: sent after `Hello` and after
    /// every change.
    TrustRoot {
        version: u64,
        expires_at: u64,
    },
    /// Trust roots the agent refused (not a valid successor chain of the
    /// one it holds), so the control plane can audit it.
    TrustRootRefused {
        code: String,
        reason: String,
    },
}

/// Frames the control plane sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    DesiredState(SignedDesiredState),
    /// Bytes of `digest` at `offset`.
    Chunk {
        digest: Digest,
        offset: u64,
        // As bytes, not a sequence of u8: the same postcard wire format
        // (length, then the bytes), copied in one go instead of byte by byte.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    FetchRefused {
        digest: Digest,
        reason: String,
    },
    Heartbeat {
        at: u64,
    },
    /// Answer to `Enroll`: the certificate for the device key (DER, signed by
    /// the control plane's device CA), the CA certificate, the tenant's
    /// signed trust root and the control plane's online public key.
    Enrolled {
        device_id: String,
        tenant: String,
        #[serde(with = "serde_bytes")]
        certificate: Vec<u8>,
        #[serde(with = "serde_bytes")]
        ca_certificate: Vec<u8>,
        #[serde(with = "serde_bytes")]
        trust_root: Vec<u8>,
        online_key: PublicKey,
        /// The MQTT broker the device sends telemetry to
        /// (`mqtt://host:port` or `mqtts://…`, never with credentials), if
        /// the control plane has one.
        mqtt_url: Option<String>,
    },
    /// Answer to `Fetch` before the chunks: the full length of the object.
    FetchStart {
        digest: Digest,
        offset: u64,
        total: u64,
    },
    /// A request the control plane refuses (enrollment, protocol version).
    Refused {
        code: String,
        reason: String,
    },
    /// Signed trust roots of the device's tenant, oldest first: at
    /// enrollment every version, on the control stream the versions after
    /// the one the device holds.
    TrustRoots {
        chain: Vec<SignedTrustRoot>,
    },
}

impl AgentFrame {
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        encoding::decode(bytes, FRAME_LIMIT, "agent frame")
    }
}

impl ServerFrame {
    pub fn encode(&self) -> Vec<u8> {
        encoding::encode(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        encoding::decode(bytes, FRAME_LIMIT, "server frame")
    }
}

/// The wire bytes of `ServerFrame::Chunk { digest, offset, data }` that
/// come before its `data_len` data bytes: `chunk_head(..) ++ data` equals
/// `length_prefixed(&chunk.encode())`. A server sends a chunk's bytes from
/// the buffer they already lie in instead of copying them into a frame.
pub fn chunk_head(digest: Digest, offset: u64, data_len: usize) -> Vec<u8> {
    let mut body = ServerFrame::Chunk {
        digest,
        offset,
        data: Vec::new(),
    }
    .encode();
    // Empty data encodes last, as its length: one varint byte 0. Postcard
    // writes a byte string's length as the varint of a u64.
    body.pop();
    let body = postcard::to_extend(&(data_len as u64), body).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    // Chunks are bounded by FRAME_LIMIT, far below u32::MAX.
    out.extend_from_slice(&((body.len() + data_len) as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// `frame` preceded by its length (u32 LE).
pub fn length_prefixed(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + frame.len());
    // Frames are bounded by FRAME_LIMIT, far below u32::MAX.
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(frame);
    out
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
}

/// Reassembles length-prefixed frames from byte pieces as they arrive.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf` (consumed frames are dropped in
    /// bulk, not moved after every frame).
    start: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame's bytes, if one has arrived. A declared
    /// length over [`FRAME_LIMIT`] is an error (the stream must be dropped).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let b = &self.buf[self.start..];
        if b.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len > FRAME_LIMIT {
            return Err(FrameError::TooLarge {
                len,
                limit: FRAME_LIMIT,
            });
        }
        if b.len() < 4 + len {
            return Ok(None);
        }
        let frame = b[4..4 + len].to_vec();
        self.start += 4 + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte fields keep postcard's sequence encoding (a varint length, then
    /// the bytes), so agents and servers of either encoding interoperate.
    #[test]
    fn byte_fields_keep_the_sequence_wire_format() {
        #[derive(Serialize)]
        enum OldServerFrame {
            _DesiredState(SignedDesiredState),
            Chunk {
                digest: Digest,
                offset: u64,
                data: Vec<u8>,
            },
        }
        let digest = crate::keys::sha256(b"x");
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let old = encoding::encode(&OldServerFrame::Chunk {
            digest,
            offset: 5,
            data: data.clone(),
        });
        let new = ServerFrame::Chunk {
            digest,
            offset: 5,
            data,
        };
        assert_eq!(new.encode(), old);
        assert_eq!(ServerFrame::decode(&old).unwrap(), new);
    }

    #[test]
    fn a_chunk_head_and_its_data_are_the_whole_frame() {
        let digest = crate::keys::sha256(b"x");
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 65_536, 1 << 20] {
            for offset in [0u64, 1, 300, u64::MAX] {
                let data: Vec<u8> = (0..=255u8).cycle().take(len).collect();
                let mut wire = chunk_head(digest, offset, len);
                wire.extend_from_slice(&data);
                let whole = ServerFrame::Chunk {
                    digest,
                    offset,
                    data,
                };
                assert_eq!(wire, length_prefixed(&whole.encode()), "len {len}");
            }
        }
    }

    #[test]
    fn frames_round_trip_through_the_reader_in_any_split() {
        let frames = [
            AgentFrame::Fetch {
                digest: crate::keys::sha256(b"x"),
                offset: 7,
            },
            AgentFrame::Heartbeat { at: 9 },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(length_prefixed(&f.encode()));
        }
        for split in 0..wire.len() {
            let mut r = FrameReader::new();
            r.push(&wire[..split]);
            let mut got = Vec::new();
            while let Some(b) = r.next_frame().unwrap() {
                got.push(AgentFrame::decode(&b).unwrap());
            }
            r.push(&wire[split..]);
            while let Some(b) = r.next_frame().unwrap() {
                got.push(AgentFrame::decode(&b).unwrap());
            }
            assert_eq!(got, frames);
        }
    }

    #[test]
    fn trust_root_frames_round_trip() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let root = crate::trust::TrustRoot {
            tenant: "acme".into(),
            version: 2,
            expires_at: 99,
            threshold: 1,
            root_keys: vec![PublicKey::from_signing_key(&k)],
            publishers: vec![],
            publisher_threshold: 1,
            revoked: vec![],
        };
        let f = ServerFrame::TrustRoots {
            chain: vec![SignedTrustRoot::sign(&root, &[&k])],
        };
        assert_eq!(ServerFrame::decode(&f.encode()).unwrap(), f);
        let a = AgentFrame::TrustRoot {
            version: 2,
            expires_at: 99,
        };
        assert_eq!(AgentFrame::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn oversized_length_is_refused_not_buffered() {
        let mut r = FrameReader::new();
        r.push(&u32::MAX.to_le_bytes());
        assert!(matches!(r.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn garbage_frames_decode_to_errors() {
        assert!(ServerFrame::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(AgentFrame::decode(&[]).is_err());
    }
}
