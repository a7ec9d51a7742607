//! Telemetry from simulated devices, as real agents send it: per device one
//! MQTT connection (the broker enrollment named, or one given; its
//! certificate over `mqtts://`), a retained signed `online` health (agent
//! version `sim-…`, architecture, MQTT protocol, what it serves; sent again
//! when that changes) and a signed last will, an `activated` event per
//! version it activates, and every window one drift summary per model version
//! the device has active, signed with the device's enrollment key, on
//! `ferry/v1/{tenant}/{device}/drift`, QoS 1. The control plane verifies and
//! stores them like any agent's.
//!
//! No model runs, so the figures are drawn from a [`Profile`] per version:
//! error rate, latency, drift (PSI), predicted-class distribution and the
//! accuracy of labelled rows. A bad version is injected by giving it a bad
//! profile (`v2:error_rate=0.2,accuracy=0.8`); every device that activates
//! it reports accordingly.
//!
//! Unlike the agent, messages wait in memory (no sled outbox per device);
//! sequence numbers are kept in `DATA/sim-telemetry.seq` so a restarted
//! simulator is not taken for a replay.

use super::sim::SimActivator;
use crate::telemetry::{Enrolled, TelemetryArgs, TelemetryConfig};
use ferry_mqtt::{Event as MqttEvent, Negotiation, Protocol};
use ferry_protocol::telemetry::{
    histogram_quantile, latency_bucket, sign_payload, topic, ClosedBy, DriftSummary, Event, Health,
    Predictions, KIND_DRIFT, KIND_EVENTS, KIND_HEALTH, LATENCY_BOUNDS_US, TELEMETRY_SCHEMA,
};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a version's simulated serving looks like.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Share of requests that fail.
    pub error_rate: f64,
    /// Share of labelled rows whose label matches the prediction.
    pub accuracy: f64,
    /// Share of answered rows that get a label back.
    pub labelled: f64,
    /// Typical latency, µs (99 % of requests).
    pub latency_us: u32,
    /// The slowest 1 %'s latency, µs.
    pub p99_us: u32,
    /// PSI reported for the one simulated feature.
    pub drift: f64,
    /// Predicted class → weight.
    pub classes: BTreeMap<String, f64>,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            accuracy: 0.9,
            labelled: 0.2,
            latency_us: 400,
            p99_us: 2000,
            drift: 0.02,
            classes: [("0".to_string(), 0.5), ("1".to_string(), 0.5)].into(),
        }
    }
}

/// Profiles by version, and the one for versions not named.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profiles {
    pub default: Profile,
    pub by_version: BTreeMap<u64, Profile>,
}

impl Profiles {
    pub fn of(&self, version: u64) -> &Profile {
        self.by_version.get(&version).unwrap_or(&self.default)
    }

    /// Adds one `--telemetry-profile`: `v2:error_rate=0.2,accuracy=0.8` or
    /// `default:…`; keys `error_rate`, `accuracy`, `labelled`,
    /// `latency_us`, `p99_us`, `drift`, and `class.NAME` (a weight; any
    /// `class.` key replaces the default two classes).
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        let (who, settings) = spec.split_once(':').ok_or_else(|| {
            format!("{spec:?}: expected VERSION:KEY=VALUE,… (e.g. v2:error_rate=0.2)")
        })?;
        let version = match who {
            "default" | "*" => None,
            v => Some(
                v.trim_start_matches('v')
                    .parse::<u64>()
                    .map_err(|_| format!("{spec:?}: {v:?} is not a version (v2, 2 or default)"))?,
            ),
        };
        let mut p = self.default.clone();
        let mut classes = BTreeMap::new();
        for kv in settings.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{spec:?}: {kv:?} is not KEY=VALUE"))?;
            let num = v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{spec:?}: {k}={v:?} is not a non-negative number"))?;
            let share = |x: f64| {
                (x <= 1.0)
                    .then_some(x)
                    .ok_or_else(|| format!("{spec:?}: {k}={v} is not a share in [0, 1]"))
            };
            let micros = |x: f64| {
                (1.0..=f64::from(u32::MAX))
                    .contains(&x)
                    .then_some(x as u32)
                    .ok_or_else(|| format!("{spec:?}: {k}={v} is not a latency in µs"))
            };
            if let Some(class) = k.strip_prefix("class.").filter(|c| !c.is_empty()) {
                classes.insert(class.to_string(), num);
                continue;
            }
            match k {
                "error_rate" => p.error_rate = share(num)?,
                "accuracy" => p.accuracy = share(num)?,
                "labelled" => p.labelled = share(num)?,
                "latency_us" => p.latency_us = micros(num)?,
                "p99_us" => p.p99_us = micros(num)?,
                "drift" => p.drift = num,
                _ => {
                    return Err(format!(
                        "{spec:?}: unknown key {k:?} (error_rate, accuracy, labelled, latency_us, p99_us, drift, class.NAME)"
                    ))
                }
            }
        }
        if !classes.is_empty() {
            if classes.values().sum::<f64>() <= 0.0 {
                return Err(format!("{spec:?}: class weights sum to 0"));
            }
            p.classes = classes;
        }
        match version {
            None => self.default = p,
            Some(v) => {
                self.by_version.insert(v, p);
            }
        }
        Ok(())
    }
}

