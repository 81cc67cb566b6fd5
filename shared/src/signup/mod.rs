//! The signup flow: signature check, body validation, upsert, tags, welcome email.
//!
//! - [`signature`]: the `X-Signature` header (verify, and `sign` for senders and tests).
//! - [`request`]: the body, validated into a [`Signup`] with precise error codes.
//! - [`queue`]: the [`SignupQueue`] port (SQS, memory) for signups Keap could not take now.
//! - [`replay`]: the [`ReplayRecords`] port (DynamoDB, memory): a replayed signed request gets
//!   the first answer again.
//! - [`SignupService`]: the one code path `signup` and `signup-retry` share.

mod fields;
pub mod queue;
pub mod replay;
pub mod request;
pub mod send_slots;
pub mod signature;
mod welcome;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::{Serialize, Serializer};
use tokio::time::Instant;

pub use queue::{
    MemoryQueue, QueueError, QueuedMessage, QueuedSignup, QueuedWelcome, SignupQueue, SqsQueue, WelcomePart,
};
pub use replay::{Claim, DynamoReplayRecords, MemoryReplayRecords, RecordedAnswer, ReplayKey, ReplayRecords};
pub use request::{ContactDetails, FieldValue, InvalidSignup, LeadSourceRef, Signup, TagRef, Utm};

pub use send_slots::{DynamoSendSlots, MemorySendSlots, SendSlot, SlotHold, WelcomeSendSlots};
pub use welcome::WelcomeRetry;

use crate::config::{Config, SignupOptions, WelcomeEmail};
use crate::keap::api::{ApiError, ContactUpsert, GoalStart, KeapApi, TagApplyStatus};
use crate::token::{Credential, CredentialSource, TokenError};

/// What the service needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct SignupSettings {
    /// Tag (id or name) applied to every signup (`KEAP_WELCOME_TAG`).
    pub welcome_tag: Option<TagRef>,
    /// Direct welcome email, sent once per contact.
    pub welcome_email: Option<WelcomeEmail>,
    /// Time one signup may spend retrying Keap's 429/5xx before giving up.
    pub retry_budget: Duration,
    /// Welcome goal and template, contact fields, allow-lists.
    pub options: SignupOptions,
}

impl SignupSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            welcome_tag: config.welcome_tag.as_deref().map(TagRef::parse),
            welcome_email: config.welcome_email.clone(),
            retry_budget: config.signup_retry_budget,
            options: config.signup_options.clone(),
        }
    }

    /// Whether any welcome (direct email, template or goal) is configured.
    fn welcomes(&self) -> Vec<WelcomePart> {
        let mut parts = Vec::new();
        if self.welcome_email.is_some() {
            parts.push(WelcomePart::Email);
        }
        if self.options.welcome_template.is_some() {
            parts.push(WelcomePart::Template);
        }
        if self.options.welcome_goal.is_some() {
            parts.push(WelcomePart::Goal);
        }
        parts
    }
}

/// What happened to the welcome email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WelcomeEmailOutcome {
    /// Queued in Keap for this signup.
    Sent,
    /// The contact had been welcomed before (the welcome tag was already there).
    AlreadyWelcomed,
    /// Keap refused or failed to queue it; logged, and the signup still succeeded.
    Failed,
    /// The welcome tag could not be applied (refused, or an unknown tag id), so there is no
    /// record that this contact was welcomed: no email, rather than one per repeat.
    Skipped,
    /// Not sent yet (Keap failed, or may have sent it without saying so): retried through the
    /// queue, after checking Keap's sent-email listing, until it is sent once.
    Queued,
}

/// What happened to the welcome goal (`KEAP_WELCOME_GOAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalStatus {
    /// Achieved: `started` lists the campaigns (automations) it started.
    Achieved,
    /// Achieved, but no published campaign listens to this goal: a configuration mistake
    /// (logged as a warning).
    NoListener,
    AlreadyWelcomed,
    Skipped,
    Queued,
    Failed,
}

/// The welcome goal's part of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoalOutcome {
    pub status: GoalStatus,
    /// The goal as configured (`integration:call_name` or `automation:<id>:<goal_id>`).
    pub goal: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub started: Vec<GoalStart>,
}

