//! Telemetry tables (migration 0002): drift windows, device health and
//! events, drift policies (alerts and retraining triggers are in
//! `alerts.rs`). Times are milliseconds; the engine passes its own clock's
//! reading where the evaluation depends on it.

pub use super::alerts::{AlertQuery, AlertRow, NewAlert, NewTrigger, TriggerRow};
use super::sql::Sql;
use super::{Result, Store};
use crate::audit::AuditEntry;
use crate::changes::ChangeKind;
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

/// One stored device event (`activated`, `refused`, `rolled_back`, ...).
#[derive(Clone, Debug)]
pub struct EventRow {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    /// The event as received (JSON).
    pub payload: String,
}

impl FromRow<'_, AnyRow> for EventRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(EventRow {
            seq: r.try_get("seq")?,
            at_ms: r.try_get("at_ms")?,
            kind: r.try_get("kind")?,
            payload: r.try_get("payload")?,
        })
    }
}

/// What ingest needs to know of a device named on a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceKey {
    /// The raw ed25519 public key it enrolled with (`None`: enrolled before
    /// keys were recorded).
    pub public_key: Option<[u8; 32]>,
    pub revoked: bool,
}

impl Store {
    // ------------------------------------------------------------- ingest

    /// Whether `tenant` has any enrolled device (refusals naming a tenant
    /// without one are not audited: there is no chain to protect, and an
    /// attacker's made-up names must not start one).
    pub async fn tenant_has_devices(&self, tenant: &str) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT CAST(1 AS BIGINT) FROM devices WHERE tenant = $1 LIMIT 1")
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.is_some())
    }

    /// The enrolled device `device` of `tenant`: its public key and whether
    /// it is revoked; `None` when the tenant has no such device.
    pub async fn device_key(&self, tenant: &str, device: &str) -> Result<Option<DeviceKey>> {
        let row: Option<(Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT public_key, revoked_at FROM devices WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(device)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(key, revoked_at)| DeviceKey {
            public_key: key.and_then(|k| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(k, &mut out).ok().map(|()| out)
            }),
            revoked: revoked_at.is_some(),
        }))
    }

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
        self.changes
            .send(tenant, ChangeKind::Device(device.to_string()));
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

    /// Calls `f` with each stored summary (the JSON as received) of
    /// `model` whose window ended at or after `since_ms`, streamed from the
    /// database so that a fleet's day of windows is never held at once;
    /// returns how many there were.
    pub async fn for_each_summary(
        &self,
        tenant: &str,
        model: &str,
        since_ms: i64,
        mut f: impl FnMut(&str),
    ) -> Result<u64> {
        use futures::TryStreamExt;
        let mut rows = sqlx::query_scalar::<_, String>(
            "SELECT summary FROM telemetry_windows WHERE tenant = $1 AND model = $2 AND window_end_ms >= $3",
        )
        .bind(tenant)
        .bind(model)
        .bind(since_ms)
        .fetch(self.pool());
        let mut n = 0;
        while let Some(summary) = rows.try_next().await? {
            f(&summary);
            n += 1;
        }
        Ok(n)
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

    /// One device's latest health message, if it sent one.
    pub async fn device_health_of(&self, tenant: &str, device: &str) -> Result<Option<HealthRow>> {
        Ok(sqlx::query_as(
            "SELECT device, status, at_ms, payload, received_at_ms FROM device_health WHERE tenant = $1 AND device = $2",
        )
        .bind(tenant)
        .bind(device)
        .fetch_optional(self.pool())
        .await?)
    }

    /// One device's events, newest first, `limit` from `offset`.
    pub async fn device_events(
        &self,
        tenant: &str,
        device: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        Ok(sqlx::query_as(
            "SELECT seq, at_ms, kind, payload FROM device_events WHERE tenant = $1 AND device = $2 \
             ORDER BY at_ms DESC, seq DESC LIMIT $3 OFFSET $4",
        )
        .bind(tenant)
        .bind(device)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?)
    }

    /// One device's windows (of `model`, or of every model), newest first,
    /// `limit` from `offset`, each with its model.
    pub async fn device_windows(
        &self,
        tenant: &str,
        device: &str,
        model: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<(String, WindowRow)>> {
        let mut sql = Sql::new(
            "SELECT model, device, seq, version, variant, window_start_ms, window_end_ms, rows_seen, requests, errors, latency_p50_us, latency_p99_us, labelled, correct, max_psi, drifted, summary, received_at_ms FROM telemetry_windows WHERE tenant = ",
        );
        sql.push_bind(tenant.to_string())
            .push(" AND device = ")
            .push_bind(device.to_string());
        if let Some(m) = model {
            sql.push(" AND model = ").push_bind(m.to_string());
        }
        // A device numbers its messages in the order it sends them, so its
        // sequence is its windows' order, and the primary key's.
        sql.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = sql.query().fetch_all(self.pool()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((r.try_get("model")?, WindowRow::from_row(r)?));
        }
        Ok(out)
    }

    /// The models a device has sent windows of, by name.
    pub async fn device_window_models(&self, tenant: &str, device: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            // `seq >= 0` (always true) steers SQLite to the primary key; for
            // DISTINCT it chose the (tenant, model, ...) index and read every
            // device's windows (100 ms at 288,000 windows against 2.5 ms).
            "SELECT DISTINCT model FROM telemetry_windows WHERE tenant = $1 AND device = $2 AND seq >= 0 ORDER BY model",
        )
        .bind(tenant)
        .bind(device)
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
            let tx = &mut m.tx;
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
}
