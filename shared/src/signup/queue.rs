//! Signups that could not reach Keap at once wait in a queue (SQS in production) for the
//! `signup-retry` function.
//!
//! A message is the validated signup's JSON plus `id` (a UUID, for logs and de-duplication
//! by eye) and `first_seen_at` (RFC 3339), so `signup-retry` validates it with the very code
//! that validated the request.
//!
//! A welcome that could not be sent at once travels alone, as a [`QueuedWelcome`]:
//! `{"welcome": "email" | "template" | "goal", "contact_id": 123, "attempted_at": "…", "id", "first_seen_at"}`
//! (`attempted_at` when the last send may or may not have gone out; see
//! `docs/welcome-and-fields.md`).

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

/// Which welcome a [`QueuedWelcome`] still owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WelcomePart {
    /// The direct email (`KEAP_WELCOME_EMAIL_*`).
    Email,
    /// The Keap email template (`KEAP_WELCOME_TEMPLATE_ID`).
    Template,
    /// The API goal (`KEAP_WELCOME_GOAL`).
    Goal,
}

impl WelcomePart {
    pub fn as_str(self) -> &'static str {
        match self {
            WelcomePart::Email => "email",
            WelcomePart::Template => "template",
            WelcomePart::Goal => "goal",
        }
    }
}

/// One welcome owed to one contact, retried through the queue apart from its signup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWelcome {
    pub id: Uuid,
    pub first_seen_at: SystemTime,
    pub part: WelcomePart,
    pub contact_id: i64,
    /// When the last send whose outcome is unknown began: before sending again, Keap's
    /// sent-email listing is checked from this moment. `None`: nothing may have gone out.
    pub attempted_at: Option<SystemTime>,
    /// When a retry first found the welcome tag already applied (a signup claimed the welcome
    /// and sends it itself): the record waits the recheck time from then.
    pub claim_seen_at: Option<SystemTime>,
}

#[derive(Serialize)]
struct WelcomeMessage {
    welcome: WelcomePart,
    contact_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempted_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claim_seen_at: Option<String>,
    id: Uuid,
    first_seen_at: String,
}

fn to_second(time: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}

impl QueuedWelcome {
    /// Times are kept to the second, as the message carries them (`attempted_at` rounded down,
    /// so the listing is read from no later than the send began).
    pub fn new(part: WelcomePart, contact_id: i64, attempted_at: Option<SystemTime>) -> Self {
        Self {
            id: Uuid::new_v4(),
            first_seen_at: to_second(SystemTime::now()),
            part,
            contact_id,
            attempted_at: attempted_at.map(to_second),
            claim_seen_at: None,
        }
    }

    pub fn to_message(&self) -> String {
        let message = WelcomeMessage {
            welcome: self.part,
            contact_id: self.contact_id,
            attempted_at: self
                .attempted_at
                .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            claim_seen_at: self
                .claim_seen_at
                .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            id: self.id,
            first_seen_at: humantime::format_rfc3339_seconds(self.first_seen_at).to_string(),
        };
        serde_json::to_string(&message).expect("a welcome always serializes")
    }

    fn from_object(object: &serde_json::Map<String, Value>) -> Result<Self, InvalidSignup> {
        let bad = |reason: &str| InvalidSignup::InvalidField {
            field: "welcome",
            reason: reason.to_owned(),
        };
        let part = serde_json::from_value::<WelcomePart>(object.get("welcome").cloned().unwrap_or_default())
            .map_err(|_| bad("must be email, template or goal"))?;
        let contact_id = object
            .get("contact_id")
            .and_then(Value::as_i64)
            .filter(|id| *id > 0)
            .ok_or_else(|| bad("needs a positive contact_id"))?;
        let time = |name: &str| -> Result<Option<SystemTime>, InvalidSignup> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(at)) => humantime::parse_rfc3339_weak(at)
                    .map(Some)
                    .map_err(|_| bad("has a time that is not RFC 3339")),
                Some(_) => Err(bad("has a time that is not a string")),
            }
        };
        Ok(Self {
            id: object
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| Uuid::parse_str(id).ok())
                .unwrap_or_else(Uuid::new_v4),
            first_seen_at: time("first_seen_at")?.unwrap_or_else(SystemTime::now),
            part,
            contact_id,
            attempted_at: time("attempted_at")?,
            claim_seen_at: time("claim_seen_at")?,
        })
    }
}

/// A message of the signup queue: a whole signup, or one welcome owed to a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueuedMessage {
    Signup(Box<QueuedSignup>),
    Welcome(QueuedWelcome),
}

impl QueuedMessage {
    /// Reads a message body: a welcome when it has a `welcome` field, a signup otherwise.
    pub fn from_message(body: &str) -> Result<Self, InvalidSignup> {
        let value: Value = serde_json::from_str(body).map_err(|e| InvalidSignup::InvalidJson(e.to_string()))?;
        match &value {
            Value::Object(object) if object.contains_key("welcome") => {
                QueuedWelcome::from_object(object).map(QueuedMessage::Welcome)
            }
            _ => QueuedSignup::from_message(body).map(|s| QueuedMessage::Signup(Box::new(s))),
        }
    }

