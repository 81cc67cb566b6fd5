//! The `events` function against a local receiver: delivery and signature, retries with
//! backoff, 410 switching the receiver off until it is switched on, and no order assumed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use events::{Deps, RetryLater, SigningKey};
use keap_relay::SecretString;
use keap_relay::events::webhook::{MAX_BACKOFF, Webhook, backoff};
use keap_relay::events::{Event, receiver};
use keap_relay::signup::signature;
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use serde_json::json;

const KEY: &str = "events-signing-key-for-tests";

/// A receiver that checks each signature and answers the statuses it is told, in turn (then 200).
#[derive(Default)]
struct Receiver {
    answers: Mutex<Vec<u16>>,
    /// Event ids received with a valid signature, in arrival order (repeats included).
    received: Mutex<Vec<String>>,
    bad_signatures: Mutex<usize>,
    calls: Mutex<usize>,
}

async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    *receiver.calls.lock().unwrap() += 1;
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    if signature::verify(&SecretString::from(KEY), header, &body, SystemTime::now()).is_err() {
        *receiver.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(headers["x-event-id"], event["id"].as_str().unwrap());
    assert_eq!(headers["x-event-type"], event["type"].as_str().unwrap());
    assert_eq!(headers["content-type"], "application/json");
    let answer = {
        let mut answers = receiver.answers.lock().unwrap();
        if answers.is_empty() { 200 } else { answers.remove(0) }
    };
    if answer < 300 {
        receiver
            .received
            .lock()
            .unwrap()
            .push(event["id"].as_str().unwrap().to_owned());
    }
    StatusCode::from_u16(answer).unwrap()
}

