//! The steps of one flight of the rotation protocol (steps 1 to 6 of `docs/token-rotation.md`),
//! over [`Versions`]. [`super::source::TokenSource`] runs them as its single flight.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokio::time::Instant;

use super::clock::Clock;
use super::invocation::{self, SpentToken};
use super::settings::TokenSettings;
use super::state::{LinkStatus, TokenState, later, left};
use super::versions::{ChildWrite, Snapshot, Step, Versions, child_version_id, jittered};
use super::{ConnectError, ConnectOutcome, RotationAction, RotationPolicy, TokenError, TokenGrant};
use crate::keap::oauth::{OAuthError, TokenEndpoint};

pub const REAUTH_HINT: &str = "re-authorize at /oauth/start";

/// What a flight must achieve.
#[derive(Clone)]
pub(crate) enum Need {
    /// An access token with more than the margin left (request path).
    Access,
    /// Keap answered 401 to this access token.
    Unauthorized(SecretString),
    /// The scheduled rotation.
    Rotate(RotationPolicy),
}

impl Need {
    pub fn is_due(&self, state: &TokenState, now: SystemTime, settings: &TokenSettings) -> bool {
        let access_low = state.access_left(now) <= access_margin(state, settings);
        match self {
            Need::Access => access_low,
            Need::Unauthorized(rejected) => access_low || state.same_access_token(rejected),
            Need::Rotate(policy) => {
                // Never more than half the pair's lifetime, or a short-lived pair (Keap decides
                // `expires_in`) would make every scheduled run rotate.
                let lifetime = state.lifetime();
                let lead = if lifetime.is_zero() {
                    policy.lead
                } else {
                    policy.lead.min(lifetime / 2)
                };
                state.access_left(now) < lead || state.refresh_age(now).is_some_and(|age| age > policy.max_refresh_age)
            }
        }
    }

    /// A refresh only a 401 asks for (the stored token still has life): rate-limited.
    fn forced_by_401(&self, state: &TokenState, now: SystemTime, settings: &TokenSettings) -> bool {
        matches!(self, Need::Unauthorized(_)) && state.access_left(now) > access_margin(state, settings)
    }
}

/// The refresh margin for this pair: the configured one, but never more than half the
/// pair's lifetime, so a short-lived token cannot make every request refresh again.
pub(crate) fn access_margin(state: &TokenState, settings: &TokenSettings) -> Duration {
    let lifetime = state.lifetime();
    if lifetime.is_zero() {
        settings.access_margin
    } else {
        settings.access_margin.min(lifetime / 2)
    }
}

/// How a flight ended well.
#[derive(Debug, Clone)]
pub(crate) struct Landed {
    pub snapshot: Arc<Snapshot>,
    pub action: RotationAction,
}

pub(crate) type FlightResult = Result<Landed, TokenError>;

pub(crate) fn status_error(state: &TokenState) -> Option<TokenError> {
    match state.status {
        LinkStatus::Connected => None,
        LinkStatus::NotConnected => Some(TokenError::NotConnected),
        LinkStatus::NeedsReauth => Some(TokenError::NeedsReauth {
            reason: state
                .needs_reauth_reason
                .clone()
                .unwrap_or_else(|| format!("the connection was marked for re-authorization; {REAUTH_HINT}")),
        }),
    }
}

fn unavailable(detail: impl Into<String>, retry_after: Option<Duration>) -> TokenError {
    TokenError::Unavailable {
        detail: detail.into(),
        retry_after,
    }
}

/// One flight's view of the world: the store, Keap, the clock, and who it is.
pub(crate) struct Flight<'a> {
    pub versions: &'a Versions,
    pub keap: &'a dyn TokenEndpoint,
    pub clock: &'a dyn Clock,
    pub holder: String,
    /// The invocation's deadline (invariant 9), if any.
    pub deadline: Option<SystemTime>,
    /// Keeps what the flight learns (the cache of the process).
    pub cache: &'a std::sync::RwLock<Option<Arc<Snapshot>>>,
}

