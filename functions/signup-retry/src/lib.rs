//! The `signup-retry` function (SQS): `main.rs` builds [`Deps`] once and hands each batch to
//! [`handle`]; the processing itself is in [`handler`].

pub mod handler;

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use keap_relay::app::App;
use keap_relay::events::EventSink;
use keap_relay::signup::{SignupQueue, SignupService};

use handler::RetryError;

/// The handler's dependencies, built once per process.
pub struct Deps {
    /// The same signup flow as a live request (keep one per process: it caches tag ids).
    pub service: SignupService,
    /// Where signups waiting for Keap to be reconnected go back to: their own queue
    /// (`SIGNUP_QUEUE_URL`). Without it they are left to SQS's redelivery.
    pub parking: Option<Arc<dyn SignupQueue>>,
    /// Where events to the product go (`EVENTS_QUEUE_URL`); none: no events.
    pub events: Option<Arc<dyn EventSink>>,
}

impl Deps {
    pub fn from_app(app: &App) -> Self {
        Self {
            // Retries are bulk work: they leave headroom to live signups (`keap::pacing`).
            service: app.bulk_signup_service(),
            parking: app.queue.clone(),
            events: app.events.clone(),
        }
    }
}

/// Processes one SQS batch, parking the signups that wait for a reconnection
/// ([`handler::handle_with_parking`]).
pub async fn handle(event: SqsEvent, deps: &Deps) -> Result<SqsBatchResponse, RetryError> {
    handler::handle_with_events(event, &deps.service, deps.parking.as_deref(), deps.events.as_deref()).await
}
