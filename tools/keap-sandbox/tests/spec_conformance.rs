//! Every v2 operation the sandbox serves exists in Keap's official v2 OpenAPI spec, answers
//! only documented status codes, and sends bodies whose fields the spec's response schema
//! names (checked recursively, with types and enums). The spec is read from `KEAP_V2_SPEC`
//! or the copy carried in this crate, `spec/keap-v2-openapi.yml` (source and licence in
//! `spec/README.md`).
//!
//! Gateway answers (401 fault, 429 quota) are not checked: the spec documents the
//! application's `Error` shape for them, but Keap's gateway sends its own (see "Gateway" in
//! this crate's README.md).

mod common;

use std::path::PathBuf;

use common::*;
use reqwest::Method;
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value as Yaml;

fn spec_path() -> PathBuf {
    std::env::var_os("KEAP_V2_SPEC").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/spec/keap-v2-openapi.yml")),
        PathBuf::from,
    )
}

fn v1_spec_path() -> PathBuf {
    std::env::var_os("KEAP_V1_SPEC").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/spec/keap-v1-openapi.yml")),
        PathBuf::from,
    )
}

fn load_v1_spec() -> Yaml {
    let path = v1_spec_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_yaml_ng::from_str(&text).expect("spec parses as YAML")
}

fn load_spec() -> Yaml {
    let path = spec_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_yaml_ng::from_str(&text).expect("spec parses as YAML")
}

/// Follow `$ref: '#/a/b/c'` (repeatedly).
fn resolve<'a>(spec: &'a Yaml, mut schema: &'a Yaml) -> &'a Yaml {
    while let Some(reference) = schema.get("$ref").and_then(Yaml::as_str) {
        let pointer = reference
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("external $ref {reference}"));
        schema = pointer.split('/').fold(spec, |node, key| {
            node.get(key).unwrap_or_else(|| panic!("dangling $ref {reference}"))
        });
    }
    schema
}

