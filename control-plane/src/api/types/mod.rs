//! The REST contract: every request and response body of `/api/v1`, shared
//! by the server (which answers them) and the CLI client (which reads
//! them). The OpenAPI document is derived from these types.

mod admin;
mod fleet;
mod monitoring;
mod registry;
mod rollouts;
mod telemetry;

pub use admin::*;
pub use fleet::*;
pub use monitoring::*;
pub use registry::*;
pub use rollouts::*;
pub use telemetry::*;

/// `GET /models/{name}/challenger` (the comparison's own types).
pub use crate::rollout::challenger::{
    ChallengerComparison, ChallengerReport, Criteria, Proportion, Readiness, VariantStats,
    WorseTest,
};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error response: a message and a stable code.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

/// `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Labels and selectors: string keys to string values.
pub type Labels = std::collections::BTreeMap<String, String>;
