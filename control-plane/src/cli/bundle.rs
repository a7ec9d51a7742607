use crate::bundle_build::{self, BuildSpec};
use crate::input_shapes::ShapeDim;
use crate::keyfile;
use anyhow::Context;
use clap::Subcommand;
use ferry_protocol::bundle;
use ferry_protocol::manifest::{Lineage, TargetConstraints};
use ferry_protocol::ModelName;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Build and sign a bundle from an ONNX model
    Build {
        model: PathBuf,
        #[arg(long)]
        name: ModelName,
        #[arg(long)]
        version: u64,
        /// Reference data (CSV with a header row of feature names) for drift
        #[arg(long)]
        baseline: Option<PathBuf>,
        #[arg(long, default_value_t = ferry_protocol::baseline::DEFAULT_BINS)]
        bins: usize,
        #[arg(long = "tag", value_parser = super::parse_kv)]
        tags: Vec<(String, String)>,
        #[arg(long = "metric", value_parser = super::parse_kv)]
        metrics: Vec<(String, String)>,
        #[arg(long)]
        parent_version: Option<u64>,
        #[arg(long)]
        training_run: Option<String>,
        #[arg(long)]
        data_hash: Option<String>,
        /// Target architectures allowed to run it (x86_64, aarch64, arm)
        #[arg(long = "arch")]
        architectures: Vec<String>,
        #[arg(long)]
        min_agent_version: Option<String>,
        /// The engine devices must serve it on: tract, burn (any GPU
        /// backend) or burn-cuda|burn-wgpu|burn-cpu; deployments then
        /// target only devices that offer it
        #[arg(long, value_parser = parse_runtime)]
        runtime: Option<ferry_protocol::RequiredRuntime>,
        /// Inputs with expected outputs that agents check before activation
        #[arg(long)]
        test_vectors: Option<PathBuf>,
        /// Pin or name an input's dimensions: NAME=D,D,… with each D a size,
        /// -1 for dynamic, or a symbol name (repeatable)
        #[arg(long = "input-shape", value_parser = parse_input_shape)]
        input_shapes: Vec<(String, Vec<ShapeDim>)>,
        /// Rename a dimension the graph names: GRAPH_NAME=NEW_NAME (repeatable)
        #[arg(long = "symbol", value_parser = parse_symbol)]
        symbols: Vec<(String, String)>,
        /// Fix an input for every request: NAME=VALUE[,VALUE…]; branches on
        /// it fold away and requests must send the same value (repeatable)
        #[arg(long = "const-input", value_parser = parse_const_input)]
        const_inputs: Vec<(String, String)>,
        /// Compile the model with the agent's runtime and run the test
        /// vectors before signing; refuse what a device would refuse
        #[arg(long)]
        check: bool,
        /// The bundle stops verifying after this long
        #[arg(long, value_parser = super::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// Publisher private key (repeat for several signatures)
        #[arg(long = "sign-with", required = true)]
        sign_with: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a bundle against a trust root
    Verify {
        bundle: PathBuf,
        #[arg(long)]
        trust: PathBuf,
        /// Refuse versions below this (what a device already runs)
        #[arg(long)]
        highest_seen: Option<u64>,
        /// Verify as of this Unix time instead of now
        #[arg(long)]
        at: Option<u64>,
    },
    /// Print a bundle's manifest and signatures as JSON (nothing verified)
    Inspect { bundle: PathBuf },
}

