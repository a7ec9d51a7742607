//! Inference-log write cost per request: encode, frame into the pending
//! group, and the group's share of its sled insert, for a realistic record
//! (30 bin indices, label and 2 probabilities). Budget: ≤ 5 µs per record.
//!
//! Every measurement ends with the pending group stored, so the sled work is
//! inside the time, not left to the writer thread. `cpu_per_record` counts
//! the CPU time of every thread of the process (the writer's included), which
//! is what a request costs a busy device.
//!
//!   cargo bench -p ferry-agent --bench inference_log
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry_agent::inference_log::{Durability, Entry, InferenceLog, InferenceRecord};
use ferry_protocol::{Tensor, TensorData};
use std::time::{Duration, Instant};

fn record(i: u64) -> Entry {
    Entry::Inference(InferenceRecord {
        time_ms: 1_700_000_000_000 + i,
        model: "fraud".into(),
        version: 7,
        variant: "champion".into(),
        latency_us: 42,
        request_id: Some(format!("req-{i}")),
        error: None,
        outputs: vec![
            Tensor {
                name: "label".into(),
                shape: vec![1],
                data: TensorData::I64(vec![1]),
            },
            Tensor {
                name: "probabilities".into(),
                shape: vec![1, 2],
                data: TensorData::F32(vec![0.12, 0.88]),
            },
        ],
        bins: vec![(0..30).map(|f| (f % 10) as u8).collect()],
        payload: None,
    })
}

/// CPU time of every thread of the process (`/proc/self/task/*/schedstat`,
/// nanoseconds on the CPU).
fn process_cpu() -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let stat =
            std::fs::read_to_string(task.unwrap().path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(ns)
}

fn appends(log: &InferenceLog, records: &[Entry], iters: u64, clock: fn() -> Duration) -> Duration {
    let start = clock();
    for i in 0..iters {
        log.append(&records[i as usize % records.len()]).unwrap();
    }
    log.store().unwrap();
    clock() - start
}

fn wall() -> Duration {
    thread_local!(static T0: Instant = Instant::now());
    T0.with(|t| t.elapsed())
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // 8 MiB bound: the bench writes far more, so trimming runs throughout.
    let log = InferenceLog::open(dir.path(), 8 << 20, Durability::Async, 100).unwrap();
    let records: Vec<Entry> = (0..1024).map(record).collect();
    let mut g = c.benchmark_group("inference_log");
    g.throughput(Throughput::Elements(1));
    // Far below its bound: the insert alone.
    let roomy_dir = tempfile::tempdir().unwrap();
    let roomy = InferenceLog::open(roomy_dir.path(), 1 << 40, Durability::Async, 100).unwrap();
    g.bench_function("append_below_bound", |b| {
        b.iter_custom(|n| appends(&roomy, &records, n, wall))
    });
    g.bench_function("append_at_bound", |b| {
        b.iter_custom(|n| appends(&log, &records, n, wall))
    });
    g.bench_function("cpu_per_record_at_bound", |b| {
        b.iter_custom(|n| appends(&log, &records, n, process_cpu))
    });
    // Concurrent appenders (the server's worker threads).
    g.throughput(Throughput::Elements(4 * 1000));
    g.bench_function("append_4_threads_x1000", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (log, records) = (&log, &records);
                    s.spawn(move || {
                        for k in 0..1000 {
                            log.append(&records[(t * 1000 + k) % records.len()])
                                .unwrap();
                        }
                    });
                }
            });
            log.store().unwrap();
        })
    });
    g.finish();
    let s = log.stats();
    eprintln!(
        "log after bench: {} records, {} bytes (bound {}), {} dropped",
        s.records, s.bytes, s.max_bytes, s.dropped
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
