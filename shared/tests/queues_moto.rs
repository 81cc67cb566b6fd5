//! The console's view of SQS ([`SqsInspector`]) and the event queue ([`SqsSink`]) over a real
//! SQS API (moto): counts, a look at the dead letters, redrive and discard of one message.
//!
//! Needs `moto_server` (installed by `scripts/bootstrap.sh` into `.venv`; found through
//! `MOTO_SERVER`, `.venv/bin/moto_server` or `PATH`).

use keap_relay::events::{Event, EventSink, SqsSink};
use keap_relay::queues::{QueueInspector, SqsInspector};
use test_support::moto::{MotoServer, sqs_client};

async fn queue(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

#[tokio::test]
async fn the_console_counts_looks_redrives_and_discards_over_sqs() {
    let moto = MotoServer::start().await;
    let client = sqs_client(&moto.endpoint);
    let main = queue(&client, "keap-relay-signups").await;
    let dead = queue(&client, "keap-relay-signups-dlq").await;
    for email in ["a@example.com", "b@example.com"] {
        client
            .send_message()
            .queue_url(&dead)
            .message_body(format!("{{\"email\":\"{email}\"}}"))
            .send()
            .await
            .unwrap();
    }
    client
        .send_message()
        .queue_url(&main)
        .message_body("{}")
        .delay_seconds(600)
        .send()
        .await
        .unwrap();
    let inspector = SqsInspector::new(client.clone(), &main, &dead);

    let counts = inspector.counts().await.unwrap();
    assert_eq!(
        (counts.waiting, counts.delayed, counts.dead_letters),
        (0, 1, 2),
        "{counts:?}"
    );
    let letters = inspector.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l.sent_at.is_some()));
    // A look takes nothing: both are still there, visible.
    assert_eq!(inspector.counts().await.unwrap().dead_letters, 2);

    let redriven = letters.iter().find(|l| l.body.contains("a@example.com")).unwrap();
    assert!(inspector.redrive(&redriven.id).await.unwrap());
    assert!(
        !inspector.redrive(&redriven.id).await.unwrap(),
        "gone from the dead letters"
    );
    let counts = inspector.counts().await.unwrap();
    assert_eq!((counts.waiting, counts.dead_letters), (1, 1), "{counts:?}");
    let back = client
        .receive_message()
        .queue_url(&main)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap();
    assert_eq!(back[0].body.as_deref(), Some("{\"email\":\"a@example.com\"}"));

    let other = inspector.dead_letters(10).await.unwrap();
    assert!(inspector.discard(&other[0].id).await.unwrap());
    assert_eq!(inspector.counts().await.unwrap().dead_letters, 0);
}

#[tokio::test]
async fn an_event_published_to_sqs_reads_back() {
    let moto = MotoServer::start().await;
    let client = sqs_client(&moto.endpoint);
    let events = queue(&client, "keap-relay-events").await;
    let event = Event::connection_recovered("ab123.infusionsoft.com");
    SqsSink::new(client.clone(), &events).publish(&event).await.unwrap();
    let received = client
        .receive_message()
        .queue_url(&events)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap();
    let back = Event::from_json(received[0].body.as_deref().unwrap()).unwrap();
    assert_eq!((back.id, back.kind), (event.id, event.kind));
}
