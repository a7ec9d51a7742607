//! API tokens and roles.
//!
//! A token is `fy_` followed by 64 hex digits (32 random bytes). Only its
//! SHA-256 is stored: a stolen database yields no usable token. Roles are
//! ordered; each grants everything the ones below it do.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// viewer < operator < publisher < admin.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads models, versions, aliases, projects, the trust root.
    Viewer,
    /// Deploys and rolls back (rollouts).
    Operator,
    /// Registers, promotes, archives.
    Publisher,
    /// Tokens, trust roots, deletion, the audit trail.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Publisher, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Publisher => "publisher",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use viewer, operator, publisher or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Prefix that makes Ferry tokens recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "fy_";

/// A fresh random token.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// A fresh random id with `prefix` (`tok_`, request ids).
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

/// What is stored for a token: SHA-256 hex of its text.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` has the shape of a Ferry token (checked before any
/// database lookup, so garbage costs nothing).
pub fn well_formed(token: &str) -> bool {
    token
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub token_id: String,
    pub token_name: String,
    pub tenant: String,
    pub role: Role,
}

impl Principal {
    /// How audit records name this caller.
    pub fn actor(&self) -> String {
        format!("{} ({})", self.token_id, self.token_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Operator);
        assert!(Role::Operator < Role::Publisher);
        assert!(Role::Publisher < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn tokens_are_well_formed_and_hash_stably() {
        let t = generate_token();
        assert!(well_formed(&t));
        assert!(!well_formed("fy_xyz"));
        assert!(!well_formed(&t[1..]));
        assert_eq!(hash_token(&t), hash_token(&t));
        assert_ne!(hash_token(&t), hash_token(&generate_token()));
    }
}
