//! Target constraints of a verified manifest against this device.

use super::Refusal;
use ferry_protocol::{Manifest, Runtime};
use semver::Version;

/// Parses a version as semver, reading `1.2` as `1.2.0` and `1` as `1.0.0`
/// (manifests are written by hand) and ignoring a leading `v`.
fn parse_version(s: &str) -> Option<Version> {
    let s = s.trim();
    let s = s.strip_prefix('v').unwrap_or(s);
    if let Ok(v) = Version::parse(s) {
        return Some(v);
    }
    let (core, rest) = s.split_at(s.find(['-', '+']).unwrap_or(s.len()));
    let padded = match core.matches('.').count() {
        0 => format!("{core}.0.0{rest}"),
        1 => format!("{core}.0{rest}"),
        _ => return None,
    };
    Version::parse(&padded).ok()
}

/// Refuses a bundle this device cannot run: another runtime, another
/// architecture, or an agent older than the bundle's minimum (semver
/// precedence: `1.2` is `1.2.0`, and `1.2.0-rc.1` comes before `1.2.0`).
pub fn check_target(m: &Manifest, arch: &str, agent_version: &str) -> Result<(), Refusal> {
    if m.runtime != Runtime::Onnx {
        return Err(Refusal::new(
            "unsupported_runtime",
            format!("runtime {} is not available on this device", m.runtime),
        ));
    }
    if !m.target.architectures.is_empty() && !m.target.architectures.iter().any(|a| a == arch) {
        return Err(Refusal::new(
            "wrong_architecture",
            format!(
                "bundle targets {} but this device is {arch}",
                m.target.architectures.join(", ")
            ),
        ));
    }
    if let Some(min) = &m.target.min_agent_version {
        let Some(need) = parse_version(min) else {
            return Err(Refusal::new(
                "bad_min_agent_version",
                format!("the bundle's minimum agent version {min:?} is not a version"),
            ));
        };
        // Precedence, not `Ord`: build metadata does not order versions.
        let too_old = parse_version(agent_version)
            .is_none_or(|have| have.cmp_precedence(&need) == std::cmp::Ordering::Less);
        if too_old {
            return Err(Refusal::new(
                "agent_too_old",
                format!("bundle needs agent {min} or later, this is {agent_version}"),
            ));
        }
    }
    Ok(())
}

/// Refuses a bundle whose required runtime ([`Manifest::required_runtime`])
/// this device does not offer (`runtimes`, as its hello lists them), or
/// names a runtime this agent does not know.
pub fn check_runtime(m: &Manifest, runtimes: &[String]) -> Result<(), Refusal> {
    m.runtime_among(runtimes)
        .map(|_| ())
        .map_err(|reason| Refusal::new("unsupported_runtime", reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::TargetConstraints;

    fn manifest() -> Manifest {
        Manifest {
            model: ferry_protocol::ModelName::try_from("m".to_string()).unwrap(),
            version: 1,
            runtime: Runtime::Onnx,
            schema: ferry_protocol::Schema {
                inputs: vec![],
                outputs: vec![],
            },
            baseline: None,
            artifacts: vec![],
            tags: Default::default(),
            metrics: Default::default(),
            lineage: Default::default(),
            created_at: 0,
            expires_at: None,
            target: TargetConstraints::default(),
            test_vectors: None,
            const_inputs: Vec::new(),
        }
    }

    fn needs(min: &str) -> Manifest {
        let mut m = manifest();
        m.target.min_agent_version = Some(min.into());
        m
    }

    #[test]
    fn target_constraints_refuse_wrong_architecture_and_old_agent() {
        let mut m = manifest();
        m.target = TargetConstraints {
            architectures: vec!["aarch64".into()],
            min_agent_version: None,
        };
        assert_eq!(
            check_target(&m, "x86_64", "0.1.0").unwrap_err().code,
            "wrong_architecture"
        );
        assert!(check_target(&m, "aarch64", "0.1.0").is_ok());
        m.target.architectures.clear();
        m.target.min_agent_version = Some("0.2.0".into());
        assert_eq!(
            check_target(&m, "x86_64", "0.1.9").unwrap_err().code,
            "agent_too_old"
        );
        assert!(check_target(&m, "x86_64", "0.10.0").is_ok());
    }

    #[test]
    fn short_versions_equal_their_zero_padded_form() {
        // `1.2` is `1.2.0`: an agent at 1.2.0 satisfies it, and the other
        // way round (a split-on-dots comparison had `[1,2] < [1,2,0]`).
        assert!(check_target(&needs("1.2"), "x86_64", "1.2.0").is_ok());
        assert!(check_target(&needs("1.2.0"), "x86_64", "1.2").is_ok());
        assert!(check_target(&needs("1"), "x86_64", "1.0.0").is_ok());
        assert!(check_target(&needs("v1.2"), "x86_64", "1.2.1").is_ok());
        assert_eq!(
            check_target(&needs("1.2"), "x86_64", "1.1.9")
                .unwrap_err()
                .code,
            "agent_too_old"
        );
    }

    #[test]
    fn pre_releases_come_before_their_release() {
        // A release candidate of 1.2.0 is older than 1.2.0...
        assert_eq!(
            check_target(&needs("1.2.0"), "x86_64", "1.2.0-rc.1")
                .unwrap_err()
                .code,
            "agent_too_old"
        );
        // ...newer than 1.1.x, and ordered among its siblings.
        assert!(check_target(&needs("1.1.5"), "x86_64", "1.2.0-rc.1").is_ok());
        assert!(check_target(&needs("1.2.0-rc.1"), "x86_64", "1.2.0-rc.2").is_ok());
        assert!(check_target(&needs("1.2.0-rc.2"), "x86_64", "1.2.0-rc.1").is_err());
        assert!(check_target(&needs("1.2.0-rc.1"), "x86_64", "1.2.0").is_ok());
        // Build metadata does not order versions.
        assert!(check_target(&needs("1.2.0"), "x86_64", "1.2.0+build.5").is_ok());
        assert!(check_target(&needs("1.2.0+build.9"), "x86_64", "1.2.0").is_ok());
    }

    #[test]
    fn a_required_runtime_must_be_offered() {
        let mut m = manifest();
        let cpu: Vec<String> = vec!["onnx".into()];
        let gpu: Vec<String> = vec!["onnx".into(), "onnx-burn-cuda".into()];
        assert!(check_runtime(&m, &cpu).is_ok(), "no requirement");
        m.tags
            .insert(ferry_protocol::RUNTIME_TAG.into(), "burn".into());
        assert_eq!(
            check_runtime(&m, &cpu).unwrap_err().code,
            "unsupported_runtime"
        );
        assert!(check_runtime(&m, &gpu).is_ok());
        m.tags
            .insert(ferry_protocol::RUNTIME_TAG.into(), "burn-tpu".into());
        let e = check_runtime(&m, &gpu).unwrap_err();
        assert_eq!(e.code, "unsupported_runtime");
        assert!(e.reason.contains("burn-tpu"), "{}", e.reason);
    }

    #[test]
    fn an_unreadable_minimum_is_refused() {
        assert_eq!(
            check_target(&needs("latest"), "x86_64", "1.0.0")
                .unwrap_err()
                .code,
            "bad_min_agent_version"
        );
    }
}
