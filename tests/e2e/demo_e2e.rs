//! `ferry demo`, the README's run command, as a user runs it: it starts a
//! control plane and an enrolled agent, the model goes active, the printed
//! curl works, and Ctrl-C stops everything.
#![allow(clippy::unwrap_used)]

use ferry_e2e::fleet::{bin, http, http_raw};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn demo_serves_the_model_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut child = Command::new(bin("ferry"))
        .args(["demo", "--dir"])
        .arg(&dir)
        .args([
            "--http",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--requests",
            "5",
            "--agent-bin",
        ])
        .arg(bin("ferry-agent"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "ferry demo ready" {
            break;
        }
    }
    let text = seen.join("\n");
    assert!(text.contains(": active"), "{text}");
    assert!(text.contains("5 of 5 answered"), "{text}");

    // The printed curl, sent as printed.
    let curl = seen
        .iter()
        .find(|l| l.trim_start().starts_with("curl "))
        .unwrap_or_else(|| panic!("no curl line in {text}"));
    let body = curl.split('\'').nth(3).unwrap();
    let url = curl.rsplit(' ').next().unwrap();
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let (status, v) = http(addr, "POST", path, body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model_name"], "breast-cancer");
    assert_eq!(v["model_version"], "1");

    // The printed dashboard address is a one-time sign-in link: it signs
    // the browser in (a redirect to the models, with the session cookie)
    // once, and never again; the sign-in form stays for later.
    let dash = seen
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("dashboard"))
        .unwrap_or_else(|| panic!("no dashboard line in {text}"));
    let dash = dash.split_whitespace().next().unwrap();
    let rest = dash.strip_prefix("http://").unwrap();
    let (dash_addr, link) = rest.split_at(rest.find('/').unwrap());
    assert!(link.starts_with("/ui/login/link?code="), "{dash}");
    let (status, page) = http_raw(dash_addr, "GET", link, "", "");
    assert_eq!(status, 303, "{page}");
    let (status, page) = http_raw(dash_addr, "GET", link, "", "");
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("used already"), "{page}");
    let (status, page) = http_raw(dash_addr, "GET", "/ui/login", "", "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<form"), "{page}");

    // Ctrl-C: the demo stops its children and exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {rest:?}");
    assert!(rest.iter().any(|l| l == "ferry demo stopped"), "{rest:?}");
    assert_eq!(
        http(addr, "GET", "/v2/health/live", "").0,
        0,
        "agent still up"
    );
    assert!(dir.join("server.log").exists() && dir.join("agent.log").exists());
}
