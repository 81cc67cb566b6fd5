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
//! Once Keap is found unavailable, the remaining records of the batch are not tried. Each
//! record Keap could not take is sent back to the queue with a delay of half its age (1 s to
//! 15 minutes) and acknowledged, so an outage does not use up receive counts and dead-letter
//! signups and welcomes that would go through minutes later; after [`BACK_OFF_LIMIT`] they
//! are failed and left to SQS. Receive counts are then spent only by crashes and timeouts.
//!
//! A welcome queued on its own (`{"welcome": "email" | "template" | "goal", "contact_id", …}`, see
//! [`keap_relay::signup::QueuedWelcome`]) goes through [`SignupService::retry_welcome`]: when the
//! last send may have gone out, Keap's sent-email listing is read first; a welcome that is not
//! listed yet and may still be is sent back to the queue with a delay (a new message, since it
//! may carry a new send time) and acknowledged.
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

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use keap_relay::events::{Event, EventSink};
use keap_relay::metrics;
use keap_relay::signup::{QueuedMessage, QueuedWelcome, SignupError, SignupQueue, SignupService, WelcomeRetry};

/// How long a signup may wait for Keap to be reconnected before it goes to the dead-letter
/// queue (the dead-letter queue then keeps it 14 days more).
pub const PARK_LIMIT: Duration = Duration::from_secs(12 * 24 * 3600);
/// Records of a batch handled at once after the first: one after another, Keap's latency would
/// keep an environment far below its paced share of the quota (docs/pacing.md).
const RECORDS_AT_ONCE: usize = 5;
/// How long a message Keap keeps failing (5xx, timeouts, a failing token store) is sent back
/// with a growing delay before failures are left to SQS's receive count and dead-letter queue.
const BACK_OFF_LIMIT: Duration = Duration::from_secs(24 * 3600);
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
    /// Keap could not take it now (why): back off (see the module docs).
    Transient(String, QueuedMessage),
    /// No usable Keap connection: park it (see the module docs).
    Disconnected(QueuedMessage),
    /// Keap's quota asks to wait this long: delay it with a message timer.
    Deferred(QueuedMessage, Duration),
    /// It can never succeed; failed until SQS dead-letters it.
    Poison,
    /// A welcome to look at again after `delay` (as this new message); Keap is fine.
    Later(QueuedWelcome, Duration),
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
    handle_with_events(event, service, parking, None).await
}

