//! Errors of the HTTP API as `application/problem+json` (RFC 9457): a clean
//! title and detail for the caller, internals only in the logs.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::dispatch::DispatchError;

/// Prefix of every problem `type`: a URN, since the types name kinds of
/// problem and are not pages to fetch.
pub(super) const TYPE_BASE: &str = "urn:softphone-bridge:problem:";

/// The problem document, also the NATS service's error reply.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The offending field of a contract violation (a path such as `payload.dialTo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub(crate) fn new(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("{TYPE_BASE}{slug}"),
            title: title.into(),
            status,
            detail: detail.into(),
            field: None,
        }
    }
}

impl From<&DispatchError> for Problem {
    fn from(e: &DispatchError) -> Self {
        if let DispatchError::Unavailable(internal) = e {
            tracing::warn!(error = %internal, "Command refused: NATS unavailable.");
        }
        let mut problem = Problem::new(e.status(), e.slug(), e.title(), e.to_string());
        problem.field = e.field().map(str::to_owned);
        problem
    }
}

/// Why an HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("cannot read the request body")]
    BadBody,
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("too many requests in flight; retry shortly")]
    Busy,
}

impl ApiError {
    pub(super) fn problem(&self) -> Problem {
        let detail = self.to_string();
        match self {
            ApiError::Dispatch(e) => Problem::from(e),
            ApiError::Unauthorized => Problem::new(401, "unauthorized", "Unauthorized", detail),
            ApiError::TooLarge(_) => Problem::new(413, "body-too-large", "Body too large", detail),
            ApiError::UnsupportedMediaType => Problem::new(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                detail,
            ),
            ApiError::BadBody => Problem::new(400, "bad-body", "Unreadable body", detail),
            ApiError::Timeout(_) => Problem::new(408, "timeout", "Request timeout", detail),
            ApiError::NoRoute(_) => Problem::new(404, "no-route", "Not found", detail),
            ApiError::Busy => Problem::new(503, "busy", "Busy", detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let busy = matches!(self, ApiError::Busy);
        let mut response = self.problem().into_response();
        if busy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
