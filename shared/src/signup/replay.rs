//! Replays of signed signups (docs/security.md, issue 14 item 3).
//!
//! A signature stays valid for [`TOLERANCE`](super::signature::TOLERANCE) either way, so the
//! same signed request can arrive again: a sender's retry after a lost answer, or someone who
//! copied it. The first arrival claims a record named by the message ([`ReplayKey`]); the
//! answer it gives is kept until the signature expires, and every later arrival gets that
//! answer instead of another upsert, another welcome or another queued message.
//!
//! - [`ReplayRecords`]: the port. [`DynamoReplayRecords`] in production (one table shared by
//!   every Lambda environment, `SIGNUP_REPLAY_TABLE`), [`MemoryReplayRecords`] for the local
//!   run and tests (and as the fallback when no table is configured: it then only sees
//!   replays that reach the same process).
//! - Fail open: when the records cannot be read or written the signup is processed anyway
//!   (logged); losing replay protection for a moment is better than losing signups.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Names one signed message: SHA-256 of the MAC the relay computed for it, in hex. It does not
/// reveal the MAC (so a record is no usable signature) nor, without the signing key, the body.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReplayKey(String);

impl ReplayKey {
    pub fn of_mac(mac: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(mac)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Short enough to correlate two log lines, too short to matter.
        write!(f, "ReplayKey({}…)", &self.0[..8])
    }
}

/// The answer given to the first arrival, replayed to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAnswer {
    pub status: u16,
    /// The JSON body.
    pub body: String,
    pub retry_after_seconds: Option<u64>,
}

/// Largest answer kept: the relay's own answers are a few hundred bytes.
pub const MAX_RECORDED_BODY: usize = 16 * 1024;

impl RecordedAnswer {
    /// Only answers that say what was done are kept: the contact (201, 200), the queued
    /// message (202), Keap's refusal (422). Anything else leaves nothing done, so a repeat
    /// must be processed again.
    pub fn is_final(status: u16) -> bool {
        matches!(status, 200 | 201 | 202 | 422)
    }

    /// A record read back is outside input: anything the relay would not have written is ignored.
    fn checked(self) -> Option<Self> {
        let plausible = Self::is_final(self.status)
            && self.body.len() <= MAX_RECORDED_BODY
            && self.retry_after_seconds.is_none_or(|s| s <= 3600);
        plausible.then_some(self)
    }
}

/// What [`ReplayRecords::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First arrival (or the first after an abandoned attempt): process it, then
    /// [`complete`](ReplayRecords::complete) or [`release`](ReplayRecords::release) as `owner`.
    Claimed { owner: Uuid },
    /// Already answered: give this answer again.
    Answered(RecordedAnswer),
    /// Another arrival of the same message is being processed right now.
    InProgress,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayStoreError {
    /// The records could not be read or written (timeout, throttling, outage, full): process
    /// the signup without replay protection.
    #[error("the replay records are unavailable: {0}")]
    Unavailable(String),
}

/// Where claims and answers live until the signature they name expires.
#[async_trait]
pub trait ReplayRecords: Send + Sync {
    /// Claims `key` for one attempt that lasts until `lease_until`; the record may go once
    /// `expires_at` (the signature's end) has passed.
    async fn claim(
        &self,
        key: &ReplayKey,
        now: SystemTime,
        lease_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Claim, ReplayStoreError>;

    /// Keeps `answer` for later arrivals (only if `owner` still holds the claim).
    async fn complete(&self, key: &ReplayKey, owner: Uuid, answer: &RecordedAnswer) -> Result<(), ReplayStoreError>;

    /// Gives the claim up (nothing was done), so a repeat is processed afresh.
    async fn release(&self, key: &ReplayKey, owner: Uuid) -> Result<(), ReplayStoreError>;
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Debug, Clone)]
enum Record {
    InProgress {
        owner: Uuid,
        lease_until: u64,
        expires_at: u64,
    },
    Answered {
        answer: RecordedAnswer,
        expires_at: u64,
    },
}

impl Record {
    fn expires_at(&self) -> u64 {
        match self {
            Record::InProgress { expires_at, .. } | Record::Answered { expires_at, .. } => *expires_at,
        }
    }
}

/// Records in this process only. Bounded: when full of live records a claim fails open.
#[derive(Debug)]
pub struct MemoryReplayRecords {
    records: Mutex<HashMap<ReplayKey, Record>>,
    capacity: usize,
}

impl Default for MemoryReplayRecords {
    fn default() -> Self {
        Self::with_capacity(50_000)
    }
}

