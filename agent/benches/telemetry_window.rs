//! Drift accounting on the inference path: the cost `Windows::observe` adds
//! to one request of the 30-feature breast-cancer model (the bin indices are
//! already computed for the inference log), with and without a request id
//! remembered for label feedback, windows closing every 1,000 rows (summary
//! with PSI built on the request path, amortised). Budget: ≤ 2 µs/request.
//! Also prints the JSON size of a 30-feature drift summary (budget ≤ 2 KB).
//!
//!   cargo bench -p ferry-agent --bench telemetry_window
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use ferry::bundle_build::{build, BuildSpec};
use ferry_agent::engine::{Input, Output};
use ferry_agent::serving::verify_and_load;
use ferry_agent::telemetry::window::Observation;
use ferry_agent::telemetry::{WindowConfig, Windows};
use ferry_protocol::trust::{Publisher, SignedTrustRoot, TrustRoot};
use ferry_protocol::{ModelName, PublicKey, TensorData};
use std::path::Path;
use std::sync::Arc;

fn loaded() -> Arc<ferry_agent::serving::LoadedModel> {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let root = SigningKey::from_bytes(&[1; 32]);
    let publisher = SigningKey::from_bytes(&[2; 32]);
    let trust = TrustRoot {
        tenant: "bench".into(),
        version: 1,
        expires_at: now + 86_400,
        threshold: 1,
        root_keys: vec![PublicKey::from_signing_key(&root)],
        publishers: vec![Publisher {
            name: "b".into(),
            key: PublicKey::from_signing_key(&publisher),
            scopes: vec!["*".into()],
        }],
        publisher_threshold: 1,
        revoked: vec![],
    };
    let _ = SignedTrustRoot::sign(&trust, &[&root]);
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
    let out = dir.path().join("bc.ferry");
    build(
        &BuildSpec {
            model: fx.join("bc_logreg.onnx"),
            name: ModelName::new("bc").unwrap(),
            version: 1,
            baseline: Some(fx.join("bc_logreg.baseline.csv")),
            bins: 10,
            tags: Default::default(),
            metrics: Default::default(),
            lineage: Default::default(),
            created_at: now,
            expires_at: None,
            target: Default::default(),
            test_vectors: None,
            input_shapes: Vec::new(),
            symbols: Vec::new(),
            const_inputs: Vec::new(),
            check: false,
            signers: vec![publisher],
            out: out.clone(),
        },
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    Arc::new(verify_and_load(&trust, &out, now, |_| None).unwrap())
}

fn bench(c: &mut Criterion) {
    let loaded = loaded();
    let baseline = loaded.manifest.baseline.clone().unwrap();
    let row: Vec<f32> = (0..30).map(|i| 0.5 + i as f32).collect();
    let input = Input {
        shape: vec![1, 30],
        data: TensorData::F32(row.clone()),
    };
    let mut bins = Vec::new();
    baseline.bin_row(
        &row.iter().map(|x| f64::from(*x)).collect::<Vec<_>>(),
        &mut bins,
    );
    let bins = vec![bins];
    let outputs = vec![
        Output {
            name: "label".into(),
            shape: vec![1],
            data: TensorData::I64(vec![1]),
        },
        Output {
            name: "probabilities".into(),
            shape: vec![1, 2],
            data: TensorData::F32(vec![0.12, 0.88]),
        },
    ];
    let windows = Windows::default();
    windows.enable(WindowConfig {
        rows: 1000,
        secs: 0,
    });
    let mut now = 1_795_449_360_000u64;
    let mut g = c.benchmark_group("drift_accounting");
    g.bench_function("observe_30_features", |b| {
        b.iter(|| {
            now += 1;
            windows.observe(Observation {
                model: "bc",
                manifest: &loaded.manifest,
                variant: "champion",
                input: Some(&input),
                bins: &bins,
                outputs: Some(&outputs),
                latency_us: 80,
                request_id: None,
                now_ms: now,
            });
            if now.is_multiple_of(1000) {
                windows.take_closed();
            }
        })
    });
    let mut i = 0u64;
    g.bench_function("observe_30_features_with_request_id", |b| {
        b.iter(|| {
            i += 1;
            let id = format!("req-{i}");
            windows.observe(Observation {
                model: "bc",
                manifest: &loaded.manifest,
                variant: "champion",
                input: Some(&input),
                bins: &bins,
                outputs: Some(&outputs),
                latency_us: 80,
                request_id: Some(&id),
                now_ms: 1_795_449_360_000 + i,
            });
            if i.is_multiple_of(1000) {
                windows.take_closed();
            }
        })
    });
    g.finish();
    // Summary size: one full window of 1,000 rows.
    windows.take_closed();
    for _ in 0..1000 {
        windows.observe(Observation {
            model: "bc",
            manifest: &loaded.manifest,
            variant: "champion",
            input: Some(&input),
            bins: &bins,
            outputs: Some(&outputs),
            latency_us: 80,
            request_id: None,
            now_ms: 1_795_449_360_000,
        });
    }
    let mut s = windows.take_closed().pop().unwrap();
    s.tenant = "acme".into();
    s.device = "edge-0017".into();
    s.seq = 123_456;
    let json = serde_json::to_vec(&s).unwrap();
    println!("drift summary, 30 features: {} bytes of JSON", json.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
