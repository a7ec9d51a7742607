//! `ferry-seed-dashboard`: fills a control plane's database with a fleet and
//! its history for the dashboard's speed benchmark
//! (`scripts/bench/dashboard_speed.py`, which registers the models itself
//! through the CLI): N enrolled devices with labels and health, and D days
//! of one-minute windows of one model from T of them.
//!
//!   ferry-seed-dashboard --database sqlite://…/ferry.db --devices 10000 \
//!       --telemetry-devices 200 --days 30 --model model-0000 --versions 4,5
//!
//! The last day's windows are stored as windows (the server's roll-up job
//! rolls them up, as it does what devices send); the days before arrive
//! already summed, through the roll-up's own arithmetic
//! (`telemetry::rollup::sum`, `Store::add_rollups`), keeping what the
//! default retention keeps (per-device minutes for 14 days).
use anyhow::Context;
use clap::Parser;
use ferry::audit::{AuditEntry, OUTCOME_OK};
use ferry::store::fleet::Device;
use ferry::store::rollups::{Resolution, RollupWindow};
use ferry::store::Store;
use ferry::telemetry::rollup::{self, Retention};
use ferry_protocol::telemetry::DriftSummary;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    database: String,
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    #[arg(long, default_value_t = 200)]
    telemetry_devices: usize,
    #[arg(long, default_value_t = 30)]
    days: i64,
    #[arg(long, default_value = "model-0000")]
    model: String,
    /// Versions the telemetry devices run: the first as champion on half of
    /// them, the second as challenger on the rest.
    #[arg(long, default_value = "4,5")]
    versions: String,
    #[arg(long, default_value = "default")]
    tenant: String,
}

const MINUTE: i64 = 60_000;
const FEATURES: [&str; 6] = ["age", "amount", "balance", "country", "hour", "merchant"];

fn entry(tenant: &str, action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        tenant: tenant.into(),
        request_id: "seed".into(),
        actor: "ferry-seed-dashboard".into(),
        action: action.into(),
        target: target.into(),
        outcome: OUTCOME_OK.into(),
        detail: "seeded for the dashboard benchmark".into(),
    }
}

fn device_id(i: usize) -> String {
    format!("dev_{i:08x}")
}

/// A deterministic value in [0, 1) for (a, b).
fn noise(a: u64, b: u64) -> f64 {
    let mut x = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Device `d`'s window ending at `end_ms`, as the agent would summarise it.
fn summary(a: &Args, versions: (u64, u64), d: usize, seq: u64, end_ms: i64) -> DriftSummary {
    let (version, variant) = if d.is_multiple_of(2) {
        (versions.0, "champion")
    } else {
        (versions.1, "challenger")
    };
    let n = noise(d as u64, end_ms as u64);
    let requests = 40 + (n * 80.0) as u64;
    // A drift episode on one feature in the middle of the range.
    let day = end_ms / (24 * 60 * MINUTE);
    let psi: Vec<Option<f64>> = FEATURES
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let base = 0.02 + 0.08 * noise(i as u64, end_ms as u64 ^ d as u64);
            Some(if i == 1 && day % 10 == 3 {
                base + 0.35
            } else {
                base
            })
        })
        .collect();
    let labelled = requests / 4;
    let json = serde_json::json!({
        "schema": 1,
        "tenant": a.tenant,
        "device": device_id(d),
        "seq": seq,
        "model": a.model,
        "version": version,
        "variant": variant,
        "window_start_ms": end_ms - MINUTE,
        "window_end_ms": end_ms,
        "closed_by": "time",
        "rows": requests,
        "features": FEATURES,
        "psi": psi,
        "missing": vec![0; FEATURES.len()],
        "out_of_range": vec![0; FEATURES.len()],
        "predictions": {"output": "label", "classes": {"0": requests / 2, "1": requests - requests / 2}},
        "latency_us": [],
        "latency_p50_us": 300 + (n * 200.0) as u32,
        "latency_p99_us": 900 + (n * 1500.0) as u32,
        "errors": (n * 3.0) as u64,
        "requests": requests,
        "labelled": labelled,
        "correct": labelled - (labelled as f64 * (0.05 + 0.05 * n)) as u64,
    });
    // The schema is the agent's; a mistake here is the seeder's bug.
    serde_json::from_value(json).unwrap_or_else(|e| panic!("seeded summary: {e}"))
}

fn max_psi(s: &DriftSummary) -> f64 {
    s.psi.iter().flatten().fold(-1.0, |m, p| m.max(*p))
}

