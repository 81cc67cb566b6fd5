//! [`TokenSource`]: the OAuth credential source and the rotation protocol of
//! `token-rotation.md` over a [`SecretStore`].
//!
//! Every write is a child version whose id is derived from its parent's id and the step
//! (`lease`, `commit`, `release`, `reauth`, `connect`), put without moving `current`, then
//! swapped in with a compare-and-swap from the parent. All contenders for a step aim at the
//! same child, so the first put creates it and the others get a conflict and write nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::state::{LinkStatus, TokenState, left};
use super::{
    ConnectError, ConnectOutcome, Connection, ConnectionStatus, Credential, CredentialSource, RotationAction,
    RotationPolicy, RotationReport, TokenError, TokenGrant,
};
use crate::keap::oauth::{OAuthError, TokenEndpoint};
use crate::store::{PutOutcome, SecretStore, StoreError, StoredVersion, SwapOutcome};

/// Namespace of the name-based (v5) version ids.
const VERSION_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_6170_2d72_656c_6179_2d76_6572_7369);
/// The parent of the first version of a secret that does not exist yet.
const ROOT_PARENT: &str = "root";

pub const REAUTH_HINT: &str = "re-authorize at /oauth/start";

/// The steps of the protocol; a child's id is `uuid_v5(parent id + "/" + step)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Lease,
    Commit,
    Release,
    Reauth,
    Connect,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Lease => "lease",
            Step::Commit => "commit",
            Step::Release => "release",
            Step::Reauth => "reauth",
            Step::Connect => "connect",
        }
    }
}

/// The version id every contender computes for `step` on top of `parent`.
pub fn child_version_id(parent: &str, step: Step) -> String {
    Uuid::new_v5(&VERSION_NAMESPACE, format!("{parent}/{}", step.as_str()).as_bytes()).to_string()
}

/// Timing of the protocol. Production values come from [`TokenSettings::from_config`];
/// tests shrink them.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Refresh before use when the access token has less than this left.
    pub access_margin: Duration,
    /// How long a lease lasts.
    pub lease_duration: Duration,
    /// Upper bound of one call to Keap's token endpoint.
    pub keap_timeout: Duration,
    /// Time reserved for the commit: a holder calls Keap only if the lease has at least
    /// `keap_timeout + commit_allowance` left.
    pub commit_allowance: Duration,
    /// A lease counts as live until `until + clock_skew`.
    pub clock_skew: Duration,
    /// Backoff of a waiting contender's polls (exponential, with jitter). The first poll comes
    /// soon: a rotation takes one Keap round trip and two store writes, and reads are cheap.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Attempts at one store call that fails transiently, outside the commit (which keeps
    /// trying for a whole lease period: the new pair exists nowhere else).
    pub store_attempts: usize,
    /// A contender that lost the put of a lease waits this long for the winner's swap before
    /// finishing the swap itself (the winner may have died between put and swap).
    pub orphan_grace: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            access_margin: Duration::from_secs(300),
            lease_duration: Duration::from_secs(30),
            keap_timeout: Duration::from_secs(10),
            commit_allowance: Duration::from_secs(5),
            clock_skew: Duration::from_secs(2),
            poll_min: Duration::from_millis(15),
            poll_max: Duration::from_secs(1),
            store_attempts: 5,
            orphan_grace: Duration::from_secs(2),
        }
    }
}

impl TokenSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            access_margin: config.access_margin,
            lease_duration: config.lease_duration,
            keap_timeout: config.http_timeout,
            ..Self::default()
        }
    }

    fn check(&self) -> Result<(), TokenError> {
        if self.lease_duration < self.keap_timeout + self.commit_allowance {
            return Err(TokenError::Misconfigured(format!(
                "the lease ({:?}) must exceed the Keap timeout ({:?}) plus the commit allowance ({:?}); raise KEAP_LEASE_SECONDS",
                self.lease_duration, self.keap_timeout, self.commit_allowance
            )));
        }
        Ok(())
    }
}

