//! REST v2 (string ids, `{"code","message","status","details"}` errors).

use std::sync::Arc;

use axum::Router;
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use crate::Shared;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
}

/// v2 application error body, per the spec's `Error` schema.
pub(crate) fn error(status: StatusCode, message: &str, details: Vec<Value>) -> Response {
    let status_name = status
        .canonical_reason()
        .unwrap_or("Error")
        .to_uppercase()
        .replace(' ', "_");
    super::json(
        status,
        &json!({"code": status.as_u16(), "message": message, "status": status_name, "details": details}),
    )
}
