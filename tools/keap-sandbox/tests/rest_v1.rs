//! REST v1: contacts, tags, the email queue.

mod common;

use common::*;
use keap_sandbox::Sandbox;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn put_contact(sandbox: &Sandbox, body: Value) -> (StatusCode, Value) {
    let response = rest(sandbox, Method::PUT, "/v1/contacts")
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), json_of(response).await)
}

fn ann(extra: Value) -> Value {
    let mut body = json!({
        "duplicate_option": "Email",
        "given_name": "Ann",
        "family_name": "Lee",
        "email_addresses": [{"email": "ann@example.com", "field": "EMAIL1"}],
        "source_type": "API",
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

#[tokio::test]
async fn upsert_creates_then_updates_only_given_fields() {
    let sandbox = sandbox().await;
    let (status, created) = put_contact(&sandbox, ann(json!({"job_title": "Chef"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_i64().expect("integer id");
    assert_eq!(created["given_name"], "Ann");
    assert_eq!(
        created["email_addresses"],
        json!([{"email": "ann@example.com", "field": "EMAIL1"}])
    );
    assert_eq!(created["job_title"], "Chef");

    let (status, updated) = put_contact(
        &sandbox,
        json!({"duplicate_option": "Email", "family_name": "Park",
               "email_addresses": [{"email": "ANN@example.com", "field": "EMAIL1"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["id"], id);
    assert_eq!(updated["given_name"], "Ann", "not given, so kept");
    assert_eq!(updated["family_name"], "Park");
    assert_eq!(updated["job_title"], "Chef");

    let view = sandbox.contact_by_email("ann@example.com").unwrap();
    assert_eq!(
        (view.id, view.given_name.as_str(), view.family_name.as_str()),
        (id, "Ann", "Park")
    );
    let stats = sandbox.stats();
    assert_eq!((stats.contacts_created, stats.contacts_updated), (1, 1));
}

#[tokio::test]
async fn email_and_name_matches_on_both() {
    let sandbox = sandbox().await;
    put_contact(&sandbox, ann(json!({}))).await;
    let (status, _) = put_contact(
        &sandbox,
        ann(json!({"duplicate_option": "EmailAndName", "given_name": "Annie"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "a different name is a different contact");
    let (status, _) = put_contact(&sandbox, ann(json!({"duplicate_option": "EmailAndName"}))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_second_email_slot_is_merged_not_replaced() {
    let sandbox = sandbox().await;
    put_contact(&sandbox, ann(json!({}))).await;
    let (_, body) = put_contact(
        &sandbox,
        json!({"duplicate_option": "Email", "email_addresses": [
            {"email": "ann@example.com", "field": "EMAIL1"},
            {"email": "ann@work.example.com", "field": "EMAIL2"}]}),
    )
    .await;
    assert_eq!(body["email_addresses"].as_array().unwrap().len(), 2);
    let (_, body) = put_contact(
        &sandbox,
        json!({"duplicate_option": "Email", "email_addresses": [{"email": "ann@example.com", "field": "EMAIL1"}]}),
    )
    .await;
    assert_eq!(body["email_addresses"].as_array().unwrap().len(), 2, "EMAIL2 kept");
}

#[tokio::test]
async fn opt_in_reason_makes_the_address_marketable_unless_unsubscribed() {
    let sandbox = sandbox().await;
    let (_, body) = put_contact(&sandbox, ann(json!({}))).await;
    assert_eq!(body["email_opted_in"], false);
    let (_, body) = put_contact(&sandbox, ann(json!({"opt_in_reason": "Signed up on the website"}))).await;
    assert_eq!(
        (body["email_opted_in"].clone(), body["email_status"].clone()),
        (json!(true), json!("SingleOptIn"))
    );
    assert_eq!(
        sandbox
            .contact_by_email("ann@example.com")
            .unwrap()
            .opt_in_reason
            .as_deref(),
        Some("Signed up on the website")
    );
    // A later update without a reason keeps the opt-in.
    let (_, body) = put_contact(&sandbox, ann(json!({}))).await;
    assert_eq!(body["email_opted_in"], true);

    assert!(sandbox.unsubscribe("ann@example.com"));
    let (_, body) = put_contact(&sandbox, ann(json!({"opt_in_reason": "again"}))).await;
    assert_eq!(body["email_opted_in"], false);
    let view = sandbox.contact_by_email("ann@example.com").unwrap();
    assert_eq!(
        (view.email_status.as_str(), view.opt_in_reason),
        ("ListUnsubscribe", None)
    );
}

#[tokio::test]
async fn phone_only_contacts_are_accepted() {
    let sandbox = sandbox().await;
    let (status, body) = put_contact(
        &sandbox,
        json!({"duplicate_option": "Email", "phone_numbers": [{"number": "555-0100", "field": "PHONE1"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["phone_numbers"][0]["number"], "555-0100");
}

#[tokio::test]
async fn bad_contact_bodies_get_400_with_a_message() {
    let sandbox = sandbox().await;
    let cases = [
        json!({"duplicate_option": "Email", "given_name": "No Address"}),
        json!({"duplicate_option": "Email", "email_addresses": []}),
        ann(json!({"email_addresses": [{"email": "not-an-email", "field": "EMAIL1"}]})),
        ann(json!({"email_addresses": [{"email": "ann@example.com", "field": "EMAIL4"}]})),
        ann(json!({"email_addresses": [{"email": "ann@example.com", "field": "HOME"}]})),
        ann(json!({"email_addresses": [{"email": "ann@example.com"}]})),
        ann(
            json!({"email_addresses": [{"email": "a@example.com", "field": "EMAIL1"}, {"email": "b@example.com", "field": "EMAIL1"}]}),
        ),
        ann(json!({"email_addresses": "ann@example.com"})),
        ann(json!({"duplicate_option": "Phone"})),
        ann(json!({"duplicate_option": null})),
        ann(json!({"given_name": 42})),
        ann(json!({"given_name": "x".repeat(41)})),
        ann(json!({"source_type": "CARRIER_PIGEON"})),
        ann(json!({"phone_numbers": [{"number": "555", "field": "PHONE9"}]})),
        json!(["not", "an", "object"]),
    ];
    for body in cases {
        let (status, reply) = put_contact(&sandbox, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
    }
    let not_json = rest(&sandbox, Method::PUT, "/v1/contacts")
        .header("Content-Type", "application/json")
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let wrong_type = rest(&sandbox, Method::PUT, "/v1/contacts")
        .header("Content-Type", "text/plain")
        .body(ann(json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(sandbox.stats().contacts_created, 0);
}

#[tokio::test]
async fn post_creates_a_duplicate_like_keap() {
    let sandbox = sandbox().await;
    let body = json!({"given_name": "Ann", "email_addresses": [{"email": "ann@example.com", "field": "EMAIL1"}]});
    let first = rest(&sandbox, Method::POST, "/v1/contacts")
        .json(&body)
        .send()
        .await
        .unwrap();
    let second = rest(&sandbox, Method::POST, "/v1/contacts")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    let (first, second) = (json_of(first).await, json_of(second).await);
    assert_ne!(first["id"], second["id"]);
    assert_eq!(
        sandbox.contact_by_email("ann@example.com").unwrap().id,
        first["id"].as_i64().unwrap()
    );
    let list = json_of(
        rest(&sandbox, Method::GET, "/v1/contacts?email=ann@example.com")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["count"], 2);
    let one = rest(&sandbox, Method::GET, &format!("/v1/contacts/{}", second["id"]))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(one).await["id"], second["id"]);
    let missing = rest(&sandbox, Method::GET, "/v1/contacts/999999").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tags_are_created_listed_and_applied() {
    let sandbox = sandbox().await;
    let (_, contact) = put_contact(&sandbox, ann(json!({}))).await;
    let contact_id = contact["id"].as_i64().unwrap();
    let created = rest(&sandbox, Method::POST, "/v1/tags")
        .json(&json!({"name": "Welcome"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let tag_id = json_of(created).await["id"].as_i64().expect("integer tag id");
    assert_eq!(sandbox.tag_by_name("Welcome"), Some(tag_id));

    let listed = json_of(
        rest(&sandbox, Method::GET, "/v1/tags?name=Welcome")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["tags"][0]["id"], tag_id);
    assert_eq!(listed["tags"][0]["name"], "Welcome");
    let none = json_of(rest(&sandbox, Method::GET, "/v1/tags?name=Nope").send().await.unwrap()).await;
    assert_eq!((none["count"].clone(), none["tags"].clone()), (json!(0), json!([])));

    let path = format!("/v1/contacts/{contact_id}/tags");
    let applied = rest(&sandbox, Method::POST, &path)
        .json(&json!({"tagIds": [tag_id, 999_999]}))
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), StatusCode::OK);
    assert_eq!(
        json_of(applied).await,
        json!({tag_id.to_string(): "SUCCESS", "999999": "TAG_ID_NOT_FOUND"})
    );
    let again = rest(&sandbox, Method::POST, &path)
        .json(&json!({"tagIds": [tag_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(again).await, json!({tag_id.to_string(): "DUPLICATE"}));
    assert_eq!(sandbox.contact_by_email("ann@example.com").unwrap().tag_ids, [tag_id]);
    let stats = sandbox.stats();
    assert_eq!((stats.tags_created, stats.tags_applied), (1, 1));
}

#[tokio::test]
async fn tag_errors() {
    let sandbox = sandbox().await;
    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": 7}),
        json!({"name": "x", "category": "c"}),
    ] {
        let response = rest(&sandbox, Method::POST, "/v1/tags")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(json_of(response).await["message"].is_string());
    }
    let unknown_contact = rest(&sandbox, Method::POST, "/v1/contacts/424242/tags")
        .json(&json!({"tagIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_contact.status(), StatusCode::NOT_FOUND);
    assert!(json_of(unknown_contact).await["message"].is_string());
    let (_, contact) = put_contact(&sandbox, ann(json!({}))).await;
    let path = format!("/v1/contacts/{}/tags", contact["id"]);
    for body in [
        json!({}),
        json!({"tagIds": []}),
        json!({"tagIds": ["101"]}),
        json!({"tag_ids": [101]}),
    ] {
        let response = rest(&sandbox, Method::POST, &path).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let bad_id = rest(&sandbox, Method::POST, "/v1/contacts/abc/tags")
        .json(&json!({"tagIds": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn queued_emails_are_counted_per_contact() {
    let sandbox = sandbox().await;
    let (_, contact) = put_contact(&sandbox, ann(json!({}))).await;
    let id = contact["id"].as_i64().unwrap();
    let response = rest(&sandbox, Method::POST, "/v1/emails/queue")
        .json(&json!({"contacts": [id], "subject": "Welcome!", "user_id": 1,
            "html_content": "PGgxPldlbGNvbWU8L2gxPg==", "plain_content": "V2VsY29tZQ=="}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(sandbox.contact_by_email("ann@example.com").unwrap().emails_received, 1);
    assert_eq!(sandbox.stats().emails_queued, 1);
}

#[tokio::test]
async fn email_queue_rejects_incomplete_requests() {
    let sandbox = sandbox().await;
    let (_, contact) = put_contact(&sandbox, ann(json!({}))).await;
    let id = contact["id"].as_i64().unwrap();
    let valid = json!({"contacts": [id], "subject": "Hi", "user_id": 1, "plain_content": "SGk="});
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let cases = [
        without("contacts"),
        without("subject"),
        without("user_id"),
        with("contacts", json!([])),
        with("contacts", json!(["1001"])),
        with("contacts", json!([424242])),
        with("user_id", json!("one")),
        with("subject", json!("  ")),
        with("plain_content", json!("not base64!")),
        with("html_content", json!(12)),
    ];
    for body in cases {
        let response = rest(&sandbox, Method::POST, "/v1/emails/queue")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(json_of(response).await["message"].is_string());
    }
    assert_eq!(sandbox.stats().emails_queued, 0);
    assert_eq!(sandbox.contact_by_email("ann@example.com").unwrap().emails_received, 0);
}
