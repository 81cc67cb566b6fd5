//! `signup-retry`: signups that `signup` queued because Keap could not take them at once.
//!
//! Each record goes through the same [`SignupService`] as a live request. The answer lists
//! in `batchItemFailures` only the records that did not reach Keap, so SQS redelivers those
//! alone (the event source mapping must enable `ReportBatchItemFailures`).
//!
//! Poison messages (not a valid signup, or a contact Keap refuses with a 4xx) are failed too,
//! not acknowledged: after the queue's `maxReceiveCount` SQS moves them to the dead-letter
//! queue, so nothing is silently dropped. The reason is logged with the message id on every
//! attempt (`poison: true`), which is what an operator reads next to the dead letter.
//!
//! Once Keap is found unavailable, the remaining records of the batch are failed without
//! calling Keap: they come back after the visibility timeout.
//!
//! Keap's quota (docs/pacing.md): when Keap or this process's pacer says when to try again
//! (`Retry-After`, or the quota's next window), the record and the rest of the batch are sent
//! back to the queue with that delay as an SQS message timer and acknowledged, instead of
//! holding the function or using up receive counts; the same [`PARK_LIMIT`] bounds it.
//!
//! Keap *not connected* (never connected, or waiting for an administrator to re-authorize) is
//! different: that can last days, far longer than `maxReceiveCount` redeliveries. So those
//! signups are parked: sent again to the queue with SQS's longest delay and acknowledged,
//! until they have waited [`PARK_LIMIT`]; only then are they left to the dead-letter queue.

use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use keap_relay::metrics;
use keap_relay::signup::{QueuedSignup, SignupError, SignupQueue, SignupService};

/// How long a signup may wait for Keap to be reconnected before it goes to the dead-letter
/// queue (the dead-letter queue then keeps it 14 days more).
pub const PARK_LIMIT: Duration = Duration::from_secs(12 * 24 * 3600);
/// SQS's longest message delay: a parked signup is looked at again every 15 minutes.
const PARK_DELAY: Duration = Duration::from_secs(900);

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// Without a message id a record cannot be reported alone; failing the whole batch keeps it.
    #[error("an SQS record has no messageId; failing the whole batch so nothing is lost")]
    MissingMessageId,
}

/// What one attempt at a record found.
enum Attempt {
    /// Keap took the signup.
    Delivered,
    /// Keap could not take it now (why); SQS will redeliver it.
    Transient(String),
    /// No usable Keap connection: park it (see the module docs).
    Disconnected(QueuedSignup),
    /// Keap's quota asks to wait this long: delay it with a message timer.
    Deferred(QueuedSignup, Duration),
    /// It can never succeed; failed until SQS dead-letters it.
    Poison,
}

/// What this batch has learnt about Keap so far.
#[derive(Clone, PartialEq, Eq)]
enum KeapSeen {
    Up,
    /// Unavailable (why): skip (fail) the rest without calling it.
    Down(String),
    /// Not connected: park the rest without calling it.
    Disconnected,
    /// The quota asks to wait this long: delay the rest without calling it.
    Deferred(Duration),
}

/// Processes one SQS batch without parking (every failure is left to SQS's redelivery).
pub async fn handle(event: SqsEvent, service: &SignupService) -> Result<SqsBatchResponse, RetryError> {
    handle_with_parking(event, service, None).await
}

/// Processes one SQS batch; signups that wait for Keap to be reconnected go back to `parking`
/// (the same queue) with a delay instead of using up their receive count.
pub async fn handle_with_parking(
    event: SqsEvent,
    service: &SignupService,
    parking: Option<&dyn SignupQueue>,
) -> Result<SqsBatchResponse, RetryError> {
    if event.records.iter().any(|record| record.message_id.is_none()) {
        tracing::error!("{}", RetryError::MissingMessageId);
        return Err(RetryError::MissingMessageId);
    }
    let mut response = SqsBatchResponse::default();
    let mut keap = KeapSeen::Up;
    let mut parked = 0;
    let mut deferred = 0;
    for record in &event.records {
        let message_id = record.message_id.as_deref().unwrap_or_default();
        let attempt = match &keap {
            KeapSeen::Up => process(record, message_id, service).await,
            KeapSeen::Down(reason) => {
                // Logged per record with the earlier failure: a message skipped on every
                // receive reaches the dead-letter queue, and this line is its reason.
                let receive_count = receive_count(record);
                tracing::warn!(
                    message_id,
                    receive_count,
                    reason,
                    "Keap failed earlier in this batch; not tried, SQS will redeliver it"
                );
                Attempt::Transient(reason.clone())
            }
            KeapSeen::Disconnected => match parse(record, message_id) {
                Some(queued) => Attempt::Disconnected(queued),
                None => Attempt::Poison,
            },
            KeapSeen::Deferred(wait) => match parse(record, message_id) {
                Some(queued) => Attempt::Deferred(queued, *wait),
                None => Attempt::Poison,
            },
        };
        let acknowledged = match attempt {
            Attempt::Delivered => true,
            Attempt::Poison => false,
            Attempt::Transient(reason) => {
                keap = KeapSeen::Down(reason);
                false
            }
            Attempt::Disconnected(queued) => {
                keap = KeapSeen::Disconnected;
                let done = park(parking, &queued, message_id).await;
                parked += usize::from(done);
                done
            }
            Attempt::Deferred(queued, wait) => {
                keap = KeapSeen::Deferred(wait);
                let done = requeue(parking, &queued, message_id, timer(wait), "Keap's quota asks to wait").await;
                deferred += usize::from(done);
                done
            }
        };
        if !acknowledged {
            response.add_failure(message_id);
        }
    }
    tracing::info!(
        records = event.records.len(),
        failed = response.batch_item_failures.len(),
        parked,
        deferred,
        "signup-retry batch done"
    );
    Ok(response)
}