/// How every simulated device reports.
#[derive(Clone, Debug)]
pub struct SimTelemetry {
    /// The broker; `None`: the one enrollment named.
    pub mqtt_url: Option<String>,
    pub window_secs: u64,
    /// Requests per device, model version and window.
    pub requests: u64,
    pub profiles: Profiles,
}

/// Drift summaries and events published (acknowledged by the broker)
/// across all devices.
#[derive(Default)]
pub struct TelemetryCounters {
    pub published: AtomicU64,
}

/// One window of `model@version` on `device` drawn from `p`.
pub fn summary(
    rng: &mut impl Rng,
    p: &Profile,
    requests: u64,
    model: &str,
    version: u64,
    end_ms: u64,
    window_ms: u64,
) -> DriftSummary {
    let mut latency_us = vec![0u64; LATENCY_BOUNDS_US.len() + 1];
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let total: f64 = p.classes.values().sum();
    let (mut errors, mut labelled, mut correct) = (0, 0, 0);
    for _ in 0..requests {
        let slow = rng.gen_bool(0.01);
        latency_us[latency_bucket(if slow { p.p99_us } else { p.latency_us })] += 1;
        if rng.gen_bool(p.error_rate) {
            errors += 1;
            continue;
        }
        let mut x = rng.gen_range(0.0..total.max(f64::MIN_POSITIVE));
        let mut class = None;
        for (c, w) in &p.classes {
            if x < *w {
                class = Some(c);
                break;
            }
            x -= w;
        }
        if let Some(c) = class.or_else(|| p.classes.keys().last()) {
            *classes.entry(c.clone()).or_insert(0) += 1;
        }
        if rng.gen_bool(p.labelled) {
            labelled += 1;
            correct += u64::from(rng.gen_bool(p.accuracy));
        }
    }
    DriftSummary {
        schema: TELEMETRY_SCHEMA,
        tenant: String::new(),
        device: String::new(),
        seq: 0,
        model: model.to_string(),
        version,
        variant: "champion".into(),
        window_start_ms: end_ms.saturating_sub(window_ms),
        window_end_ms: end_ms,
        closed_by: ClosedBy::Time,
        rows: requests,
        features: vec!["x0".into()],
        psi: vec![Some(p.drift)],
        missing: vec![0],
        out_of_range: vec![0],
        predictions: Predictions {
            output: "label".into(),
            classes,
            numeric: None,
        },
        latency_p50_us: histogram_quantile(&latency_us, 0.5),
        latency_p99_us: histogram_quantile(&latency_us, 0.99),
        latency_us,
        errors,
        requests,
        labelled,
        correct,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The device's telemetry settings, resolved as `ferry-agent run` resolves
/// an enrolled agent's (broker, tenant, device id, signing key, TLS).
pub fn config(dir: &Path, t: &SimTelemetry) -> Result<TelemetryConfig, String> {
    let id = super::Identity::load(dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: not enrolled", dir.display()))?;
    let fleet = super::fleet_dir(dir);
    let args = TelemetryArgs {
        mqtt_url: t.mqtt_url.clone(),
        window_secs: Some(t.window_secs.max(1)),
        ..Default::default()
    };
    let enrolled = Enrolled {
        mqtt_url: id.mqtt_url.as_deref(),
        tenant: &id.tenant,
        device_id: &id.device_id,
        dir: &fleet,
    };
    crate::telemetry::resolve(None, &args, Some(enrolled))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            "no telemetry broker: the control plane named none at enrollment; give one".to_string()
        })
}

fn seal(cfg: &TelemetryConfig, kind: &str, body: Vec<u8>) -> Vec<u8> {
    match &cfg.signer {
        Some(key) => sign_payload(kind, &body, key).unwrap_or(body),
        None => body,
    }
}

fn health(
    cfg: &TelemetryConfig,
    status: &str,
    at_ms: u64,
    protocol: Protocol,
    serving: Vec<String>,
) -> Vec<u8> {
    let h = Health {
        schema: TELEMETRY_SCHEMA,
        tenant: cfg.tenant.clone(),
        device: cfg.device.clone(),
        status: status.into(),
        at_ms,
        agent_version: concat!("sim-", env!("CARGO_PKG_VERSION")).into(),
        serving,
        outbox_depth: 0,
        outbox_dropped: 0,
        published: 0,
        mqtt_protocol: Some(protocol.level()),
        trust_root_expires_in: None,
        arch: Some(crate::telemetry::device_arch()),
    };
    seal(cfg, KIND_HEALTH, serde_json::to_vec(&h).unwrap_or_default())
}

/// What health says a device serves: `model@version/champion`.
fn serving_routes(served: &[(String, u64)]) -> Vec<String> {
    served
        .iter()
        .map(|(m, v)| format!("{m}@{v}/champion"))
        .collect()
}

/// A signed `activated` event, as the agent raises one.
fn event(
    cfg: &TelemetryConfig,
    seq: u64,
    at_ms: u64,
    kind: &str,
    model: &str,
    version: u64,
    previous: Option<u64>,
) -> Vec<u8> {
    let e = Event {
        schema: TELEMETRY_SCHEMA,
        tenant: cfg.tenant.clone(),
        device: cfg.device.clone(),
        seq,
        at_ms,
        kind: kind.into(),
        model: Some(model.into()),
        version: Some(version),
        detail: match previous {
            Some(p) => format!("champion, previous v{p}"),
            None => "champion".into(),
        },
    };
    seal(cfg, KIND_EVENTS, serde_json::to_vec(&e).unwrap_or_default())
}

struct Seq {
    next: u64,
    path: PathBuf,
}

impl Seq {
    fn load(dir: &Path) -> Self {
        let path = dir.join("sim-telemetry.seq");
        let next = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Self { next, path }
    }

    fn take(&mut self) -> u64 {
        let s = self.next;
        self.next += 1;
        if let Err(e) = std::fs::write(&self.path, self.next.to_string()) {
            tracing::warn!(path = %self.path.display(), error = %e, "simulated telemetry: sequence number not saved");
        }
        s
    }
}

/// Runs one simulated device's telemetry for ever: a window every
/// `t.window_secs` (the first after a random share of it, so devices do
/// not report in lockstep), published in order, one in flight, each kept
/// until the broker acknowledges it.
pub async fn run_device(
    dir: PathBuf,
    cfg: TelemetryConfig,
    act: Arc<SimActivator>,
    t: Arc<SimTelemetry>,
    counters: Arc<TelemetryCounters>,
) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut seq = Seq::load(&dir);
    let window = Duration::from_secs(t.window_secs.max(1));
    let first = window.mul_f64(rng.gen_range(0.0..1.0));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first, window);
    // Skip, not Delay: a tick held up (activations verify bundles on the
    // same threads) must not bring every device into one phase.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pending: VecDeque<(String, Vec<u8>)> = VecDeque::new();
    let mut negotiation = Negotiation::new(cfg.version);
    // (model, version) active at the last tick.
    let mut served: Vec<(String, u64)> =
        act.serving().into_iter().map(|(m, v, _)| (m, v)).collect();
    loop {
        let protocol = negotiation.next();
        let mut o = ferry_mqtt::Options::new(
            format!("ferry-{}-{}", cfg.tenant, cfg.device),
            cfg.url.clone(),
        );
        o.keep_alive = Duration::from_secs(30);
        o.tls = cfg.tls.clone();
        o.request_capacity = 16;
        o.will = Some(ferry_mqtt::Will {
            topic: topic(&cfg.tenant, &cfg.device, KIND_HEALTH),
            payload: health(&cfg, "offline", 0, protocol, vec![]),
            retain: true,
        });
        let (client, mut conn) = ferry_mqtt::connect(&o, protocol);
        // The event loop in its own task: its poll is not cancel-safe.
        let (tx, mut events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                let ev = conn.poll().await;
                let end = ev.is_err();
                if tx.send(ev).is_err() || end {
                    break;
                }
            }
        });
        let mut connected = false;
        // Publishes handed to the client (drift: true) awaiting their packet
        // id, and the packet id of the drift summary in flight.
        let mut sent: VecDeque<bool> = VecDeque::new();
        let mut in_flight: Option<Option<u16>> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let end = now_ms();
                    let window_ms = window.as_millis() as u64;
                    // As an agent does: an `activated` event per version
                    // that went live, and fresh health saying what it serves.
                    let now_serving: Vec<(String, u64)> = act.serving().into_iter().map(|(m, v, _)| (m, v)).collect();
                    if now_serving != served {
                        for (model, version) in now_serving.iter().filter(|x| !served.contains(x)) {
                            let previous = served.iter().find(|(m, _)| m == model).map(|(_, v)| *v);
                            let body = event(&cfg, seq.take(), end, "activated", model, *version, previous);
                            pending.push_back((topic(&cfg.tenant, &cfg.device, KIND_EVENTS), body));
                        }
                        served = now_serving;
                        if connected && client.try_publish(topic(&cfg.tenant, &cfg.device, KIND_HEALTH), health(&cfg, "online", end, protocol, serving_routes(&served)), true).is_ok() {
                            sent.push_back(false);
                        }
                    }
                    for (model, version, since) in act.serving() {
                        // As an agent's, a version's first window closes a
                        // whole window after it went live.
                        if end.saturating_sub(since) < window_ms {
                            continue;
                        }
                        let mut s = summary(&mut rng, t.profiles.of(version), t.requests, &model, version, end, window_ms);
                        s.tenant = cfg.tenant.clone();
                        s.device = cfg.device.clone();
                        s.seq = seq.take();
                        let body = seal(&cfg, KIND_DRIFT, serde_json::to_vec(&s).unwrap_or_default());
                        pending.push_back((topic(&cfg.tenant, &cfg.device, KIND_DRIFT), body));
                    }
                }
                ev = events.recv() => match ev {
                    Some(Ok(MqttEvent::Connected { .. })) => {
                        connected = true;
                        if client.try_publish(topic(&cfg.tenant, &cfg.device, KIND_HEALTH), health(&cfg, "online", now_ms(), protocol, serving_routes(&served)), true).is_ok() {
                            sent.push_back(false);
                        }
                    }
                    Some(Ok(MqttEvent::Sent { pkid })) => {
                        if sent.pop_front() == Some(true) {
                            in_flight = Some(Some(pkid));
                        }
                    }
                    Some(Ok(MqttEvent::PubAck { pkid, refused })) => {
                        if in_flight == Some(Some(pkid)) {
                            in_flight = None;
                            if refused.is_none() {
                                pending.pop_front();
                                counters.published.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(device = %cfg.device, error = %e, "simulated telemetry: broker connection lost");
                        negotiation.failed(&e);
                        break;
                    }
                    None => break,
                },
            }
            if connected && in_flight.is_none() {
                if let Some((topic, body)) = pending.front() {
                    if client
                        .try_publish(topic.clone(), body.clone(), false)
                        .is_ok()
                    {
                        sent.push_back(true);
                        in_flight = Some(None);
                    }
                }
            }
        }
        pump.abort();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Starts every device's telemetry (see [`run_device`]).
