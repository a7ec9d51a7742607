//! The operator CLI on real telemetry: after the drift scenario raised an
//! alert and fired one retraining trigger, `ferry alerts`, `ferry
//! triggers`, `ferry model metrics`, `ferry drift series|config` and
//! `ferry device health` read them from the running server, as tables and
//! as `--json` (the API's own answer, typed by `ferry::api::types`).

use ferry::api::types::{
    Alert, AlertList, DeviceHealthList, DriftPolicyView, DriftSeries, MetricSeries, TriggerList,
};
use ferry_e2e::table::{assert_aligned, row};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `ferry` pointed at the test's server with the admin token, and a home
/// of its own so no saved login interferes.
pub struct Cli {
    server: String,
    token: String,
    home: PathBuf,
}

impl Cli {
    pub fn new(addr: SocketAddr, token: &str, home: &Path) -> Self {
        std::fs::create_dir_all(home).unwrap();
        Cli {
            server: format!("http://{addr}"),
            token: token.to_string(),
            home: home.to_path_buf(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_e2e-ferry"))
            .args(args)
            .env("FERRY_SERVER", &self.server)
            .env("FERRY_TOKEN", &self.token)
            .env("FERRY_CONFIG_DIR", &self.home)
            .env_remove("FERRY_WEBHOOK_SECRET")
            .output()
            .unwrap()
    }

    /// Standard output of a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "ferry {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `--json` output, typed.
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ferry {a:?}: {e}: {text}"))
    }

    /// `--json` output as the untyped document, to compare with the API.
    pub fn value(&self, args: &[&str]) -> Value {
        self.json(args)
    }
}

/// The checks, on the scenario's server: `device` sent the windows,
/// `alert` is its drift alert, `secret` the policy's webhook secret.
pub fn check(addr: SocketAddr, token: &str, home: &Path, device: &str, alert: &str, secret: &str) {
    let cli = Cli::new(addr, token, home);
    let api = |path: &str| super::call(addr, "GET", path, None).1;

    // Alerts: the open drift alert, as a table and as the API answers.
    let t = cli.ok(&["alerts", "list", "--kind", "drift"]);
    assert_aligned(&t);
    assert!(t.starts_with("ID  "), "{t}");
    let r = row(&t, alert);
    assert_eq!(&r[1..4], ["drift", "bc", "1"], "{t}");
    assert_eq!(r[4], device);
    assert_eq!(r.last(), Some(&"open"));
    let listed: AlertList = cli.json(&["alerts", "list", "--kind", "drift"]);
    assert_eq!(listed.alerts.len(), 1);
    assert_eq!(
        cli.value(&["alerts", "list", "--kind", "drift"]),
        api("/api/v1/alerts?kind=drift")
    );

    // The one retraining trigger, delivered.
    let t = cli.ok(&["triggers", "list", "--model", "bc"]);
    assert_aligned(&t);
    let triggers: TriggerList = cli.json(&["triggers", "list", "--model", "bc"]);
    assert_eq!(triggers.triggers.len(), 1);
    let tr = &triggers.triggers[0];
    assert_eq!((tr.reason.as_str(), tr.alert_id.as_str()), ("drift", alert));
    let r = row(&t, &tr.id);
    assert_eq!(&r[1..4], ["bc", "1", "drift"], "{t}");
    assert_eq!(r[5], "yes", "delivered: {t}");
    assert_eq!(
        cli.value(&["triggers", "list", "--model", "bc"]),
        api("/api/v1/retrain-triggers?model=bc")
    );

    // Serving metrics and drift per window: the three closed windows.
    let m: MetricSeries = cli.json(&["model", "metrics", "bc"]);
    assert!(m.windows.len() >= 3, "{:?}", m.windows);
    assert!(m
        .windows
        .iter()
        .all(|w| w.device == device && w.errors == 0));
    assert_eq!(
        cli.value(&["model", "metrics", "bc", "--device", device]),
        api(&format!("/api/v1/models/bc/metrics?device={device}"))
    );
    let t = cli.ok(&["model", "metrics", "bc"]);
    assert_aligned(&t);
    assert_eq!(
        t.lines().filter(|l| l.starts_with(device)).count(),
        m.windows.len()
    );
    let d: DriftSeries = cli.json(&["drift", "series", "bc"]);
    assert_eq!(d.windows.len(), m.windows.len());
    assert!(d.windows.iter().any(|w| w.drifted));
    assert_eq!(
        cli.value(&["drift", "series", "bc"]),
        api("/api/v1/models/bc/drift")
    );
    let t = cli.ok(&["drift", "series", "bc", "--limit", "1"]);
    assert_aligned(&t);
    assert_eq!(t.lines().filter(|l| l.starts_with(device)).count(), 1);

    // Device health from the device's own (signed) reports.
    let h: DeviceHealthList = cli.json(&["device", "health"]);
    let mine = h.devices.iter().find(|x| x.device == device).unwrap();
    assert_eq!(mine.status, "online");
    let t = cli.ok(&["device", "health"]);
    assert_aligned(&t);
    let r = row(&t, device);
    assert_eq!(r[1], "online", "{t}");
    // The report the device sent when it connected: its agent version.
    assert_ne!(r[3], "-", "{t}");

    // The drift policy: the secret shows as set, never its value.
    let p: DriftPolicyView = cli.json(&["drift", "config", "get", "bc"]);
    assert_eq!(p.default, Some(false));
    let t = cli.ok(&["drift", "config", "get", "bc"]);
    assert_eq!(row(&t, "webhook secret")[1], "set", "{t}");
    assert!(!t.contains(secret));

    // A schedule set without giving the secret again keeps it, and the
    // webhook URL the listing shows redacted.
    let set: DriftPolicyView = cli.json(&["triggers", "set", "bc", "--schedule", "0 3 * * 1"]);
    assert_eq!(set.policy["retrain_schedule"], "0 3 * * 1");
    assert_eq!(set.policy["webhook_secret_set"], true);
    for kept in [
        "webhook_url",
        "psi_threshold",
        "min_drifted_rows",
        "cooldown_secs",
    ] {
        assert_eq!(set.policy[kept], p.policy[kept], "{kept}");
    }

    // Acknowledge: the alert leaves the open list, in the admin's name.
    let out = cli.ok(&["alerts", "ack", alert]);
    assert!(
        out.starts_with(&format!("acknowledged alert {alert} (drift on bc v1")),
        "{out}"
    );
    let open: AlertList = cli.json(&["alerts", "list", "--kind", "drift", "--open"]);
    assert!(open.alerts.is_empty(), "{:?}", open.alerts);
    let acked: AlertList = cli.json(&["alerts", "list", "--kind", "drift", "--acknowledged"]);
    let a: &Alert = &acked.alerts[0];
    assert!(a.acknowledged && a.acknowledged_at_ms.is_some());
    let t = cli.ok(&["alerts", "list", "--acknowledged"]);
    assert!(
        row(&t, alert)
            .last()
            .unwrap()
            .starts_with("acknowledged by "),
        "{t}"
    );
    let o = cli.run(&["alerts", "ack", "alert-that-is-not-there"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("404"));
}
