//! A bundle's requirement on the engine that serves it (`ferry bundle build
//! --runtime burn`), and the runtimes a device offers in its fleet hello.
//!
//! The requirement is a signed manifest tag ([`RUNTIME_TAG`]), not a new
//! field: tags keep the manifest bytes every deployed agent decodes. An
//! agent that predates the tag runs the bundle on tract after its test
//! vectors pass there; the control plane never sends it such a bundle,
//! since its hello offers no burn runtime.
//!
//! Runtime names in a hello: `onnx` (tract) and `onnx-burn-<backend>`
//! (`cuda`, `wgpu`, `cpu`) for each burn backend whose device is present.

use crate::manifest::Manifest;

/// The manifest tag that names the required runtime.
pub const RUNTIME_TAG: &str = "ferry.target.runtime";

/// The hello name of tract.
pub const TRACT_RUNTIME: &str = "onnx";
/// The prefix of a burn backend's hello name (`onnx-burn-cuda`).
pub const BURN_RUNTIME_PREFIX: &str = "onnx-burn-";

/// burn's backends, as runtime names spell them.
pub const BURN_BACKENDS: [&str; 3] = ["cuda", "wgpu", "cpu"];
/// The backends `burn` (without a backend) accepts: the GPU ones, in the
/// order a device prefers them.
pub const GPU_BACKENDS: [&str; 2] = ["cuda", "wgpu"];

/// The engine a bundle requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequiredRuntime {
    /// tract, on the CPU.
    Tract,
    /// burn on the named backend, or on any GPU backend (`cuda`, `wgpu`)
    /// when `None`.
    Burn(Option<&'static str>),
}

impl RequiredRuntime {
    /// Parses `tract`, `burn` or `burn-<backend>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(RequiredRuntime::Tract),
            "burn" => Ok(RequiredRuntime::Burn(None)),
            other => other
                .strip_prefix("burn-")
                .and_then(|b| BURN_BACKENDS.iter().find(|x| **x == b))
                .map(|b| RequiredRuntime::Burn(Some(b)))
                .ok_or_else(|| {
                    format!(
                        "runtime {other:?}: expected tract, burn, or burn-{}",
                        BURN_BACKENDS.join("|burn-")
                    )
                }),
        }
    }

    /// Whether a device whose hello lists `runtimes` can serve the bundle.
    pub fn offered_by<S: AsRef<str>>(&self, runtimes: &[S]) -> bool {
        runtimes.iter().any(|r| {
            let r = r.as_ref();
            match self {
                RequiredRuntime::Tract => r == TRACT_RUNTIME,
                RequiredRuntime::Burn(want) => {
                    r.strip_prefix(BURN_RUNTIME_PREFIX)
                        .is_some_and(|b| match want {
                            Some(w) => b == *w,
                            None => GPU_BACKENDS.contains(&b),
                        })
                }
            }
        })
    }
}

impl std::fmt::Display for RequiredRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequiredRuntime::Tract => f.write_str("tract"),
            RequiredRuntime::Burn(None) => f.write_str("burn"),
            RequiredRuntime::Burn(Some(b)) => write!(f, "burn-{b}"),
        }
    }
}

impl Manifest {
    /// The runtime the publisher requires, if any; an unknown name (from a
    /// newer publisher) is an error, which a device refuses rather than
    /// ignore.
    pub fn required_runtime(&self) -> Result<Option<RequiredRuntime>, String> {
        self.tags
            .get(RUNTIME_TAG)
            .map(|v| RequiredRuntime::parse(v))
            .transpose()
    }

    /// The required runtime, if any, when `offered` (a hello's runtimes)
    /// has it; otherwise why not, naming both.
    pub fn runtime_among<S: AsRef<str>>(
        &self,
        offered: &[S],
    ) -> Result<Option<RequiredRuntime>, String> {
        match self.required_runtime()? {
            Some(r) if !r.offered_by(offered) => {
                let have: Vec<&str> = offered.iter().map(AsRef::as_ref).collect();
                Err(format!(
                    "the bundle requires runtime {r}; this device offers {}",
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                ))
            }
            r => Ok(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for s in ["tract", "burn", "burn-cuda", "burn-wgpu", "burn-cpu"] {
            assert_eq!(RequiredRuntime::parse(s).unwrap().to_string(), s);
        }
        for bad in ["", "onnx", "burn-", "burn-metal", "BURN", "burn-cuda "] {
            assert!(RequiredRuntime::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn burn_without_a_backend_needs_a_gpu_backend() {
        let cpu_only = ["onnx", "onnx-burn-cpu"];
        let gpu = ["onnx", "onnx-burn-cpu", "onnx-burn-wgpu"];
        let burn = RequiredRuntime::Burn(None);
        assert!(!burn.offered_by(&cpu_only));
        assert!(burn.offered_by(&gpu));
        assert!(RequiredRuntime::Burn(Some("cpu")).offered_by(&cpu_only));
        assert!(!RequiredRuntime::Burn(Some("cuda")).offered_by(&gpu));
        assert!(RequiredRuntime::Tract.offered_by(&gpu));
        assert!(!RequiredRuntime::Tract.offered_by(&["onnx-burn-cuda"]));
        assert!(!burn.offered_by::<&str>(&[]));
    }
}
