//! The local stand-in for the event queue (`EVENTS_QUEUE_URL`), on when `EVENTS_WEBHOOK_URL` is
//! set: the functions publish into it, and a timer hands visible events to the `events`
//! function ([`events::handle`], as on Lambda) as an SQS event. As SQS does: a failed record
//! comes back when the backoff the function set (`ChangeMessageVisibility`, here
//! [`RetryLater`]) has passed, and after `max_receives` receives it is a dead letter, which the
//! console can redrive or discard.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use events::RetryLater;
use keap_relay::events::{Event, EventSink, SinkError};
use keap_relay::queues::{DeadLetter, InspectError, PEEK_MAX, QueueCounts, QueueInspector};
use serde_json::{Value, json};

/// SQS's largest batch for a Lambda event source.
const BATCH_SIZE: usize = 10;
/// The template's visibility timeout of the event queue: how long a received record stays
/// hidden unless the function set its own backoff.
const VISIBILITY: Duration = Duration::from_secs(720);

#[derive(Debug, Clone)]
struct Message {
    id: uuid::Uuid,
    body: String,
    sent_at: SystemTime,
    visible_at: SystemTime,
    receive_count: u32,
}

impl Message {
    fn receipt_handle(&self) -> String {
        format!("local-{}-{}", self.id, self.receive_count)
    }
}

#[derive(Debug)]
pub struct LocalEventQueue {
    pending: Mutex<Vec<Message>>,
    dead: Mutex<Vec<Message>>,
    /// The template's `EventsMaxReceiveCount` (8).
    max_receives: u32,
}

/// What one drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventsDrainReport {
    pub delivered: usize,
    pub retrying: usize,
    pub dead_lettered: usize,
}

impl LocalEventQueue {
    pub fn new(max_receives: u32) -> Self {
        Self {
            pending: Mutex::default(),
            dead: Mutex::default(),
            max_receives: max_receives.max(1),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Message>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dead(&self) -> std::sync::MutexGuard<'_, Vec<Message>> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the visible events to the `events` function once (whose `retry` should be this
    /// queue, so its backoffs apply here).
    pub async fn drain(&self, deps: &events::Deps) -> Result<EventsDrainReport, serde_json::Error> {
        let now = SystemTime::now();
        let batch: Vec<Message> = {
            let mut pending = self.pending();
            let mut batch = Vec::new();
            for message in pending.iter_mut().filter(|m| m.visible_at <= now).take(BATCH_SIZE) {
                message.receive_count += 1;
                message.visible_at = now + VISIBILITY;
                batch.push(message.clone());
            }
            batch
        };
        if batch.is_empty() {
            return Ok(EventsDrainReport::default());
        }
        let event: SqsEvent = serde_json::from_value(sqs_event(&batch))?;
        let failed: Vec<String> = match events::handle(event, deps).await {
            Ok(response) => response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "the events function failed the whole batch");
                batch.iter().map(|m| m.id.to_string()).collect()
            }
        };
        let mut report = EventsDrainReport::default();
        let mut pending = self.pending();
        for message in batch {
            let id = message.id.to_string();
            let Some(at) = pending.iter().position(|m| m.id == message.id) else {
                continue;
            };
            if !failed.contains(&id) {
                pending.remove(at);
                report.delivered += 1;
            } else if message.receive_count >= self.max_receives {
                let message = pending.remove(at);
                self.dead().push(message);
                report.dead_lettered += 1;
            } else {
                report.retrying += 1;
            }
        }
        Ok(report)
    }
}

#[async_trait]
impl EventSink for LocalEventQueue {
    async fn publish(&self, event: &Event) -> Result<(), SinkError> {
        let now = SystemTime::now();
        self.pending().push(Message {
            id: uuid::Uuid::new_v4(),
            body: event.to_json(),
            sent_at: now,
            visible_at: now,
            receive_count: 0,
        });
        Ok(())
    }
}

