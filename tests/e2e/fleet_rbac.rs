//! RBAC matrix of the fleet API: every fleet endpoint × every role ×
//! own/other tenant, asserting the status code, against a real
//! `ferry server --quic` with enrolled devices.
//!
//! Each role works on its own device (revoke) and deployments (scale,
//! delete), so what one role may change does not alter what another role
//! sees. The "other tenant" column uses tokens of tenant `beta`: names and
//! ids of `default` answer 404 there (never revealing that they exist);
//! tenant-scoped listings answer for beta's own (empty) fleet.
#![allow(clippy::unwrap_used)]

use ferry_e2e::fleet::{http_raw, Agent, Keys, Server};
use serde_json::Value;

const ROLES: [&str; 4] = ["viewer", "operator", "publisher", "admin"];

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap()
}

struct Cell {
    method: &'static str,
    /// `{dev}` (a device every role reads), `{victim}` (the role's own
    /// device), `{dep}` and `{dep_del}` (the role's own deployments) and
    /// `{etok}` (the role's own enrollment token) are substituted.
    path: &'static str,
    route: &'static str,
    body: &'static str,
    needs: &'static str,
    ok: u16,
    /// Status for a sufficient role of the other tenant.
    other: u16,
}

const fn c(
    method: &'static str,
    path: &'static str,
    route: &'static str,
    body: &'static str,
    needs: &'static str,
    ok: u16,
    other: u16,
) -> Cell {
    Cell {
        method,
        path,
        route,
        body,
        needs,
        ok,
        other,
    }
}

const MATRIX: &[Cell] = &[
    c(
        "GET",
        "/api/v1/fleet/devices",
        "/api/v1/fleet/devices",
        "",
        "viewer",
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/fleet/devices/ca.pem",
        "/api/v1/fleet/devices/ca.pem",
        "",
        "viewer",
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/fleet/devices/{dev}",
        "/api/v1/fleet/devices/{id}",
        "",
        "viewer",
        200,
        404,
    ),
    c(
        "GET",
        "/api/v1/deployments",
        "/api/v1/deployments",
        "",
        "viewer",
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/deployments/{dep}",
        "/api/v1/deployments/{id}",
        "",
        "viewer",
        200,
        404,
    ),
    c(
        "POST",
        "/api/v1/fleet/devices/tokens",
        "/api/v1/fleet/devices/tokens",
        r#"{"labels": {"site": "rbac"}, "expires_in": 600}"#,
        "operator",
        200,
        200,
    ),
    c(
        "GET",
        "/api/v1/fleet/devices/tokens",
        "/api/v1/fleet/devices/tokens",
        "",
        "operator",
        200,
        200,
    ),
    c(
        "DELETE",
        "/api/v1/fleet/devices/tokens/{etok}",
        "/api/v1/fleet/devices/tokens/{id}",
        "",
        "operator",
        200,
        404,
    ),
    c(
        "PUT",
        "/api/v1/fleet/devices/{dev}/labels",
        "/api/v1/fleet/devices/{id}/labels",
        r#"{"labels": {"fleet": "rbac", "touched": "yes"}}"#,
        "operator",
        200,
        404,
    ),
    c(
        "POST",
        "/api/v1/deployments",
        "/api/v1/deployments",
        r#"{"model": "fraud", "version": 1, "selector": {"nothing": "matches"}}"#,
        "operator",
        200,
        404,
    ),
    c(
        "PATCH",
        "/api/v1/deployments/{dep}",
        "/api/v1/deployments/{id}",
        r#"{"selector": {"still": "nothing"}}"#,
        "operator",
        200,
        404,
    ),
    c(
        "DELETE",
        "/api/v1/deployments/{dep_del}",
        "/api/v1/deployments/{id}",
        "",
        "operator",
        200,
        404,
    ),
    c(
        "POST",
        "/api/v1/fleet/devices/{victim}/revoke",
        "/api/v1/fleet/devices/{id}/revoke",
        "",
        "operator",
        200,
        404,
    ),
];

/// The fleet's operations of the generated OpenAPI document.
fn fleet_routes() -> Vec<(String, String)> {
    ferry::server::openapi::operations()
        .into_iter()
        .filter(|o| o.tags.iter().any(|t| t == "fleet"))
        .map(|o| (o.method, o.path))
        .collect()
}

#[test]
fn matrix_covers_every_fleet_route() {
    let routes = fleet_routes();
    assert!(!routes.is_empty());
    for (method, route) in &routes {
        assert!(
            MATRIX
                .iter()
                .any(|c| c.method == method.as_str() && c.route == route.as_str()),
            "{method} {route} is not in the fleet RBAC matrix"
        );
    }
    for c in MATRIX {
        assert!(
            routes
                .iter()
                .any(|(m, r)| m.as_str() == c.method && r.as_str() == c.route),
            "{} {} is in the matrix but not in the OpenAPI document",
            c.method,
            c.route
        );
    }
}

