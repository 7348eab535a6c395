//! The command API's handlers (publish a command, show a registry entry) and
//! the authentication that runs before them.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::AppState;
use super::auth::Token;
use super::connection::ConnectionMark;
use super::problem::ApiError;
use crate::dispatch::{Accepted, Command, DispatchError, Via};
use crate::softphones::registry::Entry;

/// Bytes of an oversized body read (and dropped) so the client, done
/// sending, reads the 413; past this the connection is closed instead.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Which configured token a request carries (set by [`authenticate`]).
#[derive(Clone, Copy)]
struct Caller(usize);

/// Answers 401 unless the request carries a configured token; runs before
/// the in-flight permit is taken and before any byte of the body is read. A
/// connection that carried a token is never shed to make room for another.
pub(super) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match state.tokens.position(request.headers()) {
        Some(index) => {
            if let Some(connection) = request.extensions().get::<ConnectionMark>() {
                connection.authenticated();
            }
            request.extensions_mut().insert(Caller(index));
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// `?partnerId=`: which partner's softphone the path's id is (with
/// `[callout]` a softphone id is its partner's).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Chosen {
    partner_id: Option<String>,
}

/// `POST /v1/softphones/{softphoneId}/commands`: 202 when published, 200 with
/// the original answer for a repeated `Idempotency-Key`.
pub(super) async fn post_command(
    State(state): State<AppState>,
    softphone: Result<Path<String>, PathRejection>,
    chosen: Result<Query<Chosen>, QueryRejection>,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let token = caller(&state, &request)?;
    let softphone = path(softphone)?;
    let chosen = query(chosen)?;
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let key = match headers.get("idempotency-key") {
        Some(value) => Some(value.to_str().map_err(|_| {
            DispatchError::InvalidIdempotencyKey("Idempotency-Key must be printable ASCII".into())
        })?),
        None => None,
    };
    let body = read_body(&headers, request.into_body(), state.body_limit).await?;
    tracing::debug!(token = %token.name, softphone = %softphone, "Command request.");
    let accepted = state
        .dispatcher
        .dispatch(
            token.scope(),
            &softphone,
            chosen.partner_id.as_deref(),
            Command::Body(&body),
            key,
            Via::Http,
        )
        .await?;
    let status = if accepted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(accepted)))
}

/// `GET /v1/softphones/{softphoneId}`
pub(super) async fn get_softphone(
    State(state): State<AppState>,
    softphone: Result<Path<String>, PathRejection>,
    chosen: Result<Query<Chosen>, QueryRejection>,
    request: Request,
) -> Result<Json<Entry>, ApiError> {
    let token = caller(&state, &request)?;
    let softphone = path(softphone)?;
    let chosen = query(chosen)?;
    Ok(Json(
        state
            .dispatcher
            .describe(token.scope(), &softphone, chosen.partner_id.as_deref())
            .await?,
    ))
}

/// The query string, or a 400 naming what is wrong with it.
fn query(chosen: Result<Query<Chosen>, QueryRejection>) -> Result<Chosen, DispatchError> {
    chosen
        .map(|Query(chosen)| chosen)
        .map_err(|e| DispatchError::Contract {
            field: "partnerId".into(),
            reason: e.body_text(),
        })
}

fn caller<'a>(state: &'a AppState, request: &Request) -> Result<&'a Token, ApiError> {
    request
        .extensions()
        .get::<Caller>()
        .and_then(|Caller(i)| state.tokens.get(*i))
        .ok_or(ApiError::Unauthorized)
}

/// The body, if it is at most `limit` bytes. A larger one is still read to
/// its end (up to [`DRAIN_LIMIT`]) and dropped: closing a connection with
/// unread bytes resets it, and the client would never see the 413.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(ApiError::TooLarge(limit));
    }
    let mut kept = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut seen = 0usize;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadBody)?;
        seen += chunk.len();
        if seen <= limit {
            kept.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            return Err(ApiError::TooLarge(limit));
        }
    }
    if seen > limit {
        return Err(ApiError::TooLarge(limit));
    }
    Ok(kept.freeze())
}

fn path(softphone: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    softphone.map(|Path(id)| id).map_err(|_| {
        DispatchError::InvalidSoftphone("the softphone id in the path is not valid UTF-8".into())
            .into()
    })
}

/// `application/json`, with parameters or not, or any `+json` type.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