fn type_matches(expected: &str, value: &Json) -> bool {
    match expected {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

/// Collect every way `value` departs from `schema` into `problems`.
fn check(spec: &Yaml, schema: &Yaml, value: &Json, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if let Some(all_of) = schema.get("allOf").and_then(Yaml::as_sequence) {
        for part in all_of {
            check(spec, part, value, at, problems);
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Yaml::String(one)) => vec![one.as_str()],
        Some(Yaml::Sequence(many)) => many.iter().filter_map(Yaml::as_str).collect(),
        _ => Vec::new(),
    };
    // The v1 spec (generated from Java) types an untyped value (`Object`, as a custom
    // field's `content`) as an object without properties: any JSON value.
    let untyped = types == ["object"]
        && schema
            .get("properties")
            .and_then(Yaml::as_mapping)
            .is_some_and(|p| p.is_empty());
    if !types.is_empty() && !untyped && !types.iter().any(|t| type_matches(t, value)) {
        problems.push(format!("{at}: {value} is not of type {types:?}"));
        return;
    }
    if let (Some(allowed), Some(text)) = (schema.get("enum").and_then(Yaml::as_sequence), value.as_str())
        && !allowed.iter().any(|a| a.as_str() == Some(text))
    {
        problems.push(format!("{at}: {text:?} is not one of the spec's enum values"));
    }
    if let (Some(properties), Some(object)) = (schema.get("properties").and_then(Yaml::as_mapping), value.as_object()) {
        let open = schema
            .get("additionalProperties")
            .is_some_and(|a| a.as_bool() != Some(false));
        for (key, field) in object {
            match properties.get(key.as_str()) {
                Some(field_schema) => check(spec, field_schema, field, &format!("{at}.{key}"), problems),
                None if open => {}
                None => problems.push(format!("{at}: field {key:?} is not in the spec's schema")),
            }
        }
    }
    if let (Some(additional), Some(object)) = (schema.get("additionalProperties"), value.as_object())
        && additional.is_mapping()
        && schema.get("properties").is_none()
    {
        for (key, field) in object {
            check(spec, additional, field, &format!("{at}.{key}"), problems);
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            check(spec, items, item, &format!("{at}[{index}]"), problems);
        }
    }
}

/// One request to the sandbox and the spec operation it exercises.
struct Case {
    method: Method,
    spec_path: &'static str,
    path: String,
    body: Option<Json>,
    expect: u16,
}

fn case(method: Method, spec_path: &'static str, path: impl Into<String>, body: Option<Json>, expect: u16) -> Case {
    Case {
        method,
        spec_path,
        path: path.into(),
        body,
        expect,
    }
}

/// Check one case against the spec; the response body when it was JSON.
async fn run(spec: &Yaml, sandbox: &keap_sandbox::Sandbox, case: &Case, problems: &mut Vec<String>) -> Json {
    let label = format!("{} {} ({})", case.method, case.path, case.spec_path);
    let mut request = rest(sandbox, case.method.clone(), &case.path);
    if let Some(body) = &case.body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    if status != case.expect {
        problems.push(format!("{label}: status {status}, expected {}: {text}", case.expect));
        return Json::Null;
    }
    let Some(operation) = spec
        .get("paths")
        .and_then(|paths| paths.get(case.spec_path))
        .and_then(|item| item.get(case.method.as_str().to_lowercase().as_str()))
    else {
        problems.push(format!("{label}: the spec has no such operation"));
        return Json::Null;
    };
    // v2 writes status keys as strings ('200'), v1 as numbers (200).
    let Some(documented) = operation
        .get("responses")
        .and_then(Yaml::as_mapping)
        .and_then(|responses| {
            responses
                .iter()
                .find(|(key, _)| {
                    key.as_str() == Some(status.to_string().as_str()) || key.as_u64() == Some(u64::from(status))
                })
                .map(|(_, value)| value)
        })
    else {
        problems.push(format!("{label}: status {status} is not documented"));
        return Json::Null;
    };
    let schema = documented
        .get("content")
        .and_then(|c| c.get("application/json"))
        .and_then(|c| c.get("schema"));
    match (schema, text.is_empty()) {
        (None, true) => Json::Null,
        (None, false) => {
            problems.push(format!("{label}: the spec documents no body for {status}, got {text}"));
            Json::Null
        }
        (Some(_), true) => {
            problems.push(format!("{label}: empty body where the spec has a schema"));
            Json::Null
        }
        (Some(schema), false) => {
            let body: Json =
                serde_json::from_str(&text).unwrap_or_else(|err| panic!("{label}: not JSON ({err}): {text}"));
            check(spec, schema, &body, &label, problems);
            body
        }
    }
}

#[tokio::test]
async fn v2_operations_codes_and_bodies_match_the_official_spec() {
    let spec = load_spec();
    let sandbox = sandbox().await;
    let mut problems = Vec::new();
    let contact_body = json!({
        "given_name": "Cy", "family_name": "Ng", "job_title": "Baker", "source_type": "API",
        "email_addresses": [{"email": "cy@example.com", "field": "EMAIL1", "opt_in_reason": "Signup form"}],
        "phone_numbers": [{"number": "555-0101", "field": "PHONE1"}],
    });

    let created = run(
        &spec,
        &sandbox,
        &case(
            Method::POST,
            "/rest/v2/contacts",
            "/v2/contacts?duplicate_option=Email",
            Some(contact_body.clone()),
            201,
        ),
        &mut problems,
    )
    .await;
    let contact_id = created["id"].as_str().unwrap_or("0").to_owned();
    let tag = run(
        &spec,
        &sandbox,
        &case(
            Method::POST,
            "/rest/v2/tags",
            "/v2/tags",
            Some(json!({"name": "Welcome", "description": "d", "category": {"id": "5"}})),
            201,
        ),
        &mut problems,
    )
    .await;
    let tag_id = tag["id"].as_str().unwrap_or("0").to_owned();

    let cases = [
        case(
            Method::POST,
            "/rest/v2/contacts",
            "/v2/contacts?duplicate_option=Email",
            Some(contact_body),
            200,
        ),
        case(
            Method::POST,
            "/rest/v2/contacts",
            "/v2/contacts",
            Some(json!({"given_name": "No address"})),
            400,
        ),
        case(
            Method::GET,
            "/rest/v2/contacts",
            "/v2/contacts?filter=email%3D%3Dcy@example.com",
            None,
            200,
        ),
        case(
            Method::GET,
            "/rest/v2/contacts",
            "/v2/contacts?filter=nonsense",
            None,
            400,
        ),
        case(
            Method::GET,
            "/rest/v2/contacts/{contact_id}",
            format!("/v2/contacts/{contact_id}"),
            None,
            200,
        ),
        case(
            Method::GET,
            "/rest/v2/contacts/{contact_id}",
            "/v2/contacts/999999",
            None,
            404,
        ),
        case(
            Method::POST,
            "/rest/v2/tags",
            "/v2/tags",
            Some(json!({"name": ""})),
            400,
        ),
        case(
            Method::GET,
            "/rest/v2/tags",
            "/v2/tags?filter=name%3D%3DWelcome",
            None,
            200,
        ),
        case(Method::GET, "/rest/v2/tags", "/v2/tags?page_size=5000", None, 400),
        case(
            Method::GET,
            "/rest/v2/tags/{tag_id}",
            format!("/v2/tags/{tag_id}"),
            None,
            200,
        ),
        case(Method::GET, "/rest/v2/tags/{tag_id}", "/v2/tags/999999", None, 404),
        case(
            Method::POST,
            "/rest/v2/tags/{tag_id}/contacts:applyTags",
            format!("/v2/tags/{tag_id}/contacts:applyTags"),
            Some(json!({"contact_ids": [contact_id, "999999"]})),
            200,
        ),
        case(
            Method::POST,
            "/rest/v2/tags/{tag_id}/contacts:applyTags",
            "/v2/tags/999999/contacts:applyTags",
            Some(json!({"contact_ids": ["1"]})),
            404,
        ),
        case(
            Method::POST,
            "/rest/v2/tags/{tag_id}/contacts:applyTags",
            format!("/v2/tags/{tag_id}/contacts:applyTags"),
            Some(json!({})),
            400,
        ),
        case(
            Method::POST,
            "/rest/v2/emails:send",
            "/v2/emails:send",
            Some(json!({"contacts": [contact_id], "subject": "Hi", "user_id": "1", "plain_content": "SGk="})),
            202,
        ),
        case(
            Method::POST,
            "/rest/v2/emails:send",
            "/v2/emails:send",
            Some(json!({"contacts": [contact_id], "subject": "Hi"})),
            400,
        ),
    ];
    for case in &cases {
        run(&spec, &sandbox, case, &mut problems).await;
    }
    assert!(
        problems.is_empty(),
        "departures from the v2 spec:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn v2_welcome_and_field_operations_match_the_official_spec() {
    let spec = load_spec();
    let sandbox = sandbox().await;
    let mut problems = Vec::new();
    let contact = run(
        &spec,
        &sandbox,
        &case(
            Method::POST,
            "/rest/v2/contacts",
            "/v2/contacts?duplicate_option=Email",
            Some(json!({"email_addresses": [{"email": "dee@example.com", "field": "EMAIL1"}]})),
            201,
        ),
        &mut problems,
    )
    .await;
    let contact_id = contact["id"].as_str().unwrap_or("0").to_owned();
    let template = sandbox.add_email_template("Welcome from the template");
    let campaign = sandbox.add_campaign("relay", "signup", Some("Welcome from the campaign"));
    let source = run(
        &spec,
        &sandbox,
        &case(
            Method::POST,
            "/rest/v2/leadSources",
            "/v2/leadSources",
            Some(json!({"name": "Google Ads", "status": "ACTIVE"})),
            201,
        ),
        &mut problems,
    )
    .await;
    let cases = [
        case(
            Method::GET,
            "/rest/v2/leadSources",
            "/v2/leadSources?filter=name%3D%3DGoogle%20Ads",
            None,
            200,
        ),
        case(
            Method::POST,
            "/rest/v2/leadSources",
            "/v2/leadSources",
            Some(json!({})),
            400,
        ),
        case(
            Method::POST,
            "/rest/v2/emails/templates:send",
            "/v2/emails/templates:send",
            Some(json!({"template_id": template.id.to_string(), "contact_ids": [contact_id], "user_id": "1"})),
            202,
        ),
        case(
            Method::POST,
            "/rest/v2/emails/templates:send",
            "/v2/emails/templates:send",
            Some(json!({"template_id": "999999", "contact_ids": [contact_id], "user_id": "1"})),
            404,
        ),
        case(
            Method::POST,
            "/rest/v2/emails/templates:send",
            "/v2/emails/templates:send",
            Some(json!({"template_id": template.id.to_string(), "contact_ids": [contact_id]})),
            400,
        ),
        case(
            Method::POST,
            "/rest/v2/automations/goals/achieve",
            "/v2/automations/goals/achieve",
            Some(
                json!({"contact_id": contact_id.parse::<i64>().unwrap_or(0), "integration": "relay", "call_name": "signup"}),
            ),
            200,
        ),
        case(
            Method::POST,
            "/rest/v2/automations/goals/achieve",
            "/v2/automations/goals/achieve",
            Some(
                json!({"contact_id": contact_id.parse::<i64>().unwrap_or(0), "automation_id": campaign.campaign_id, "goal_id": campaign.goal_id}),
            ),
            200,
        ),
        case(
            Method::POST,
            "/rest/v2/automations/goals/achieve",
            "/v2/automations/goals/achieve",
            Some(json!({"contact_id": 1, "automation_id": 999, "goal_id": 1})),
            404,
        ),
        case(
            Method::POST,
            "/rest/v2/automations/goals/achieve",
            "/v2/automations/goals/achieve",
            Some(json!({"contact_id": 1, "integration": "relay"})),
            400,
        ),
        case(
            Method::PATCH,
            "/rest/v2/contacts/{contact_id}",
            format!("/v2/contacts/{contact_id}?update_mask=utm_parameters"),
            Some(
                json!({"utm_parameters": {"keap_source_id": "6088", "utm_source": "google"}, "leadsource_id": source["id"]}),
            ),
            200,
        ),
        case(
            Method::PATCH,
            "/rest/v2/contacts/{contact_id}",
            format!("/v2/contacts/{contact_id}"),
            Some(json!({"utm_parameters": {"utm_source": "google"}})),
            400,
        ),
    ];
    for case in &cases {
        run(&spec, &sandbox, case, &mut problems).await;
    }
    let seen = sandbox.contact_by_email("dee@example.com").unwrap();
    assert_eq!(seen.goals_achieved, 2, "both achievements started the campaign");
    assert_eq!(
        seen.emails_sent,
        [
            "Welcome from the template",
            "Welcome from the campaign",
            "Welcome from the campaign"
        ]
    );
    assert_eq!(seen.extra["utm_parameters"]["utm_source"], "google");
    assert!(
        problems.is_empty(),
        "departures from the v2 spec:\n{}",
        problems.join("\n")
    );
}

/// The v1 operations the sandbox serves for the welcome goal and contact fields, against Keap's
/// v1 spec (whose paths omit `/v1`).
#[tokio::test]
async fn v1_welcome_and_field_operations_match_the_official_v1_spec() {
    let spec = load_v1_spec();
    let sandbox = sandbox().await;
    let mut problems = Vec::new();
    let plan = sandbox.add_custom_field("Plan", "Dropdown", &["free", "pro"]);
    sandbox.add_campaign("relay", "signup", Some("Welcome from the campaign"));
    let source = sandbox.add_lead_source("Webinar");
    let upsert = json!({
        "duplicate_option": "Email",
        "email_addresses": [{"email": "eve@example.com", "field": "EMAIL1"}],
        "custom_fields": [{"id": plan.id, "content": "pro"}],
        "lead_source_id": source.id,
        "origin": {"ip_address": "203.0.113.5", "date": "2026-03-01T10:00:00Z"},
        "job_title": "Baker",
    });
    let created = rest(&sandbox, Method::PUT, "/v1/contacts")
        .json(&upsert)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let contact_id = json_of(created).await["id"].as_i64().unwrap();
    let cases = [
        case(Method::PUT, "/contacts", "/v1/contacts", Some(upsert.clone()), 200),
        case(Method::GET, "/contacts/model", "/v1/contacts/model", None, 200),
        case(
            Method::POST,
            "/contacts/model/customFields",
            "/v1/contacts/model/customFields",
            Some(json!({"label": "Referrer", "field_type": "Text"})),
            201,
        ),
        case(
            Method::POST,
            "/campaigns/goals/{integration}/{callName}",
            "/v1/campaigns/goals/relay/signup",
            Some(json!({"contact_id": contact_id})),
            201,
        ),
        case(
            Method::POST,
            "/campaigns/goals/{integration}/{callName}",
            "/v1/campaigns/goals/nobody/listens",
            Some(json!({"contact_id": contact_id})),
            201,
        ),
        case(
            Method::GET,
            "/emails",
            format!("/v1/emails?contact_id={contact_id}&since_sent_date=2020-01-01T00:00:00Z"),
            None,
            200,
        ),
    ];
    let mut answers = Vec::new();
    for case in &cases {
        answers.push(run(&spec, &sandbox, case, &mut problems).await);
    }
    assert!(answers[3][0]["campaign_id"].as_i64().is_some(), "{}", answers[3]);
    assert_eq!(answers[4], json!([]), "no campaign listens to that goal");
    assert_eq!(answers[5]["emails"][0]["subject"], "Welcome from the campaign");
    assert!(
        problems.is_empty(),
        "departures from the v1 spec:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_catches_departures() {
    let spec: Yaml = serde_yaml_ng::from_str(
        "components:\n  schemas:\n    T:\n      type: object\n      properties:\n        id: {type: string}\n        kind: {type: string, enum: [A, B]}\n        list: {type: array, items: {$ref: '#/components/schemas/T'}}\n",
    )
    .unwrap();
    let schema: Yaml = serde_yaml_ng::from_str("$ref: '#/components/schemas/T'").unwrap();
    let mut problems = Vec::new();
    check(
        &spec,
        &schema,
        &json!({"id": "1", "kind": "A", "list": [{"id": "2"}]}),
        "ok",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    for bad in [
        json!({"id": 1}),
        json!({"kind": "C"}),
        json!({"extra": true}),
        json!({"list": [{"id": 3}]}),
    ] {
        let mut problems = Vec::new();
        check(&spec, &schema, &bad, "bad", &mut problems);
        assert_eq!(problems.len(), 1, "{bad} -> {problems:?}");
    }
}