/// [`handle_with_parking`], telling the product (`events`) what became of each signup:
/// `signup.delivered`, and `signup.failed` for one that can never reach Keap.
pub async fn handle_with_events(
    event: SqsEvent,
    service: &SignupService,
    parking: Option<&dyn SignupQueue>,
    events: Option<&dyn EventSink>,
) -> Result<SqsBatchResponse, RetryError> {
    if event.records.iter().any(|record| record.message_id.is_none()) {
        tracing::error!("{}", RetryError::MissingMessageId);
        return Err(RetryError::MissingMessageId);
    }
    // The first record finds out whether Keap takes calls; the rest then go at once (at most
    // RECORDS_AT_ONCE), each still waiting for its paced turn.
    let keap = Mutex::new(KeapSeen::Up);
    let mut records = event.records.iter();
    let mut tallies = Vec::with_capacity(event.records.len());
    if let Some(first) = records.next() {
        tallies.push(handle_record(first, service, parking, events, &keap).await);
    }
    // Built first, then polled (a future does nothing until then): a closure inside the
    // stream would make the handler's future too general to be Send for a spawned task.
    let rest: Vec<_> = records
        .map(|record| handle_record(record, service, parking, events, &keap))
        .collect();
    let rest: Vec<(&str, Tally)> = futures::stream::iter(rest)
        .buffer_unordered(RECORDS_AT_ONCE)
        .collect()
        .await;
    tallies.extend(rest);

    let mut response = SqsBatchResponse::default();
    let count = |wanted: Tally| tallies.iter().filter(|(_, tally)| *tally == wanted).count();
    let (parked, deferred, backed_off) = (count(Tally::Parked), count(Tally::Deferred), count(Tally::BackedOff));
    // Reported in the batch's order, as SQS listed the records.
    for record in &event.records {
        let message_id = record.message_id.as_deref().unwrap_or_default();
        if tallies
            .iter()
            .any(|(id, tally)| *id == message_id && *tally == Tally::Failed)
        {
            response.add_failure(message_id);
        }
    }
    tracing::info!(
        records = event.records.len(),
        failed = response.batch_item_failures.len(),
        parked,
        deferred,
        backed_off,
        "signup-retry batch done"
    );
    Ok(response)
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tally {
    /// Done, or sent back to the queue to be looked at again: acknowledged.
    Done,
    Parked,
    Deferred,
    BackedOff,
    /// Left to SQS's redelivery (and in the end its dead-letter queue).
    Failed,
}

fn tally(acknowledged: bool, kind: Tally) -> Tally {
    if acknowledged { kind } else { Tally::Failed }
}

/// Handles one record, as far as what the batch has learnt of Keap (`keap`) allows, and
/// tells the batch what this record learnt.
async fn handle_record<'a>(
    record: &'a SqsMessage,
    service: &SignupService,
    parking: Option<&dyn SignupQueue>,
    events: Option<&dyn EventSink>,
    keap: &Mutex<KeapSeen>,
) -> (&'a str, Tally) {
    let message_id = record.message_id.as_deref().unwrap_or_default();
    let seen = keap.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let attempt = match seen {
        KeapSeen::Up => process(record, message_id, service, events).await,
        KeapSeen::Down(reason) => {
            // Logged per record with the earlier failure: a message skipped until it is
            // dead-lettered has this line as its reason.
            let receive_count = receive_count(record);
            tracing::warn!(
                message_id,
                receive_count,
                reason,
                "Keap failed earlier in this batch; not tried"
            );
            match parse(record, message_id) {
                Some(queued) => Attempt::Transient(reason, queued),
                None => Attempt::Poison,
            }
        }
        KeapSeen::Disconnected => match parse(record, message_id) {
            Some(queued) => Attempt::Disconnected(queued),
            None => Attempt::Poison,
        },
        KeapSeen::Deferred(wait) => match parse(record, message_id) {
            Some(queued) => Attempt::Deferred(queued, wait),
            None => Attempt::Poison,
        },
    };
    let learnt = |now: KeapSeen| *keap.lock().unwrap_or_else(|e| e.into_inner()) = now;
    let tally = match attempt {
        Attempt::Delivered => Tally::Done,
        Attempt::Poison => Tally::Failed,
        Attempt::Transient(reason, queued) => {
            learnt(KeapSeen::Down(reason));
            tally(back_off(parking, &queued, message_id).await, Tally::BackedOff)
        }
        Attempt::Disconnected(queued) => {
            learnt(KeapSeen::Disconnected);
            tally(park(parking, &queued, message_id).await, Tally::Parked)
        }
        Attempt::Later(welcome, delay) => {
            let queued = QueuedMessage::Welcome(welcome);
            let why = "the welcome is checked again later";
            tally(requeue(parking, &queued, message_id, delay, why).await, Tally::Done)
        }
        Attempt::Deferred(queued, wait) => {
            learnt(KeapSeen::Deferred(wait));
            let why = "Keap's quota asks to wait";
            tally(
                requeue(parking, &queued, message_id, timer(wait), why).await,
                Tally::Deferred,
            )
        }
    };
    (message_id, tally)
}

/// Sends a message that waits for a reconnection back to the queue. False: leave it to SQS.
async fn park(parking: Option<&dyn SignupQueue>, queued: &QueuedMessage, message_id: &str) -> bool {
    requeue(
        parking,
        queued,
        message_id,
        PARK_DELAY,
        "Keap is not connected: signup parked until it is",
    )
    .await
}

