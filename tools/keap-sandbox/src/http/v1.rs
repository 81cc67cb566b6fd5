//! REST v1 (integer ids, `{"message"}` errors).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::{ApiError, check_subject};
use crate::Shared;
use crate::crm::{ApiVersion, DuplicateOption, parse_contact};

type Reply = Result<Response, ApiError>;

const V1: ApiVersion = ApiVersion::V1;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v1/contacts",
            get(list_contacts).put(upsert_contact).post(create_contact),
        )
        .route("/v1/contacts/{contact_id}", get(get_contact))
        .route("/v1/contacts/{contact_id}/tags", post(apply_tags))
        .route("/v1/tags", get(list_tags).post(create_tag))
        .route("/v1/tags/{tag_id}", get(get_tag))
        .route("/v1/emails/queue", post(queue_email))
        .route("/v1/emails", get(list_emails))
        .route("/v1/contacts/model", get(contact_model))
        .route("/v1/contacts/model/customFields", post(create_custom_field))
        .route("/v1/campaigns/goals/{integration}/{call_name}", post(achieve_goal))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(V1, message)
}

/// Custom fields, lead source and origin of a contact body, checked as Keap does (400).
fn check_marketing(world: &crate::World, body: &Value) -> Result<(), ApiError> {
    let body = body
        .as_object()
        .ok_or_else(|| bad_request("The request body must be a JSON object"))?;
    world.marketing.check_contact(body).map_err(bad_request)
}

/// `GET /v1/contacts/model`: the account's custom fields and the optional properties.
async fn contact_model(State(shared): State<Arc<Shared>>) -> Reply {
    Ok(super::json(StatusCode::OK, &shared.world().marketing.model_json()))
}

/// `POST /v1/contacts/model/customFields` (`CreateRestCustomField`) -> 201 `CustomFieldMetaData`.
async fn create_custom_field(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V1.object(&headers, &body)?;
    let text = |name: &str| match body.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) => Err(bad_request(format!("{name} is required"))),
        Some(_) => Err(bad_request(format!("{name} must be a string"))),
    };
    let (label, field_type) = (text("label")?, text("field_type")?);
    let options = match body.get("options") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(options)) => options
            .iter()
            .map(|o| o.get("label").and_then(Value::as_str).map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| bad_request("options entries need a label"))?,
        Some(_) => return Err(bad_request("options must be an array")),
    };
    let mut world = shared.world();
    let field = world
        .marketing
        .add_custom_field(&label, &field_type, options)
        .map_err(bad_request)?;
    Ok(super::json(
        StatusCode::CREATED,
        &crate::marketing::Marketing::field_json(field),
    ))
}

