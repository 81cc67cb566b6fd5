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
