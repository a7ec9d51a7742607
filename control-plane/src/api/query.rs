//! Parsing of path segments, query strings and JSON bodies into typed
//! values; every failure is a 400 with a message that says what to send.

use super::error::{ApiError, ApiResult};
use crate::store::{Filters, MetricFilter};
use bytes::Bytes;
use ferry_protocol::ModelName;
use serde::Deserialize;

pub fn parse_name(s: &str) -> ApiResult<String> {
    ModelName::new(s)
        .map(|n| n.to_string())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

pub fn parse_version(s: &str) -> ApiResult<i64> {
    s.parse::<u64>()
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("version {s:?} is not a non-negative integer"))
        })
}

pub fn parse_alias(s: &str) -> ApiResult<String> {
    if ferry_protocol::model::is_safe_name(s) && s.len() <= 64 {
        Ok(s.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "alias {s:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'"
        )))
    }
}

/// A project name from a query or a body.
pub fn parse_project(p: &str) -> ApiResult<String> {
    if ferry_protocol::model::is_safe_name(p) {
        Ok(p.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "project {p:?}: use 1-128 of [A-Za-z0-9._-]"
        )))
    }
}

pub fn to_i64(v: u64) -> ApiResult<i64> {
    i64::try_from(v).map_err(|_| ApiError::bad_request(format!("version {v} is out of range")))
}

/// A JSON body; an empty or malformed one is a 400.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty; expected JSON",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// For `Option<Option<T>>` fields: absent is `None`, `null` is `Some(None)`.
pub fn deserialize_some<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Query parameters as ordered pairs; repeated keys allowed.
pub fn query_pairs(q: &Option<String>, allowed: &[&str]) -> ApiResult<Vec<(String, String)>> {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?} (allowed: {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(pairs)
}

pub fn parse_limit(v: &str) -> ApiResult<i64> {
    match v.parse::<i64>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit {v:?} must be an integer from 1 to 1000"
        ))),
    }
}

fn parse_bool(k: &str, v: &str) -> ApiResult<bool> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{k}={v:?}: expected true or false"
        ))),
    }
}

/// `auc>=0.9`, `loss<0.2`, `f1=1`.
pub fn parse_metric_filter(s: &str) -> Result<MetricFilter, String> {
    for op in [">=", "<=", "!=", ">", "<", "="] {
        if let Some((k, v)) = s.split_once(op) {
            let k = k.trim();
            if k.is_empty() {
                break;
            }
            let value: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("metric filter {s:?}: {v:?} is not a number"))?;
            if !value.is_finite() {
                return Err(format!("metric filter {s:?}: value must be finite"));
            }
            let op = if op == "!=" { "<>" } else { op };
            return Ok(MetricFilter {
                key: k.to_string(),
                op,
                value,
            });
        }
    }
    Err(format!(
        "metric filter {s:?}: expected NAME OP NUMBER with OP one of >= <= > < = !="
    ))
}

/// The query keys of the model listing.
pub const FILTER_KEYS: &[&str] = &[
    "name_prefix",
    "q",
    "project",
    "tag",
    "alias",
    "metric",
    "include_archived",
    "limit",
    "page_token",
];

/// The query keys of a model's version listing.
pub const VERSION_FILTER_KEYS: &[&str] = &[
    "tag",
    "alias",
    "metric",
    "include_archived",
    "limit",
    "page_token",
];

/// Filters, page size and page token of a listing.
pub fn parse_filters(pairs: &[(String, String)]) -> ApiResult<(Filters, i64, Option<String>)> {
    let mut f = Filters::default();
    let mut limit = 100;
    let mut page = None;
    for (k, v) in pairs {
        match k.as_str() {
            "name_prefix" => f.name_prefix = Some(v.clone()),
            "q" => f.query = Some(v.clone()),
            "project" => f.project = Some(v.clone()),
            "tag" => f.tags.push(match v.split_once(':') {
                Some((a, b)) => (a.to_string(), Some(b.to_string())),
                None => (v.clone(), None),
            }),
            "alias" => f.aliases.push(v.clone()),
            "metric" => f
                .metrics
                .push(parse_metric_filter(v).map_err(ApiError::bad_request)?),
            "include_archived" => f.include_archived = parse_bool(k, v)?,
            "limit" => limit = parse_limit(v)?,
            "page_token" => page = Some(v.clone()),
            _ => {}
        }
    }
    Ok((f, limit, page))
}

/// Labels or a selector: a JSON object of strings; absent or `null` is
/// empty.
pub fn parse_labels(v: Option<&serde_json::Value>) -> ApiResult<super::types::Labels> {
    use serde_json::Value;
    let mut out = super::types::Labels::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(s) = v.as_str() else {
                    return Err(ApiError::bad_request(format!(
                        "label {k:?} must be a string"
                    )));
                };
                out.insert(k.clone(), s.to_string());
            }
        }
        Some(_) => return Err(ApiError::bad_request("labels must be an object of strings")),
    }
    Ok(out)
}

/// The telemetry series' filters: `version`, `device`, `since_ms`,
/// `limit`, plus the keys an endpoint allows in `extra_allowed`.
pub struct SeriesQuery {
    pub version: Option<i64>,
    pub device: Option<String>,
    pub since_ms: i64,
    pub limit: i64,
    /// The endpoint's own keys, in order.
    pub extra: Vec<(String, String)>,
}

pub fn series_query(q: &Option<String>, extra_allowed: &[&str]) -> ApiResult<SeriesQuery> {
    let mut out = SeriesQuery {
        version: None,
        device: None,
        since_ms: 0,
        limit: 500,
        extra: Vec::new(),
    };
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        let int = |v: &str| {
            v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request(format!("{k}={v:?} is not a non-negative integer"))
            })
        };
        match k.as_ref() {
            "version" => out.version = Some(int(&v)?),
            "device" => out.device = Some(v.into_owned()),
            "since_ms" => out.since_ms = int(&v)?,
            "limit" => out.limit = int(&v)?.clamp(1, 10_000),
            other if extra_allowed.contains(&other) => {
                out.extra.push((other.to_string(), v.into_owned()))
            }
            other => {
                return Err(ApiError::bad_request(format!(
                "unknown query parameter {other:?} (allowed: version, device, since_ms, limit{})",
                extra_allowed
                    .iter()
                    .map(|s| format!(", {s}"))
                    .collect::<String>()
            )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_filters_parse() {
        let f = parse_metric_filter("auc>=0.9").unwrap();
        assert_eq!((f.key.as_str(), f.op, f.value), ("auc", ">=", 0.9));
        assert_eq!(parse_metric_filter("loss<0.2").unwrap().op, "<");
        assert_eq!(parse_metric_filter("x!=1").unwrap().op, "<>");
        assert!(parse_metric_filter("auc>=high").is_err());
        assert!(parse_metric_filter(">=1").is_err());
        assert!(parse_metric_filter("auc").is_err());
    }
}
