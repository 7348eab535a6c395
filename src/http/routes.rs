//! The command API's handlers: publish a command, show a registry entry.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::auth::Token;
use super::problem::ApiError;
use crate::dispatch::{Accepted, DispatchError, Via};
use crate::registry::Entry;

/// `POST /v1/softphones/{softphoneId}/commands`
pub async fn post_command(
    State(state): State<AppState>,
    softphone: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let token = authenticate(&state, &headers)?;
    let softphone = path(softphone)?;
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(state.body_limit)
        } else {
            ApiError::BadBody
        }
    })?;
    let key = match headers.get("idempotency-key") {
        Some(value) => Some(value.to_str().map_err(|_| {
            DispatchError::InvalidIdempotencyKey("Idempotency-Key must be printable ASCII".into())
        })?),
        None => None,
    };
    tracing::debug!(token = %token.name, softphone = %softphone, "Command request.");
    let accepted = state
        .dispatcher
        .dispatch(token.scope(), &softphone, &body, key, Via::Http)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// `GET /v1/softphones/{softphoneId}`
pub async fn get_softphone(
    State(state): State<AppState>,
    softphone: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Entry>, ApiError> {
    let token = authenticate(&state, &headers)?;
    let softphone = path(softphone)?;
    Ok(Json(
        state.dispatcher.describe(token.scope(), &softphone).await?,
    ))
}

fn authenticate<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<&'a Token, ApiError> {
    state
        .tokens
        .authenticate(headers)
        .ok_or(ApiError::Unauthorized)
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
