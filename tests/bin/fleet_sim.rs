//! `ferry-fleet-sim`: N simulated devices in one process against a real
//! control plane (real enrollment, mutual-TLS QUIC sessions, downloads and
//! bundle verification; no model execution). See `agent/src/fleet/sim.rs`
//! and `scripts/bench/fleet_sim.py`, which drives it for the 1,000-agent
//! benchmark.
//!
//!   ferry-fleet-sim --server HOST:PORT --token T --ca ca.pem --dir DIR \
//!       --devices 1000 [--expect 1000] [--timeout-secs 300]
//!
//! Prints `enrolled N`, `running N`, then `activated=N at=UNIX_SECONDS`
//! once `--expect` activations happened and keeps the devices connected
//! until SIGTERM or Ctrl-C (exit 0); exits 1 on timeout.
//!
//! With `--telemetry` every device also reports drift summaries over MQTT
//! as an agent does (signed with its enrollment key, to the broker it was
//! given at enrollment or `--mqtt-url`), one per active model version every
//! `--telemetry-window-secs`, drawn from the version's profile:
//!
//!   --telemetry --telemetry-profile 'v2:error_rate=0.2,accuracy=0.8'
//!
//! (keys: `agent/src/fleet/sim_telemetry.rs`). It prints `telemetry N`
//! once the devices' publishers run.
use anyhow::Context;
use clap::Parser;
use ferry_agent::fleet::sim::{enroll_all, run_all, wait_activated, SimCounters, SimOptions};
use ferry_agent::fleet::sim_telemetry::{start_all, Profiles, SimTelemetry, TelemetryCounters};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    server: String,
    #[arg(long)]
    token: String,
    #[arg(long)]
    ca: PathBuf,
    /// The tenant's trust root fingerprint (`ferry device token create`
    /// prints it); every simulated device pins it.
    #[arg(long)]
    root_fingerprint: String,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Activations to wait for (default: one per device)
    #[arg(long)]
    expect: Option<u64>,
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Per-device download limit, bytes/s
    #[arg(long)]
    max_bytes_per_sec: Option<u64>,
    /// Report telemetry over MQTT from every device
    #[arg(long)]
    telemetry: bool,
    /// The broker (default: the one each device was given at enrollment)
    #[arg(long)]
    mqtt_url: Option<String>,
    /// Seconds between a device's windows
    #[arg(long, default_value_t = 10)]
    telemetry_window_secs: u64,
    /// Requests per device, model version and window
    #[arg(long, default_value_t = 100)]
    telemetry_requests: u64,
    /// VERSION:KEY=VALUE,… (repeatable; `default:…` for versions not named),
    /// e.g. v2:error_rate=0.2,accuracy=0.8
    #[arg(long = "telemetry-profile")]
    telemetry_profiles: Vec<String>,
    /// The runtimes every device's hello offers (`onnx`, `onnx-burn-cuda`,
    /// …); bundles that require another are refused, as an agent would
    #[arg(long, value_delimiter = ',', default_value = "onnx")]
    runtimes: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let opts = SimOptions {
            server: args.server.clone(),
            token: args.token.clone(),
            ca: args.ca.clone(),
            pin: ferry_agent::fleet::RootPin::Fingerprint(args.root_fingerprint.clone()),
            dir: args.dir.clone(),
            devices: args.devices,
            enroll_concurrency: args.enroll_concurrency,
            max_bytes_per_sec: args.max_bytes_per_sec,
        };
        let dirs = enroll_all(&opts).await.context("enrolling")?;
        println!("enrolled {}", dirs.len());
        let mut profiles = Profiles::default();
        for p in &args.telemetry_profiles {
            profiles.add(p).map_err(anyhow::Error::msg)?;
        }
        let counters = Arc::new(SimCounters::default());
        let devices = run_all(
            &dirs,
            args.max_bytes_per_sec,
            counters.clone(),
            &args.runtimes,
        )
        .context("starting sessions")?;
        println!("running {}", dirs.len());
        if args.telemetry || !args.telemetry_profiles.is_empty() {
            let t = SimTelemetry {
                mqtt_url: args.mqtt_url.clone(),
                window_secs: args.telemetry_window_secs,
                requests: args.telemetry_requests,
                profiles,
            };
            start_all(&devices, t, Arc::new(TelemetryCounters::default()))
                .map_err(anyhow::Error::msg)
                .context("starting telemetry")?;
            println!("telemetry {}", devices.len());
        }
        std::io::stdout().flush()?;
        let expect = args.expect.unwrap_or(dirs.len() as u64);
        match wait_activated(&counters, expect, Duration::from_secs(args.timeout_secs)).await {
            Some(_) => {
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                println!(
                    "activated={} at={at:.3} refused={} verified_bytes={}",
                    counters.activated.load(Ordering::Relaxed),
                    counters.refused.load(Ordering::Relaxed),
                    counters.bytes_verified.load(Ordering::Relaxed)
                );
                std::io::stdout().flush()?;
                // Keep the sessions up (their last reports may still be on
                // the way, and the control plane should see the devices
                // connected) until told to stop.
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                Ok(())
            }
            None => anyhow::bail!(
                "timed out: {} of {expect} activated, {} refused",
                counters.activated.load(Ordering::Relaxed),
                counters.refused.load(Ordering::Relaxed)
            ),
        }
    })
}