/// A signup Keap took. Serializes to the `POST /signup` success body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignupOutcome {
    #[serde(serialize_with = "as_string")]
    pub contact_id: i64,
    pub created: bool,
    /// Per requested tag (as the caller named it, welcome tag included): Keap's status
    /// (`SUCCESS`, `DUPLICATE`, `TAG_ID_NOT_FOUND`, …) or `REJECTED` when Keap refused to create it.
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub welcome_email: Option<WelcomeEmailOutcome>,
    /// The Keap email template (`KEAP_WELCOME_TEMPLATE_ID`), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub welcome_template: Option<WelcomeEmailOutcome>,
    /// The API goal (`KEAP_WELCOME_GOAL`), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub welcome_goal: Option<GoalOutcome>,
}

fn as_string<S: Serializer>(id: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

/// Why a signup did not reach Keap.
#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// Keap refused the contact itself (4xx); retrying the same signup cannot help.
    #[error("Keap refused the contact ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The signup asks for something Keap's account does not have or this deployment does not
    /// allow (an unknown custom field, a value of the wrong type, a field off the allow-list):
    /// the caller's to fix, answered 400 with `code`.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// No usable Keap connection: never connected, needs re-authorization, or the key is refused.
    #[error("Keap is not connected: {reason}")]
    NotConnected { reason: String },
    /// Keap (or the token store) failing or throttling beyond the retry budget.
    #[error("Keap unavailable: {detail}")]
    Unavailable {
        retry_after: Option<Duration>,
        detail: String,
    },
}

impl SignupError {
    pub fn code(&self) -> &'static str {
        match self {
            SignupError::Rejected { .. } => "keap_rejected",
            SignupError::Invalid { code, .. } => code,
            SignupError::NotConnected { .. } => "keap_not_connected",
            SignupError::Unavailable { .. } => "keap_unavailable",
        }
    }

    /// True when trying the same signup again later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, SignupError::Rejected { .. } | SignupError::Invalid { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SignupError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<TokenError> for SignupError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Unavailable { detail, retry_after } => SignupError::Unavailable { retry_after, detail },
            TokenError::Store(store) => SignupError::Unavailable {
                retry_after: None,
                detail: store.to_string(),
            },
            other @ (TokenError::NotConnected | TokenError::NeedsReauth { .. } | TokenError::Misconfigured(_)) => {
                SignupError::NotConnected {
                    reason: other.to_string(),
                }
            }
        }
    }
}

/// A failure of one Keap call after its retries.
enum CallError {
    Api(ApiError),
    Token(TokenError),
}

impl From<CallError> for SignupError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Token(token) => token.into(),
            // The token source re-read and refreshed without finding the grant dead (that
            // would be `NeedsReauth`): a passing refusal, so try again later, not park.
            CallError::Api(ApiError::Unauthorized { operation }) => SignupError::Unavailable {
                retry_after: None,
                detail: format!("Keap refused a just re-read and refreshed access token ({operation})"),
            },
            CallError::Api(ApiError::Rejected { status, message, .. }) => SignupError::Rejected { status, message },
            CallError::Api(error) => SignupError::Unavailable {
                retry_after: error.retry_after(),
                detail: error.to_string(),
            },
        }
    }
}

/// Whether a call may be repeated after Keap failed mid-way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Safe to repeat on any transient error (upsert, lookup, apply).
    Idempotent,
    /// Only after a 429, when Keap did nothing (creating a tag, sending an email).
    OnlyIfThrottled,
}

/// A 401 first re-reads the store (another process may have rotated already); if Keap refuses
/// the stored token too (expired or revoked early), the second asks for a refresh of that one.
const REAUTHORIZATIONS: u8 = 2;

/// The state of one `process` call: the credential in use and the retry deadline.
struct Attempt {
    credential: Mutex<Credential>,
    /// `after_unauthorized` calls so far; at most [`REAUTHORIZATIONS`] per signup.
    reauthorized: Mutex<u8>,
    deadline: Instant,
    /// A call of this signup reached Keap: its later calls wait for their turn (see `call`).
    started: std::sync::atomic::AtomicBool,
}

impl Attempt {
    fn new(credential: Credential, budget: Duration) -> Self {
        Self {
            credential: Mutex::new(credential),
            reauthorized: Mutex::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
            deadline: deadline_after(budget),
        }
    }

    fn credential(&self) -> Credential {
        self.credential.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, credential: Credential) {
        *self.credential.lock().unwrap_or_else(|e| e.into_inner()) = credential;
    }

    fn claim_reauthorization(&self) -> bool {
        let mut used = self.reauthorized.lock().unwrap_or_else(|e| e.into_inner());
        if *used >= REAUTHORIZATIONS {
            return false;
        }
        *used += 1;
        true
    }
}

