//! `ferry-agent bench` (tabular engine throughput on a CSV) and
//! `ferry-agent bench-model` (one model's latency on the tensors of a case
//! file, with the kernel thread count set): measurements of the engine the
//! agent serves with, for the scripts in `scripts/bench/`.

use crate::clock::{Clock, SystemClock};
use crate::engine::Input;
use anyhow::{bail, Context, Result};
use ferry_protocol::{TensorData, TrustRoot};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long, env = "FERRY_AGENT_TRUST")]
    pub trust: PathBuf,
    /// Numeric CSV (header row) whose rows are tiled to `--rows`.
    #[arg(long)]
    pub csv: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Best of this many runs.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Threads the batch is split over (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Rows per engine call, as `score --batch-rows`.
    #[arg(long, default_value_t = 4096)]
    pub batch_rows: usize,
}

/// In-process engine throughput: one batch of `rows` rows cut into blocks the
/// way `score` cuts them, spread over the cores. Prints one JSON line.
pub fn bench_cmd(trust: &TrustRoot, args: BenchArgs) -> Result<()> {
    let loaded = crate::serving::verify_and_load_for(
        trust,
        &args.bundle,
        SystemClock.now_unix(),
        |_| None,
        crate::engine::PlanFor::Blocks(args.batch_rows),
    )?;
    let text = std::fs::read_to_string(&args.csv)
        .with_context(|| format!("reading {}", args.csv.display()))?;
    let mut src: Vec<Vec<f32>> = Vec::new();
    for (i, l) in text.lines().enumerate().skip(1) {
        if l.trim().is_empty() {
            continue;
        }
        let row = l
            .split(',')
            .map(|x| x.trim().parse::<f32>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} line {}", args.csv.display(), i + 1))?;
        src.push(row);
    }
    let width = src.first().map(Vec::len).context("the CSV has no rows")?;
    let rows = args.rows.max(1);
    let data: Vec<f32> = (0..rows)
        .flat_map(|i| src[i % src.len()].iter().copied())
        .collect();
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    // Blocks as `score` cuts them; each thread takes every `threads`-th one.
    let block = args.batch_rows.max(1) * width;
    let blocks: Vec<&[f32]> = data.chunks(block).collect();
    let mut best = f64::INFINITY;
    for _ in 0..args.repeat.max(1) {
        // Input tensors are built before the clock starts, as onnxruntime's
        // are (its script times `run` on a ready array).
        let mut lanes: Vec<Vec<tract_onnx::prelude::Tensor>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (i, b) in blocks.iter().enumerate() {
            lanes[i % threads].push(tract_onnx::prelude::Tensor::from_shape(
                &[b.len() / width, width],
                b,
            )?);
        }
        let t0 = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = lanes
                .into_iter()
                .map(|lane| {
                    let engine = &loaded.engine;
                    s.spawn(move || -> Result<(), crate::engine::RunError> {
                        for block in lane {
                            engine.run_block(block)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                match h.join() {
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => bail!("a scoring thread panicked"),
                }
            }
            Ok(())
        })?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "{{\"rows\":{rows},\"threads\":{threads},\"best_s\":{best:.6},\"rows_per_s\":{:.0}}}",
        rows as f64 / best
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ModelBenchArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long, env = "FERRY_AGENT_TRUST")]
    pub trust: PathBuf,
    /// JSON with `inputs`: `[{name, datatype, shape, file}]`, each file the
    /// raw little-endian values (the corpus's `case.json`); files are read
    /// relative to it.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Kernel threads, as the agent's `threads` knob (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed runs: at least this many...
    #[arg(long, default_value_t = 20)]
    pub min_runs: usize,
    /// ...and for at least this long (seconds), up to `--max-runs`.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 100_000)]
    pub max_runs: usize,
    /// Serve from the symbolic plans only, never from plans specialised to
    /// the request's shapes (what the agent did before they existed).
    #[arg(long)]
    pub symbolic_only: bool,
    /// The engine to measure: `tract`, `burn` or `auto` (as the agent's
    /// `--engine`).
    #[arg(long, default_value = "tract")]
    pub engine: crate::engine_choice::EngineChoice,
    /// The burn engine's backend (`cuda`, `wgpu`, `cpu`), as `--gpu-backend`.
    #[arg(long)]
    pub gpu_backend: Option<String>,
}

/// One input of a case file.
#[derive(serde::Deserialize)]
struct CaseInput {
    name: String,
    datatype: String,
    shape: Vec<usize>,
    file: String,
}

#[derive(serde::Deserialize)]
struct CaseFile {
    inputs: Vec<CaseInput>,
}

fn decode(t: &CaseInput, raw: &[u8]) -> Result<TensorData> {
    fn le<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                f(b)
            })
            .collect()
    }
    Ok(match t.datatype.as_str() {
        "FP32" => TensorData::F32(le(raw, f32::from_le_bytes)),
        "FP64" => TensorData::F64(le(raw, f64::from_le_bytes)),
        "INT64" => TensorData::I64(le(raw, i64::from_le_bytes)),
        "INT32" => TensorData::I32(le(raw, i32::from_le_bytes)),
        "BOOL" => TensorData::Bool(raw.iter().map(|b| *b != 0).collect()),
        other => bail!("input {:?}: datatype {other} is not benchmarked", t.name),
    })
}

