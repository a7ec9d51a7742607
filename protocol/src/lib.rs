//! `ferry-protocol`: the pure core that the agent, the control plane and the
//! tests share.
//!
//! Nothing in this crate performs network I/O, spawns tasks or reads a clock:
//! time is always passed in as seconds since the Unix epoch, and byte sources
//! are plain `std::io::Read`/slices. That keeps every check here
//! deterministic and testable on any target, including the ARM ones under
//! emulation.

pub mod baseline;
pub mod bundle;
pub mod desired;
pub mod encoding;
pub mod frames;
pub mod keys;
pub mod manifest;
pub mod model;
pub mod required_runtime;
pub mod telemetry;
pub mod trust;
pub mod verify;

pub use baseline::{psi, Baseline, FeatureBaseline, FeatureKind};
pub use bundle::VerifiedBundle;
pub use keys::{Digest, KeyId, PublicKey, Signature};
pub use manifest::{
    ArtifactRef, Lineage, Manifest, Runtime, SignedManifest, TargetConstraints, TestVectors,
};
pub use model::{DType, Dim, ModelName, Schema, Tensor, TensorData, TensorSpec, Version};
pub use required_runtime::{RequiredRuntime, RUNTIME_TAG};
pub use trust::{Publisher, SignedTrustRoot, TrustRoot};
pub use verify::{verify_manifest, VerifiedManifest, VerifyError};

/// Seconds since the Unix epoch. Passed in by callers; never read here.
pub type UnixTime = u64;
