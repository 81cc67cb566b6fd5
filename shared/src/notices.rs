//! Notices the functions leave for the operator console (`/status`, `/admin`): what one function
//! saw that another must show (docs/welcome-and-fields.md).
//!
//! Today one: `KEAP_WELCOME_GOAL` was achieved but no published campaign listens to it (Keap's
//! v1 achieve answered an empty list, v2 no results). The goal is achieved by `signup` and
//! `signup-retry`, the console is served by `oauth`, and Keap's v1 API has no read-only way to
//! list a goal's listeners: so the achieving functions record what they saw here.
//!
//! - [`Notices`]: the port. [`DynamoNotices`] in production: one item, under a reserved key, in
//!   the relay's small state table (`SIGNUP_REPLAY_TABLE`, shared with `signup::replay`),
//!   expiring [`NOTICE_TTL`] after it was last seen, so a fixed configuration stops being
//!   reported. [`MemoryNotices`] for the local run (one instance shared by every function) and
//!   tests, and as the fallback without a table (then only this process's console sees it).
//! - Written at most once per [`WRITE_INTERVAL`] per process for the same notice ([`WriteGate`]):
//!   a stream of signups does not write per signup.
//! - Fail open: a notice that cannot be written or read is logged by the caller, never fails a
//!   signup or the console.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;

use crate::signup::replay::{ReplayStoreError, conditional};

/// How long a notice is shown after it was last seen.
pub const NOTICE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Shortest time between two writes of the same notice by one process.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(60);

/// Longest goal label kept or read back (`integration:call_name` is far shorter).
pub const MAX_GOAL_LABEL: usize = 512;

/// The table key of the notice. Replay keys are SHA-256 hex, so a key with `#` and `_`
/// cannot be one.
pub const GOAL_NOTICE_KEY: &str = "notice#welcome_goal_without_listener";

/// The welcome goal was achieved and nothing listened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoalNotice {
    /// The goal's label (`integration:call_name`, `automation:<id>:<goal_id>`).
    pub goal: String,
    #[serde(serialize_with = "rfc3339")]
    pub first_seen_at: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub last_seen_at: SystemTime,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_seconds(*at))
}

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// The notice could not be read or written: logged, and the work goes on without it.
    #[error("the notices are unavailable: {0}")]
    Unavailable(String),
}

impl From<ReplayStoreError> for NoticeError {
    fn from(error: ReplayStoreError) -> Self {
        let ReplayStoreError::Unavailable(detail) = error;
        NoticeError::Unavailable(detail)
    }
}

/// Where the notices live.
#[async_trait]
pub trait Notices: Send + Sync {
    /// `goal` was achieved at `at` and no campaign started. Keeps the first time it was seen
    /// while the notice lives.
    async fn record_goal_without_listener(&self, goal: &str, at: SystemTime) -> Result<(), NoticeError>;

    /// `goal` started a campaign at `at` (someone fixed it): its notice goes.
    async fn clear_goal_without_listener(&self, goal: &str, at: SystemTime) -> Result<(), NoticeError>;

    /// The notice, unless it has expired by `now`.
    async fn goal_without_listener(&self, now: SystemTime) -> Result<Option<GoalNotice>, NoticeError>;
}

/// What a process last wrote, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Record,
    Clear,
}

/// The per-process rate limit: the same write (record or clear, same goal) at most once per
/// [`WRITE_INTERVAL`]. A change (record after clear, another goal) always goes through. An
/// attempt counts even when it fails: an outage costs one call a minute, not one per signup.
#[derive(Debug, Default)]
struct WriteGate {
    last: Mutex<Option<(Write, String, SystemTime)>>,
}

impl WriteGate {
    fn admit(&self, write: Write, goal: &str, at: SystemTime) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((kind, seen, when)) = last.as_ref()
            && *kind == write
            && seen == goal
            && at.duration_since(*when).is_ok_and(|d| d < WRITE_INTERVAL)
        {
            return false;
        }
        *last = Some((write, goal.to_owned(), at));
        true
    }
}

