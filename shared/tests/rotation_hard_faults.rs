//! The faults the first proofs left out (invariants 1, 8, 9 and 10 of `docs/token-rotation.md`):
//! commits slower than the lease, a process frozen between Keap's answer and its commit,
//! hung store calls, lost answers, and a day of failures against the version quota, run on a
//! simulated clock.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use common::*;
use keap_relay::store::memory::{MemoryStore, VersionQuota};
use keap_relay::store::{PutOutcome, SecretStore, StoreError, StoredVersion, SwapOutcome};
use keap_relay::token::{
    Clock, Credential, CredentialSource, LinkStatus, TokenError, TokenSettings, TokenSource, TokenState, TokioClock,
    invocation,
};
use keap_relay::token::{Step, child_version_id};
use keap_relay::{ExposeSecret, SecretString};

fn source_on(
    store: Arc<dyn SecretStore>,
    keap: Arc<FakeKeap>,
    settings: TokenSettings,
    clock: Arc<dyn Clock>,
) -> TokenSource {
    TokenSource::with_clock(store, SECRET_ID, keap, settings, clock).expect("valid settings")
}

fn source(store: Arc<dyn SecretStore>, keap: Arc<FakeKeap>) -> TokenSource {
    source_on(store, keap, fast_settings(), keap_relay::token::clock::system())
}

/// A first authorization whose access token has `access_left` of life at `now`.
async fn seed(store: &MemoryStore, keap: &FakeKeap, access_left: Duration, now: SystemTime) {
    let grant = keap.authorize();
    let state = TokenState::connected(&grant, 1, now - (grant.expires_in - access_left));
    store
        .put_version(SECRET_ID, &child_version_id("root", Step::Connect), &state.to_secret())
        .await
        .expect("first version");
}

async fn seeded(access_left: Duration) -> (Arc<MemoryStore>, Arc<FakeKeap>) {
    let store = Arc::new(MemoryStore::new());
    let keap = FakeKeap::new();
    seed(&store, &keap, access_left, SystemTime::now()).await;
    keap.watch(store.clone());
    (store, keap)
}

fn stored(store: &MemoryStore) -> TokenState {
    TokenState::from_json(
        store
            .peek_current(SECRET_ID)
            .expect("a current version")
            .value
            .expose_secret(),
    )
    .unwrap()
}

/// Holds every put of a new pair in the network for `delay`: the caller's bounded call gives
/// up, but the request still reaches the store afterwards (a proxy, or throttling with a
/// retry queue).
#[derive(Debug)]
struct HeldCommits {
    inner: Arc<MemoryStore>,
    delay: Duration,
    held: AtomicU64,
}

#[async_trait]
impl SecretStore for HeldCommits {
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.inner.read_current(secret_id).await
    }
    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.inner.read_version(secret_id, version_id).await
    }
    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError> {
        if !carries_new_pair(value) {
            return self.inner.put_version(secret_id, version_id, value).await;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        put_after(self.inner.clone(), self.delay, secret_id, version_id, value).await
    }
    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        self.inner.swap_current(secret_id, from, to).await
    }
}

/// Freezes the whole process (its thread, timers included) for `freeze` at the first put of
/// a new pair, as Lambda freezes an environment whose handler returned.
#[derive(Debug)]
struct FreezeAtCommit {
    inner: Arc<MemoryStore>,
    freeze: Duration,
    frozen: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl SecretStore for FreezeAtCommit {
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.inner.read_current(secret_id).await
    }
    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.inner.read_version(secret_id, version_id).await
    }
    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError> {
        if carries_new_pair(value) && !self.frozen.swap(true, Ordering::SeqCst) {
            std::thread::sleep(self.freeze);
        }
        self.inner.put_version(secret_id, version_id, value).await
    }
    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        self.inner.swap_current(secret_id, from, to).await
    }
}

/// Every read of the current version hangs forever (a connection that never answers).
#[derive(Debug)]
struct HungReads(Arc<MemoryStore>);

