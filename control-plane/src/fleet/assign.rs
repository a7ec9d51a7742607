//! Desired-state assignment: what a device should run. Pure: one fetched
//! list of a tenant's live deployments (and the assignments its rollouts
//! made) in, one device's assignments out, so a change is computed for
//! every connected device from one query.
//!
//! Per model, the newest of (a) the deployments whose selector matches the
//! device and (b) what a rollout assigned this device wins: a device not
//! (yet) in a rollout's wave keeps what its deployments give it, a device in
//! a wave gets the rollout's version, a rolled-back one the version it ran
//! before (or nothing), and a deployment made later (a finished rollout's,
//! or an operator's) replaces all of that.

use super::db::{matches, runtime_offered, Deployment, Device, Labels};
use crate::store::rollouts::RolloutTarget;
use ferry_protocol::desired::{Assignment, Variant};
use ferry_protocol::keys::Digest;
use ferry_protocol::ModelName;
use std::collections::BTreeMap;

/// What of a device decides what it is sent: its labels (deployment
/// selectors) and the runtimes its hello offered (a version's
/// `ferry.target.runtime`).
#[derive(Clone, Copy, Debug)]
pub struct DeviceView<'a> {
    pub labels: &'a Labels,
    /// `None` before its first hello: no version that requires a runtime
    /// is sent to it.
    pub runtimes: Option<&'a [String]>,
}

impl<'a> From<&'a Device> for DeviceView<'a> {
    fn from(d: &'a Device) -> Self {
        DeviceView {
            labels: &d.labels,
            runtimes: d.runtimes.as_deref(),
        }
    }
}

/// Labels alone: a device whose runtimes are not known.
impl<'a> From<&'a Labels> for DeviceView<'a> {
    fn from(labels: &'a Labels) -> Self {
        DeviceView {
            labels,
            runtimes: None,
        }
    }
}

/// Whether `d` targets `device`: its selector matches and the device
/// offers the runtime its version requires.
pub fn targets(d: &Deployment, device: DeviceView<'_>) -> bool {
    matches(&d.selector, device.labels) && runtime_offered(d.runtime.as_deref(), device.runtimes)
}

/// What wins a model on a device: (version, digest) or withdrawn, and where
/// it came from (for the log).
struct Winner<'a> {
    at_us: i64,
    version: Option<(i64, &'a str)>,
    from: &'a str,
}

/// Per model, the newest of `deployments` (oldest first, as
/// `db::live_deployments` returns them) that target `device` ([`targets`]),
/// unless one of `targets` (this device's rollout assignments) is newer;
/// ordered by model name. An entry naming an invalid model or digest is
/// skipped, and logged.
pub fn assign<'d>(
    deployments: &[Deployment],
    targets: &[RolloutTarget],
    device: impl Into<DeviceView<'d>>,
) -> Vec<Assignment> {
    winners(deployments, targets, device.into())
        .into_iter()
        .filter_map(|(model, w)| {
            let (version, digest) = w.version?;
            let (Ok(model), Ok(digest)) = (
                ModelName::try_from(model.to_string()),
                Digest::from_hex(digest),
            ) else {
                tracing::error!(source = %w.from, "deployment or rollout names an invalid model or digest; skipped");
                return None;
            };
            Some(Assignment {
                model,
                version: version as u64,
                manifest_digest: digest,
                variant: Variant::Champion,
                traffic_percent: 100,
            })
        })
        .collect()
}

/// Whether the version with manifest `digest` is what wins `model` on a
/// device and rollout assignments `targets`: what
/// [`assign`] would give it, without building the assignments (a
/// deployment's status asks this of thousands of devices).
pub fn wins<'d>(
    deployments: &[Deployment],
    targets: &[RolloutTarget],
    device: impl Into<DeviceView<'d>>,
    model: &str,
    digest: &str,
) -> bool {
    winners(deployments, targets, device.into())
        .get(model)
        .and_then(|w| w.version)
        .is_some_and(|(_, d)| d == digest)
}

