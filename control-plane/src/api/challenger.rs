//! `GET /api/v1/models/{name}/challenger`: the model's challenger (A/B
//! split) and shadow against its champion over a window of telemetry, with
//! the promotion-readiness verdict (`rollout::challenger`). Any role of the
//! tenant may read it; another tenant's model answers 404.

use super::query::{parse_name, query_pairs};
use super::types::{ChallengerReport, ErrorBody};
use super::{ApiError, ApiResult, AppState, Auth};
use crate::action::Action;
use crate::rollout::challenger::Criteria;
use axum::extract::{Path, RawQuery, State};
use axum::Json;

/// The window when none is asked for.
pub const DEFAULT_WINDOW_SECS: u64 = 24 * 3600;

/// The window and criteria of a request, defaults for what it leaves out.
fn parse(raw: &Option<String>) -> ApiResult<(u64, Criteria)> {
    let pairs = query_pairs(
        raw,
        &[
            "window",
            "min_labelled",
            "min_requests",
            "alpha",
            "max_latency_ratio",
        ],
    )?;
    let mut window = DEFAULT_WINDOW_SECS;
    let mut c = Criteria::default();
    for (k, v) in &pairs {
        let count = || {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{k}={v:?} is not a non-negative integer"))
            })
        };
        let number = || {
            v.parse::<f64>()
                .map_err(|_| ApiError::bad_request(format!("{k}={v:?} is not a number")))
        };
        match k.as_str() {
            "window" => {
                window = humantime::parse_duration(v)
                    .map_err(|e| {
                        ApiError::bad_request(format!("window={v:?}: {e} (try 24h or 7d)"))
                    })?
                    .as_secs();
                if window == 0 {
                    return Err(ApiError::bad_request("window must be at least 1s"));
                }
            }
            "min_labelled" => c.min_labelled = count()?,
            "min_requests" => c.min_requests = count()?,
            "alpha" => c.alpha = number()?,
            _ => c.max_latency_ratio = number()?,
        }
    }
    c.validate().map_err(ApiError::bad_request)?;
    Ok((window, c))
}

/// The challenger and shadow against the champion: requests, error rate,
/// latency, accuracy with Wilson 95 % intervals, one-sided two-proportion
/// tests, prediction shift (PSI, Jensen–Shannon), and `ready`, `not yet:
/// needs N more labelled rows` or `worse on: …`.
#[utoipa::path(get, path = "/api/v1/models/{name}/challenger", tag = "telemetry",
    params(("name" = String, Path),
        ("window" = Option<String>, Query, description = "how far back, e.g. 24h (default), 7d"),
        ("min_labelled" = Option<u64>, Query, description = "labelled rows each side needs (default 200; 0: accuracy not required)"),
        ("min_requests" = Option<u64>, Query, description = "requests each side needs (default 100)"),
        ("alpha" = Option<f64>, Query, description = "significance level of the tests (default 0.01)"),
        ("max_latency_ratio" = Option<f64>, Query, description = "challenger p99 / champion p99 allowed (default 1.5)")),
    responses((status = 200, body = ChallengerReport), (status = "4XX", body = ErrorBody)))]
pub async fn challenger(
    a: Auth,
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ChallengerReport>> {
    let name = parse_name(&name)?;
    a.authorize(Action::ChallengerShow, &name).await?;
    let (window, criteria) = parse(&raw)?;
    let r = crate::telemetry::service::challenger(&st.store, &a.caller(), &name, window, criteria)
        .await?;
    Ok(Json(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn window_and_criteria_parse_with_defaults() {
        let (w, c) = parse(&None).unwrap();
        assert_eq!((w, c), (DEFAULT_WINDOW_SECS, Criteria::default()));
        let (w, c) = parse(&q("window=2h&min_labelled=0&alpha=0.05")).unwrap();
        assert_eq!((w, c.min_labelled, c.alpha), (7200, 0, 0.05));
        for bad in [
            "window=soon",
            "window=0s",
            "alpha=2",
            "min_labelled=-1",
            "max_latency_ratio=0.5",
            "limit=3",
        ] {
            assert!(parse(&q(bad)).is_err(), "{bad}");
        }
    }
}
