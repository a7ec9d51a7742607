use crate::bundle_build::{self, BuildSpec};
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
        /// Inputs with expected outputs that agents check before activation
        #[arg(long)]
        test_vectors: Option<PathBuf>,
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
            test_vectors,
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
                tags: tags.into_iter().collect(),
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
                signers,
                out: out.clone(),
            };
            let built = bundle_build::build(&spec, &progress_bar())?;
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
