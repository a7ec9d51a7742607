//! `ferry model challenger NAME`: the model's challenger (and shadow)
//! against its champion over a window, with the promotion-readiness
//! verdict the server computes (`GET /models/{name}/challenger`).

use super::conn::enc;
use super::output::{print_json, table};
use super::series::query;
use crate::api::types::{ChallengerComparison, ChallengerReport, Proportion, WorseTest};
use crate::client::Client;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct ChallengerArgs {
    pub model: String,
    /// How far back to look (15m, 24h, 7d)
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    pub window: std::time::Duration,
    /// Labelled rows each side needs (server default 200; 0: accuracy not required)
    #[arg(long)]
    pub min_labelled: Option<u64>,
    /// Requests each side needs (server default 100)
    #[arg(long)]
    pub min_requests: Option<u64>,
    /// Significance level of the one-sided tests (server default 0.01)
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Challenger p99 / champion p99 allowed (server default 1.5)
    #[arg(long)]
    pub max_latency_ratio: Option<f64>,
}

impl ChallengerArgs {
    fn path(&self) -> String {
        let mut q = vec![("window", format!("{}s", self.window.as_secs().max(1)))];
        if let Some(n) = self.min_labelled {
            q.push(("min_labelled", n.to_string()));
        }
        if let Some(n) = self.min_requests {
            q.push(("min_requests", n.to_string()));
        }
        if let Some(a) = self.alpha {
            q.push(("alpha", a.to_string()));
        }
        if let Some(r) = self.max_latency_ratio {
            q.push(("max_latency_ratio", r.to_string()));
        }
        format!("/models/{}/challenger{}", enc(&self.model), query(&q))
    }
}

fn share(p: Option<Proportion>) -> String {
    p.map_or_else(
        || "-".into(),
        |p| format!("{:.4} [{:.4}, {:.4}]", p.value, p.low, p.high),
    )
}

fn micros(x: Option<u32>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x} µs"))
}

fn test(t: Option<WorseTest>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| {
            format!(
                "p={:.3e} (n={}/{})",
                t.p_value, t.n_champion, t.n_challenger
            )
        },
    )
}

fn versions(v: &[u64]) -> String {
    let v: Vec<String> = v.iter().map(|v| format!("v{v}")).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn print_comparison(c: &ChallengerComparison) {
    let (a, b) = (&c.champion, &c.challenger);
    println!(
        "{} {} against champion {} on {} device(s)",
        b.variant,
        versions(&b.versions),
        versions(&a.versions),
        b.devices
    );
    let shift = match (c.prediction_psi, c.prediction_js) {
        (None, None) => "-".to_string(),
        (psi, js) => format!(
            "psi {}, js {}",
            psi.map_or("-".into(), |x| format!("{x:.4}")),
            js.map_or("-".into(), |x| format!("{x:.4}"))
        ),
    };
    let rows = vec![
        vec![
            "requests".into(),
            a.requests.to_string(),
            b.requests.to_string(),
            "-".into(),
        ],
        vec![
            "error rate".into(),
            share(a.error_rate),
            share(b.error_rate),
            test(c.error_rate_test),
        ],
        vec![
            "latency p50".into(),
            micros(a.latency_p50_us),
            micros(b.latency_p50_us),
            "-".into(),
        ],
        vec![
            "latency p99".into(),
            micros(a.latency_p99_us),
            micros(b.latency_p99_us),
            c.latency_p99_ratio
                .map_or("-".into(), |r| format!("ratio {r:.2}")),
        ],
        vec![
            "labelled".into(),
            a.labelled.to_string(),
            b.labelled.to_string(),
            "-".into(),
        ],
        vec![
            "accuracy".into(),
            share(a.accuracy),
            share(b.accuracy),
            test(c.accuracy_test),
        ],
        vec!["prediction shift".into(), "-".into(), "-".into(), shift],
    ];
    table(&["metric", "champion", b.variant.as_str(), "test"], rows);
    println!("verdict: {}", c.verdict);
}

/// `ferry model challenger MODEL`.
pub async fn challenger(c: &Client, json_out: bool, args: &ChallengerArgs) -> anyhow::Result<()> {
    let r: ChallengerReport = c.get(&args.path()).await?;
    if json_out {
        return print_json(&r);
    }
    if r.comparisons.is_empty() {
        println!(
            "{}: no challenger or shadow reported telemetry in the last {}",
            r.model,
            humantime::format_duration(std::time::Duration::from_secs(r.window_secs))
        );
        return Ok(());
    }
    for (i, c) in r.comparisons.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_comparison(c);
    }
    println!(
        "\nintervals: Wilson 95 %; tests: one-sided pooled two-proportion z (H1: the challenger is worse), alpha {}; promotion goes through a rollout",
        r.criteria.alpha
    );
    Ok(())
}
