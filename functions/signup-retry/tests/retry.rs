//! `signup-retry` against an in-process Keap sandbox, fed `events/sqs-signup-batch.json`
//! (a valid signup, a truncated message, another valid signup) and variations of it.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use keap_relay::SecretString;
use keap_relay::config::WelcomeEmail;
use keap_relay::keap::api::KeapApi;
use keap_relay::signup::{MemoryQueue, QueuedSignup};
use keap_relay::signup::{SignupService, SignupSettings, TagRef};
use keap_relay::token::ApiKeySource;
use keap_sandbox::{DEFAULT_API_KEY, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use signup_retry::handler::{PARK_LIMIT, RetryError, handle, handle_with_parking};

const FIRST: &str = "0a5c2d8e-1f3b-4c6d-9e7f-000000000001";
const POISON: &str = "0a5c2d8e-1f3b-4c6d-9e7f-000000000002";
const THIRD: &str = "0a5c2d8e-1f3b-4c6d-9e7f-000000000003";

fn batch() -> Value {
    test_support::events::json("sqs-signup-batch.json")
}

fn sqs_event(batch: &Value) -> SqsEvent {
    serde_json::from_value(batch.clone()).expect("a valid SQS event")
}

async fn setup(api_key: &str) -> (Sandbox, SignupService) {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(5));
    let settings = SignupSettings {
        welcome_tag: Some(TagRef::parse("Welcome")),
        welcome_email: Some(WelcomeEmail {
            user_id: 1,
            subject: "Welcome!".into(),
            html_body: "<p>Hi</p>".into(),
        }),
        retry_budget: Duration::from_millis(300),
        options: Default::default(),
    };
    let service = SignupService::new(
        api,
        Arc::new(ApiKeySource::new(SecretString::from(api_key.to_owned()))),
        settings,
    );
    (sandbox, service)
}

fn failed_ids(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<&str> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect()
}

#[tokio::test]
async fn only_the_poison_message_is_reported_failed() {
    let (sandbox, service) = setup(DEFAULT_API_KEY).await;
    let response = handle(sqs_event(&batch()), &service).await.unwrap();

    assert_eq!(failed_ids(&response), [POISON]);
    let grace = sandbox
        .contact_by_email("grace.hopper@example.com")
        .expect("first signup delivered");
    assert_eq!(grace.given_name, "Grace");
    assert_eq!(grace.emails_received, 1);
    assert!(
        sandbox.contact_by_email("katherine.johnson@example.com").is_some(),
        "third signup delivered"
    );
}

#[tokio::test]
async fn a_redelivered_batch_creates_nothing_twice_and_sends_no_second_email() {
    let (sandbox, service) = setup(DEFAULT_API_KEY).await;
    handle(sqs_event(&batch()), &service).await.unwrap();
    let response = handle(sqs_event(&batch()), &service).await.unwrap();

    assert_eq!(failed_ids(&response), [POISON]);
    let stats = sandbox.stats();
    assert_eq!(
        (stats.contacts_created, stats.contacts_updated, stats.emails_queued),
        (2, 2, 2)
    );
}

#[tokio::test]
async fn keap_down_fails_the_whole_batch_after_one_record() {
    let (sandbox, service) = setup(DEFAULT_API_KEY).await;
    sandbox.faults().set_server_error_rate(1.0);
    let response = handle(sqs_event(&batch()), &service).await.unwrap();

    assert_eq!(failed_ids(&response), [FIRST, POISON, THIRD]);
    let upserts = sandbox.stats().calls_to("PUT", "/crm/rest/v1/contacts");
    assert!(upserts >= 1, "the first record was tried");
    sandbox.faults().set_server_error_rate(0.0);

    // Redelivered once Keap is back: everything but the poison message goes through.
    let response = handle(sqs_event(&batch()), &service).await.unwrap();
    assert_eq!(failed_ids(&response), [POISON]);
}

