//! Test doubles for the rotation tests: a fake Keap token endpoint that models single-use
//! refresh tokens and counts everything, and a store decorator that injects delays,
//! transient errors and crashes.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keap_relay::keap::oauth::{OAuthError, TokenEndpoint};
use keap_relay::store::memory::MemoryStore;
use keap_relay::store::{PutOutcome, SecretStore, StoreError, StoreOp, StoredVersion, SwapOutcome};
use keap_relay::token::{TokenGrant, TokenSettings, TokenState};
use keap_relay::{ExposeSecret, SecretString};

pub const SECRET_ID: &str = "keap-relay/token";

/// Protocol timings small enough for fast tests, in the same proportions as production.
pub fn fast_settings() -> TokenSettings {
    TokenSettings {
        access_margin: Duration::from_secs(60),
        lease_duration: Duration::from_millis(600),
        keap_timeout: Duration::from_millis(150),
        commit_allowance: Duration::from_millis(200),
        clock_skew: Duration::from_millis(30),
        store_call_timeout: Duration::from_millis(100),
        late_commit_grace: Duration::from_millis(300),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(40),
        store_attempts: 6,
        orphan_grace: Duration::from_millis(60),
    }
}

/// A tiny deterministic PRNG (xorshift64*), so each proptest case replays exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the fake Keap does to one refresh call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeapFault {
    /// HTTP 5xx or 429, nothing issued.
    Transient(u16),
    /// Connection refused, nothing issued.
    NotSent,
    /// The pair is issued (old token dead) but the answer is lost.
    DropResponse,
    /// The answer is lost, but the request never reached Keap: nothing was issued.
    LostBeforeIssue,
    /// The pair is issued, then the caller's process dies before it can store it.
    CrashAfterIssue,
    /// The caller's process dies before the request reaches Keap.
    CrashBefore,
}

#[derive(Debug, Default)]
pub struct KeapLedger {
    pub calls: u64,
    pub successes: u64,
    /// Calls with a token that was already spent or never issued (Keap answers invalid_grant).
    pub invalid_grants: u64,
    pub transient_failures: u64,
    /// Attempts that never reached Keap (connection refused).
    pub not_sent: u64,
    pub dropped: u64,
    pub crashes_after_issue: u64,
    pub crashes_before: u64,
    /// Calls per refresh token, and the most that were in flight at once for one token.
    pub calls_per_token: HashMap<String, u64>,
    pub max_in_flight_per_token: u64,
    /// Calls made while the stored state said `needs_reauth` (must stay 0).
    pub calls_while_needs_reauth: u64,
    /// (access, refresh) pairs issued, in order.
    pub issued: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct FakeState {
    live_refresh: Option<String>,
    spent: HashSet<String>,
    in_flight: HashMap<String, u64>,
    next: u64,
    ledger: KeapLedger,
}

/// Keap's token endpoint as far as rotation goes: every refresh token works once.
#[derive(Debug)]
pub struct FakeKeap {
    state: Mutex<FakeState>,
    script: Mutex<VecDeque<KeapFault>>,
    latency: Mutex<Duration>,
    expires_in: Duration,
    /// When set, each call checks that the stored state is not `needs_reauth`.
    watched: Mutex<Option<Arc<MemoryStore>>>,
    /// While set, every call that reaches Keap is answered 503 (an outage of the endpoint).
    down: AtomicBool,
}

impl FakeKeap {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            script: Mutex::default(),
            latency: Mutex::new(Duration::from_millis(5)),
            expires_in: Duration::from_secs(3600),
            watched: Mutex::new(None),
            down: AtomicBool::new(false),
        })
    }

    /// A Keap whose pairs live `lifetime` (Keap's own access tokens live 24 h).
    pub fn with_lifetime(lifetime: Duration) -> Arc<Self> {
        let keap = Self::new();
        let mut keap = Arc::try_unwrap(keap).expect("just made");
        keap.expires_in = lifetime;
        Arc::new(keap)
    }

    /// A first authorization (what the OAuth callback would store).
    pub fn authorize(&self) -> TokenGrant {
        let mut state = self.state.lock().unwrap();
        let grant = Self::issue(&mut state, self.expires_in);
        state.ledger.issued.clear();
        grant
    }

    fn issue(state: &mut FakeState, expires_in: Duration) -> TokenGrant {
        state.next += 1;
        let (access, refresh) = (format!("at-{}", state.next), format!("rt-{}", state.next));
        state.live_refresh = Some(refresh.clone());
        state.ledger.issued.push((access.clone(), refresh.clone()));
        TokenGrant {
            access_token: SecretString::from(access),
            refresh_token: SecretString::from(refresh),
            expires_in,
            scope: "full|ab123.infusionsoft.com".into(),
            account: Some("ab123.infusionsoft.com".into()),
        }
    }

    pub fn script(&self, faults: impl IntoIterator<Item = KeapFault>) {
        self.script.lock().unwrap().extend(faults);
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }

    /// Starts or ends an outage of the token endpoint (every call answered 503).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn watch(&self, store: Arc<MemoryStore>) {
        *self.watched.lock().unwrap() = Some(store);
    }

    pub fn ledger<T>(&self, read: impl FnOnce(&KeapLedger) -> T) -> T {
        read(&self.state.lock().unwrap().ledger)
    }

    pub fn calls(&self) -> u64 {
        self.ledger(|l| l.calls)
    }

    pub fn last_issued(&self) -> Option<(String, String)> {
        self.ledger(|l| l.issued.last().cloned())
    }
}

