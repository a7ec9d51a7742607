//! The registry's domain operations: register a verified bundle, move and
//! remove aliases, delete with garbage collection, rotate the trust root,
//! mint tokens. The HTTP handlers, the CLI and a future dashboard call
//! these; they take a [`Caller`] (who asks, for audit records) instead of
//! an HTTP request.

mod register;
mod trust;

pub use register::{register_bundle, Registration, Upload};
pub use trust::{current_trust, put_trust_root};

use crate::action::Action;
use crate::audit::{AuditEntry, OUTCOME_OK};
use crate::auth::{self, Role};
use crate::blobs::Blobs;
use crate::store::{Store, StoreError, TokenInfo};

/// Why a registry operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadRequest(String),
    #[error("bundle exceeds the server's upload limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("tenant {tenant:?} has no trust root; an admin must run `ferry trust push` first")]
    NoTrustRoot { tenant: String },
    #[error("bundle refused: {0}")]
    Bundle(ferry_protocol::VerifyError),
    #[error("bundle header is not in canonical encoding")]
    NotCanonical,
    #[error("trust root refused: {0}")]
    TrustRoot(String),
    #[error("trust root is for tenant {root:?}, this token's tenant is {caller:?}")]
    TrustRootTenant { root: String, caller: String },
    #[error("only admins of the root tenant {root:?} may create tokens in other tenants")]
    CrossTenant { root: String },
    /// A failure that is ours, not the caller's (disk, artifact store, a
    /// stored value that does not decode); logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    fn internal(e: impl std::fmt::Display) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

/// A refusal together with the target its audit record names.
#[derive(Debug)]
pub struct Refused {
    pub target: String,
    pub error: RegistryError,
}

/// Who performs an operation: the tenant acted in, the actor's name for
/// `created_by` columns and audit records, the request id.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: String,
    pub actor: String,
    pub request_id: String,
}

impl Caller {
    /// The `ok` audit record of `action` on `target`.
    pub fn ok(&self, action: Action, target: impl Into<String>) -> AuditEntry {
        AuditEntry {
            tenant: self.tenant.clone(),
            request_id: self.request_id.clone(),
            actor: self.actor.clone(),
            action: action.audit_name().into(),
            target: target.into(),
            outcome: OUTCOME_OK.into(),
            detail: String::new(),
        }
    }
}

/// Points `alias` of `model` at `version`; `expect` makes it a
/// compare-and-set (`Some(None)`: only while unset). Returns the version
/// the alias pointed at before.
pub async fn set_alias(
    store: &Store,
    caller: &Caller,
    model: &str,
    alias: &str,
    version: i64,
    expect: Option<Option<i64>>,
) -> Result<Option<i64>, StoreError> {
    let entry = caller.ok(Action::AliasSet, format!("{model}@{alias} -> {version}"));
    store
        .set_alias(
            &caller.tenant,
            model,
            alias,
            version,
            expect,
            &caller.actor,
            entry,
        )
        .await
}

/// Deletes one version, or the whole model without `version`, then removes
/// the artifacts nothing references any more. Returns their digests.
pub async fn delete(
    store: &Store,
    blobs: &Blobs,
    caller: &Caller,
    model: &str,
    version: Option<i64>,
) -> Result<Vec<String>, StoreError> {
    let (action, target) = delete_target(model, version);
    let orphans = store
        .delete(&caller.tenant, model, version, caller.ok(action, target))
        .await?;
    let blobs = blobs.clone();
    let tenant = caller.tenant.clone();
    store
        .collect_garbage(&caller.tenant, orphans, move |d| {
            let blobs = blobs.clone();
            let tenant = tenant.clone();
            async move { blobs.delete(&tenant, &d).await.map_err(|e| e.to_string()) }
        })
        .await
}

/// The action and audit target of a deletion.
pub fn delete_target(model: &str, version: Option<i64>) -> (Action, String) {
    match version {
        Some(v) => (Action::VersionDelete, format!("{model}@{v}")),
        None => (Action::ModelDelete, model.to_string()),
    }
}

/// Creates a token of `role` in `tenant` and returns it with its secret
/// (shown once). Only admins of `root_tenant` may create tokens in another
/// tenant; such a token is recorded in both tenants' audit chains.
pub async fn create_token(
    store: &Store,
    caller: &Caller,
    root_tenant: &str,
    tenant: &str,
    name: &str,
    role: Role,
    target: &str,
) -> Result<(TokenInfo, String), RegistryError> {
    if tenant != caller.tenant && caller.tenant != root_tenant {
        return Err(RegistryError::CrossTenant {
            root: root_tenant.to_string(),
        });
    }
    let token = auth::generate_token();
    let mut entry = caller.ok(Action::TokenCreate, target);
    if tenant != caller.tenant {
        entry.detail = format!("created by {} of tenant {}", caller.actor, caller.tenant);
        entry.tenant = tenant.to_string();
    }
    let info = store
        .create_token(
            tenant,
            name,
            role,
            &auth::hash_token(&token),
            &caller.actor,
            entry,
        )
        .await?;
    if tenant != caller.tenant {
        store
            .audit(caller.ok(
                Action::TokenCreate,
                format!("token {} in tenant {tenant}", info.id),
            ))
            .await?;
    }
    Ok((info, token))
}
