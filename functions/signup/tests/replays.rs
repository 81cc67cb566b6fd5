//! Replays of a signed signup (docs/security.md, issue 14 item 3): the same signed request
//! again, while its signature is valid, gets the first answer and reaches neither Keap nor the
//! queue; answers that did nothing (503) are not kept, so the sender's retry goes through.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lambda_http::http::StatusCode;

/// The same signed request each time it is called (`lambda_http::Request` is not `Clone`),
/// signed at `SIGNED_AGO` seconds before now.
fn same_request() -> impl Fn() -> lambda_http::Request {
    let at = now() - SIGNED_AGO;
    move || signed_with(&event("signup-valid.json"), SIGNING_KEY, at)
}

const SIGNED_AGO: i64 = 10;

fn contact_writes(h: &Harness) -> usize {
    let stats = h.sandbox.stats();
    stats.calls_to("PUT", "/crm/rest/v1/contacts") + stats.calls_to("POST", "/crm/rest/v1/contacts")
}

#[tokio::test]
async fn a_replay_while_keap_is_connected_gets_the_first_answer_and_reaches_keap_once() {
    let h = Harness::start(Options::default()).await;
    let request = same_request();
    let first = h.send(request()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let writes = contact_writes(&h);

    for _ in 0..3 {
        let again = h.send(request()).await;
        assert_eq!(
            again.status,
            StatusCode::CREATED,
            "the original status, not 200 'updated'"
        );
        assert_eq!(again.json, first.json);
        assert_eq!(again.headers["idempotent-replayed"], "true");
    }
    assert_eq!(contact_writes(&h), writes, "no replay reached Keap");
    assert_eq!(h.sandbox.stats().emails_queued, 1);
}

#[tokio::test]
async fn replays_while_keap_is_down_queue_nothing_new() {
    let h = Harness::start(Options {
        queue: true,
        retry_budget: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    h.sandbox.faults().set_server_error_rate(1.0);
    let request = same_request();
    let first = h.send(request()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.json);

    for _ in 0..5 {
        let again = h.send(request()).await;
        assert_eq!((again.status, &again.json), (StatusCode::ACCEPTED, &first.json));
    }
    assert_eq!(h.queued().len(), 1, "one queued message, not one per replay");

    // a new signed request for the same person (another timestamp) is a new signup
    let later = h
        .send(signed_with(&event("signup-valid.json"), SIGNING_KEY, now()))
        .await;
    assert_eq!(later.status, StatusCode::ACCEPTED);
    assert_ne!(later.json["id"], first.json["id"]);
    assert_eq!(h.queued().len(), 2);
}

#[tokio::test]
async fn an_answer_that_did_nothing_is_not_kept_so_the_senders_retry_goes_through() {
    let h = Harness::start(Options {
        retry_budget: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    h.sandbox.faults().set_server_error_rate(1.0);
    let request = same_request();
    let first = h.send(request()).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE, "{}", first.json);

    h.sandbox.faults().set_server_error_rate(0.0);
    let retry = h.send(request()).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.json);
    assert!(retry.headers.get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn simultaneous_replays_reach_keap_once() {
    let h = Arc::new(Harness::start(Options::default()).await);
    h.sandbox.faults().set_latency(Duration::from_millis(200));
    let request = same_request();
    let mut arrivals = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let h = h.clone();
        let request = request();
        arrivals.spawn(async move { h.send(request).await });
    }
    let answers = arrivals.join_all().await;

    let processed = answers
        .iter()
        .filter(|a| a.headers.get("idempotent-replayed").is_none() && a.status != StatusCode::CONFLICT)
        .count();
    assert_eq!(processed, 1, "exactly one arrival is processed");
    for answer in &answers {
        match answer.status {
            StatusCode::CREATED => {}
            StatusCode::CONFLICT => {
                assert_eq!(answer.code(), "replay_in_progress");
                assert!(answer.headers.contains_key("retry-after"));
            }
            other => panic!("unexpected {other}: {}", answer.json),
        }
    }
    assert_eq!(h.sandbox.stats().contacts_created, 1);
    assert_eq!(contact_writes(&h), 1);
}