#[async_trait]
impl TokenEndpoint for FakeKeap {
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, OAuthError> {
        let token = refresh_token.expose_secret().to_owned();
        let mut fault = self.script.lock().unwrap().pop_front();
        if self.down.load(Ordering::SeqCst) {
            fault = Some(KeapFault::Transient(503));
        }
        if fault == Some(KeapFault::CrashBefore) {
            self.state.lock().unwrap().ledger.crashes_before += 1;
            panic!("injected crash before calling Keap");
        }
        if fault == Some(KeapFault::LostBeforeIssue) {
            self.state.lock().unwrap().ledger.not_sent += 1;
            return Err(OAuthError::OutcomeUnknown(
                "injected: timed out before Keap saw the request".into(),
            ));
        }
        if fault == Some(KeapFault::NotSent) {
            self.state.lock().unwrap().ledger.not_sent += 1;
            return Err(OAuthError::NotSent("injected connection refused".into()));
        }
        let watched = self.watched.lock().unwrap().clone();
        {
            let mut state = self.state.lock().unwrap();
            let ledger_reauth = watched
                .as_ref()
                .and_then(|store| store.peek_current(SECRET_ID))
                .is_some_and(|v| {
                    TokenState::from_json(v.value.expose_secret())
                        .is_ok_and(|s| s.status == keap_relay::token::LinkStatus::NeedsReauth)
                });
            if ledger_reauth {
                state.ledger.calls_while_needs_reauth += 1;
            }
            state.ledger.calls += 1;
            *state.ledger.calls_per_token.entry(token.clone()).or_default() += 1;
            let in_flight = state.in_flight.entry(token.clone()).or_default();
            *in_flight += 1;
            let now_in_flight = *in_flight;
            state.ledger.max_in_flight_per_token = state.ledger.max_in_flight_per_token.max(now_in_flight);
        }
        let latency = *self.latency.lock().unwrap();
        tokio::time::sleep(latency).await;
        let mut state = self.state.lock().unwrap();
        *state.in_flight.get_mut(&token).expect("counted above") -= 1;
        if let Some(KeapFault::Transient(status)) = fault {
            state.ledger.transient_failures += 1;
            return Err(OAuthError::Transient {
                status,
                retry_after: None,
            });
        }
        if state.live_refresh.as_deref() != Some(token.as_str()) {
            state.ledger.invalid_grants += 1;
            return Err(OAuthError::RefreshTokenRejected {
                error: "invalid_grant".into(),
                description: "Invalid refresh token".into(),
            });
        }
        state.spent.insert(token);
        let grant = Self::issue(&mut state, self.expires_in);
        state.ledger.successes += 1;
        match fault {
            Some(KeapFault::DropResponse) => {
                state.ledger.dropped += 1;
                Err(OAuthError::OutcomeUnknown(
                    "injected: connection closed before the answer".into(),
                ))
            }
            Some(KeapFault::CrashAfterIssue) => {
                state.ledger.crashes_after_issue += 1;
                drop(state);
                panic!("injected crash after Keap issued a pair");
            }
            _ => Ok(grant),
        }
    }
}

/// How a [`FaultyStore`] misbehaves.
#[derive(Debug, Clone, Default)]
pub struct StoreChaos {
    pub seed: u64,
    /// Percent of calls that fail transiently (half before the effect, half after).
    pub transient_percent: u64,
    /// Random delay before each call, up to this many milliseconds (interleavings).
    pub max_delay_ms: u64,
    /// Die (panic) at this call number, before or after its effect.
    pub crash_at_call: Option<(u64, bool)>,
    /// Percent of calls that hang (never answer, no effect): only the caller's own time
    /// bound ends them.
    pub hang_percent: u64,
    /// Puts of a new pair are held in the network this long: the caller's bounded call gives
    /// up, the put still lands afterwards (a commit slower than the lease).
    pub held_commit_ms: u64,
}