fn as_window(s: &DriftSummary) -> RollupWindow {
    let psi = max_psi(s);
    RollupWindow {
        tenant: s.tenant.clone(),
        device: s.device.clone(),
        seq: s.seq as i64,
        model: s.model.clone(),
        version: s.version as i64,
        variant: s.variant.clone(),
        window_end_ms: s.window_end_ms as i64,
        rows_seen: s.rows as i64,
        requests: s.requests as i64,
        errors: s.errors as i64,
        latency_p50_us: i64::from(s.latency_p50_us),
        latency_p99_us: i64::from(s.latency_p99_us),
        labelled: s.labelled as i64,
        correct: s.correct as i64,
        max_psi: psi,
        drifted: psi >= 0.3,
        summary: serde_json::json!({"features": s.features, "psi": s.psi}).to_string(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let (v0, v1) = a
        .versions
        .split_once(',')
        .and_then(|(x, y)| Some((x.trim().parse().ok()?, y.trim().parse().ok()?)))
        .context("--versions: two version numbers, e.g. 4,5")?;
    let store = Store::connect(&a.database, 4).await?;
    let now = store.now_ms();
    let t = Instant::now();

    for i in 0..a.devices {
        let id = device_id(i);
        let mut labels = BTreeMap::new();
        labels.insert("site".to_string(), format!("site-{:02}", i % 40));
        labels.insert(
            "hw".to_string(),
            ["rpi4", "jetson", "x86"][i % 3].to_string(),
        );
        let d = Device {
            id: id.clone(),
            tenant: a.tenant.clone(),
            hostname: format!("edge-{i:05}"),
            labels,
            created_at: now / 1000 - 86_400 * a.days,
            revoked_at: None,
            last_seen: None,
            session_until: None,
            runtimes: None,
        };
        store
            .enroll_device(
                &d,
                &format!("{:064x}", i),
                &[0u8; 32],
                entry(&a.tenant, "device.enroll", &id),
            )
            .await?;
        let arch = ["aarch64-linux", "aarch64-linux", "x86_64-linux"][i % 3];
        let serving: Vec<String> = if i < a.telemetry_devices {
            vec![format!(
                "{}@{}",
                a.model,
                if i.is_multiple_of(2) { v0 } else { v1 }
            )]
        } else {
            vec![]
        };
        let health = serde_json::json!({
            "schema": 1, "tenant": a.tenant, "device": id,
            "status": if i.is_multiple_of(17) { "offline" } else { "online" },
            "at_ms": now, "agent_version": "0.1.0",
            "serving": serving, "mqtt_protocol": 5, "arch": arch,
        });
        store
            .put_device_health(
                &a.tenant,
                &id,
                if i.is_multiple_of(17) {
                    "offline"
                } else {
                    "online"
                },
                now,
                &health.to_string(),
                now,
            )
            .await?;
    }
    println!("devices {} ({:.1} s)", a.devices, t.elapsed().as_secs_f64());

    // History older than a day: summed here, in batches of 25 minutes.
    let keep_minutes = now - Retention::default().minute_days * 24 * 60 * MINUTE;
    let first = Resolution::Minute.bucket(now) - a.days * 24 * 60 * MINUTE;
    let recent = Resolution::Minute.bucket(now) - 24 * 60 * MINUTE;
    let mut end = first + MINUTE;
    let mut seq = 0u64;
    let mut summed = 0usize;
    let t = Instant::now();
    while end <= recent {
        let mut batch = Vec::with_capacity(25 * a.telemetry_devices);
        for _ in 0..25 {
            if end > recent {
                break;
            }
            for d in 0..a.telemetry_devices {
                batch.push(as_window(&summary(&a, (v0, v1), d, seq, end)));
            }
            seq += 1;
            end += MINUTE;
        }
        summed += batch.len();
        let mut sums = rollup::sum(&batch);
        // What the default retention would have aged out already.
        sums.retain(|k, _| {
            !(k.resolution == Resolution::Minute
                && !k.device.is_empty()
                && k.bucket_ms < keep_minutes)
        });
        store.add_rollups(sums).await?;
    }
    println!(
        "windows summed {summed} ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    // The last day: stored as windows, for the server to roll up.
    let t = Instant::now();
    let mut stored = 0usize;
    while end <= Resolution::Minute.bucket(now) {
        for d in 0..a.telemetry_devices {
            let s = summary(&a, (v0, v1), d, seq, end);
            let raw = serde_json::to_string(&s)?;
            let psi = max_psi(&s);
            store.insert_window(&s, psi, psi >= 0.3, &raw, end).await?;
            stored += 1;
        }
        seq += 1;
        end += MINUTE;
    }
    println!(
        "windows stored {stored} ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    store.analyze().await?;
    Ok(())
}
