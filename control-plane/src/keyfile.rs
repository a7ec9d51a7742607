//! Key and trust-root files on the operator's machine.
//!
//! Private keys are PKCS#8 PEM written with mode 0600 and never overwritten;
//! public keys are SPKI PEM, so `openssl pkey -in NAME.key` reads them too.

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use ferry_protocol::trust::{SignedTrustRoot, TrustError, TrustRoot};
use ferry_protocol::PublicKey;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{path} is not an ed25519 private key in PKCS#8 PEM: {reason}")]
    BadPrivateKey { path: PathBuf, reason: String },
    #[error("{path} is not an ed25519 public key in PEM: {reason}")]
    BadPublicKey { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Trust { path: PathBuf, source: TrustError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to a new file at `path` with `mode`; fails if it exists.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            KeyFileError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Generates a key pair into `dir/NAME.key` (0600) and `dir/NAME.pub`.
pub fn generate(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf, PublicKey), KeyFileError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| KeyFileError::BadPrivateKey {
            path: secret.clone(),
            reason: e.to_string(),
        })?;
    let pub_pem = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| KeyFileError::BadPublicKey {
            path: public.clone(),
            reason: e.to_string(),
        })?;
    write_new(&secret, pem.as_bytes(), 0o600)?;
    write_new(&public, pub_pem.as_bytes(), 0o644)?;
    Ok((secret, public, PublicKey::from_signing_key(&key)))
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let pem = fs::read_to_string(path).map_err(io(path))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyFileError::BadPrivateKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a public key file; a private key file is accepted too (its public
/// half is used), so operators can pass either.
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    let pem = fs::read_to_string(path).map_err(io(path))?;
    if let Ok(vk) = VerifyingKey::from_public_key_pem(&pem) {
        return Ok(PublicKey(vk.to_bytes()));
    }
    SigningKey::from_pkcs8_pem(&pem)
        .map(|k| PublicKey::from_signing_key(&k))
        .map_err(|e| KeyFileError::BadPublicKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

pub fn read_signed_trust_root(path: &Path) -> Result<SignedTrustRoot, KeyFileError> {
    let bytes = fs::read(path).map_err(io(path))?;
    SignedTrustRoot::from_bytes(&bytes).map_err(|source| KeyFileError::Trust {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and opens (verifies) a trust root file at `now`.
pub fn read_trust_root(path: &Path, now: u64) -> Result<TrustRoot, KeyFileError> {
    read_signed_trust_root(path)?
        .open(now)
        .map_err(|source| KeyFileError::Trust {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder,
/// synced, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let tmp = tmp_path(path);
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// `DIR/.NAME.tmp` beside `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}
