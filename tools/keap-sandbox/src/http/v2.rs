//! REST v2 (string ids, `{"code","message","status","details"}` errors), shaped after
//! Keap's published v2 OpenAPI spec.

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
use crate::crm::{ApiVersion, ApplyOutcome, Contact, DuplicateOption, Tag, parse_contact};

type Reply = Result<Response, ApiError>;

const V2: ApiVersion = ApiVersion::V2;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v2/contacts", get(list_contacts).post(create_contact))
        .route("/v2/contacts/{contact_id}", get(get_contact).patch(patch_contact))
        .route("/v2/tags", get(list_tags).post(create_tag))
        .route("/v2/tags/{tag_id}", get(get_tag))
        .route("/v2/tags/{tag_id}/contacts:applyTags", post(apply_tags))
        .route("/v2/emails:send", post(send_email))
        .route("/v2/emails/templates:send", post(send_template))
        .route("/v2/leadSources", get(list_lead_sources).post(create_lead_source))
        .route("/v2/automations/goals/achieve", post(achieve_goal))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(V2, message)
}

/// v2 ids in bodies are strings holding a number.
fn string_ids(body: &Value, name: &str) -> Result<Vec<i64>, ApiError> {
    match body.get(name) {
        Some(Value::Array(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|id| id.as_str().and_then(|s| s.parse::<i64>().ok()).filter(|id| *id > 0))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| bad_request(format!("{name} must be an array of id strings"))),
        Some(Value::Array(_)) => Err(bad_request(format!("{name} must not be empty"))),
        None | Some(Value::Null) => Err(bad_request(format!("{name} is required"))),
        Some(_) => Err(bad_request(format!("{name} must be an array of id strings"))),
    }
}

/// `filter=a==x;b==y` -> [(a, x), (b, y)]; only the named fields are allowed.
fn parse_filter<'a>(filter: Option<&'a String>, allowed: &[&str]) -> Result<Vec<(&'a str, &'a str)>, ApiError> {
    let Some(filter) = filter else {
        return Ok(Vec::new());
    };
    filter
        .split(';')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (field, value) = part
                .split_once("==")
                .ok_or_else(|| bad_request(format!("Invalid filter {part:?}: expected field==value")))?;
            let field = field.trim();
            if allowed.contains(&field) {
                Ok((field, value.trim()))
            } else {
                Err(bad_request(format!(
                    "Invalid filter field {field:?}: the sandbox supports {}",
                    allowed.join(", ")
                )))
            }
        })
        .collect()
}

fn page_size(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    match query.get("page_size") {
        None => Ok(1000),
        Some(raw) => match raw.parse::<usize>() {
            Ok(0) => Ok(1000),
            Ok(n) if n <= 1000 => Ok(n),
            _ => Err(bad_request("page_size must be an integer from 0 to 1000")),
        },
    }
}

/// `POST /v2/contacts[?duplicate_option=Email]`: 201 created, or 200 when a duplicate was
/// found and updated. Without `duplicate_option` a new contact is always created.
async fn create_contact(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let duplicate = query
        .get("duplicate_option")
        .map(|option| DuplicateOption::parse(option))
        .transpose()
        .map_err(bad_request)?;
    let body = V2.object(&headers, &body)?;
    let input = parse_contact(&body, ApiVersion::V2).map_err(bad_request)?;
    let mut world = shared.world();
    if let Some(object) = body.as_object() {
        world.marketing.check_contact(object).map_err(bad_request)?;
    }
    let (created, id) = world
        .crm
        .upsert(input, duplicate, ApiVersion::V2)
        .map_err(bad_request)?;
    super::contact_saved(&mut world, V2, created, id)
}

