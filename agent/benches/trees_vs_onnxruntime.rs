#![allow(clippy::unwrap_used)]
//! Tree-ensemble throughput and latency, driven by
//! scripts/bench/trees_vs_onnxruntime.py (which runs onnxruntime on the same
//! model and rows and prints the ratios).
//!
//! cargo bench -p ferry-agent --bench trees_vs_onnxruntime -- \
//!     MODEL.onnx ROWS.f32 FEATURES THREADS [--stock-tract]
//!
//! ROWS.f32 is little-endian float32, row-major. Prints one JSON line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::trees;
use tract_onnx::prelude::*;

fn plan(onnx: &tract_onnx::Onnx, path: &str, f: usize) -> Arc<TypedRunnableModel> {
    let mut model = onnx.model_for_path(path).unwrap();
    let n = model.sym("N");
    model
        .set_input_fact(
            0,
            InferenceFact::dt_shape(f32::datum_type(), tvec![TDim::Sym(n), f.to_dim()]),
        )
        .unwrap();
    model.into_optimized().unwrap().into_runnable().unwrap()
}

fn input(rows: &[f32], n: usize, f: usize) -> TValue {
    tract_ndarray::Array2::from_shape_vec((n, f), rows[..n * f].to_vec())
        .unwrap()
        .into_tensor()
        .into()
}

/// Best of `reps` runs over the whole batch, in rows per second.
fn batch_rows_per_s(
    plan: &Arc<TypedRunnableModel>,
    x: &[f32],
    n: usize,
    f: usize,
    reps: usize,
) -> f64 {
    let t = input(x, n, f);
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let start = Instant::now();
        std::hint::black_box(plan.run(tvec!(t.clone())).unwrap());
        best = best.min(start.elapsed());
    }
    n as f64 / best.as_secs_f64()
}

/// Median single-row latency over rotating rows, in microseconds.
fn single_row_us(plan: &Arc<TypedRunnableModel>, x: &[f32], f: usize, budget: Duration) -> f64 {
    let rows: Vec<TValue> = (0..256).map(|r| input(&x[r * f..], 1, f)).collect();
    let mut samples = vec![];
    let deadline = Instant::now() + budget;
    let mut i = 0;
    while Instant::now() < deadline || samples.len() < 100 {
        // Time batches of 16 calls so the clock's own cost does not dominate.
        let start = Instant::now();
        for _ in 0..16 {
            std::hint::black_box(plan.run(tvec!(rows[i % rows.len()].clone())).unwrap());
            i += 1;
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6 / 16.0);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (model, data, f, threads) = (
        &args[0],
        &args[1],
        args[2].parse::<usize>().unwrap(),
        args[3].parse().unwrap(),
    );
    let stock = args.iter().any(|a| a == "--stock-tract");
    let bytes = std::fs::read(data).unwrap();
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n = x.len() / f;

    trees::set_threads(threads);
    // The agent's front end: Ferry's trees and its other ONNX-ML operators.
    let ours = plan(&ferry_agent::engine::onnx(), model, f);
    // Warm up caches and the allocator.
    batch_rows_per_s(&ours, &x, n.min(10_000), f, 2);
    let rows_per_s = batch_rows_per_s(&ours, &x, n, f, 5);
    let latency = single_row_us(&ours, &x, f, Duration::from_secs(2));

    let mut stock_fields = String::new();
    if stock {
        // Stock tract is far slower: a 2,000-row batch is enough to measure it.
        let theirs = plan(&onnx(), model, f);
        let m = n.min(2_000);
        let r = batch_rows_per_s(&theirs, &x, m, f, 2);
        let l = single_row_us(&theirs, &x, f, Duration::from_millis(500));
        stock_fields =
            format!(r#","stock_tract_rows_per_s":{r:.0},"stock_tract_single_row_us":{l:.3}"#);
    }
    println!(
        r#"{{"rows":{n},"threads":{threads},"rows_per_s":{rows_per_s:.0},"single_row_us":{latency:.3}{stock_fields}}}"#
    );
}
