//! Telemetry tables (migration 0002): drift windows, device health and
//! events, drift policies, alerts and retraining triggers. Times are
//! milliseconds; the engine passes its own clock's reading where the
//! evaluation depends on it.

use super::sql::Sql;
use super::{Result, Store, Tx};
use crate::audit::AuditEntry;
use ferry_protocol::telemetry::DriftSummary;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

/// One stored drift window.
#[derive(Clone, Debug)]
pub struct WindowRow {
    pub device: String,
    pub seq: i64,
    pub version: i64,
    pub variant: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub rows_seen: i64,
    pub requests: i64,
    pub errors: i64,
    pub latency_p50_us: i64,
    pub latency_p99_us: i64,
    pub labelled: i64,
    pub correct: i64,
    pub max_psi: f64,
    pub drifted: bool,
    /// The summary as received (JSON).
    pub summary: String,
    pub received_at_ms: i64,
}

// Mapped by hand (see `AuditRecord`'s mapper); flags are stored as 0/1.
impl FromRow<'_, AnyRow> for WindowRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(WindowRow {
            device: r.try_get("device")?,
            seq: r.try_get("seq")?,
            version: r.try_get("version")?,
            variant: r.try_get("variant")?,
            window_start_ms: r.try_get("window_start_ms")?,
            window_end_ms: r.try_get("window_end_ms")?,
            rows_seen: r.try_get("rows_seen")?,
            requests: r.try_get("requests")?,
            errors: r.try_get("errors")?,
            latency_p50_us: r.try_get("latency_p50_us")?,
            latency_p99_us: r.try_get("latency_p99_us")?,
            labelled: r.try_get("labelled")?,
            correct: r.try_get("correct")?,
            max_psi: r.try_get("max_psi")?,
            drifted: r.try_get::<i64, _>("drifted")? == 1,
            summary: r.try_get("summary")?,
            received_at_ms: r.try_get("received_at_ms")?,
        })
    }
}

/// Filters of a window listing.
#[derive(Clone, Debug, Default)]
pub struct WindowQuery {
    pub version: Option<i64>,
    pub device: Option<String>,
    pub since_ms: i64,
    pub limit: i64,
}

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

/// A device's latest health message.
#[derive(Clone, Debug)]
pub struct HealthRow {
    pub device: String,
    pub status: String,
    /// The message as received (JSON).
    pub payload: String,
    pub received_at_ms: i64,
}