impl MemoryReplayRecords {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            records: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ReplayRecords for MemoryReplayRecords {
    async fn claim(
        &self,
        key: &ReplayKey,
        now: SystemTime,
        lease_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Claim, ReplayStoreError> {
        let now = unix(now);
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        match records.get(key) {
            Some(Record::Answered { answer, expires_at }) if *expires_at >= now => {
                return Ok(Claim::Answered(answer.clone()));
            }
            Some(Record::InProgress {
                lease_until,
                expires_at,
                ..
            }) if *expires_at >= now && *lease_until >= now => return Ok(Claim::InProgress),
            _ => {}
        }
        if !records.contains_key(key) && records.len() >= self.capacity {
            records.retain(|_, record| record.expires_at() >= now);
            if records.len() >= self.capacity {
                return Err(ReplayStoreError::Unavailable(format!(
                    "{} live records in memory",
                    records.len()
                )));
            }
        }
        let owner = Uuid::new_v4();
        records.insert(
            key.clone(),
            Record::InProgress {
                owner,
                lease_until: unix(lease_until),
                expires_at: unix(expires_at),
            },
        );
        Ok(Claim::Claimed { owner })
    }

    async fn complete(&self, key: &ReplayKey, owner: Uuid, answer: &RecordedAnswer) -> Result<(), ReplayStoreError> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Record::InProgress {
            owner: holder,
            expires_at,
            ..
        }) = records.get(key)
            && *holder == owner
        {
            let expires_at = *expires_at;
            records.insert(
                key.clone(),
                Record::Answered {
                    answer: answer.clone(),
                    expires_at,
                },
            );
        }
        Ok(())
    }

    async fn release(&self, key: &ReplayKey, owner: Uuid) -> Result<(), ReplayStoreError> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(records.get(key), Some(Record::InProgress { owner: holder, .. }) if *holder == owner) {
            records.remove(key);
        }
        Ok(())
    }
}

/// One DynamoDB table (partition key `pk`, TTL attribute `expires_at`) shared by every
/// environment. Every call is bounded by [`DYNAMO_CALL_TIMEOUT`] on top of the SDK's own
/// timeouts ([`with_replay_bounds`]), so an outage costs a signup at most a few seconds.
#[derive(Debug, Clone)]
pub struct DynamoReplayRecords {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// Upper bound of one DynamoDB call, retries included.
pub const DYNAMO_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The replay table's client settings: short attempts, few retries (the signup's own deadline
/// is what matters). Applied to the production configuration and to the tests' alike.
pub fn with_replay_bounds(builder: aws_sdk_dynamodb::config::Builder) -> aws_sdk_dynamodb::config::Builder {
    builder
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(700))
                .operation_timeout(Duration::from_millis(1800))
                .build(),
        )
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(2))
}

impl DynamoReplayRecords {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn read(&self, key: &ReplayKey) -> Result<Option<HashMap<String, AttributeValue>>, ReplayStoreError> {
        let call = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.0.clone()))
            .consistent_read(true)
            .send();
        // A read has no condition.
        Ok(conditional("GetItem", call, |_| false)
            .await?
            .and_then(|output| output.item))
    }
}

