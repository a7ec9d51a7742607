//! The operator's bundle round trip through the real `ferry` binary: keys,
//! trust root, build from a real ONNX fixture, verify, inspect, and the
//! refusals an operator would hit.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(args: &[&str]) -> String {
    let out = ferry(args);
    assert!(
        !out.status.success(),
        "ferry {args:?} unexpectedly succeeded"
    );
    String::from_utf8(out.stderr).unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn setup() -> Setup {
    let s = Setup {
        dir: tempfile::tempdir().unwrap(),
    };
    let keys = s.p("keys");
    for name in ["root1", "root2", "publisher", "fraudteam"] {
        ok(&["key", "generate", "--out", &keys, "--name", name]);
    }
    ok(&[
        "trust",
        "init",
        "--root-key",
        &s.p("keys/root1.key"),
        "--root-key",
        &s.p("keys/root2.key"),
        "--threshold",
        "2",
        "--publisher",
        &s.p("keys/publisher.pub"),
        "--publisher",
        &format!("{}=fraud-*", s.p("keys/fraudteam.pub")),
        "--tenant",
        "acme",
        "--out",
        &s.p("trust.root"),
    ]);
    s
}

fn build(s: &Setup, name: &str, version: &str, key: &str, out: &str, extra: &[&str]) -> Output {
    let model = fixtures().join("bc_logreg.onnx");
    let baseline = fixtures().join("bc_logreg.baseline.csv");
    let mut args = vec![
        "bundle".to_string(),
        "build".into(),
        model.display().to_string(),
        "--name".into(),
        name.into(),
        "--version".into(),
        version.into(),
        "--baseline".into(),
        baseline.display().to_string(),
        "--sign-with".into(),
        s.p(&format!("keys/{key}.key")),
        "--out".into(),
        s.p(out),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ferry(&refs)
}

#[test]
fn private_keys_are_owner_only_and_never_overwritten() {
    let s = setup();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.p("keys/publisher.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let err = refused(&[
        "key",
        "generate",
        "--out",
        &s.p("keys"),
        "--name",
        "publisher",
    ]);
    assert!(err.contains("refusing to overwrite"), "{err}");
}

#[test]
fn build_verify_inspect_round_trip() {
    let s = setup();
    let vectors = fixtures().join("bc_logreg.testvectors.json");
    let out = build(
        &s,
        "fraud-eu",
        "3",
        "publisher",
        "b.ferry",
        &[
            "--tag",
            "team=risk",
            "--metric",
            "auc=0.99",
            "--parent-version",
            "2",
            "--test-vectors",
            &vectors.display().to_string(),
            "--arch",
            "x86_64",
            "--arch",
            "aarch64",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = ok(&[
        "bundle",
        "verify",
        &s.p("b.ferry"),
        "--trust",
        &s.p("trust.root"),
    ]);
    assert!(line.starts_with("OK fraud-eu v3 sha256:"), "{line}");
    assert_eq!(line.trim().lines().count(), 1);

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["bundle", "inspect", &s.p("b.ferry")])).unwrap();
    let m = &json["manifest"];
    assert_eq!(m["model"], "fraud-eu");
    assert_eq!(m["schema"]["inputs"][0]["name"], "input");
    assert_eq!(m["schema"]["inputs"][0]["dtype"], "FP32");
    assert_eq!(m["schema"]["inputs"][0]["shape"][1]["Fixed"], 30);
    assert_eq!(m["schema"]["outputs"][0]["name"], "label");
    assert_eq!(m["schema"]["outputs"][1]["name"], "probabilities");
    assert_eq!(m["baseline"]["features"].as_array().unwrap().len(), 30);
    assert_eq!(m["baseline"]["features"][0]["name"], "mean radius");
    assert_eq!(m["baseline"]["rows"], 398);
    assert_eq!(m["tags"]["team"], "risk");
    assert_eq!(m["metrics"]["auc"], 0.99);
    assert_eq!(m["lineage"]["parent_version"], 2);
    assert_eq!(m["test_vectors"]["vectors"].as_array().unwrap().len(), 3);
    assert_eq!(m["target"]["architectures"][1], "aarch64");
    let digest = json["digest"].as_str().unwrap();
    assert!(line.contains(digest));
}