/// `GET /v2/contacts?filter=email==a@b.com` (also `given_name`, `family_name`, `ids`).
async fn list_contacts(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Reply {
    let filters = parse_filter(
        query.get("filter"),
        &["email", "given_name", "family_name", "ids", "contact_ids"],
    )?;
    let limit = page_size(&query)?;
    let id_sets: Vec<Vec<i64>> = filters
        .iter()
        .filter(|(field, _)| matches!(*field, "ids" | "contact_ids"))
        .map(|(_, value)| value.split(',').filter_map(|id| id.trim().parse().ok()).collect())
        .collect();
    let world = shared.world();
    let contacts: Vec<Value> = world
        .crm
        .contacts_matching(|c| {
            filters.iter().all(|(field, value)| match *field {
                "email" => c.has_email_matching(value),
                "given_name" => c.given_name_matches(value),
                "family_name" => c.family_name_matches(value),
                _ => true,
            }) && id_sets.iter().all(|ids| ids.contains(&c.id))
        })
        .take(limit)
        .map(Contact::v2_json)
        .collect();
    Ok(super::json(
        StatusCode::OK,
        &json!({"contacts": contacts, "next_page_token": ""}),
    ))
}

async fn get_contact(State(shared): State<Arc<Shared>>, Path(contact_id): Path<String>) -> Reply {
    let id = V2.path_id(&contact_id, "contact_id")?;
    let world = shared.world();
    let contact = world
        .crm
        .contact(id)
        .ok_or_else(|| ApiError::not_found(V2, "Contact", id))?;
    Ok(super::json(StatusCode::OK, &contact.v2_json()))
}

/// `GET /v2/tags?filter=name==Welcome` (also `description`, `category_id`, `tag_ids`).
async fn list_tags(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Reply {
    let filters = parse_filter(query.get("filter"), &["name", "description", "category_id", "tag_ids"])?;
    let limit = page_size(&query)?;
    let keep = |tag: &Tag| {
        filters.iter().all(|(field, value)| match *field {
            "name" => tag.name() == *value,
            "description" if *value == "NONE" => tag.description().is_none(),
            "description" => tag.description() == Some(*value),
            "category_id" if *value == "NONE" => tag.category_id().is_none(),
            "category_id" => tag.category_id() == Some(*value),
            "tag_ids" => value.split(',').any(|id| id.trim() == tag.id.to_string()),
            _ => true,
        })
    };
    let world = shared.world();
    let tags: Vec<Value> = world
        .crm
        .tags()
        .iter()
        .filter(|t| keep(t))
        .take(limit)
        .map(Tag::v2_json)
        .collect();
    Ok(super::json(
        StatusCode::OK,
        &json!({"tags": tags, "next_page_token": ""}),
    ))
}

async fn get_tag(State(shared): State<Arc<Shared>>, Path(tag_id): Path<String>) -> Reply {
    let id = V2.path_id(&tag_id, "tag_id")?;
    let world = shared.world();
    let tag = world.crm.tag(id).ok_or_else(|| ApiError::not_found(V2, "Tag", id))?;
    Ok(super::json(StatusCode::OK, &tag.v2_json()))
}

/// `POST /v2/tags` (`CreateUpdateTagRequest`) -> 201 `Tag`.
async fn create_tag(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V2.object(&headers, &body)?;
    let (name, description, category) = super::v1::tag_fields(&body, true).map_err(bad_request)?;
    let mut world = shared.world();
    world.stats.tags_created += 1;
    let tag = world.crm.create_tag(name, description, category).v2_json();
    Ok(super::json(StatusCode::CREATED, &tag))
}

/// `POST /v2/tags/{tag_id}/contacts:applyTags` with `{"contact_ids":[..]}`: 200 with a
/// result per contact id, even when some fail.
async fn apply_tags(
    State(shared): State<Arc<Shared>>,
    Path(tag_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let id = V2.path_id(&tag_id, "tag_id")?;
    let body = V2.object(&headers, &body)?;
    let contact_ids = string_ids(&body, "contact_ids")?;
    let mut world = shared.world();
    if world.crm.tag(id).is_none() {
        return Err(ApiError::not_found(V2, "Tag", id));
    }
    let mut results = Map::new();
    for contact_id in contact_ids {
        let outcome = world.crm.apply_tag(contact_id, id);
        if outcome == ApplyOutcome::Success {
            world.stats.tags_applied += 1;
        }
        results.insert(contact_id.to_string(), json!(outcome.name()));
    }
    Ok(super::json(StatusCode::OK, &json!({"results": results})))
}

/// `POST /v2/emails:send` (`EmailSendRequest`): exactly one of `user_id` / `from_address`.
async fn send_email(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V2.object(&headers, &body)?;
    let contacts = string_ids(&body, "contacts")?;
    check_subject(&body).map_err(bad_request)?;
    let sender = |name: &str| match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.clone())),
        Some(_) => Err(bad_request(format!("{name} must be a non-empty string"))),
    };
    match (sender("user_id")?, sender("from_address")?) {
        (Some(user_id), None) => {
            if user_id.parse::<i64>().map_or(true, |id| id <= 0) {
                return Err(bad_request("user_id must be a numeric user id string"));
            }
        }
        (None, Some(address)) => {
            if address.parse::<email_address::EmailAddress>().is_err() {
                return Err(bad_request("from_address is not a valid email address"));
            }
        }
        _ => {
            return Err(bad_request("Exactly one of user_id or from_address is required"));
        }
    }
    super::deliver_email(&shared, V2, &body, &contacts)
}