/// Sends signups to Keap. Built once per process; caches tag ids by name, the contact custom
/// fields, and lead source ids by name.
pub struct SignupService {
    api: KeapApi,
    credentials: Arc<dyn CredentialSource>,
    settings: SignupSettings,
    tag_ids: Mutex<HashMap<String, i64>>,
    /// `GET /v1/contacts/model`'s custom fields, read once per process (again when Keap says
    /// a cached id is unknown).
    custom_fields: Mutex<Option<Arc<Vec<crate::keap::api::CustomFieldMeta>>>>,
    lead_source_ids: Mutex<HashMap<String, i64>>,
    /// Where a welcome that could not be sent now waits (`SIGNUP_QUEUE_URL`).
    welcome_queue: Option<Arc<dyn SignupQueue>>,
    /// Where a welcome goal nobody listens to is noted for the console (`notices`).
    notices: Option<Arc<dyn crate::notices::Notices>>,
    /// Keeps two queued welcome records from sending the same part at once (`send_slots`).
    send_slots: Arc<dyn WelcomeSendSlots>,
    /// The metrics' `FunctionName` dimension.
    function_name: String,
}

impl std::fmt::Debug for SignupService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignupService")
            .field("api", &self.api)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SignupService {
    pub fn new(api: KeapApi, credentials: Arc<dyn CredentialSource>, settings: SignupSettings) -> Self {
        Self {
            api,
            credentials,
            settings,
            tag_ids: Mutex::new(HashMap::new()),
            custom_fields: Mutex::new(None),
            lead_source_ids: Mutex::new(HashMap::new()),
            welcome_queue: None,
            notices: None,
            send_slots: Arc::new(MemorySendSlots::new()),
            function_name: "signup".into(),
        }
    }

    /// A welcome goal achieved with no campaign listening is noted in `notices` (and its
    /// notice cleared once a campaign starts), for `/status` and the console.
    pub fn with_notices(mut self, notices: Option<Arc<dyn crate::notices::Notices>>) -> Self {
        self.notices = notices;
        self
    }

    /// Where queued welcome records take their send slots: the state table shared by every
    /// process (this process only by default).
    pub fn with_send_slots(mut self, send_slots: Arc<dyn WelcomeSendSlots>) -> Self {
        self.send_slots = send_slots;
        self
    }

    /// The `FunctionName` dimension of the metrics this service emits.
    pub fn with_function_name(mut self, name: impl Into<String>) -> Self {
        self.function_name = name.into();
        self
    }

    /// Welcomes that cannot be sent at once are retried through `queue` (without one they are
    /// reported `failed`).
    pub fn with_welcome_queue(mut self, queue: Option<Arc<dyn SignupQueue>>) -> Self {
        self.welcome_queue = queue;
        self
    }

    /// Upserts the contact (with its details and custom fields), applies the welcome and
    /// requested tags, and, for a contact seen for the first time, sends the welcome email and
    /// template and achieves the welcome goal. Repeating a signup is harmless: the contact is
    /// updated, tags come back `DUPLICATE` and no welcome goes out twice.
    pub async fn process(&self, signup: &Signup) -> Result<SignupOutcome, SignupError> {
        self.check_allowed(signup)?;
        let attempt = Attempt::new(self.credentials.credential().await?, self.settings.retry_budget);

        let lead_source_id = match &signup.details.lead_source {
            None => None,
            Some(source) => Some(self.resolve_lead_source(&attempt, source).await?),
        };
        let mut upsert = ContactUpsert {
            email: signup.email.clone(),
            given_name: signup.given_name.clone(),
            family_name: signup.family_name.clone(),
            opt_in_reason: signup.opt_in.then(|| opt_in_reason(signup.source.as_deref())),
            phone: signup.details.phone.clone(),
            company: signup.details.company.clone(),
            job_title: signup.details.job_title.clone(),
            website: signup.details.website.clone(),
            lead_source_id,
            ip_address: signup.details.ip_address,
            custom_fields: self.resolve_custom_fields(&attempt, signup).await?,
        };
        let mut refreshed = false;
        let contact = loop {
            let result = self
                .call(&attempt, Repeat::Idempotent, |credential| {
                    let upsert = &upsert;
                    async move { self.api.upsert_contact(&credential, upsert).await }
                })
                .await;
            match result {
                // A custom field deleted (or re-created) in Keap since the model was read: read
                // it again and resolve the labels anew, once.
                Err(CallError::Api(ApiError::Rejected {
                    status: 400, message, ..
                })) if !refreshed && !upsert.custom_fields.is_empty() && fields::mentions_unknown_field(&message) => {
                    tracing::info!(%message, "Keap does not know a cached custom field id; reading the contact model again");
                    refreshed = true;
                    self.forget_custom_fields();
                    upsert.custom_fields = self.resolve_custom_fields(&attempt, signup).await?;
                }
                Err(CallError::Api(ApiError::Rejected {
                    status: 400, message, ..
                })) if fields::mentions_custom_field(&message) => {
                    return Err(SignupError::Invalid {
                        code: "invalid_custom_field",
                        message,
                    });
                }
                other => break other?,
            }
        };

        // A new contact is owed its welcomes: they are written to the queue before anything
        // else, so a process that dies from here on (or a send that fails) loses none of them.
        let written = if contact.created {
            self.write_ahead(contact.id).await
        } else {
            Vec::new()
        };
        match self.after_upsert(&attempt, signup, contact, &written).await {
            Ok(outcome) => Ok(outcome),
            Err(error) => {
                // Without a welcome tag, "created" is the only sign of a first signup, and a
                // retry of this signup will not see it: hand over what was not written ahead.
                if contact.created && self.settings.welcome_tag.is_none() && error.is_transient() {
                    for part in self.settings.welcomes() {
                        if !written.contains(&part) {
                            self.hand_off(part, contact.id, None).await;
                        }
                    }
                }
                Err(error)
            }
        }
    }

    async fn after_upsert(
        &self,
        attempt: &Attempt,
        signup: &Signup,
        contact: crate::keap::api::UpsertedContact,
        written: &[WelcomePart],
    ) -> Result<SignupOutcome, SignupError> {
        if let (Some(source_id), Some(utm)) = (&self.settings.options.utm_v2_source_id, &signup.details.utm) {
            let entries = utm.entries();
            let written = self
                .call(attempt, Repeat::Idempotent, |credential| {
                    let entries = &entries;
                    async move { self.api.set_utm(&credential, contact.id, source_id, entries).await }
                })
                .await;
            match written {
                Ok(()) => {}
                // The contact is saved; UTM data Keap refuses is not worth failing the signup for.
                Err(CallError::Api(ApiError::Rejected { status, message, .. })) => {
                    tracing::warn!(status, %message, "Keap refused the UTM parameters");
                }
                Err(other) => return Err(other.into()),
            }
        }

        let requested: Vec<&TagRef> = self.settings.welcome_tag.iter().chain(&signup.tags).collect();
        let mut tags = BTreeMap::new();
        let mut resolved: Vec<(&TagRef, i64)> = Vec::new();
        for tag in dedup(requested) {
            match self.resolve_tag(attempt, tag).await {
                Ok(id) => resolved.push((tag, id)),
                Err(CallError::Api(ApiError::Rejected { status, message, .. })) => {
                    tracing::warn!(tag = %tag.label(), status, %message, "Keap refused to create a tag");
                    tags.insert(tag.label(), "REJECTED".to_owned());
                }
                Err(other) => return Err(other.into()),
            }
        }

        let ids: Vec<i64> = resolved.iter().map(|(_, id)| *id).collect();
        let statuses = self
            .call(attempt, Repeat::Idempotent, |credential| {
                let ids = &ids;
                async move { self.api.apply_tags(&credential, contact.id, ids).await }
            })
            .await?;
        let mut welcome_tag_status = None;
        for (tag, id) in &resolved {
            let status = statuses.get(id).cloned().unwrap_or(TagApplyStatus::Failure);
            if status == TagApplyStatus::TagIdNotFound {
                self.forget_tag(tag);
            }
            if Some(*tag) == self.settings.welcome_tag.as_ref() {
                welcome_tag_status = Some(status.clone());
            }
            tags.insert(tag.label(), status.as_str().to_owned());
        }

        // The welcome tag newly applied is the "first signup" signal; without a welcome tag
        // configured, a newly created contact is.
        let first_time = match (&self.settings.welcome_tag, welcome_tag_status) {
            (None, _) => Some(contact.created),
            (Some(_), Some(TagApplyStatus::Success)) => Some(true),
            (Some(_), Some(TagApplyStatus::Duplicate)) => Some(false),
            // No record that this contact was welcomed: none, rather than one per repeat.
            (Some(_), _) => None,
        };
        let welcomes = self.welcome(attempt, contact.id, first_time, written).await;
        Ok(SignupOutcome {
            contact_id: contact.id,
            created: contact.created,
            tags,
            welcome_email: welcomes.email,
            welcome_template: welcomes.template,
            welcome_goal: welcomes.goal,
        })
    }

    /// A tag id: given, cached, looked up by name, or created.
    async fn resolve_tag(&self, attempt: &Attempt, tag: &TagRef) -> Result<i64, CallError> {
        let name = match tag {
            TagRef::Id(id) => return Ok(*id),
            TagRef::Name(name) => name,
        };
        if let Some(id) = self.tag_ids.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(*id);
        }
        let found = self
            .call(attempt, Repeat::Idempotent, |credential| async move {
                self.api.find_tag_by_name(&credential, name).await
            })
            .await?;
        let id = match found {
            Some(id) => id,
            None => {
                self.call(attempt, Repeat::OnlyIfThrottled, |credential| async move {
                    self.api.create_tag(&credential, name).await
                })
                .await?
            }
        };
        self.tag_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), id);
        Ok(id)
    }

    /// Keap no longer knows the cached id (the tag was deleted): look it up again next time.
    fn forget_tag(&self, tag: &TagRef) {
        if let TagRef::Name(name) = tag {
            self.tag_ids.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        }
    }

    /// Runs one Keap call with the signup's credential: after a 401 it asks the credential
    /// source for a fresh one and retries once (per signup); after 429/5xx it retries with
    /// exponential backoff, honouring `Retry-After`, while the signup's deadline allows.
    async fn call<T, F, Fut>(&self, attempt: &Attempt, repeat: Repeat, op: F) -> Result<T, CallError>
    where
        F: Fn(Credential) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let once = || async {
            let mut credential = attempt.credential();
            loop {
                match op(credential.clone()).await {
                    Err(ApiError::Unauthorized { .. }) if attempt.claim_reauthorization() => {
                        credential = self
                            .credentials
                            .after_unauthorized(&credential)
                            .await
                            .map_err(CallError::Token)?;
                        attempt.replace(credential.clone());
                    }
                    other => {
                        if other.is_ok() {
                            attempt.started.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        return other.map_err(CallError::Api);
                    }
                }
            }
        };
        let started = || attempt.started.load(std::sync::atomic::Ordering::Relaxed);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_max_times(10);
        once.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|error| match (error, repeat) {
                (CallError::Api(ApiError::RateLimited { .. }), _) => true,
                // Held back by the pacer (docs/pacing.md). Before any call of the signup reached
                // Keap, the caller queues it with the wait as its delay instead of holding on;
                // once one did, the rest waits for its turn: cut between its calls and queued,
                // a signup would spend its first call again every time (and at a low share
                // never get past it).
                (CallError::Api(ApiError::Paced { .. }), _) => started(),
                (CallError::Api(error), Repeat::Idempotent) => error.is_transient(),
                _ => false,
            })
            .adjust(|error, backoff| {
                if let CallError::Api(ApiError::Paced { paced, .. }) = error {
                    // Past the retry budget if need be: the function's own deadline still
                    // bounds the whole signup (the handler queues it when that comes).
                    return Some(paced.wait.min(PACED_WAIT_CAP));
                }
                let wait = match error {
                    CallError::Api(error) => error.retry_after().or(backoff),
                    CallError::Token(_) => backoff,
                }?;
                // `wait` may be Keap's (capped) `Retry-After`: no `+` that could overflow.
                Instant::now()
                    .checked_add(wait)
                    .is_some_and(|at| at <= attempt.deadline)
                    .then_some(wait)
            })
            .notify(|error, wait| {
                if let CallError::Api(error) = error {
                    tracing::info!(error = %error, wait_ms = wait.as_millis() as u64, "retrying Keap");
                }
            })
            .await
    }
}

/// The longest a started signup waits for one paced turn (the pacer's waits are one turn at
/// this process's share, a window's end at most).
const PACED_WAIT_CAP: Duration = Duration::from_secs(10);

/// `budget` from now, saturating (the budget is configuration, bounded by `Config::validate`,
/// but a `+` must not be what aborts the process if it is not).
fn deadline_after(budget: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(budget)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

fn opt_in_reason(source: Option<&str>) -> String {
    match source {
        Some(source) => format!("Signed up through {source}"),
        None => "Signed up through the signup form".to_owned(),
    }
}

/// Keeps the first of equal tags (the welcome tag may also be requested).
fn dedup(tags: Vec<&TagRef>) -> Vec<&TagRef> {
    let mut unique: Vec<&TagRef> = Vec::with_capacity(tags.len());
    for tag in tags {
        if !unique.contains(&tag) {
            unique.push(tag);
        }
    }
    unique
}
