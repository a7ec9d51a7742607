//! Dynamic shapes and control flow on the fixtures made by
//! `tests/fixtures/make_shape_fixtures.py`: a graph tract cannot type with
//! symbolic shapes runs on one plan per input shape, within the cache's
//! bounds; an `If` on an input the publisher fixed folds away, and a request
//! sending another value is refused; `ferry bundle build --check` refuses
//! an untypeable graph on the build machine.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fixtures, http, Conn, Keys, Process, Served};
use ferry::bundle_build::{build, BuildError};
use ferry::input_shapes::{parse_const_input, parse_input_shape, ShapeDim};
use ferry_agent::engine::{Engine, Input, LoadOptions, RunError};
use ferry_agent::plan_cache::{CacheBounds, PlanStats};
use ferry_agent::serving::{Agent, Role};
use ferry_protocol::{DType, Dim, ModelName, Schema, Tensor, TensorData, TensorSpec};
use serde_json::json;
use std::path::{Path, PathBuf};

fn model(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(format!("{name}.onnx"))).unwrap()
}

fn reshape_schema() -> Schema {
    Schema {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![Dim::Symbolic("N".into()), Dim::Symbolic("?".into())],
        }],
        outputs: vec![TensorSpec {
            name: "y".into(),
            dtype: DType::F32,
            shape: vec![Dim::Symbolic("?".into())],
        }],
    }
}

fn rate_schema() -> Schema {
    Schema {
        inputs: vec![
            TensorSpec {
                name: "x".into(),
                dtype: DType::F32,
                shape: vec![Dim::Fixed(1), Dim::Symbolic("?".into())],
            },
            TensorSpec {
                name: "sr".into(),
                dtype: DType::I64,
                shape: vec![],
            },
        ],
        outputs: vec![TensorSpec {
            name: "y".into(),
            dtype: DType::F32,
            shape: vec![Dim::Symbolic("?".into())],
        }],
    }
}

fn sr(v: i64) -> Tensor {
    Tensor {
        name: "sr".into(),
        shape: vec![],
        data: TensorData::I64(vec![v]),
    }
}

fn f32s(out: &ferry_agent::engine::Output) -> Vec<f32> {
    match &out.data {
        TensorData::F32(v) => v.clone(),
        other => panic!("{other:?}"),
    }
}

/// The computed reshape: `x [n, w]` → sums of `w/2` consecutive values.
fn pair_sums(n: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..n * w).map(|i| (i % 17) as f32 * 0.5).collect();
    let y = x.chunks(w / 2).map(|c| c.iter().sum()).collect();
    (x, y)
}

