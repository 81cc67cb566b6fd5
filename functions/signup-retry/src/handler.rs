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
//! Once Keap is found unavailable or not connected, the remaining records of the batch are
//! failed without calling Keap: they come back after the visibility timeout.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use keap_relay::signup::{QueuedSignup, SignupError, SignupService};

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// Without a message id a record cannot be reported alone; failing the whole batch keeps it.
    #[error("an SQS record has no messageId; failing the whole batch so nothing is lost")]
    MissingMessageId,
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Keap took the signup.
    Delivered,
    /// Keap could not take it now; SQS will redeliver it.
    Transient,
    /// It can never succeed; failed until SQS dead-letters it.
    Poison,
    /// Not tried because Keap already failed earlier in this batch.
    Skipped,
}

impl RecordOutcome {
    fn acknowledged(self) -> bool {
        self == RecordOutcome::Delivered
    }
}

/// Processes one SQS batch.
pub async fn handle(event: SqsEvent, service: &SignupService) -> Result<SqsBatchResponse, RetryError> {
    if event.records.iter().any(|record| record.message_id.is_none()) {
        tracing::error!("{}", RetryError::MissingMessageId);
        return Err(RetryError::MissingMessageId);
    }
    let mut response = SqsBatchResponse::default();
    let mut keap_down = false;
    for record in &event.records {
        let message_id = record.message_id.as_deref().unwrap_or_default();
        let outcome = if keap_down { RecordOutcome::Skipped } else { process(record, message_id, service).await };
        keap_down |= outcome == RecordOutcome::Transient;
        if !outcome.acknowledged() {
            response.add_failure(message_id);
        }
    }
    tracing::info!(
        records = event.records.len(),
        failed = response.batch_item_failures.len(),
        "signup-retry batch done"
    );
    Ok(response)
}

async fn process(record: &SqsMessage, message_id: &str, service: &SignupService) -> RecordOutcome {
    let receive_count = record.attributes.get("ApproximateReceiveCount").map(String::as_str).unwrap_or("?");
    let queued = match QueuedSignup::from_message(record.body.as_deref().unwrap_or_default()) {
        Ok(queued) => queued,
        Err(invalid) => {
            tracing::error!(
                message_id,
                receive_count,
                poison = true,
                code = invalid.code(),
                reason = %invalid,
                "queued message is not a valid signup; failing it so it reaches the dead-letter queue"
            );
            return RecordOutcome::Poison;
        }
    };
    let signup_id = queued.id.to_string();
    match service.process(&queued.signup).await {
        Ok(outcome) => {
            tracing::info!(message_id, signup_id, contact_id = outcome.contact_id, created = outcome.created, "queued signup delivered");
            RecordOutcome::Delivered
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
            RecordOutcome::Poison
        }
        Err(error) => {
            tracing::warn!(message_id, signup_id, receive_count, code = error.code(), reason = %error, "Keap cannot take queued signups now");
            RecordOutcome::Transient
        }
    }
}
