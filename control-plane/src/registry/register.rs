//! Registering a bundle: receive the upload to a temporary file, verify it
//! against the tenant's trust root, store its artifacts by digest, record
//! the version.

use super::{current_trust, Caller, Refused, RegistryError};
use crate::action::Action;
use crate::blobs::Blobs;
use crate::store::{ArtifactRow, NewVersion, Registered, Store};
use bytes::Bytes;
use ferry_protocol::bundle;
use futures::{Stream, StreamExt};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// A received upload in a temporary file, deleted however the request ends.
pub struct Upload {
    path: PathBuf,
    len: u64,
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Upload {
    /// Streams `body` into a fresh file under `dir`, refusing more than
    /// `max` bytes.
    pub async fn receive<S, E>(dir: &Path, mut body: S, max: u64) -> Result<Self, RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let up = Upload {
            path: dir.join(crate::auth::random_id("upload-", 8)),
            len: 0,
        };
        let mut file = tokio::fs::File::create(&up.path)
            .await
            .map_err(RegistryError::internal)?;
        let mut up = up;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| RegistryError::BadRequest(format!("reading upload: {e}")))?;
            up.len += chunk.len() as u64;
            if up.len > max {
                return Err(RegistryError::TooLarge { max });
            }
            file.write_all(&chunk)
                .await
                .map_err(RegistryError::internal)?;
        }
        file.flush().await.map_err(RegistryError::internal)?;
        Ok(up)
    }

    /// What the upload claims to be (`name@version`), read before anything
    /// is verified, so refusals name it in the audit trail.
    pub async fn claimed(&self) -> Option<String> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(path).ok()?;
            let h = bundle::read_header(&mut std::io::BufReader::new(f)).ok()?;
            let m = h.peek_manifest().ok()?;
            Some(format!("{}@{}", m.model, m.version))
        })
        .await
        .ok()
        .flatten()
    }
}

/// What registering stored.
#[derive(Clone, Debug)]
pub struct Registration {
    pub model: String,
    pub version: i64,
    pub digest: String,
    pub size: i64,
    pub project: String,
    pub status: Registered,
}

/// Verifies `upload` against the caller's tenant's trust root at `now`,
/// stores its artifacts and records the version in `project` (else the
/// manifest's `project` tag, else `default`). Every refusal names what the
/// upload claimed to be.
pub async fn register_bundle(
    store: &Store,
    blobs: &Blobs,
    caller: &Caller,
    upload: &Upload,
    project: Option<String>,
    now: u64,
) -> Result<Registration, Refused> {
    let claimed = upload.claimed().await.unwrap_or_else(|| "(upload)".into());
    let refused = |error: RegistryError| Refused {
        target: claimed.clone(),
        error,
    };
    let Some(root) = current_trust(store, &caller.tenant).await else {
        return Err(refused(RegistryError::NoTrustRoot {
            tenant: caller.tenant.clone(),
        }));
    };
    let path = upload.path.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(path)
            .map_err(|e| ferry_protocol::VerifyError::Io(e.to_string()))?;
        bundle::read_verified(&mut std::io::BufReader::new(f), &root, now, None, |_, _| {
            Ok(())
        })
    })
    .await
    .map_err(|e| refused(RegistryError::internal(e)))?
    .map_err(|e| refused(RegistryError::Bundle(e)))?;
    let manifest = verified.manifest.manifest().clone();
    let preamble_len = verified.header.to_preamble().len() as u64;
    if preamble_len + manifest.total_len() != upload.len {
        return Err(refused(RegistryError::NotCanonical));
    }
    // Where each artifact lies in the upload.
    let mut ranges = Vec::new();
    let mut offset = preamble_len;
    for art in &manifest.artifacts {
        ranges.push((art.sha256.to_hex(), offset, art.len));
        offset += art.len;
    }
    // Upload outside the tenant lock so registrations overlap; the store
    // checks again under the lock (below) in case a deletion collected one.
    store_artifacts(blobs, &caller.tenant, &upload.path, &ranges)
        .await
        .map_err(|e| refused(RegistryError::internal(e)))?;
    let version = i64::try_from(manifest.version).map_err(|_| {
        refused(RegistryError::BadRequest(format!(
            "version {} is out of range",
            manifest.version
        )))
    })?;
    let project = project
        .or_else(|| {
            manifest
                .tags
                .get("project")
                .filter(|p| ferry_protocol::model::is_safe_name(p))
                .cloned()
        })
        .unwrap_or_else(|| "default".into());
    let nv = NewVersion {
        tenant: caller.tenant.clone(),
        model: manifest.model.to_string(),
        project,
        version,
        digest: verified.manifest.digest().to_hex(),
        header: hex::encode(ferry_protocol::encoding::encode(&verified.header)),
        manifest: serde_json::to_string(&manifest)
            .map_err(|e| refused(RegistryError::internal(e)))?,
        size: upload.len as i64,
        artifacts: manifest
            .artifacts
            .iter()
            .map(|x| ArtifactRow {
                name: x.name.clone(),
                digest: x.sha256.to_hex(),
                len: x.len as i64,
            })
            .collect(),
        tags: manifest
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metrics: manifest
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        created_by: caller.actor.clone(),
    };
    let target = format!("{}@{version}", nv.model);
    let mut entry = caller.ok(Action::ModelRegister, &target);
    entry.detail = format!("sha256:{}", nv.digest);
    let (blobs2, tenant, path) = (blobs.clone(), caller.tenant.clone(), upload.path.clone());
    let check = move || async move {
        store_artifacts(&blobs2, &tenant, &path, &ranges)
            .await
            .map_err(|e| e.to_string())
    };
    let status = store
        .register(&nv, entry, check)
        .await
        .map_err(|e| Refused {
            target: target.clone(),
            error: e.into(),
        })?;
    Ok(Registration {
        model: nv.model,
        version,
        digest: nv.digest,
        size: nv.size,
        project: nv.project,
        status,
    })
}

/// Puts each `(digest, offset, len)` range of `file` into the artifact
/// store unless it is there already (content-addressed).
async fn store_artifacts(
    blobs: &Blobs,
    tenant: &str,
    file: &Path,
    ranges: &[(String, u64, u64)],
) -> Result<(), crate::blobs::BlobError> {
    for (digest, off, len) in ranges {
        if !blobs.exists(tenant, digest).await? {
            blobs.put_range(tenant, digest, file, *off, *len).await?;
        }
    }
    Ok(())
}
