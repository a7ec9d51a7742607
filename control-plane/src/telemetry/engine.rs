//! Ingest and evaluation: validates each MQTT message, stores drift
//! summaries as a time series in the registry's store, evaluates the model's
//! drift policy, raises alerts and fires retraining triggers (drift-based and
//! scheduled), each audited.
//!
//! Time comes from the [`Clock`] given at construction, so tests drive the
//! schedule with a clock they control. Firing is gated by a conditional
//! UPDATE of `trigger_state`, so a cooldown holds across replicas sharing
//! one database.

use super::cron::Cron;
use super::policy::{self, Aggregation, DriftPolicy};
use super::webhook;
use crate::audit::{AuditEntry, OUTCOME_OK};
use crate::store::{Store, StoreError};
use ferry_protocol::telemetry::{
    parse_topic, topic, DriftSummary, Event, Health, CONTROL_DEVICE, KIND_ALERTS, KIND_DRIFT,
    KIND_EVENTS, KIND_HEALTH, MAX_PAYLOAD,
};
use serde_json::{json, Value};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// (tenant, model, version).
type ModelVersion = (String, String, u64);

/// Milliseconds since the epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("topic {0:?} is not ferry/v1/{{tenant}}/{{device}}/{{drift|health|events}}")]
    Topic(String),
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("payload is not a valid {kind} message: {reason}")]
    Invalid { kind: &'static str, reason: String },
    #[error("payload names {payload:?}, the topic {topic:?}")]
    Mismatch { topic: String, payload: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for IngestError {
    fn from(e: sqlx::Error) -> Self {
        IngestError::Store(StoreError::Db(e))
    }
}

/// What one message did.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub stored: bool,
    pub duplicate: bool,
    pub alerts: Vec<String>,
    pub triggers: Vec<String>,
}

#[derive(Default)]
pub struct Counters {
    pub ingested: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
    pub alerts: AtomicU64,
    pub triggers: AtomicU64,
}

pub struct Engine {
    pub store: Store,
    clock: Clock,
    http: reqwest::Client,
    /// Publishes alerts as MQTT events once the ingest client is connected.
    pub mqtt: Mutex<Option<ferry_mqtt::Client>>,
    policies: Mutex<HashMap<(String, String), (DriftPolicy, u64)>>,
    /// First class distribution seen per (tenant, model, version): the
    /// reference for prediction-shift alerts.
    first_classes: Mutex<HashMap<ModelVersion, BTreeMap<String, u64>>>,
    pub counters: Counters,
    /// Webhook retry delays, ms (tests shorten them).
    pub retry_ms: Vec<u64>,
}

/// Policies are re-read from the store this often (ms), so a change made
/// through another replica applies within it.
const POLICY_TTL_MS: u64 = 1000;

fn db(e: sqlx::Error) -> IngestError {
    IngestError::Store(StoreError::Db(e))
}

impl Engine {
    pub fn new(store: Store, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            mqtt: Mutex::new(None),
            policies: Mutex::new(HashMap::new()),
            first_classes: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            retry_ms: vec![500, 1000, 2000, 4000],
        })
    }

    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The model's policy (the default when none was set).
    pub async fn policy(&self, tenant: &str, model: &str) -> Result<DriftPolicy, StoreError> {
        let now = self.now_ms();
        let key = (tenant.to_string(), model.to_string());
        if let Ok(c) = self.policies.lock() {
            if let Some((p, at)) = c.get(&key) {
                if now.saturating_sub(*at) < POLICY_TTL_MS {
                    return Ok(p.clone());
                }
            }
        }
        let p = load_policy(&self.store, tenant, model)
            .await?
            .unwrap_or_default();
        if let Ok(mut c) = self.policies.lock() {
            c.insert(key, (p.clone(), now));
        }
        Ok(p)
    }

    /// Forgets cached policies (after a change through this replica).
    pub fn invalidate(&self) {
        if let Ok(mut c) = self.policies.lock() {
            c.clear();
        }
    }

    /// Handles one MQTT message.
    pub async fn ingest(&self, topic_name: &str, payload: &[u8]) -> Result<Outcome, IngestError> {
        let r = self.ingest_inner(topic_name, payload).await;
        match &r {
            Ok(o) if o.duplicate => self.counters.duplicates.fetch_add(1, Ordering::Relaxed),
            Ok(_) => self.counters.ingested.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.refused.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    async fn ingest_inner(&self, topic_name: &str, payload: &[u8]) -> Result<Outcome, IngestError> {
        let (tenant, device, kind) =
            parse_topic(topic_name).ok_or_else(|| IngestError::Topic(topic_name.into()))?;
        if payload.len() > MAX_PAYLOAD {
            return Err(IngestError::TooLarge(payload.len()));
        }
        if device == CONTROL_DEVICE {
            // Our own alert events.
            return Ok(Outcome::default());
        }
        let check = |t: &str, d: &str| {
            if t == tenant && d == device {
                Ok(())
            } else {
                Err(IngestError::Mismatch {
                    topic: format!("{tenant}/{device}"),
                    payload: format!("{t}/{d}"),
                })
            }
        };
        match kind {
            KIND_DRIFT => {
                let s: DriftSummary =
                    serde_json::from_slice(payload).map_err(|e| IngestError::Invalid {
                        kind: "drift",
                        reason: e.to_string(),
                    })?;
                s.validate().map_err(|reason| IngestError::Invalid {
                    kind: "drift",
                    reason,
                })?;
                check(&s.tenant, &s.device)?;
                let raw = String::from_utf8_lossy(payload).into_owned();
                self.drift(s, raw).await
            }
            KIND_HEALTH => {
                if payload.is_empty() {
                    // A cleared retained message.
                    return Ok(Outcome::default());
                }
                let h: Health =
                    serde_json::from_slice(payload).map_err(|e| IngestError::Invalid {
                        kind: "health",
                        reason: e.to_string(),
                    })?;
                check(&h.tenant, &h.device)?;
                self.health(h, String::from_utf8_lossy(payload).into_owned())
                    .await
            }
            KIND_EVENTS => {
                let e: Event =
                    serde_json::from_slice(payload).map_err(|e| IngestError::Invalid {
                        kind: "event",
                        reason: e.to_string(),
                    })?;
                check(&e.tenant, &e.device)?;
                let n = sqlx::query(
                    "INSERT INTO device_events (tenant, device, seq, at_ms, kind, payload) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, device, seq) DO NOTHING",
                )
                .bind(tenant)
                .bind(device)
                .bind(e.seq as i64)
                .bind(e.at_ms as i64)
                .bind(e.kind.as_str())
                .bind(String::from_utf8_lossy(payload).into_owned())
                .execute(self.store.pool())
                .await
                .map_err(db)?
                .rows_affected();
                Ok(Outcome {
                    stored: n == 1,
                    duplicate: n == 0,
                    ..Default::default()
                })
            }
            other => Err(IngestError::Topic(format!("{topic_name} (kind {other:?})"))),
        }
    }

    async fn health(&self, h: Health, raw: String) -> Result<Outcome, IngestError> {
        let now = self.now_ms();
        let prev: Option<String> =
            sqlx::query("SELECT status FROM device_health WHERE tenant = $1 AND device = $2")
                .bind(h.tenant.as_str())
                .bind(h.device.as_str())
                .fetch_optional(self.store.pool())
                .await?
                .map(|r| r.try_get::<String, _>("status"))
                .transpose()?;
        sqlx::query(
            "INSERT INTO device_health (tenant, device, status, at_ms, payload, received_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant, device) DO UPDATE SET status = excluded.status, at_ms = excluded.at_ms, payload = excluded.payload, received_at_ms = excluded.received_at_ms",
        )
        .bind(h.tenant.as_str())
        .bind(h.device.as_str())
        .bind(h.status.as_str())
        .bind(h.at_ms as i64)
        .bind(raw)
        .bind(now as i64)
        .execute(self.store.pool())
        .await?;
        let mut out = Outcome {
            stored: true,
            ..Default::default()
        };
        if h.status == "offline" && prev.as_deref() != Some("offline") {
            if let Some(id) = self
                .raise(
                    &h.tenant,
                    "",
                    0,
                    "device_offline",
                    &h.device,
                    json!({"device": h.device, "last_status": prev}),
                    60_000,
                )
                .await?
            {
                out.alerts.push(id);
            }
        }
        Ok(out)
    }

    async fn drift(&self, s: DriftSummary, raw: String) -> Result<Outcome, IngestError> {
        let now = self.now_ms();
        let p = self.policy(&s.tenant, &s.model).await?;
        let drifted = p.is_drifted(&s);
        let max_psi = p.max_psi(&s).unwrap_or(-1.0);
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
        .bind(now as i64)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(Outcome {
                duplicate: true,
                ..Default::default()
            });
        }
        let mut out = Outcome {
            stored: true,
            ..Default::default()
        };
        let cooldown = p.cooldown_secs * 1000;
        for (kind, evidence) in policy::window_alerts(&p, &s) {
            if let Some(id) = self
                .raise(
                    &s.tenant, &s.model, s.version, kind, &s.device, evidence, cooldown,
                )
                .await?
            {
                out.alerts.push(id);
            }
        }
        if p.prediction_shift_threshold > 0.0 && !s.predictions.classes.is_empty() {
            let key = (s.tenant.clone(), s.model.clone(), s.version);
            let reference = match self.first_classes.lock() {
                Ok(mut m) => m
                    .entry(key)
                    .or_insert_with(|| s.predictions.classes.clone())
                    .clone(),
                Err(_) => s.predictions.classes.clone(),
            };
            if let Some(tvd) = policy::class_tvd(&reference, &s.predictions.classes) {
                if tvd >= p.prediction_shift_threshold {
                    if let Some(id) = self
                        .raise(
                            &s.tenant,
                            &s.model,
                            s.version,
                            "prediction_shift",
                            &s.device,
                            json!({"tvd": tvd, "reference": reference, "window": s.predictions.classes, "threshold": p.prediction_shift_threshold}),
                            cooldown,
                        )
                        .await?
                    {
                        out.alerts.push(id);
                    }
                }
            }
        }
        if drifted {
            self.drift_episode(&p, &s, now, &mut out).await?;
        }
        Ok(out)
    }

    async fn drift_episode(
        &self,
        p: &DriftPolicy,
        s: &DriftSummary,
        now: u64,
        out: &mut Outcome,
    ) -> Result<(), IngestError> {
        let since = now.saturating_sub(p.lookback_secs * 1000) as i64;
        let rows = sqlx::query(
            "SELECT device, seq, drifted, rows_seen FROM telemetry_windows WHERE tenant = $1 AND model = $2 AND received_at_ms >= $3 ORDER BY seq",
        )
        .bind(s.tenant.as_str())
        .bind(s.model.as_str())
        .bind(since)
        .fetch_all(self.store.pool())
        .await?;
        let mut drifted_rows: u64 = 0;
        let mut latest: HashMap<String, (i64, bool)> = HashMap::new();
        for r in &rows {
            let device: String = r.try_get("device")?;
            let seq: i64 = r.try_get("seq")?;
            let d: i64 = r.try_get("drifted")?;
            let n: i64 = r.try_get("rows_seen")?;
            if d == 1 {
                drifted_rows += n.max(0) as u64;
            }
            let e = latest.entry(device).or_insert((seq, d == 1));
            if seq >= e.0 {
                *e = (seq, d == 1);
            }
        }
        let devices = latest.len().max(1);
        let drifted_devices = latest.values().filter(|(_, d)| *d).count();
        let fraction = drifted_devices as f64 / devices as f64;
        let fires = drifted_rows >= p.min_drifted_rows
            && match p.aggregation {
                Aggregation::AnyDevice => true,
                Aggregation::FleetFraction => fraction >= p.fleet_fraction,
            };
        if !fires {
            return Ok(());
        }
        let psi: serde_json::Map<String, Value> = s
            .features
            .iter()
            .zip(&s.psi)
            .map(|(f, v)| (f.clone(), json!(v)))
            .collect();
        let evidence = json!({
            "window": {
                "device": s.device, "seq": s.seq, "version": s.version, "variant": s.variant,
                "window_start_ms": s.window_start_ms, "window_end_ms": s.window_end_ms, "rows": s.rows,
            },
            "psi": psi,
            "drifted_features": p.drifted_features(s).into_iter().map(|(f, v)| json!({"feature": f, "psi": v})).collect::<Vec<_>>(),
            "psi_threshold": p.psi_threshold,
            "drifted_rows": drifted_rows,
            "min_drifted_rows": p.min_drifted_rows,
            "drifted_devices": drifted_devices,
            "devices": latest.len(),
        });
        let cooldown = p.cooldown_secs * 1000;
        if let Some(alert) = self
            .raise(
                &s.tenant,
                &s.model,
                s.version,
                "drift",
                &s.device,
                evidence.clone(),
                cooldown,
            )
            .await?
        {
            out.alerts.push(alert.clone());
            if let Some(t) = self
                .trigger(&s.tenant, &s.model, s.version, "drift", &alert, evidence, p)
                .await?
            {
                out.triggers.push(t);
            }
        }
        Ok(())
    }

    /// Takes the (tenant, model, key) gate when its last firing is at least
    /// `cooldown_ms` ago; false when another firing holds it.
    async fn gate(
        &self,
        tenant: &str,
        model: &str,
        key: &str,
        now: u64,
        cooldown_ms: u64,
    ) -> Result<bool, IngestError> {
        sqlx::query(
            "INSERT INTO trigger_state (tenant, model, key, last_ms) VALUES ($1, $2, $3, -1) ON CONFLICT (tenant, model, key) DO NOTHING",
        )
        .bind(tenant)
        .bind(model)
        .bind(key)
        .execute(self.store.pool())
        .await?;
        let n = sqlx::query(
            "UPDATE trigger_state SET last_ms = $4 WHERE tenant = $1 AND model = $2 AND key = $3 AND (last_ms < 0 OR last_ms <= $5)",
        )
        .bind(tenant)
        .bind(model)
        .bind(key)
        .bind(now as i64)
        .bind(now as i64 - cooldown_ms as i64)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Raises an alert of `kind` unless one fired within `cooldown_ms`;
    /// stores, audits and publishes it. Returns its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn raise(
        &self,
        tenant: &str,
        model: &str,
        version: u64,
        kind: &str,
        device: &str,
        evidence: Value,
        cooldown_ms: u64,
    ) -> Result<Option<String>, IngestError> {
        let now = self.now_ms();
        let gate_key = if model.is_empty() {
            format!("alert:{kind}:{device}")
        } else {
            format!("alert:{kind}")
        };
        if !self
            .gate(tenant, model, &gate_key, now, cooldown_ms)
            .await?
        {
            return Ok(None);
        }
        let id = crate::auth::random_id("alr_", 8);
        sqlx::query(
            "INSERT INTO alerts (id, tenant, model, version, kind, device, opened_at_ms, evidence, acknowledged_at_ms, acknowledged_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, '')",
        )
        .bind(id.as_str())
        .bind(tenant)
        .bind(model)
        .bind(version as i64)
        .bind(kind)
        .bind(device)
        .bind(now as i64)
        .bind(evidence.to_string())
        .execute(self.store.pool())
        .await?;
        self.store
            .audit(AuditEntry {
                tenant: tenant.into(),
                request_id: id.clone(),
                actor: "ferry telemetry".into(),
                action: "alert.raise".into(),
                target: if model.is_empty() {
                    format!("device {device}")
                } else {
                    format!("{model} v{version}")
                },
                outcome: OUTCOME_OK.into(),
                detail: format!("{kind} alert {id} from device {device}"),
            })
            .await?;
        self.counters.alerts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant, model, version, kind, device, alert = %id, "alert raised");
        let event = json!({
            "schema": ferry_protocol::telemetry::TELEMETRY_SCHEMA,
            "id": id, "tenant": tenant, "model": model, "version": version, "kind": kind,
            "device": device, "opened_at_ms": now, "evidence": evidence,
        });
        if let Ok(g) = self.mqtt.lock() {
            if let Some(c) = g.as_ref() {
                let _ = c.try_publish(
                    topic(tenant, CONTROL_DEVICE, KIND_ALERTS),
                    event.to_string(),
                    false,
                );
            }
        }
        Ok(Some(id))
    }

    /// Fires a retraining trigger: stores, audits, and delivers the webhook
    /// (retried with backoff, in the background). The caller holds the
    /// episode's gate.
    #[allow(clippy::too_many_arguments)]
    async fn trigger(
        &self,
        tenant: &str,
        model: &str,
        version: u64,
        reason: &str,
        alert_id: &str,
        evidence: Value,
        p: &DriftPolicy,
    ) -> Result<Option<String>, IngestError> {
        let now = self.now_ms();
        let id = crate::auth::random_id("trg_", 8);
        let payload = json!({
            "event": "ferry.retrain",
            "id": id,
            "reason": reason,
            "tenant": tenant,
            "model": model,
            "version": version,
            "alert_id": alert_id,
            "fired_at_ms": now,
            "evidence": evidence,
        })
        .to_string();
        sqlx::query(
            "INSERT INTO retrain_triggers (id, tenant, model, version, reason, alert_id, fired_at_ms, payload, delivered, attempts, last_error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, '')",
        )
        .bind(id.as_str())
        .bind(tenant)
        .bind(model)
        .bind(version as i64)
        .bind(reason)
        .bind(alert_id)
        .bind(now as i64)
        .bind(payload.as_str())
        .execute(self.store.pool())
        .await?;
        self.store
            .audit(AuditEntry {
                tenant: tenant.into(),
                request_id: id.clone(),
                actor: "ferry telemetry".into(),
                action: "retrain.trigger".into(),
                target: format!("{model} v{version}"),
                outcome: OUTCOME_OK.into(),
                detail: format!(
                    "{reason} trigger {id}{}; webhook {}",
                    if alert_id.is_empty() {
                        String::new()
                    } else {
                        format!(" for alert {alert_id}")
                    },
                    p.webhook_url.as_deref().unwrap_or("(none configured)")
                ),
            })
            .await?;
        self.counters.triggers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant, model, version, reason, trigger = %id, "retraining triggered");
        if let Some(url) = p.webhook_url.clone() {
            let store = self.store.clone();
            let http = self.http.clone();
            let secret = p.webhook_secret.clone().unwrap_or_default();
            let retry = self.retry_ms.clone();
            let id2 = id.clone();
            tokio::spawn(async move {
                let (ok, attempts, err) =
                    webhook::deliver(&http, &url, &secret, &id2, payload.as_bytes(), &retry).await;
                let _ = sqlx::query(
                    "UPDATE retrain_triggers SET delivered = $1, attempts = $2, last_error = $3 WHERE id = $4",
                )
                .bind(i64::from(ok))
                .bind(attempts as i64)
                .bind(err)
                .bind(id2.as_str())
                .execute(store.pool())
                .await;
            });
        }
        Ok(Some(id))
    }

    /// Scheduled work at `now`: time-based retraining triggers whose cron
    /// fired since the last tick. Returns the triggers fired.
    pub async fn tick(&self) -> Result<Vec<String>, IngestError> {
        let now = self.now_ms();
        let rows = sqlx::query("SELECT tenant, model, config FROM drift_policies")
            .fetch_all(self.store.pool())
            .await?;
        let mut fired = Vec::new();
        for r in rows {
            let tenant: String = r.try_get("tenant")?;
            let model: String = r.try_get("model")?;
            let config: String = r.try_get("config")?;
            let Ok(p) = serde_json::from_str::<DriftPolicy>(&config) else {
                continue;
            };
            let Some(expr) = &p.retrain_schedule else {
                continue;
            };
            let Ok(cron) = Cron::parse(expr) else {
                continue;
            };
            let key = format!("schedule:{expr}");
            // First sight of a schedule: start counting from now.
            sqlx::query(
                "INSERT INTO trigger_state (tenant, model, key, last_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, model, key) DO NOTHING",
            )
            .bind(tenant.as_str())
            .bind(model.as_str())
            .bind(key.as_str())
            .bind(now as i64)
            .execute(self.store.pool())
            .await?;
            let last: i64 = sqlx::query(
                "SELECT last_ms FROM trigger_state WHERE tenant = $1 AND model = $2 AND key = $3",
            )
            .bind(tenant.as_str())
            .bind(model.as_str())
            .bind(key.as_str())
            .fetch_one(self.store.pool())
            .await?
            .try_get("last_ms")?;
            let Some(due) = cron.next_after(last.max(0) as u64 / 1000) else {
                continue;
            };
            if due * 1000 > now {
                continue;
            }
            // Take the slot: only the replica whose UPDATE matches fires.
            let n = sqlx::query(
                "UPDATE trigger_state SET last_ms = $4 WHERE tenant = $1 AND model = $2 AND key = $3 AND last_ms = $5",
            )
            .bind(tenant.as_str())
            .bind(model.as_str())
            .bind(key.as_str())
            .bind(now as i64)
            .bind(last)
            .execute(self.store.pool())
            .await?
            .rows_affected();
            if n != 1 {
                continue;
            }
            let version = latest_version(&self.store, &tenant, &model).await?;
            let evidence = json!({"schedule": expr, "due_at_ms": due * 1000});
            if let Some(t) = self
                .trigger(&tenant, &model, version, "schedule", "", evidence, &p)
                .await?
            {
                fired.push(t);
            }
        }
        Ok(fired)
    }
}

