//! REST v2: contacts, tags, emails:send (shapes checked against the spec in spec_conformance.rs).

mod common;

use common::*;
use keap_sandbox::Sandbox;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn post(sandbox: &Sandbox, path: &str, body: Value) -> (StatusCode, Value) {
    let response = rest(sandbox, Method::POST, path).json(&body).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        },
    )
}

async fn get(sandbox: &Sandbox, path: &str) -> (StatusCode, Value) {
    let response = rest(sandbox, Method::GET, path).send().await.unwrap();
    (response.status(), json_of(response).await)
}

fn bo(email: &str) -> Value {
    json!({"given_name": "Bo", "family_name": "Kim",
           "email_addresses": [{"email": email, "field": "EMAIL1", "opt_in_reason": "Website signup"}]})
}

fn assert_v2_error(body: &Value, code: u16) {
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["status"].is_string(), "{body}");
    assert!(body["details"].is_array(), "{body}");
}

#[tokio::test]
async fn upsert_by_email_creates_then_updates_with_string_ids() {
    let sandbox = sandbox().await;
    let (status, created) = post(&sandbox, "/v2/contacts?duplicate_option=Email", bo("bo@example.com")).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().expect("string id").to_owned();
    assert_eq!(created["email_addresses"][0]["is_opt_in"], true);
    assert_eq!(created["email_addresses"][0]["opt_in_reason"], "Website signup");
    let (status, updated) = post(
        &sandbox,
        "/v2/contacts?duplicate_option=Email",
        json!({"given_name": "Bob", "email_addresses": [{"email": "bo@example.com", "field": "EMAIL1"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["id"], id.as_str());
    assert_eq!(updated["given_name"], "Bob");
    assert_eq!(updated["family_name"], "Kim");
    assert_eq!(updated["email_addresses"][0]["is_opt_in"], true, "opt-in is kept");
    let view = sandbox.contact_by_email("bo@example.com").unwrap();
    assert_eq!(view.id.to_string(), id);
    assert_eq!(view.opt_in_reason.as_deref(), Some("Website signup"));
    let stats = sandbox.stats();
    assert_eq!((stats.contacts_created, stats.contacts_updated), (1, 1));
}

#[tokio::test]
async fn without_duplicate_option_a_new_contact_is_always_created() {
    let sandbox = sandbox().await;
    let (first, a) = post(&sandbox, "/v2/contacts", bo("bo@example.com")).await;
    let (second, b) = post(&sandbox, "/v2/contacts", bo("bo@example.com")).await;
    assert_eq!((first, second), (StatusCode::CREATED, StatusCode::CREATED));
    assert_ne!(a["id"], b["id"]);
}

#[tokio::test]
async fn a_v2_update_replaces_the_email_list() {
    let sandbox = sandbox().await;
    post(
        &sandbox,
        "/v2/contacts",
        json!({"email_addresses": [{"email": "bo@example.com", "field": "EMAIL1"},
                                    {"email": "bo@work.example.com", "field": "EMAIL2"}]}),
    )
    .await;
    let (_, updated) = post(
        &sandbox,
        "/v2/contacts?duplicate_option=Email",
        json!({"email_addresses": [{"email": "bo@example.com"}]}),
    )
    .await;
    assert_eq!(
        updated["email_addresses"].as_array().unwrap().len(),
        1,
        "the spec: unlisted items are removed"
    );
    assert_eq!(updated["email_addresses"][0]["field"], "EMAIL1");
}

#[tokio::test]
async fn bad_contact_requests_get_v2_errors() {
    let sandbox = sandbox().await;
    let cases = [
        ("/v2/contacts?duplicate_option=Phone", bo("bo@example.com")),
        ("/v2/contacts", json!({"given_name": "Nobody"})),
        ("/v2/contacts", json!({"email_addresses": [{"email": "nope"}]})),
        (
            "/v2/contacts",
            json!({"email_addresses": [{"email": "bo@example.com", "field": "EMAIL9"}]}),
        ),
        (
            "/v2/contacts",
            json!({"email_addresses": [{"email": "bo@example.com", "opt_in_reason": 5}]}),
        ),
        (
            "/v2/contacts",
            json!({"email_addresses": [{"email": "bo@example.com"}], "source_type": "FAX"}),
        ),
        ("/v2/contacts", json!("just a string")),
    ];
    for (path, body) in cases {
        let (status, reply) = post(&sandbox, path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert_v2_error(&reply, 400);
    }
    assert_eq!(sandbox.stats().contacts_created, 0);
}

#[tokio::test]
async fn contacts_are_searched_by_email_filter() {
    let sandbox = sandbox().await;
    post(&sandbox, "/v2/contacts", bo("bo@example.com")).await;
    post(&sandbox, "/v2/contacts", bo("other@example.com")).await;
    let (status, found) = get(&sandbox, "/v2/contacts?filter=email%3D%3Dbo@example.com").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["contacts"].as_array().unwrap().len(), 1);
    assert_eq!(found["contacts"][0]["email_addresses"][0]["email"], "bo@example.com");
    let (_, wildcard) = get(&sandbox, "/v2/contacts?filter=email%3D%3Do*").await;
    assert_eq!(wildcard["contacts"].as_array().unwrap().len(), 1);
    let (_, none) = get(&sandbox, "/v2/contacts?filter=email%3D%3Dnobody@example.com").await;
    assert_eq!(none["contacts"], json!([]));
    let (status, reply) = get(&sandbox, "/v2/contacts?filter=favourite_colour%3D%3Dblue").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_v2_error(&reply, 400);
    let id = found["contacts"][0]["id"].as_str().unwrap();
    let (status, one) = get(&sandbox, &format!("/v2/contacts/{id}")).await;
    assert_eq!((status, one["id"].as_str()), (StatusCode::OK, Some(id)));
    let (status, reply) = get(&sandbox, "/v2/contacts/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_v2_error(&reply, 404);
}

#[tokio::test]
async fn tags_are_created_filtered_and_applied_with_per_contact_results() {
    let sandbox = sandbox().await;
    let (_, contact) = post(&sandbox, "/v2/contacts", bo("bo@example.com")).await;
    let contact_id = contact["id"].as_str().unwrap().to_owned();
    let (status, tag) = post(
        &sandbox,
        "/v2/tags",
        json!({"name": "Welcome", "description": "New signups"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let tag_id = tag["id"].as_str().expect("string tag id").to_owned();
    assert_eq!(
        sandbox.tag_by_name("Welcome").map(|id| id.to_string()),
        Some(tag_id.clone())
    );

    let (_, listed) = get(&sandbox, "/v2/tags?filter=name%3D%3DWelcome").await;
    assert_eq!(listed["tags"][0]["id"], tag_id.as_str());
    let (_, none) = get(&sandbox, "/v2/tags?filter=name%3D%3DWelcom").await;
    assert_eq!(none["tags"], json!([]));

    let apply = format!("/v2/tags/{tag_id}/contacts:applyTags");
    let (status, results) = post(&sandbox, &apply, json!({"contact_ids": [contact_id, "999999"]})).await;
    assert_eq!(status, StatusCode::OK, "200 even when some ids fail");
    assert_eq!(
        results,
        json!({"results": {contact_id.as_str(): "SUCCESS", "999999": "CONTACT_NOT_FOUND"}})
    );
    let (_, again) = post(&sandbox, &apply, json!({"contact_ids": [contact_id]})).await;
    assert_eq!(again["results"][contact_id.as_str()], "DUPLICATE");
    assert_eq!(
        sandbox.contact_by_email("bo@example.com").unwrap().tag_ids,
        [tag_id.parse::<i64>().unwrap()]
    );
    let stats = sandbox.stats();
    assert_eq!((stats.tags_created, stats.tags_applied), (1, 1));
}

#[tokio::test]
async fn tag_errors() {
    let sandbox = sandbox().await;
    let (status, reply) = post(&sandbox, "/v2/tags", json!({"description": "no name"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_v2_error(&reply, 400);
    let (status, reply) = post(
        &sandbox,
        "/v2/tags/424242/contacts:applyTags",
        json!({"contact_ids": ["1"]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_v2_error(&reply, 404);
    let (_, tag) = post(&sandbox, "/v2/tags", json!({"name": "T"})).await;
    let apply = format!("/v2/tags/{}/contacts:applyTags", tag["id"].as_str().unwrap());
    for body in [
        json!({}),
        json!({"contact_ids": []}),
        json!({"contact_ids": [1001]}),
        json!({"contactIds": ["1001"]}),
    ] {
        let (status, reply) = post(&sandbox, &apply, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_v2_error(&reply, 400);
    }
    let (status, _) = get(&sandbox, "/v2/tags?filter=colour%3D%3Dred").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&sandbox, "/v2/tags/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn emails_send_needs_exactly_one_sender() {
    let sandbox = sandbox().await;
    let (_, contact) = post(&sandbox, "/v2/contacts", bo("bo@example.com")).await;
    let id = contact["id"].as_str().unwrap();
    let base = json!({"contacts": [id], "subject": "Welcome", "html_content": "PGgxPkhpPC9oMT4="});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, body) = post(&sandbox, "/v2/emails:send", with(json!({"user_id": "1"}))).await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, Value::Null));
    let (status, _) = post(
        &sandbox,
        "/v2/emails:send",
        with(json!({"from_address": "hello@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(sandbox.contact_by_email("bo@example.com").unwrap().emails_received, 2);

    let bad = [
        base.clone(),
        with(json!({"user_id": "1", "from_address": "hello@example.com"})),
        with(json!({"user_id": 1})),
        with(json!({"from_address": "not an address"})),
        with(json!({"user_id": "1", "contacts": []})),
        with(json!({"user_id": "1", "contacts": [1001]})),
        with(json!({"user_id": "1", "contacts": ["424242"]})),
        with(json!({"user_id": "1", "subject": ""})),
        with(json!({"user_id": "1", "html_content": "%%%"})),
    ];
    for body in bad {
        let (status, reply) = post(&sandbox, "/v2/emails:send", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_v2_error(&reply, 400);
    }
    assert_eq!(sandbox.stats().emails_queued, 2);
}