/// A decorator that injects delays, transient errors (before or after the effect) and a crash.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn SecretStore>,
    chaos: StoreChaos,
    rng: Mutex<Rng>,
    calls: AtomicU64,
    pub crashed: AtomicBool,
    pub injected: AtomicU64,
}

enum Plan {
    Proceed,
    Hang,
    FailBefore,
    FailAfter,
    CrashBefore,
    CrashAfter,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn SecretStore>, chaos: StoreChaos) -> Self {
        Self {
            rng: Mutex::new(Rng::new(chaos.seed)),
            inner,
            chaos,
            calls: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
            injected: AtomicU64::new(0),
        }
    }

    async fn plan(&self) -> Plan {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let (delay, fail, before, hang) = {
            let mut rng = self.rng.lock().unwrap();
            let drawn = (
                rng.below(self.chaos.max_delay_ms + 1),
                rng.chance(self.chaos.transient_percent),
                rng.chance(50),
            );
            (drawn.0, drawn.1, drawn.2, rng.chance(self.chaos.hang_percent))
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        } else {
            tokio::task::yield_now().await;
        }
        if let Some((at, after)) = self.chaos.crash_at_call
            && at == call
        {
            return if after { Plan::CrashAfter } else { Plan::CrashBefore };
        }
        if hang {
            return Plan::Hang;
        }
        match (fail, before) {
            (false, _) => Plan::Proceed,
            (true, true) => Plan::FailBefore,
            (true, false) => Plan::FailAfter,
        }
    }

    fn crash(&self) -> ! {
        self.crashed.store(true, Ordering::SeqCst);
        panic!("injected crash in the store");
    }

    async fn run<T>(
        &self,
        op: StoreOp,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let transient = || {
            self.injected.fetch_add(1, Ordering::Relaxed);
            StoreError::Transient {
                operation: op.name(),
                detail: "injected".into(),
            }
        };
        match self.plan().await {
            Plan::Proceed => call.await,
            Plan::Hang => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                std::future::pending().await
            }
            Plan::FailBefore => Err(transient()),
            Plan::FailAfter => {
                call.await?;
                Err(transient())
            }
            Plan::CrashBefore => self.crash(),
            Plan::CrashAfter => {
                let _ = call.await;
                self.crash()
            }
        }
    }
}

#[async_trait]
impl SecretStore for FaultyStore {
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.run(StoreOp::ReadCurrent, self.inner.read_current(secret_id)).await
    }

    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.run(StoreOp::ReadVersion, self.inner.read_version(secret_id, version_id))
            .await
    }

    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError> {
        if self.chaos.held_commit_ms > 0 && carries_new_pair(value) {
            let held = put_after(
                self.inner.clone(),
                Duration::from_millis(self.chaos.held_commit_ms),
                secret_id,
                version_id,
                value,
            );
            return self.run(StoreOp::Put, held).await;
        }
        self.run(StoreOp::Put, self.inner.put_version(secret_id, version_id, value))
            .await
    }

    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        self.run(StoreOp::Swap, self.inner.swap_current(secret_id, from, to))
            .await
    }
}

/// True for the put of a value carrying a new pair (generation above the first): a commit.
pub fn carries_new_pair(value: &SecretString) -> bool {
    TokenState::from_json(value.expose_secret()).is_ok_and(|state| state.generation > 1)
}

/// A put held in the network for `delay`: it reaches `inner` then, even if the caller has
/// given up waiting (a proxy, or throttling with a retry queue).
pub async fn put_after(
    inner: Arc<dyn SecretStore>,
    delay: Duration,
    secret_id: &str,
    version_id: &str,
    value: &SecretString,
) -> Result<PutOutcome, StoreError> {
    let (secret_id, version_id, value) = (secret_id.to_owned(), version_id.to_owned(), value.clone());
    let landing = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        inner.put_version(&secret_id, &version_id, &value).await
    });
    landing.await.expect("held put")
}

/// The stored token state (no fault hooks).
pub fn stored_state(store: &MemoryStore) -> TokenState {
    store
        .peek_current(SECRET_ID)
        .map(|v| TokenState::from_json(v.value.expose_secret()).expect("stored state parses"))
        .unwrap_or_default()
}

/// Silences the panic messages of injected crashes (they are expected).
pub fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.payload().downcast_ref::<&str>().copied().unwrap_or("");
            if !message.starts_with("injected") {
                default(info);
            }
        }));
    });
}

/// The access token a credential carries (test tokens are not secret).
pub fn token_of(credential: &keap_relay::token::Credential) -> String {
    match credential {
        keap_relay::token::Credential::AccessToken { token, .. } => token.expose_secret().to_owned(),
        keap_relay::token::Credential::ApiKey(_) => panic!("expected an access token"),
    }
}
