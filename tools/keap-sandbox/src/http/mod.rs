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
use crate::crm::ApiVersion;

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
        .layer(axum::middleware::from_fn_with_state(shared.clone(), gateway::gateway))
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

/// Count a saved contact and answer with it: 201 when created, 200 when updated.
pub(crate) fn contact_saved(
    world: &mut crate::World,
    version: ApiVersion,
    created: bool,
    id: i64,
) -> Result<Response, ApiError> {
    if created {
        world.stats.contacts_created += 1;
    } else {
        world.stats.contacts_updated += 1;
    }
    let contact = world
        .crm
        .contact(id)
        .map(|c| match version {
            ApiVersion::V1 => c.v1_json(),
            ApiVersion::V2 => c.v2_json(),
        })
        .ok_or_else(|| ApiError::not_found(version, "Contact", id))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json(status, &contact))
}

/// The common end of v1's queue and v2's send: check the content, deliver, count; 202.
pub(crate) fn deliver_email(
    shared: &Shared,
    version: ApiVersion,
    body: &serde_json::Value,
    contacts: &[i64],
) -> Result<Response, ApiError> {
    // Content is optional in the spec; when given it must be Base64.
    for field in ["html_content", "plain_content"] {
        check_base64(body, field).map_err(|message| ApiError::bad_request(version, message))?;
    }
    let subject = body.get("subject").and_then(|s| s.as_str()).unwrap_or_default();
    shared
        .world()
        .send_email(contacts, subject)
        .map_err(|unknown| ApiError::bad_request(version, format!("Contact {unknown} not found")))?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Achieves an API goal for a contact: every listening campaign starts (again, on a repeat),
/// sending its email when it has one. `None` when the contact does not exist.
pub(crate) fn achieve_goal(
    world: &mut crate::World,
    goal: crate::marketing::GoalRef<'_>,
    contact_id: i64,
) -> Option<Vec<crate::marketing::CampaignDef>> {
    world.crm.contact(contact_id)?;
    let campaigns = world.marketing.listeners(goal);
    if campaigns.is_empty() {
        world.stats.goals_without_listener += 1;
    }
    for campaign in &campaigns {
        world.stats.campaigns_started += 1;
        *world.marketing.goals_achieved.entry(contact_id).or_default() += 1;
        if let Some(subject) = &campaign.email_subject {
            let _ = world.send_email(&[contact_id], subject);
        }
    }
    Some(campaigns)
}

/// Base64 (standard alphabet) content fields of the email endpoints.
fn check_base64(body: &serde_json::Value, name: &str) -> Result<(), String> {
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

/// An application error (after the gateway), rendered in the shape of its API version:
/// v1 `{"message"}`, v2 `{"code","message","status","details"}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub(crate) struct ApiError {
    version: ApiVersion,
    status: StatusCode,
    message: String,
    details: Vec<serde_json::Value>,
}

impl ApiError {
    pub(crate) fn new(version: ApiVersion, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            version,
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub(crate) fn bad_request(version: ApiVersion, message: impl Into<String>) -> Self {
        Self::new(version, StatusCode::BAD_REQUEST, message)
    }

    /// 404 for a missing resource; v2 names it in `details` (the spec's `ErrorDetails`).
    pub(crate) fn not_found(version: ApiVersion, resource: &str, id: impl std::fmt::Display) -> Self {
        let mut error = Self::new(version, StatusCode::NOT_FOUND, format!("{resource} {id} not found"));
        error.details = vec![serde_json::json!({"domain": "crm", "resource": resource})];
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.version {
            ApiVersion::V1 => serde_json::json!({"message": self.message}),
            ApiVersion::V2 => {
                let status_name = self
                    .status
                    .canonical_reason()
                    .unwrap_or("Error")
                    .to_uppercase()
                    .replace(' ', "_");
                serde_json::json!({"code": self.status.as_u16(), "message": self.message,
                                   "status": status_name, "details": self.details})
            }
        };
        json(self.status, &body)
    }
}

impl ApiVersion {
    /// A JSON object body, or this version's 400/415.
    pub(crate) fn object(self, headers: &http::HeaderMap, body: &[u8]) -> Result<serde_json::Value, ApiError> {
        let value = json_body(headers, body).map_err(|err| ApiError::new(self, err.status(), err.to_string()))?;
        if value.is_object() {
            Ok(value)
        } else {
            Err(ApiError::bad_request(self, "The request body must be a JSON object"))
        }
    }

    /// A positive numeric id from the path.
    pub(crate) fn path_id(self, raw: &str, what: &str) -> Result<i64, ApiError> {
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| ApiError::bad_request(self, format!("{what} must be a positive numeric id, got {raw:?}")))
    }
}

/// `subject` of the email endpoints: a non-blank string.
pub(crate) fn check_subject(body: &serde_json::Value) -> Result<(), String> {
    match body.get("subject") {
        Some(serde_json::Value::String(subject)) if !subject.trim().is_empty() => Ok(()),
        _ => Err("subject is required".to_owned()),
    }
}
