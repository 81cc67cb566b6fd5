//! Signups that could not reach Keap at once wait in a queue (SQS in production) for the
//! `signup-retry` function.
//!
//! A message is the validated signup's JSON plus `id` (a UUID, for logs and de-duplication
//! by eye) and `first_seen_at` (RFC 3339), so `signup-retry` validates it with the very code
//! that validated the request.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::request::{InvalidSignup, Signup};

/// SQS refuses delays above 15 minutes.
const MAX_DELAY: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedSignup {
    pub id: Uuid,
    pub first_seen_at: SystemTime,
    pub signup: Signup,
}

#[derive(Serialize)]
struct Message<'a> {
    id: Uuid,
    first_seen_at: String,
    #[serde(flatten)]
    signup: &'a Signup,
}

impl QueuedSignup {
    /// `first_seen_at` is kept to the second, as the message carries it.
    pub fn new(signup: Signup, first_seen_at: SystemTime) -> Self {
        let seconds = first_seen_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Self {
            id: Uuid::new_v4(),
            first_seen_at: UNIX_EPOCH + Duration::from_secs(seconds),
            signup,
        }
    }

    /// The message body.
    pub fn to_message(&self) -> String {
        let message = Message {
            id: self.id,
            first_seen_at: humantime::format_rfc3339_seconds(self.first_seen_at).to_string(),
            signup: &self.signup,
        };
        serde_json::to_string(&message).expect("a signup always serializes")
    }

    /// Reads a message body back. A missing or bad `id`/`first_seen_at` is tolerated (a message
    /// written by hand still gets processed); the signup itself is validated in full.
    pub fn from_message(body: &str) -> Result<Self, InvalidSignup> {
        let value: Value = serde_json::from_str(body).map_err(|e| InvalidSignup::InvalidJson(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(InvalidSignup::InvalidJson("expected an object".into()));
        };
        let signup = Signup::from_object(&object)?;
        let id = object
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok());
        let first_seen_at = object
            .get("first_seen_at")
            .and_then(Value::as_str)
            .and_then(|at| humantime::parse_rfc3339_weak(at).ok());
        Ok(Self {
            id: id.unwrap_or_else(Uuid::new_v4),
            first_seen_at: first_seen_at.unwrap_or_else(SystemTime::now),
            signup,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not queue the signup: {0}")]
pub struct QueueError(pub String);

/// Where signups wait when Keap cannot take them now.
#[async_trait]
pub trait SignupQueue: Send + Sync {
    /// Queues `signup`, to be delivered no earlier than `delay` from now (capped by the backend).
    async fn enqueue(&self, signup: &QueuedSignup, delay: Duration) -> Result<(), QueueError>;
}

/// In-process queue for tests and the local run.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    messages: Mutex<Vec<String>>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The message bodies queued so far, oldest first.
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Removes and returns every queued message body.
    pub fn drain(&self) -> Vec<String> {
        std::mem::take(&mut *self.messages.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl SignupQueue for MemoryQueue {
    async fn enqueue(&self, signup: &QueuedSignup, _delay: Duration) -> Result<(), QueueError> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(signup.to_message());
        Ok(())
    }
}

/// SQS (`SIGNUP_QUEUE_URL`), a standard queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

#[async_trait]
impl SignupQueue for SqsQueue {
    async fn enqueue(&self, signup: &QueuedSignup, delay: Duration) -> Result<(), QueueError> {
        let delay_seconds = i32::try_from(delay.min(MAX_DELAY).as_secs()).unwrap_or(0);
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(signup.to_message())
            .delay_seconds(delay_seconds)
            .send()
            .await
            .map_err(|e| QueueError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signup::request::TagRef;

    #[test]
    fn a_message_carries_the_signup_and_reads_back() {
        let signup = Signup {
            email: "a@example.com".into(),
            given_name: Some("Ann".into()),
            family_name: None,
            opt_in: true,
            tags: vec![TagRef::Name("vip".into()), TagRef::Id(7)],
            source: None,
        };
        let queued = QueuedSignup::new(signup, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let message = queued.to_message();
        let json: Value = serde_json::from_str(&message).unwrap();
        assert_eq!(json["email"], "a@example.com");
        assert_eq!(json["tags"], serde_json::json!(["vip", 7]));
        assert_eq!(json["first_seen_at"], "2023-11-14T22:13:20Z");
        assert_eq!(QueuedSignup::from_message(&message).unwrap(), queued);
    }

    #[test]
    fn a_bad_message_is_refused_with_the_validation_code() {
        assert_eq!(QueuedSignup::from_message("nope").unwrap_err().code(), "invalid_json");
        assert_eq!(
            QueuedSignup::from_message(r#"{"id":"x"}"#).unwrap_err().code(),
            "missing_email"
        );
    }
}