async fn start_receiver(receiver: Arc<Receiver>) -> String {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

struct Key(Option<&'static str>);

#[async_trait]
impl SigningKey for Key {
    async fn events_signing_key(&self) -> Result<SecretString, String> {
        self.0
            .map(SecretString::from)
            .ok_or_else(|| "no events_signing_key".into())
    }
}

/// Records the backoff set for each receipt handle.
#[derive(Default)]
struct Waits(Mutex<HashMap<String, Duration>>);

#[async_trait]
impl RetryLater for Waits {
    async fn retry_after(&self, receipt_handle: &str, wait: Duration) -> Result<(), String> {
        self.0.lock().unwrap().insert(receipt_handle.to_owned(), wait);
        Ok(())
    }
}

struct Setup {
    receiver: Arc<Receiver>,
    deps: Deps,
    waits: Arc<Waits>,
    store: Arc<MemoryStore>,
}

async fn setup(answers: &[u16]) -> Setup {
    let receiver = Arc::new(Receiver::default());
    *receiver.answers.lock().unwrap() = answers.to_vec();
    let url = start_receiver(receiver.clone()).await;
    let waits = Arc::new(Waits::default());
    let store = Arc::new(MemoryStore::new());
    let deps = Deps {
        webhook: Some(Webhook::new(&url).unwrap()),
        key: Arc::new(Key(Some(KEY))),
        state: Some((store.clone() as Arc<dyn SecretStore>, "events-state".into())),
        retry: Some(waits.clone()),
    };
    Setup {
        receiver,
        deps,
        waits,
        store,
    }
}

/// An SQS batch of these events, each at its receive count.
fn batch(events: &[(&Event, u32)]) -> SqsEvent {
    let records: Vec<_> = events
        .iter()
        .map(|(event, receives)| {
            json!({
                "messageId": format!("m-{}", event.id),
                "receiptHandle": format!("r-{}-{receives}", event.id),
                "body": event.to_json(),
                "attributes": { "ApproximateReceiveCount": receives.to_string() },
                "messageAttributes": {},
                "eventSource": "aws:sqs",
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

fn failed(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

fn sample_events() -> Vec<Event> {
    vec![
        Event::signup_queued("a@example.com", uuid_of(1), "keap_unavailable"),
        Event::connection_recovered("acct-1"),
        Event::signup_failed(
            Some("b@example.com"),
            Some(uuid_of(2)),
            "keap_rejected",
            "Keap refused the contact (400)",
        ),
        Event::welcome_sent(42, Some("a@example.com"), "template"),
    ]
}

fn uuid_of(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

#[tokio::test]
async fn every_event_is_delivered_signed_and_acknowledged() {
    let setup = setup(&[]).await;
    let events = sample_events();
    let records: Vec<_> = events.iter().map(|e| (e, 1)).collect();
    let response = events::handle(batch(&records), &setup.deps).await.unwrap();
    assert!(failed(&response).is_empty(), "{response:?}");
    let received = setup.receiver.received.lock().unwrap().clone();
    let expected: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(received, expected);
    assert_eq!(*setup.receiver.bad_signatures.lock().unwrap(), 0);
    assert!(setup.waits.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_again_after_a_growing_backoff() {
    // 503, 500, 503, then 200: every record of a batch is tried, each failure backs off.
    let setup = setup(&[503, 500, 503]).await;
    let events = sample_events();
    let (first, second) = (&events[0], &events[1]);
    let response = events::handle(batch(&[(first, 1), (second, 1)]), &setup.deps)
        .await
        .unwrap();
    assert_eq!(failed(&response).len(), 2);
    assert_eq!(
        *setup.receiver.calls.lock().unwrap(),
        2,
        "one failure does not hold the rest back"
    );
    let waits = setup.waits.0.lock().unwrap().clone();
    assert_eq!(waits[&format!("r-{}-1", first.id)], backoff(1));
    assert_eq!(waits[&format!("r-{}-1", second.id)], backoff(1));

    let response = events::handle(batch(&[(first, 2)]), &setup.deps).await.unwrap();
    assert_eq!(failed(&response), [format!("m-{}", first.id)]);
    assert_eq!(setup.waits.0.lock().unwrap()[&format!("r-{}-2", first.id)], backoff(2));
    assert!(backoff(2) > backoff(1));

    // SQS hands both back later, in another order: both are delivered.
    let response = events::handle(batch(&[(second, 2), (first, 3)]), &setup.deps)
        .await
        .unwrap();
    assert!(failed(&response).is_empty());
    let received = setup.receiver.received.lock().unwrap().clone();
    assert_eq!(received, [second.id.to_string(), first.id.to_string()]);
}

#[tokio::test]
async fn a_410_switches_the_receiver_off_until_the_operator_switches_it_on() {
    let setup = setup(&[410]).await;
    let events = sample_events();
    let response = events::handle(batch(&[(&events[0], 1), (&events[1], 1)]), &setup.deps)
        .await
        .unwrap();
    assert_eq!(failed(&response).len(), 2);
    assert_eq!(*setup.receiver.calls.lock().unwrap(), 1);
    let state = receiver::load(setup.store.as_ref(), "events-state").await.unwrap();
    assert!(state.disabled, "{state:?}");
    for event in &events[..2] {
        assert_eq!(setup.waits.0.lock().unwrap()[&format!("r-{}-1", event.id)], MAX_BACKOFF);
    }

    // Later batches do not call it at all.
    let response = events::handle(batch(&[(&events[0], 2), (&events[2], 1)]), &setup.deps)
        .await
        .unwrap();
    assert_eq!(failed(&response).len(), 2);
    assert_eq!(
        *setup.receiver.calls.lock().unwrap(),
        1,
        "not called while switched off"
    );

    receiver::enable(setup.store.as_ref(), "events-state", "admin", SystemTime::now())
        .await
        .unwrap();
    let response = events::handle(batch(&[(&events[0], 3), (&events[2], 2)]), &setup.deps)
        .await
        .unwrap();
    assert!(failed(&response).is_empty());
    assert_eq!(setup.receiver.received.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn repeats_carry_the_same_id_and_order_is_not_assumed() {
    let setup = setup(&[]).await;
    let events = sample_events();
    // Redelivered (SQS at least once) and out of order.
    let records = [
        (&events[3], 1),
        (&events[0], 1),
        (&events[3], 2),
        (&events[1], 1),
        (&events[0], 2),
    ];
    let response = events::handle(batch(&records), &setup.deps).await.unwrap();
    assert!(failed(&response).is_empty());
    let received = setup.receiver.received.lock().unwrap().clone();
    assert_eq!(received.len(), 5, "at least once: every copy is sent");
    let unique: HashSet<&String> = received.iter().collect();
    let expected: HashSet<String> = events[..2]
        .iter()
        .chain([&events[3]])
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(
        unique,
        expected.iter().collect(),
        "a receiver dropping repeats by id sees each once"
    );
}

#[tokio::test]
async fn without_a_signing_key_or_with_a_bad_body_nothing_is_sent_and_nothing_lost() {
    let mut setup = setup(&[]).await;
    setup.deps.key = Arc::new(Key(None));
    let events = sample_events();
    let response = events::handle(batch(&[(&events[0], 1)]), &setup.deps).await.unwrap();
    assert_eq!(failed(&response).len(), 1);
    assert_eq!(*setup.receiver.calls.lock().unwrap(), 0);

    let poison: SqsEvent = serde_json::from_value(json!({ "Records": [{
        "messageId": "poison", "receiptHandle": "r", "body": "{\"not\":\"an event\"}", "attributes": {}, "messageAttributes": {}
    }]}))
    .unwrap();
    let response = events::handle(poison, &setup.deps).await.unwrap();
    assert_eq!(failed(&response), ["poison"]);
}

/// SQS's part, in memory: a failed record comes back (its receive count up) until it is
/// delivered or has used its receives (then it is a dead letter).
#[tokio::test]
async fn with_a_flaky_receiver_every_emitted_event_is_delivered() {
    const EVENTS: usize = 120;
    const MAX_RECEIVES: u32 = 8;
    // Every third answer fails (500, 503 with Retry-After, 429) until the receiver recovers.
    let answers: Vec<u16> = (0..EVENTS * 2)
        .map(|n| match n % 6 {
            1 => 500,
            3 => 503,
            5 => 429,
            _ => 200,
        })
        .collect();
    let setup = setup(&answers).await;
    let sink = keap_relay::events::MemorySink::new();
    for n in 0..EVENTS {
        let event = match n % 3 {
            0 => Event::signup_queued(&format!("p{n}@example.com"), uuid_of(n as u128), "keap_unavailable"),
            1 => Event::connection_recovered(&format!("acct-{n}")),
            _ => Event::welcome_sent(n as i64, None, "template"),
        };
        keap_relay::events::emit(Some(&sink), event).await;
    }
    let emitted = sink.take();
    let mut queue: Vec<(Event, u32)> = emitted.iter().map(|e| (e.clone(), 0)).collect();
    let mut dead = 0;
    let mut batches = 0;
    while !queue.is_empty() {
        batches += 1;
        assert!(batches < 1000, "the queue never drained");
        let take = queue.len().min(10);
        let mut batch_records: Vec<(Event, u32)> = queue.drain(..take).collect();
        for record in &mut batch_records {
            record.1 += 1;
        }
        let records: Vec<(&Event, u32)> = batch_records.iter().map(|(e, n)| (e, *n)).collect();
        let response = events::handle(batch(&records), &setup.deps).await.unwrap();
        let failed = failed(&response);
        for (event, receives) in batch_records {
            if failed.contains(&format!("m-{}", event.id)) {
                if receives >= MAX_RECEIVES {
                    dead += 1;
                } else {
                    queue.push((event, receives));
                }
            }
        }
    }
    let received: HashSet<String> = setup.receiver.received.lock().unwrap().iter().cloned().collect();
    let expected: HashSet<String> = emitted.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(dead, 0);
    assert_eq!(received, expected, "events delivered = events emitted");
    assert_eq!(*setup.receiver.bad_signatures.lock().unwrap(), 0);
    println!(
        "{} events emitted, {} delivered, {} receiver calls, {batches} batches",
        expected.len(),
        received.len(),
        setup.receiver.calls.lock().unwrap()
    );
}

/// `events/sqs-event-batch.json` (what `cargo lambda invoke events` takes): two events, one at
/// its third receive, and a body that is no event.
#[tokio::test]
async fn the_sample_batch_is_delivered_but_its_poison_record() {
    let setup = setup(&[]).await;
    let sample: SqsEvent = test_support::events::parse("sqs-event-batch.json");
    let response = events::handle(sample, &setup.deps).await.unwrap();
    assert_eq!(failed(&response), ["7b1e2c3d-4e5f-4a6b-8c7d-000000000003"]);
    let received = setup.receiver.received.lock().unwrap().clone();
    assert_eq!(
        received,
        [
            "3d6f0b7a-9c1e-4b8f-8a2d-5e4f3c2b1a01",
            "3d6f0b7a-9c1e-4b8f-8a2d-5e4f3c2b1a02"
        ]
    );
}
