//! Identity, projects, tokens, the trust root and the audit trail.

use crate::auth::Role;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `GET /whoami`: the token's identity.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub token_id: String,
    pub token_name: String,
    pub tenant: String,
    pub role: Role,
}

/// `POST /session/link`: a one-time dashboard sign-in link.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SignInLink {
    /// Path and query on the server's HTTP address; opening it once signs
    /// the browser in as the token that asked.
    pub path: String,
    /// Seconds since the epoch.
    pub expires_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub models: i64,
}

/// `GET /projects`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<Project>,
}

/// `POST /projects`: the request, and the answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// An API token (never its secret, except once in [`TokenCreated`]).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

/// `GET /tokens`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

/// `POST /tokens` (`tenant`: another tenant, root-tenant admins only).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A new token with its secret, shown once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: Token,
    pub token: String,
}

/// `DELETE /tokens/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    pub revoked: String,
}

/// `GET /trust-root`: the tenant's trust root as signed (keys as the
/// protocol encodes them).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TrustRootDoc {
    pub tenant: String,
    pub version: u64,
    pub expires_at: u64,
    pub threshold: u32,
    #[schema(value_type = Vec<Object>)]
    pub root_keys: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    pub publishers: Vec<Value>,
    pub publisher_threshold: u32,
    #[schema(value_type = Vec<Object>)]
    pub revoked: Vec<Value>,
}

/// `PUT /trust-root`: the root now in force.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TrustRootSet {
    pub tenant: String,
    pub version: u64,
    pub expires_at: u64,
    pub publishers: Vec<PublisherInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PublisherInfo {
    pub name: String,
    pub key_id: String,
    pub scopes: Vec<String>,
}

/// The newest record of a tenant's audit chain.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

/// One record of the audit chain; `hash` covers every other field and the
/// previous record's hash.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    pub tenant: String,
    pub seq: i64,
    pub at: i64,
    pub request_id: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /audit`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub tenant: String,
    pub head: ChainHead,
    pub records: Vec<AuditRecord>,
}

impl From<crate::audit::ChainHead> for ChainHead {
    fn from(h: crate::audit::ChainHead) -> Self {
        ChainHead {
            seq: h.seq,
            hash: h.hash,
        }
    }
}

impl From<ChainHead> for crate::audit::ChainHead {
    fn from(h: ChainHead) -> Self {
        crate::audit::ChainHead {
            seq: h.seq,
            hash: h.hash,
        }
    }
}

impl From<crate::audit::AuditRecord> for AuditRecord {
    fn from(r: crate::audit::AuditRecord) -> Self {
        AuditRecord {
            tenant: r.tenant,
            seq: r.seq,
            at: r.at,
            request_id: r.request_id,
            actor: r.actor,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            detail: r.detail,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

impl From<AuditRecord> for crate::audit::AuditRecord {
    fn from(r: AuditRecord) -> Self {
        crate::audit::AuditRecord {
            tenant: r.tenant,
            seq: r.seq,
            at: r.at,
            request_id: r.request_id,
            actor: r.actor,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            detail: r.detail,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}
