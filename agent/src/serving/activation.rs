//! Activation: install (verify while copying into the local store, compile,
//! test vectors, then publish), rollback, clearing a role, unloading, and
//! pruning old versions. Serialised by one mutex and all-or-nothing: a
//! refused bundle leaves the previous version serving.
//!
//! A change is durable once `state.json` is saved; that happens before the
//! routing table swaps (nothing serves that a restart would forget) and
//! before superseded versions are deleted (a crash never leaves a saved
//! state naming a deleted file). Install passes the crash points
//! `serving-install-copied`, `-verified`, `-saved` and `-swapped` (see
//! `crate::failpoint`).

use super::error::{io_err, ActivateError};
use super::local_store::{ActivationState, ModelState};
use super::routing::{ModelRoutes, Role, Route, Table};
use super::verify::{verify_and_load_with, LoadedModel};
use super::Agent;
use crate::batching::Batcher;
use crate::failpoint::crash_point;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What activation holds under its mutex: the persisted state and the
/// compiled plans of the versions it names.
pub(super) struct Activations {
    pub(super) state: ActivationState,
    loaded: BTreeMap<(String, u64), Arc<LoadedModel>>,
}

impl Activations {
    pub(super) fn new(state: ActivationState) -> Self {
        Self {
            state,
            loaded: BTreeMap::new(),
        }
    }
}

/// What an activation did.
#[derive(Clone, Debug, Serialize)]
pub struct Activated {
    pub model: String,
    pub version: u64,
    pub role: Role,
    pub previous: Option<u64>,
}

impl Agent {
    /// Verifies and compiles a bundle for serving, with this agent's
    /// plan-cache bounds.
    fn verify_and_load(
        &self,
        trust: &ferry_protocol::TrustRoot,
        bundle: &Path,
        now: u64,
        highest_seen: impl Fn(&str) -> Option<u64>,
    ) -> Result<LoadedModel, ActivateError> {
        let mut loaded = verify_and_load_with(
            trust,
            bundle,
            now,
            highest_seen,
            crate::engine::LoadOptions {
                cache: self.plan_cache,
                engine: self.engine.clone(),
                ..Default::default()
            },
        )?;
        let name = loaded.manifest.model.as_str();
        if let Some(policy) = self.batching.for_model(name) {
            match Batcher::start(&loaded.manifest, &loaded.engine, policy) {
                Ok(b) => loaded.batcher = Some(b),
                // A model that cannot be stacked still serves, one request
                // per run; configuring batching never refuses a bundle.
                Err(e) => tracing::warn!(
                    model = name,
                    version = loaded.manifest.version,
                    reason = %e,
                    "batching configured but not possible; serving unbatched"
                ),
            }
        }
        Ok(loaded)
    }

    fn activations(&self) -> std::sync::MutexGuard<'_, Activations> {
        self.activations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The persisted activation state (for `GET /v1/models`).
    pub fn state(&self) -> ActivationState {
        self.activations().state.clone()
    }

