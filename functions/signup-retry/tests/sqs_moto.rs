//! The queued path end to end over a real SQS API (moto): `SqsQueue` sends what `signup`
//! would queue, the message comes back as SQS delivers it, and `signup-retry` hands it to Keap.
//!
//! Needs `moto_server` (installed by `scripts/bootstrap.sh` into `.venv`; found through
//! `MOTO_SERVER`, `.venv/bin/moto_server` or `PATH`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::SqsEvent;
use keap_relay::SecretString;
use keap_relay::keap::api::KeapApi;
use keap_relay::signup::{QueuedSignup, Signup, SignupQueue, SignupService, SignupSettings, SqsQueue};
use keap_relay::token::ApiKeySource;
use keap_sandbox::{DEFAULT_API_KEY, Sandbox, SandboxConfig};
use serde_json::json;
use test_support::moto::{MotoServer, sqs_client};

#[tokio::test]
async fn a_signup_queued_in_sqs_is_delivered_by_signup_retry() {
    let moto = MotoServer::start().await;
    let client = sqs_client(&moto.endpoint);
    let queue_url = client
        .create_queue()
        .queue_name("keap-relay-signups")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();

    let signup = Signup::from_json(
        json!({ "email": "mary.jackson@example.com", "given_name": "Mary", "opt_in": true, "tags": ["Newsletter"] })
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let queued = QueuedSignup::new(signup, SystemTime::now());
    SqsQueue::new(client.clone(), queue_url.clone())
        .enqueue(&queued, Duration::ZERO)
        .await
        .unwrap();

    // Read it back as the SQS event source mapping would deliver it.
    let received = client
        .receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let messages = received.messages.unwrap_or_default();
    assert_eq!(messages.len(), 1);
    let records: Vec<_> = messages
        .iter()
        .map(|m| json!({ "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body, "eventSource": "aws:sqs" }))
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
    assert_eq!(
        QueuedSignup::from_message(event.records[0].body.as_deref().unwrap()).unwrap(),
        queued
    );

    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(5));
    let credentials = Arc::new(ApiKeySource::new(SecretString::from(DEFAULT_API_KEY)));
    let settings = SignupSettings {
        retry_budget: Duration::from_millis(300),
        options: Default::default(),
        ..SignupSettings::default()
    };
    let service = SignupService::new(api, credentials, settings);
    let response = signup_retry::handler::handle(event, &service).await.unwrap();

    assert!(response.batch_item_failures.is_empty());
    let contact = sandbox
        .contact_by_email("mary.jackson@example.com")
        .expect("delivered to Keap");
    assert_eq!(contact.given_name, "Mary");
    assert!(contact.opt_in_reason.is_some());
}
