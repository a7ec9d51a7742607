//! Which CLI command covers each operation of the REST API: one row per
//! path and method of the OpenAPI document (`server::openapi`), naming the
//! `ferry` command line that calls it, or saying why no command does.
//! The tests below fail when the API gains an operation without a row,
//! when a row names an operation the API no longer has, and when a row's
//! command line no longer parses.

/// How an operation is reached from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Covered {
    /// A `ferry` command line (after `ferry`) that calls the operation;
    /// placeholders stand for the positional values.
    Command(&'static str),
    /// No command calls it, on purpose: the reason.
    Exempt(&'static str),
}

use Covered::{Command as C, Exempt};

/// `(method, path, how)` for every operation of the API.
pub const OPERATIONS: &[(&str, &str, Covered)] = &[
    // system
    ("GET", "/api/v1/health", C("health")),
    ("GET", "/api/v1/whoami", C("whoami")),
    ("POST", "/api/v1/session/link", C("dashboard")),
    (
        "GET",
        "/api/v1/openapi.json",
        Exempt("the API's own description, read by client generators, not by operators"),
    ),
    // registry: models
    ("GET", "/api/v1/models", C("model list")),
    ("POST", "/api/v1/models", C("model push m.ferry")),
    (
        "POST",
        "/api/v1/models/register",
        Exempt("the same operation as POST /models (`model push`), kept for older clients"),
    ),
    ("GET", "/api/v1/models/{name}", C("model show m")),
    ("DELETE", "/api/v1/models/{name}", C("model delete m")),
    // registry: versions
    (
        "GET",
        "/api/v1/models/{name}/versions",
        C("model versions m"),
    ),
    (
        "GET",
        "/api/v1/models/{name}/versions/{version}",
        C("model describe m 1"),
    ),
    (
        "DELETE",
        "/api/v1/models/{name}/versions/{version}",
        C("model delete m 1"),
    ),
    (
        "GET",
        "/api/v1/models/{name}/versions/{version}/bundle",
        C("model download m 1"),
    ),
    (
        "POST",
        "/api/v1/models/{name}/versions/{version}/archive",
        C("model archive m 1"),
    ),
    (
        "POST",
        "/api/v1/models/{name}/versions/{version}/restore",
        C("model restore m 1"),
    ),
    (
        "GET",
        "/api/v1/models/{name}/compare",
        C("model compare m 1 2"),
    ),
    // registry: aliases
    ("GET", "/api/v1/models/{name}/aliases", C("model aliases m")),
    (
        "PUT",
        "/api/v1/models/{name}/aliases/{alias}",
        C("model promote m 1 --alias production"),
    ),
    (
        "DELETE",
        "/api/v1/models/{name}/aliases/{alias}",
        C("model unalias m --alias production"),
    ),
    (
        "POST",
        "/api/v1/models/{name}/promote",
        Exempt(
            "the same operation as PUT /models/{name}/aliases/{alias}, which `model promote` calls",
        ),
    ),
    // registry: projects, tokens, trust, audit
    ("GET", "/api/v1/projects", C("project list")),
    ("POST", "/api/v1/projects", C("project create p")),
    ("GET", "/api/v1/tokens", C("token list")),
    (
        "POST",
        "/api/v1/tokens",
        C("token create --name n --role viewer"),
    ),
    ("DELETE", "/api/v1/tokens/{id}", C("token revoke t")),
    ("GET", "/api/v1/trust-root", C("trust get")),
    ("PUT", "/api/v1/trust-root", C("trust push v1.root")),
    ("GET", "/api/v1/audit", C("audit list")),
    // telemetry
    ("GET", "/api/v1/models/{name}/drift", C("drift series m")),
    ("GET", "/api/v1/models/{name}/metrics", C("model metrics m")),
    (
        "GET",
        "/api/v1/models/{name}/monitoring",
        C("model monitoring m"),
    ),
    (
        "GET",
        "/api/v1/models/{name}/challenger",
        C("model challenger m --window 24h"),
    ),
    (
        "GET",
        "/api/v1/models/{name}/drift-config",
        C("drift config get m"),
    ),
    (
        "POST",
        "/api/v1/models/{name}/drift-config",
        C("drift config set m --psi-threshold 0.2"),
    ),
    ("GET", "/api/v1/alerts", C("alerts list")),
    ("POST", "/api/v1/alerts/{id}/ack", C("alerts ack a")),
    ("GET", "/api/v1/retrain-triggers", C("triggers list")),
    ("GET", "/api/v1/devices", C("device health")),
    // fleet
    (
        "POST",
        "/api/v1/fleet/devices/tokens",
        C("device token create"),
    ),
    (
        "GET",
        "/api/v1/fleet/devices/tokens",
        C("device token list"),
    ),
    (
        "DELETE",
        "/api/v1/fleet/devices/tokens/{id}",
        C("device token revoke e"),
    ),
    ("GET", "/api/v1/fleet/devices/ca.pem", C("device ca")),
    ("GET", "/api/v1/fleet/devices", C("device list")),
    ("GET", "/api/v1/fleet/devices/{id}", C("device show d")),
    (
        "PUT",
        "/api/v1/fleet/devices/{id}/labels",
        C("device label d site=a"),
    ),
    (
        "POST",
        "/api/v1/fleet/devices/{id}/revoke",
        C("device revoke d"),
    ),
    ("POST", "/api/v1/deployments", C("deploy m --version 1")),
    ("GET", "/api/v1/deployments", C("deployments")),
    ("GET", "/api/v1/deployments/{id}", C("deployments dep")),
    (
        "PATCH",
        "/api/v1/deployments/{id}",
        C("deployments scale dep --selector site=a"),
    ),
    ("DELETE", "/api/v1/deployments/{id}", C("undeploy dep")),
    // rollouts
    (
        "POST",
        "/api/v1/rollouts",
        C("rollout start m --version 2 --selector site=a --policy fast"),
    ),
    ("GET", "/api/v1/rollouts", C("rollout list")),
    ("GET", "/api/v1/rollouts/{id}", C("rollout show ro")),
    ("POST", "/api/v1/rollouts/{id}/pause", C("rollout pause ro")),
    (
        "POST",
        "/api/v1/rollouts/{id}/resume",
        C("rollout resume ro"),
    ),
    (
        "POST",
        "/api/v1/rollouts/{id}/approve",
        C("rollout approve ro"),
    ),
    ("POST", "/api/v1/rollouts/{id}/abort", C("rollout abort ro")),
    ("GET", "/api/v1/rollouts/policies", C("rollout policy list")),
    (
        "GET",
        "/api/v1/rollouts/policies/{name}",
        C("rollout policy show fast"),
    ),
    (
        "PUT",
        "/api/v1/rollouts/policies/{name}",
        C("rollout policy put fast p.toml"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::openapi::operations;
    use clap::Parser;
    use std::collections::BTreeSet;

    fn documented() -> BTreeSet<(String, String)> {
        operations()
            .into_iter()
            .map(|o| (o.method, o.path))
            .collect()
    }

    #[test]
    fn every_api_operation_has_a_command_or_a_reason() {
        let table: BTreeSet<(String, String)> = OPERATIONS
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(table.len(), OPERATIONS.len(), "a row appears twice");
        let missing: Vec<_> = documented().difference(&table).cloned().collect();
        assert!(
            missing.is_empty(),
            "REST operations without a CLI command (add one, and a row to cli::coverage::OPERATIONS): {missing:?}"
        );
    }

    #[test]
    fn every_row_is_an_api_operation() {
        let doc = documented();
        for (m, p, _) in OPERATIONS {
            assert!(
                doc.contains(&(m.to_string(), p.to_string())),
                "{m} {p} is not in the OpenAPI document"
            );
        }
    }

    #[test]
    fn every_command_line_parses() {
        for (m, p, how) in OPERATIONS {
            match how {
                Covered::Command(line) => {
                    let argv = std::iter::once("ferry").chain(line.split_whitespace());
                    if let Err(e) = super::super::Cli::try_parse_from(argv) {
                        panic!("{m} {p}: `ferry {line}` does not parse: {e}");
                    }
                }
                Exempt(why) => assert!(!why.is_empty(), "{m} {p}: say why"),
            }
        }
    }

    /// The exemptions are few and named; a new one is a decision.
    #[test]
    fn exemptions_are_the_known_ones() {
        let exempt: Vec<&str> = OPERATIONS
            .iter()
            .filter(|(_, _, how)| matches!(how, Exempt(_)))
            .map(|(_, p, _)| *p)
            .collect();
        assert_eq!(
            exempt,
            [
                "/api/v1/openapi.json",
                "/api/v1/models/register",
                "/api/v1/models/{name}/promote"
            ]
        );
    }
}
