//! The local stand-in for the SQS retry queue: `signup` puts what Keap could not take now,
//! and a timer hands visible messages to the `signup-retry` function ([`signup_retry::handle`],
//! as on Lambda) as a real SQS event (deserialized from the JSON Lambda would receive), with
//! SQS's redelivery rules: a failed record comes back after the visibility timeout, and after
//! `max_receives` receives it goes to the dead letters. A signup that waits for Keap to be
//! connected is parked by `signup-retry` itself: sent again to this queue with a delay.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use keap_relay::queues::{DeadLetter, InspectError, PEEK_MAX, QueueCounts, QueueInspector};
use keap_relay::signup::{QueueError, QueuedSignup, QueuedWelcome, SignupQueue};
use serde_json::{Value, json};

/// SQS's largest batch for a Lambda event source.
const BATCH_SIZE: usize = 10;
/// SQS refuses delays above 15 minutes.
const MAX_DELAY: Duration = Duration::from_secs(900);

#[derive(Debug, Clone)]
struct Message {
    id: uuid::Uuid,
    /// The queued signup's own id, which a parked signup keeps.
    signup_id: uuid::Uuid,
    body: String,
    sent_at: SystemTime,
    visible_at: SystemTime,
    receive_count: u32,
}

#[derive(Debug)]
pub struct LocalQueue {
    pending: Mutex<VecDeque<Message>>,
    dead: Mutex<Vec<Message>>,
    /// The dead-letter queue's `maxReceiveCount` (the template's default is 5).
    max_receives: u32,
    /// How long a failed record stays invisible before it is tried again.
    visibility_timeout: Duration,
}

/// What one drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub delivered: usize,
    /// Waiting for Keap to be connected: sent back to the queue with a delay by `signup-retry`.
    pub parked: usize,
    /// Failed this time; back in the queue after the visibility timeout.
    pub retrying: usize,
    /// Failed for the last allowed time; now in the dead letters.
    pub dead_lettered: usize,
}

impl DrainReport {
    pub fn is_empty(&self) -> bool {
        *self == DrainReport::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("the local SQS event could not be built: {0}")]
    Event(#[from] serde_json::Error),
}

impl LocalQueue {
    pub fn new(max_receives: u32, visibility_timeout: Duration) -> Self {
        Self {
            pending: Mutex::default(),
            dead: Mutex::default(),
            max_receives: max_receives.max(1),
            visibility_timeout,
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn dead_letters(&self) -> usize {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes up to one batch of messages visible now, counting the receive.
    fn receive(&self, now: SystemTime) -> Vec<Message> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (mut visible, waiting): (VecDeque<_>, VecDeque<_>) = pending.drain(..).partition(|m| m.visible_at <= now);
        let rest = visible.split_off(visible.len().min(BATCH_SIZE));
        *pending = waiting.into_iter().chain(rest).collect();
        visible
            .into_iter()
            .map(|mut message| {
                message.receive_count += 1;
                message
            })
            .collect()
    }

    /// Hands the visible messages to the `signup-retry` function once. Its `parking` should be
    /// this queue, as on Lambda, where it is the function's own queue.
    pub async fn drain(&self, retry: &signup_retry::Deps) -> Result<DrainReport, DrainError> {
        let now = SystemTime::now();
        let batch = self.receive(now);
        if batch.is_empty() {
            return Ok(DrainReport::default());
        }
        let event: SqsEvent = serde_json::from_value(sqs_event(&batch))?;
        let failed: Vec<String> = match signup_retry::handle(event, retry).await {
            Ok(response) => response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect(),
            // The whole batch failed: SQS redelivers every record.
            Err(error) => {
                tracing::warn!(%error, "signup-retry failed the whole batch");
                batch.iter().map(|m| m.id.to_string()).collect()
            }
        };
        let mut report = DrainReport::default();
        for mut message in batch {
            if !failed.contains(&message.id.to_string()) {
                if self.holds_signup(message.signup_id) {
                    report.parked += 1;
                } else {
                    report.delivered += 1;
                }
            } else if message.receive_count >= self.max_receives {
                report.dead_lettered += 1;
                self.dead.lock().unwrap_or_else(|e| e.into_inner()).push(message);
            } else {
                report.retrying += 1;
                message.visible_at = now + self.visibility_timeout;
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(message);
            }
        }
        Ok(report)
    }

    /// True when a pending message carries this signup (a received one was sent back).
    fn holds_signup(&self, signup_id: uuid::Uuid) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|m| m.signup_id == signup_id)
    }
}

impl LocalQueue {
    /// Puts `body` straight into the dead letters, as if it had failed its last receive (the
    /// local run's `POST /_local/dead-letters`, for trying the console's Redrive and Discard).
    pub fn add_dead_letter(&self, body: String) -> uuid::Uuid {
        let now = SystemTime::now();
        let id = uuid::Uuid::new_v4();
        let signup_id = QueuedSignup::from_message(&body).map(|q| q.id).unwrap_or(id);
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).push(Message {
            id,
            signup_id,
            body,
            sent_at: now,
            visible_at: now,
            receive_count: self.max_receives,
        });
        id
    }
}