#[test]
fn a_graph_untypeable_with_symbols_runs_one_plan_per_shape_within_the_bounds() {
    let bounds = CacheBounds {
        plans: 8,
        bytes: 1 << 30,
    };
    let engine = Engine::load_with(
        &model("dynamic_reshape"),
        &reshape_schema(),
        &LoadOptions {
            cache: bounds,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert!(
        engine.per_shape(),
        "the fixture types symbolically: it tests nothing"
    );
    // A stream of 100 distinct shapes, every answer right, the cache never
    // over its bound.
    for k in 1..=100 {
        let (n, w) = (1 + k % 3, 2 * k);
        let (x, want) = pair_sums(n, w);
        let out = engine
            .run(vec![Input {
                shape: vec![n, w],
                data: TensorData::F32(x),
            }])
            .unwrap();
        assert_eq!(f32s(&out[0]), want, "shape [{n}, {w}]");
        assert!(PlanStats::get(&engine.plan_stats().entries) <= 8);
    }
    // The same shape again is a cache hit, not a compile.
    let stats = engine.plan_stats();
    let compiles = PlanStats::get(&stats.compiles);
    let (x, want) = pair_sums(2, 200);
    let out = engine
        .run(vec![Input {
            shape: vec![2, 200],
            data: TensorData::F32(x),
        }])
        .unwrap();
    assert_eq!(f32s(&out[0]), want);
    assert_eq!(PlanStats::get(&stats.compiles), compiles);
    assert!(PlanStats::get(&stats.hits) >= 1);
    // One compile at load, one per distinct shape.
    assert_eq!(compiles, 101);
    assert_eq!(PlanStats::get(&stats.evictions), 100 - 8);
}

#[test]
fn an_if_on_a_fixed_input_folds_and_other_values_are_refused() {
    let bytes = model("if_on_rate");
    // Without the fixed value tract cannot type the If, symbolically or for
    // a concrete shape: requests are refused.
    let engine = Engine::load_with(&bytes, &rate_schema(), &LoadOptions::default()).unwrap();
    assert!(engine.symbolic_failure().unwrap().contains("If"));
    let e = engine
        .run(vec![
            Input {
                shape: vec![1, 512],
                data: TensorData::F32(vec![0.0; 512]),
            },
            Input {
                shape: vec![],
                data: TensorData::I64(vec![16000]),
            },
        ])
        .unwrap_err();
    assert!(matches!(e, RunError::Shapes(_)), "{e}");
    for (rate, frame) in [(16000, 256), (8000, 128)] {
        let engine = Engine::load_with(
            &bytes,
            &rate_schema(),
            &LoadOptions {
                const_inputs: vec![sr(rate)],
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let x: Vec<f32> = (0..1024).map(|i| (i % 7) as f32).collect();
        let want: Vec<f32> = x.chunks(frame).map(|c| c.iter().sum()).collect();
        let input = |v: i64| {
            vec![
                Input {
                    shape: vec![1, 1024],
                    data: TensorData::F32(x.clone()),
                },
                Input {
                    shape: vec![],
                    data: TensorData::I64(vec![v]),
                },
            ]
        };
        assert_eq!(f32s(&engine.run(input(rate)).unwrap()[0]), want);
        let e = engine.run(input(rate + 1)).unwrap_err().to_string();
        assert!(e.contains(&format!("fixes it to {rate}")), "{e}");
    }
}

fn vectors(dir: &Path, doc: serde_json::Value) -> PathBuf {
    let p = dir.join("vectors.json");
    std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
    p
}

#[test]
fn bundle_check_refuses_an_untypeable_graph_and_accepts_it_with_the_fixed_input() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let hidden = indicatif::ProgressBar::hidden();
    let e = build(
        &keys.fixture_spec("if_on_rate", dir.path(), |_| {}),
        &hidden,
    )
    .err()
    .unwrap();
    assert!(
        matches!(e, BuildError::Check(_)) && e.to_string().contains("If"),
        "{e}"
    );
    assert!(!dir.path().join("if_on_rate.ferry").exists());
    // Test vectors with sr = 16000: without the fixed value no plan compiles
    // for them either; with it the check passes.
    let x: Vec<f32> = vec![1.0; 512];
    let tv = vectors(
        dir.path(),
        json!({"tolerance": 1e-5, "vectors": [{
            "inputs": {"x": {"shape": [1, 512], "datatype": "FP32", "data": x},
                       "sr": {"shape": [], "datatype": "INT64", "data": [16000]}},
            "outputs": {"y": {"shape": [2], "datatype": "FP32", "data": [256.0, 256.0]}}}]}),
    );
    let e = build(
        &keys.fixture_spec("if_on_rate", dir.path(), |s| {
            s.test_vectors = Some(tv.clone())
        }),
        &hidden,
    )
    .err()
    .unwrap();
    assert!(matches!(e, BuildError::Check(_)), "{e}");
    let built = build(
        &keys.fixture_spec("if_on_rate", dir.path(), |s| {
            s.const_inputs = vec![parse_const_input("sr=16000").unwrap()];
            s.test_vectors = Some(tv);
        }),
        &hidden,
    )
    .unwrap();
    assert_eq!(built.manifest.const_inputs, vec![sr(16000)]);
    // With every dimension pinned there is one shape: the check compiles it
    // without test vectors (here the pinned graph even types as it is).
    let pinned = build(
        &keys.fixture_spec("if_on_rate", dir.path(), |s| {
            s.const_inputs = vec![parse_const_input("sr=16000").unwrap()];
            s.input_shapes = vec![parse_input_shape("x=1,1024").unwrap()];
        }),
        &hidden,
    )
    .unwrap();
    assert!(pinned.check.is_some());
    assert_eq!(
        pinned.manifest.schema.inputs[0].shape,
        vec![Dim::Fixed(1), Dim::Fixed(1024)]
    );
    // The graph's dims as it states them; unnamed ones as "?".
    assert_eq!(
        built.manifest.schema.inputs[0].shape,
        vec![Dim::Fixed(1), Dim::Symbolic("?".into())]
    );
    // A per-shape graph needs test vectors for the check to compile; with
    // them it passes, and the pinned shape is signed in the schema.
    let e = build(
        &keys.fixture_spec("dynamic_reshape", dir.path(), |_| {}),
        &hidden,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("--test-vectors"), "{e}");
    let (x, y) = pair_sums(2, 8);
    let tv = vectors(
        dir.path(),
        json!({"tolerance": 1e-5, "vectors": [{
            "inputs": {"x": {"shape": [2, 8], "datatype": "FP32", "data": x}},
            "outputs": {"y": {"shape": [4], "datatype": "FP32", "data": y}}}]}),
    );
    let built = build(
        &keys.fixture_spec("dynamic_reshape", dir.path(), |s| {
            s.test_vectors = Some(tv);
            s.input_shapes = vec![parse_input_shape("x=batch,-1").unwrap()];
        }),
        &hidden,
    )
    .unwrap();
    assert!(built.check.unwrap().per_shape);
    assert_eq!(
        built.manifest.schema.inputs[0].shape,
        vec![Dim::Symbolic("batch".into()), Dim::Symbolic("?".into())]
    );
    assert_eq!(
        parse_input_shape("x=1,3,48,-1").unwrap().1,
        vec![
            ShapeDim::Size(1),
            ShapeDim::Size(3),
            ShapeDim::Size(48),
            ShapeDim::Dynamic
        ]
    );
}

#[test]
fn over_http_dynamic_dims_read_minus_one_and_a_different_fixed_value_is_a_400() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let hidden = indicatif::ProgressBar::hidden();
    let bundle = dir.path().join("if_on_rate.ferry");
    let x: Vec<f32> = (0..512).map(|i| (i % 5) as f32).collect();
    let want: Vec<f32> = x.chunks(256).map(|c| c.iter().sum()).collect();
    // The folded graph still computes a shape (x__1 / 256): per-shape plans,
    // which the check compiles for the test vector's shape.
    let tv = vectors(
        dir.path(),
        json!({"tolerance": 1e-5, "vectors": [{
            "inputs": {"x": {"shape": [1, 512], "datatype": "FP32", "data": x},
                       "sr": {"shape": [], "datatype": "INT64", "data": [16000]}},
            "outputs": {"y": {"shape": [2], "datatype": "FP32", "data": want}}}]}),
    );
    build(
        &keys.fixture_spec("if_on_rate", dir.path(), |s| {
            s.name = ModelName::new("vad").unwrap();
            s.const_inputs = vec![parse_const_input("sr=16000").unwrap()];
            s.test_vectors = Some(tv);
        }),
        &hidden,
    )
    .unwrap();
    let agent = Agent::open(keys.options(data.path())).unwrap();
    agent.install(&bundle, Role::Champion, None).unwrap();
    let served = Served::start(agent, 1 << 20);
    let meta = http(served.addr, "GET", "/v2/models/vad", b"").json();
    assert_eq!(meta["inputs"][0]["shape"], json!([1, -1]), "{meta}");
    let body = |rate: i64| {
        serde_json::to_vec(&json!({"inputs": [
            {"name": "x", "shape": [1, 512], "datatype": "FP32", "data": x},
            {"name": "sr", "shape": [], "datatype": "INT64", "data": [rate]}]}))
        .unwrap()
    };
    let mut conn = Conn::open(served.addr).unwrap();
    let ok = conn
        .request(
            "POST",
            "/v2/models/vad/infer",
            &[("content-type", "application/json")],
            &body(16000),
        )
        .unwrap();
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let got: Vec<f64> = ok.json()["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got, want.iter().map(|v| f64::from(*v)).collect::<Vec<_>>());
    let bad = conn
        .request(
            "POST",
            "/v2/models/vad/infer",
            &[("content-type", "application/json")],
            &body(8000),
        )
        .unwrap();
    assert_eq!(bad.status, 400);
    // A request may leave the fixed input out.
    let without = serde_json::to_vec(&json!({"inputs": [
        {"name": "x", "shape": [1, 512], "datatype": "FP32", "data": x}]}))
    .unwrap();
    let r = conn
        .request(
            "POST",
            "/v2/models/vad/infer",
            &[("content-type", "application/json")],
            &without,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let text = String::from_utf8_lossy(&bad.body);
    assert!(
        text.contains("fixes it to 16000") && text.contains("8000"),
        "{text}"
    );
    // Compiles (at activation, then the test vector's shape) and the cache
    // in /metrics; the request of the same shape was a hit.
    let metrics = String::from_utf8(http(served.addr, "GET", "/metrics", b"").body).unwrap();
    let line = |name: &str| {
        let prefix = format!("{name}{{model=\"vad\",version=\"1\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(line("ferry_plan_compiles_total"), 2.0);
    assert!(line("ferry_plan_compile_seconds_total") > 0.0);
    assert_eq!(line("ferry_plan_cache_entries"), 1.0);
    assert!(line("ferry_plan_cache_hits_total") >= 1.0);
}

/// A value of one `/metrics` line for `model`.
fn metric(text: &str, name: &str, model: &str) -> u64 {
    let prefix = format!("{name}{{model=\"{model}\",version=\"1\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// `n` requests of distinct shapes to a real agent process over OIP; every
/// answer is checked, and the plan cache's gauges after each request.
fn distinct_shapes(agent: &Process, n: usize, check: impl Fn(u64, u64)) {
    let mut conn = Conn::open(agent.addr).unwrap();
    for k in 1..=n {
        let (rows, w) = (1 + k % 3, 2 * k);
        let (x, want) = pair_sums(rows, w);
        let body = serde_json::to_vec(&json!({"inputs": [
            {"name": "x", "shape": [rows, w], "datatype": "FP32", "data": x}]}))
        .unwrap();
        let r = conn
            .request(
                "POST",
                "/v2/models/reshape/infer",
                &[("content-type", "application/json")],
                &body,
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let got: Vec<f32> = r.json()["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, want, "shape [{rows}, {w}]");
        let m = conn.request("GET", "/metrics", &[], b"").unwrap();
        let text = String::from_utf8(m.body).unwrap();
        check(
            metric(&text, "ferry_plan_cache_entries", "reshape"),
            metric(&text, "ferry_plan_cache_bytes", "reshape"),
        );
    }
}

#[test]
fn the_agent_binary_keeps_its_configured_plan_cache_bounds_over_100_shapes() {
    let keys = Keys::new();
    let bundle = keys.bundle("dynamic_reshape", "reshape", 1);
    let trust = keys.trust_path.to_str().unwrap();
    let model_bytes = std::fs::metadata(fixtures().join("dynamic_reshape.onnx"))
        .unwrap()
        .len();
    let spawn = |dir: &Path, bound: &[&str]| {
        let mut args = vec![
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--trust",
            trust,
            "--listen",
            "127.0.0.1:0",
            "--data",
            dir.to_str().unwrap(),
            "--threads",
            "2",
        ];
        args.extend(bound);
        Process::spawn(&args)
    };
    // The count bound: 100 distinct shapes, never more than 8 plans.
    let data = tempfile::tempdir().unwrap();
    let mut agent = spawn(data.path(), &["--plan-cache-plans", "8"]);
    let pid = agent.child.id();
    distinct_shapes(&agent, 20, |entries, _| assert!(entries <= 8, "{entries}"));
    let rss_20 = rss_kib(pid);
    distinct_shapes(&agent, 100, |entries, _| assert!(entries <= 8, "{entries}"));
    let rss_100 = rss_kib(pid);
    let text = String::from_utf8(http(agent.addr, "GET", "/metrics", b"").body).unwrap();
    assert_eq!(metric(&text, "ferry_plan_cache_entries", "reshape"), 8);
    // The first 20 shapes came back once more: 100 distinct in all, one
    // compile at activation, the 20 repeats evicted by then.
    assert_eq!(metric(&text, "ferry_plan_compiles_total", "reshape"), 121);
    assert_eq!(
        metric(&text, "ferry_plan_cache_evictions_total", "reshape"),
        120 - 8
    );
    eprintln!("agent RSS: {rss_20} KiB after 20 shapes, {rss_100} KiB after 120");
    agent.kill9();
    // The byte bound: each plan is charged the model's size; room for 3.
    let data = tempfile::tempdir().unwrap();
    let bytes = (3 * model_bytes).to_string();
    let mut agent = spawn(data.path(), &["--plan-cache-bytes", &bytes]);
    distinct_shapes(&agent, 30, |entries, charged| {
        assert!(entries <= 3, "{entries}");
        assert!(charged <= 3 * model_bytes, "{charged}");
    });
    agent.kill9();
}

fn conv_schema() -> Schema {
    let sym = |s: &str| Dim::Symbolic(s.into());
    Schema {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![sym("N"), Dim::Fixed(4), sym("H"), sym("W")],
        }],
        outputs: vec![TensorSpec {
            name: "y".into(),
            dtype: DType::F32,
            shape: vec![sym("N"), Dim::Fixed(2), sym("H"), sym("W")],
        }],
    }
}

#[test]
fn a_repeated_shape_of_a_conv_graph_gets_a_plan_of_its_own_with_the_same_answers() {
    // A grouped convolution: tract's, whose fast kernels need the shape.
    let bytes = model("grouped_conv_dynamic");
    let shaped = Engine::load_with(&bytes, &conv_schema(), &LoadOptions::default()).unwrap();
    let symbolic = Engine::load_with(
        &bytes,
        &conv_schema(),
        &LoadOptions {
            symbolic_only: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert!(!shaped.per_shape(), "the fixture should type with symbols");
    let stats = shaped.plan_stats();
    let at_load = PlanStats::get(&stats.compiles);
    let run = |e: &Engine, n: usize, h: usize, w: usize| {
        let x: Vec<f32> = (0..n * 4 * h * w)
            .map(|i| ((i * 7) % 13) as f32 * 0.25 - 1.5)
            .collect();
        let out = e
            .run(vec![Input {
                shape: vec![n, 4, h, w],
                data: TensorData::F32(x),
            }])
            .unwrap();
        assert_eq!(out[0].shape, vec![n, 2, h, w]);
        f32s(&out[0])
    };
    // One camera-like stream of 8×12 frames, one odd 5×7 batch of two.
    for (k, (n, h, w)) in [(1, 8, 12), (1, 8, 12), (1, 8, 12), (2, 5, 7), (1, 8, 12)]
        .into_iter()
        .enumerate()
    {
        let (a, b) = (run(&shaped, n, h, w), run(&symbolic, n, h, w));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 + 1e-4 * y.abs(),
                "request {k} [{n}, 4, {h}, {w}] value {i}: {x} specialised, {y} symbolic"
            );
        }
    }
    // The repeated shape compiled once, at its second request; the shape
    // seen once compiled nothing; the symbolic-only engine never compiles.
    assert_eq!(PlanStats::get(&stats.compiles), at_load + 1);
    assert_eq!(PlanStats::get(&stats.entries), 1);
    assert!(PlanStats::get(&stats.hits) >= 2);
    let plain = symbolic.plan_stats();
    assert_eq!(PlanStats::get(&plain.compiles), at_load);
    assert_eq!(PlanStats::get(&plain.entries), 0);
}

#[test]
fn a_depth_wise_graph_runs_on_its_symbolic_plan_and_compiles_nothing_per_shape() {
    // Ferry's depth-wise kernel takes any shape: no plan per shape, and no
    // second copy of the weights, for the mobile CNN block.
    let engine = Engine::load_with(
        &model("dw_conv_dynamic"),
        &conv_schema(),
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(!engine.per_shape());
    let stats = engine.plan_stats();
    let at_load = PlanStats::get(&stats.compiles);
    for (n, h, w) in [(1, 8, 12), (1, 8, 12), (2, 5, 7), (1, 8, 12)] {
        let out = engine
            .run(vec![Input {
                shape: vec![n, 4, h, w],
                data: TensorData::F32(vec![0.5; n * 4 * h * w]),
            }])
            .unwrap();
        assert_eq!(out[0].shape, vec![n, 2, h, w]);
    }
    assert_eq!(PlanStats::get(&stats.compiles), at_load);
    assert_eq!(PlanStats::get(&stats.entries), 0);
}