impl Flight<'_> {
    fn settings(&self) -> &TokenSettings {
        &self.versions.settings
    }

    fn remember(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
        snapshot
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// `at` on the wall clock as a tokio instant (now when it has passed).
    fn instant_at(&self, at: SystemTime) -> Instant {
        let now = Instant::now();
        // A stored time may be centuries away: saturate rather than overflow.
        now.checked_add(left(at, self.now()))
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
    }

    /// A newer state won: adopt it, and report its status.
    fn adopt(&self, current: Snapshot) -> FlightResult {
        let snapshot = self.remember(current);
        match status_error(&snapshot.state) {
            Some(error) => Err(error),
            None => Ok(Landed {
                snapshot,
                action: RotationAction::RotatedByOther,
            }),
        }
    }

    /// Time the invocation has left (unbounded without a deadline).
    fn invocation_left(&self) -> Duration {
        self.deadline
            .map_or(Duration::MAX, |deadline| left(deadline, self.now()))
    }

    /// The protocol for one flight.
    pub async fn run(&self, need: Need) -> FlightResult {
        let settings = self.settings();
        let wait_deadline = Instant::now() + settings.lease_duration + settings.clock_skew + settings.poll_max;
        let mut polls = jittered(settings.poll_min, settings.poll_max);
        let mut waited = false;
        // A lease child that exists but that nobody swapped in yet: (parent, first seen).
        let mut orphan: Option<(String, Instant)> = None;
        loop {
            let snapshot = self.remember(self.versions.read_connected().await?);
            let state = &snapshot.state;
            if let Some(error) = status_error(state) {
                return Err(error);
            }
            let now = self.now();
            if !need.is_due(state, now, settings) {
                let action = if waited {
                    RotationAction::RotatedByOther
                } else {
                    RotationAction::NotDue
                };
                return Ok(Landed { snapshot, action });
            }
            let mut pause = None;
            match &state.lease {
                Some(lease) if later(lease.until, settings.clock_skew) > now => {
                    tracing::debug!(
                        generation = state.generation,
                        "a refresh is in progress elsewhere; waiting"
                    );
                    pause = Some(left(later(lease.until, settings.clock_skew), now));
                }
                Some(lease) => {
                    if self.versions.finish_outcome_of(&snapshot).await {
                        continue;
                    }
                    // No outcome stored: the holder may have spent the token and its commit may
                    // still land. Taking over now could spend the token a second time.
                    let takeover_at = later(lease.until, settings.clock_skew + settings.late_commit_grace);
                    if now < takeover_at {
                        tracing::warn!(
                            generation = state.generation,
                            "a rotation lease ran out with no outcome; waiting for a late commit"
                        );
                        let wait = left(takeover_at, now);
                        return Err(unavailable(
                            format!(
                                "a token rotation was interrupted; its pair may still be stored within {}s",
                                wait.as_secs().max(1)
                            ),
                            Some(wait),
                        ));
                    } else if let Some(result) = self.try_to_hold(&need, &snapshot, &mut orphan).await? {
                        return result;
                    }
                }
                None => {
                    if let Some(error) = self.backing_off(&need, state, now) {
                        return Err(error);
                    }
                    if let Some(result) = self.try_to_hold(&need, &snapshot, &mut orphan).await? {
                        return result;
                    }
                }
            }
            if Instant::now() >= wait_deadline {
                break;
            }
            waited = true;
            let delay = polls.next().unwrap_or(settings.poll_max);
            let delay = pause.map_or(delay, |until_expiry| delay.min(until_expiry.max(settings.poll_min)));
            tokio::time::sleep(delay).await;
        }
        Err(unavailable(
            "another process is refreshing the Keap token and has not finished in time",
            Some(settings.lease_duration),
        ))
    }

    /// Invariant 10: a failure recorded by any process (and a 401 storm) holds every process
    /// back, with no write, until the shared backoff allows another attempt.
    fn backing_off(&self, need: &Need, state: &TokenState, now: SystemTime) -> Option<TokenError> {
        let settings = self.settings();
        let wait = state.backoff_left(now);
        if !wait.is_zero() {
            let last = state
                .last_error
                .clone()
                .unwrap_or_else(|| "the last refresh failed".into());
            return Some(unavailable(
                format!("{last}; next attempt in {}s", wait.as_secs().max(1)),
                Some(wait),
            ));
        }
        if need.forced_by_401(state, now, settings) && state.unauthorized_refreshes > 0 {
            let next = state
                .last_refresh_at
                .map(|at| later(at, settings.backoff(state.unauthorized_refreshes)))
                .unwrap_or(now);
            let wait = left(next, now);
            if !wait.is_zero() {
                return Some(unavailable(
                    format!(
                        "Keap refused a fresh access token again; the next 401-driven refresh is allowed in {}s",
                        wait.as_secs().max(1)
                    ),
                    Some(wait),
                ));
            }
        }
        None
    }

    /// Step 2: take the lease on `current` (no lease, or one taken over) and refresh holding
    /// it. `None`: someone else got it first (or the put is waiting for its swap); wait.
    async fn try_to_hold(
        &self,
        need: &Need,
        current: &Snapshot,
        orphan: &mut Option<(String, Instant)>,
    ) -> Result<Option<FlightResult>, TokenError> {
        let settings = self.settings();
        // Invariant 9: no lease (and no write) unless this invocation can see a refresh through.
        let needed = settings.keap_timeout + settings.commit_allowance + settings.store_call_timeout;
        if self.invocation_left() < needed {
            return Err(unavailable(
                "too little time left in this invocation to refresh the Keap token",
                None,
            ));
        }
        if let Some((parent, seen)) = orphan.as_ref()
            && *parent == current.version_id
        {
            // The lease child exists: putting it again would only be refused. Give its writer
            // time to swap it in, then finish the swap ourselves (the writer may have died).
            if seen.elapsed() >= settings.orphan_grace {
                tracing::info!(
                    generation = current.state.generation,
                    "finishing a lease swap left undone"
                );
                let _ = self.versions.swap(parent, &child_version_id(parent, Step::Lease)).await;
                *orphan = None;
            }
            return Ok(None);
        }
        let until = later(self.now(), settings.lease_duration);
        let leased = current.state.with_lease(&self.holder, until);
        match self
            .versions
            .write_state(&current.version_id, Step::Lease, &leased)
            .await?
        {
            ChildWrite::Current(version_id) => {
                tracing::info!(generation = leased.generation, holder = %self.holder, "took the rotation lease");
                let leased = Snapshot {
                    version_id,
                    state: leased,
                };
                Ok(Some(self.refresh_holding(need, leased).await))
            }
            ChildWrite::Lost => {
                *orphan = Some((current.version_id.clone(), Instant::now()));
                Ok(None)
            }
        }
    }

    /// Whether the lease (less the skew) and the invocation still cover a Keap call and the commit.
    fn can_call_keap(&self, lease_until: SystemTime) -> bool {
        let settings = self.settings();
        let now = self.now();
        left(lease_until, now) >= settings.holder_needs()
            && self.invocation_left() >= settings.keap_timeout + settings.commit_allowance
    }

    async fn call_keap(&self, refresh_token: &SecretString) -> Result<TokenGrant, OAuthError> {
        let timeout = self.settings().keap_timeout;
        tokio::time::timeout(timeout, self.keap.refresh(refresh_token))
            .await
            .unwrap_or_else(|_| Err(OAuthError::OutcomeUnknown(format!("no answer within {timeout:?}"))))
    }

    /// Steps 3, 4 and 6: holding the lease, call Keap and commit or record the outcome.
    async fn refresh_holding(&self, need: &Need, leased: Snapshot) -> FlightResult {
        let lease_until = leased
            .state
            .lease
            .as_ref()
            .map(|l| l.until)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let Some(refresh_token) = leased.state.refresh_token.clone() else {
            let reason = format!("no refresh token is stored; {REAUTH_HINT}");
            return self.record_reauth(leased, &reason).await;
        };
        // Never start the Keap call unless the lease and the invocation cover it and the commit.
        if !self.can_call_keap(lease_until) {
            self.release(
                &leased,
                "the lease or the invocation ran short before Keap could be called",
                None,
            )
            .await;
            return Err(unavailable("the rotation lease ran short; try again", None));
        }
        let forced_by_401 = need.forced_by_401(&leased.state, self.now(), self.settings());
        let spent = SpentToken::mark();
        let mut answer = self.call_keap(&refresh_token).await;
        let mut retried = false;
        // Invariant 1's one exception: an answer that never arrived, retried once with the same
        // token inside the lease. It cannot lose anything, and it saves the connection when the
        // first call never reached Keap.
        if let Err(error) = &answer
            && error.may_have_rotated()
            && self.can_call_keap(lease_until)
        {
            tracing::warn!(%error, "Keap's answer to a refresh was lost; trying once more with the same token");
            retried = true;
            answer = self.call_keap(&refresh_token).await;
        }
        let result = match answer {
            Ok(grant) => self.commit(leased, &grant, forced_by_401).await,
            Err(error) if retried || error.may_have_rotated() => {
                tracing::error!(%error, retried, "Keap's answer to a refresh was lost; the token may be spent");
                let reason =
                    format!("Keap may have rotated the token but its answer was lost ({error}); {REAUTH_HINT}");
                self.record_reauth(leased, &reason).await
            }
            Err(error @ OAuthError::RefreshTokenRejected { .. }) => {
                self.after_rejection(leased, &refresh_token, &error).await
            }
            Err(OAuthError::InvalidClient(detail)) => {
                let message = format!("Keap refused the client credentials ({detail})");
                self.release(&leased, &message, None).await;
                Err(TokenError::Misconfigured(format!(
                    "{message}; check client_id and client_secret in the app secret"
                )))
            }
            Err(error) => {
                tracing::warn!(%error, "refresh failed without spending the token; releasing the lease");
                let retry_after = match &error {
                    OAuthError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let wait = self.release(&leased, &error.to_string(), retry_after).await;
                Err(unavailable(error.to_string(), Some(wait)))
            }
        };
        drop(spent);
        result
    }

    /// Step 4: make the new pair current, whatever happens to the lease meanwhile: on top of
    /// any version that still holds the spent token, whatever its status (invariant 8).
    async fn commit(&self, leased: Snapshot, grant: &TokenGrant, forced_by_401: bool) -> FlightResult {
        let settings = self.settings();
        let generation = leased.state.generation;
        let spent = leased.state.refresh_token.clone();
        let lease_until = leased
            .state
            .lease
            .as_ref()
            .map(|l| l.until)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let now = self.now();
        let mut committed = leased.state.refreshed(grant, now);
        // The 401 count outlives other rotations (a storm of 401s must not restart its backoff
        // at every scheduled rotation); a day without a 401-driven refresh starts it over.
        let recent = leased
            .state
            .last_refresh_at
            .is_some_and(|at| now.duration_since(at).unwrap_or_default() < Duration::from_secs(24 * 3600));
        committed.unauthorized_refreshes = match (forced_by_401, recent) {
            (true, true) => leased.state.unauthorized_refreshes.saturating_add(1),
            (true, false) => 1,
            (false, _) => leased.state.unauthorized_refreshes,
        };
        let value = committed.to_secret();
        // Nobody takes the lease over before `until + skew + late_commit_grace`; keep trying
        // until one store call before that.
        let takeover_at = later(lease_until, settings.clock_skew + settings.late_commit_grace);
        let deadline = self.instant_at(takeover_at) - settings.store_call_timeout - settings.clock_skew;
        let mut parent = leased.version_id;
        let mut late_rounds = 0;
        loop {
            // A process frozen past the deadline still gets a short round when it thaws: the
            // pair lands if the store still holds the token it spent.
            let round_deadline = deadline.max(Instant::now() + settings.store_call_timeout * 2);
            match self
                .versions
                .write_child(&parent, Step::Commit, &value, round_deadline)
                .await
            {
                Ok(ChildWrite::Current(version_id)) => {
                    tracing::info!(generation = committed.generation, holder = %self.holder, "rotated the Keap token pair");
                    let snapshot = self.remember(Snapshot {
                        version_id,
                        state: committed,
                    });
                    return Ok(Landed {
                        snapshot,
                        action: RotationAction::Rotated,
                    });
                }
                Ok(ChildWrite::Lost) => {}
                // Transient: the round is over, but the pair may still land (read and decide).
                Err(TokenError::Unavailable { detail, .. }) => {
                    tracing::warn!(%detail, generation, "storing the new Keap token pair is taking long; still trying");
                }
                Err(error) => {
                    tracing::error!(%error, generation, "the store refused the new Keap token pair; it is lost");
                    return Err(error);
                }
            }
            let current = match self.versions.read_connected().await {
                Ok(current) => current,
                Err(TokenError::Unavailable { .. }) if Instant::now() < deadline => continue,
                Err(error) => return Err(error),
            };
            let holds_spent = current.state.generation == generation
                && spent.as_ref().is_some_and(|t| current.state.same_refresh_token(t));
            if !holds_spent {
                tracing::warn!(
                    generation = current.state.generation,
                    "a newer pair was stored meanwhile; ours is superseded"
                );
                return self.adopt(current);
            }
            if Instant::now() >= deadline {
                late_rounds += 1;
                if late_rounds > settings.store_attempts {
                    tracing::error!(
                        generation,
                        "could not store the new Keap token pair in time; it is lost"
                    );
                    return Err(unavailable("could not store the new pair in time", None));
                }
            }
            parent = current.version_id;
        }
    }

    /// Step 6 for Keap 5xx/429/unreachable or a refused client: drop the lease, record the
    /// error and the shared backoff. Best effort: if this fails the lease simply runs out.
    /// Returns the backoff.
    async fn release(&self, leased: &Snapshot, error: &str, retry_after: Option<Duration>) -> Duration {
        let settings = self.settings();
        let now = self.now();
        let wait = settings
            .backoff(leased.state.failures.saturating_add(1))
            .max(retry_after.unwrap_or_default())
            .min(settings.backoff_max);
        let released = leased.state.released(error, now, later(now, wait));
        if let Err(store_error) = self
            .versions
            .write_state(&leased.version_id, Step::Release, &released)
            .await
        {
            tracing::warn!(error = %store_error, "could not release the lease; it will run out");
        }
        wait
    }

    /// Invariant 6: Keap refused the token. A concurrent rotation looks the same, so re-read:
    /// only if the stored refresh token is still the refused one is the connection dead.
    async fn after_rejection(&self, leased: Snapshot, refused: &SecretString, error: &OAuthError) -> FlightResult {
        let current = self.versions.read_connected().await?;
        if !current.state.same_refresh_token(refused) {
            tracing::warn!(
                generation = current.state.generation,
                "refresh refused, but another process had rotated; using its pair"
            );
            return self.adopt(current);
        }
        let reason = format!("{error}; {REAUTH_HINT}");
        let base = if current.version_id == leased.version_id {
            leased
        } else {
            current
        };
        self.record_reauth(base, &reason).await
    }

    /// Marks the connection as needing re-authorization, on top of `base` or of a later
    /// version that still holds the same refresh token, but never over another holder's live
    /// lease (that holder's outcome decides). From then on nobody calls Keap's token endpoint
    /// until a new authorization; the stored access token stays usable until Keap refuses it.
    async fn record_reauth(&self, base: Snapshot, reason: &str) -> FlightResult {
        let spent = base.state.refresh_token.clone();
        let mut base = base;
        for _ in 0..self.settings().store_attempts {
            if let Some(lease) = &base.state.lease
                && lease.holder != self.holder
                && later(lease.until, self.settings().clock_skew) > self.now()
            {
                tracing::warn!(reason, "not recording needs_reauth over another process's live lease");
                return Err(unavailable(
                    "another process is refreshing the Keap token",
                    Some(self.settings().lease_duration),
                ));
            }
            let marked = base.state.needing_reauth(reason, self.now());
            match self
                .versions
                .write_state(&base.version_id, Step::Reauth, &marked)
                .await?
            {
                ChildWrite::Current(version_id) => {
                    tracing::error!(reason, "the Keap connection needs re-authorization");
                    self.remember(Snapshot {
                        version_id,
                        state: marked,
                    });
                    return Err(TokenError::NeedsReauth {
                        reason: reason.to_owned(),
                    });
                }
                ChildWrite::Lost => {
                    let current = self.versions.read_connected().await?;
                    let same_token = match &spent {
                        Some(token) => current.state.same_refresh_token(token),
                        None => current.state.refresh_token.is_none(),
                    };
                    if !same_token || current.state.status != LinkStatus::Connected {
                        return self.adopt(current);
                    }
                    base = current;
                }
            }
        }
        Err(TokenError::NeedsReauth {
            reason: reason.to_owned(),
        })
    }

    /// Stores a freshly authorized pair on top of whatever is current.
    pub async fn connect(&self, grant: &TokenGrant, allow_switch: bool) -> Result<ConnectOutcome, ConnectError> {
        for _ in 0..self.settings().store_attempts {
            let current = match self.versions.read().await {
                Ok(current) => current,
                // An unreadable state must not block a new authorization: replace it.
                Err(TokenError::Misconfigured(_)) => self
                    .versions
                    .read_current_raw()
                    .await
                    .map_err(super::versions::transient_to_unavailable)?
                    .map(|v| Snapshot {
                        version_id: v.version_id,
                        state: TokenState::default(),
                    }),
                Err(error) => return Err(error.into()),
            };
            let previous = current.as_ref().map(|c| c.state.clone()).unwrap_or_default();
            let had_pair = previous.status != LinkStatus::NotConnected;
            if had_pair
                && !allow_switch
                && let (Some(current_account), Some(requested)) = (&previous.account, &grant.account)
                && current_account != requested
            {
                return Err(ConnectError::DifferentAccount {
                    current: current_account.clone(),
                    requested: requested.clone(),
                });
            }
            let next = TokenState::connected(grant, previous.generation + 1, self.now());
            let written = match &current {
                Some(current) => {
                    self.versions
                        .write_state(&current.version_id, Step::Connect, &next)
                        .await?
                }
                None => self.versions.write_first(&next.to_secret()).await?,
            };
            if let ChildWrite::Current(version_id) = written {
                tracing::info!(
                    generation = next.generation,
                    account = next.account.as_deref().unwrap_or("unknown"),
                    "stored a new Keap authorization"
                );
                self.remember(Snapshot {
                    version_id,
                    state: next,
                });
                return Ok(ConnectOutcome::Connected {
                    account: grant.account.clone(),
                    replaced: had_pair,
                });
            }
        }
        Err(TokenError::Unavailable {
            detail: "the token secret kept changing during the connection; try again".into(),
            retry_after: None,
        }
        .into())
    }
}

/// The deadline the current invocation set, for a flight about to start.
pub(crate) fn invocation_deadline() -> Option<SystemTime> {
    invocation::deadline()
}
