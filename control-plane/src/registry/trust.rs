//! The tenant's trust root: which keys may sign which models.

use super::{Caller, Refused, RegistryError};
use crate::action::Action;
use crate::store::Store;
use ferry_protocol::trust::{SignedTrustRoot, TrustRoot};

/// The tenant's current trust root, opened even when expired (to show
/// publisher names); `None` when it has none or it does not decode.
pub async fn current_trust(store: &Store, tenant: &str) -> Option<TrustRoot> {
    let (_, hexed) = store.trust_root(tenant).await.ok()??;
    let bytes = hex::decode(hexed).ok()?;
    let signed = SignedTrustRoot::from_bytes(&bytes).ok()?;
    signed.open(0).ok()
}

/// Sets the caller's tenant's trust root from its signed encoding. The
/// first root must be self-consistent and unexpired at `now`; a
/// replacement must be signed by a threshold of the current root's keys.
pub async fn put_trust_root(
    store: &Store,
    caller: &Caller,
    signed: &[u8],
    now: u64,
) -> Result<TrustRoot, Refused> {
    let refused = |target: &str, error: RegistryError| Refused {
        target: target.to_string(),
        error,
    };
    let untargeted = |e: RegistryError| refused("trust root", e);
    let signed = SignedTrustRoot::from_bytes(signed)
        .map_err(|e| untargeted(RegistryError::TrustRoot(e.to_string())))?;
    let current = store
        .trust_root(&caller.tenant)
        .await
        .map_err(|e| untargeted(e.into()))?;
    let opened = match &current {
        None => signed.open(now),
        Some((_, hexed)) => {
            let cur = hex::decode(hexed)
                .ok()
                .and_then(|b| SignedTrustRoot::from_bytes(&b).ok())
                .and_then(|s| s.open(0).ok())
                .ok_or_else(|| {
                    untargeted(RegistryError::Internal(
                        "the stored trust root does not open".into(),
                    ))
                })?;
            signed.open_as_successor(&cur, now)
        }
    };
    let root = opened.map_err(|e| untargeted(RegistryError::TrustRoot(e.to_string())))?;
    let target = format!("trust root v{}", root.version);
    if root.tenant != caller.tenant {
        return Err(refused(
            &target,
            RegistryError::TrustRootTenant {
                root: root.tenant.clone(),
                caller: caller.tenant.clone(),
            },
        ));
    }
    let version = i64::try_from(root.version).map_err(|_| {
        refused(
            &target,
            RegistryError::BadRequest(format!("version {} is out of range", root.version)),
        )
    })?;
    store
        .put_trust_root(
            &caller.tenant,
            version,
            &hex::encode(signed.to_bytes()),
            current.map(|c| c.0),
            &caller.actor,
            caller.ok(Action::TrustPush, &target),
        )
        .await
        .map_err(|e| refused(&target, e.into()))?;
    Ok(root)
}