fn bounded(goal: &str) -> &str {
    match goal.char_indices().nth(MAX_GOAL_LABEL) {
        Some((end, _)) => &goal[..end],
        None => goal,
    }
}

/// The notices of this process (the local run shares one instance between its functions).
#[derive(Debug, Default)]
pub struct MemoryNotices {
    notice: Mutex<Option<GoalNotice>>,
    gate: WriteGate,
    writes: Mutex<u64>,
}

impl MemoryNotices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes done so far (records and clears that passed the rate limit).
    pub fn writes(&self) -> u64 {
        *self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self) {
        *self.writes.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }
}

fn live(notice: &GoalNotice, now: SystemTime) -> bool {
    notice.last_seen_at + NOTICE_TTL >= now
}

#[async_trait]
impl Notices for MemoryNotices {
    async fn record_goal_without_listener(&self, goal: &str, at: SystemTime) -> Result<(), NoticeError> {
        let goal = bounded(goal);
        if !self.gate.admit(Write::Record, goal, at) {
            return Ok(());
        }
        self.count();
        let mut notice = self.notice.lock().unwrap_or_else(|e| e.into_inner());
        let first_seen_at = match notice.as_ref() {
            Some(old) if old.goal == goal && live(old, at) => old.first_seen_at,
            _ => at,
        };
        *notice = Some(GoalNotice {
            goal: goal.to_owned(),
            first_seen_at,
            last_seen_at: at,
        });
        Ok(())
    }

    async fn clear_goal_without_listener(&self, goal: &str, at: SystemTime) -> Result<(), NoticeError> {
        let goal = bounded(goal);
        if !self.gate.admit(Write::Clear, goal, at) {
            return Ok(());
        }
        self.count();
        let mut notice = self.notice.lock().unwrap_or_else(|e| e.into_inner());
        if notice.as_ref().is_some_and(|n| n.goal == goal) {
            *notice = None;
        }
        Ok(())
    }

    async fn goal_without_listener(&self, now: SystemTime) -> Result<Option<GoalNotice>, NoticeError> {
        let notice = self.notice.lock().unwrap_or_else(|e| e.into_inner());
        Ok(notice.clone().filter(|n| live(n, now)))
    }
}

/// The notice as one item of the relay's state table (partition key `pk`, TTL attribute
/// `expires_at`), every call bounded like the replay records' (`signup::replay::conditional`).
#[derive(Debug)]
pub struct DynamoNotices {
    client: aws_sdk_dynamodb::Client,
    table: String,
    gate: WriteGate,
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// A notice read back is outside input: anything the relay would not have written is ignored.
fn notice_from_item(item: &HashMap<String, AttributeValue>, now: u64) -> Option<GoalNotice> {
    if number(item, "expires_at").is_none_or(|at| at < now) {
        return None;
    }
    let goal = item.get("goal")?.as_s().ok()?;
    let (first, last) = (number(item, "first_seen_at")?, number(item, "last_seen_at")?);
    if goal.is_empty() || goal.chars().count() > MAX_GOAL_LABEL || first > last {
        return None;
    }
    Some(GoalNotice {
        goal: goal.clone(),
        first_seen_at: UNIX_EPOCH + Duration::from_secs(first),
        last_seen_at: UNIX_EPOCH + Duration::from_secs(last),
    })
}

impl DynamoNotices {
    /// `client` should carry `signup::replay::with_replay_bounds`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            gate: WriteGate::default(),
        }
    }

    fn key() -> AttributeValue {
        AttributeValue::S(GOAL_NOTICE_KEY.into())
    }
}

