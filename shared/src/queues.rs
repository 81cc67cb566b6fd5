//! Looking into a queue and its dead-letter queue, for the operator console: how many messages
//! wait, how many are delayed (parked), a sample of the dead letters, and the two actions on
//! one dead letter: redrive (back to the queue) and discard.
//!
//! SQS counts are approximate (`ApproximateNumberOf…`), and a peek at the dead letters is a
//! receive with a zero visibility timeout: up to ten messages, SQS's sample. Redrive and
//! discard look for the message by id in a few bounded receives, and hand every other message
//! they saw back at once.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;

/// The most dead letters one look returns (SQS receives at most ten at a time).
pub const PEEK_MAX: usize = 10;

/// How many receives redrive and discard spend looking for one message.
const SEARCH_RECEIVES: usize = 5;

/// The counts of a queue and of its dead-letter queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// Visible now: about to be handled.
    pub waiting: u64,
    /// Being handled (received, not yet deleted), or waiting out a backoff.
    pub in_flight: u64,
    /// Sent with a delay: signups parked until Keap is reconnected, or waiting for Keap's
    /// `Retry-After`.
    pub delayed: u64,
    pub dead_letters: u64,
}

/// One message of the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The SQS message id (what redrive and discard take).
    pub id: String,
    pub body: String,
    #[serde(with = "crate::token::opt_rfc3339")]
    pub sent_at: Option<SystemTime>,
    /// How often it was received before it was dead-lettered (and since).
    pub receive_count: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("the queue could not be read or changed: {0}")]
pub struct InspectError(pub String);

/// A queue and its dead-letter queue, as the console sees them.
#[async_trait]
pub trait QueueInspector: Send + Sync {
    async fn counts(&self) -> Result<QueueCounts, InspectError>;
    /// Up to `max` (at most [`PEEK_MAX`]) dead letters, without taking them.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, InspectError>;
    /// Sends the dead letter `id` back to the queue. False: no such dead letter (now).
    async fn redrive(&self, id: &str) -> Result<bool, InspectError>;
    /// Deletes the dead letter `id`. False: no such dead letter (now).
    async fn discard(&self, id: &str) -> Result<bool, InspectError>;
}

/// In-process queue and dead-letter queue for tests.
#[derive(Debug, Default)]
pub struct MemoryInspector {
    pub counts: Mutex<QueueCounts>,
    dead: Mutex<VecDeque<DeadLetter>>,
    /// Bodies redriven, in order.
    redriven: Mutex<Vec<String>>,
}

impl MemoryInspector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_dead_letter(&self, id: &str, body: &str, receive_count: u32) {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(DeadLetter {
                id: id.to_owned(),
                body: body.to_owned(),
                sent_at: Some(SystemTime::now()),
                receive_count,
            });
    }

    pub fn redriven(&self) -> Vec<String> {
        self.redriven.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn take(&self, id: &str) -> Option<DeadLetter> {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        let at = dead.iter().position(|d| d.id == id)?;
        dead.remove(at)
    }
}

#[async_trait]
impl QueueInspector for MemoryInspector {
    async fn counts(&self) -> Result<QueueCounts, InspectError> {
        let mut counts = *self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.dead_letters = self.dead.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        Ok(counts)
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, InspectError> {
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        Ok(dead.iter().take(max.min(PEEK_MAX)).cloned().collect())
    }

    async fn redrive(&self, id: &str) -> Result<bool, InspectError> {
        let Some(letter) = self.take(id) else { return Ok(false) };
        self.redriven
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(letter.body);
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).waiting += 1;
        Ok(true)
    }

    async fn discard(&self, id: &str) -> Result<bool, InspectError> {
        Ok(self.take(id).is_some())
    }
}

/// An SQS queue and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct SqsInspector {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_queue_url: String,
}

fn sqs_error(error: impl std::error::Error + 'static) -> InspectError {
    InspectError(aws_sdk_sqs::error::DisplayErrorContext(error).to_string())
}

impl SqsInspector {
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        dead_letter_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            dead_letter_queue_url: dead_letter_queue_url.into(),
        }
    }

    async fn attributes(&self, url: &str) -> Result<std::collections::HashMap<String, String>, InspectError> {
        use aws_sdk_sqs::types::QueueAttributeName as Name;
        let answer = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(Name::ApproximateNumberOfMessages)
            .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(Name::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(answer
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name.as_str().to_owned(), value))
            .collect())
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, InspectError> {
        let answer = self
            .client
            .receive_message()
            .queue_url(&self.dead_letter_queue_url)
            .max_number_of_messages(i32::try_from(max.clamp(1, PEEK_MAX)).unwrap_or(10))
            .visibility_timeout(i32::try_from(visibility.as_secs()).unwrap_or(30))
            .wait_time_seconds(0)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(answer.messages.unwrap_or_default())
    }

    /// Finds dead letter `id` and hands it to `act` (with its receipt handle); every other
    /// message seen is made visible again at once.
    async fn with_dead_letter(&self, id: &str, redrive: bool) -> Result<bool, InspectError> {
        for _ in 0..SEARCH_RECEIVES {
            let messages = self.receive(PEEK_MAX, Duration::from_secs(30)).await?;
            if messages.is_empty() {
                return Ok(false);
            }
            let mut found = false;
            for message in messages {
                let handle = message.receipt_handle.clone().unwrap_or_default();
                if message.message_id.as_deref() == Some(id) && !found {
                    found = true;
                    if redrive {
                        self.client
                            .send_message()
                            .queue_url(&self.queue_url)
                            .message_body(message.body.clone().unwrap_or_default())
                            .send()
                            .await
                            .map_err(sqs_error)?;
                    }
                    self.client
                        .delete_message()
                        .queue_url(&self.dead_letter_queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .map_err(sqs_error)?;
                } else {
                    let _ = self
                        .client
                        .change_message_visibility()
                        .queue_url(&self.dead_letter_queue_url)
                        .receipt_handle(handle)
                        .visibility_timeout(0)
                        .send()
                        .await;
                }
            }
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn count(attributes: &std::collections::HashMap<String, String>, name: &str) -> u64 {
    attributes.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[async_trait]
impl QueueInspector for SqsInspector {
    async fn counts(&self) -> Result<QueueCounts, InspectError> {
        let queue = self.attributes(&self.queue_url).await?;
        let dead = self.attributes(&self.dead_letter_queue_url).await?;
        Ok(QueueCounts {
            waiting: count(&queue, "ApproximateNumberOfMessages"),
            in_flight: count(&queue, "ApproximateNumberOfMessagesNotVisible"),
            delayed: count(&queue, "ApproximateNumberOfMessagesDelayed"),
            dead_letters: count(&dead, "ApproximateNumberOfMessages")
                + count(&dead, "ApproximateNumberOfMessagesNotVisible"),
        })
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, InspectError> {
        let messages = self.receive(max, Duration::ZERO).await?;
        Ok(messages
            .into_iter()
            .map(|message| {
                let attributes = message.attributes.unwrap_or_default();
                let attribute = |name: aws_sdk_sqs::types::MessageSystemAttributeName| attributes.get(&name).cloned();
                DeadLetter {
                    id: message.message_id.unwrap_or_default(),
                    body: message.body.unwrap_or_default(),
                    sent_at: attribute(aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp)
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                    receive_count: attribute(aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                }
            })
            .collect())
    }

    async fn redrive(&self, id: &str) -> Result<bool, InspectError> {
        self.with_dead_letter(id, true).await
    }

    async fn discard(&self, id: &str) -> Result<bool, InspectError> {
        self.with_dead_letter(id, false).await
    }
}
