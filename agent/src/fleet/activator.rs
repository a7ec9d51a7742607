//! What the session needs from the thing that runs models, and the
//! agent's implementation over the serving core's atomic install path.

use super::target::{check_runtime, check_target};
use super::Refusal;
use crate::serving::{Agent, Role};
use ferry_protocol::bundle::read_header;
use ferry_protocol::desired::Assignment;
use ferry_protocol::frames::InstalledBundle;
use ferry_protocol::keys::sha256;
use ferry_protocol::{verify_manifest, Manifest, TrustRoot};
use std::path::Path;
use std::sync::Arc;

/// What the session needs from the thing that runs models. The agent's
/// implementation activates through [`Agent::install`]; the fleet simulator
/// verifies without running a model.
pub trait Activator: Send + Sync + 'static {
    /// What serves now, with the digest of its signed manifest.
    fn installed(&self) -> Vec<InstalledBundle>;
    /// The runtimes this device offers a bundle, for the fleet hello
    /// (`ferry_protocol::required_runtime`).
    fn runtimes(&self) -> Vec<String>;
    /// Verifies and activates a complete downloaded bundle (blocking).
    fn activate(&self, bundle: &Path, a: &Assignment) -> Result<(), Refusal>;
    /// Stops serving a model the control plane no longer assigns.
    fn unload(&self, model: &str) -> Result<(), Refusal>;
    /// Makes the assignment's version (below the one serving) the champion
    /// again from what this device holds, under the rollback rule
    /// (docs/security.md): an earlier champion still stored, with the
    /// assigned manifest; anything else is refused (`rollback_refused`).
    fn restore(&self, a: &Assignment) -> Result<(), Refusal>;
    /// Checks a download whose signed header has arrived (the artifacts may
    /// not have): signatures, assignment and target constraints, so a bundle
    /// this device would refuse is not downloaded to the end.
    fn precheck(&self, partial: &Path, a: &Assignment) -> Result<(), Refusal>;
    /// A bundle refused before it reached `activate` (by the server, the
    /// disk-space check or the header precheck).
    fn refused(&self, _a: &Assignment, _r: &Refusal) {}
    /// A successor trust root was accepted and persisted: verify later
    /// bundles against it.
    fn set_trust(&self, _root: TrustRoot) {}
}

/// Verifies the bundle's signed manifest against `trust`, that it is the
/// assigned one, and its target constraints: everything that can be
/// refused before the bytes of the model are looked at.
pub fn precheck(
    trust: &TrustRoot,
    bundle: &Path,
    a: &Assignment,
    now: u64,
    runtimes: &[String],
) -> Result<Manifest, Refusal> {
    let f = std::fs::File::open(bundle)
        .map_err(|e| Refusal::new("io", format!("opening {}: {e}", bundle.display())))?;
    let mut r = std::io::BufReader::new(f);
    let header = read_header(&mut r).map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    let digest = sha256(&header.manifest);
    if digest != a.manifest_digest {
        return Err(Refusal::new(
            "digest_mismatch",
            format!(
                "received manifest {} but {} was assigned",
                digest.to_hex(),
                a.manifest_digest.to_hex()
            ),
        ));
    }
    let verified = verify_manifest(trust, &header, now, None)
        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    let m = verified.into_manifest();
    if m.model != a.model || m.version != a.version {
        return Err(Refusal::new(
            "wrong_model",
            format!(
                "bundle is {} v{}, assignment is {} v{}",
                m.model, m.version, a.model, a.version
            ),
        ));
    }
    check_target(&m, std::env::consts::ARCH, env!("CARGO_PKG_VERSION"))?;
    check_runtime(&m, runtimes)?;
    Ok(m)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Activation through the serving core's atomic install path.
pub struct AgentActivator {
    pub agent: Arc<Agent>,
}

impl Activator for AgentActivator {
    fn installed(&self) -> Vec<InstalledBundle> {
        let table = self.agent.table();
        table
            .models
            .values()
            .map(|routes| {
                let l = &routes.champion.loaded;
                InstalledBundle {
                    model: l.manifest.model.clone(),
                    version: l.manifest.version,
                    manifest_digest: l.manifest_digest,
                    active: true,
                }
            })
            .collect()
    }

    fn runtimes(&self) -> Vec<String> {
        self.agent.runtimes()
    }

    fn precheck(&self, partial: &Path, a: &Assignment) -> Result<(), Refusal> {
        precheck(
            &self.agent.trust(),
            partial,
            a,
            now_unix(),
            &self.agent.runtimes(),
        )
        .map(|_| ())
    }

    fn set_trust(&self, root: TrustRoot) {
        self.agent.set_trust(root);
    }

    fn unload(&self, model: &str) -> Result<(), Refusal> {
        match self.agent.unload(model) {
            Ok(()) | Err(crate::serving::ActivateError::UnknownModel(_)) => Ok(()),
            Err(e) => Err(Refusal::new(e.code(), e.to_string())),
        }
    }

    fn restore(&self, a: &Assignment) -> Result<(), Refusal> {
        match self
            .agent
            .restore(a.model.as_str(), a.version, &a.manifest_digest)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let r = Refusal::new(e.code(), e.to_string());
                self.refused(a, &r);
                Err(r)
            }
        }
    }

    fn refused(&self, a: &Assignment, r: &Refusal) {
        self.agent.record_event(crate::serving::DeviceEvent {
            kind: "refused",
            model: Some(a.model.to_string()),
            version: Some(a.version),
            detail: format!("{}: {}", r.code, r.reason),
        });
    }

    fn activate(&self, bundle: &Path, a: &Assignment) -> Result<(), Refusal> {
        if let Err(r) = precheck(
            &self.agent.trust(),
            bundle,
            a,
            now_unix(),
            &self.agent.runtimes(),
        ) {
            self.refused(a, &r);
            return Err(r);
        }
        // install() copies, verifies every artifact, compiles the model, runs
        // the signed test vectors and only then swaps it in.
        self.agent
            .install(bundle, Role::Champion, None)
            .map(|_| ())
            .map_err(|e| Refusal::new(e.code(), e.to_string()))
    }
}
