//! The web dashboard end to end, against a real `ferry server`: sessions,
//! CSRF and revocation over raw HTTP, then the whole UI in Debian's
//! Chromium (`tests/browser/dashboard.mjs`, driven by playwright-core,
//! checked by axe-core).
#![allow(clippy::unwrap_used)]

use ferry_e2e::db::Db;
use ferry_e2e::fleet::{
    self, bin, device_token, fixtures, ok, spawn_until, wait_for, Keys, Proc, Server, ADMIN,
};
use ferry_e2e::skip_or_fail;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A server with the trust root, `fraud` v1 and v2 (metrics, tags, a
/// baseline, lineage), `churn` v1, and `champion` on `fraud` v1; the
/// tokens of a publisher and a viewer.
fn setup(tmp: &Path) -> (Server, String, String, String) {
    let keys = Keys::new(&tmp.join("k"));
    let server = Server::start(&tmp.join("server"), &[("FERRY_ROLLOUT_TICK_MS", "100")]);
    ok(&mut server.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    let baseline = fixtures().join("bc_logreg.baseline.csv");
    let baseline = baseline.to_str().unwrap();
    for (model, v, extra) in [
        (
            "fraud",
            1,
            vec![
                "--metric",
                "auc=0.91",
                "--tag",
                "team=risk",
                "--baseline",
                baseline,
            ],
        ),
        (
            "fraud",
            2,
            vec![
                "--metric",
                "auc=0.93",
                "--tag",
                "team=risk",
                "--baseline",
                baseline,
                "--parent-version",
                "1",
            ],
        ),
        (
            "churn",
            1,
            vec!["--metric", "auc=0.80", "--tag", "team=growth"],
        ),
    ] {
        let b = keys.bundle(model, v, "pub", &extra);
        ok(&mut server.cli(&["model", "push", b.to_str().unwrap()]));
    }
    ok(&mut server.cli(&["model", "promote", "fraud", "1", "--alias", "champion"]));
    let token = |role: &str| {
        server.json(&["token", "create", "--name", role, "--role", role])["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (publisher, viewer) = (token("publisher"), token("viewer"));
    let id = server.json(&["token", "list"]);
    let publisher_id = id
        .as_array()
        .or_else(|| id["tokens"].as_array())
        .unwrap()
        .iter()
        .find(|t| t["name"] == "publisher")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    (server, publisher, viewer, publisher_id)
}

/// One HTTP/1.1 request; (status, lower-cased headers, body).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn request(url: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Signs in with `token`; the `ferry_session=…` cookie pair.
fn sign_in(url: &str, token: &str) -> String {
    let origin = url.to_string();
    let r = request(
        url,
        "POST",
        "/ui/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", &origin),
        ],
        &format!("token={token}&next=%2Fmodels"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/models"));
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token a page carries in its `<meta>`.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf-token" content=""#).unwrap();
    let rest = &page[at + r#"name="csrf-token" content=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn audit_has(server: &Server, action: &str, outcome: &str, actor_part: &str) -> bool {
    server
        .audit(action)
        .iter()
        .any(|r| r["outcome"] == outcome && r["actor"].as_str().unwrap_or("").contains(actor_part))
}

#[test]
fn sessions_need_csrf_end_at_sign_out_and_when_the_token_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, publisher, viewer, publisher_id) = setup(tmp.path());
    let url = server.url.clone();

    // No session: pages send the browser to sign in, coming back after.
    let r = request(&url, "GET", "/", &[], "");
    assert_eq!((r.status, r.header("location")), (303, Some("/models")));
    let r = request(&url, "GET", "/models?q=fr", &[], "");
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some("/ui/login?next=%2Fmodels%3Fq%3Dfr")
    );
    let r = request(&url, "GET", "/ui/login", &[], "");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));

    // A wrong token is refused and counted like a failed API login; a form
    // posted from another site is refused before anything is looked at.
    let bad = "fy_".to_string() + &"0".repeat(64);
    let r = request(
        &url,
        "POST",
        "/ui/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={bad}"),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(server
        .audit("auth.login")
        .iter()
        .any(|r| r["outcome"] == "refused"));
    let r = request(
        &url,
        "POST",
        "/ui/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "https://evil.example"),
        ],
        &format!("token={publisher}"),
    );
    assert_eq!(r.status, 403);

    // Signed in: pages and the REST API answer the cookie.
    let cookie = sign_in(&url, &publisher);
    let page = request(&url, "GET", "/models", &[("Cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("fraud") && page.body.contains("churn"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csrf = csrf_of(&page.body);
    let r = request(&url, "GET", "/api/v1/whoami", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"publisher\""));
    assert!(audit_has(&server, "session.create", "ok", "(publisher)"));

    // A mutation through the session needs the CSRF token: without it or
    // with a wrong one 403 (audited), with it the promotion happens.
    let promote = |headers: &[(&str, &str)]| {
        let mut h = vec![
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/json"),
        ];
        h.extend_from_slice(headers);
        request(
            &url,
            "POST",
            "/api/v1/models/fraud/promote",
            &h,
            r#"{"version":2,"alias":"staging"}"#,
        )
    };
    let r = promote(&[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("\"csrf\""));
    let wrong = "0".repeat(64);
    assert_eq!(promote(&[("X-CSRF-Token", &wrong)]).status, 403);
    assert!(audit_has(&server, "auth.csrf", "refused", "(publisher)"));
    let r = promote(&[("X-CSRF-Token", &csrf)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(audit_has(&server, "alias.set", "ok", "(publisher)"));

    // Pages authorize like the API: the audit trail is for admins.
    let r = request(&url, "GET", "/audit", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 403);
    assert!(r.body.contains("may not audit.list"), "{}", r.body);

    // Assets: gzip when asked, immutable, under their content hash.
    let css = page
        .body
        .split('"')
        .find(|s| s.ends_with("/dashboard.css"))
        .unwrap();
    let r = request(&url, "GET", css, &[("Accept-Encoding", "gzip")], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.header("cache-control").unwrap().contains("immutable"));

    // Revoking the token ends its session at once.
    ok(&mut server.cli(&["token", "revoke", &publisher_id]));
    let r = request(&url, "GET", "/models", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 303);
    let r = request(&url, "GET", "/api/v1/whoami", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 401);

    // A viewer's forged promotion (cookie and CSRF token) is refused by RBAC.
    let cookie = sign_in(&url, &viewer);
    let page = request(&url, "GET", "/models/fraud", &[("Cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("promote-button"),
        "a viewer sees no promote button"
    );
    let csrf = csrf_of(&page.body);
    let r = request(
        &url,
        "POST",
        "/api/v1/models/fraud/promote",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/json"),
            ("X-CSRF-Token", &csrf),
        ],
        r#"{"version":2,"alias":"champion"}"#,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(audit_has(&server, "alias.set", "refused", "(viewer)"));

    // Sign-out needs the CSRF token too, then the session is gone.
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let r = request(
        &url,
        "POST",
        "/ui/logout",
        &[("Cookie", &cookie), form],
        "_csrf=x",
    );
    assert_eq!(r.status, 403);
    let r = request(
        &url,
        "POST",
        "/ui/logout",
        &[("Cookie", &cookie), form],
        &format!("_csrf={csrf}"),
    );
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/login")));
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = request(&url, "GET", "/api/v1/whoami", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 401);
    assert!(audit_has(&server, "session.delete", "ok", "(viewer)"));
    ok(&mut server.cli(&["audit", "verify"]));
}

/// What the browser test needs: node, Chromium and `npm ci` in
/// tests/browser; `None` (skipped or failed under CI) when one is missing.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    let chromium = PathBuf::from(
        std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let node = Command::new("node").arg("--version").output();
    if node.is_err() || !node.as_ref().is_ok_and(|o| o.status.success()) {
        skip_or_fail("node (Node.js), for the dashboard's browser tests");
        return None;
    }
    if !chromium.exists() {
        skip_or_fail("chromium (apt-get install chromium), for the dashboard's browser tests");
        return None;
    }
    if !dir.join("node_modules/playwright-core").exists()
        || !dir.join("node_modules/axe-core").exists()
    {
        skip_or_fail("tests/browser/node_modules (npm ci --prefix tests/browser)");
        return None;
    }
    ferry_e2e::used_service("chromium");
    Some((dir, chromium))
}

const LONG: Duration = Duration::from_secs(180);

/// Four simulated devices labelled `site=berlin` (`ferry-fleet-sim`, as in
/// rollout_e2e.rs), connected and active on `fraud` v1, reporting drift
/// that fraud's drift policy (PSI threshold 0.95) does not alert on (the
/// browser lowers it); then a rollout of v2 to them that waits for
/// approval after its first wave. The simulator and the rollout's id.
fn fleet_with_a_rollout(server: &Server, tmp: &Path) -> (Proc, String) {
    let http = server.url.trim_start_matches("http://");
    let (code, body) = fleet::http_raw(
        http,
        "POST",
        "/api/v1/models/fraud/drift-config",
        ADMIN,
        r#"{"psi_threshold": 0.95}"#,
    );
    assert_eq!(code, 200, "{body}");
    // Drift (PSI 0.9) on every version, one feature, 200 rows a second.
    let sim = simulated_devices(
        server,
        tmp,
        "sim",
        "site=berlin",
        4,
        &[
            "--telemetry",
            "--telemetry-window-secs",
            "1",
            "--telemetry-requests",
            "200",
            "--telemetry-profile",
            "default:drift=0.9",
        ],
    );
    wait_for("every simulated device connected", LONG, || {
        let v = server.json(&["device", "list"]);
        let devices = v["devices"].as_array().unwrap();
        (devices.iter().filter(|d| d["connected"] == true).count() == 4).then_some(())
    });
    let v = server.json(&[
        "deploy",
        "fraud",
        "--version",
        "1",
        "--selector",
        "site=berlin",
    ]);
    let deployment = v["id"].as_str().unwrap().to_string();
    wait_for("every device active on v1", LONG, || {
        (server.deployment(&deployment)["summary"]["active"] == 4).then_some(())
    });
    let id = start_rollout(
        server,
        tmp,
        "site=berlin",
        "waves = [\"50%\", \"100%\"]\nbake_secs = 1\non_success = \"approve\"\n\n[model]\ngates = []\n",
    );
    (sim, id)
}

/// Starts a rollout of fraud v2 to `selector` under the policy `toml`; its id.
fn start_rollout(server: &Server, tmp: &Path, selector: &str, toml: &str) -> String {
    let policy = tmp.join("policy.toml");
    std::fs::write(&policy, toml).unwrap();
    let v = server.json(&[
        "rollout",
        "start",
        "fraud",
        "--version",
        "2",
        "--selector",
        selector,
        "--policy-file",
        policy.to_str().unwrap(),
    ]);
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn the_dashboard_works_in_chromium_with_no_errors_or_accessibility_violations() {
    let Some((dir, chromium)) = browser_tools() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (server, publisher, viewer, _) = setup(tmp.path());
    let operator = server.json(&[
        "token", "create", "--name", "operator", "--role", "operator",
    ])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_sim, rollout) = fleet_with_a_rollout(&server, tmp.path());
    // churn v2, signed with the keys setup() made, for the browser to upload.
    let keys = Keys {
        dir: tmp.path().join("k"),
    };
    let upload = keys.bundle(
        "churn",
        2,
        "pub",
        &["--metric", "auc=0.82", "--tag", "team=growth"],
    );
    // Screenshots go to docs/dashboard/ only when asked (they change with
    // every run's tokens and times).
    let shots = if std::env::var("FERRY_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard")
    } else {
        tmp.path().join("screenshots")
    };
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .env("FERRY_URL", &server.url)
        .env("FERRY_ADMIN_TOKEN", ADMIN)
        .env("FERRY_PUBLISHER_TOKEN", &publisher)
        .env("FERRY_VIEWER_TOKEN", &viewer)
        .env("FERRY_OPERATOR_TOKEN", &operator)
        .env("FERRY_ROLLOUT_ID", &rollout)
        .env("FERRY_CHROMIUM", &chromium)
        .env("FERRY_SCREENSHOTS", &shots)
        .env("FERRY_UPLOAD_BUNDLE", &upload)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dashboard.mjs failed:\n{log}");
    for page in [
        "login",
        "models",
        "model",
        "compare",
        "audit",
        "fleet",
        "rollout",
        "alerts",
        "monitoring",
        "policy",
        "device",
        "deployments",
        "deployment",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "{page}.png missing:\n{log}"
        );
    }
    // What the browser did is in the audit trail.
    assert!(server
        .audit("alias.set")
        .iter()
        .any(|r| r["outcome"] == "ok"
            && r["target"].as_str().unwrap_or("").contains("champion -> 2")));
    assert!(server
        .audit("alias.set")
        .iter()
        .any(|r| r["outcome"] == "refused"));
    // The operator approved in the browser, the viewer's forgery was refused.
    let approvals = server.audit("rollout.approve");
    assert!(approvals
        .iter()
        .any(|r| r["outcome"] == "ok" && r["actor"].as_str().unwrap_or("").contains("(operator)")));
    assert!(approvals.iter().any(
        |r| r["outcome"] == "refused" && r["actor"].as_str().unwrap_or("").contains("(viewer)")
    ));
    // The operator acknowledged the drift alert, the viewer's forgery was
    // refused.
    let acks = server.audit("alert.ack");
    assert!(acks
        .iter()
        .any(|r| r["outcome"] == "ok" && r["actor"].as_str().unwrap_or("").contains("(operator)")));
    assert!(acks.iter().any(
        |r| r["outcome"] == "refused" && r["actor"].as_str().unwrap_or("").contains("(viewer)")
    ));
    // The policy saved in the browser (the viewer's forgery refused), the
    // upload and the delete went through the REST API, RBAC and audit.
    let by = |action: &str, outcome: &str, who: &str| audit_has(&server, action, outcome, who);
    assert!(by("drift_policy.set", "ok", "(publisher)"));
    assert!(by("drift_policy.set", "refused", "(viewer)"));
    assert!(by("model.register", "ok", "(publisher)"));
    assert!(by("version.delete", "ok", ""));
    let p = server.json(&["drift", "config", "get", "fraud"]);
    assert_eq!(p["psi_threshold"], 0.45, "{p}");
    assert_eq!(p["webhook_secret_set"], true, "{p}");
    let v = server.json(&["model", "versions", "churn"]);
    let listed: Vec<i64> = v
        .as_array()
        .or_else(|| v["versions"].as_array())
        .unwrap()
        .iter()
        .filter_map(|d| d["version"].as_i64())
        .collect();
    assert_eq!(listed, vec![2], "churn: v2 uploaded, v1 deleted: {v}");
    // The operator undeployed fraud v1 in the browser, the viewer's
    // forgery was refused.
    let undeploys = server.audit("deployment.delete");
    assert!(undeploys
        .iter()
        .any(|r| r["outcome"] == "ok" && r["actor"].as_str().unwrap_or("").contains("(operator)")));
    assert!(undeploys.iter().any(
        |r| r["outcome"] == "refused" && r["actor"].as_str().unwrap_or("").contains("(viewer)")
    ));
    let v = server.json(&["rollout", "show", &rollout]);
    assert_eq!(v["rollout"]["phase"], "finished", "{v}");
    ok(&mut server.cli(&["audit", "verify"]));
}

/// `POST /api/v1/session/link` (what `ferry dashboard` and `ferry demo`
/// print): the link signs a browser in as the token that asked, once.
#[test]
fn one_time_sign_in_links_work_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, publisher, _, _) = setup(tmp.path());
    let url = server.url.clone();
    let r = request(&url, "POST", "/api/v1/session/link", &[], "");
    assert_eq!(r.status, 401, "no token, no link");
    let bearer = format!("Bearer {publisher}");
    let r = request(
        &url,
        "POST",
        "/api/v1/session/link",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let link: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let path = link["path"].as_str().unwrap().to_string();
    assert!(path.starts_with("/ui/login/link?code="), "{path}");

    let r = request(&url, "GET", &path, &[], "");
    assert_eq!((r.status, r.header("location")), (303, Some("/models")));
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let r = request(&url, "GET", "/models", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("publisher"), "signed in as the publisher");

    // Used once: refused after; a made-up code too.
    let r = request(&url, "GET", &path, &[], "");
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let made_up = format!("/ui/login/link?code={}", "ab".repeat(32));
    assert_eq!(request(&url, "GET", &made_up, &[], "").status, 401);
    assert!(audit_has(&server, "session.link", "ok", "(publisher)"));
    assert!(server
        .audit("session.create")
        .iter()
        .any(|r| r["detail"].as_str().unwrap_or("").contains("one-time link")));
}

/// `/ui/events` for a session: the stream's lines after its head.
fn event_stream(url: &str, cookie: &str) -> std::io::BufReader<std::net::TcpStream> {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /ui/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut head = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        head.push(l.to_ascii_lowercase());
    }
    assert!(head[0].contains(" 200"), "{head:?}");
    assert!(
        head.iter()
            .any(|h| h.starts_with("content-type: text/event-stream")),
        "{head:?}"
    );
    r
}

/// The change feed: `/ui/events` needs a session, a viewer's stream names
/// a rollout an operator just started, as a server-sent event, and another
/// tenant's stream does not.
#[test]
fn live_events_name_what_just_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _, viewer, _) = setup(tmp.path());
    let url = server.url.clone();
    let r = request(&url, "GET", "/ui/events", &[], "");
    assert_eq!(r.status, 303, "no session: sign in first");

    let lines = event_stream(&url, &sign_in(&url, &viewer)).lines();
    let other = server.json(&[
        "token", "create", "--name", "other", "--role", "admin", "--tenant", "other",
    ])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let other_lines = event_stream(&url, &sign_in(&url, &other));

    let id = start_rollout(
        &server,
        tmp.path(),
        "site=nowhere",
        "waves = [\"100%\"]\n\n[model]\ngates = []\n",
    );
    // Chunked framing lines and keep-alives come between; the event is
    // `event: rollout` then `data: <id>`.
    let mut last = String::new();
    let mut seen = false;
    for l in lines {
        let l = l.expect("the stream ended before the rollout's event");
        if last == "event: rollout" && l == format!("data: {id}") {
            seen = true;
            break;
        }
        if !l.trim().is_empty() && !l.chars().all(|c| c.is_ascii_hexdigit()) {
            last = l;
        }
    }
    assert!(seen);
    // The other tenant's stream was sent the change the same instant if at
    // all: after two seconds of silence (a read timeout) nothing named it.
    let mut s = other_lines;
    s.get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(!got.contains(&id), "another tenant heard of {id}: {got}");
}