#[test]
fn single_byte_flips_are_refused_with_a_reason() {
    let s = setup();
    assert!(build(&s, "m", "1", "publisher", "b.ferry", &[])
        .status
        .success());
    let bytes = std::fs::read(s.p("b.ferry")).unwrap();
    let n = bytes.len();
    // Every region: magic, header length, manifest, signature, artifact, end.
    let mut positions: Vec<usize> = vec![0, 7, 8, 11, 12, 13, n / 4, n / 2, n - 200, n - 2, n - 1];
    positions.extend((0..24).map(|i| 14 + i * (n - 20) / 24));
    for pos in positions {
        let mut t = bytes.clone();
        t[pos] ^= 0x20;
        let path = s.p("flipped.ferry");
        std::fs::write(&path, &t).unwrap();
        let err = refused(&["bundle", "verify", &path, "--trust", &s.p("trust.root")]);
        assert!(err.contains("bundle refused:"), "byte {pos}: {err}");
    }
    let err = {
        let mut t = bytes.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        std::fs::write(s.p("tampered.ferry"), &t).unwrap();
        refused(&[
            "bundle",
            "verify",
            &s.p("tampered.ferry"),
            "--trust",
            &s.p("trust.root"),
        ])
    };
    assert!(
        err.contains("digest mismatch") && err.contains("model.onnx"),
        "{err}"
    );
}

#[test]
fn refusals_name_what_failed() {
    let s = setup();
    // A publisher outside its name scope.
    assert!(build(&s, "churn", "1", "fraudteam", "scope.ferry", &[])
        .status
        .success());
    let err = refused(&[
        "bundle",
        "verify",
        &s.p("scope.ferry"),
        "--trust",
        &s.p("trust.root"),
    ]);
    assert!(err.contains("may not sign model \"churn\""), "{err}");
    assert!(
        build(&s, "fraud-us", "1", "fraudteam", "inscope.ferry", &[])
            .status
            .success()
    );
    ok(&[
        "bundle",
        "verify",
        &s.p("inscope.ferry"),
        "--trust",
        &s.p("trust.root"),
    ]);

    // Rollback below what the device has seen.
    assert!(build(&s, "m", "4", "publisher", "v4.ferry", &[])
        .status
        .success());
    let err = refused(&[
        "bundle",
        "verify",
        &s.p("v4.ferry"),
        "--trust",
        &s.p("trust.root"),
        "--highest-seen",
        "5",
    ]);
    assert!(err.contains("rollback refused"), "{err}");

    // A key the trust root does not know.
    ok(&[
        "key",
        "generate",
        "--out",
        &s.p("keys"),
        "--name",
        "stranger",
    ]);
    assert!(build(&s, "m", "1", "stranger", "stranger.ferry", &[])
        .status
        .success());
    let err = refused(&[
        "bundle",
        "verify",
        &s.p("stranger.ferry"),
        "--trust",
        &s.p("trust.root"),
    ]);
    assert!(
        err.contains("no signature from a key in the trust root"),
        "{err}"
    );

    // Expired bundle.
    assert!(build(
        &s,
        "m",
        "1",
        "publisher",
        "exp.ferry",
        &["--expires-in", "1h"]
    )
    .status
    .success());
    let later = (ferry::now_unix() + 7200).to_string();
    let err = refused(&[
        "bundle",
        "verify",
        &s.p("exp.ferry"),
        "--trust",
        &s.p("trust.root"),
        "--at",
        &later,
    ]);
    assert!(err.contains("expired"), "{err}");

    // Not a bundle at all.
    std::fs::write(s.p("junk.ferry"), b"hello").unwrap();
    let err = refused(&[
        "bundle",
        "verify",
        &s.p("junk.ferry"),
        "--trust",
        &s.p("trust.root"),
    ]);
    assert!(err.contains("not a Ferry bundle"), "{err}");
}