/// What the console sees of this queue: SQS's three counts and the dead letters.
#[async_trait]
impl QueueInspector for LocalQueue {
    async fn counts(&self) -> Result<QueueCounts, InspectError> {
        let now = SystemTime::now();
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts = QueueCounts::default();
        for message in pending.iter() {
            match (message.visible_at <= now, message.receive_count) {
                (true, _) => counts.waiting += 1,
                (false, 0) => counts.delayed += 1,
                (false, _) => counts.in_flight += 1,
            }
        }
        counts.dead_letters = self.dead_letters() as u64;
        Ok(counts)
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, InspectError> {
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        Ok(dead
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
        let Some(mut message) = self.take_dead(id) else {
            return Ok(false);
        };
        // As SQS's redrive: a new message with the same body, received zero times.
        message.id = uuid::Uuid::new_v4();
        message.receive_count = 0;
        message.visible_at = SystemTime::now();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(message);
        Ok(true)
    }

    async fn discard(&self, id: &str) -> Result<bool, InspectError> {
        Ok(self.take_dead(id).is_some())
    }
}

impl LocalQueue {
    fn take_dead(&self, id: &str) -> Option<Message> {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        let at = dead.iter().position(|m| m.id.to_string() == id)?;
        Some(dead.remove(at))
    }
}

impl LocalQueue {
    fn push(&self, signup_id: uuid::Uuid, body: String, delay: Duration) {
        let now = SystemTime::now();
        let message = Message {
            id: uuid::Uuid::new_v4(),
            signup_id,
            body,
            sent_at: now,
            visible_at: now + delay.min(MAX_DELAY),
            receive_count: 0,
        };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(message);
    }
}

#[async_trait]
impl SignupQueue for LocalQueue {
    async fn enqueue(&self, signup: &QueuedSignup, delay: Duration) -> Result<(), QueueError> {
        self.push(signup.id, signup.to_message(), delay);
        Ok(())
    }

    async fn enqueue_welcome(&self, welcome: &QueuedWelcome, delay: Duration) -> Result<(), QueueError> {
        self.push(welcome.id, welcome.to_message(), delay);
        Ok(())
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
    let received = millis(SystemTime::now());
    let records: Vec<Value> = batch
        .iter()
        .map(|message| {
            json!({
                "messageId": message.id.to_string(),
                "receiptHandle": format!("local-{}-{}", message.id, message.receive_count),
                "body": message.body,
                "attributes": {
                    "ApproximateReceiveCount": message.receive_count.to_string(),
                    "SentTimestamp": millis(message.sent_at),
                    "SenderId": "relay-local",
                    "ApproximateFirstReceiveTimestamp": received,
                },
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:local:000000000000:keap-relay-signups",
                "awsRegion": "local",
            })
        })
        .collect();
    json!({ "Records": records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use keap_relay::SecretString;
    use keap_relay::keap::api::KeapApi;
    use keap_relay::signup::{SignupService, SignupSettings};
    use keap_relay::token::ApiKeySource;
    use keap_sandbox::{DEFAULT_API_KEY, Sandbox, SandboxConfig};

    fn retry(sandbox: &Sandbox) -> signup_retry::Deps {
        let api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(5));
        let key = Arc::new(ApiKeySource::new(SecretString::from(DEFAULT_API_KEY)));
        let service = SignupService::new(
            api,
            key,
            SignupSettings {
                retry_budget: Duration::from_millis(50),
                ..SignupSettings::default()
            },
        );
        signup_retry::Deps {
            service,
            parking: None,
            events: None,
        }
    }

    /// A sandbox failing every call, and a queue holding one signup for it.
    async fn failing_keap_and_one_queued_signup(max_receives: u32) -> (Sandbox, signup_retry::Deps, LocalQueue) {
        let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
        let service = retry(&sandbox);
        let queue = LocalQueue::new(max_receives, Duration::ZERO);
        queue
            .enqueue(&queued("grace@example.com"), Duration::ZERO)
            .await
            .unwrap();
        sandbox.faults().set_server_error_rate(1.0);
        (sandbox, service, queue)
    }

    #[tokio::test]
    async fn failed_records_come_back_until_the_last_receive_then_go_to_the_dead_letters() {
        let (_sandbox, service, queue) = failing_keap_and_one_queued_signup(2).await;
        let first = queue.drain(&service).await.unwrap();
        assert_eq!(
            first,
            DrainReport {
                retrying: 1,
                ..DrainReport::default()
            }
        );
        let second = queue.drain(&service).await.unwrap();
        assert_eq!(
            second,
            DrainReport {
                dead_lettered: 1,
                ..DrainReport::default()
            }
        );
        assert_eq!((queue.pending(), queue.dead_letters()), (0, 1));
        assert!(queue.drain(&service).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_console_sees_counts_and_redrives_a_dead_letter_back_to_delivery() {
        let (sandbox, service, queue) = failing_keap_and_one_queued_signup(1).await;
        queue
            .enqueue(&queued("later@example.com"), Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(queue.drain(&service).await.unwrap().dead_lettered, 1);
        let counts = queue.counts().await.unwrap();
        assert_eq!((counts.waiting, counts.delayed, counts.dead_letters), (0, 1, 1));
        let dead = QueueInspector::dead_letters(&queue, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].body.contains("grace@example.com"));

        sandbox.faults().clear();
        assert!(!queue.redrive("no-such-id").await.unwrap());
        assert!(queue.redrive(&dead[0].id).await.unwrap());
        assert_eq!(queue.counts().await.unwrap().waiting, 1);
        assert_eq!(queue.drain(&service).await.unwrap().delivered, 1);
        assert!(sandbox.contact_by_email("grace@example.com").is_some());

        let poison = queue.add_dead_letter("{\"nope\":true}".into());
        assert!(queue.discard(&poison.to_string()).await.unwrap());
        assert_eq!(queue.counts().await.unwrap().dead_letters, 0);
    }

    #[tokio::test]
    async fn a_queued_signup_reaches_keap_when_it_answers_again() {
        let (sandbox, service, queue) = failing_keap_and_one_queued_signup(5).await;
        assert_eq!(queue.drain(&service).await.unwrap().retrying, 1);

        sandbox.faults().clear();
        assert_eq!(
            queue.drain(&service).await.unwrap(),
            DrainReport {
                delivered: 1,
                ..DrainReport::default()
            }
        );
        assert!(sandbox.contact_by_email("grace@example.com").is_some());
        assert_eq!(queue.pending(), 0);
    }

    fn queued(email: &str) -> QueuedSignup {
        let signup = keap_relay::signup::Signup::from_json(format!(r#"{{"email":"{email}"}}"#).as_bytes()).unwrap();
        QueuedSignup::new(signup, SystemTime::now())
    }

    #[tokio::test]
    async fn a_batch_is_at_most_ten_visible_messages_and_counts_the_receive() {
        let queue = LocalQueue::new(5, Duration::from_secs(30));
        for n in 0..12 {
            queue
                .enqueue(&queued(&format!("p{n}@example.com")), Duration::ZERO)
                .await
                .unwrap();
        }
        queue
            .enqueue(&queued("later@example.com"), Duration::from_secs(60))
            .await
            .unwrap();
        let batch = queue.receive(SystemTime::now());
        assert_eq!(batch.len(), 10);
        assert!(batch.iter().all(|m| m.receive_count == 1));
        assert_eq!(queue.pending(), 3, "two visible left over and one delayed");

        let event: SqsEvent = serde_json::from_value(sqs_event(&batch)).unwrap();
        assert_eq!(event.records.len(), 10);
        assert_eq!(event.records[0].attributes["ApproximateReceiveCount"], "1");
        let body = event.records[0].body.as_deref().unwrap();
        assert_eq!(QueuedSignup::from_message(body).unwrap().signup.email, "p0@example.com");
    }
}
