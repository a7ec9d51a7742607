//! Gate verdicts: each gate of a policy, given the evidence so far, passes,
//! fails, cannot decide yet, or does not apply (no reference to compare
//! with). Pure; the engine decides what a verdict leads to.

use serde::{Deserialize, Serialize};

use super::observations::TelemetryAggregate;
use super::policy::{Against, InstallGate, ModelGate, ShiftMeasure};
use super::stats;

/// One gate's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not enough evidence yet: the rollout waits.
    Undecided,
    /// There is nothing to compare with (no reference devices or requests,
    /// no class counts, no PSI): the gate does not hold the rollout.
    NotApplicable,
}

/// A gate's verdict with what it rests on, for operators and the audit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// `install`, or the metric and what it is compared with.
    pub gate: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl GateReport {
    fn new(gate: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            gate: gate.into(),
            verdict,
            detail: detail.into(),
        }
    }
}

/// How the devices given the version so far took it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstallCounts {
    pub assigned: u64,
    pub active: u64,
    pub failed: u64,
}

/// Fewest successes out of `n` that reach `fraction` (robust to 0.95 × 20
/// coming out as 19.000000000000004).
pub fn successes_needed(fraction: f64, n: u64) -> u64 {
    ((fraction * n as f64) - 1e-9).ceil().max(0.0) as u64
}

/// The install gate over every device given the version.
pub fn install(gate: &InstallGate, c: InstallCounts) -> GateReport {
    let name = "install";
    if c.assigned == 0 {
        return GateReport::new(
            name,
            Verdict::Undecided,
            "no device has been given the version yet",
        );
    }
    let pending = c.assigned.saturating_sub(c.active + c.failed);
    let rate = |f: u64| f as f64 / c.assigned as f64;
    let needed = successes_needed(gate.min_success, c.assigned);
    let counts = format!(
        "{} of {} active, {} failed, {} not reported",
        c.active, c.assigned, c.failed, pending
    );
    if let Some(max) = gate.max_failures {
        if c.failed > max {
            return GateReport::new(
                name,
                Verdict::Fail,
                format!("{counts}: more than {max} failures"),
            );
        }
    }
    if let Some(max) = gate.max_failure_rate {
        if rate(c.failed) > max {
            return GateReport::new(
                name,
                Verdict::Fail,
                format!("{counts}: failure rate above {:.2} %", max * 100.0),
            );
        }
    }
    if c.assigned - c.failed < needed {
        return GateReport::new(
            name,
            Verdict::Fail,
            format!(
                "{counts}: cannot reach {:.2} % success (needs {needed})",
                gate.min_success * 100.0
            ),
        );
    }
    // A pass must hold whatever the devices yet to report say.
    let worst = c.failed + pending;
    let limits_hold = gate.max_failures.is_none_or(|m| worst <= m)
        && gate.max_failure_rate.is_none_or(|m| rate(worst) <= m);
    if c.active >= needed && limits_hold {
        GateReport::new(name, Verdict::Pass, counts)
    } else {
        GateReport::new(
            name,
            Verdict::Undecided,
            format!("{counts}: waiting for reports"),
        )
    }
}

/// The telemetry a model gate looks at.
#[derive(Clone, Copy, Debug)]
pub struct Evidence<'a> {
    /// The new version on the devices given it.
    pub new: &'a TelemetryAggregate,
    /// The previous version on those same devices (`None`: none ran one).
    pub previous: Option<&'a TelemetryAggregate>,
    /// The devices not given the new version (`None`: there are none).
    pub rest: Option<&'a TelemetryAggregate>,
    /// Requests the new version must have served (and a reference must
    /// have) before a verdict.
    pub min_requests: u64,
}

fn against_name(a: Against) -> &'static str {
    match a {
        Against::Absolute => "absolute",
        Against::PreviousVersion => "previous version",
        Against::RestOfFleet => "rest of fleet",
    }
}