/// What a flight must achieve.
#[derive(Clone)]
enum Need {
    /// An access token with more than the margin left (request path).
    Access,
    /// Keap answered 401 to this access token.
    Unauthorized(SecretString),
    /// The scheduled rotation.
    Rotate(RotationPolicy),
}

impl Need {
    fn is_due(&self, state: &TokenState, now: SystemTime, settings: &TokenSettings) -> bool {
        let access_low = state.access_left(now) <= access_margin(state, settings);
        match self {
            Need::Access => access_low,
            Need::Unauthorized(rejected) => access_low || state.same_access_token(rejected),
            Need::Rotate(policy) => {
                state.access_left(now) < policy.lead
                    || state.refresh_age(now).is_some_and(|age| age > policy.max_refresh_age)
            }
        }
    }
}

/// The refresh margin for this pair: the configured one, but never more than half the
/// pair's lifetime, so a short-lived token (Keap decides `expires_in`) cannot make every
/// request refresh again.
fn access_margin(state: &TokenState, settings: &TokenSettings) -> Duration {
    match (state.access_expires_at, state.refresh_issued_at) {
        (Some(expires), Some(issued)) => settings.access_margin.min(expires.duration_since(issued).unwrap_or_default() / 2),
        _ => settings.access_margin,
    }
}

/// The current version as read, parsed.
#[derive(Debug, Clone)]
struct Snapshot {
    version_id: String,
    state: TokenState,
}

/// How a flight ended well.
#[derive(Debug, Clone)]
struct Landed {
    snapshot: Arc<Snapshot>,
    action: RotationAction,
}

type FlightResult = Result<Landed, TokenError>;

/// The in-process single flight: one protocol run at a time; callers that waited behind a
/// finished run take its result instead of starting another.
#[derive(Debug, Default)]
struct FlightLog {
    finished: u64,
    last: Option<FlightResult>,
}

/// What an attempt to write a child version found.
enum ChildWrite {
    /// The child is current now.
    Current(String),
    /// `current` is elsewhere, or the child holds another value: re-read and decide again.
    Lost,
}

