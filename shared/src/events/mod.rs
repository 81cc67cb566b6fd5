//! Signed events to the product (`EVENTS_WEBHOOK_URL`), never in the request path.
//!
//! A function that has something to tell calls [`emit`] with an [`Event`]: the event goes to
//! an [`EventSink`] (the SQS event queue, `EVENTS_QUEUE_URL`, in production) and the `events`
//! function delivers it ([`webhook`]): signed like inbound signups (`X-Signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256(events_signing_key, "<t>.<raw body>")>`), retried with
//! a backoff over hours, dead-lettered at last. Delivery is at least once and in no particular
//! order: the receiver drops repeats by the event's `id`. A receiver that answers 410 is not
//! called again until the operator re-enables it ([`receiver`], the console).
//!
//! Emitting never fails its caller: a sink that cannot take the event is logged, and the
//! signup or the rotation goes on.

pub mod receiver;
pub mod webhook;

use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::signup::SignupOutcome;

/// The version of the event envelope and of every `data` shape below; a breaking change
/// bumps it (additive fields do not).
pub const VERSION: u32 = 1;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// Keap took a signup (at once or from the queue): contact id, created or updated, tags,
    /// welcome outcome.
    #[serde(rename = "signup.delivered")]
    SignupDelivered,
    /// Keap could not take a signup now; it waits in the signup queue.
    #[serde(rename = "signup.queued")]
    SignupQueued,
    /// A queued signup will never reach Keap (it goes to the dead-letter queue), with the reason.
    #[serde(rename = "signup.failed")]
    SignupFailed,
    /// Keap refused the connection; an administrator must reconnect (the reconnect URL).
    #[serde(rename = "connection.needs_reauth")]
    ConnectionNeedsReauth,
    /// An administrator reconnected Keap after it needed re-authorization.
    #[serde(rename = "connection.recovered")]
    ConnectionRecovered,
    /// A welcome that had failed completed on a later attempt.
    #[serde(rename = "welcome.sent")]
    WelcomeSent,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::SignupDelivered,
        EventType::SignupQueued,
        EventType::SignupFailed,
        EventType::ConnectionNeedsReauth,
        EventType::ConnectionRecovered,
        EventType::WelcomeSent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SignupDelivered => "signup.delivered",
            EventType::SignupQueued => "signup.queued",
            EventType::SignupFailed => "signup.failed",
            EventType::ConnectionNeedsReauth => "connection.needs_reauth",
            EventType::ConnectionRecovered => "connection.recovered",
            EventType::WelcomeSent => "welcome.sent",
        }
    }
}

/// One event, as the receiver gets it: `{"id","type","time","version","data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; a redelivery carries the same id.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened (RFC 3339, UTC).
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub version: u32,
    pub data: Value,
}

impl Event {
    pub fn new(kind: EventType, data: Value) -> Self {
        Self {
            id: Uuid::new_v4(),
            kind,
            time: SystemTime::now(),
            version: VERSION,
            data,
        }
    }

    /// The event with an id derived from `key`: the same fact observed twice (by two runs of
    /// the schedule) is one event to a receiver that drops repeats.
    pub fn with_stable_id(mut self, key: &str) -> Self {
        let name = format!("{}:{key}", self.kind.as_str());
        self.id = Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes());
        self
    }

    /// `signup.delivered`: `data` is the `POST /signup` success body (`contact_id`,
    /// `created`, `tags`, `welcome_email`) plus `email` and, for a queued signup, `signup_id`.
    pub fn signup_delivered(email: &str, outcome: &SignupOutcome, signup_id: Option<Uuid>) -> Self {
        let mut data = serde_json::to_value(outcome).unwrap_or_else(|_| json!({}));
        if let Value::Object(object) = &mut data {
            object.insert("email".into(), json!(email));
            if let Some(id) = signup_id {
                object.insert("signup_id".into(), json!(id));
            }
        }
        Self::new(EventType::SignupDelivered, data)
    }

    /// `signup.queued`: the id the `202` answered, and why Keap could not take it now.
    pub fn signup_queued(email: &str, signup_id: Uuid, reason_code: &str) -> Self {
        Self::new(
            EventType::SignupQueued,
            json!({ "email": email, "signup_id": signup_id, "reason": reason_code }),
        )
    }

    /// `signup.failed`: the signup goes to the dead-letter queue; `reason` says why.
    pub fn signup_failed(email: Option<&str>, signup_id: Option<Uuid>, code: &str, reason: &str) -> Self {
        Self::new(
            EventType::SignupFailed,
            json!({ "email": email, "signup_id": signup_id, "code": code, "reason": reason }),
        )
    }

    /// `connection.needs_reauth`: with the page an administrator opens to reconnect. `since`
    /// makes the id stable: the fact reported twice is one event.
    pub fn connection_needs_reauth(
        reason: Option<&str>,
        since: Option<SystemTime>,
        reconnect_url: Option<&str>,
    ) -> Self {
        let since_text = since.map(|at| humantime::format_rfc3339_seconds(at).to_string());
        let event = Self::new(
            EventType::ConnectionNeedsReauth,
            json!({ "reason": reason, "since": since_text, "reconnect_url": reconnect_url }),
        );
        match &since_text {
            Some(since) => event.with_stable_id(since),
            None => event,
        }
    }

    /// `connection.recovered`: connected again, to `account`.
    pub fn connection_recovered(account: &str) -> Self {
        Self::new(EventType::ConnectionRecovered, json!({ "account": account }))
    }

    /// `welcome.sent`: the welcome of `contact_id` completed on a later attempt (`how`: the
    /// welcome's kind, as the signup outcome names it).
    pub fn welcome_sent(contact_id: i64, email: Option<&str>, how: &str) -> Self {
        Self::new(
            EventType::WelcomeSent,
            json!({ "contact_id": contact_id.to_string(), "email": email, "welcome": how }),
        )
    }

    /// The exact body POSTed to the receiver (and the SQS message body).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serializes")
    }

    pub fn from_json(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not queue the event: {0}")]
pub struct SinkError(pub String);

/// Where emitted events go before delivery (the SQS event queue; memory in tests).
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, event: &Event) -> Result<(), SinkError>;
}