#[async_trait]
impl SecretStore for HungReads {
    async fn read_current(&self, _secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        std::future::pending().await
    }
    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.0.read_version(secret_id, version_id).await
    }
    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError> {
        self.0.put_version(secret_id, version_id, value).await
    }
    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        self.0.swap_current(secret_id, from, to).await
    }
}

/// New processes calling `credential()` every `every` for `span`, each once.
async fn contenders_through(
    store: Arc<dyn SecretStore>,
    keap: Arc<FakeKeap>,
    every: Duration,
    span: Duration,
) -> Vec<Result<Credential, TokenError>> {
    let end = tokio::time::Instant::now() + span;
    let mut tasks = Vec::new();
    while tokio::time::Instant::now() < end {
        let contender = source(store.clone(), keap.clone());
        tasks.push(tokio::spawn(async move { contender.credential().await }));
        tokio::time::sleep(every).await;
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("contender"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_puts_held_past_the_lease_still_land_and_the_token_is_never_spent_twice() {
    let (store, keap) = seeded(Duration::ZERO).await;
    let settings = fast_settings();
    let held = Arc::new(HeldCommits {
        inner: store.clone(),
        delay: settings.lease_duration + Duration::from_millis(150),
        held: AtomicU64::new(0),
    });
    let slow: Arc<dyn SecretStore> = held.clone();
    let holder = source(slow.clone(), keap.clone());
    let first = tokio::spawn(async move { holder.credential().await });
    let span = settings.lease_duration + settings.late_commit_grace + Duration::from_millis(300);
    let results = contenders_through(slow.clone(), keap.clone(), Duration::from_millis(25), span).await;
    let first = first.await.unwrap();

    assert!(held.held.load(Ordering::SeqCst) >= 1, "the commit put was held");
    keap.ledger(|l| {
        assert_eq!(
            (l.calls, l.successes, l.invalid_grants),
            (1, 1, 0),
            "one Keap call, no reuse"
        )
    });
    let state = stored(&store);
    assert_eq!((state.generation, state.status), (2, LinkStatus::Connected));
    assert!(state.lease.is_none());
    assert_eq!(
        state.access_token.as_ref().map(|t| t.expose_secret().to_owned()),
        keap.last_issued().map(|(access, _)| access)
    );
    assert_eq!(token_of(first.as_ref().expect("the holder ends with the pair")), "at-2");
    for result in &results {
        match result {
            Ok(credential) => assert_eq!(token_of(credential), "at-2"),
            Err(error) => assert!(matches!(error, TokenError::Unavailable { .. }), "{error:?}"),
        }
    }
    assert!(
        results.iter().any(Result::is_ok),
        "contenders after the landing use the new pair"
    );
}

/// The holder runs in a process of its own (a thread with its own runtime) that is frozen
/// between Keap's answer and the commit for `freeze`; new processes keep arriving meanwhile.
async fn freeze_case(freeze: Duration) -> (Arc<MemoryStore>, Arc<FakeKeap>, Result<Credential, TokenError>) {
    let (store, keap) = seeded(Duration::ZERO).await;
    let frozen: Arc<dyn SecretStore> = Arc::new(FreezeAtCommit {
        inner: store.clone(),
        freeze,
        frozen: Default::default(),
    });
    let (holder_store, holder_keap) = (frozen.clone(), keap.clone());
    let holder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move { source(holder_store, holder_keap).credential().await })
    });
    while keap.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let span = freeze + Duration::from_millis(200);
    let _ = contenders_through(store.clone(), keap.clone(), Duration::from_millis(25), span).await;
    let holder = tokio::task::spawn_blocking(move || holder.join().expect("holder thread"))
        .await
        .unwrap();
    (store, keap, holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_frozen_after_keaps_answer_for_longer_than_the_lease_still_commits_its_pair() {
    let settings = fast_settings();
    let (store, keap, holder) = freeze_case(settings.lease_duration + Duration::from_millis(150)).await;
    assert_eq!(token_of(&holder.expect("the thawed holder commits")), "at-2");
    keap.ledger(|l| {
        assert_eq!(
            (l.calls, l.invalid_grants),
            (1, 0),
            "nobody spent the token while it was frozen"
        )
    });
    let state = stored(&store);
    assert_eq!((state.generation, state.status), (2, LinkStatus::Connected));
}

/// The remaining window (`docs/token-rotation.md`, "What can still be lost"): frozen past the
/// lease and the whole grace, the token is spent a second time by a takeover. Keap refuses
/// that reuse, the takeover records `needs_reauth`, and the thawed holder's late commit lands
/// on top of it anyway: with a Keap that only rejects reuse, the connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_thawed_after_the_grace_lands_on_the_version_that_holds_its_spent_token() {
    let settings = fast_settings();
    let freeze =
        settings.lease_duration + settings.clock_skew + settings.late_commit_grace + Duration::from_millis(250);
    let (store, keap, holder) = freeze_case(freeze).await;
    assert_eq!(token_of(&holder.expect("the late commit lands")), "at-2");
    keap.ledger(|l| {
        assert_eq!(
            (l.successes, l.invalid_grants),
            (1, 1),
            "the takeover's reuse is the counted window"
        )
    });
    let state = stored(&store);
    assert_eq!(
        (state.generation, state.status),
        (2, LinkStatus::Connected),
        "{state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_before_keap_saw_it_is_retried_once_and_the_connection_lives() {
    let (store, keap) = seeded(Duration::ZERO).await;
    keap.script([KeapFault::LostBeforeIssue]);
    let credential = source(store.clone(), keap.clone()).credential().await.unwrap();
    assert_eq!(token_of(&credential), "at-2");
    keap.ledger(|l| assert_eq!((l.calls, l.not_sent, l.successes), (1, 1, 1)));
    assert_eq!(stored(&store).status, LinkStatus::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_answer_the_stored_access_token_is_served_until_keap_refuses_it() {
    let (store, keap) = seeded(Duration::from_secs(30)).await; // valid, but inside the margin
    keap.script([KeapFault::DropResponse]);
    let source = source(store.clone(), keap.clone());
    assert_eq!(
        token_of(&source.credential().await.unwrap()),
        "at-1",
        "still valid: still served"
    );
    assert_eq!(stored(&store).status, LinkStatus::NeedsReauth);
    assert_eq!(keap.calls(), 2, "one call and the one retry, then never again");
    assert_eq!(token_of(&source.credential().await.unwrap()), "at-1");
    let refused = source.after_unauthorized(&source.credential().await.unwrap()).await;
    assert!(matches!(refused, Err(TokenError::NeedsReauth { .. })), "{refused:?}");
    let after = source.credential().await;
    assert!(
        matches!(after, Err(TokenError::NeedsReauth { .. })),
        "a refused token is not served again: {after:?}"
    );
    assert_eq!(keap.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_call_is_bounded_and_the_still_valid_token_is_served() {
    let (store, keap) = seeded(Duration::from_secs(30)).await;
    let warm = source(store.clone(), keap.clone());
    assert_eq!(
        token_of(&warm.credential().await.unwrap()),
        "at-2",
        "warm: rotated once"
    );
    // A process whose cache holds a valid token inside the margin, and whose store hangs.
    let (store, keap) = seeded(Duration::from_secs(30)).await;
    let cached = source(store.clone(), keap.clone());
    keap.set_down(true);
    assert_eq!(token_of(&cached.credential().await.unwrap()), "at-1");
    tokio::time::sleep(fast_settings().backoff_max).await;
    let hung = source(Arc::new(HungReads(store.clone())), keap.clone());
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), hung.credential())
        .await
        .expect("bounded");
    assert!(matches!(result, Err(TokenError::Unavailable { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_is_taken_when_the_invocation_cannot_see_the_refresh_through() {
    let (store, keap) = seeded(Duration::ZERO).await;
    let versions = store.versions(SECRET_ID).len();
    let source = source(store.clone(), keap.clone());
    let deadline = SystemTime::now() + Duration::from_millis(200); // less than Keap's timeout + the commit
    let result = invocation::run(Some(deadline), source.credential()).await;
    assert!(matches!(result, Err(TokenError::Unavailable { .. })), "{result:?}");
    assert_eq!(
        (store.versions(SECRET_ID).len(), keap.calls()),
        (versions, 0),
        "no write, no Keap call"
    );
    let result = invocation::run(Some(SystemTime::now() + Duration::from_secs(5)), source.credential()).await;
    assert_eq!(token_of(&result.unwrap()), "at-2");
}

/// One simulated day at `rate` requests a second over 4 processes, with Keap's token endpoint
/// down and the access token dead, on the memory store with AWS's version quota; then Keap
/// comes back. Returns (versions written in the day, seconds until the rotation after).
async fn outage_day(rate: u64) -> (usize, u64) {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(start));
    let store = Arc::new(MemoryStore::with_quota(VersionQuota::aws(clock.clone())));
    let keap = FakeKeap::new();
    seed(&store, &keap, Duration::ZERO, start).await;
    keap.set_down(true);
    let settings = TokenSettings::default();
    let backoff_max = settings.backoff_max;
    let processes: Vec<TokenSource> = (0..4)
        .map(|_| source_on(store.clone(), keap.clone(), settings.clone(), clock.clone()))
        .collect();
    let tick = |second: u64| {
        let processes = &processes;
        async move {
            for n in 0..rate {
                let result = processes[((second * rate + n) % 4) as usize].credential().await;
                assert!(
                    matches!(result, Err(TokenError::Unavailable { .. }) | Ok(_)),
                    "{result:?}"
                );
            }
        }
    };
    for second in 0..24 * 3600 {
        tick(second).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let day = store.versions_since(SECRET_ID, start + Duration::from_secs(1));
    assert_eq!(store.quota_refusals(), 0, "no put refused by the version quota");
    keap.set_down(false);
    let back = clock.now();
    let mut second = 0;
    while stored(&store).generation < 2 {
        tick(second).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        second += 1;
        assert!(
            Duration::from_secs(second) <= backoff_max + Duration::from_secs(2),
            "no rotation within one backoff period"
        );
    }
    let recovered = clock.now().duration_since(back).unwrap().as_secs();
    (day, recovered)
}

#[tokio::test(start_paused = true)]
async fn a_day_long_token_endpoint_outage_writes_few_versions_at_any_request_rate() {
    for rate in [1, 10, 100] {
        let (versions, recovered) = outage_day(rate).await;
        println!("outage of 24 h at {rate}/s: {versions} versions written, rotated {recovered} s after Keap came back");
        assert!(versions < 60, "{versions} versions at {rate}/s");
    }
}

#[tokio::test(start_paused = true)]
async fn a_day_of_401s_to_fresh_tokens_rotates_a_bounded_number_of_times() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(start));
    let store = Arc::new(MemoryStore::with_quota(VersionQuota::aws(clock.clone())));
    let keap = FakeKeap::with_lifetime(Duration::from_secs(24 * 3600));
    seed(&store, &keap, Duration::from_secs(20 * 3600), start).await;
    let source = source_on(store.clone(), keap.clone(), TokenSettings::default(), clock.clone());
    // Keap answers 401 to every access token, ten requests a second, for a day.
    for _ in 0..24 * 3600 {
        for _ in 0..10 {
            if let Ok(credential) = source.credential().await {
                let _ = source.after_unauthorized(&credential).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let versions = store.versions_since(SECRET_ID, start + Duration::from_secs(1));
    println!("a day of 401s at 10/s: {} rotations, {versions} versions", keap.calls());
    assert!(versions < 60, "{versions} versions");
    assert!(keap.calls() >= 2, "a 401 still gets a fresh token");
    assert_eq!(store.quota_refusals(), 0);
}