#[test]
fn fleet_rbac_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let server = Server::start(&tmp.path().join("server"), &[]);
    let addr = server.url.trim_start_matches("http://").to_string();
    ferry_e2e::fleet::ok(&mut server.cli(&[
        "trust",
        "push",
        keys.path("v1.root").to_str().unwrap(),
    ]));
    let bundle = keys.bundle("fraud", 1, "pub", &[]);
    ferry_e2e::fleet::ok(&mut server.cli(&["model", "push", bundle.to_str().unwrap()]));

    // One device every role reads, and one per role to revoke.
    let ca = tmp.path().join("ca.pem");
    let tok = server.json(&[
        "device",
        "token",
        "create",
        "--labels",
        "fleet=rbac",
        "--uses",
        "5",
        "--ca-out",
        ca.to_str().unwrap(),
    ]);
    let tok = tok["token"].as_str().unwrap();
    let mut devices = Vec::new();
    for i in 0..5 {
        let data = tmp.path().join(format!("dev{i}"));
        devices.push(Agent::enroll(
            &server,
            tok,
            &ca,
            &data,
            &keys.path("v1.root"),
        ));
    }

    let mut own = Vec::new();
    let mut other = Vec::new();
    let mut deps = Vec::new();
    // One enrollment token per role to revoke.
    let etoks: Vec<String> = ROLES
        .iter()
        .map(|_| {
            server.json(&["device", "token", "create", "--labels", "fleet=etok"])["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for r in ROLES {
        for (list, tenant) in [(&mut own, None), (&mut other, Some("beta"))] {
            let mut args = vec!["token", "create", "--name", r, "--role", r];
            if let Some(t) = tenant {
                args.extend(["--tenant", t]);
            }
            list.push(server.json(&args)["token"].as_str().unwrap().to_string());
        }
        let mut pair = Vec::new();
        for _ in 0..2 {
            let v = server.json(&[
                "deploy",
                "fraud",
                "--version",
                "1",
                "--selector",
                "nothing=matches",
            ]);
            pair.push(v["id"].as_str().unwrap().to_string());
        }
        deps.push(pair);
    }

    let mut failures = Vec::new();
    let mut checked = 0;
    for (tenant_is_own, tokens) in [(true, &own), (false, &other)] {
        for (i, r) in ROLES.into_iter().enumerate() {
            for cell in MATRIX {
                let path = cell
                    .path
                    .replace("{dev}", &devices[0])
                    .replace("{victim}", &devices[1 + i])
                    .replace("{dep}", &deps[i][0])
                    .replace("{dep_del}", &deps[i][1])
                    .replace("{etok}", &etoks[i]);
                let (status, text) = http_raw(&addr, cell.method, &path, &tokens[i], cell.body);
                let expected = if rank(r) < rank(cell.needs) {
                    403
                } else if tenant_is_own {
                    cell.ok
                } else {
                    cell.other
                };
                checked += 1;
                let who = if tenant_is_own { "own" } else { "other" };
                if status != expected {
                    failures.push(format!(
                        "{} {path} as {r} of {who} tenant: got {status}, expected {expected}: {}",
                        cell.method,
                        text.chars().take(200).collect::<String>()
                    ));
                }
                if status >= 400 {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if !v["error"].is_string() {
                        failures.push(format!(
                            "{} {path}: error without a JSON message: {text}",
                            cell.method
                        ));
                    }
                }
                // Another tenant's listings never show default's devices or
                // deployments.
                if !tenant_is_own
                    && status == 200
                    && (devices.iter().any(|d| text.contains(d.as_str()))
                        || deps.iter().flatten().any(|d| text.contains(d.as_str()))
                        || etoks.iter().any(|t| text.contains(t.as_str())))
                {
                    failures.push(format!(
                        "{} {path} as beta {r} leaks default's ids: {text}",
                        cell.method
                    ));
                }
            }
        }
    }
    // Without a token every fleet endpoint answers 401.
    for (method, route) in fleet_routes() {
        let path = route.replace("{id}", &devices[0]);
        let (status, _) = http_raw(&addr, &method, &path, "", "{}");
        if status != 401 {
            failures.push(format!("{method} {path} without a token: {status}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, MATRIX.len() * 8);

    // The operator-and-up revocations took effect; the others did not.
    let list = server.json(&["device", "list"]);
    for (i, r) in ROLES.into_iter().enumerate() {
        let d = list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == devices[1 + i].as_str())
            .unwrap();
        assert_eq!(
            !d["revoked_at"].is_null(),
            rank(r) >= rank("operator"),
            "{r}: {d}"
        );
    }

    // Likewise for the enrollment tokens, which beta could not revoke.
    let listed = server.json(&["device", "token", "list"]);
    for (i, r) in ROLES.into_iter().enumerate() {
        let t = listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == etoks[i].as_str())
            .unwrap();
        let expected = if rank(r) >= rank("operator") {
            "revoked"
        } else {
            "usable"
        };
        assert_eq!(t["state"], expected, "{r}: {t}");
    }

    // Every 403 was audited as refused in the caller's tenant: here, the
    // default tenant's (beta's are in beta's chain).
    let refused = server.audit("device.revoke");
    let n = refused.iter().filter(|a| a["outcome"] == "refused").count();
    assert_eq!(n, 1, "the viewer's revoke, refused: {refused:?}");
    let expected_403: usize = ROLES
        .iter()
        .map(|r| MATRIX.iter().filter(|c| rank(r) < rank(c.needs)).count())
        .sum();
    let all = ferry_e2e::fleet::ok(&mut server.cli(&[
        "audit",
        "list",
        "--json",
        "--limit",
        "1000",
        "--outcome",
        "refused",
    ]));
    let v: Value = serde_json::from_str(&all).unwrap();
    let forbidden = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("forbidden: role "))
        })
        .count();
    assert_eq!(forbidden, expected_403, "{v}");
}