/// One DynamoDB call within [`DYNAMO_CALL_TIMEOUT`]: `Ok(None)` when its condition did not hold
/// (`condition_failed`), [`ReplayStoreError::Unavailable`] for anything else that went wrong.
/// Also bounds the calls of [`crate::notices::DynamoNotices`] (same table, same client).
pub(crate) async fn conditional<O, E>(
    what: &str,
    call: impl std::future::Future<Output = Result<O, SdkError<E, HttpResponse>>>,
    condition_failed: impl Fn(&E) -> bool,
) -> Result<Option<O>, ReplayStoreError>
where
    E: std::error::Error + 'static,
{
    match tokio::time::timeout(DYNAMO_CALL_TIMEOUT, call).await {
        Ok(Ok(output)) => Ok(Some(output)),
        Ok(Err(problem)) if problem.as_service_error().is_some_and(&condition_failed) => Ok(None),
        Ok(Err(problem)) => Err(ReplayStoreError::Unavailable(format!(
            "{what}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&problem)
        ))),
        Err(_) => Err(ReplayStoreError::Unavailable(format!(
            "{what}: no answer within {} ms",
            DYNAMO_CALL_TIMEOUT.as_millis()
        ))),
    }
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

/// What a record read back says, given that the conditional claim just failed.
fn claim_from_item(item: &HashMap<String, AttributeValue>, now: u64) -> Option<Claim> {
    if number(item, "expires_at").is_none_or(|at| at < now) {
        return None;
    }
    match text(item, "state")? {
        "answered" => {
            let status = u16::try_from(number(item, "status")?).ok()?;
            let body = text(item, "body")?.to_owned();
            let retry_after_seconds = number(item, "retry_after");
            RecordedAnswer {
                status,
                body,
                retry_after_seconds,
            }
            .checked()
            .map(Claim::Answered)
        }
        "in_progress" if number(item, "lease_until").is_some_and(|until| until >= now) => Some(Claim::InProgress),
        _ => None,
    }
}

#[async_trait]
impl ReplayRecords for DynamoReplayRecords {
    async fn claim(
        &self,
        key: &ReplayKey,
        now: SystemTime,
        lease_until: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Claim, ReplayStoreError> {
        let now = unix(now);
        // Twice at most: a record that expired between the failed put and the read is gone.
        for _ in 0..2 {
            let owner = Uuid::new_v4();
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", AttributeValue::S(key.0.clone()))
                .item("state", AttributeValue::S("in_progress".into()))
                .item("owner", AttributeValue::S(owner.to_string()))
                .item("lease_until", AttributeValue::N(unix(lease_until).to_string()))
                .item("expires_at", AttributeValue::N(unix(expires_at).to_string()))
                // TTL deletes lazily, so an expired record counts as absent here.
                .condition_expression(
                    "attribute_not_exists(pk) OR expires_at < :now \
                     OR (#state = :in_progress AND lease_until < :now)",
                )
                .expression_attribute_names("#state", "state")
                .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
                .expression_attribute_values(":in_progress", AttributeValue::S("in_progress".into()))
                .send();
            match conditional("PutItem", put, |e| e.is_conditional_check_failed_exception()).await? {
                Some(_) => return Ok(Claim::Claimed { owner }),
                None => {
                    if let Some(item) = self.read(key).await? {
                        match claim_from_item(&item, now) {
                            Some(claim) => return Ok(claim),
                            // Unreadable or lapsed between the two calls: try the put again.
                            None => continue,
                        }
                    }
                }
            }
        }
        Err(ReplayStoreError::Unavailable(
            "the record kept changing under the claim".into(),
        ))
    }

    async fn complete(&self, key: &ReplayKey, owner: Uuid, answer: &RecordedAnswer) -> Result<(), ReplayStoreError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.0.clone()))
            .update_expression("SET #state = :answered, #status = :status, body = :body REMOVE lease_until")
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":answered", AttributeValue::S("answered".into()))
            .expression_attribute_values(":status", AttributeValue::N(answer.status.to_string()))
            .expression_attribute_values(":body", AttributeValue::S(answer.body.clone()))
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_string()));
        if let Some(seconds) = answer.retry_after_seconds {
            update = update
                .update_expression(
                    "SET #state = :answered, #status = :status, body = :body, retry_after = :retry_after \
                     REMOVE lease_until",
                )
                .expression_attribute_values(":retry_after", AttributeValue::N(seconds.to_string()));
        }
        // Not held any more: another arrival took the claim over after this one's lease ran
        // out, and its answer stands.
        conditional("UpdateItem", update.send(), |e| {
            e.is_conditional_check_failed_exception()
        })
        .await
        .map(|_| ())
    }

    async fn release(&self, key: &ReplayKey, owner: Uuid) -> Result<(), ReplayStoreError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.0.clone()))
            .condition_expression("#owner = :owner AND #state = :in_progress")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_string()))
            .expression_attribute_values(":in_progress", AttributeValue::S("in_progress".into()))
            .send();
        // Not held any more (answered, or taken over): nothing to give up.
        conditional("DeleteItem", delete, |e| e.is_conditional_check_failed_exception())
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn key(n: u8) -> ReplayKey {
        ReplayKey::of_mac(&[n; 32])
    }

    // The claim/answer/release/takeover/expiry contract of both adapters: shared/tests/replay_records.rs.

    #[tokio::test]
    async fn a_full_memory_fails_open_and_expired_records_make_room() {
        let records = MemoryReplayRecords::with_capacity(2);
        records.claim(&key(1), at(100), at(130), at(200)).await.unwrap();
        records.claim(&key(2), at(100), at(130), at(400)).await.unwrap();
        assert!(records.claim(&key(3), at(150), at(180), at(400)).await.is_err());
        assert!(matches!(
            records.claim(&key(3), at(250), at(280), at(500)).await.unwrap(),
            Claim::Claimed { .. }
        ));
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn records_read_back_are_checked() {
        let item = |state: &str, status: &str, body: &str| {
            HashMap::from([
                ("state".to_string(), AttributeValue::S(state.into())),
                ("status".to_string(), AttributeValue::N(status.into())),
                ("body".to_string(), AttributeValue::S(body.into())),
                ("expires_at".to_string(), AttributeValue::N("400".into())),
                ("lease_until".to_string(), AttributeValue::N("130".into())),
            ])
        };
        assert_eq!(
            claim_from_item(&item("answered", "202", "{}"), 100),
            Some(Claim::Answered(RecordedAnswer {
                status: 202,
                body: "{}".into(),
                retry_after_seconds: None
            }))
        );
        assert_eq!(claim_from_item(&item("answered", "500", "{}"), 100), None);
        assert_eq!(claim_from_item(&item("answered", "99999999999", "{}"), 100), None);
        assert_eq!(
            claim_from_item(&item("answered", "201", &"x".repeat(MAX_RECORDED_BODY + 1)), 100),
            None
        );
        assert_eq!(claim_from_item(&item("answered", "201", "{}"), 401), None);
        assert_eq!(
            claim_from_item(&item("in_progress", "0", ""), 120),
            Some(Claim::InProgress)
        );
        assert_eq!(claim_from_item(&item("in_progress", "0", ""), 131), None);
        assert_eq!(claim_from_item(&item("whatever", "201", "{}"), 100), None);
    }

    #[test]
    fn keys_do_not_show_the_mac() {
        let mac = [7u8; 32];
        let key = ReplayKey::of_mac(&mac);
        assert!(!key.as_str().contains(&hex::encode(mac)));
        assert_eq!(format!("{key:?}").len(), "ReplayKey(…)".len() + 8);
    }
}
