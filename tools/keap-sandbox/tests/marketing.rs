//! Custom fields, lead sources, goals, templates and the sent-email listing: Keap's checks and
//! the faults that make a send uncertain.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

async fn upsert(sandbox: &keap_sandbox::Sandbox, extra: serde_json::Value) -> reqwest::Response {
    let mut body = json!({
        "duplicate_option": "Email",
        "email_addresses": [{"email": "fay@example.com", "field": "EMAIL1"}],
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    rest(sandbox, Method::PUT, "/v1/contacts")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn custom_field_values_lead_sources_and_origin_are_checked_as_keap_does() {
    let sandbox = sandbox().await;
    let plan = sandbox.add_custom_field("Plan", "Dropdown", &["free", "pro"]);
    let seats = sandbox.add_custom_field("Seats", "WholeNumber", &[]);
    let source = sandbox.add_lead_source("Webinar");
    for (extra, expect) in [
        (
            json!({"custom_fields": [{"id": plan.id, "content": "gold"}]}),
            "custom field 'Plan'",
        ),
        (
            json!({"custom_fields": [{"id": seats.id, "content": "many"}]}),
            "custom field 'Seats'",
        ),
        (
            json!({"custom_fields": [{"id": 9999, "content": "x"}]}),
            "Custom field with id 9999 not found",
        ),
        (
            json!({"lead_source_id": "twelve"}),
            "lead_source_id must be a lead source id",
        ),
        (json!({"origin": {"ip_address": "not-an-ip"}}), "origin.ip_address"),
    ] {
        let response = upsert(&sandbox, extra.clone()).await;
        assert_eq!(response.status().as_u16(), 400, "{extra}");
        let message = json_of(response).await["message"].as_str().unwrap().to_owned();
        assert!(message.contains(expect), "{extra}: {message}");
    }
    assert!(
        sandbox.contact_by_email("fay@example.com").is_none(),
        "nothing refused was stored"
    );

    let ok = json!({"custom_fields": [{"id": plan.id, "content": "pro"}, {"id": seats.id, "content": 3}],
                    "lead_source_id": source.id, "origin": {"ip_address": "2001:db8::1"}});
    assert_eq!(upsert(&sandbox, ok).await.status().as_u16(), 201);
    // A later upsert writes one field and keeps the other.
    let again = json!({"custom_fields": [{"id": seats.id, "content": 4}]});
    assert_eq!(upsert(&sandbox, again).await.status().as_u16(), 200);
    let contact = sandbox.contact_by_email("fay@example.com").unwrap();
    assert_eq!(
        contact.extra["custom_fields"],
        json!([{"id": plan.id, "content": "pro"}, {"id": seats.id, "content": 4}])
    );
    assert_eq!(contact.extra["lead_source_id"], source.id);
    assert_eq!(contact.extra["origin"]["ip_address"], "2001:db8::1");

    // A field deleted in Keap: its id is unknown from then on.
    assert!(sandbox.remove_custom_field("Plan"));
    let stale = json!({"custom_fields": [{"id": plan.id, "content": "pro"}]});
    assert_eq!(upsert(&sandbox, stale).await.status().as_u16(), 400);
}

#[tokio::test]
async fn sent_emails_are_listed_after_the_listing_delay_and_an_unsure_5xx_may_have_sent() {
    let sandbox = sandbox().await;
    assert_eq!(upsert(&sandbox, json!({})).await.status().as_u16(), 201);
    let id = sandbox.contact_by_email("fay@example.com").unwrap().id;
    let list = || async {
        let path = format!("/v1/emails?contact_id={id}&since_sent_date=2020-01-01T00:00:00Z");
        json_of(rest(&sandbox, Method::GET, &path).send().await.unwrap()).await
    };
    sandbox.faults().set_sent_listing_delay(Duration::from_millis(300));
    let send = json!({"contacts": [id], "subject": "Welcome aboard", "user_id": 1, "html_content": "SGk="});
    let response = rest(&sandbox, Method::POST, "/v1/emails/queue")
        .json(&send)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(list().await["count"], 0, "not listed before the delay");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let listed = list().await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["emails"][0]["subject"], "Welcome aboard");
    assert_eq!(listed["emails"][0]["sent_to_address"], "fay@example.com");
    let later = format!("/v1/emails?contact_id={id}&since_sent_date=2999-01-01T00:00:00Z");
    let none = json_of(rest(&sandbox, Method::GET, &later).send().await.unwrap()).await;
    assert_eq!(none["count"], 0, "since_sent_date filters");

    // Every call fails; every failed send went out nonetheless.
    sandbox.faults().set_sent_listing_delay(Duration::ZERO);
    sandbox.faults().set_server_error_rate(1.0);
    sandbox.faults().set_sent_despite_5xx_rate(1.0);
    let response = rest(&sandbox, Method::POST, "/v1/emails/queue")
        .json(&send)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error());
    // And none of them did.
    sandbox.faults().set_sent_despite_5xx_rate(0.0);
    let response = rest(&sandbox, Method::POST, "/v1/emails/queue")
        .json(&send)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error());
    sandbox.faults().clear();
    assert_eq!(sandbox.contact_by_email("fay@example.com").unwrap().emails_received, 2);
    assert_eq!(sandbox.stats().sent_despite_5xx, 1);
}

#[tokio::test]
async fn goals_start_every_listening_campaign_each_time() {
    let sandbox = sandbox().await;
    assert_eq!(upsert(&sandbox, json!({})).await.status().as_u16(), 201);
    let id = sandbox.contact_by_email("fay@example.com").unwrap().id;
    sandbox.add_campaign("relay", "signup", Some("Welcome (campaign A)"));
    sandbox.add_campaign("Relay", "SIGNUP", None);
    let achieve = || async {
        let response = rest(&sandbox, Method::POST, "/v1/campaigns/goals/relay/signup")
            .json(&json!({"contact_id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        json_of(response).await
    };
    assert_eq!(achieve().await.as_array().unwrap().len(), 2);
    achieve().await;
    let contact = sandbox.contact_by_email("fay@example.com").unwrap();
    assert_eq!(contact.goals_achieved, 4, "two campaigns, twice: Keap restarts them");
    assert_eq!(contact.emails_received, 2);
    let unknown = rest(&sandbox, Method::POST, "/v1/campaigns/goals/relay/signup")
        .json(&json!({"contact_id": 999_999}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(unknown).await[0]["success"], false);
    assert_eq!(sandbox.stats().campaigns_started, 4);
}