async fn latest_version(store: &Store, tenant: &str, model: &str) -> Result<u64, IngestError> {
    let v: Option<i64> =
        sqlx::query("SELECT MAX(version) AS v FROM versions WHERE tenant = $1 AND model = $2")
            .bind(tenant)
            .bind(model)
            .fetch_one(store.pool())
            .await?
            .try_get("v")
            .ok();
    Ok(v.unwrap_or(0).max(0) as u64)
}

pub async fn load_policy(
    store: &Store,
    tenant: &str,
    model: &str,
) -> Result<Option<DriftPolicy>, StoreError> {
    let row = sqlx::query("SELECT config FROM drift_policies WHERE tenant = $1 AND model = $2")
        .bind(tenant)
        .bind(model)
        .fetch_optional(store.pool())
        .await?;
    let Some(r) = row else { return Ok(None) };
    let config: String = r.try_get("config")?;
    serde_json::from_str(&config)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("drift policy of {model}: {e}")))
}

/// Stores a policy, audited in the same chain.
pub async fn save_policy(
    store: &Store,
    tenant: &str,
    model: &str,
    p: &DriftPolicy,
    entry: AuditEntry,
) -> Result<(), StoreError> {
    let config = serde_json::to_string(p)
        .map_err(|e| StoreError::Corrupt(format!("drift policy of {model}: {e}")))?;
    sqlx::query(
        "INSERT INTO drift_policies (tenant, model, config, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant, model) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
    )
    .bind(tenant)
    .bind(model)
    .bind(config)
    .bind(crate::now_unix() as i64)
    .bind(entry.actor.as_str())
    .execute(store.pool())
    .await?;
    store.audit(entry).await?;
    Ok(())
}
