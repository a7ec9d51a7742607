//! A page's failure as HTML: the API's refusal (status and its
//! client-safe message, never internal text: `ApiError` already logged
//! and replaced that), or, for a caller without a session, the way to the
//! sign-in page.

use super::layout;
use crate::api::ApiError;
use crate::store::StoreError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;

#[derive(Debug)]
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        PageError(e.into())
    }
}

pub type PageResult<T> = Result<T, PageError>;

/// 303 to the sign-in page, coming back to `next` (a local path) after.
pub fn to_login(next: &str) -> Response {
    let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/ui/login?next={next}"))],
    )
        .into_response()
}

fn title(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "Bad request",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests",
        _ => "Something went wrong",
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status == StatusCode::UNAUTHORIZED {
            return to_login("/models");
        }
        let body = layout::bare(
            title(e.status),
            html! {
                p.error { (e.message) }
                p { a href="/models" { "Back to the models" } }
            },
        );
        (e.status, body).into_response()
    }
}
