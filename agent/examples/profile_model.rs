//! Where a model's time goes in tract: every node of the optimised plan
//! timed over a number of runs, summed by operator, on the inputs of a
//! corpus case file (`scripts/models/fetch_corpus.py`). The plan is the one
//! the agent compiles for concrete input shapes (Ferry's ONNX front end,
//! decluttered, with Ferry's own kernels swapped in, and optimised); kernels run on `THREADS` threads as with the
//! agent's `threads` knob.
//!
//!   cargo run --release -p ferry-agent --example profile_model -- \
//!     target/model-corpus/nudenet-320n [RUNS] [THREADS] [tract]
//!
//! `FERRY_PROFILE_BATCH=8` stacks the case's inputs 8 times on the first
//! axis (the benchmark's batch requests). `FERRY_PROFILE_SYMBOLIC=1` builds
//! the plan as the agent does for a dynamic-batch model: typed with a
//! symbolic first axis, then the symbol set to the rows.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).map(String::as_str).unwrap_or("."));
    let runs: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let threads: usize = args.get(3).map_or(Ok(1), |s| s.parse())?;
    ferry_agent::executor::set_threads(threads);
    let case: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("case.json"))?)?;
    let onnx = ferry_agent::engine::onnx();
    let mut proto = onnx.proto_model_for_path(dir.join("model.onnx"))?;
    // As the agent does for per-shape plans: the exporter's shape
    // annotations are in its own symbols, which concrete shapes contradict.
    ferry_agent::const_fold::dedupe_node_names(&mut proto);
    ferry_agent::const_fold::drop_shape_annotations(&mut proto);
    let mut model = onnx.model_for_proto_model(&proto)?;
    // FERRY_PROFILE_SYMBOLIC=1: the plan the agent compiles for a
    // dynamic-batch model's block of rows: typed with a symbolic first axis,
    // our kernels swapped in, then the symbol set (concrete::symbol_set_plan).
    let symbolic = std::env::var("FERRY_PROFILE_SYMBOLIC").is_ok_and(|v| !v.is_empty());
    let batch_symbol = model.sym("N");
    let mut rows = 1;
    let mut inputs: TVec<TValue> = tvec![];
    for (i, t) in case["inputs"].as_array().unwrap().iter().enumerate() {
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let raw = std::fs::read(dir.join(t["file"].as_str().unwrap()))?;
        let tensor = match t["datatype"].as_str().unwrap() {
            "FP32" => {
                let v: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                Tensor::from_shape(&shape, &v)?
            }
            "INT64" => {
                let v: Vec<i64> = raw
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                Tensor::from_shape(&shape, &v)?
            }
            "INT32" => {
                let v: Vec<i32> = raw
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                Tensor::from_shape(&shape, &v)?
            }
            other => anyhow::bail!("datatype {other}"),
        };
        // FERRY_PROFILE_BATCH=N: the input stacked N times on its first
        // axis, as the benchmark's batch requests are.
        let batch: usize = std::env::var("FERRY_PROFILE_BATCH").map_or(Ok(1), |s| s.parse())?;
        rows = batch * tensor.shape().first().copied().unwrap_or(1);
        let tensor = if batch > 1 {
            let copies: Vec<Tensor> = (0..batch).map(|_| tensor.clone()).collect();
            Tensor::stack_tensors(0, &copies)?
        } else {
            tensor
        };
        if symbolic {
            // The first axis a symbol, as the agent types a dynamic-batch
            // model before it sets the batch.
            let mut dims: TVec<TDim> = tensor.shape().iter().map(|&d| d.to_dim()).collect();
            dims[0] = batch_symbol.clone().into();
            model.set_input_fact(i, InferenceFact::dt_shape(tensor.datum_type(), dims))?;
        } else {
            model.set_input_fact(i, InferenceFact::from(tensor.clone()).without_value())?;
        }
        inputs.push(tensor.into_tvalue());
    }
    let started = Instant::now();
    if std::env::var_os("FERRY_PROFILE_DECLUTTERED").is_some() {
        let typed = model.clone().into_typed()?.into_decluttered()?;
        for n in typed.nodes() {
            let ins: Vec<String> = n
                .inputs
                .iter()
                .map(|i| format!("{:?}", typed.outlet_fact(*i).map(|f| f.shape.clone())))
                .collect();
            println!("#{} {:?} {}  in {}", n.id, n.op, n.name, ins.join(" "));
        }
        return Ok(());
    }
    // `tract` as the fourth argument: tract's own plan, for comparison.
    let plan = if args.get(4).is_some_and(|a| a == "tract") {
        model.into_optimized()?.into_runnable()?
    } else if symbolic {
        let typed = ferry_agent::engine::symbolic_typed(model.into_typed()?)?;
        ferry_agent::concrete::symbol_set_plan(&typed, batch_symbol, rows)?
    } else {
        ferry_agent::engine::optimise(model.into_typed()?)?
    };
    eprintln!("compiled in {:.2} s", started.elapsed().as_secs_f64());
    if std::env::var_os("FERRY_PROFILE_NODES").is_some() {
        for n in &plan.model().nodes {
            let facts: Vec<String> = n.outputs.iter().map(|o| format!("{:?}", o.fact)).collect();
            eprintln!(
                "{} {} {} <- {:?}",
                n.id,
                n.op().name(),
                facts.join(" "),
                n.inputs
            );
            // What the op says of itself: for tract's products, the kernel
            // its cost model chose.
            for line in n.op().info()? {
                eprintln!("    {line}");
            }
        }
    }
    let mut by_op: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut by_node: BTreeMap<usize, f64> = BTreeMap::new();
    let mut total = 0.0;
    let mut fastest = f64::MAX;
    for run in 0..runs + 2 {
        let mut state = plan.spawn()?;
        let mut times: Vec<(usize, String, f64)> = Vec::new();
        let t0 = Instant::now();
        state.run_plan_with_eval(inputs.clone(), |ctx, op_state, node, ins| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, ins);
            times.push((
                node.id,
                node.op().name().to_string(),
                t.elapsed().as_secs_f64(),
            ));
            r
        })?;
        // Two warm-up runs are not counted.
        if run >= 2 {
            total += t0.elapsed().as_secs_f64();
            fastest = fastest.min(t0.elapsed().as_secs_f64());
            for (id, op, s) in times {
                *by_node.entry(id).or_default() += s;
                let e = by_op.entry(op).or_default();
                e.0 += s;
                e.1 += 1;
            }
        }
    }
    let mut rows: Vec<_> = by_op.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!(
        "{}: {:.2} ms per run, fastest {:.2} ({runs} runs, {threads} thread(s))",
        dir.display(),
        total / runs as f64 * 1e3,
        fastest * 1e3
    );
    println!("| op | ms per run | share | nodes |\n|---|---:|---:|---:|");
    for (op, (s, n)) in rows.iter().take(12) {
        println!(
            "| {op} | {:.2} | {:.0}% | {} |",
            s / runs as f64 * 1e3,
            100.0 * s / total,
            n / runs
        );
    }
    // FERRY_PROFILE_TOP=N: the N slowest nodes, with their inputs' shapes.
    let top: usize = std::env::var("FERRY_PROFILE_TOP").map_or(Ok(0), |s| s.parse())?;
    let mut nodes: Vec<_> = by_node.into_iter().collect();
    nodes.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (id, s) in nodes.iter().take(top) {
        let n = &plan.model().nodes[*id];
        let ins: Vec<String> = n
            .inputs
            .iter()
            .map(|i| {
                format!(
                    "{:?}",
                    plan.model().outlet_fact(*i).map(|f| f.shape.clone())
                )
            })
            .collect();
        println!(
            "{:.3} ms  #{} {} {}  in {}  out {:?}",
            s / runs as f64 * 1e3,
            id,
            n.op().name(),
            n.name,
            ins.join(" "),
            n.outputs[0].fact.shape
        );
    }
    Ok(())
}
