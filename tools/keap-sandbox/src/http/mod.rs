//! Routing and the gateway in front of everything: auth, quotas, faults, call log.

mod control;
mod gateway;
mod oauth;
mod v1;
mod v2;

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::Shared;

pub(crate) const REST_PREFIX: &str = "/crm/rest";
pub(crate) const TOKEN_PATH: &str = "/token";
pub(crate) const AUTHORIZE_PATH: &str = "/app/oauth/authorize";
pub(crate) const CONTROL_PREFIX: &str = "/_sandbox";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let rest = Router::new()
        .merge(v1::routes())
        .merge(v2::routes())
        .fallback(gateway::unknown_rest_path);
    Router::new()
        .route(
            AUTHORIZE_PATH,
            axum::routing::get(oauth::authorize_page).post(oauth::authorize_decision),
        )
        .route(TOKEN_PATH, axum::routing::post(oauth::token))
        .nest(CONTROL_PREFIX, control::routes())
        .nest(REST_PREFIX, rest)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            gateway::gateway,
        ))
        .with_state(shared)
}

/// A JSON response with a fixed status.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

/// Marks a response whose connection was severed instead of answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionDropped;

/// Why a JSON request body was refused, before any field was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("Content-Type must be application/json")]
    NotJson,
    #[error("A request body is required")]
    Empty,
    #[error("The request body is not valid JSON: {0}")]
    Malformed(String),
}

impl BodyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BodyError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::Empty | BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parse a JSON body; a missing Content-Type is tolerated, a different one is not.
pub(crate) fn json_body(headers: &http::HeaderMap, body: &[u8]) -> Result<serde_json::Value, BodyError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(BodyError::NotJson);
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    serde_json::from_slice(body).map_err(|err| BodyError::Malformed(err.to_string()))
}

/// Base64 (standard alphabet) content fields of the email endpoints.
pub(crate) fn check_base64(body: &serde_json::Value, name: &str) -> Result<(), String> {
    use base64::Engine;
    match body.get(name) {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::String(text)) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(|_| ())
            .map_err(|_| format!("{name} must be Base64-encoded")),
        Some(_) => Err(format!("{name} must be a Base64-encoded string")),
    }
}