    /// The signup's or welcome record's id, for logs.
    pub fn id(&self) -> Uuid {
        match self {
            Self::Signup(signup) => signup.id,
            Self::Welcome(welcome) => welcome.id,
        }
    }

    /// When the signup was first seen (a welcome record carries its signup's).
    pub fn first_seen_at(&self) -> SystemTime {
        match self {
            Self::Signup(signup) => signup.first_seen_at,
            Self::Welcome(welcome) => welcome.first_seen_at,
        }
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

    /// Queues a welcome owed to a contact, as [`SignupQueue::enqueue`] does a signup.
    async fn enqueue_welcome(&self, welcome: &QueuedWelcome, delay: Duration) -> Result<(), QueueError>;
}

/// In-process queue for tests and the local run.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    /// Each message body with the delay it was queued with.
    messages: Mutex<Vec<(String, Duration)>>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The message bodies queued so far, oldest first.
    pub fn messages(&self) -> Vec<String> {
        self.delayed().into_iter().map(|(body, _)| body).collect()
    }

    /// The message bodies queued so far, each with the delay asked for, oldest first.
    pub fn delayed(&self) -> Vec<(String, Duration)> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Removes and returns every queued message body.
    pub fn drain(&self) -> Vec<String> {
        let taken = std::mem::take(&mut *self.messages.lock().unwrap_or_else(|e| e.into_inner()));
        taken.into_iter().map(|(body, _)| body).collect()
    }

    fn push(&self, body: String, delay: Duration) {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((body, delay));
    }
}

#[async_trait]
impl SignupQueue for MemoryQueue {
    async fn enqueue(&self, signup: &QueuedSignup, delay: Duration) -> Result<(), QueueError> {
        self.push(signup.to_message(), delay);
        Ok(())
    }

    async fn enqueue_welcome(&self, welcome: &QueuedWelcome, delay: Duration) -> Result<(), QueueError> {
        self.push(welcome.to_message(), delay);
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

impl SqsQueue {
    async fn send(&self, body: String, delay: Duration) -> Result<(), QueueError> {
        let delay_seconds = i32::try_from(delay.min(MAX_DELAY).as_secs()).unwrap_or(0);
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(delay_seconds)
            .send()
            .await
            .map_err(|e| QueueError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
        Ok(())
    }
}

#[async_trait]
impl SignupQueue for SqsQueue {
    async fn enqueue(&self, signup: &QueuedSignup, delay: Duration) -> Result<(), QueueError> {
        self.send(signup.to_message(), delay).await
    }

    async fn enqueue_welcome(&self, welcome: &QueuedWelcome, delay: Duration) -> Result<(), QueueError> {
        self.send(welcome.to_message(), delay).await
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
            details: Default::default(),
        };
        let queued = QueuedSignup::new(signup, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let message = queued.to_message();
        let json: Value = serde_json::from_str(&message).unwrap();
        assert_eq!(json["email"], "a@example.com");
        assert_eq!(json["tags"], serde_json::json!(["vip", 7]));
        assert_eq!(json["first_seen_at"], "2023-11-14T22:13:20Z");
        assert_eq!(QueuedSignup::from_message(&message).unwrap(), queued);
    }

    /// Found by fuzz/signup_body: without serde_json's `float_roundtrip` a long number came
    /// back from the queue one bit off (1e90 read as 1.0000000000000001e90).
    #[test]
    fn custom_field_numbers_come_back_from_the_queue_unchanged() {
        let long = format!("9{}0", "9".repeat(89));
        for number in [long.as_str(), "0.1", "1e-7", "123456789.123456789", "-2.5e300"] {
            let body = format!(r#"{{"email":"a@example.com","fields":{{"score":{number}}}}}"#);
            let signup = Signup::from_json(body.as_bytes()).unwrap();
            let queued = QueuedSignup::new(signup, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
            assert_eq!(
                QueuedSignup::from_message(&queued.to_message()).unwrap(),
                queued,
                "{number}"
            );
        }
    }

    #[test]
    fn a_welcome_message_reads_back_and_is_told_from_a_signup() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_900);
        let welcome = QueuedWelcome::new(WelcomePart::Goal, 1234, Some(at));
        assert_eq!(
            welcome.attempted_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        let message = welcome.to_message();
        assert_eq!(
            QueuedMessage::from_message(&message).unwrap(),
            QueuedMessage::Welcome(welcome)
        );
        let signup = r#"{"email":"a@example.com","id":"x"}"#;
        assert!(matches!(
            QueuedMessage::from_message(signup).unwrap(),
            QueuedMessage::Signup(_)
        ));
        for bad in [
            r#"{"welcome":"fax","contact_id":1}"#,
            r#"{"welcome":"email"}"#,
            r#"{"welcome":"email","contact_id":-1}"#,
            r#"{"welcome":"email","contact_id":1,"attempted_at":"yesterday"}"#,
        ] {
            assert_eq!(
                QueuedMessage::from_message(bad).unwrap_err().code(),
                "invalid_field",
                "{bad}"
            );
        }
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
