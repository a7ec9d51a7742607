//! The audit chain's storage: appending under the tenant lock, the head,
//! listings.

use super::sql::Sql;
#[cfg(feature = "failpoints")]
use super::StoreError;
use super::{Result, Store, Tx};
use crate::audit::{verify_chain_from, AuditEntry, AuditRecord, ChainBreak, ChainHead, GENESIS};
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// A case-insensitive substring of the actor (`tok_… (name)`).
    pub actor: Option<String>,
    pub after_seq: Option<i64>,
    pub before_seq: Option<i64>,
    /// Newest first (the dashboard) instead of chain order.
    pub newest_first: bool,
    pub limit: i64,
}

// Mapped by hand: `#[derive(FromRow)]` needs sqlx's proc-macro crate, which
// builds both drivers (bundled SQLite included) a second time for the host.
impl FromRow<'_, AnyRow> for AuditRecord {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(AuditRecord {
            tenant: r.try_get("tenant")?,
            seq: r.try_get("seq")?,
            at: r.try_get("at")?,
            request_id: r.try_get("request_id")?,
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            target: r.try_get("target")?,
            outcome: r.try_get("outcome")?,
            detail: r.try_get("detail")?,
            prev_hash: r.try_get("prev_hash")?,
            hash: r.try_get("hash")?,
        })
    }
}

impl Store {
    /// Chains `entry` after the tenant's head; the caller holds the lock.
    pub(super) async fn append(&self, tx: &mut Tx, entry: AuditEntry) -> Result<AuditRecord> {
        // `return` fails every append; `return(ACTION)` only that action's,
        // so a test can set up through the API and then break one route.
        #[cfg(feature = "failpoints")]
        if fail::eval("store::audit_append", |arg| {
            arg.is_none_or(|a| a.is_empty() || a == entry.action)
        }) == Some(true)
        {
            return Err(StoreError::Injected("store::audit_append"));
        }
        let (seq, prev): (i64, String) =
            sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE tenant = $1")
                .bind(entry.tenant.as_str())
                .fetch_one(&mut **tx)
                .await?;
        let r = entry.seal(seq + 1, self.now(), &prev);
        sqlx::query(
            "INSERT INTO audit (tenant, seq, at, request_id, actor, action, target, outcome, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(r.tenant.as_str())
        .bind(r.seq)
        .bind(r.at)
        .bind(r.request_id.as_str())
        .bind(r.actor.as_str())
        .bind(r.action.as_str())
        .bind(r.target.as_str())
        .bind(r.outcome.as_str())
        .bind(r.detail.as_str())
        .bind(r.prev_hash.as_str())
        .bind(r.hash.as_str())
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE audit_heads SET seq = $1, hash = $2 WHERE tenant = $3")
            .bind(r.seq)
            .bind(r.hash.as_str())
            .bind(r.tenant.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(r)
    }

    /// Appends one record on its own (refusals, and actions with nothing
    /// else to write).
    pub async fn audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let mut tx = self.begin_locked(&entry.tenant).await?;
        let r = self.append(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(r)
    }

    pub async fn audit_head(&self, tenant: &str) -> Result<ChainHead> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?;
        Ok(match row {
            Some((seq, hash)) => ChainHead { seq, hash },
            None => ChainHead {
                seq: 0,
                hash: GENESIS.to_string(),
            },
        })
    }

    pub async fn audit_list(&self, tenant: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut sql = Sql::new(
            "SELECT tenant, seq, at, request_id, actor, action, target, outcome, detail, prev_hash, hash FROM audit WHERE tenant = ",
        );
        sql.push_bind(tenant.to_string());
        if let Some(a) = &q.action {
            sql.push(" AND action = ").push_bind(a.clone());
        }
        if let Some(o) = &q.outcome {
            sql.push(" AND outcome = ").push_bind(o.clone());
        }
        if let Some(a) = &q.actor {
            let escaped = a
                .to_lowercase()
                .replace('!', "!!")
                .replace('%', "!%")
                .replace('_', "!_");
            sql.push(" AND LOWER(actor) LIKE ")
                .push_bind(format!("%{escaped}%"))
                .push(" ESCAPE '!'");
        }
        if let Some(s) = q.after_seq {
            sql.push(" AND seq > ").push_bind(s);
        }
        if let Some(s) = q.before_seq {
            sql.push(" AND seq < ").push_bind(s);
        }
        sql.push(if q.newest_first {
            " ORDER BY seq DESC LIMIT "
        } else {
            " ORDER BY seq LIMIT "
        })
        .push_bind(q.limit);
        Ok(sql.query_as().fetch_all(self.pool()).await?)
    }

    /// The tenant's chain head and every record after `after` up to it,
    /// in chain order, for [`crate::audit::verify_chain_from`] (the
    /// dashboard's badge). Read in pages; records appended meanwhile are
    /// left out.
    pub async fn audit_chain_after(
        &self,
        tenant: &str,
        after: i64,
    ) -> Result<(ChainHead, Vec<AuditRecord>)> {
        let head = self.audit_head(tenant).await?;
        let mut records: Vec<AuditRecord> = Vec::new();
        let mut after = after;
        while after < head.seq {
            let page = self
                .audit_list(
                    tenant,
                    &AuditQuery {
                        after_seq: Some(after),
                        limit: 1000,
                        ..Default::default()
                    },
                )
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            records.extend(page.into_iter().filter(|r| r.seq <= head.seq));
        }
        Ok((head, records))
    }

    /// The tenant's chain verified for the dashboard's badge: only the
    /// records after the part this store verified last time, unless that
    /// was more than [`FULL_VERIFY_MS`] ago (then from the first record, so
    /// an old record rewritten in the database shows within that time;
    /// `ferry audit verify` always reads the whole chain).
    pub async fn verified_audit_chain(&self, tenant: &str) -> Result<Result<u64, ChainBreak>> {
        let now = self.now_ms();
        let prefix = self
            .audit_verified
            .lock()
            .ok()
            .and_then(|m| m.get(tenant).cloned())
            .filter(|(_, at)| now - at < FULL_VERIFY_MS);
        let (from, at) = match prefix {
            Some((p, at)) => (Some(p), at),
            None => (None, now),
        };
        let (head, records) = self
            .audit_chain_after(tenant, from.as_ref().map_or(0, |p| p.seq))
            .await?;
        let verdict = verify_chain_from(from.as_ref(), &records, Some(&head));
        if let Ok(mut m) = self.audit_verified.lock() {
            match &verdict {
                Ok(_) => {
                    m.insert(tenant.to_string(), (head, at));
                }
                Err(_) => {
                    m.remove(tenant);
                }
            }
        }
        Ok(verdict)
    }
}

/// How long the dashboard trusts a verified prefix of a chain before it
/// verifies the whole chain again.
pub const FULL_VERIFY_MS: i64 = 10 * 60 * 1000;
