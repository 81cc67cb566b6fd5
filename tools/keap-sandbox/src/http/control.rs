//! `/_sandbox/...`: the same switches as the Rust API, for a sandbox in another process.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::json;
use crate::Shared;
use crate::faults::FaultSettings;
use crate::stats::Stats;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/stats", get(stats))
        .route("/reset-stats", post(reset_stats))
        .route("/faults", post(faults))
        .route("/grant", post(grant))
        .route("/expire-access-tokens", post(expire_access_tokens))
        .route("/expire-refresh-tokens", post(expire_refresh_tokens))
        .route("/advance-clock", post(advance_clock))
        .route("/auto-approve", post(auto_approve))
        .route("/contacts", get(contact))
        .route("/tags", get(tag))
        .route("/unsubscribe", post(unsubscribe))
        .route("/custom-fields", post(add_custom_field))
        .route("/lead-sources", post(add_lead_source))
        .route("/campaigns", post(add_campaign))
        .route("/email-templates", post(add_template))
}

fn done() -> Response {
    json(StatusCode::OK, &json!({"ok": true}))
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    json(StatusCode::BAD_REQUEST, &json!({"error": message.to_string()}))
}

/// A control request body that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON body: {0}")]
struct BadControlBody(#[from] serde_json::Error);

impl IntoResponse for BadControlBody {
    fn into_response(self) -> Response {
        bad_request(self)
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, BadControlBody> {
    Ok(serde_json::from_slice(body)?)
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.world().stats.clone();
    json(StatusCode::OK, &json!(stats))
}

async fn reset_stats(State(shared): State<Arc<Shared>>) -> Response {
    shared.world().stats = Stats::default();
    done()
}

async fn faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<FaultSettings>(&body) {
        Ok(settings) => {
            shared.faults.apply(&settings);
            done()
        }
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize)]
struct GrantRequest {
    client_id: String,
}

async fn grant(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<GrantRequest>(&body) {
        Ok(request) => json(StatusCode::OK, &json!(shared.mint_grant(&request.client_id))),
        Err(err) => err.into_response(),
    }
}

async fn expire_access_tokens(State(shared): State<Arc<Shared>>) -> Response {
    shared.world().oauth.expire_access_tokens();
    done()
}

async fn expire_refresh_tokens(State(shared): State<Arc<Shared>>) -> Response {
    shared.world().oauth.expire_refresh_tokens();
    done()
}

#[derive(Deserialize)]
struct AdvanceClock {
    secs: u64,
}

async fn advance_clock(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<AdvanceClock>(&body) {
        Ok(request) => {
            shared.world().oauth.advance_clock(Duration::from_secs(request.secs));
            done()
        }
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize)]
struct AutoApprove {
    on: bool,
}

async fn auto_approve(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<AutoApprove>(&body) {
        Ok(request) => {
            shared.auto_approve.store(request.on, Ordering::SeqCst);
            done()
        }
        Err(err) => err.into_response(),
    }
}

async fn contact(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let Some(email) = query.get("email") else {
        return bad_request("query parameter email is required");
    };
    match shared.world().contact_view(email) {
        Some(contact) => json(StatusCode::OK, &json!(contact)),
        None => json(StatusCode::NOT_FOUND, &json!({"error": "no contact with that email"})),
    }
}

async fn tag(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let Some(name) = query.get("name") else {
        return bad_request("query parameter name is required");
    };
    match shared.world().crm.tag_by_name(name) {
        Some(id) => json(StatusCode::OK, &json!({"id": id, "name": name})),
        None => json(StatusCode::NOT_FOUND, &json!({"error": "no tag with that name"})),
    }
}

#[derive(Deserialize)]
struct Unsubscribe {
    email: String,
}

async fn unsubscribe(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<Unsubscribe>(&body) {
        Ok(request) if shared.world().crm.unsubscribe(&request.email) => done(),
        Ok(_) => json(StatusCode::NOT_FOUND, &json!({"error": "no contact with that email"})),
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize)]
struct NewCustomField {
    label: String,
    field_type: String,
    #[serde(default)]
    options: Vec<String>,
}

/// `{"label","field_type","options"}` -> the field (as `GET /v1/contacts/model` lists it).
async fn add_custom_field(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<NewCustomField>(&body) {
        Ok(field) => match shared
            .world()
            .marketing
            .add_custom_field(&field.label, &field.field_type, field.options)
        {
            Ok(field) => json(StatusCode::OK, &json!(field)),
            Err(message) => bad_request(message),
        },
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize)]
struct NewLeadSource {
    name: String,
}

async fn add_lead_source(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<NewLeadSource>(&body) {
        Ok(source) => json(
            StatusCode::OK,
            &json!(shared.world().marketing.add_lead_source(&source.name)),
        ),
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize)]
struct NewCampaign {
    integration: String,
    call_name: String,
    #[serde(default)]
    email_subject: Option<String>,
}

/// A published campaign starting on an API goal: `{"integration","call_name","email_subject"}`.
async fn add_campaign(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<NewCampaign>(&body) {
        Ok(c) => json(
            StatusCode::OK,
            &json!(
                shared
                    .world()
                    .marketing
                    .add_campaign(&c.integration, &c.call_name, c.email_subject)
            ),
        ),
        Err(err) => err.into_response(),
    }
}

#[derive(Deserialize)]
struct NewTemplate {
    subject: String,
}

async fn add_template(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse::<NewTemplate>(&body) {
        Ok(t) => json(
            StatusCode::OK,
            &json!(shared.world().marketing.add_template(&t.subject)),
        ),
        Err(err) => err.into_response(),
    }
}