#[tokio::test]
async fn keap_down_sends_the_batch_back_with_a_delay_growing_with_age_instead_of_using_receive_counts() {
    let (sandbox, service) = setup(DEFAULT_API_KEY).await;
    sandbox.faults().set_server_error_rate(1.0);
    let parking = MemoryQueue::new();
    let response = handle_with_parking(
        sqs_event(&batch_first_seen(Duration::from_secs(600))),
        &service,
        Some(&parking),
    )
    .await
    .unwrap();

    // Both signups go back to the queue and are acknowledged; only the poison one still fails.
    assert_eq!(failed_ids(&response), [POISON]);
    let queued = parking.delayed();
    let emails: Vec<String> = queued
        .iter()
        .map(|(body, _)| QueuedSignup::from_message(body).unwrap().signup.email)
        .collect();
    assert_eq!(emails, ["grace.hopper@example.com", "katherine.johnson@example.com"]);
    // Ten minutes old: back in five.
    for (_, delay) in &queued {
        assert!((299..=301).contains(&delay.as_secs()), "{delay:?}");
    }
    let upserts = sandbox.stats().calls_to("PUT", "/crm/rest/v1/contacts");
    assert!(upserts >= 1, "the first record was tried");

    // A fresh signup waits a second; one failing for over a day is left to SQS's redelivery.
    let fresh = MemoryQueue::new();
    handle_with_parking(
        sqs_event(&batch_first_seen(Duration::from_secs(1))),
        &service,
        Some(&fresh),
    )
    .await
    .unwrap();
    assert!(
        fresh.delayed().iter().all(|(_, delay)| delay.as_secs() <= 2),
        "{:?}",
        fresh.delayed()
    );
    let stale = MemoryQueue::new();
    let response = handle_with_parking(
        sqs_event(&batch_first_seen(Duration::from_secs(25 * 3600))),
        &service,
        Some(&stale),
    )
    .await
    .unwrap();
    assert_eq!(failed_ids(&response), [FIRST, POISON, THIRD]);
    assert!(stale.messages().is_empty());
}

#[tokio::test]
async fn throttling_beyond_the_budget_fails_the_record_for_redelivery() {
    let (sandbox, service) = setup(DEFAULT_API_KEY).await;
    sandbox.faults().throttle_next(1, Some(60));
    let response = handle(sqs_event(&batch()), &service).await.unwrap();
    assert_eq!(failed_ids(&response), [FIRST, POISON, THIRD]);
    assert_eq!(
        sandbox.stats().throttled,
        1,
        "the rest of the batch was not sent into the throttle"
    );
}

#[tokio::test]
async fn a_signup_keap_refuses_is_failed_toward_the_dead_letter_queue_and_the_rest_delivered() {
    let (sandbox, service) = setup(DEFAULT_API_KEY).await;
    let mut batch = batch();
    // Valid for the relay (117 characters), too long for Keap's email field.
    let email = format!("{}@{}.example.com", "l".repeat(64), "b".repeat(40));
    let body = json!({ "id": "6f1c1e52-3b0a-4f1e-9d3c-2a7b8c9d0e12", "email": email });
    batch["Records"][1]["body"] = body.to_string().into();
    let response = handle(sqs_event(&batch), &service).await.unwrap();

    assert_eq!(failed_ids(&response), [POISON]);
    assert!(sandbox.contact_by_email(&email).is_none());
    assert!(
        sandbox.stats().calls.iter().any(|c| c.status == 400),
        "Keap itself refused it"
    );
    assert!(sandbox.contact_by_email("katherine.johnson@example.com").is_some());
}

#[tokio::test]
async fn a_refused_api_key_fails_every_record() {
    let (sandbox, service) = setup("KeapAK-revoked").await;
    let response = handle(sqs_event(&batch()), &service).await.unwrap();
    assert_eq!(failed_ids(&response), [FIRST, POISON, THIRD]);
    assert_eq!(sandbox.stats().contacts_created, 0);
}

/// The batch with every record's `first_seen_at` set to `age` ago.
fn batch_first_seen(age: Duration) -> Value {
    let mut batch = batch();
    let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now() - age).to_string();
    for record in batch["Records"].as_array_mut().unwrap() {
        let Ok(mut body) = serde_json::from_str::<Value>(record["body"].as_str().unwrap()) else {
            continue;
        };
        body["first_seen_at"] = json!(at);
        record["body"] = json!(body.to_string());
    }
    batch
}

