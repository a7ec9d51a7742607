//! The engine alone, no HTTP: one row through the batch-1 plan, and a
//! 100k-row batch through the symbolic plan, for the logistic regression
//! (hand-shaped export, and skl2onnx's default one with ai.onnx.ml Scaler +
//! LinearClassifier) and the digits MLP fixtures (bundled and verified like
//! on a device).
//!
//!   cargo bench -p ferry-agent --bench engine
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry_agent::engine::Input;
use ferry_agent::serving::verify_and_load;
use ferry_protocol::TensorData;

fn bench(c: &mut Criterion) {
    let keys = common::Keys::new();
    let mut g = c.benchmark_group("engine");
    g.sample_size(20);
    for model in ["bc_logreg", "bc_logreg_default", "digits_mlp"] {
        let bundle = keys.bundle(model, model, 1);
        let loaded = verify_and_load(&keys.trust, &bundle, common::now(), |_| None).unwrap();
        let rows = common::reference_rows(model);
        let width = rows[0].len();
        let one: Vec<f32> = rows[0].iter().map(|x| *x as f32).collect();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{model}/one_row"), |b| {
            b.iter(|| {
                loaded
                    .engine
                    .run(vec![Input {
                        shape: vec![1, width],
                        data: TensorData::F32(one.clone()),
                    }])
                    .unwrap()
            })
        });
        let n = 100_000;
        let batch: Vec<f32> = (0..n)
            .flat_map(|i| rows[i % rows.len()].iter().map(|x| *x as f32))
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{model}/100k_rows_one_thread"), |b| {
            b.iter(|| {
                loaded
                    .engine
                    .run(vec![Input {
                        shape: vec![n, width],
                        data: TensorData::F32(batch.clone()),
                    }])
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
