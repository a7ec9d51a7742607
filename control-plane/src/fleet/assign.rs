//! Desired-state assignment: what a device should run. Pure: one fetched
//! list of a tenant's live deployments in, one device's assignments out,
//! so a change is computed for every connected device from one query.

use super::db::{matches, Deployment, Labels};
use ferry_protocol::desired::{Assignment, Variant};
use ferry_protocol::keys::Digest;
use ferry_protocol::ModelName;
use std::collections::BTreeMap;

/// Per model, the newest of `deployments` (oldest first, as
/// `db::live_deployments` returns them) whose selector matches `labels`;
/// ordered by model name. A deployment naming an invalid model or digest
/// is skipped, and logged.
pub fn assign(deployments: &[Deployment], labels: &Labels) -> Vec<Assignment> {
    let mut by_model: BTreeMap<&str, &Deployment> = BTreeMap::new();
    for d in deployments {
        if matches(&d.selector, labels) {
            by_model.insert(d.model.as_str(), d);
        }
    }
    by_model
        .into_values()
        .filter_map(|d| {
            let (Ok(model), Ok(digest)) = (
                ModelName::try_from(d.model.clone()),
                Digest::from_hex(&d.digest),
            ) else {
                tracing::error!(deployment = %d.id, "deployment names an invalid model or digest; skipped");
                return None;
            };
            Some(Assignment {
                model,
                version: d.version as u64,
                manifest_digest: digest,
                variant: Variant::Champion,
                traffic_percent: 100,
            })
        })
        .collect()
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
            created_by: "admin".into(),
            deleted_at: None,
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
        assert_eq!(versions(&assign(&deps, &lyon)), [("fraud".into(), 2)]);
        // The newest fraud deployment does not match: the older one does.
        assert_eq!(
            versions(&assign(&deps, &paris)),
            [("churn".into(), 5), ("fraud".into(), 1)]
        );
        assert_eq!(
            versions(&assign(&deps, &gold)),
            [("churn".into(), 5), ("fraud".into(), 3)]
        );
        // An empty selector matches every device, even an unlabelled one.
        assert_eq!(
            versions(&assign(&deps, &Labels::new())),
            [("fraud".into(), 1)]
        );
        assert!(assign(&[], &lyon).is_empty());
    }

    #[test]
    fn assignments_carry_the_deployed_digest_as_champion() {
        let deps = [dep("d1", "fraud", 7, &[])];
        let a = &assign(&deps, &Labels::new())[0];
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
            versions(&assign(&deps, &Labels::new())),
            [("churn".into(), 1)]
        );
    }
}