/// Hands `event` to `sink` when events are configured; a failure is logged, never returned:
/// an event must not cost a signup. The one call a code path needs.
pub async fn emit(sink: Option<&dyn EventSink>, event: Event) {
    let Some(sink) = sink else { return };
    match sink.publish(&event).await {
        Ok(()) => tracing::debug!(event_id = %event.id, event_type = event.kind.as_str(), "event queued"),
        Err(error) => {
            tracing::warn!(event_id = %event.id, event_type = event.kind.as_str(), %error, "event lost: the event queue refused it")
        }
    }
}

/// In-process sink for tests and the local run.
#[derive(Debug, Default)]
pub struct MemorySink {
    events: Mutex<Vec<Event>>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Removes and returns every event published so far.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl EventSink for MemorySink {
    async fn publish(&self, event: &Event) -> Result<(), SinkError> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
        Ok(())
    }
}

/// The SQS event queue (`EVENTS_QUEUE_URL`), a standard queue.
#[derive(Debug, Clone)]
pub struct SqsSink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsSink {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

#[async_trait]
impl EventSink for SqsSink {
    async fn publish(&self, event: &Event) -> Result<(), SinkError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(event.to_json())
            .send()
            .await
            .map_err(|e| SinkError(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::signup::WelcomeEmailOutcome;

    #[test]
    fn an_event_has_id_type_time_version_and_reads_back() {
        let outcome = SignupOutcome {
            contact_id: 42,
            created: true,
            tags: BTreeMap::from([("vip".to_owned(), "SUCCESS".to_owned())]),
            welcome_email: Some(WelcomeEmailOutcome::Sent),
            welcome_template: None,
            welcome_goal: None,
        };
        let event = Event::signup_delivered("a@example.com", &outcome, None);
        let json: Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["type"], "signup.delivered");
        assert_eq!(json["version"], 1);
        assert_eq!(json["data"]["contact_id"], "42");
        assert_eq!(json["data"]["created"], true);
        assert_eq!(json["data"]["tags"]["vip"], "SUCCESS");
        assert_eq!(json["data"]["welcome_email"], "sent");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(Uuid::parse_str(json["id"].as_str().unwrap()).unwrap(), event.id);
        let back = Event::from_json(&event.to_json()).unwrap();
        assert_eq!((back.id, back.kind, back.data), (event.id, event.kind, event.data));
    }

    #[test]
    fn type_names_match_their_serde_names() {
        for kind in EventType::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn the_same_needs_reauth_seen_twice_is_one_event() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first = Event::connection_needs_reauth(Some("invalid_grant"), Some(since), Some("https://r/oauth/start"));
        let again = Event::connection_needs_reauth(Some("invalid_grant"), Some(since), None);
        let later = Event::connection_needs_reauth(None, Some(since + Duration::from_secs(1)), None);
        assert_eq!(first.id, again.id);
        assert_ne!(first.id, later.id);
        assert_eq!(first.data["reconnect_url"], "https://r/oauth/start");
    }

    #[tokio::test]
    async fn emit_without_a_sink_does_nothing_and_with_one_queues() {
        emit(None, Event::connection_recovered("x")).await;
        let sink = MemorySink::new();
        emit(Some(&sink), Event::connection_recovered("acct")).await;
        let events = sink.take();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data["account"], "acct");
    }
}
