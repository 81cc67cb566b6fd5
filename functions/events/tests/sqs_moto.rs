//! A failed delivery's backoff over a real SQS API (moto): [`SqsRetryLater`] hides the record
//! for the wait it is given (`ChangeMessageVisibility`).
//!
//! Needs `moto_server` (installed by `scripts/bootstrap.sh` into `.venv`).

use std::time::Duration;

use events::{RetryLater, SqsRetryLater};
use test_support::moto::{MotoServer, sqs_client};

#[tokio::test]
async fn a_record_waits_out_the_backoff_it_was_given() {
    let moto = MotoServer::start().await;
    let client = sqs_client(&moto.endpoint);
    let url = client
        .create_queue()
        .queue_name("keap-relay-events")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    client
        .send_message()
        .queue_url(&url)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    let receive = |visibility: i32| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let answer = client
                .receive_message()
                .queue_url(&url)
                .visibility_timeout(visibility)
                .send()
                .await
                .unwrap();
            answer.messages.unwrap_or_default()
        }
    };
    let first = receive(0).await;
    assert_eq!(first.len(), 1);
    let retry = SqsRetryLater {
        client: client.clone(),
        queue_url: url.clone(),
    };
    let handle = first[0].receipt_handle.clone().unwrap();
    retry.retry_after(&handle, Duration::from_secs(3600)).await.unwrap();
    assert!(receive(0).await.is_empty(), "hidden for its backoff");
    retry.retry_after(&handle, Duration::ZERO).await.unwrap();
    assert_eq!(receive(0).await.len(), 1, "visible again");
}