#[tokio::test]
async fn signups_waiting_for_a_reconnection_are_parked_instead_of_dead_lettered() {
    let (sandbox, service) = setup("KeapAK-revoked").await;
    let parking = MemoryQueue::new();
    let response = handle_with_parking(
        sqs_event(&batch_first_seen(Duration::from_secs(60))),
        &service,
        Some(&parking),
    )
    .await
    .unwrap();

    // Both valid signups went back to the queue and are acknowledged; the poison one still fails.
    assert_eq!(failed_ids(&response), [POISON]);
    let parked: Vec<QueuedSignup> = parking
        .messages()
        .iter()
        .map(|m| QueuedSignup::from_message(m).unwrap())
        .collect();
    let emails: Vec<&str> = parked.iter().map(|q| q.signup.email.as_str()).collect();
    assert_eq!(emails, ["grace.hopper@example.com", "katherine.johnson@example.com"]);
    // A parked signup keeps its id, so its logs can be followed across parkings.
    assert_eq!(parked[0].id.to_string(), "6f1c1e52-3b0a-4f1e-9d3c-2a7b8c9d0e11");
    // Keap was asked about the first record only; the rest were parked without calling it.
    let upserts = sandbox
        .stats()
        .calls
        .iter()
        .filter(|c| c.path == "/crm/rest/v1/contacts")
        .count();
    assert!(
        (1..=2).contains(&upserts),
        "one upsert and at most its retry after the 401, got {upserts}"
    );
}

#[tokio::test]
async fn a_signup_that_waited_past_the_park_limit_is_left_to_the_dead_letter_queue() {
    let (_sandbox, service) = setup("KeapAK-revoked").await;
    let parking = MemoryQueue::new();
    let too_old = PARK_LIMIT + Duration::from_secs(3600);
    let response = handle_with_parking(sqs_event(&batch_first_seen(too_old)), &service, Some(&parking))
        .await
        .unwrap();
    assert_eq!(failed_ids(&response), [FIRST, POISON, THIRD]);
    assert!(parking.messages().is_empty());
}

#[tokio::test]
async fn a_record_without_message_id_fails_the_whole_invocation() {
    let (_sandbox, service) = setup(DEFAULT_API_KEY).await;
    let mut batch = batch();
    batch["Records"][0].as_object_mut().unwrap().remove("messageId");
    let result = handle(sqs_event(&batch), &service).await;
    assert!(matches!(result, Err(RetryError::MissingMessageId)));
}

#[tokio::test]
async fn the_product_hears_of_each_delivered_signup_and_of_the_poison_once() {
    let (_sandbox, service) = setup(DEFAULT_API_KEY).await;
    let sink = keap_relay::events::MemorySink::new();
    let mut first_receive = batch();
    for record in first_receive["Records"].as_array_mut().unwrap() {
        record["attributes"]["ApproximateReceiveCount"] = json!("1");
    }
    signup_retry::handler::handle_with_events(sqs_event(&first_receive), &service, None, Some(&sink))
        .await
        .unwrap();
    let events = sink.take();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["signup.delivered", "signup.failed", "signup.delivered"]);
    assert_eq!(events[0].data["email"], "grace.hopper@example.com");
    assert!(events[0].data["signup_id"].is_string(), "{:?}", events[0].data);
    assert_eq!(events[0].data["created"], true);
    assert_eq!(events[1].data["code"], "invalid_message");

    // A redelivery of the poison message tells nothing new.
    let mut again = first_receive.clone();
    for record in again["Records"].as_array_mut().unwrap() {
        record["attributes"]["ApproximateReceiveCount"] = json!("2");
    }
    signup_retry::handler::handle_with_events(sqs_event(&again), &service, None, Some(&sink))
        .await
        .unwrap();
    assert!(sink.events().iter().all(|e| e.kind.as_str() == "signup.delivered"));
}