/// A v2 id: a number, or a string holding one.
fn id_field(body: &Value, name: &str) -> Result<Option<i64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_i64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| bad_request(format!("{name} must be a positive id"))),
    }
}

/// `POST /v2/emails/templates:send` (`EmailSendTemplateRequest`): 202; the template's subject
/// is what the contacts receive.
async fn send_template(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V2.object(&headers, &body)?;
    let template_id = id_field(&body, "template_id")?.ok_or_else(|| bad_request("template_id is required"))?;
    let contacts = string_ids(&body, "contact_ids")?;
    id_field(&body, "user_id")?.ok_or_else(|| bad_request("user_id is required"))?;
    let mut world = shared.world();
    let subject = world
        .marketing
        .template(template_id)
        .map(|t| t.subject.clone())
        .ok_or_else(|| ApiError::not_found(V2, "EmailTemplate", template_id))?;
    world
        .send_email(&contacts, &subject)
        .map_err(|unknown| bad_request(format!("Contact {unknown} not found")))?;
    Ok(axum::response::IntoResponse::into_response(StatusCode::ACCEPTED))
}

/// `GET /v2/leadSources?filter=name==Google*`.
async fn list_lead_sources(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Reply {
    let filters = parse_filter(query.get("filter"), &["name"])?;
    let limit = page_size(&query)?;
    let name = filters.iter().find(|(field, _)| *field == "name").map(|(_, v)| *v);
    let sources = shared.world().marketing.lead_sources_json(name, limit);
    Ok(super::json(
        StatusCode::OK,
        &json!({"lead_sources": sources, "next_page_token": ""}),
    ))
}

/// `POST /v2/leadSources` (`CreateLeadSourceRequest`) -> 201 `LeadSource`.
async fn create_lead_source(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V2.object(&headers, &body)?;
    let name = match body.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() && name.chars().count() <= 255 => name.clone(),
        _ => return Err(bad_request("name is required (1 to 255 characters)")),
    };
    let mut world = shared.world();
    let source = world.marketing.add_lead_source(&name);
    Ok(super::json(
        StatusCode::CREATED,
        &crate::marketing::Marketing::lead_source_json(source),
    ))
}

