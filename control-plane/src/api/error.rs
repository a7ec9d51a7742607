//! The one error type of the HTTP layer: a status, a stable code and a
//! message for the client. Internal failures are logged here and answered
//! with a generic 500, so database and object-store text never reaches a
//! client.

use crate::fleet::service::FleetServiceError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::telemetry::service::TelemetryError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

pub use super::types::ErrorBody;

/// A refusal: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// Logs `e` and answers a generic 500.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error; the server log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
                code: self.code.to_string(),
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            other => ApiError::internal(other),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use RegistryError as E;
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match e {
            E::Store(s) => s.into(),
            E::BadRequest(m) => ApiError::bad_request(m),
            E::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            E::NoTrustRoot { .. } => {
                ApiError::new(StatusCode::CONFLICT, "no_trust_root", e.to_string())
            }
            E::Bundle(ref v) => ApiError::new(unprocessable, v.code(), e.to_string()),
            E::NotCanonical => ApiError::new(unprocessable, "malformed_header", e.to_string()),
            E::TrustRoot(_) | E::TrustRootTenant { .. } => {
                ApiError::new(unprocessable, "trust_root", e.to_string())
            }
            E::CrossTenant { .. } => ApiError::forbidden(e.to_string()),
            E::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<FleetServiceError> for ApiError {
    fn from(e: FleetServiceError) -> Self {
        use FleetServiceError as E;
        match e {
            E::Store(s) => s.into(),
            E::NoAlias { .. } => ApiError::not_found(e.to_string()),
            E::Archived { .. } => ApiError::new(StatusCode::CONFLICT, "archived", e.to_string()),
        }
    }
}

impl From<TelemetryError> for ApiError {
    fn from(e: TelemetryError) -> Self {
        use TelemetryError as E;
        match e {
            E::Store(s) => s.into(),
            E::BadRequest(m) => ApiError::bad_request(m),
            E::InvalidPolicy(_) => ApiError::bad_request(e.to_string()),
            E::NoAlert { .. } => ApiError::not_found(e.to_string()),
        }
    }
}

/// The fallback for paths no router serves.
pub async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, String) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_answer_a_generic_500() {
        let secret = "relation \"tokens\" does not exist at /var/lib/ferry";
        for e in [
            ApiError::from(StoreError::Corrupt(secret.into())),
            ApiError::from(RegistryError::Internal(secret.into())),
            ApiError::internal(secret),
        ] {
            let (status, text) = body(e).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(!text.contains("tokens"), "{text}");
            let v: ErrorBody = serde_json::from_str(&text).unwrap();
            assert_eq!(v.code, "internal");
        }
    }

    #[tokio::test]
    async fn refusals_keep_their_status_code_and_message() {
        let (status, text) = body(StoreError::NotFound("no model \"m\"".into()).into()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: ErrorBody = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v.code.as_str(), v.error.as_str()),
            ("not_found", "no model \"m\"")
        );
        let e: ApiError = RegistryError::TooLarge { max: 10 }.into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        );
    }
}