/// OAuth token source over a [`SecretStore`]; see the module docs and `token-rotation.md`.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SecretStore>,
    secret_id: String,
    keap: Arc<dyn TokenEndpoint>,
    settings: TokenSettings,
    /// Unique per process (per `TokenSource`); a flight's lease holder id adds a counter.
    process_id: String,
    flights_started: AtomicU64,
    flights_finished: AtomicU64,
    cache: RwLock<Option<Arc<Snapshot>>>,
    gate: Arc<Mutex<FlightLog>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("secret_id", &self.inner.secret_id)
            .field("process_id", &self.inner.process_id)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(
        store: Arc<dyn SecretStore>,
        secret_id: impl Into<String>,
        keap: Arc<dyn TokenEndpoint>,
        settings: TokenSettings,
    ) -> Result<Self, TokenError> {
        settings.check()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                secret_id: secret_id.into(),
                keap,
                settings,
                process_id: Uuid::new_v4().to_string(),
                flights_started: AtomicU64::new(0),
                flights_finished: AtomicU64::new(0),
                cache: RwLock::new(None),
                gate: Arc::new(Mutex::new(FlightLog::default())),
            }),
        })
    }

    /// This process's id, the prefix of every lease it takes.
    pub fn process_id(&self) -> &str {
        &self.inner.process_id
    }

    /// Forget the cached state (the next request reads the store).
    pub fn clear_cache(&self) {
        *self.inner.cache.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The cached access token, if it has more than the margin left. No store call.
    fn cached_credential(&self) -> Option<Credential> {
        let cached = self.inner.cached()?;
        let state = &cached.state;
        let healthy = state.status == LinkStatus::Connected
            && state.access_left(SystemTime::now()) > access_margin(state, &self.inner.settings);
        healthy.then(|| credential_of(state)).flatten()
    }

    /// Runs the protocol for `need` as this process's single flight. The run is a task of its
    /// own, so a caller that gives up (a Lambda timeout) cannot cut a commit short.
    async fn fly(&self, need: Need) -> FlightResult {
        let seen = self.inner.flights_finished.load(Ordering::SeqCst);
        let mut log = self.inner.gate.clone().lock_owned().await;
        if log.finished != seen {
            match &log.last {
                Some(Ok(landed)) if !need.is_due(&landed.snapshot.state, SystemTime::now(), &self.inner.settings) => {
                    return Ok(Landed { snapshot: landed.snapshot.clone(), action: RotationAction::RotatedByOther });
                }
                Some(Err(error)) if matches!(need, Need::Access) => return Err(error.clone()),
                _ => {}
            }
        }
        let inner = self.inner.clone();
        let flight = tokio::spawn(async move {
            let result = inner.run(need).await;
            log.finished += 1;
            inner.flights_finished.store(log.finished, Ordering::SeqCst);
            log.last = Some(result.clone());
            result
        });
        flight.await.unwrap_or_else(|error| {
            Err(TokenError::Unavailable { detail: format!("the refresh task failed: {error}"), retry_after: None })
        })
    }

    /// On a failed refresh, an access token that has not expired yet is still worth using.
    fn still_valid_fallback(&self, error: TokenError) -> Result<Credential, TokenError> {
        if let TokenError::Unavailable { .. } = &error
            && let Some(cached) = self.inner.cached()
            && cached.state.status == LinkStatus::Connected
            && cached.state.access_left(SystemTime::now()) > Duration::ZERO
            && let Some(credential) = credential_of(&cached.state)
        {
            tracing::warn!(error = %error, "refresh failed; using the access token that is still valid");
            return Ok(credential);
        }
        Err(error)
    }
}

fn credential_of(state: &TokenState) -> Option<Credential> {
    state
        .access_token
        .clone()
        .map(|token| Credential::AccessToken { token, generation: state.generation })
}

fn transient_to_unavailable(error: StoreError) -> TokenError {
    if error.is_transient() {
        TokenError::Unavailable { detail: error.to_string(), retry_after: None }
    } else {
        TokenError::Store(error)
    }
}

fn status_error(state: &TokenState) -> Option<TokenError> {
    match state.status {
        LinkStatus::Connected => None,
        LinkStatus::NotConnected => Some(TokenError::NotConnected),
        LinkStatus::NeedsReauth => Some(TokenError::NeedsReauth {
            reason: state.needs_reauth_reason.clone().unwrap_or_else(|| format!("the connection was marked for re-authorization; {REAUTH_HINT}")),
        }),
    }
}

