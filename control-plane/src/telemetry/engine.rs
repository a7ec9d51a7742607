//! Ingest and evaluation: validates each MQTT message, stores drift
//! summaries as a time series in the registry's store, evaluates the model's
//! drift policy, raises alerts and fires retraining triggers (drift-based and
//! scheduled), each audited.
//!
//! Time comes from the [`Clock`] given at construction, so tests drive the
//! schedule with a clock they control. Firing is gated by a conditional
//! UPDATE of `trigger_state`, so a cooldown holds across replicas sharing
//! one database.

use super::admission::{Admission, Refusal};
use super::cron::Cron;
use super::policy::{self, Aggregation, DriftPolicy};
use super::webhook;
use crate::audit::{AuditEntry, OUTCOME_OK, OUTCOME_REFUSED};
use crate::store::telemetry::{NewAlert, NewTrigger};
use crate::store::{Store, StoreError};
use ferry_protocol::telemetry::{
    parse_topic, topic, DriftSummary, Event, Health, CONTROL_DEVICE, KIND_ALERTS, KIND_DRIFT,
    KIND_EVENTS, KIND_HEALTH, MAX_PAYLOAD,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The engine's clock (milliseconds; any `Fn() -> u64` closure is one).
pub type Clock = crate::clock::SharedClock;

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
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Store(#[from] StoreError),
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
    /// Of the refused: not signed by the enrolled, unrevoked device the
    /// topic names (spoofed, unknown, revoked).
    pub unauthenticated: AtomicU64,
    /// Of the refused: over the per-device cap per minute.
    pub rate_limited: AtomicU64,
    pub alerts: AtomicU64,
    pub triggers: AtomicU64,
}

pub struct Engine {
    pub store: Store,
    clock: Clock,
    /// Publishes alerts as MQTT events once the ingest client is connected.
    pub mqtt: Mutex<Option<ferry_mqtt::Client>>,
    policies: Mutex<HashMap<(String, String), (DriftPolicy, u64)>>,
    /// Signatures, device keys, per-device caps, refusal audits.
    pub admission: Admission,
    pub counters: Counters,
    /// Webhook retry delays, ms (tests shorten them).
    pub retry_ms: Vec<u64>,
    /// Bumped for every drift window stored: the rollout driver steps at
    /// once on new telemetry.
    pub windows_stored: tokio::sync::watch::Sender<u64>,
}

/// Policies are re-read from the store this often (ms), so a change made
/// through another replica applies within it.
const POLICY_TTL_MS: u64 = 1000;

impl Engine {
    pub fn new(store: Store, clock: Clock) -> Arc<Self> {
        Self::with_limit(store, clock, super::admission::DEFAULT_MAX_PER_MINUTE)
    }

    /// `max_per_minute`: drift windows (and events) stored per device per
    /// minute.
    pub fn with_limit(store: Store, clock: Clock, max_per_minute: u32) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            mqtt: Mutex::new(None),
            policies: Mutex::new(HashMap::new()),
            admission: Admission::new(max_per_minute),
            counters: Counters::default(),
            retry_ms: vec![500, 1000, 2000, 4000],
            windows_stored: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
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
            if c.len() >= super::admission::MAX_ENTRIES {
                c.retain(|_, (_, at)| now.saturating_sub(*at) < POLICY_TTL_MS);
                if c.len() >= super::admission::MAX_ENTRIES {
                    c.clear();
                }
            }
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
        if let (Err(IngestError::Refused(why)), Some((tenant, device, _))) =
            (&r, parse_topic(topic_name))
        {
            let counter = match why {
                Refusal::RateLimited { .. } => &self.counters.rate_limited,
                _ => &self.counters.unauthenticated,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.audit_refusal(tenant, device, why).await;
        }
        r
    }

    /// Audits a refusal, at most once per minute per source; the record
    /// says how many were held back since the last one.
    async fn audit_refusal(&self, tenant: &str, device: &str, why: &Refusal) {
        if matches!(why, Refusal::UnknownDevice { .. })
            && !self.store.tenant_has_devices(tenant).await.unwrap_or(false)
        {
            return;
        }
        let Some(held) = self.admission.audit_due(tenant, device, self.now_ms()) else {
            return;
        };
        let entry = AuditEntry {
            tenant: tenant.into(),
            request_id: crate::auth::random_id("tlm_", 8),
            actor: "ferry telemetry".into(),
            action: "telemetry.refuse".into(),
            target: format!("device {device}"),
            outcome: OUTCOME_REFUSED.into(),
            detail: format!(
                "{}: {why}; {held} more refused from this source since the last record (audited once per minute per source)",
                why.code()
            ),
        };
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!(tenant, device, error = %e, "auditing a telemetry refusal failed");
        }
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
        if kind == KIND_HEALTH && payload.is_empty() {
            // A cleared retained message: nothing to store.
            return Ok(Outcome::default());
        }
        if ![KIND_DRIFT, KIND_HEALTH, KIND_EVENTS].contains(&kind) {
            return Err(IngestError::Topic(format!("{topic_name} (kind {kind:?})")));
        }
        // The broker is not trusted: only the enrolled device's signature
        // lets a message in.
        self.admission
            .verify(&self.store, tenant, device, kind, payload, self.now_ms())
            .await??;
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
                self.admission
                    .count(tenant, device, KIND_DRIFT, s.window_end_ms)?;
                let raw = String::from_utf8_lossy(payload).into_owned();
                self.drift(s, raw).await
            }
            KIND_HEALTH => {
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
                self.admission.count(tenant, device, KIND_EVENTS, e.at_ms)?;
                let stored = self
                    .store
                    .insert_device_event(
                        tenant,
                        device,
                        e.seq as i64,
                        e.at_ms as i64,
                        e.kind.as_str(),
                        &String::from_utf8_lossy(payload),
                    )
                    .await?;
                Ok(Outcome {
                    stored,
                    duplicate: !stored,
                    ..Default::default()
                })
            }
            other => Err(IngestError::Topic(format!("{topic_name} (kind {other:?})"))),
        }
    }

    async fn health(&self, h: Health, raw: String) -> Result<Outcome, IngestError> {
        let now = self.now_ms();
        let prev = self
            .store
            .device_health_status(&h.tenant, &h.device)
            .await?;
        self.store
            .put_device_health(
                &h.tenant,
                &h.device,
                &h.status,
                h.at_ms as i64,
                &raw,
                now as i64,
            )
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
        let stored = self
            .store
            .insert_window(&s, max_psi, drifted, &raw, now as i64)
            .await?;
        if !stored {
            return Ok(Outcome {
                duplicate: true,
                ..Default::default()
            });
        }
        self.windows_stored.send_modify(|n| *n += 1);
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
        // The reference is the operator's (the policy), never a window.
        let reference = p
            .prediction_reference
            .as_ref()
            .filter(|_| p.prediction_shift_threshold > 0.0 && !s.predictions.classes.is_empty());
        if let Some(reference) = reference {
            if let Some(tvd) = policy::class_tvd(reference, &s.predictions.classes) {
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
        let rows = self
            .store
            .recent_windows(&s.tenant, &s.model, since)
            .await?;
        let mut drifted_rows: u64 = 0;
        let mut latest: HashMap<String, (i64, bool)> = HashMap::new();
        for (device, seq, d, n) in rows {
            if d {
                drifted_rows += n.max(0) as u64;
            }
            let e = latest.entry(device).or_insert((seq, d));
            if seq >= e.0 {
                *e = (seq, d);
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
                .trigger(
                    &s.tenant, &s.model, s.version, "drift", &alert, evidence, p, None,
                )
                .await?
            {
                out.triggers.push(t);
            }
        }
        Ok(())
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
        let id = crate::auth::random_id("alr_", 8);
        let alert = NewAlert {
            id: id.clone(),
            tenant: tenant.into(),
            model: model.into(),
            version: version as i64,
            kind: kind.into(),
            device: device.into(),
            evidence: evidence.to_string(),
            gate_key,
        };
        let entry = AuditEntry {
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
        };
        if !self
            .store
            .raise_alert(&alert, now as i64, cooldown_ms as i64, entry)
            .await?
        {
            return Ok(None);
        }
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
    /// episode's gate, or names the schedule slot (key, last firing) to take
    /// in the same transaction; `None` when another firing took it.
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
        slot: Option<(&str, i64)>,
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
        let t = NewTrigger {
            id: id.clone(),
            tenant: tenant.into(),
            model: model.into(),
            version: version as i64,
            reason: reason.into(),
            alert_id: alert_id.into(),
            fired_at_ms: now as i64,
            payload: payload.clone(),
        };
        let entry = AuditEntry {
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
                p.webhook_url
                    .as_deref()
                    .map_or_else(|| "(none configured)".into(), policy::redacted_url)
            ),
        };
        match slot {
            None => self.store.fire_trigger(&t, entry).await?,
            Some((key, last)) => {
                if !self
                    .store
                    .fire_scheduled_trigger(&t, key, last, entry)
                    .await?
                {
                    return Ok(None);
                }
            }
        }
        self.counters.triggers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant, model, version, reason, trigger = %id, "retraining triggered");
        if let Some(url) = p.webhook_url.clone() {
            let store = self.store.clone();
            let secret = p.webhook_secret.clone();
            let retry = self.retry_ms.clone();
            let id2 = id.clone();
            tokio::spawn(async move {
                let (ok, attempts, err) =
                    webhook::deliver(&url, secret.as_deref(), &id2, payload.as_bytes(), &retry)
                        .await;
                let _ = store.record_delivery(&id2, ok, attempts as i64, &err).await;
            });
        }
        Ok(Some(id))
    }

    /// Scheduled work at `now`: time-based retraining triggers whose cron
    /// fired since the last tick. Returns the triggers fired.
    pub async fn tick(&self) -> Result<Vec<String>, IngestError> {
        let now = self.now_ms();
        let rows = self.store.drift_policy_configs().await?;
        let mut fired = Vec::new();
        for (tenant, model, config) in rows {
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
            let last = self
                .store
                .schedule_last_fired(&tenant, &model, &key, now as i64)
                .await?;
            let Some(due) = cron.next_after(last.max(0) as u64 / 1000) else {
                continue;
            };
            if due * 1000 > now {
                continue;
            }
            let version = self
                .store
                .max_version(&tenant, &model)
                .await?
                .unwrap_or(0)
                .max(0) as u64;
            let evidence = json!({"schedule": expr, "due_at_ms": due * 1000});
            // Only the replica whose update of the slot matches fires.
            if let Some(t) = self
                .trigger(
                    &tenant,
                    &model,
                    version,
                    "schedule",
                    "",
                    evidence,
                    &p,
                    Some((&key, last)),
                )
                .await?
            {
                fired.push(t);
            }
        }
        Ok(fired)
    }
}

pub async fn load_policy(
    store: &Store,
    tenant: &str,
    model: &str,
) -> Result<Option<DriftPolicy>, StoreError> {
    let Some(config) = store.drift_policy_config(tenant, model).await? else {
        return Ok(None);
    };
    serde_json::from_str(&config)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("drift policy of {model}: {e}")))
}

/// Stores a policy and its audit record in one transaction.
pub async fn save_policy(
    store: &Store,
    tenant: &str,
    model: &str,
    p: &DriftPolicy,
    entry: AuditEntry,
) -> Result<(), StoreError> {
    let config = serde_json::to_string(p)
        .map_err(|e| StoreError::Corrupt(format!("drift policy of {model}: {e}")))?;
    store.put_drift_policy(tenant, model, &config, entry).await
}