impl FromRow<'_, AnyRow> for HealthRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(HealthRow {
            device: r.try_get("device")?,
            status: r.try_get("status")?,
            payload: r.try_get("payload")?,
            received_at_ms: r.try_get("received_at_ms")?,
        })
    }
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
    // ------------------------------------------------------------- ingest

    /// Stores a device event; false when its sequence number was seen.
    pub async fn insert_device_event(
        &self,
        tenant: &str,
        device: &str,
        seq: i64,
        at_ms: i64,
        kind: &str,
        payload: &str,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO device_events (tenant, device, seq, at_ms, kind, payload) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, device, seq) DO NOTHING",
        )
        .bind(tenant)
        .bind(device)
        .bind(seq)
        .bind(at_ms)
        .bind(kind)
        .bind(payload)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The device's last reported health status.
    pub async fn device_health_status(&self, tenant: &str, device: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar(
                "SELECT status FROM device_health WHERE tenant = $1 AND device = $2",
            )
            .bind(tenant)
            .bind(device)
            .fetch_optional(self.pool())
            .await?,
        )
    }

    /// Replaces the device's latest health message.
    pub async fn put_device_health(
        &self,
        tenant: &str,
        device: &str,
        status: &str,
        at_ms: i64,
        payload: &str,
        received_at_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_health (tenant, device, status, at_ms, payload, received_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, device) DO UPDATE SET status = excluded.status, at_ms = excluded.at_ms, payload = excluded.payload, received_at_ms = excluded.received_at_ms",
        )
        .bind(tenant)
        .bind(device)
        .bind(status)
        .bind(at_ms)
        .bind(payload)
        .bind(received_at_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Stores a drift window; false when its sequence number was seen.
    pub async fn insert_window(
        &self,
        s: &DriftSummary,
        max_psi: f64,
        drifted: bool,
        raw: &str,
        received_at_ms: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO telemetry_windows (tenant, device, seq, model, version, variant, window_start_ms, window_end_ms, rows_seen, requests, errors, latency_p50_us, latency_p99_us, labelled, correct, max_psi, drifted, summary, received_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) ON CONFLICT (tenant, device, seq) DO NOTHING",
        )
        .bind(s.tenant.as_str())
        .bind(s.device.as_str())
        .bind(s.seq as i64)
        .bind(s.model.as_str())
        .bind(s.version as i64)
        .bind(s.variant.as_str())
        .bind(s.window_start_ms as i64)
        .bind(s.window_end_ms as i64)
        .bind(s.rows as i64)
        .bind(s.requests as i64)
        .bind(s.errors as i64)
        .bind(i64::from(s.latency_p50_us))
        .bind(i64::from(s.latency_p99_us))
        .bind(s.labelled as i64)
        .bind(s.correct as i64)
        .bind(max_psi)
        .bind(i64::from(drifted))
        .bind(raw)
        .bind(received_at_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// (device, seq, drifted, rows) of the model's windows received since
    /// `since_ms`, by sequence number.
    pub async fn recent_windows(
        &self,
        tenant: &str,
        model: &str,
        since_ms: i64,
    ) -> Result<Vec<(String, i64, bool, i64)>> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT device, seq, drifted, rows_seen FROM telemetry_windows WHERE tenant = $1 AND model = $2 AND received_at_ms >= $3 ORDER BY seq",
        )
        .bind(tenant)
        .bind(model)
        .bind(since_ms)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(d, seq, drifted, n)| (d, seq, drifted == 1, n))
            .collect())
    }

    /// The model's windows matching `q`, by end time.
    pub async fn windows(
        &self,
        tenant: &str,
        model: &str,
        q: &WindowQuery,
    ) -> Result<Vec<WindowRow>> {
        let mut sql = Sql::new(
            "SELECT device, seq, version, variant, window_start_ms, window_end_ms, rows_seen, requests, errors, latency_p50_us, latency_p99_us, labelled, correct, max_psi, drifted, summary, received_at_ms FROM telemetry_windows WHERE tenant = ",
        );
        sql.push_bind(tenant.to_string())
            .push(" AND model = ")
            .push_bind(model.to_string())
            .push(" AND window_end_ms >= ")
            .push_bind(q.since_ms);
        if let Some(v) = q.version {
            sql.push(" AND version = ").push_bind(v);
        }
        if let Some(d) = &q.device {
            sql.push(" AND device = ").push_bind(d.clone());
        }
        sql.push(" ORDER BY window_end_ms, device, seq LIMIT ")
            .push_bind(q.limit);
        Ok(sql.query_as().fetch_all(self.pool()).await?)
    }

    /// Every tenant's device health, latest message per device.
    pub async fn device_health(&self, tenant: &str) -> Result<Vec<HealthRow>> {
        Ok(sqlx::query_as(
            "SELECT device, status, at_ms, payload, received_at_ms FROM device_health WHERE tenant = $1 ORDER BY device",
        )
        .bind(tenant)
        .fetch_all(self.pool())
        .await?)
    }

    // ----------------------------------------------------------- policies

    /// The model's drift policy as stored (JSON).
    pub async fn drift_policy_config(&self, tenant: &str, model: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar(
                "SELECT config FROM drift_policies WHERE tenant = $1 AND model = $2",
            )
            .bind(tenant)
            .bind(model)
            .fetch_optional(self.pool())
            .await?,
        )
    }

    /// (tenant, model, config JSON) of every stored policy.
    pub async fn drift_policy_configs(&self) -> Result<Vec<(String, String, String)>> {
        Ok(
            sqlx::query_as("SELECT tenant, model, config FROM drift_policies")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// Stores a policy (JSON), audited as `entry` (whose actor is recorded
    /// as its author).
    pub async fn put_drift_policy(
        &self,
        tenant: &str,
        model: &str,
        config: &str,
        entry: AuditEntry,
    ) -> Result<()> {
        let by = entry.actor.clone();
        {
            let mut m = self.mutation(entry).await?;
            let (tx, _) = (&mut m.tx, &mut m.entry);
            let out: Result<_> = async {
            sqlx::query(
                "INSERT INTO drift_policies (tenant, model, config, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (tenant, model) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            )
            .bind(tenant)
            .bind(model)
            .bind(config)
            .bind(self.now())
            .bind(by.as_str())
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
            .await;
            m.finish(out).await
        }
    }

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
            let (tx, _) = (&mut m.tx, &mut m.entry);
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
            let (tx, _) = (&mut m.tx, &mut m.entry);
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
            Some(row) => Ok(Some(row)),
            None => self.alert(tenant, id).await,
        }
    }

    // ----------------------------------------------------------- triggers

    /// Stores a retraining trigger whose gate the caller holds, audited as
    /// `entry`.
    pub async fn fire_trigger(&self, t: &NewTrigger, entry: AuditEntry) -> Result<()> {
        {
            let mut m = self.mutation(entry).await?;
            let (tx, _) = (&mut m.tx, &mut m.entry);
            let out: Result<_> = async { insert_trigger(tx, t).await }.await;
            m.finish(out).await
        }
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
            let (tx, _) = (&mut m.tx, &mut m.entry);
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
}
