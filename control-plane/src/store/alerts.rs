//! Alerts and retraining triggers (migration 0002), each raised or fired
//! together with its cooldown gate and its audit record.

use super::sql::Sql;
use super::{Result, Store, Tx};
use crate::audit::AuditEntry;
use crate::changes::ChangeKind;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

#[derive(Clone, Debug)]
pub struct AlertRow {
    pub id: String,
    pub model: String,
    pub version: i64,
    pub kind: String,
    pub device: String,
    pub opened_at_ms: i64,
    /// JSON.
    pub evidence: String,
    /// 0 while open.
    pub acknowledged_at_ms: i64,
    pub acknowledged_by: String,
}

impl FromRow<'_, AnyRow> for AlertRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(AlertRow {
            id: r.try_get("id")?,
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            kind: r.try_get("kind")?,
            device: r.try_get("device")?,
            opened_at_ms: r.try_get("opened_at_ms")?,
            evidence: r.try_get("evidence")?,
            acknowledged_at_ms: r.try_get("acknowledged_at_ms")?,
            acknowledged_by: r.try_get("acknowledged_by")?,
        })
    }
}

const ALERT_COLS: &str = "SELECT id, model, version, kind, device, opened_at_ms, evidence, acknowledged_at_ms, acknowledged_by FROM alerts";

/// Filters of an alert listing.
#[derive(Clone, Debug, Default)]
pub struct AlertQuery {
    pub since_ms: i64,
    pub model: Option<String>,
    pub kind: Option<String>,
    pub device: Option<String>,
    /// `Some(true)`: unacknowledged only; `Some(false)`: acknowledged only.
    pub open: Option<bool>,
    pub limit: i64,
}

/// A new alert; `gate_key` names its cooldown gate.
#[derive(Clone, Debug)]
pub struct NewAlert {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub version: i64,
    pub kind: String,
    pub device: String,
    pub evidence: String,
    pub gate_key: String,
}

#[derive(Clone, Debug)]
pub struct TriggerRow {
    pub id: String,
    pub model: String,
    pub version: i64,
    pub reason: String,
    pub alert_id: String,
    pub fired_at_ms: i64,
    /// The webhook body (JSON).
    pub payload: String,
    pub delivered: bool,
    pub attempts: i64,
    pub last_error: String,
}

impl FromRow<'_, AnyRow> for TriggerRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(TriggerRow {
            id: r.try_get("id")?,
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            reason: r.try_get("reason")?,
            alert_id: r.try_get("alert_id")?,
            fired_at_ms: r.try_get("fired_at_ms")?,
            payload: r.try_get("payload")?,
            delivered: r.try_get::<i64, _>("delivered")? == 1,
            attempts: r.try_get("attempts")?,
            last_error: r.try_get("last_error")?,
        })
    }
}

/// A new retraining trigger.
#[derive(Clone, Debug)]
pub struct NewTrigger {
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub version: i64,
    pub reason: String,
    pub alert_id: String,
    pub fired_at_ms: i64,
    pub payload: String,
}

