//! Dashboard sessions: a browser's sign-in, stored by the SHA-256 of its
//! id (a stolen database yields no usable cookie) with the API token it
//! stands for. The token is joined on every lookup, so revoking it ends
//! every session made with it.

use super::{Result, Store, StoreError};
use crate::audit::AuditEntry;
use crate::auth::Principal;

/// A live session: its token's principal and its CSRF secret.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub principal: Principal,
    pub csrf: String,
    pub expires_at: i64,
}

impl Store {
    /// Stores a session for `token_id` that expires `ttl_secs` from now,
    /// with its audit record (`entry`, in the same transaction); expired
    /// sessions are removed on the way. Returns the expiry (seconds).
    pub async fn create_session(
        &self,
        id_hash: &str,
        token_id: &str,
        csrf: &str,
        ttl_secs: i64,
        entry: AuditEntry,
    ) -> Result<i64> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let now = self.now();
        let out: Result<_> = async {
            sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO dashboard_sessions (id_hash, token_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_hash)
            .bind(token_id)
            .bind(csrf)
            .bind(now)
            .bind(now + ttl_secs)
            .execute(&mut **tx)
            .await?;
            Ok(now + ttl_secs)
        }
        .await;
        m.finish(out).await
    }

    /// The unexpired session stored as `id_hash` whose token is not
    /// revoked, with the token's principal as it is now.
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>> {
        let row: Option<(String, String, String, String, String, i64)> = sqlx::query_as(
            "SELECT t.id, t.tenant, t.name, t.role, s.csrf, s.expires_at FROM dashboard_sessions s \
             JOIN tokens t ON t.id = s.token_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
        )
        .bind(id_hash)
        .bind(self.now())
        .fetch_optional(self.pool())
        .await?;
        let Some((token_id, tenant, token_name, role, csrf, expires_at)) = row else {
            return Ok(None);
        };
        Ok(Some(SessionRow {
            principal: Principal {
                token_id,
                token_name,
                tenant,
                role: role
                    .parse()
                    .map_err(|e: crate::auth::UnknownRole| StoreError::Corrupt(e.to_string()))?,
            },
            csrf,
            expires_at,
        }))
    }

    /// Stores a one-time sign-in link for `token_id`, valid `ttl_secs`,
    /// audited with `entry`; expired links are removed on the way.
    /// Returns the expiry (seconds).
    pub async fn create_sign_in_link(
        &self,
        code_hash: &str,
        token_id: &str,
        ttl_secs: i64,
        entry: AuditEntry,
    ) -> Result<i64> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let now = self.now();
        let out: Result<_> = async {
            sqlx::query("DELETE FROM dashboard_sign_in_links WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO dashboard_sign_in_links (code_hash, token_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(code_hash)
            .bind(token_id)
            .bind(now)
            .bind(now + ttl_secs)
            .execute(&mut **tx)
            .await?;
            Ok(now + ttl_secs)
        }
        .await;
        m.finish(out).await
    }

    /// Uses up the sign-in link stored as `code_hash`: the principal of its
    /// token, when the link is unexpired and the token not revoked. The
    /// link is gone afterwards either way (a second use finds nothing).
    pub async fn take_sign_in_link(&self, code_hash: &str) -> Result<Option<Principal>> {
        let token: Option<(String, i64)> = sqlx::query_as(
            "DELETE FROM dashboard_sign_in_links WHERE code_hash = $1 RETURNING token_id, expires_at",
        )
        .bind(code_hash)
        .fetch_optional(self.pool())
        .await?;
        let Some((token_id, _)) = token.filter(|(_, expires_at)| *expires_at > self.now()) else {
            return Ok(None);
        };
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT tenant, name, role FROM tokens WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(token_id.as_str())
        .fetch_optional(self.pool())
        .await?;
        let Some((tenant, token_name, role)) = row else {
            return Ok(None);
        };
        Ok(Some(Principal {
            token_id,
            token_name,
            tenant,
            role: role
                .parse()
                .map_err(|e: crate::auth::UnknownRole| StoreError::Corrupt(e.to_string()))?,
        }))
    }

    /// Ends a session (sign-out), audited with `entry`. Returns whether it
    /// was still stored.
    pub async fn delete_session(&self, id_hash: &str, entry: AuditEntry) -> Result<bool> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async {
            let n = sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            Ok(n == 1)
        }
        .await;
        m.finish(out).await
    }
}