#[test]
fn trust_root_needs_its_threshold() {
    let s = setup();
    let err = refused(&[
        "trust",
        "init",
        "--root-key",
        &s.p("keys/root1.key"),
        "--root-pub",
        &s.p("keys/root2.pub"),
        "--threshold",
        "2",
        "--out",
        &s.p("weak.root"),
    ]);
    assert!(err.contains("does not verify"), "{err}");
    assert!(!Path::new(&s.p("weak.root")).exists());
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&["trust", "show", &s.p("trust.root")])).unwrap();
    assert_eq!(shown["threshold"], 2);
    assert_eq!(shown["publishers"][1]["scopes"][0], "fraud-*");
}

#[test]
fn baseline_width_must_match_the_model() {
    let s = setup();
    let csv = s.p("narrow.csv");
    std::fs::write(&csv, "a,b\n1,2\n3,4\n").unwrap();
    let model = fixtures().join("bc_logreg.onnx").display().to_string();
    let err = refused(&[
        "bundle",
        "build",
        &model,
        "--name",
        "m",
        "--version",
        "1",
        "--baseline",
        &csv,
        "--sign-with",
        &s.p("keys/publisher.key"),
        "--out",
        &s.p("x.ferry"),
    ]);
    assert!(
        err.contains("2 columns") && err.contains("30 features"),
        "{err}"
    );
    assert!(!Path::new(&s.p("x.ferry")).exists(), "no bundle on failure");
}

#[test]
fn models_the_runtime_cannot_run_can_still_be_described() {
    let s = setup();
    let model = fixtures().join("unsupported_op.onnx").display().to_string();
    ok(&[
        "bundle",
        "build",
        &model,
        "--name",
        "odd",
        "--version",
        "1",
        "--sign-with",
        &s.p("keys/publisher.key"),
        "--out",
        &s.p("odd.ferry"),
    ]);
    ok(&[
        "bundle",
        "verify",
        &s.p("odd.ferry"),
        "--trust",
        &s.p("trust.root"),
    ]);
}

/// skl2onnx's default exports (ai.onnx.ml operators, ZipMap left on) are
/// bundled; the ZipMap output is described as the probability tensor the
/// agent serves: float32 `[N, classes]`.
#[test]
fn default_exports_with_zipmap_are_bundled_with_a_probability_tensor() {
    let s = setup();
    let ml = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx_ml");
    for (model, classes) in [
        ("scaler_logreg_zipmap", 3),
        ("svc_multi_rbf_proba_zipmap", 3),
    ] {
        let path = ml.join(format!("{model}.onnx")).display().to_string();
        let out = s.p(&format!("{model}.ferry"));
        ok(&[
            "bundle",
            "build",
            &path,
            "--name",
            "zm",
            "--version",
            "1",
            "--sign-with",
            &s.p("keys/publisher.key"),
            "--out",
            &out,
        ]);
        let json: serde_json::Value =
            serde_json::from_str(&ok(&["bundle", "inspect", &out])).unwrap();
        let outputs = &json["manifest"]["schema"]["outputs"];
        assert_eq!(outputs[0]["name"], "output_label", "{model}");
        assert_eq!(outputs[1]["name"], "output_probability", "{model}");
        assert_eq!(outputs[1]["dtype"], "FP32", "{model}");
        assert_eq!(outputs[1]["shape"][1]["Fixed"], classes, "{model}");
        assert!(
            outputs[1]["shape"][0]["Symbolic"].is_string(),
            "{model}: {outputs}"
        );
    }
}
