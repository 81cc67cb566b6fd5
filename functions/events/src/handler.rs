//! One SQS batch of events (see the crate docs for what happens to each record).

use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use keap_relay::events::webhook::{Delivery, MAX_BACKOFF, backoff};
use keap_relay::events::{Event, receiver};

use crate::Deps;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Without a message id a record cannot be reported alone; failing the whole batch keeps it.
    #[error("an SQS record has no messageId; failing the whole batch so nothing is lost")]
    MissingMessageId,
}

/// What the batch has learnt about the receiver so far. A failed delivery does not hold the
/// rest of the batch back: each record is tried (at most [`TIMEOUT`](keap_relay::events::webhook::TIMEOUT)
/// each, within the function's timeout), because a skipped record would spend one of its
/// receives all the same, and a flaky receiver would see its events dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Receiver {
    Up,
    /// Switched off after a 410: everything waits the longest backoff.
    Off,
}

pub async fn handle(event: SqsEvent, deps: &Deps) -> Result<SqsBatchResponse, DeliveryError> {
    if event.records.iter().any(|record| record.message_id.is_none()) {
        tracing::error!("{}", DeliveryError::MissingMessageId);
        return Err(DeliveryError::MissingMessageId);
    }
    let mut response = SqsBatchResponse::default();
    let Some(webhook) = &deps.webhook else {
        tracing::info!(
            records = event.records.len(),
            "EVENTS_WEBHOOK_URL is not set: events dropped"
        );
        return Ok(response);
    };
    let mut receiver = match &deps.state {
        Some((store, id)) => match receiver::load(store.as_ref(), id).await {
            Ok(state) if state.disabled => Receiver::Off,
            Ok(_) => Receiver::Up,
            Err(error) => {
                tracing::warn!(%error, "cannot read whether the receiver is switched on; trying it");
                Receiver::Up
            }
        },
        None => Receiver::Up,
    };
    let key = match deps.key.events_signing_key().await {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::error!(%error, "cannot sign events: every record of the batch waits its backoff");
            None
        }
    };
    let mut delivered = 0;
    for record in &event.records {
        let message_id = record.message_id.as_deref().unwrap_or_default();
        let attempt = attempt(record);
        let Some(parsed) = Event::from_json(record.body.as_deref().unwrap_or_default()).ok() else {
            tracing::error!(
                message_id,
                poison = true,
                "queued record is not an event; failing it so it reaches the dead-letter queue"
            );
            response.add_failure(message_id);
            continue;
        };
        let wait = match (&receiver, &key) {
            (Receiver::Off, _) => {
                tracing::info!(message_id, event_id = %parsed.id, "the receiver is switched off (410): held back");
                Some(MAX_BACKOFF)
            }
            (Receiver::Up, None) => Some(backoff(attempt)),
            (Receiver::Up, Some(key)) => match webhook.deliver(&parsed, key, SystemTime::now()).await {
                Delivery::Delivered { status } => {
                    tracing::info!(message_id, event_id = %parsed.id, event_type = parsed.kind.as_str(), status, attempt, "event delivered");
                    delivered += 1;
                    None
                }
                Delivery::Gone => {
                    tracing::warn!(message_id, event_id = %parsed.id, "the receiver answered 410 Gone: switching it off until the operator switches it on in the console");
                    switch_off(deps).await;
                    receiver = Receiver::Off;
                    Some(MAX_BACKOFF)
                }
                Delivery::Retry { detail, retry_after } => {
                    let wait = retry_after
                        .unwrap_or_else(|| backoff(attempt))
                        .max(Duration::from_secs(1));
                    tracing::warn!(message_id, event_id = %parsed.id, attempt, detail, wait_seconds = wait.as_secs(), "event not delivered; trying again later");
                    Some(wait)
                }
            },
        };
        if let Some(wait) = wait {
            later(deps, record, wait).await;
            response.add_failure(message_id);
        }
    }
    tracing::info!(
        records = event.records.len(),
        delivered,
        failed = response.batch_item_failures.len(),
        "events batch done"
    );
    Ok(response)
}

/// SQS's delivery count of the record (1 on the first attempt).
fn attempt(record: &SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

async fn later(deps: &Deps, record: &SqsMessage, wait: Duration) {
    let (Some(retry), Some(handle)) = (&deps.retry, record.receipt_handle.as_deref()) else {
        return;
    };
    if let Err(error) = retry.retry_after(handle, wait).await {
        tracing::warn!(%error, "could not set the record's backoff; SQS's visibility timeout applies");
    }
}

async fn switch_off(deps: &Deps) {
    let Some((store, id)) = &deps.state else { return };
    if let Err(error) = receiver::disable(store.as_ref(), id, "the receiver answered 410 Gone", SystemTime::now()).await
    {
        tracing::error!(%error, "could not switch the receiver off after its 410");
    }
}