/// `POST /v1/campaigns/goals/{integration}/{callName}` with `{"contact_id"}`: 201 with one
/// `GoalEventResultDTO` per listening campaign; an empty list when none listens.
async fn achieve_goal(
    State(shared): State<Arc<Shared>>,
    Path((integration, call_name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let body = V1.object(&headers, &body)?;
    let contact_id = match body.get("contact_id") {
        Some(Value::Number(id)) if id.as_i64().is_some_and(|id| id > 0) => id.as_i64().unwrap_or_default(),
        None | Some(Value::Null) => return Err(bad_request("contact_id is required")),
        Some(_) => return Err(bad_request("contact_id must be a positive integer")),
    };
    let goal = crate::marketing::GoalRef::Named {
        integration: &integration,
        call_name: &call_name,
    };
    let mut world = shared.world();
    let results: Vec<Value> = match super::achieve_goal(&mut world, goal, contact_id) {
        Some(campaigns) => campaigns
            .iter()
            .map(|c| json!({"campaign_id": c.campaign_id, "goal_id": c.goal_id, "success": true, "message": "Goal achieved"}))
            .collect(),
        // Keap answers per listening campaign that the contact was not found.
        None => world
            .marketing
            .listeners(goal)
            .iter()
            .map(|c| json!({"campaign_id": c.campaign_id, "goal_id": c.goal_id, "success": false, "message": format!("Contact {contact_id} not found")}))
            .collect(),
    };
    Ok(super::json(StatusCode::CREATED, &Value::Array(results)))
}

/// `GET /v1/emails?contact_id=&since_sent_date=&limit=&offset=`: emails sent (and listed:
/// see the `sent_listing_delay` fault), oldest first.
async fn list_emails(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Reply {
    let (limit, offset) = paging(&query)?;
    let contact_id = match query.get("contact_id") {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .map_err(|_| bad_request("contact_id must be an integer"))?,
        ),
    };
    let since = match query.get("since_sent_date") {
        None => None,
        Some(raw) => Some(
            humantime::parse_rfc3339_weak(raw.trim_end_matches('Z'))
                .or_else(|_| humantime::parse_rfc3339(raw))
                .map_err(|_| bad_request("since_sent_date must be a date-time (RFC 3339)"))?,
        ),
    };
    let delay = shared.faults.sent_listing_delay();
    let (count, emails) = shared
        .world()
        .marketing
        .sent_json(contact_id, since, delay, offset, limit);
    Ok(super::json(StatusCode::OK, &json!({"emails": emails, "count": count})))
}

/// `PUT /v1/contacts`: create or update by `duplicate_option`.
async fn upsert_contact(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V1.object(&headers, &body)?;
    let duplicate = match body.get("duplicate_option") {
        Some(Value::String(option)) => DuplicateOption::parse(option).map_err(bad_request)?,
        None | Some(Value::Null) => {
            return Err(bad_request("duplicate_option is required (Email or EmailAndName)"));
        }
        Some(_) => return Err(bad_request("duplicate_option must be a string")),
    };
    let input = parse_contact(&body, ApiVersion::V1).map_err(bad_request)?;
    let mut world = shared.world();
    check_marketing(&world, &body)?;
    let (created, id) = world
        .crm
        .upsert(input, Some(duplicate), ApiVersion::V1)
        .map_err(bad_request)?;
    super::contact_saved(&mut world, V1, created, id)
}

/// `POST /v1/contacts`: always creates, even when the email exists (Keap makes a duplicate).
async fn create_contact(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V1.object(&headers, &body)?;
    let input = parse_contact(&body, ApiVersion::V1).map_err(bad_request)?;
    let mut world = shared.world();
    check_marketing(&world, &body)?;
    let id = world.crm.create(input).map_err(bad_request)?;
    super::contact_saved(&mut world, V1, true, id)
}

async fn get_contact(State(shared): State<Arc<Shared>>, Path(contact_id): Path<String>) -> Reply {
    let id = V1.path_id(&contact_id, "contactId")?;
    let world = shared.world();
    let contact = world
        .crm
        .contact(id)
        .ok_or_else(|| ApiError::not_found(V1, "Contact", id))?;
    Ok(super::json(StatusCode::OK, &contact.v1_json()))
}

fn paging(query: &HashMap<String, String>) -> Result<(usize, usize), ApiError> {
    let number = |name: &str, default: usize| match query.get(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<usize>()
            .map_err(|_| bad_request(format!("{name} must be a non-negative integer"))),
    };
    Ok((number("limit", 1000)?.clamp(1, 1000), number("offset", 0)?))
}

/// `GET /v1/contacts?email=..&given_name=..&family_name=..`
async fn list_contacts(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Reply {
    let (limit, offset) = paging(&query)?;
    let world = shared.world();
    let matching: Vec<Value> = world
        .crm
        .contacts_matching(|c| {
            query.get("email").is_none_or(|e| c.has_email_matching(e))
                && query.get("given_name").is_none_or(|n| c.given_name_matches(n))
                && query.get("family_name").is_none_or(|n| c.family_name_matches(n))
        })
        .map(|c| c.v1_json())
        .collect();
    let count = matching.len();
    let page: Vec<Value> = matching.into_iter().skip(offset).take(limit).collect();
    Ok(super::json(
        StatusCode::OK,
        &json!({"contacts": page, "count": count, "next": null, "previous": null}),
    ))
}

/// `POST /v1/contacts/{id}/tags` with `{"tagIds":[..]}`: a map tag id -> outcome.
async fn apply_tags(
    State(shared): State<Arc<Shared>>,
    Path(contact_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let contact_id = V1.path_id(&contact_id, "contactId")?;
    let body = V1.object(&headers, &body)?;
    let tag_ids = match body.get("tagIds") {
        Some(Value::Array(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|id| id.as_i64().filter(|id| *id > 0))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| bad_request("tagIds must be positive integers"))?,
        Some(Value::Array(_)) => return Err(bad_request("tagIds must not be empty")),
        Some(_) => return Err(bad_request("tagIds must be an array of integers")),
        None => return Err(bad_request("tagIds is required")),
    };
    let mut world = shared.world();
    if world.crm.contact(contact_id).is_none() {
        return Err(ApiError::not_found(V1, "Contact", contact_id));
    }
    let mut results = Map::new();
    for tag_id in tag_ids {
        let outcome = world.crm.apply_tag(contact_id, tag_id);
        if outcome == crate::crm::ApplyOutcome::Success {
            world.stats.tags_applied += 1;
        }
        results.insert(tag_id.to_string(), json!(outcome.name()));
    }
    Ok(super::json(StatusCode::OK, &Value::Object(results)))
}

/// `GET /v1/tags?name=..` (exact name).
async fn list_tags(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Reply {
    let (limit, offset) = paging(&query)?;
    let world = shared.world();
    let matching: Vec<Value> = world
        .crm
        .tags_named(query.get("name").map(String::as_str))
        .map(|t| t.v1_json())
        .collect();
    let count = matching.len();
    let page: Vec<Value> = matching.into_iter().skip(offset).take(limit).collect();
    Ok(super::json(
        StatusCode::OK,
        &json!({"tags": page, "count": count, "next": null, "previous": null}),
    ))
}

async fn get_tag(State(shared): State<Arc<Shared>>, Path(tag_id): Path<String>) -> Reply {
    let id = V1.path_id(&tag_id, "tagId")?;
    let world = shared.world();
    let tag = world.crm.tag(id).ok_or_else(|| ApiError::not_found(V1, "Tag", id))?;
    Ok(super::json(StatusCode::OK, &tag.v1_json()))
}

/// Name, description and category id of a tag creation body (v1 and v2 alike).
pub(crate) fn tag_fields(
    body: &Value,
    category_id_is_string: bool,
) -> Result<(String, Option<String>, Option<String>), String> {
    let name = match body.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() && name.chars().count() <= 255 => name.clone(),
        Some(Value::String(_)) => return Err("name must be 1 to 255 characters".to_owned()),
        None | Some(Value::Null) => return Err("name is required".to_owned()),
        Some(_) => return Err("name must be a string".to_owned()),
    };
    let description = match body.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => return Err("description must be a string".to_owned()),
    };
    let category = match body.get("category") {
        None | Some(Value::Null) => None,
        Some(Value::Object(category)) => match category.get("id") {
            Some(Value::String(id)) if category_id_is_string && !id.is_empty() => Some(id.clone()),
            Some(Value::Number(id)) if !category_id_is_string && id.is_i64() => Some(id.to_string()),
            _ => return Err("category.id is required and must be a valid id".to_owned()),
        },
        Some(_) => return Err("category must be an object".to_owned()),
    };
    Ok((name, description, category))
}

/// `POST /v1/tags` with `{"name"}`. Names are not unique at Keap: a second tag with the
/// same name is created.
async fn create_tag(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V1.object(&headers, &body)?;
    let (name, description, category) = tag_fields(&body, false).map_err(bad_request)?;
    let mut world = shared.world();
    world.stats.tags_created += 1;
    let tag = world.crm.create_tag(name, description, category).v1_json();
    Ok(super::json(StatusCode::CREATED, &tag))
}

/// `POST /v1/emails/queue`: 202, one email counted per recipient.
async fn queue_email(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V1.object(&headers, &body)?;
    let contacts = match body.get("contacts") {
        Some(Value::Array(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|id| id.as_i64().filter(|id| *id > 0))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| bad_request("contacts must be contact ids (integers)"))?,
        Some(Value::Array(_)) => return Err(bad_request("contacts must not be empty")),
        None | Some(Value::Null) => return Err(bad_request("contacts is required")),
        Some(_) => return Err(bad_request("contacts must be an array of contact ids")),
    };
    check_subject(&body).map_err(bad_request)?;
    match body.get("user_id") {
        Some(Value::Number(id)) if id.as_i64().is_some_and(|id| id > 0) => {}
        None | Some(Value::Null) => return Err(bad_request("user_id is required")),
        Some(_) => return Err(bad_request("user_id must be a positive integer")),
    }
    super::deliver_email(&shared, V1, &body, &contacts)
}
