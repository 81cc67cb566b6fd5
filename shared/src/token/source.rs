//! [`TokenSource`]: the OAuth credential source. It hands out a valid access token and hides
//! all refreshing: an in-process cache, one flight of the rotation protocol at a time
//! ([`super::protocol`]), and the still-valid token when a refresh cannot happen now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::clock::{self, Clock};
use super::protocol::{Flight, FlightResult, Landed, Need, access_margin, invocation_deadline, status_error};
use super::state::{LinkStatus, TokenState};
use super::versions::{Snapshot, Versions};
use super::{
    ConnectError, ConnectOutcome, Connection, ConnectionStatus, Credential, CredentialSource, RotationAction,
    RotationPolicy, RotationReport, TokenError, TokenGrant,
};
use crate::keap::oauth::TokenEndpoint;
use crate::store::SecretStore;

pub use super::protocol::REAUTH_HINT;
pub use super::settings::TokenSettings;
pub use super::versions::{Step, child_version_id};

/// The in-process single flight: one protocol run at a time; callers that waited behind a
/// finished run take its result instead of starting another.
#[derive(Debug, Default)]
struct FlightLog {
    finished: u64,
    last: Option<FlightResult>,
}

/// OAuth token source over a [`SecretStore`]; see the module docs and `docs/token-rotation.md`.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    versions: Versions,
    keap: Arc<dyn TokenEndpoint>,
    clock: Arc<dyn Clock>,
    /// Unique per process (per `TokenSource`); a flight's lease holder id adds a counter.
    process_id: String,
    flights_started: AtomicU64,
    flights_finished: AtomicU64,
    cache: RwLock<Option<Arc<Snapshot>>>,
    /// An access token Keap refused while the connection needs re-authorization: never handed
    /// out again as the still-valid fallback.
    refused_access: Mutex<Option<SecretString>>,
    gate: Arc<tokio::sync::Mutex<FlightLog>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("secret_id", &self.inner.versions.secret_id)
            .field("process_id", &self.inner.process_id)
            .field("settings", &self.inner.versions.settings)
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
        Self::with_clock(store, secret_id, keap, settings, clock::system())
    }

    /// As [`TokenSource::new`], reading wall-clock time from `clock` (simulations).
    pub fn with_clock(
        store: Arc<dyn SecretStore>,
        secret_id: impl Into<String>,
        keap: Arc<dyn TokenEndpoint>,
        settings: TokenSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TokenError> {
        settings.check()?;
        Ok(Self {
            inner: Arc::new(Inner {
                versions: Versions {
                    store,
                    secret_id: secret_id.into(),
                    settings,
                },
                keap,
                clock,
                process_id: Uuid::new_v4().to_string(),
                flights_started: AtomicU64::new(0),
                flights_finished: AtomicU64::new(0),
                cache: RwLock::new(None),
                refused_access: Mutex::new(None),
                gate: Arc::new(tokio::sync::Mutex::new(FlightLog::default())),
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

    fn settings(&self) -> &TokenSettings {
        &self.inner.versions.settings
    }

    /// The cached access token, if it has more than the margin left. No store call.
    fn cached_credential(&self) -> Option<Credential> {
        let cached = self.inner.cached()?;
        let state = &cached.state;
        let healthy = state.status == LinkStatus::Connected
            && state.access_left(self.inner.clock.now()) > access_margin(state, self.settings());
        healthy.then(|| credential_of(state)).flatten()
    }

    /// Invariant 10 in one process: while the cached state says every process must hold
    /// back, answer at once, with no store call.
    fn cached_backoff(&self) -> Option<TokenError> {
        let cached = self.inner.cached()?;
        let wait = cached.state.backoff_left(self.inner.clock.now());
        (cached.state.status == LinkStatus::Connected && cached.state.lease.is_none() && !wait.is_zero()).then(|| {
            TokenError::Unavailable {
                detail: format!(
                    "{}; next attempt in {}s",
                    cached.state.last_error.as_deref().unwrap_or("the last refresh failed"),
                    wait.as_secs().max(1)
                ),
                retry_after: Some(wait),
            }
        })
    }

    /// Runs the protocol for `need` as this process's single flight. The run is a task of its
    /// own, so a caller that gives up (a Lambda timeout) cannot cut a commit short.
    async fn fly(&self, need: Need) -> FlightResult {
        let seen = self.inner.flights_finished.load(Ordering::SeqCst);
        let deadline = invocation_deadline();
        let mut log = self.inner.gate.clone().lock_owned().await;
        if log.finished != seen {
            match &log.last {
                Some(Ok(landed)) if !need.is_due(&landed.snapshot.state, self.inner.clock.now(), self.settings()) => {
                    return Ok(Landed {
                        snapshot: landed.snapshot.clone(),
                        action: RotationAction::RotatedByOther,
                    });
                }
                Some(Err(error)) if matches!(need, Need::Access) => return Err(error.clone()),
                _ => {}
            }
        }
        let inner = self.inner.clone();
        let flight = tokio::spawn(async move {
            let result = inner.flight(deadline).run(need).await;
            log.finished += 1;
            inner.flights_finished.store(log.finished, Ordering::SeqCst);
            log.last = Some(result.clone());
            result
        });
        flight.await.unwrap_or_else(|error| {
            Err(TokenError::Unavailable {
                detail: format!("the refresh task failed: {error}"),
                retry_after: None,
            })
        })
    }

    /// When no refresh can happen now, an access token that has not expired is still worth
    /// using: through Keap or store failures, the shared backoff, and a connection flagged for
    /// re-authorization, until Keap itself refuses it (refined invariant 1).
    fn still_valid_fallback(&self, error: TokenError) -> Result<Credential, TokenError> {
        let usable = matches!(
            error,
            TokenError::Unavailable { .. } | TokenError::Store(_) | TokenError::NeedsReauth { .. }
        );
        if usable
            && let Some(cached) = self.inner.cached()
            && cached.state.status != LinkStatus::NotConnected
            && cached.state.access_left(self.inner.clock.now()) > Duration::ZERO
            && let Some(token) = cached.state.access_token.clone()
            && !self.inner.was_refused(&token)
        {
            tracing::warn!(error = %error, "no refresh now; using the access token that is still valid");
            return Ok(Credential::AccessToken {
                token,
                generation: cached.state.generation,
            });
        }
        Err(error)
    }
}

fn credential_of(state: &TokenState) -> Option<Credential> {
    state.access_token.clone().map(|token| Credential::AccessToken {
        token,
        generation: state.generation,
    })
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

    fn was_refused(&self, token: &SecretString) -> bool {
        let refused = self.refused_access.lock().unwrap_or_else(|e| e.into_inner());
        refused
            .as_ref()
            .is_some_and(|r| r.expose_secret() == token.expose_secret())
    }

    fn flight(&self, deadline: Option<SystemTime>) -> Flight<'_> {
        Flight {
            versions: &self.versions,
            keap: self.keap.as_ref(),
            clock: self.clock.as_ref(),
            holder: format!(
                "{}/{}",
                self.process_id,
                self.flights_started.fetch_add(1, Ordering::SeqCst)
            ),
            deadline,
            cache: &self.cache,
        }
    }
}

#[async_trait]
impl CredentialSource for TokenSource {
    async fn credential(&self) -> Result<Credential, TokenError> {
        if let Some(credential) = self.cached_credential() {
            return Ok(credential);
        }
        if let Some(error) = self.cached_backoff() {
            return self.still_valid_fallback(error);
        }
        match self.fly(Need::Access).await {
            Ok(landed) => credential_of(&landed.snapshot.state).ok_or(TokenError::NotConnected),
            Err(error) => self.still_valid_fallback(error),
        }
    }

    async fn after_unauthorized(&self, rejected: &Credential) -> Result<Credential, TokenError> {
        let Credential::AccessToken { token: rejected, .. } = rejected else {
            return Err(TokenError::Misconfigured(
                "an API key was rejected, but this connection uses OAuth".into(),
            ));
        };
        // Another process may have rotated: one read, and the stored token if it differs.
        let current = self.inner.remember(self.inner.versions.read_connected().await?);
        if let Some(error) = status_error(&current.state) {
            *self.inner.refused_access.lock().unwrap_or_else(|e| e.into_inner()) = Some(rejected.clone());
            return Err(error);
        }
        if !Need::Unauthorized(rejected.clone()).is_due(&current.state, self.inner.clock.now(), self.settings()) {
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
        let result = self
            .inner
            .flight(invocation_deadline())
            .connect(&grant, allow_switch)
            .await;
        if result.is_ok() {
            *self.inner.refused_access.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        result
    }

    async fn status(&self) -> Result<ConnectionStatus, TokenError> {
        let now = self.inner.clock.now();
        match self.inner.versions.read().await? {
            Some(snapshot) => Ok(self.inner.remember(snapshot).state.status_report(now)),
            None => Ok(TokenState::default().status_report(now)),
        }
    }

    async fn rotate_if_due(&self, policy: RotationPolicy) -> Result<RotationReport, TokenError> {
        let landed = self.fly(Need::Rotate(policy)).await?;
        Ok(RotationReport {
            action: landed.action,
            status: landed.snapshot.state.status_report(self.inner.clock.now()),
        })
    }
}
