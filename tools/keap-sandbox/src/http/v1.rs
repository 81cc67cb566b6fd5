//! REST v1 (integer ids, `{"message"}` errors).

use std::sync::Arc;

use axum::Router;
use axum::response::Response;
use http::StatusCode;
use serde_json::json;

use crate::Shared;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
}

/// v1 application error body.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    super::json(status, &json!({"message": message}))
}