/// Without `--quic` there is no fleet: the fleet and rollout pages say so
/// (and still authorize), the REST rollout routes do not exist.
#[test]
fn without_the_fleet_its_pages_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("ferry"));
    cmd.args(["server", "--http", "127.0.0.1:0", "--data"])
        .arg(tmp.path().join("server"))
        .env("FERRY_BOOTSTRAP_TOKEN", ADMIN)
        .env_remove("FAILPOINTS");
    let (_server, found) = spawn_until(cmd, &["ferry server listening on "]);
    let url = found[0].split_whitespace().next().unwrap().to_string();
    let cookie = sign_in(&url, ADMIN);
    for path in [
        "/fleet",
        "/fleet/dev_1",
        "/deployments",
        "/deployments/dep_1",
        "/rollouts",
        "/rollouts/ro_1",
        "/rollouts/ro_1/progress",
    ] {
        let r = request(&url, "GET", path, &[("Cookie", &cookie)], "");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(
            r.body.contains("The fleet is not enabled on this server"),
            "{path}: {}",
            r.body
        );
    }
    let r = request(&url, "GET", "/rollouts", &[], "");
    assert_eq!(r.status, 303, "no session: to sign-in");
    let r = request(
        &url,
        "GET",
        "/api/v1/rollouts",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
}