#[async_trait]
impl RetryLater for LocalEventQueue {
    async fn retry_after(&self, receipt_handle: &str, wait: Duration) -> Result<(), String> {
        let mut pending = self.pending();
        let message = pending
            .iter_mut()
            .find(|m| m.receipt_handle() == receipt_handle)
            .ok_or_else(|| format!("no message with receipt handle {receipt_handle}"))?;
        message.visible_at = SystemTime::now() + wait;
        Ok(())
    }
}

#[async_trait]
impl QueueInspector for LocalEventQueue {
    async fn counts(&self) -> Result<QueueCounts, InspectError> {
        let now = SystemTime::now();
        let mut counts = QueueCounts::default();
        for message in self.pending().iter() {
            if message.visible_at <= now {
                counts.waiting += 1;
            } else {
                counts.in_flight += 1;
            }
        }
        counts.dead_letters = self.dead().len() as u64;
        Ok(counts)
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, InspectError> {
        Ok(self
            .dead()
            .iter()
            .take(max.min(PEEK_MAX))
            .map(|m| DeadLetter {
                id: m.id.to_string(),
                body: m.body.clone(),
                sent_at: Some(m.sent_at),
                receive_count: m.receive_count,
            })
            .collect())
    }

    async fn redrive(&self, id: &str) -> Result<bool, InspectError> {
        let message = {
            let mut dead = self.dead();
            let Some(at) = dead.iter().position(|m| m.id.to_string() == id) else {
                return Ok(false);
            };
            dead.remove(at)
        };
        self.pending().push(Message {
            id: uuid::Uuid::new_v4(),
            receive_count: 0,
            visible_at: SystemTime::now(),
            ..message
        });
        Ok(true)
    }

    async fn discard(&self, id: &str) -> Result<bool, InspectError> {
        let mut dead = self.dead();
        let Some(at) = dead.iter().position(|m| m.id.to_string() == id) else {
            return Ok(false);
        };
        dead.remove(at);
        Ok(true)
    }
}

fn millis(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string()
}

/// The event Lambda's SQS event source mapping would send for these messages.
fn sqs_event(batch: &[Message]) -> Value {
    let records: Vec<Value> = batch
        .iter()
        .map(|message| {
            json!({
                "messageId": message.id.to_string(),
                "receiptHandle": message.receipt_handle(),
                "body": message.body,
                "attributes": {
                    "ApproximateReceiveCount": message.receive_count.to_string(),
                    "SentTimestamp": millis(message.sent_at),
                },
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:local:000000000000:keap-relay-events",
                "awsRegion": "local",
            })
        })
        .collect();
    json!({ "Records": records })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keap_relay::SecretString;
    use keap_relay::events::webhook::Webhook;

    use super::*;

    struct Key;

    #[async_trait]
    impl events::SigningKey for Key {
        async fn events_signing_key(&self) -> Result<SecretString, String> {
            Ok(SecretString::from("k"))
        }
    }

    #[tokio::test]
    async fn an_unreachable_receiver_backs_off_then_dead_letters_and_redrive_brings_it_back() {
        let queue = Arc::new(LocalEventQueue::new(2));
        // Nothing listens on port 9 of this machine.
        let deps = events::Deps {
            webhook: Some(Webhook::new("http://127.0.0.1:9/hook").unwrap()),
            key: Arc::new(Key),
            state: None,
            retry: Some(queue.clone()),
        };
        queue.publish(&Event::connection_recovered("acct")).await.unwrap();
        let first = queue.drain(&deps).await.unwrap();
        assert_eq!(first.retrying, 1);
        let counts = queue.counts().await.unwrap();
        assert_eq!((counts.waiting, counts.in_flight), (0, 1), "backing off");
        assert!(queue.drain(&deps).await.unwrap() == EventsDrainReport::default());

        // Past its backoff: the second (last) receive fails too.
        queue.pending()[0].visible_at = SystemTime::now();
        assert_eq!(queue.drain(&deps).await.unwrap().dead_lettered, 1);
        let dead = queue.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(queue.redrive(&dead[0].id).await.unwrap());
        assert_eq!(queue.counts().await.unwrap().waiting, 1);
    }
}