fn progress_bar() -> ProgressBar {
    let pb = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn parse_runtime(s: &str) -> Result<ferry_protocol::RequiredRuntime, String> {
    ferry_protocol::RequiredRuntime::parse(s)
}

pub fn run(cmd: BundleCmd) -> anyhow::Result<()> {
    match cmd {
        BundleCmd::Build {
            model,
            name,
            version,
            baseline,
            bins,
            tags,
            metrics,
            parent_version,
            training_run,
            data_hash,
            architectures,
            min_agent_version,
            runtime,
            test_vectors,
            input_shapes,
            symbols,
            const_inputs,
            check,
            expires_in,
            sign_with,
            out,
        } => {
            let metrics = metrics
                .into_iter()
                .map(|(k, v)| {
                    v.parse::<f64>()
                        .map(|x| (k.clone(), x))
                        .with_context(|| format!("--metric {k}={v}: not a number"))
                })
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            let signers = sign_with
                .iter()
                .map(|p| keyfile::read_signing_key(p))
                .collect::<Result<Vec<_>, _>>()?;
            let now = crate::now_unix();
            let spec = BuildSpec {
                model,
                name,
                version,
                baseline,
                bins,
                tags: tags
                    .into_iter()
                    .chain(
                        runtime.map(|r| (ferry_protocol::RUNTIME_TAG.to_string(), r.to_string())),
                    )
                    .collect(),
                metrics,
                lineage: Lineage {
                    parent_version,
                    training_run,
                    data_hash,
                },
                created_at: now,
                expires_at: expires_in.map(|d| now + d.as_secs()),
                target: TargetConstraints {
                    architectures,
                    min_agent_version,
                },
                test_vectors,
                input_shapes,
                symbols,
                const_inputs,
                check,
                signers,
                out: out.clone(),
            };
            let built = bundle_build::build(&spec, &progress_bar())?;
            if let Some(c) = &built.check {
                println!(
                    "check: compiled by the agent's runtime ({}), {} test vector(s) passed",
                    if c.per_shape {
                        "one plan per input shape"
                    } else {
                        "symbolic shapes"
                    },
                    c.vectors
                );
            }
            println!(
                "built {} v{} sha256:{} ({} bytes) -> {}",
                built.manifest.model,
                built.manifest.version,
                built.digest,
                built.bytes,
                out.display()
            );
            if built.manifest.accepts_non_finite() {
                println!(
                    "inputs: NaN and infinity accepted ({}={} in the signed manifest)",
                    ferry_protocol::manifest::NON_FINITE_TAG,
                    ferry_protocol::manifest::NON_FINITE_ACCEPT
                );
            }
            Ok(())
        }
        BundleCmd::Verify {
            bundle: path,
            trust,
            highest_seen,
            at,
        } => {
            let now = at.unwrap_or_else(crate::now_unix);
            let root = keyfile::read_trust_root(&trust, now)?;
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let pb = progress_bar();
            pb.set_length(file.metadata().map(|m| m.len()).unwrap_or(0));
            pb.set_message("verifying");
            let mut reader = std::io::BufReader::new(pb.wrap_read(file));
            let verified =
                bundle::read_verified(&mut reader, &root, now, highest_seen, |_, _| Ok(()))
                    .map_err(|e| anyhow::anyhow!("{}: bundle refused: {e}", path.display()))?;
            pb.finish_and_clear();
            let m = verified.manifest.manifest();
            println!(
                "OK {} v{} sha256:{}",
                m.model,
                m.version,
                verified.manifest.digest()
            );
            Ok(())
        }
        BundleCmd::Inspect { bundle: path } => {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let header = bundle::read_header(&mut std::io::BufReader::new(file))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let manifest = header
                .peek_manifest()
                .map_err(|e| anyhow::anyhow!("{}: manifest: {e}", path.display()))?;
            let doc = serde_json::json!({
                "digest": ferry_protocol::keys::sha256(&header.manifest).to_hex(),
                "manifest": manifest,
                "signatures": header.signatures,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
    }
}

fn parse_input_shape(s: &str) -> Result<(String, Vec<ShapeDim>), String> {
    crate::input_shapes::parse_input_shape(s).map_err(|e| e.to_string())
}

fn parse_symbol(s: &str) -> Result<(String, String), String> {
    crate::input_shapes::parse_symbol(s).map_err(|e| e.to_string())
}

fn parse_const_input(s: &str) -> Result<(String, String), String> {
    crate::input_shapes::parse_const_input(s).map_err(|e| e.to_string())
}