/// Per model, what wins it (see [`assign`]).
fn winners<'a>(
    deployments: &'a [Deployment],
    rollout_targets: &'a [RolloutTarget],
    device: DeviceView<'_>,
) -> BTreeMap<&'a str, Winner<'a>> {
    let mut by_model: BTreeMap<&str, Winner<'_>> = BTreeMap::new();
    for d in deployments {
        if targets(d, device) {
            by_model.insert(
                d.model.as_str(),
                Winner {
                    at_us: d.created_us,
                    version: Some((d.version, d.digest.as_str())),
                    from: d.id.as_str(),
                },
            );
        }
    }
    for t in rollout_targets {
        let newer = by_model
            .get(t.model.as_str())
            .is_none_or(|w| t.updated_us > w.at_us);
        if newer {
            by_model.insert(
                t.model.as_str(),
                Winner {
                    at_us: t.updated_us,
                    version: t.version.as_ref().map(|(v, d)| (*v, d.as_str())),
                    from: t.rollout_id.as_str(),
                },
            );
        }
    }
    by_model
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::keys::sha256;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dep(id: &str, model: &str, version: i64, selector: &[(&str, &str)]) -> Deployment {
        Deployment {
            id: id.into(),
            tenant: "t".into(),
            model: model.into(),
            version,
            digest: sha256(format!("{model} v{version}").as_bytes()).to_hex(),
            selector: labels(selector),
            created_at: 0,
            created_us: 0,
            created_by: "admin".into(),
            deleted_at: None,
            runtime: None,
        }
    }

    fn versions(a: &[Assignment]) -> Vec<(String, u64)> {
        a.iter().map(|a| (a.model.to_string(), a.version)).collect()
    }

    #[test]
    fn the_newest_matching_deployment_of_each_model_wins() {
        let deps = [
            dep("d1", "fraud", 1, &[]),
            dep("d2", "fraud", 2, &[("site", "lyon")]),
            dep("d3", "churn", 5, &[("site", "paris")]),
            dep("d4", "fraud", 3, &[("site", "paris"), ("tier", "gold")]),
        ];
        let lyon = labels(&[("site", "lyon"), ("tier", "gold")]);
        let paris = labels(&[("site", "paris")]);
        let gold = labels(&[("site", "paris"), ("tier", "gold")]);
        assert_eq!(versions(&assign(&deps, &[], &lyon)), [("fraud".into(), 2)]);
        // The newest fraud deployment does not match: the older one does.
        assert_eq!(
            versions(&assign(&deps, &[], &paris)),
            [("churn".into(), 5), ("fraud".into(), 1)]
        );
        assert_eq!(
            versions(&assign(&deps, &[], &gold)),
            [("churn".into(), 5), ("fraud".into(), 3)]
        );
        // An empty selector matches every device, even an unlabelled one.
        assert_eq!(
            versions(&assign(&deps, &[], &Labels::new())),
            [("fraud".into(), 1)]
        );
        assert!(assign(&[], &[], &lyon).is_empty());
    }

    #[test]
    fn assignments_carry_the_deployed_digest_as_champion() {
        let deps = [dep("d1", "fraud", 7, &[])];
        let a = &assign(&deps, &[], &Labels::new())[0];
        assert_eq!(a.manifest_digest.to_hex(), deps[0].digest);
        assert_eq!(a.variant, Variant::Champion);
        assert_eq!(a.traffic_percent, 100);
    }

    #[test]
    fn an_invalid_deployment_is_skipped_not_fatal() {
        let mut bad = dep("d2", "fraud", 2, &[]);
        bad.digest = "not hex".into();
        let mut bad_name = dep("d3", "Not A Model!", 1, &[]);
        bad_name.digest = sha256(b"x").to_hex();
        let deps = [dep("d1", "churn", 1, &[]), bad, bad_name];
        assert_eq!(
            versions(&assign(&deps, &[], &Labels::new())),
            [("churn".into(), 1)]
        );
    }

    #[test]
    fn a_version_that_requires_a_runtime_goes_only_to_devices_that_offer_it() {
        let mut gpu_v2 = dep("d2", "vision", 2, &[]);
        gpu_v2.runtime = Some("burn".into());
        gpu_v2.created_us = 20;
        let mut cpu_v1 = dep("d1", "vision", 1, &[]);
        cpu_v1.created_us = 10;
        let deps = [cpu_v1, gpu_v2];
        let any = Labels::new();
        let on = |runtimes: &[&str]| {
            let r: Vec<String> = runtimes.iter().map(|s| s.to_string()).collect();
            versions(&assign(
                &deps,
                &[],
                DeviceView {
                    labels: &any,
                    runtimes: Some(&r),
                },
            ))
        };
        assert_eq!(on(&["onnx", "onnx-burn-cuda"]), [("vision".into(), 2)]);
        // The CPU fleet keeps the version it can run.
        assert_eq!(on(&["onnx"]), [("vision".into(), 1)]);
        assert_eq!(on(&["onnx", "onnx-burn-cpu"]), [("vision".into(), 1)]);
        // Before its first hello a device gets no version that needs one.
        assert_eq!(versions(&assign(&deps, &[], &any)), [("vision".into(), 1)]);
        // A requirement this server cannot read targets nobody.
        let mut odd = dep("d3", "vision", 3, &[]);
        odd.runtime = Some("burn-metal".into());
        odd.created_us = 30;
        let r = vec!["onnx-burn-wgpu".to_string()];
        let view = DeviceView {
            labels: &any,
            runtimes: Some(&r),
        };
        assert_eq!(
            versions(&assign(&[deps[1].clone(), odd.clone()], &[], view)),
            [("vision".into(), 2)]
        );
        assert!(!wins(&[odd.clone()], &[], view, "vision", &odd.digest));
    }

    fn target(device: &str, model: &str, version: Option<i64>, at: i64) -> RolloutTarget {
        RolloutTarget {
            rollout_id: "ro_1".into(),
            device_id: device.into(),
            model: model.into(),
            version: version.map(|v| (v, sha256(format!("{model} v{v}").as_bytes()).to_hex())),
            updated_us: at,
        }
    }

    #[test]
    fn the_newer_of_a_deployment_and_a_rollout_assignment_wins() {
        let mut d1 = dep("d1", "fraud", 1, &[]);
        d1.created_us = 10;
        let any = Labels::new();
        // Not in a wave: the deployment.
        assert_eq!(
            versions(&assign(&[d1.clone()], &[], &any)),
            [("fraud".into(), 1)]
        );
        // In a wave: the rollout's version.
        let t = [target("dev", "fraud", Some(2), 20)];
        assert_eq!(
            versions(&assign(&[d1.clone()], &t, &any)),
            [("fraud".into(), 2)]
        );
        // Rolled back to nothing: withdrawn.
        let t = [target("dev", "fraud", None, 30)];
        assert!(assign(&[d1.clone()], &t, &any).is_empty());
        // A later deployment (the finished rollout's) replaces the target.
        let mut d3 = dep("d3", "fraud", 3, &[]);
        d3.created_us = 40;
        assert_eq!(
            versions(&assign(&[d1, d3], &t, &any)),
            [("fraud".into(), 3)]
        );
        // A rollout assignment of a model with no deployment.
        let t = [target("dev", "churn", Some(4), 5)];
        assert_eq!(versions(&assign(&[], &t, &any)), [("churn".into(), 4)]);
    }

    #[test]
    fn wins_agrees_with_assign() {
        let mut d1 = dep("d1", "fraud", 1, &[]);
        d1.created_us = 10;
        let mut d2 = dep("d2", "fraud", 2, &[("site", "lyon")]);
        d2.created_us = 20;
        let deps = [d1.clone(), d2.clone()];
        let lyon = labels(&[("site", "lyon")]);
        let paris = labels(&[("site", "paris")]);
        let t = [target("dev", "fraud", Some(3), 30)];
        let gone = [target("dev", "fraud", None, 30)];
        for (targets, l) in [
            (&[][..], &lyon),
            (&[][..], &paris),
            (&t[..], &lyon),
            (&gone[..], &lyon),
        ] {
            let given: Vec<String> = assign(&deps, targets, l)
                .iter()
                .map(|a| a.manifest_digest.to_hex())
                .collect();
            for d in [&d1, &d2] {
                assert_eq!(
                    wins(&deps, targets, l, "fraud", &d.digest),
                    given.contains(&d.digest),
                    "{} on {l:?} with {targets:?}",
                    d.id
                );
            }
        }
        assert!(wins(&deps, &[], &lyon, "fraud", &d2.digest));
        assert!(!wins(&deps, &[], &lyon, "churn", &d2.digest));
    }
}