/// The case's inputs in the model's schema order.
fn read_inputs(path: &Path, schema: &ferry_protocol::Schema) -> Result<Vec<Input>> {
    let case: CaseFile = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not a case file", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    schema
        .inputs
        .iter()
        .map(|spec| {
            let t = case
                .inputs
                .iter()
                .find(|t| t.name == spec.name)
                .with_context(|| format!("{}: no input {:?}", path.display(), spec.name))?;
            let file = dir.join(&t.file);
            let raw =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            Ok(Input {
                shape: t.shape.clone(),
                data: decode(t, &raw)?,
            })
        })
        .collect()
}

/// The `q` quantile of sorted `v`, nearest rank.
fn quantile(v: &[f64], q: f64) -> f64 {
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Single-request latency of a bundle's model as the agent serves it (the
/// serving plans, each run converting the request's values into tract's
/// tensors as a request does). Prints one JSON line, times in µs.
pub fn bench_model_cmd(trust: &TrustRoot, args: ModelBenchArgs) -> Result<()> {
    let threads = crate::executor::set_threads(match args.threads {
        0 => crate::executor::default_threads(),
        n => n,
    });
    let started = Instant::now();
    let loaded = crate::serving::verify_and_load_with(
        trust,
        &args.bundle,
        SystemClock.now_unix(),
        |_| None,
        crate::engine::LoadOptions {
            symbolic_only: args.symbolic_only,
            engine: crate::engine_choice::EngineSelect {
                choice: args.engine,
                gpu_backend: args.gpu_backend.clone(),
            },
            ..Default::default()
        },
    )?;
    let info = loaded.engine.info();
    let load_s = started.elapsed().as_secs_f64();
    let inputs = read_inputs(&args.inputs, loaded.engine.schema())?;
    for _ in 0..args.warmup {
        loaded.engine.run(inputs.clone())?;
    }
    let mut times = Vec::new();
    let t0 = Instant::now();
    while times.len() < args.max_runs.max(1)
        && (times.len() < args.min_runs.max(1) || t0.elapsed().as_secs_f64() < args.seconds)
    {
        // The clone is the request's decoded values; `run` consumes them.
        let batch = inputs.clone();
        let t = Instant::now();
        loaded.engine.run(batch)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"engine\":\"{}\",\"backend\":\"{}\",\"threads\":{threads},\"runs\":{},\"load_s\":{load_s:.3},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{mean:.1},\"min_us\":{:.1},\"per_shape\":{}}}",
        info.engine,
        info.backend.unwrap_or("cpu"),
        times.len(),
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times[0],
        loaded.engine.per_shape()
    );
    Ok(())
}