/// Takes the (tenant, model, key) gate when its last firing is at least
/// `cooldown_ms` before `now_ms`; false when another firing holds it.
async fn take_gate(
    tx: &mut Tx,
    tenant: &str,
    model: &str,
    key: &str,
    now_ms: i64,
    cooldown_ms: i64,
) -> Result<bool> {
    sqlx::query(
        "INSERT INTO trigger_state (tenant, model, key, last_ms) VALUES ($1, $2, $3, -1) ON CONFLICT (tenant, model, key) DO NOTHING",
    )
    .bind(tenant)
    .bind(model)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    let n = sqlx::query(
        "UPDATE trigger_state SET last_ms = $4 WHERE tenant = $1 AND model = $2 AND key = $3 AND (last_ms < 0 OR last_ms <= $5)",
    )
    .bind(tenant)
    .bind(model)
    .bind(key)
    .bind(now_ms)
    .bind(now_ms - cooldown_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

async fn insert_trigger(tx: &mut Tx, t: &NewTrigger) -> Result<()> {
    sqlx::query(
        "INSERT INTO retrain_triggers (id, tenant, model, version, reason, alert_id, fired_at_ms, payload, delivered, attempts, last_error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, '')",
    )
    .bind(t.id.as_str())
    .bind(t.tenant.as_str())
    .bind(t.model.as_str())
    .bind(t.version)
    .bind(t.reason.as_str())
    .bind(t.alert_id.as_str())
    .bind(t.fired_at_ms)
    .bind(t.payload.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    // ------------------------------------------------------------- alerts

    /// Raises `a` at `now_ms` unless its gate fired within `cooldown_ms`:
    /// gate, alert and audit record in one transaction. False when the gate
    /// was held (nothing written).
    pub async fn raise_alert(
        &self,
        a: &NewAlert,
        now_ms: i64,
        cooldown_ms: i64,
        entry: AuditEntry,
    ) -> Result<bool> {
        let raised = {
            let mut m = self.mutation(entry).await?;
            let tx = &mut m.tx;
            let out: Result<_> = async {
                if !take_gate(tx, &a.tenant, &a.model, &a.gate_key, now_ms, cooldown_ms).await? {
                    return Ok(None);
                }
                sqlx::query(
                    "INSERT INTO alerts (id, tenant, model, version, kind, device, opened_at_ms, evidence, acknowledged_at_ms, acknowledged_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, '')",
                )
                .bind(a.id.as_str())
                .bind(a.tenant.as_str())
                .bind(a.model.as_str())
                .bind(a.version)
                .bind(a.kind.as_str())
                .bind(a.device.as_str())
                .bind(now_ms)
                .bind(a.evidence.as_str())
                .execute(&mut **tx)
                .await?;
                Ok(Some(()))
            }
            .await;
            m.finish_if(out).await
        }?;
        if raised.is_some() {
            self.changes
                .send(&a.tenant, ChangeKind::Alert(a.id.clone()));
        }
        Ok(raised.is_some())
    }

    pub async fn alert(&self, tenant: &str, id: &str) -> Result<Option<AlertRow>> {
        Ok(
            sqlx::query_as(&format!("{ALERT_COLS} WHERE id = $1 AND tenant = $2"))
                .bind(id)
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    pub async fn alerts(&self, tenant: &str, q: &AlertQuery) -> Result<Vec<AlertRow>> {
        let mut sql = Sql::new(ALERT_COLS);
        sql.push(" WHERE tenant = ")
            .push_bind(tenant.to_string())
            .push(" AND opened_at_ms >= ")
            .push_bind(q.since_ms);
        if let Some(m) = &q.model {
            sql.push(" AND model = ").push_bind(m.clone());
        }
        if let Some(k) = &q.kind {
            sql.push(" AND kind = ").push_bind(k.clone());
        }
        match q.open {
            Some(true) => {
                sql.push(" AND acknowledged_at_ms = 0");
            }
            Some(false) => {
                sql.push(" AND acknowledged_at_ms > 0");
            }
            None => {}
        }
        if let Some(d) = &q.device {
            sql.push(" AND device = ").push_bind(d.clone());
        }
        sql.push(" ORDER BY opened_at_ms, id LIMIT ")
            .push_bind(q.limit);
        Ok(sql.query_as().fetch_all(self.pool()).await?)
    }

    /// Acknowledges an open alert as `by` (audited as `entry`); an alert
    /// already acknowledged is returned unchanged and not audited. `None`
    /// when the tenant has no such alert.
    pub async fn ack_alert(
        &self,
        tenant: &str,
        id: &str,
        by: &str,
        entry: AuditEntry,
    ) -> Result<Option<AlertRow>> {
        let now_ms = self.now() * 1000;
        let acked = {
            let mut m = self.mutation(entry).await?;
            let tx = &mut m.tx;
            let out: Result<_> = async {
                let n = sqlx::query(
                    "UPDATE alerts SET acknowledged_at_ms = $1, acknowledged_by = $2 WHERE id = $3 AND tenant = $4 AND acknowledged_at_ms = 0",
                )
                .bind(now_ms)
                .bind(by)
                .bind(id)
                .bind(tenant)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if n == 0 {
                    return Ok(None);
                }
                Ok(sqlx::query_as(&format!("{ALERT_COLS} WHERE id = $1 AND tenant = $2"))
                    .bind(id)
                    .bind(tenant)
                    .fetch_optional(&mut **tx)
                    .await?)
            }
            .await;
            m.finish_if(out).await
        }?;
        match acked {
            Some(row) => {
                self.changes.send(tenant, ChangeKind::Alert(id.to_string()));
                Ok(Some(row))
            }
            None => self.alert(tenant, id).await,
        }
    }

    // ----------------------------------------------------------- triggers

    /// Stores a retraining trigger whose gate the caller holds, audited as
    /// `entry`.
    pub async fn fire_trigger(&self, t: &NewTrigger, entry: AuditEntry) -> Result<()> {
        let mut m = self.mutation(entry).await?;
        let tx = &mut m.tx;
        let out: Result<_> = async { insert_trigger(tx, t).await }.await;
        m.finish(out).await
    }

    /// The last firing (ms) of a scheduled trigger, starting the count at
    /// `now_ms` on first sight of the schedule.
    pub async fn schedule_last_fired(
        &self,
        tenant: &str,
        model: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<i64> {
        sqlx::query(
            "INSERT INTO trigger_state (tenant, model, key, last_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, model, key) DO NOTHING",
        )
        .bind(tenant)
        .bind(model)
        .bind(key)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(sqlx::query_scalar(
            "SELECT last_ms FROM trigger_state WHERE tenant = $1 AND model = $2 AND key = $3",
        )
        .bind(tenant)
        .bind(model)
        .bind(key)
        .fetch_one(self.pool())
        .await?)
    }

    /// Fires a scheduled trigger if its slot is still at `last_ms` (only one
    /// replica moves it): slot, trigger and audit record in one
    /// transaction. False when another firing took the slot.
    pub async fn fire_scheduled_trigger(
        &self,
        t: &NewTrigger,
        key: &str,
        last_ms: i64,
        entry: AuditEntry,
    ) -> Result<bool> {
        let fired = {
            let mut m = self.mutation(entry).await?;
            let tx = &mut m.tx;
            let out: Result<_> = async {
                let n = sqlx::query(
                    "UPDATE trigger_state SET last_ms = $4 WHERE tenant = $1 AND model = $2 AND key = $3 AND last_ms = $5",
                )
                .bind(t.tenant.as_str())
                .bind(t.model.as_str())
                .bind(key)
                .bind(t.fired_at_ms)
                .bind(last_ms)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Ok(None);
                }
                insert_trigger(tx, t).await?;
                Ok(Some(()))
            }
            .await;
            m.finish_if(out).await
        }?;
        Ok(fired.is_some())
    }

    pub async fn triggers(
        &self,
        tenant: &str,
        since_ms: i64,
        model: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TriggerRow>> {
        let mut sql = Sql::new(
            "SELECT id, model, version, reason, alert_id, fired_at_ms, payload, delivered, attempts, last_error FROM retrain_triggers WHERE tenant = ",
        );
        sql.push_bind(tenant.to_string())
            .push(" AND fired_at_ms >= ")
            .push_bind(since_ms);
        if let Some(m) = model {
            sql.push(" AND model = ").push_bind(m.to_string());
        }
        sql.push(" ORDER BY fired_at_ms, id LIMIT ")
            .push_bind(limit);
        Ok(sql.query_as().fetch_all(self.pool()).await?)
    }

    /// Records the outcome of a trigger's webhook delivery.
    pub async fn record_delivery(
        &self,
        id: &str,
        delivered: bool,
        attempts: i64,
        last_error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE retrain_triggers SET delivered = $1, attempts = $2, last_error = $3 WHERE id = $4",
        )
        .bind(i64::from(delivered))
        .bind(attempts)
        .bind(last_error)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