impl Inner {
    fn cached(&self) -> Option<Arc<Snapshot>> {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn remember(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
        snapshot
    }

    fn backoff(&self, min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            // backon without `std` seeds every process alike; jitter must differ per process.
            .with_jitter_seed(Uuid::new_v4().as_u64_pair().0)
            .without_max_times()
            .build()
    }

    fn store_backoff(&self) -> impl Iterator<Item = Duration> {
        self.backoff(self.settings.poll_min, self.settings.poll_max)
    }

    /// Reads and parses the current version, retrying transient store errors a few times.
    async fn read(&self) -> Result<Option<Snapshot>, TokenError> {
        let mut delays = self.store_backoff();
        let mut attempt = 1;
        loop {
            match self.store.read_current(&self.secret_id).await {
                Ok(None) | Err(StoreError::NotFound { .. }) => return Ok(None),
                Ok(Some(StoredVersion { version_id, value })) => {
                    let state = TokenState::from_json(value.expose_secret()).map_err(TokenError::Misconfigured)?;
                    return Ok(Some(Snapshot { version_id, state }));
                }
                Err(error) if error.is_transient() && attempt < self.settings.store_attempts => {
                    tracing::debug!(%error, attempt, "store read failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(delays.next().unwrap_or(self.settings.poll_max)).await;
                }
                Err(error) => return Err(transient_to_unavailable(error)),
            }
        }
    }

    /// Reads the current version; an absent secret or an empty state is [`TokenError::NotConnected`].
    async fn read_connected(&self) -> Result<Snapshot, TokenError> {
        self.read().await?.ok_or(TokenError::NotConnected)
    }

    /// Puts `value` as `child_id(parent, step)` and swaps it in from `parent`, retrying
    /// transient errors with the same id and value until `deadline`.
    async fn write_child(&self, parent: &str, step: Step, value: &SecretString, deadline: Instant) -> Result<ChildWrite, TokenError> {
        let child = child_version_id(parent, step);
        let mut delays = self.store_backoff();
        let mut pause = |error: StoreError| {
            if error.is_transient() && Instant::now() < deadline {
                tracing::debug!(%error, step = step.as_str(), "store write failed; retrying with the same version id");
                Ok(delays.next().unwrap_or(self.settings.poll_max))
            } else {
                Err(transient_to_unavailable(error))
            }
        };
        loop {
            match self.store.put_version(&self.secret_id, &child, value).await {
                Ok(PutOutcome::Conflict) => return Ok(ChildWrite::Lost),
                Ok(PutOutcome::Created | PutOutcome::AlreadyExists) => break,
                Err(error) => tokio::time::sleep(pause(error)?).await,
            }
        }
        loop {
            match self.store.swap_current(&self.secret_id, parent, &child).await {
                Ok(SwapOutcome::Swapped) => return Ok(ChildWrite::Current(child)),
                // A swap whose answer was lost looks stale on retry: check where current is.
                Ok(SwapOutcome::Stale) => {
                    return Ok(match self.read().await? {
                        Some(current) if current.version_id == child => ChildWrite::Current(child),
                        _ => ChildWrite::Lost,
                    });
                }
                Err(error) => tokio::time::sleep(pause(error)?).await,
            }
        }
    }

    fn short_deadline(&self) -> Instant {
        Instant::now() + self.settings.poll_max * self.settings.store_attempts as u32
    }

    /// The protocol (steps 1 to 6 of `token-rotation.md`) for one flight.
    async fn run(&self, need: Need) -> FlightResult {
        let holder = format!("{}/{}", self.process_id, self.flights_started.fetch_add(1, Ordering::SeqCst));
        let settings = &self.settings;
        let started = SystemTime::now();
        let wait_deadline = Instant::now() + settings.lease_duration + settings.clock_skew + settings.poll_max;
        let mut polls = self.backoff(settings.poll_min, settings.poll_max);
        let mut waited = false;
        // A lease child that exists but that nobody swapped in yet: (parent, child, first seen).
        let mut orphan: Option<(String, String, Instant)> = None;
        loop {
            let snapshot = self.read_connected().await?;
            let snapshot = self.remember(snapshot);
            let state = &snapshot.state;
            if let Some(error) = status_error(state) {
                return Err(error);
            }
            let now = SystemTime::now();
            if !need.is_due(state, now, settings) {
                let action = if waited { RotationAction::RotatedByOther } else { RotationAction::NotDue };
                return Ok(Landed { snapshot, action });
            }
            // A holder gave up while we waited (Keap failing): share its failure instead of
            // spending the same refresh token on another try right away.
            if waited && state.lease.is_none() && state.last_error_at.is_some_and(|at| at >= started) {
                return Err(TokenError::Unavailable {
                    detail: state.last_error.clone().unwrap_or_else(|| "the refresh failed".into()),
                    retry_after: None,
                });
            }
            let live_lease = state.live_lease(now, settings.clock_skew);
            if state.lease.is_some() && live_lease.is_none() && self.finish_unswapped_commit(&snapshot).await {
                continue;
            }
            let mut pause = None;
            match live_lease {
                Some(lease) => {
                    tracing::debug!(generation = state.generation, "a refresh is in progress elsewhere; waiting");
                    pause = Some(left(lease.until + settings.clock_skew, now));
                }
                None => match self.acquire(&holder, &snapshot).await? {
                    Some(leased) => return self.refresh_holding(&holder, leased).await,
                    None => {
                        let child = child_version_id(&snapshot.version_id, Step::Lease);
                        match &orphan {
                            Some((parent, known, seen)) if *parent == snapshot.version_id && *known == child => {
                                if seen.elapsed() >= settings.orphan_grace {
                                    // Its creator died between put and swap: finish the swap, the
                                    // lease inside then runs out and is taken over.
                                    tracing::info!(generation = state.generation, "finishing a lease swap left undone");
                                    let _ = self.store.swap_current(&self.secret_id, parent, &child).await;
                                    orphan = None;
                                }
                            }
                            _ => orphan = Some((snapshot.version_id.clone(), child, Instant::now())),
                        }
                    }
                },
            }
            if Instant::now() >= wait_deadline {
                return Err(TokenError::Unavailable {
                    detail: "another process is refreshing the Keap token and has not finished in time".into(),
                    retry_after: Some(settings.lease_duration),
                });
            }
            waited = true;
            let delay = polls.next().unwrap_or(settings.poll_max);
            let delay = pause.map_or(delay, |until_expiry| delay.min(until_expiry.max(settings.poll_min)));
            tokio::time::sleep(delay).await;
        }
    }

    /// A holder whose lease ran out may have died between the put of its commit and the
    /// swap. The commit's value is fixed, so anyone may finish the swap and save the pair.
    async fn finish_unswapped_commit(&self, expired: &Snapshot) -> bool {
        let commit = child_version_id(&expired.version_id, Step::Commit);
        match self.store.read_version(&self.secret_id, &commit).await {
            Ok(Some(_)) => {
                let swapped = self.store.swap_current(&self.secret_id, &expired.version_id, &commit).await;
                tracing::info!(generation = expired.state.generation, ?swapped, "finished a commit its holder left unswapped");
                matches!(swapped, Ok(SwapOutcome::Swapped))
            }
            _ => false,
        }
    }

    /// Step 2: write the lease child of `current` and swap it in. `None`: someone else got it.
    async fn acquire(&self, holder: &str, current: &Snapshot) -> Result<Option<Snapshot>, TokenError> {
        let until = SystemTime::now() + self.settings.lease_duration;
        let leased = current.state.with_lease(holder, until);
        match self.write_child(&current.version_id, Step::Lease, &leased.to_secret(), self.short_deadline()).await? {
            ChildWrite::Current(version_id) => {
                tracing::info!(generation = leased.generation, holder, "took the rotation lease");
                Ok(Some(Snapshot { version_id, state: leased }))
            }
            ChildWrite::Lost => Ok(None),
        }
    }

    /// Steps 3, 4 and 6: holding the lease, call Keap and commit or record the outcome.
    async fn refresh_holding(&self, holder: &str, leased: Snapshot) -> FlightResult {
        let settings = &self.settings;
        let lease_until = leased.state.lease.as_ref().map(|l| l.until).unwrap_or(SystemTime::UNIX_EPOCH);
        let Some(refresh_token) = leased.state.refresh_token.clone() else {
            let reason = format!("no refresh token is stored; {REAUTH_HINT}");
            return self.record_reauth(leased, &reason).await;
        };
        // Never start the Keap call unless the lease covers it and the commit.
        if left(lease_until, SystemTime::now()) < settings.keap_timeout + settings.commit_allowance {
            self.release(&leased, "the lease ran short before Keap could be called").await;
            return Err(TokenError::Unavailable { detail: "the rotation lease ran short; try again".into(), retry_after: None });
        }
        let answer = tokio::time::timeout(settings.keap_timeout, self.keap.refresh(&refresh_token))
            .await
            .unwrap_or_else(|_| Err(OAuthError::OutcomeUnknown(format!("no answer within {:?}", settings.keap_timeout))));
        match answer {
            Ok(grant) => self.commit(leased, &grant, holder).await,
            Err(error) if error.may_have_rotated() => {
                tracing::error!(%error, "Keap's answer to a refresh was lost; the token may be spent");
                let reason = format!("Keap may have rotated the token but its answer was lost ({error}); {REAUTH_HINT}");
                self.record_reauth(leased, &reason).await
            }
            Err(error @ OAuthError::RefreshTokenRejected { .. }) => self.after_rejection(leased, &refresh_token, &error).await,
            Err(OAuthError::InvalidClient(detail)) => {
                let message = format!("Keap refused the client credentials ({detail})");
                self.release(&leased, &message).await;
                Err(TokenError::Misconfigured(format!("{message}; check client_id and client_secret in the app secret")))
            }
            Err(error) => {
                tracing::warn!(%error, "refresh failed without spending the token; releasing the lease");
                let retry_after = match &error {
                    OAuthError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                self.release(&leased, &error.to_string()).await;
                Err(TokenError::Unavailable { detail: error.to_string(), retry_after })
            }
        }
    }

    /// Step 4: make the new pair current, whatever happens to the lease meanwhile.
    async fn commit(&self, leased: Snapshot, grant: &TokenGrant, holder: &str) -> FlightResult {
        let generation = leased.state.generation;
        let spent = leased.state.refresh_token.clone();
        let committed = leased.state.refreshed(grant, SystemTime::now());
        let value = committed.to_secret();
        // The pair exists only in this process: keep trying for a whole lease period.
        let deadline = Instant::now() + self.settings.lease_duration;
        let mut parent = leased.version_id;
        loop {
            match self.write_child(&parent, Step::Commit, &value, deadline).await {
                Ok(ChildWrite::Current(version_id)) => {
                    tracing::info!(generation = committed.generation, holder, "rotated the Keap token pair");
                    let snapshot = self.remember(Snapshot { version_id, state: committed });
                    return Ok(Landed { snapshot, action: RotationAction::Rotated });
                }
                Ok(ChildWrite::Lost) => {}
                Err(error) => {
                    tracing::error!(%error, generation, "could not store the new Keap token pair; it is lost");
                    return Err(error);
                }
            }
            // The swap lost: if only lease records changed (same generation, same refresh
            // token), commit on top of the new current version instead.
            let current = self.read_connected().await?;
            let unchanged = current.state.generation == generation
                && current.state.status == LinkStatus::Connected
                && spent.as_ref().is_some_and(|t| current.state.same_refresh_token(t));
            if !unchanged {
                tracing::warn!(generation = current.state.generation, "a newer pair was stored meanwhile; ours is superseded");
                let snapshot = self.remember(current);
                return match status_error(&snapshot.state) {
                    Some(error) => Err(error),
                    None => Ok(Landed { snapshot, action: RotationAction::RotatedByOther }),
                };
            }
            if Instant::now() >= deadline {
                return Err(TokenError::Unavailable { detail: "could not store the new pair in time".into(), retry_after: None });
            }
            parent = current.version_id;
        }
    }

    /// Step 6 for Keap 5xx/429/unreachable: drop the lease, record the error. Best effort: if
    /// this fails the lease simply runs out.
    async fn release(&self, leased: &Snapshot, error: &str) {
        let released = leased.state.released(error, SystemTime::now());
        if let Err(store_error) = self.write_child(&leased.version_id, Step::Release, &released.to_secret(), self.short_deadline()).await {
            tracing::warn!(error = %store_error, "could not release the lease; it will run out");
        }
    }

    /// Invariant 6: Keap refused the token. A concurrent rotation looks the same, so re-read:
    /// only if the stored refresh token is still the refused one is the connection dead.
    async fn after_rejection(&self, leased: Snapshot, refused: &SecretString, error: &OAuthError) -> FlightResult {
        let current = self.read_connected().await?;
        if !current.state.same_refresh_token(refused) {
            tracing::warn!(generation = current.state.generation, "refresh refused, but another process had rotated; using its pair");
            let snapshot = self.remember(current);
            return match status_error(&snapshot.state) {
                Some(error) => Err(error),
                None => Ok(Landed { snapshot, action: RotationAction::RotatedByOther }),
            };
        }
        let reason = format!("{error}; {REAUTH_HINT}");
        // Record on top of whatever holds the refused token now (normally our lease).
        let base = if current.version_id == leased.version_id { leased } else { current };
        self.record_reauth(base, &reason).await
    }

    /// Marks the connection as needing re-authorization, on top of `base` or of a later
    /// version that still holds the same refresh token. From then on nobody calls Keap's token
    /// endpoint until a new authorization.
    async fn record_reauth(&self, base: Snapshot, reason: &str) -> FlightResult {
        let spent = base.state.refresh_token.clone();
        let mut base = base;
        for _ in 0..self.settings.store_attempts {
            let marked = base.state.needing_reauth(reason, SystemTime::now());
            match self.write_child(&base.version_id, Step::Reauth, &marked.to_secret(), self.short_deadline()).await? {
                ChildWrite::Current(version_id) => {
                    tracing::error!(reason, "the Keap connection needs re-authorization");
                    self.remember(Snapshot { version_id, state: marked });
                    return Err(TokenError::NeedsReauth { reason: reason.to_owned() });
                }
                ChildWrite::Lost => {
                    let current = self.read_connected().await?;
                    let same_token = match &spent {
                        Some(token) => current.state.same_refresh_token(token),
                        None => current.state.refresh_token.is_none(),
                    };
                    if !same_token || current.state.status != LinkStatus::Connected {
                        let snapshot = self.remember(current);
                        return match status_error(&snapshot.state) {
                            Some(error) => Err(error),
                            None => Ok(Landed { snapshot, action: RotationAction::RotatedByOther }),
                        };
                    }
                    base = current;
                }
            }
        }
        Err(TokenError::NeedsReauth { reason: reason.to_owned() })
    }

    /// Stores a freshly authorized pair on top of whatever is current.
    async fn connect(&self, grant: &TokenGrant, allow_switch: bool) -> Result<ConnectOutcome, ConnectError> {
        for _ in 0..self.settings.store_attempts {
            let current = match self.read().await {
                Ok(current) => current,
                // An unreadable state must not block a new authorization: replace it.
                Err(TokenError::Misconfigured(_)) => self.read_raw_version_id().await?.map(|version_id| Snapshot { version_id, state: TokenState::default() }),
                Err(error) => return Err(error.into()),
            };
            let previous = current.as_ref().map(|c| c.state.clone()).unwrap_or_default();
            let had_pair = previous.status != LinkStatus::NotConnected;
            if had_pair
                && !allow_switch
                && let (Some(current_account), Some(requested)) = (&previous.account, &grant.account)
                && current_account != requested
            {
                return Err(ConnectError::DifferentAccount { current: current_account.clone(), requested: requested.clone() });
            }
            let next = TokenState::connected(grant, previous.generation + 1, SystemTime::now());
            let value = next.to_secret();
            let written = match &current {
                Some(current) => self.write_child(&current.version_id, Step::Connect, &value, self.short_deadline()).await?,
                None => self.write_first(&value).await?,
            };
            if let ChildWrite::Current(version_id) = written {
                tracing::info!(generation = next.generation, account = next.account.as_deref().unwrap_or("unknown"), "stored a new Keap authorization");
                self.remember(Snapshot { version_id, state: next });
                return Ok(ConnectOutcome::Connected { account: grant.account.clone(), replaced: had_pair });
            }
        }
        Err(TokenError::Unavailable { detail: "the token secret kept changing during the connection; try again".into(), retry_after: None }.into())
    }

    async fn read_raw_version_id(&self) -> Result<Option<String>, TokenError> {
        Ok(self.store.read_current(&self.secret_id).await.map_err(transient_to_unavailable)?.map(|v| v.version_id))
    }

    /// The first version of a secret that has none: the put itself makes it current.
    async fn write_first(&self, value: &SecretString) -> Result<ChildWrite, TokenError> {
        let child = child_version_id(ROOT_PARENT, Step::Connect);
        let mut delays = self.store_backoff();
        for attempt in 1..=self.settings.store_attempts {
            match self.store.put_version(&self.secret_id, &child, value).await {
                Ok(PutOutcome::Conflict) => return Ok(ChildWrite::Lost),
                Ok(_) => {
                    return Ok(match self.read_raw_version_id().await? {
                        Some(current) if current == child => ChildWrite::Current(child),
                        _ => ChildWrite::Lost,
                    });
                }
                Err(error) if error.is_transient() && attempt < self.settings.store_attempts => {
                    tokio::time::sleep(delays.next().unwrap_or(self.settings.poll_max)).await;
                }
                Err(error) => return Err(transient_to_unavailable(error)),
            }
        }
        Ok(ChildWrite::Lost)
    }
}

#[async_trait]
impl CredentialSource for TokenSource {
    async fn credential(&self) -> Result<Credential, TokenError> {
        if let Some(credential) = self.cached_credential() {
            return Ok(credential);
        }
        match self.fly(Need::Access).await {
            Ok(landed) => credential_of(&landed.snapshot.state).ok_or(TokenError::NotConnected),
            Err(error) => self.still_valid_fallback(error),
        }
    }

    async fn after_unauthorized(&self, rejected: &Credential) -> Result<Credential, TokenError> {
        let Credential::AccessToken { token: rejected, .. } = rejected else {
            return Err(TokenError::Misconfigured("an API key was rejected, but this connection uses OAuth".into()));
        };
        // Another process may have rotated: one read, and the stored token if it differs.
        let current = self.inner.read_connected().await?;
        let current = self.inner.remember(current);
        if let Some(error) = status_error(&current.state) {
            return Err(error);
        }
        if !Need::Unauthorized(rejected.clone()).is_due(&current.state, SystemTime::now(), &self.inner.settings) {
            return credential_of(&current.state).ok_or(TokenError::NotConnected);
        }
        let landed = self.fly(Need::Unauthorized(rejected.clone())).await?;
        credential_of(&landed.snapshot.state).ok_or(TokenError::NotConnected)
    }
}

#[async_trait]
impl Connection for TokenSource {
    async fn connect(&self, grant: TokenGrant, allow_switch: bool) -> Result<ConnectOutcome, ConnectError> {
        // Behind the single-flight gate, so no refresh of this process runs meanwhile.
        let _gate = self.inner.gate.lock().await;
        self.inner.connect(&grant, allow_switch).await
    }

    async fn status(&self) -> Result<ConnectionStatus, TokenError> {
        let now = SystemTime::now();
        match self.inner.read().await? {
            Some(snapshot) => Ok(self.inner.remember(snapshot).state.status_report(now)),
            None => Ok(TokenState::default().status_report(now)),
        }
    }

    async fn rotate_if_due(&self, policy: RotationPolicy) -> Result<RotationReport, TokenError> {
        let landed = self.fly(Need::Rotate(policy)).await?;
        Ok(RotationReport { action: landed.action, status: landed.snapshot.state.status_report(SystemTime::now()) })
    }
}
