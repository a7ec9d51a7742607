//! The dashboard's static files, compiled into the binary (no CDN: the
//! dashboard works air-gapped). Served under `/ui/assets/{hash}/{name}`
//! with the content's hash in the URL, so a page always asks for the bytes
//! it was rendered with and browsers may keep them for good (`immutable`);
//! an ETag answers revalidations with 304.

use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use std::sync::LazyLock;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// The first 8 bytes of the content's SHA-256, hex.
    hash: String,
}

/// Every file the dashboard serves. htmx and uPlot are vendored by
/// `scripts/vendor-dashboard.sh` (pinned, checksummed).
static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    let files: [(&'static str, &'static str, &'static [u8]); 6] = [
        (
            "dashboard.css",
            "text/css; charset=utf-8",
            include_bytes!("../../assets/dashboard.css"),
        ),
        (
            "dashboard.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/dashboard.js"),
        ),
        (
            "htmx.min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/vendor/htmx.min.js"),
        ),
        (
            "monitoring.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/monitoring.js"),
        ),
        (
            "uPlot.iife.min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/vendor/uPlot.iife.min.js"),
        ),
        (
            "uPlot.min.css",
            "text/css; charset=utf-8",
            include_bytes!("../../assets/vendor/uPlot.min.css"),
        ),
    ];
    files
        .into_iter()
        .map(|(name, content_type, bytes)| Asset {
            name,
            content_type,
            bytes,
            hash: hex::encode(&Sha256::digest(bytes)[..8]),
        })
        .collect()
});

const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";

/// The URL of the asset `name` (empty for a name no asset has).
pub fn url(name: &str) -> String {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| format!("/ui/assets/{}/{}", a.hash, a.name))
        .unwrap_or_default()
}

/// `GET /ui/assets/{hash}/{name}`: only the current content under its own
/// hash; anything else is 404.
pub async fn serve(Path((hash, name)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name && a.hash == hash) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let etag = format!("\"{}\"", a.hash);
    let revalidated = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if revalidated {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, CACHE_FOREVER.to_string()),
            ],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, a.content_type.to_string()),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, CACHE_FOREVER.to_string()),
        ],
        a.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_content_hash() {
        let u = url("htmx.min.js");
        assert!(
            u.starts_with("/ui/assets/") && u.ends_with("/htmx.min.js"),
            "{u}"
        );
        assert_eq!(u.len(), "/ui/assets//htmx.min.js".len() + 16);
        assert_eq!(url("nope.js"), "");
    }

    #[tokio::test]
    async fn assets_are_served_immutable_with_an_etag() {
        let u = url("dashboard.css");
        let mut parts = u.trim_start_matches("/ui/assets/").split('/');
        let hash = parts.next().unwrap_or_default().to_string();
        let r = serve(
            Path((hash.clone(), "dashboard.css".into())),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_FOREVER);
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            format!("\"{hash}\"").parse().unwrap(),
        );
        let r = serve(Path((hash, "dashboard.css".into())), h).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = serve(
            Path(("0000".into(), "dashboard.css".into())),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
