//! Where devices stand for every replica (migration 0010): the lease on a
//! device's QUIC session that the replica holding it renews, and the
//! tenant's device generation that enrollments, label changes and
//! revocations bump and stamp on the device they change.

use super::fleet::{Device, DEVICE_COLS};
use super::sql::Sql;
use super::{Result, Store, Tx};

/// Bumps `tenant`'s device generation inside `tx` and stamps device `id`
/// with it (see migration 0010). The tenant's lock, which every caller
/// holds, orders the bumps, so generations commit in order.
pub(super) async fn bump_device_generation(tx: &mut Tx, tenant: &str, id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO device_generations (tenant, generation) VALUES ($1, 1) \
         ON CONFLICT (tenant) DO UPDATE SET generation = device_generations.generation + 1",
    )
    .bind(tenant)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE devices SET generation = \
         (SELECT generation FROM device_generations WHERE tenant = $1) WHERE id = $2",
    )
    .bind(tenant)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Stores the runtimes a device's hello offered (see
    /// [`runtimes_to_string`](super::device_runtimes::runtimes_to_string)); when they changed, the device generation
    /// moves, so every replica's snapshot reads them (not audited).
    pub async fn set_device_runtimes<S: AsRef<str>>(
        &self,
        tenant: &str,
        id: &str,
        runtimes: &[S],
    ) -> Result<()> {
        let stored = super::device_runtimes::runtimes_to_string(runtimes);
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE devices SET runtimes = $1 WHERE tenant = $2 AND id = $3 \
             AND (runtimes IS NULL OR runtimes <> $1)",
        )
        .bind(&stored)
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            bump_device_generation(&mut tx, tenant, id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records that the device was seen now and that this replica holds
    /// session `session` with it until `until_ms` (not audited).
    pub async fn open_device_session(&self, id: &str, session: &str, until_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET last_seen = $1, session_id = $2, session_until = $3 WHERE id = $4",
        )
        .bind(self.now())
        .bind(session)
        .bind(until_ms)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Extends to `until_ms` the leases of `sessions` (device id, session
    /// id) that are still these sessions; one statement per few hundred.
    pub async fn renew_device_sessions(
        &self,
        sessions: &[(String, String)],
        until_ms: i64,
    ) -> Result<()> {
        for chunk in sessions.chunks(400) {
            // By id (the primary key), kept only where the session is still
            // the one named: session ids are random per connection, so no
            // other device's id can match.
            let mut sql = Sql::new("UPDATE devices SET session_until = ");
            sql.push_bind(until_ms).push(" WHERE id IN (");
            for (i, (id, _)) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "" } else { ", " })
                    .push_bind(id.clone());
            }
            sql.push(") AND session_id IN (");
            for (i, (_, s)) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "" } else { ", " })
                    .push_bind(s.clone());
            }
            sql.push(")");
            sql.query().execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Records that the device was seen now and, if `session` is still its
    /// session (it did not reconnect meanwhile, here or to another
    /// replica), that the session ended (not audited).
    pub async fn close_device_session(&self, id: &str, session: &str) -> Result<()> {
        sqlx::query(
            "UPDATE devices SET last_seen = $1, \
             session_until = CASE WHEN session_id = $2 THEN NULL ELSE session_until END, \
             session_id = CASE WHEN session_id = $2 THEN NULL ELSE session_id END \
             WHERE id = $3",
        )
        .bind(self.now())
        .bind(session)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// `tenant`'s device generation (0 before its first device).
    pub async fn device_generation(&self, tenant: &str) -> Result<i64> {
        let g: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM device_generations WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?;
        Ok(g.unwrap_or(0))
    }

    /// `tenant`'s devices stamped with a device generation above `after`
    /// (enrolled, relabelled or revoked since), by id.
    pub async fn devices_changed_after(&self, tenant: &str, after: i64) -> Result<Vec<Device>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE tenant = $1 AND generation > $2 ORDER BY id"
        ))
        .bind(tenant)
        .bind(after)
        .fetch_all(self.pool())
        .await?)
    }
}