/// `n` simulated devices labelled `labels`, enrolled with and connected to
/// `server`, working in `dir` under `tmp`; `extra` goes to
/// `ferry-fleet-sim` (e.g. `--telemetry`).
fn simulated_devices(
    server: &Server,
    tmp: &Path,
    dir: &str,
    labels: &str,
    n: usize,
    extra: &[&str],
) -> Proc {
    let ca = tmp.join(format!("{dir}-ca.pem"));
    let tok = device_token(server, labels, n, &ca);
    fleet::simulated_devices(server, &tok, &ca, &tmp.join(dir), n, 600, extra)
}

/// Two replicas over one PostgreSQL, the devices connected to B only: A's
/// REST listing and A's `/fleet` (filtered by connection and ordered by
/// last seen in SQL) show B's connections, and drop a device once its
/// process is killed; a relabel made through B moves a device out of a
/// deployment's states as A counts them at once (A's device snapshot
/// follows the database's device generation, not a timer).
#[test]
fn a_replica_lists_the_connections_and_labels_another_holds() {
    let Some(db) = Db::postgres() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::new(&tmp.path().join("k"));
    let a = Server::start(&tmp.path().join("a"), &db.with(&[]));
    let b = Server::start(&tmp.path().join("b"), &db.with(&[]));
    ok(&mut b.cli(&["trust", "push", keys.path("v1.root").to_str().unwrap()]));
    let bundle = keys.bundle("fraud", 1, "pub", &[]);
    ok(&mut b.cli(&["model", "push", bundle.to_str().unwrap()]));
    let mut stays = simulated_devices(&b, tmp.path(), "sim-stays", "site=rome", 2, &[]);
    let mut goes = simulated_devices(&b, tmp.path(), "sim-goes", "site=rome", 1, &[]);
    let connected_at_a = || -> Vec<String> {
        let v = a.json(&["device", "list"]);
        let mut ids: Vec<String> = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["connected"] == true)
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    wait_for("A's REST listing shows B's three connections", LONG, || {
        (connected_at_a().len() == 3).then_some(())
    });
    let cookie = sign_in(&a.url, ADMIN);
    let page = |q: &str| {
        let r = request(&a.url, "GET", q, &[("Cookie", cookie.as_str())], "");
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.body
    };
    assert!(page("/fleet?state=connected").contains("3 devices match."));
    assert!(page("/fleet?state=disconnected").contains("0 devices match."));

    // The lone device's process dies: B notices (QUIC idle timeout) and
    // ends its lease, and A lists it as disconnected, last by last seen.
    let gone_id = {
        let v = b.json(&["device", "list"]);
        let all: Vec<String> = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        goes.child.kill().unwrap();
        goes.child.wait().unwrap();
        wait_for("the killed device disconnected, as A sees it", LONG, || {
            let now = connected_at_a();
            (now.len() == 2).then(|| all.iter().find(|id| !now.contains(id)).unwrap().clone())
        })
    };
    let off = page("/fleet?state=disconnected");
    assert!(
        off.contains("1 devices match.") && off.contains(&gone_id),
        "{off}"
    );
    let on = page("/fleet?state=connected");
    assert!(
        on.contains("2 devices match.") && !on.contains(&gone_id),
        "{on}"
    );
    let by_seen = page("/fleet?sort=last_seen");
    let at = |id: &str| by_seen.find(&format!("/fleet/{id}")).unwrap();
    for id in connected_at_a() {
        assert!(at(&id) < at(&gone_id), "connected first: {by_seen}");
    }

    // A counts a deployment's devices from its snapshot; B relabels one.
    let v = b.json(&[
        "deploy",
        "fraud",
        "--version",
        "1",
        "--selector",
        "site=rome",
    ]);
    let dep = v["id"].as_str().unwrap().to_string();
    wait_for(
        "both connected devices active, as A counts them",
        LONG,
        || (a.deployment(&dep)["summary"]["active"] == 2).then_some(()),
    );
    assert_eq!(a.deployment(&dep)["devices"].as_array().unwrap().len(), 3);
    let moved = connected_at_a()[0].clone();
    ok(&mut b.cli(&["device", "label", &moved, "site=paris"]));
    let rows = a.deployment(&dep)["devices"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["device"] != moved.as_str()),
        "{rows:?}"
    );
    let listed = page("/deployments");
    assert!(listed.contains(&dep), "{listed}");
    stays.child.kill().unwrap();
    let _ = stays.child.wait();
}