/// One model gate's verdict.
pub fn model(gate: &ModelGate, ev: &Evidence<'_>) -> GateReport {
    let against = gate.against();
    let name = format!("{} vs {}", gate.metric(), against_name(against));
    let report = |v, d: String| GateReport::new(name.clone(), v, d);
    let pass_if = |ok: bool, d: String| report(if ok { Verdict::Pass } else { Verdict::Fail }, d);

    let (needed, have) = match gate {
        ModelGate::Accuracy { min_labelled, .. } => (*min_labelled, ev.new.labelled),
        _ => (ev.min_requests, ev.new.requests),
    };
    let unit = if matches!(gate, ModelGate::Accuracy { .. }) {
        "labelled rows"
    } else {
        "requests"
    };
    if have < needed || have == 0 {
        return report(
            Verdict::Undecided,
            format!("new version has {have} {unit}, needs {needed}"),
        );
    }
    let reference = match against {
        Against::Absolute => None,
        Against::PreviousVersion | Against::RestOfFleet => {
            let r = if against == Against::PreviousVersion {
                ev.previous
            } else {
                ev.rest
            };
            let r_have = r.map_or(0, |r| match gate {
                ModelGate::Accuracy { .. } => r.labelled,
                _ => r.requests,
            });
            match r {
                Some(r) if r_have >= needed && r_have > 0 => Some(r),
                _ => {
                    return report(
                        Verdict::NotApplicable,
                        format!("the reference has {r_have} {unit}, needs {needed}"),
                    )
                }
            }
        }
    };

    match (*gate, reference) {
        (ModelGate::ErrorRate { max, .. }, None) => {
            let e = ev.new.error_rate();
            pass_if(e <= max, format!("error rate {:.4} (limit {max})", e))
        }
        (ModelGate::ErrorRate { max, .. }, Some(r)) => {
            let (e, re) = (ev.new.error_rate(), r.error_rate());
            pass_if(
                e - re <= max,
                format!("error rate {e:.4} vs {re:.4} (at most {max} more)"),
            )
        }
        (ModelGate::LatencyP99 { max, .. }, reference) => {
            let Some(p99) = ev.new.latency_p99_us() else {
                return report(Verdict::Undecided, "no latency samples yet".into());
            };
            match reference {
                None => pass_if(
                    f64::from(p99) <= max,
                    format!("p99 {p99} µs (limit {max} µs)"),
                ),
                Some(r) => match r.latency_p99_us() {
                    None => report(
                        Verdict::NotApplicable,
                        "the reference has no latency samples".into(),
                    ),
                    Some(rp) => pass_if(
                        f64::from(p99) <= max * f64::from(rp),
                        format!("p99 {p99} µs vs {rp} µs (at most {max}×)"),
                    ),
                },
            }
        }
        (ModelGate::Drift { max, .. }, reference) => {
            let Some(psi) = ev.new.max_psi else {
                return report(
                    Verdict::NotApplicable,
                    "no PSI reported (no baseline)".into(),
                );
            };
            match reference.map(|r| r.max_psi) {
                None => pass_if(psi <= max, format!("max PSI {psi:.4} (limit {max})")),
                Some(None) => report(
                    Verdict::NotApplicable,
                    "the reference reports no PSI".into(),
                ),
                Some(Some(rp)) => pass_if(
                    psi - rp <= max,
                    format!("max PSI {psi:.4} vs {rp:.4} (at most {max} more)"),
                ),
            }
        }
        (ModelGate::PredictionShift { measure, max, .. }, Some(r)) => {
            let d = match measure {
                ShiftMeasure::Psi => stats::class_psi(&r.predictions, &ev.new.predictions),
                ShiftMeasure::JensenShannon => {
                    stats::jensen_shannon(&r.predictions, &ev.new.predictions)
                }
            };
            let label = match measure {
                ShiftMeasure::Psi => "PSI",
                ShiftMeasure::JensenShannon => "Jensen–Shannon",
            };
            match d {
                None => report(
                    Verdict::NotApplicable,
                    "no predicted-class counts to compare".into(),
                ),
                Some(d) => pass_if(d <= max, format!("{label} {d:.4} (limit {max})")),
            }
        }
        (ModelGate::PredictionShift { .. }, None) => report(
            Verdict::NotApplicable,
            "a prediction shift needs a reference".into(),
        ),
        (
            ModelGate::Accuracy {
                alpha,
                min_accuracy,
                ..
            },
            reference,
        ) => {
            let n = ev.new;
            let test = match (reference, min_accuracy) {
                (Some(r), _) => stats::two_proportion_smaller(
                    n.correct, n.labelled, r.correct, r.labelled,
                )
                .map(|t| {
                    (
                        t,
                        format!(
                            "{}/{} vs {}/{}",
                            n.correct, n.labelled, r.correct, r.labelled
                        ),
                    )
                }),
                (None, Some(p0)) => stats::one_proportion_smaller(n.correct, n.labelled, p0)
                    .map(|t| (t, format!("{}/{} vs {p0}", n.correct, n.labelled))),
                (None, None) => None,
            };
            match test {
                None => report(Verdict::NotApplicable, "no accuracy test applies".into()),
                Some((t, what)) => pass_if(
                    t.p_value >= alpha,
                    format!(
                        "accuracy {what}: z = {:.3}, one-sided p = {:.4} (α = {alpha})",
                        t.z, t.p_value
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::policy::OnFailure;

    fn gate(min_success: f64, max_failures: Option<u64>) -> InstallGate {
        InstallGate {
            min_success,
            max_failures,
            max_failure_rate: None,
            on_failure: OnFailure::Pause,
        }
    }

    fn counts(assigned: u64, active: u64, failed: u64) -> InstallCounts {
        InstallCounts {
            assigned,
            active,
            failed,
        }
    }

    #[test]
    fn install_verdicts() {
        let g = gate(0.95, None);
        let cases = [
            (counts(0, 0, 0), Verdict::Undecided),
            (counts(20, 19, 0), Verdict::Pass),
            (counts(20, 18, 0), Verdict::Undecided),
            (counts(20, 18, 1), Verdict::Undecided),
            (counts(20, 18, 2), Verdict::Fail),
            (counts(1, 0, 1), Verdict::Fail),
        ];
        for (c, want) in cases {
            assert_eq!(install(&g, c).verdict, want, "{c:?}");
        }
        // With a failure cap a pass waits until the cap cannot be broken.
        let g = gate(0.5, Some(1));
        assert_eq!(install(&g, counts(10, 6, 0)).verdict, Verdict::Undecided);
        assert_eq!(install(&g, counts(10, 9, 1)).verdict, Verdict::Pass);
        assert_eq!(install(&g, counts(10, 6, 2)).verdict, Verdict::Fail);
        assert_eq!(successes_needed(0.95, 20), 19);
    }

    fn agg(requests: u64, errors: u64, labelled: u64, correct: u64) -> TelemetryAggregate {
        TelemetryAggregate {
            requests,
            errors,
            labelled,
            correct,
            ..TelemetryAggregate::default()
        }
    }

    #[test]
    fn model_verdicts_wait_for_evidence_and_skip_missing_references() {
        let er = ModelGate::ErrorRate {
            against: Against::Absolute,
            max: 0.05,
        };
        let few = agg(50, 40, 0, 0);
        let ev = |new, previous| Evidence {
            new,
            previous,
            rest: None,
            min_requests: 100,
        };
        assert_eq!(model(&er, &ev(&few, None)).verdict, Verdict::Undecided);
        let bad = agg(100, 20, 0, 0);
        assert_eq!(model(&er, &ev(&bad, None)).verdict, Verdict::Fail);
        let good = agg(100, 1, 0, 0);
        assert_eq!(model(&er, &ev(&good, None)).verdict, Verdict::Pass);
        let rel = ModelGate::ErrorRate {
            against: Against::PreviousVersion,
            max: 0.01,
        };
        assert_eq!(model(&rel, &ev(&bad, None)).verdict, Verdict::NotApplicable);
        let prev = agg(1000, 195, 0, 0);
        assert_eq!(model(&rel, &ev(&bad, Some(&prev))).verdict, Verdict::Pass);

        let acc = ModelGate::Accuracy {
            against: Against::PreviousVersion,
            alpha: 0.01,
            min_labelled: 200,
            min_accuracy: None,
        };
        let prev = agg(1000, 0, 200, 180);
        let worse = agg(1000, 0, 200, 160);
        let r = model(&acc, &ev(&worse, Some(&prev)));
        assert_eq!(r.verdict, Verdict::Fail, "{}", r.detail);
        let same = agg(1000, 0, 200, 178);
        assert_eq!(model(&acc, &ev(&same, Some(&prev))).verdict, Verdict::Pass);
        let unlabelled = agg(1000, 0, 100, 50);
        assert_eq!(
            model(&acc, &ev(&unlabelled, Some(&prev))).verdict,
            Verdict::Undecided
        );
        let floor = ModelGate::Accuracy {
            against: Against::Absolute,
            alpha: 0.05,
            min_labelled: 100,
            min_accuracy: Some(0.9),
        };
        assert_eq!(model(&floor, &ev(&worse, None)).verdict, Verdict::Fail);
        assert_eq!(model(&floor, &ev(&same, None)).verdict, Verdict::Pass);
    }

    fn with_latency(bucket: usize, psi: Option<f64>) -> TelemetryAggregate {
        let mut t = agg(200, 0, 0, 0);
        t.latency_us = vec![0; crate::rollout::observations::LATENCY_BUCKETS];
        t.latency_us[bucket] = 200;
        t.max_psi = psi;
        t
    }

    #[test]
    fn latency_and_drift_verdicts() {
        let ev = |new, previous| Evidence {
            new,
            previous,
            rest: None,
            min_requests: 100,
        };
        let slow = ModelGate::LatencyP99 {
            against: Against::PreviousVersion,
            max: 1.5,
        };
        // Buckets 2 and 3 are 250 µs and 500 µs: twice as slow.
        let (before, after) = (with_latency(2, Some(0.1)), with_latency(3, Some(0.5)));
        assert_eq!(
            model(&slow, &ev(&after, Some(&before))).verdict,
            Verdict::Fail
        );
        assert_eq!(
            model(&slow, &ev(&before, Some(&before))).verdict,
            Verdict::Pass
        );
        let cap = ModelGate::LatencyP99 {
            against: Against::Absolute,
            max: 300.0,
        };
        assert_eq!(model(&cap, &ev(&before, None)).verdict, Verdict::Pass);
        assert_eq!(model(&cap, &ev(&after, None)).verdict, Verdict::Fail);
        let drift = ModelGate::Drift {
            against: Against::PreviousVersion,
            max: 0.2,
        };
        assert_eq!(
            model(&drift, &ev(&after, Some(&before))).verdict,
            Verdict::Fail
        );
        let no_baseline = with_latency(2, None);
        assert_eq!(
            model(&drift, &ev(&no_baseline, Some(&before))).verdict,
            Verdict::NotApplicable
        );
    }
}