pub fn start_all(
    devices: &[(PathBuf, Arc<SimActivator>)],
    t: SimTelemetry,
    counters: Arc<TelemetryCounters>,
) -> Result<(), String> {
    let t = Arc::new(t);
    for (dir, act) in devices {
        let cfg = config(dir, &t)?;
        tokio::spawn(run_device(
            dir.clone(),
            cfg,
            act.clone(),
            t.clone(),
            counters.clone(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_per_version_with_a_default() {
        let mut p = Profiles::default();
        p.add("default:accuracy=0.95,labelled=0.5").unwrap();
        p.add("v2:error_rate=0.2,accuracy=0.8,class.a=3,class.b=1")
            .unwrap();
        assert_eq!(p.of(1).accuracy, 0.95);
        let v2 = p.of(2);
        assert_eq!((v2.error_rate, v2.accuracy, v2.labelled), (0.2, 0.8, 0.5));
        assert_eq!(v2.classes.len(), 2);
        for bad in [
            "v2",
            "vx:accuracy=1",
            "v2:accuracy=1.5",
            "v2:speed=3",
            "v2:latency_us=0",
            "v2:class.a=0",
            "v2:error_rate",
        ] {
            assert!(p.add(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn summaries_follow_the_profile() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let p = Profile {
            error_rate: 0.2,
            accuracy: 0.8,
            labelled: 1.0,
            latency_us: 700,
            p99_us: 40_000,
            drift: 0.5,
            classes: [("1".to_string(), 1.0)].into(),
        };
        let mut s = summary(&mut rng, &p, 20_000, "m", 2, 10_000, 5_000);
        (s.tenant, s.device) = ("t".into(), "d".into());
        s.validate().unwrap();
        let rate = |x: u64, n: u64| x as f64 / n as f64;
        // Binomial draws: within 5 standard deviations of the profile.
        assert!((rate(s.errors, s.requests) - 0.2).abs() < 5.0 * (0.16f64 / 20_000.0).sqrt());
        assert_eq!(s.labelled, s.requests - s.errors);
        assert!((rate(s.correct, s.labelled) - 0.8).abs() < 5.0 * (0.16f64 / 16_000.0).sqrt());
        assert_eq!(s.predictions.classes["1"], s.requests - s.errors);
        assert_eq!(s.latency_p50_us, 1000);
        assert_eq!(s.latency_us.iter().sum::<u64>(), 20_000);
        assert_eq!(s.psi, [Some(0.5)]);
        assert_eq!((s.window_start_ms, s.window_end_ms), (5_000, 10_000));
    }
}
