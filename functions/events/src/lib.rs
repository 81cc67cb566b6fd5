//! The `events` function (SQS, the event queue): delivers each event to `EVENTS_WEBHOOK_URL`,
//! signed with the app secret's `events_signing_key` (see `keap_relay::events`).
//!
//! A record that is delivered is acknowledged. One that is not is reported in
//! `batchItemFailures` after its visibility timeout was set to the backoff of its attempt
//! ([`keap_relay::events::webhook::backoff`]: one minute growing to twelve hours), so SQS hands
//! it back that much later, and after the queue's `maxReceiveCount` to the dead-letter queue.
//! After a receiver's 410 it is switched off (`keap_relay::events::receiver`) and records wait
//! the longest backoff until the operator switches it on again in the console (and redrives
//! what reached the dead-letter queue meanwhile). Order is not kept, and a record may come
//! twice: receivers drop repeats by the event id.

pub mod handler;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::app::{App, AppSecretCache};
use keap_relay::events::webhook::{BadWebhookUrl, Webhook};
use keap_relay::store::SecretStore;

pub use handler::{DeliveryError, handle};

/// The app secret's `events_signing_key`.
#[async_trait]
pub trait SigningKey: Send + Sync {
    async fn events_signing_key(&self) -> Result<SecretString, String>;
}

#[async_trait]
impl SigningKey for AppSecretCache {
    async fn events_signing_key(&self) -> Result<SecretString, String> {
        let secret = self.get().await.map_err(|e| e.to_string())?;
        secret
            .events_signing_key
            .clone()
            .ok_or_else(|| "the app secret has no events_signing_key".to_owned())
    }
}

/// Makes a received record visible again only after `wait` (SQS `ChangeMessageVisibility`).
#[async_trait]
pub trait RetryLater: Send + Sync {
    async fn retry_after(&self, receipt_handle: &str, wait: Duration) -> Result<(), String>;
}

/// `ChangeMessageVisibility` on the event queue.
#[derive(Debug, Clone)]
pub struct SqsRetryLater {
    pub client: aws_sdk_sqs::Client,
    pub queue_url: String,
}

#[async_trait]
impl RetryLater for SqsRetryLater {
    async fn retry_after(&self, receipt_handle: &str, wait: Duration) -> Result<(), String> {
        let seconds = i32::try_from(wait.as_secs()).unwrap_or(i32::MAX).min(43_200);
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
    }
}

/// The handler's dependencies, built once per process.
pub struct Deps {
    /// `EVENTS_WEBHOOK_URL`; none: events are dropped (acknowledged) with a log line.
    pub webhook: Option<Webhook>,
    pub key: Arc<dyn SigningKey>,
    /// Where the receiver's on/off switch lives (`EVENTS_STATE_SECRET_ID`); none: a 410 only
    /// holds the records back, it switches nothing off.
    pub state: Option<(Arc<dyn SecretStore>, String)>,
    /// Sets the wait before a failed record's next attempt; none: SQS's own visibility timeout.
    pub retry: Option<Arc<dyn RetryLater>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error(transparent)]
    Webhook(#[from] BadWebhookUrl),
}

impl Deps {
    pub async fn from_app(app: &App) -> Result<Self, DepsError> {
        let events = &app.config.events;
        let webhook = events.webhook_url.as_deref().map(Webhook::new).transpose()?;
        let retry = match &events.queue_url {
            Some(url) => {
                let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
                Some(Arc::new(SqsRetryLater {
                    client: aws_sdk_sqs::Client::new(&aws),
                    queue_url: url.clone(),
                }) as Arc<dyn RetryLater>)
            }
            None => None,
        };
        Ok(Self {
            webhook,
            key: app.app_secret.clone(),
            state: events.state_secret_id.clone().map(|id| (app.store.clone(), id)),
            retry,
        })
    }
}