    /// Loads what `state.json` says was active. A version that no longer
    /// verifies (expired, tampered on disk) is logged and left out.
    pub(super) fn reload_from_state(&self) {
        let mut act = self.activations();
        let models: Vec<(String, ModelState)> = act
            .state
            .models
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, st) in models {
            let wanted = st
                .champion
                .into_iter()
                .chain(st.challenger.map(|c| c.0))
                .chain(st.shadow);
            for v in wanted {
                match self.load_stored(&mut act, &name, v) {
                    Ok(_) => tracing::info!(model = %name, version = v, "reloaded"),
                    Err(e) => {
                        tracing::error!(model = %name, version = v, error = %e, "stored version not reloaded")
                    }
                }
            }
        }
        self.publish(&act);
    }

    fn load_stored(
        &self,
        act: &mut Activations,
        model: &str,
        version: u64,
    ) -> Result<Arc<LoadedModel>, ActivateError> {
        if let Some(l) = act.loaded.get(&(model.to_string(), version)) {
            return Ok(l.clone());
        }
        let path = self.store.version_path(model, version);
        if !path.exists() {
            return Err(ActivateError::NotStored {
                model: model.into(),
                version,
            });
        }
        // A stored version was verified when it was installed. Re-checking
        // it at a restart must not drop it because the trust root expired
        // since: it is checked as of the root's last valid second (new
        // activations are still refused after expiry).
        let trust = self.trust.load();
        let now = self
            .clock
            .now_unix()
            .min(trust.expires_at.saturating_sub(1));
        let loaded = Arc::new(self.verify_and_load(&trust, &path, now, |_| None)?);
        act.loaded
            .insert((model.to_string(), version), loaded.clone());
        Ok(loaded)
    }

    /// Rebuilds the routing table from the activation state and swaps it in.
    fn publish(&self, act: &Activations) {
        let mut table = Table::default();
        let route = |name: &str, v: u64, variant: &'static str| {
            act.loaded.get(&(name.to_string(), v)).map(|l| Route {
                loaded: l.clone(),
                variant,
                series: self.metrics.series(name, v, variant),
            })
        };
        for (name, st) in &act.state.models {
            let Some(champion) = st.champion.and_then(|v| route(name, v, "champion")) else {
                continue;
            };
            table.models.insert(
                name.clone(),
                ModelRoutes {
                    champion,
                    challenger: st
                        .challenger
                        .and_then(|(v, split)| route(name, v, "challenger").map(|r| (r, split))),
                    shadow: st.shadow.and_then(|v| route(name, v, "shadow")),
                },
            );
        }
        self.table.store(Arc::new(table));
    }

    /// Saves, publishes, then deletes what `prune` let go of, after a
    /// change to `model`'s state. `installing` enables install's crash
    /// points.
    fn commit(
        &self,
        act: &mut Activations,
        model: &str,
        installing: bool,
    ) -> Result<(), ActivateError> {
        let unused = self.prune(act, model);
        self.store.save_state(&act.state)?;
        if installing {
            crash_point("serving-install-saved");
        }
        self.publish(act);
        if installing {
            crash_point("serving-install-swapped");
        }
        // Only now: the previous state.json may still have named them.
        for v in unused {
            self.store.remove(model, v);
        }
        Ok(())
    }

    /// Verifies, stores and activates a bundle file in `role`. `split` is the
    /// challenger's share of traffic.
    pub fn install(
        &self,
        bundle: &Path,
        role: Role,
        split: Option<f64>,
    ) -> Result<Activated, ActivateError> {
        let split = match role {
            Role::Challenger => {
                let s = split.unwrap_or(0.5);
                if !(0.0..=1.0).contains(&s) {
                    return Err(ActivateError::BadSplit(s));
                }
                s
            }
            _ => 0.0,
        };
        // Copy first, verify the copy: what is verified is what is stored.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .store
            .incoming(format!("{}-{n}.ferry", std::process::id()));
        fs::copy(bundle, &tmp).map_err(io_err("copying bundle", bundle))?;
        crash_point("serving-install-copied");
        let result = self.install_verified_copy(&tmp, role, split);
        let _ = fs::remove_file(&tmp);
        match &result {
            Ok(_) => self.metrics.activation("activated", ""),
            Err(e) => self.metrics.activation("refused", e.code()),
        }
        match &result {
            Ok(a) => self.event(
                "activated",
                Some(&a.model),
                Some(a.version),
                match a.previous {
                    Some(p) => format!("{}, previous v{p}", a.role.as_str()),
                    None => a.role.as_str().to_string(),
                },
            ),
            Err(e) => self.event("refused", None, None, format!("{}: {e}", e.code())),
        }
        result
    }

    fn install_verified_copy(
        &self,
        tmp: &Path,
        role: Role,
        split: f64,
    ) -> Result<Activated, ActivateError> {
        let mut act = self.activations();
        let highest = |name: &str| act.state.models.get(name).map(|s| s.highest_seen);
        let loaded = match self.verify_and_load(
            &self.trust.load(),
            tmp,
            self.clock.now_unix(),
            highest,
        ) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "activation refused; previous version keeps serving");
                return Err(e);
            }
        };
        let name = loaded.manifest.model.to_string();
        let version = loaded.manifest.version;
        self.store.keep(tmp, &name, version)?;
        crash_point("serving-install-verified");
        act.loaded.insert((name.clone(), version), loaded);
        let st = act.state.models.entry(name.clone()).or_default();
        st.highest_seen = st.highest_seen.max(version);
        let previous = match role {
            Role::Champion => {
                let prev = st.champion.replace(version);
                if let Some(p) = prev.filter(|p| *p != version) {
                    st.history.retain(|h| *h != p);
                    st.history.push(p);
                }
                // A challenger promoted to champion stops being a challenger.
                if st.challenger.map(|c| c.0) == Some(version) {
                    st.challenger = None;
                }
                prev
            }
            Role::Challenger => st.challenger.replace((version, split)).map(|c| c.0),
            Role::Shadow => st.shadow.replace(version),
        };
        if st.champion.is_none() && role != Role::Champion {
            // Without a champion there is nothing to compare with: serve it.
            st.champion = Some(version);
            match role {
                Role::Challenger => st.challenger = None,
                Role::Shadow => st.shadow = None,
                Role::Champion => {}
            }
        }
        self.commit(&mut act, &name, true)?;
        tracing::info!(model = %name, version, role = role.as_str(), ?previous, "activated");
        Ok(Activated {
            model: name,
            version,
            role,
            previous,
        })
    }

    /// Keeps the newest `keep_versions` stored versions of `model` plus any
    /// in use: forgets the rest (history, compiled plans) and returns them
    /// for `commit` to delete once the state is saved.
    fn prune(&self, act: &mut Activations, model: &str) -> Vec<u64> {
        let Some(st) = act.state.models.get(model).cloned() else {
            return Vec::new();
        };
        let Some(versions) = self.store.versions(model) else {
            return Vec::new();
        };
        let keep_from = versions.len().saturating_sub(self.keep_versions);
        let unused: Vec<u64> = versions
            .iter()
            .enumerate()
            .filter(|(i, v)| *i < keep_from && !st.in_use(**v))
            .map(|(_, v)| *v)
            .collect();
        let stored: Vec<u64> = versions
            .iter()
            .enumerate()
            .filter(|(i, v)| *i >= keep_from || st.in_use(**v))
            .map(|(_, v)| *v)
            .collect();
        if let Some(st) = act.state.models.get_mut(model) {
            st.history.retain(|v| stored.contains(v));
        }
        act.loaded.retain(|(m, v), _| m != model || st.in_use(*v));
        unused
    }

    /// Reactivates the previous champion from the local store (no download).
    pub fn rollback(&self, model: &str) -> Result<Activated, ActivateError> {
        let mut act = self.activations();
        let st = act
            .state
            .models
            .get(model)
            .cloned()
            .ok_or_else(|| ActivateError::UnknownModel(model.into()))?;
        let Some(&target) = st.history.last() else {
            return Err(ActivateError::NoPrevious {
                model: model.into(),
            });
        };
        self.load_stored(&mut act, model, target)?;
        let previous = {
            let Some(st) = act.state.models.get_mut(model) else {
                return Err(ActivateError::UnknownModel(model.into()));
            };
            st.history.pop();
            st.champion.replace(target)
        };
        self.commit(&mut act, model, false)?;
        tracing::info!(model, version = target, ?previous, "rolled back");
        self.event(
            "rolled_back",
            Some(model),
            Some(target),
            previous.map(|p| format!("from v{p}")).unwrap_or_default(),
        );
        Ok(Activated {
            model: model.into(),
            version: target,
            role: Role::Champion,
            previous,
        })
    }

    /// Makes `version` of `model` the champion again, from the local store
    /// (no download), for a signed desired state that sends this device
    /// back (a rollout's rollback). The rollback rule (docs/security.md):
    /// only a version this device served as champion before and still
    /// holds, i.e. one in the model's rollback history, whose signed
    /// manifest is the one assigned (`digest`). Anything else below the
    /// serving version is refused with `rollback_refused`; the
    /// anti-rollback floor (`highest_seen`) is unchanged, so a version
    /// never activated here stays refused.
    pub fn restore(
        &self,
        model: &str,
        version: u64,
        digest: &ferry_protocol::keys::Digest,
    ) -> Result<Activated, ActivateError> {
        let mut act = self.activations();
        let st = act
            .state
            .models
            .get(model)
            .cloned()
            .ok_or_else(|| ActivateError::UnknownModel(model.into()))?;
        let serving = st.champion.unwrap_or(0);
        let refuse = |reason: &'static str| ActivateError::NotRestorable {
            model: model.into(),
            version,
            serving,
            reason,
        };
        if !st.history.contains(&version) {
            return Err(refuse(
                "not an earlier champion of this device that it still holds",
            ));
        }
        let loaded = self.load_stored(&mut act, model, version)?;
        if loaded.manifest_digest != *digest {
            return Err(refuse("the stored bundle is not the one assigned"));
        }
        let previous = {
            let Some(st) = act.state.models.get_mut(model) else {
                return Err(ActivateError::UnknownModel(model.into()));
            };
            st.history.retain(|h| *h != version);
            st.champion.replace(version)
        };
        self.commit(&mut act, model, false)?;
        tracing::info!(model, version, ?previous, "restored by the control plane");
        self.event(
            "rolled_back",
            Some(model),
            Some(version),
            previous
                .map(|p| format!("from v{p}, by the control plane"))
                .unwrap_or_default(),
        );
        Ok(Activated {
            model: model.into(),
            version,
            role: Role::Champion,
            previous,
        })
    }

    /// Stops a challenger or shadow.
    pub fn clear(&self, model: &str, role: Role) -> Result<(), ActivateError> {
        let mut act = self.activations();
        let st = act
            .state
            .models
            .get_mut(model)
            .ok_or_else(|| ActivateError::UnknownModel(model.into()))?;
        match role {
            Role::Challenger => st.challenger = None,
            Role::Shadow => st.shadow = None,
            Role::Champion => {}
        }
        self.commit(&mut act, model, false)
    }

    /// Stops serving `model` in every role (the control plane undeployed
    /// it). The highest version seen is kept, so an older bundle of the same
    /// model is still refused if it comes back.
    pub fn unload(&self, model: &str) -> Result<(), ActivateError> {
        let mut act = self.activations();
        let st = act
            .state
            .models
            .get_mut(model)
            .ok_or_else(|| ActivateError::UnknownModel(model.into()))?;
        st.champion = None;
        st.challenger = None;
        st.shadow = None;
        st.history.clear();
        self.commit(&mut act, model, false)?;
        tracing::info!(model, "unloaded");
        self.event("unloaded", Some(model), None, String::new());
        Ok(())
    }
}
