//! One queued welcome record sends a part at a time (docs/welcome-and-fields.md).
//!
//! Two records can be owed the same part of the same contact: one written ahead by an attempt
//! that created the contact and then failed before the welcome tag, one written ahead again by
//! the retry that newly applied it. When that retry's own send was throttled, both records
//! find the tag claimed, wait out the recheck time, find nothing in Keap's sent-email listing
//! and would both send: inside Keap's listing delay, neither can see the other's send.
//!
//! So right before it sends, a record takes the part's *send slot*: a conditional write in the
//! relay's state table (`SIGNUP_REPLAY_TABLE`) that holds for the recheck time. A record that
//! finds the slot held waits until it frees, then reads the listing again, where the holder's
//! send now shows. The same holds for one record received twice (its process was killed
//! mid-send): the second receive waits and looks instead of sending again.
//!
//! - [`WelcomeSendSlots`]: the port. [`DynamoSendSlots`] in production (one small item per
//!   contact and part under a reserved key, expiring a day after the hold),
//!   [`MemorySendSlots`] for the local run and tests (this process only).
//! - Fail closed: a slot that cannot be taken is a transient failure, so the record is
//!   retried later; a welcome sent twice cannot be taken back.
//! - A send that surely did not go out (a 429, no token, a refusal) frees its slot at once;
//!   one that may have gone out keeps it for the whole hold.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::queue::WelcomePart;
use super::replay::{ReplayStoreError, conditional};

/// How long after its hold a slot's item stays in the table (DynamoDB's TTL deletes it).
const ITEM_LIFE_AFTER_HOLD: Duration = Duration::from_secs(24 * 3600);

/// Slots the memory adapter keeps before it drops the ones that have freed.
const MEMORY_SLOTS: usize = 10_000;

/// The outcome of asking for a send slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendSlot {
    /// Taken: this record sends now.
    Taken,
    /// Another send holds it until then: wait, then read Keap's listing again.
    HeldUntil(SystemTime),
}

/// One hold of a send slot: a contact's welcome part, from `from` for `hold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotHold {
    pub contact_id: i64,
    pub part: WelcomePart,
    pub from: SystemTime,
    pub hold: Duration,
}

impl SlotHold {
    pub fn until(&self) -> SystemTime {
        self.from + self.hold
    }

    fn key(&self) -> (i64, WelcomePart) {
        (self.contact_id, self.part)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendSlotError {
    /// The state table could not be read or written: retried later (fail closed).
    #[error("the welcome send slots are unavailable: {0}")]
    Unavailable(String),
}

impl From<ReplayStoreError> for SendSlotError {
    fn from(error: ReplayStoreError) -> Self {
        let ReplayStoreError::Unavailable(detail) = error;
        SendSlotError::Unavailable(detail)
    }
}

/// Where the send slots live.
#[async_trait]
pub trait WelcomeSendSlots: Send + Sync {
    /// Takes the slot for `hold`, unless another send holds it.
    async fn take(&self, hold: &SlotHold) -> Result<SendSlot, SendSlotError>;

    /// Frees the slot taken for `hold` when the send surely did not go out (a 429, no usable
    /// token, a refusal), so the next record need not wait out the hold. A slot taken again
    /// since (another hold) is left alone.
    async fn release(&self, hold: &SlotHold) -> Result<(), SendSlotError>;
}

/// The slots of this process.
#[derive(Debug, Default)]
pub struct MemorySendSlots {
    held: Mutex<HashMap<(i64, WelcomePart), SystemTime>>,
}

impl MemorySendSlots {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WelcomeSendSlots for MemorySendSlots {
    async fn take(&self, hold: &SlotHold) -> Result<SendSlot, SendSlotError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = held.get(&hold.key())
            && *until > hold.from
        {
            return Ok(SendSlot::HeldUntil(*until));
        }
        if held.len() >= MEMORY_SLOTS {
            held.retain(|_, until| *until > hold.from);
        }
        held.insert(hold.key(), hold.until());
        Ok(SendSlot::Taken)
    }

    async fn release(&self, hold: &SlotHold) -> Result<(), SendSlotError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(&hold.key()) == Some(&hold.until()) {
            held.remove(&hold.key());
        }
        Ok(())
    }
}

/// The slots as items of the relay's state table (partition key `pk`, TTL `expires_at`), every
/// call bounded like the replay records' (`signup::replay::conditional`).
#[derive(Debug)]
pub struct DynamoSendSlots {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The table key of a slot. Replay keys are SHA-256 hex, so a key with `#` cannot be one.
pub fn slot_key(contact_id: i64, part: WelcomePart) -> String {
    format!("welcome-send#{contact_id}#{}", part.as_str())
}

fn millis(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

impl DynamoSendSlots {
    /// `client` should carry `signup::replay::with_replay_bounds`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Until when the slot is held, as stored; `None` when it is gone or unreadable.
    async fn held_until(&self, key: &str) -> Result<Option<SystemTime>, SendSlotError> {
        let read = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.to_owned()))
            .consistent_read(true)
            .send();
        let item = conditional("GetItem", read, |_| false).await?.and_then(|o| o.item);
        // Stored state is outside input: a value the relay would not write reads as none.
        let until = item
            .as_ref()
            .and_then(|item| item.get("held_until_ms")?.as_n().ok()?.parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        Ok(until)
    }
}

#[async_trait]
impl WelcomeSendSlots for DynamoSendSlots {
    async fn take(&self, hold: &SlotHold) -> Result<SendSlot, SendSlotError> {
        let key = slot_key(hold.contact_id, hold.part);
        let (now, until) = (hold.from, hold.until());
        let expires = (until + ITEM_LIFE_AFTER_HOLD)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(key.clone()))
            .item("held_until_ms", AttributeValue::N(millis(until).to_string()))
            .item("expires_at", AttributeValue::N(expires.to_string()))
            .condition_expression("attribute_not_exists(pk) OR held_until_ms < :now")
            .expression_attribute_values(":now", AttributeValue::N(millis(now).to_string()))
            .send();
        if conditional("PutItem", put, |e| e.is_conditional_check_failed_exception())
            .await?
            .is_some()
        {
            return Ok(SendSlot::Taken);
        }
        // Held. A holder that freed it meanwhile, or an unreadable item, costs one hold of
        // waiting: never a second send.
        let held = self.held_until(&key).await?.filter(|at| *at > now);
        Ok(SendSlot::HeldUntil(held.unwrap_or(until).min(until)))
    }

    async fn release(&self, hold: &SlotHold) -> Result<(), SendSlotError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(slot_key(hold.contact_id, hold.part)))
            .condition_expression("held_until_ms = :until")
            .expression_attribute_values(":until", AttributeValue::N(millis(hold.until()).to_string()))
            .send();
        // Taken again by another record since: theirs now, not ours to free.
        conditional("DeleteItem", delete, |e| e.is_conditional_check_failed_exception()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_cannot_be_a_replay_key() {
        let key = slot_key(7, WelcomePart::Goal);
        assert_eq!(key, "welcome-send#7#goal");
        assert!(!key.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