/// Sends a message Keap could not take now back to the queue, delayed by half its age (1 s to
/// 15 minutes): each try waits longer, and no receive count is used up by an outage. After
/// [`BACK_OFF_LIMIT`], or without a queue, the record is failed and left to SQS. False: failed.
async fn back_off(parking: Option<&dyn SignupQueue>, queued: &QueuedMessage, message_id: &str) -> bool {
    let age = SystemTime::now()
        .duration_since(queued.first_seen_at())
        .unwrap_or_default();
    if age > BACK_OFF_LIMIT {
        tracing::warn!(
            message_id,
            age_hours = age.as_secs() / 3600,
            "Keap has failed this message for a day; SQS will redeliver it until it is dead-lettered"
        );
        return false;
    }
    requeue(
        parking,
        queued,
        message_id,
        timer(age / 2),
        "Keap cannot take it now: backing off",
    )
    .await
}

/// An SQS message timer for `wait`: whole seconds, rounded up, 1 s to 15 minutes.
fn timer(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_millis().div_ceil(1000).clamp(1, PARK_DELAY.as_secs() as u128) as u64)
}

/// Sends a message back to its queue with `delay` and acknowledges the record (true), unless
/// it has waited [`PARK_LIMIT`] already or the queue refuses (false: leave it to SQS).
async fn requeue(
    parking: Option<&dyn SignupQueue>,
    queued: &QueuedMessage,
    message_id: &str,
    delay: Duration,
    why: &'static str,
) -> bool {
    let Some(queue) = parking else { return false };
    let id = queued.id();
    let waited = SystemTime::now()
        .duration_since(queued.first_seen_at())
        .unwrap_or_default();
    if waited > PARK_LIMIT {
        tracing::error!(
            message_id,
            signup_id = %id,
            waited_hours = waited.as_secs() / 3600,
            why,
            "the signup has waited too long; leaving it to the dead-letter queue"
        );
        return false;
    }
    let requeued = match queued {
        QueuedMessage::Signup(signup) => queue.enqueue(signup, delay).await,
        QueuedMessage::Welcome(welcome) => queue.enqueue_welcome(welcome, delay).await,
    };
    match requeued {
        Ok(()) => {
            tracing::info!(message_id, signup_id = %id, delay_s = delay.as_secs(), "{why}; sent back to the queue with a delay");
            true
        }
        Err(error) => {
            tracing::warn!(message_id, signup_id = %id, %error, why, "could not send it back to the queue; SQS will redeliver it");
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

fn parse(record: &SqsMessage, message_id: &str) -> Option<QueuedMessage> {
    let receive_count = receive_count(record);
    match QueuedMessage::from_message(record.body.as_deref().unwrap_or_default()) {
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

async fn process(
    record: &SqsMessage,
    message_id: &str,
    service: &SignupService,
    events: Option<&dyn EventSink>,
) -> Attempt {
    let receive_count = receive_count(record);
    let queued = match parse(record, message_id) {
        None => {
            if receive_count == "1" {
                let event = Event::signup_failed(
                    None,
                    None,
                    "invalid_message",
                    "the queued message is not a valid signup",
                );
                keap_relay::events::emit(events, event).await;
            }
            return Attempt::Poison;
        }
        Some(QueuedMessage::Signup(queued)) => *queued,
        Some(QueuedMessage::Welcome(welcome)) => {
            return retry_welcome(welcome, message_id, receive_count, service, events).await;
        }
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
            let event = Event::signup_delivered(&queued.signup.email, &outcome, Some(queued.id));
            keap_relay::events::emit(events, event).await;
            Attempt::Delivered
        }
        Err(error @ (SignupError::Rejected { .. } | SignupError::Invalid { .. })) => {
            tracing::error!(
                message_id,
                signup_id,
                receive_count,
                poison = true,
                code = error.code(),
                reason = %error,
                "Keap refuses this signup; failing it so it reaches the dead-letter queue"
            );
            // Once per signup (its first refusal), though it is failed until SQS dead-letters it.
            if receive_count == "1" {
                let event = Event::signup_failed(
                    Some(&queued.signup.email),
                    Some(queued.id),
                    error.code(),
                    &error.to_string(),
                );
                keap_relay::events::emit(events, event).await;
            }
            Attempt::Poison
        }
        Err(SignupError::Unavailable {
            retry_after: Some(wait),
            detail,
        }) => {
            tracing::info!(message_id, signup_id, receive_count, wait_ms = wait.as_millis() as u64, reason = %detail, "Keap's quota asks to wait");
            Attempt::Deferred(QueuedMessage::Signup(Box::new(queued)), wait)
        }
        Err(error @ SignupError::NotConnected { .. }) => {
            tracing::warn!(message_id, signup_id, receive_count, reason = %error, "Keap is not connected");
            Attempt::Disconnected(QueuedMessage::Signup(Box::new(queued)))
        }
        Err(error) => {
            tracing::warn!(message_id, signup_id, receive_count, code = error.code(), reason = %error, "Keap cannot take queued signups now");
            if metrics::mentions_quota_exceeded(&error.to_string()) {
                // The token secret cannot take new versions (up to 24 h): alarmed, see SecretVersionQuotaAlarm.
                let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "signup-retry".into());
                println!("{}", metrics::quota_exceeded_line(function));
            }
            Attempt::Transient(error.to_string(), QueuedMessage::Signup(Box::new(queued)))
        }
    }
}

async fn retry_welcome(
    welcome: QueuedWelcome,
    message_id: &str,
    receive_count: &str,
    service: &SignupService,
    events: Option<&dyn EventSink>,
) -> Attempt {
    let (welcome_id, contact_id, part) = (welcome.id.to_string(), welcome.contact_id, welcome.part.as_str());
    match service.retry_welcome(&welcome).await {
        Ok(WelcomeRetry::Sent { started }) => {
            // A goal that started nothing was reported by the service (warning, metric, notice
            // for /status): SignupService::report_goal.
            let campaigns: Vec<i64> = started.iter().map(|s| s.campaign_id).collect();
            tracing::info!(
                message_id,
                welcome_id,
                contact_id,
                part,
                ?campaigns,
                "queued welcome sent"
            );
            keap_relay::events::emit(events, Event::welcome_sent(contact_id, None, part)).await;
            Attempt::Delivered
        }
        Ok(WelcomeRetry::AlreadySent) => {
            tracing::info!(
                message_id,
                welcome_id,
                contact_id,
                part,
                "queued welcome was sent earlier after all"
            );
            Attempt::Delivered
        }
        Ok(WelcomeRetry::NotConfigured) => {
            tracing::warn!(
                message_id,
                welcome_id,
                contact_id,
                part,
                "this deployment no longer sends this welcome; dropping it"
            );
            Attempt::Delivered
        }
        Ok(WelcomeRetry::Later { welcome, delay }) => Attempt::Later(welcome, delay),
        Err(error @ (SignupError::Rejected { .. } | SignupError::Invalid { .. })) => {
            tracing::error!(
                message_id,
                welcome_id,
                contact_id,
                part,
                receive_count,
                poison = true,
                code = error.code(),
                reason = %error,
                "Keap refuses this welcome; failing it so it reaches the dead-letter queue"
            );
            Attempt::Poison
        }
        Err(SignupError::Unavailable {
            retry_after: Some(wait),
            detail,
        }) => {
            tracing::info!(message_id, welcome_id, receive_count, wait_ms = wait.as_millis() as u64, reason = %detail, "Keap's quota asks to wait");
            Attempt::Deferred(QueuedMessage::Welcome(welcome), wait)
        }
        Err(error @ SignupError::NotConnected { .. }) => {
            tracing::warn!(message_id, welcome_id, receive_count, reason = %error, "Keap is not connected");
            Attempt::Disconnected(QueuedMessage::Welcome(welcome))
        }
        Err(error) => {
            tracing::warn!(message_id, welcome_id, receive_count, code = error.code(), reason = %error, "Keap cannot take queued welcomes now");
            Attempt::Transient(error.to_string(), QueuedMessage::Welcome(welcome))
        }
    }
}