/// Sends a signup that waits for a reconnection back to the queue. False: leave it to SQS.
async fn park(parking: Option<&dyn SignupQueue>, queued: &QueuedSignup, message_id: &str) -> bool {
    requeue(parking, queued, message_id, PARK_DELAY, "Keap is not connected").await
}

/// An SQS message timer for `wait`: whole seconds, rounded up, 1 s to 15 minutes.
fn timer(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_millis().div_ceil(1000).clamp(1, PARK_DELAY.as_secs() as u128) as u64)
}

/// Sends a signup back to its queue with `delay` and acknowledges the record (true), unless
/// it has waited [`PARK_LIMIT`] already or the queue refuses (false: leave it to SQS).
async fn requeue(
    parking: Option<&dyn SignupQueue>,
    queued: &QueuedSignup,
    message_id: &str,
    delay: Duration,
    why: &'static str,
) -> bool {
    let Some(queue) = parking else { return false };
    let waited = SystemTime::now()
        .duration_since(queued.first_seen_at)
        .unwrap_or_default();
    if waited > PARK_LIMIT {
        tracing::error!(
            message_id,
            signup_id = %queued.id,
            waited_hours = waited.as_secs() / 3600,
            why,
            "the signup has waited too long; leaving it to the dead-letter queue"
        );
        return false;
    }
    match queue.enqueue(queued, delay).await {
        Ok(()) => {
            tracing::info!(message_id, signup_id = %queued.id, delay_s = delay.as_secs(), why, "signup sent back to the queue with a delay");
            true
        }
        Err(error) => {
            tracing::warn!(message_id, signup_id = %queued.id, %error, why, "could not requeue the signup; SQS will redeliver it");
            false
        }
    }
}

/// SQS's delivery count of the record, for logs.
fn receive_count(record: &SqsMessage) -> &str {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .map(String::as_str)
        .unwrap_or("?")
}

fn parse(record: &SqsMessage, message_id: &str) -> Option<QueuedSignup> {
    let receive_count = receive_count(record);
    match QueuedSignup::from_message(record.body.as_deref().unwrap_or_default()) {
        Ok(queued) => Some(queued),
        Err(invalid) => {
            tracing::error!(
                message_id,
                receive_count,
                poison = true,
                code = invalid.code(),
                reason = %invalid,
                "queued message is not a valid signup; failing it so it reaches the dead-letter queue"
            );
            None
        }
    }
}

async fn process(record: &SqsMessage, message_id: &str, service: &SignupService) -> Attempt {
    let receive_count = receive_count(record);
    let Some(queued) = parse(record, message_id) else {
        return Attempt::Poison;
    };
    let signup_id = queued.id.to_string();
    match service.process(&queued.signup).await {
        Ok(outcome) => {
            tracing::info!(
                message_id,
                signup_id,
                contact_id = outcome.contact_id,
                created = outcome.created,
                "queued signup delivered"
            );
            Attempt::Delivered
        }
        Err(error @ SignupError::Rejected { .. }) => {
            tracing::error!(
                message_id,
                signup_id,
                receive_count,
                poison = true,
                code = error.code(),
                reason = %error,
                "Keap refuses this signup; failing it so it reaches the dead-letter queue"
            );
            Attempt::Poison
        }
        Err(SignupError::Unavailable {
            retry_after: Some(wait),
            detail,
        }) => {
            tracing::info!(message_id, signup_id, receive_count, wait_ms = wait.as_millis() as u64, reason = %detail, "Keap's quota asks to wait");
            Attempt::Deferred(queued, wait)
        }
        Err(error @ SignupError::NotConnected { .. }) => {
            tracing::warn!(message_id, signup_id, receive_count, reason = %error, "Keap is not connected");
            Attempt::Disconnected(queued)
        }
        Err(error) => {
            tracing::warn!(message_id, signup_id, receive_count, code = error.code(), reason = %error, "Keap cannot take queued signups now");
            if metrics::mentions_quota_exceeded(&error.to_string()) {
                // The token secret cannot take new versions (up to 24 h): alarmed, see SecretVersionQuotaAlarm.
                let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "signup-retry".into());
                println!("{}", metrics::quota_exceeded_line(function));
            }
            Attempt::Transient(error.to_string())
        }
    }
}
