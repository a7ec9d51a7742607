//! Why a rollout policy is refused.

/// A policy that cannot be read or cannot work.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The TOML text does not parse into a policy.
    #[error("rollout policy (TOML): {0}")]
    Toml(#[from] toml::de::Error),
    /// The JSON text does not parse into a policy.
    #[error("rollout policy (JSON): {0}")]
    Json(#[from] serde_json::Error),
    /// A field holds a value the engine cannot work with.
    #[error("rollout policy: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