/// `POST /v2/automations/goals/achieve` (`AchieveGoalRequest`): either `integration` +
/// `call_name` or `automation_id` + `goal_id`, and `contact_id`. 200 with one result per
/// listening automation (none: no published automation listens).
async fn achieve_goal(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    let body = V2.object(&headers, &body)?;
    let contact_id = id_field(&body, "contact_id")?.ok_or_else(|| bad_request("contact_id is required"))?;
    let text = |name: &str| body.get(name).and_then(Value::as_str).filter(|t| !t.trim().is_empty());
    let ids = (id_field(&body, "automation_id")?, id_field(&body, "goal_id")?);
    let goal = match (text("integration"), text("call_name"), ids) {
        (Some(integration), Some(call_name), (None, None)) => {
            crate::marketing::GoalRef::Named { integration, call_name }
        }
        (None, None, (Some(automation_id), Some(goal_id))) => crate::marketing::GoalRef::Ids { automation_id, goal_id },
        _ => {
            return Err(bad_request(
                "Provide either integration and call_name, or automation_id and goal_id",
            ));
        }
    };
    let mut world = shared.world();
    if let crate::marketing::GoalRef::Ids { automation_id, .. } = goal
        && world.marketing.listeners(goal).is_empty()
    {
        return Err(ApiError::not_found(V2, "Automation goal", automation_id));
    }
    let campaigns = super::achieve_goal(&mut world, goal, contact_id)
        .ok_or_else(|| ApiError::not_found(V2, "Contact", contact_id))?;
    let results: Vec<Value> = campaigns
        .iter()
        .map(|c| {
            json!({"success": true, "message": "Goal achieved", "automation_id": c.campaign_id, "goal_id": c.goal_id,
                   "flow_start_results": [{"success": true, "message": "Flow started", "flow_id": c.goal_id + 1}],
                   "flow_stop_results": []})
        })
        .collect();
    Ok(super::json(StatusCode::OK, &json!({"results": results})))
}

/// `PATCH /v2/contacts/{contact_id}` (`CreateUpdateContactRequest`): the sandbox takes the
/// marketing fields (`utm_parameters`, `leadsource_id`, `custom_fields`, `job_title`,
/// `website`) and answers the contact. `utm_parameters` needs `keap_source_id` (the spec's
/// `CreateContactUtmPropertiesRequest`).
async fn patch_contact(
    State(shared): State<Arc<Shared>>,
    Path(contact_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let id = V2.path_id(&contact_id, "contact_id")?;
    let body = V2.object(&headers, &body)?;
    let object = body.as_object().cloned().unwrap_or_default();
    const TAKEN: &[&str] = &[
        "utm_parameters",
        "leadsource_id",
        "custom_fields",
        "job_title",
        "website",
    ];
    if let Some(name) = object.keys().find(|name| !TAKEN.contains(&name.as_str())) {
        return Err(bad_request(format!(
            "The sandbox's PATCH takes only {}; got {name}",
            TAKEN.join(", ")
        )));
    }
    if let Some(utm) = object.get("utm_parameters") {
        let utm = utm
            .as_object()
            .ok_or_else(|| bad_request("utm_parameters must be an object"))?;
        match utm.get("keap_source_id") {
            Some(Value::String(source)) if !source.trim().is_empty() => {}
            _ => return Err(bad_request("utm_parameters.keap_source_id is required")),
        }
        for (name, value) in utm {
            let known = [
                "keap_source_id",
                "utm_source",
                "utm_medium",
                "utm_term",
                "utm_campaign",
                "utm_content",
            ];
            if !known.contains(&name.as_str()) || !value.is_string() {
                return Err(bad_request(format!(
                    "utm_parameters.{name} is not a known string field"
                )));
            }
        }
    }
    let mut world = shared.world();
    world.marketing.check_contact(&object).map_err(bad_request)?;
    if !world.crm.set_fields(id, object) {
        return Err(ApiError::not_found(V2, "Contact", id));
    }
    let contact = world
        .crm
        .contact(id)
        .map(Contact::v2_json)
        .ok_or_else(|| ApiError::not_found(V2, "Contact", id))?;
    Ok(super::json(StatusCode::OK, &contact))
}