#[async_trait]
impl Notices for DynamoNotices {
    async fn record_goal_without_listener(&self, goal: &str, at: SystemTime) -> Result<(), NoticeError> {
        let goal = bounded(goal);
        if !self.gate.admit(Write::Record, goal, at) {
            return Ok(());
        }
        let (now, expires) = (unix(at), unix(at + NOTICE_TTL));
        // The same goal's live notice: keep its first sighting.
        let seen_again = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::key())
            .update_expression("SET last_seen_at = :now, expires_at = :expires")
            .condition_expression("goal = :goal AND expires_at >= :now")
            .expression_attribute_values(":goal", AttributeValue::S(goal.to_owned()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":expires", AttributeValue::N(expires.to_string()))
            .send();
        if conditional("UpdateItem", seen_again, |e| e.is_conditional_check_failed_exception())
            .await?
            .is_some()
        {
            return Ok(());
        }
        // None, expired, or another goal's: this one replaces it.
        let first = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", Self::key())
            .item("goal", AttributeValue::S(goal.to_owned()))
            .item("first_seen_at", AttributeValue::N(now.to_string()))
            .item("last_seen_at", AttributeValue::N(now.to_string()))
            .item("expires_at", AttributeValue::N(expires.to_string()))
            .send();
        conditional("PutItem", first, |_| false).await?;
        Ok(())
    }

    async fn clear_goal_without_listener(&self, goal: &str, at: SystemTime) -> Result<(), NoticeError> {
        let goal = bounded(goal);
        if !self.gate.admit(Write::Clear, goal, at) {
            return Ok(());
        }
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", Self::key())
            .condition_expression("goal = :goal")
            .expression_attribute_values(":goal", AttributeValue::S(goal.to_owned()))
            .send();
        // No notice, or another goal's: nothing to clear.
        conditional("DeleteItem", delete, |e| e.is_conditional_check_failed_exception()).await?;
        Ok(())
    }

    async fn goal_without_listener(&self, now: SystemTime) -> Result<Option<GoalNotice>, NoticeError> {
        let read = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", Self::key())
            .send();
        let item = conditional("GetItem", read, |_| false).await?.and_then(|o| o.item);
        Ok(item.and_then(|item| notice_from_item(&item, unix(now))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    // Both adapters' contract, and the DynamoDB one against moto: shared/tests/notices.rs.

    #[test]
    fn the_gate_lets_one_write_a_minute_through_but_never_holds_a_change() {
        let gate = WriteGate::default();
        assert!(gate.admit(Write::Record, "a:b", at(0)));
        assert!(!gate.admit(Write::Record, "a:b", at(59)));
        assert!(gate.admit(Write::Record, "a:c", at(59)), "another goal");
        assert!(gate.admit(Write::Clear, "a:c", at(60)), "a clear after a record");
        assert!(!gate.admit(Write::Clear, "a:c", at(61)));
        assert!(gate.admit(Write::Clear, "a:c", at(120)));
        // a clock that went back does not hold writes forever
        assert!(gate.admit(Write::Clear, "a:c", at(10)));
    }

    #[test]
    fn items_read_back_are_checked() {
        let item = |goal: &str, first: u64, last: u64, expires: u64| {
            HashMap::from([
                ("goal".to_string(), AttributeValue::S(goal.into())),
                ("first_seen_at".to_string(), AttributeValue::N(first.to_string())),
                ("last_seen_at".to_string(), AttributeValue::N(last.to_string())),
                ("expires_at".to_string(), AttributeValue::N(expires.to_string())),
            ])
        };
        assert_eq!(
            notice_from_item(&item("a:b", 10, 20, 100), 50),
            Some(GoalNotice {
                goal: "a:b".into(),
                first_seen_at: UNIX_EPOCH + Duration::from_secs(10),
                last_seen_at: UNIX_EPOCH + Duration::from_secs(20),
            })
        );
        assert_eq!(notice_from_item(&item("a:b", 10, 20, 100), 101), None, "expired");
        assert_eq!(
            notice_from_item(&item("a:b", 30, 20, 100), 50),
            None,
            "first after last"
        );
        assert_eq!(notice_from_item(&item("", 10, 20, 100), 50), None);
        assert_eq!(
            notice_from_item(&item(&"x".repeat(MAX_GOAL_LABEL + 1), 10, 20, 100), 50),
            None
        );
    }

    #[test]
    fn the_key_cannot_be_a_replay_key() {
        let replay = crate::signup::ReplayKey::of_mac(b"mac");
        assert!(replay.as_str().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!GOAL_NOTICE_KEY.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
