//! The invariants of `docs/token-rotation.md`, one scenario at a time, over the memory store and a
//! fake Keap that counts calls per refresh token.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use keap_relay::keap::oauth::{OAuthError, TokenEndpoint};
use keap_relay::store::counting::CountingStore;
use keap_relay::store::memory::{FaultPoint, MemoryStore};
use keap_relay::store::{SecretStore, StoreOp};
use keap_relay::token::source::{Step, child_version_id};
use keap_relay::token::{
    ApiKeySource, ConnectError, ConnectOutcome, Connection, Credential, CredentialSource, LinkStatus, RotationAction,
    RotationPolicy, TokenError, TokenGrant, TokenSettings, TokenSource,
};
use keap_relay::{ExposeSecret, SecretString};

fn source_with(store: Arc<dyn SecretStore>, keap: Arc<dyn TokenEndpoint>, settings: TokenSettings) -> TokenSource {
    TokenSource::new(store, SECRET_ID, keap, settings).expect("valid settings")
}

fn source(store: Arc<dyn SecretStore>, keap: Arc<FakeKeap>) -> TokenSource {
    source_with(store, keap, fast_settings())
}

/// A store holding a first authorization of a pair that lives an hour, issued so long ago
/// that the access token has `access_left` of life left.
async fn seeded(access_left: Duration) -> (Arc<MemoryStore>, Arc<FakeKeap>) {
    let store = Arc::new(MemoryStore::new());
    let keap = FakeKeap::new();
    let grant = keap.authorize();
    let issued = std::time::SystemTime::now() - (grant.expires_in - access_left);
    let state = keap_relay::token::TokenState::connected(&grant, 1, issued);
    let first = child_version_id("root", Step::Connect);
    store
        .put_version(SECRET_ID, &first, &state.to_secret())
        .await
        .expect("first version");
    keap.watch(store.clone());
    (store, keap)
}

/// Runs `callers` concurrent `credential()` calls on each of the sources.
async fn storm(sources: &[TokenSource], callers: usize) -> Vec<Result<Credential, TokenError>> {
    let mut tasks = Vec::new();
    for source in sources {
        for _ in 0..callers {
            let source = source.clone();
            tasks.push(tokio::spawn(async move { source.credential().await }));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("caller task"));
    }
    results
}

async fn wait_for_keap_call(keap: &FakeKeap, calls: u64) {
    while keap.calls() < calls {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_healthy_token_needs_no_store_call() {
    let (store, keap) = seeded(Duration::from_secs(3600)).await;
    let counting = Arc::new(CountingStore::new(store));
    let source = source(counting.clone(), keap.clone());
    assert_eq!(token_of(&source.credential().await.unwrap()), "at-1");
    assert_eq!(counting.counts().read_current, 1, "a cold process reads once");
    counting.reset();
    for _ in 0..100 {
        source.credential().await.unwrap();
    }
    assert_eq!(counting.counts().total(), 0);
    assert_eq!(keap.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_in_one_process_share_one_refresh() {
    let (store, keap) = seeded(Duration::ZERO).await;
    let counting = Arc::new(CountingStore::new(store.clone()));
    let results = storm(&[source(counting.clone(), keap.clone())], 32).await;
    for result in &results {
        assert_eq!(token_of(result.as_ref().unwrap()), "at-2");
    }
    assert_eq!(keap.calls(), 1);
    let counts = counting.counts();
    assert_eq!((counts.put, counts.swap, counts.created), (2, 2, 2), "{counts:?}");
    assert_eq!(store.versions(SECRET_ID).len(), 3, "connect, lease, commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contenders_in_many_processes_make_one_keap_call_and_losers_write_nothing() {
    let (store, keap) = seeded(Duration::ZERO).await;
    keap.set_latency(Duration::from_millis(30));
    let stores: Vec<Arc<CountingStore>> = (0..16).map(|_| Arc::new(CountingStore::new(store.clone()))).collect();
    let sources: Vec<TokenSource> = stores.iter().map(|s| source(s.clone(), keap.clone())).collect();
    let results = storm(&sources, 4).await;
    for result in &results {
        assert_eq!(token_of(result.as_ref().unwrap()), "at-2");
    }
    assert_eq!(keap.calls(), 1);
    assert_eq!(keap.ledger(|l| l.invalid_grants), 0);
    assert_eq!(store.versions(SECRET_ID).len(), 3, "connect, lease, commit");
    let writers = stores.iter().filter(|s| s.counts().created > 0).count();
    assert_eq!(writers, 1, "only the lease holder created versions");
    let stored = stored_state(&store);
    assert_eq!((stored.generation, stored.lease.is_none()), (2, true));
    assert!(stored.same_refresh_token(&SecretString::from("rt-2")));
}

/// Keap that, like a concurrent rotation elsewhere, rotates the stored pair first and then
/// refuses the (now spent) token.
#[derive(Debug)]
struct RotatedElsewhere {
    store: Arc<MemoryStore>,
}

#[async_trait]
impl TokenEndpoint for RotatedElsewhere {
    async fn refresh(&self, _refresh_token: &SecretString) -> Result<TokenGrant, OAuthError> {
        let current = self.store.peek_current(SECRET_ID).unwrap();
        let state = keap_relay::token::TokenState::from_json(current.value.expose_secret()).unwrap();
        let other = TokenGrant {
            access_token: SecretString::from("at-other"),
            refresh_token: SecretString::from("rt-other"),
            expires_in: Duration::from_secs(3600),
            scope: "full|ab123.infusionsoft.com".into(),
            account: Some("ab123.infusionsoft.com".into()),
        };
        let next = state.refreshed(&other, std::time::SystemTime::now());
        let id = uuid::Uuid::new_v4().to_string();
        self.store.put_version(SECRET_ID, &id, &next.to_secret()).await.unwrap();
        self.store
            .swap_current(SECRET_ID, &current.version_id, &id)
            .await
            .unwrap();
        Err(OAuthError::RefreshTokenRejected {
            error: "invalid_grant".into(),
            description: "Invalid refresh token".into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_after_a_lost_race_uses_the_winners_pair() {
    let (store, _keap) = seeded(Duration::ZERO).await;
    let racing = Arc::new(RotatedElsewhere { store: store.clone() });
    let source = source_with(store.clone(), racing, fast_settings());
    assert_eq!(token_of(&source.credential().await.unwrap()), "at-other");
    assert_eq!(stored_state(&store).status, LinkStatus::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_refresh_token_needs_reauth_and_keap_is_not_called_again() {
    let (store, keap) = seeded(Duration::ZERO).await;
    let _fresh_elsewhere = keap.authorize(); // kills rt-1, which the store still holds
    let first = source(store.clone(), keap.clone()).credential().await;
    assert!(
        matches!(&first, Err(TokenError::NeedsReauth { reason }) if reason.contains("/oauth/start")),
        "{first:?}"
    );
    let sources: Vec<TokenSource> = (0..4).map(|_| source(store.clone(), keap.clone())).collect();
    for result in storm(&sources, 4).await {
        assert!(matches!(result, Err(TokenError::NeedsReauth { .. })));
    }
    assert_eq!(keap.calls(), 1);
    assert_eq!(keap.ledger(|l| l.calls_while_needs_reauth), 0);
    let status = sources[0].status().await.unwrap();
    assert!(status.needs_reauth && !status.connected);
    // A new authorization revives the connection.
    let outcome = sources[0].connect(keap.authorize(), false).await.unwrap();
    assert_eq!(
        outcome,
        ConnectOutcome::Connected {
            account: Some("ab123.infusionsoft.com".into()),
            replaced: true
        }
    );
    assert!(sources[1].credential().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_refresh_answer_is_retried_once_then_needs_reauth_with_a_clear_reason() {
    let (store, keap) = seeded(Duration::ZERO).await;
    keap.script([KeapFault::DropResponse]);
    let sources: Vec<TokenSource> = (0..8).map(|_| source(store.clone(), keap.clone())).collect();
    for result in storm(&sources, 2).await {
        match result {
            Err(TokenError::NeedsReauth { reason }) => {
                assert!(
                    reason.contains("answer was lost") && reason.contains("/oauth/start"),
                    "{reason}"
                );
            }
            other => panic!("expected NeedsReauth, got {other:?}"),
        }
    }
    // Invariant 1's one exception: the holder retries once inside its lease; Keap refuses the
    // spent token, and nobody sends it again.
    assert_eq!(keap.calls(), 2, "one call and the holder's one retry");
    assert_eq!(keap.ledger(|l| l.invalid_grants), 1);
    let stored = stored_state(&store);
    assert_eq!(stored.status, LinkStatus::NeedsReauth);
    assert!(
        stored
            .needs_reauth_reason
            .unwrap()
            .contains("Keap may have rotated the token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keap_failing_releases_the_lease_and_a_still_valid_token_stays_usable() {
    let (store, keap) = seeded(Duration::from_secs(30)).await; // inside the 60 s margin
    keap.script([KeapFault::Transient(503), KeapFault::NotSent, KeapFault::Transient(429)]);
    let source = source(store.clone(), keap.clone());
    for failures in 1..=3 {
        assert_eq!(token_of(&source.credential().await.unwrap()), "at-1");
        let stored = stored_state(&store);
        assert!(stored.lease.is_none() && stored.last_error.is_some(), "{stored:?}");
        assert_eq!(stored.failures, failures);
        // Inside the shared backoff: the still-valid token, no store write, no Keap call.
        let versions = store.versions(SECRET_ID).len();
        assert_eq!(token_of(&source.credential().await.unwrap()), "at-1");
        assert_eq!(store.versions(SECRET_ID).len(), versions);
        let wait = stored
            .retry_not_before
            .unwrap()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
    }
    assert_eq!(keap.calls(), 2, "a refused connection never reaches Keap");
    assert_eq!(token_of(&source.credential().await.unwrap()), "at-2");
    assert_eq!(stored_state(&store).last_error, None);
    assert_eq!(keap.ledger(|l| l.invalid_grants), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_a_keap_failure_instead_of_retrying_it() {
    let (store, keap) = seeded(Duration::ZERO).await;
    keap.set_latency(Duration::from_millis(150));
    keap.script([KeapFault::Transient(502)]);
    let settings = TokenSettings {
        keap_timeout: Duration::from_millis(400),
        lease_duration: Duration::from_millis(1200),
        ..fast_settings()
    };
    let sources: Vec<TokenSource> = (0..6)
        .map(|_| source_with(store.clone(), keap.clone(), settings.clone()))
        .collect();
    for result in storm(&sources, 2).await {
        assert!(matches!(result, Err(TokenError::Unavailable { .. })), "{result:?}");
    }
    assert_eq!(keap.calls(), 1);
    assert_eq!(stored_state(&store).generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_faults_around_the_commit_do_not_lose_the_new_pair() {
    for (op, point) in [
        (StoreOp::Put, FaultPoint::BeforeApply),
        (StoreOp::Put, FaultPoint::AfterApply),
        (StoreOp::Swap, FaultPoint::BeforeApply),
        (StoreOp::Swap, FaultPoint::AfterApply),
    ] {
        let (store, keap) = seeded(Duration::ZERO).await;
        keap.set_latency(Duration::from_millis(40));
        let source = source(store.clone(), keap.clone());
        let call = tokio::spawn(async move { source.credential().await });
        wait_for_keap_call(&keap, 1).await;
        store.fail_next(op, 3, point); // strikes the commit
        assert_eq!(token_of(&call.await.unwrap().unwrap()), "at-2", "{op:?} {point:?}");
        assert!(stored_state(&store).same_refresh_token(&SecretString::from("rt-2")));
        assert_eq!(store.versions(SECRET_ID).len(), 3, "{op:?} {point:?}");
        assert_eq!(keap.calls(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_swap_after_a_lease_record_change_commits_on_top() {
    let (store, keap) = seeded(Duration::ZERO).await;
    keap.set_latency(Duration::from_millis(40));
    let source = source(store.clone(), keap.clone());
    let call = tokio::spawn(async move { source.credential().await });
    wait_for_keap_call(&keap, 1).await;
    // Someone rewrites the lease record (same generation, same tokens) meanwhile.
    let leased = store.peek_current(SECRET_ID).unwrap();
    let state = keap_relay::token::TokenState::from_json(leased.value.expose_secret()).unwrap();
    let intruder = state.with_lease("intruder", std::time::SystemTime::now());
    store
        .put_version(SECRET_ID, "intruder-version", &intruder.to_secret())
        .await
        .unwrap();
    store
        .swap_current(SECRET_ID, &leased.version_id, "intruder-version")
        .await
        .unwrap();
    assert_eq!(token_of(&call.await.unwrap().unwrap()), "at-2");
    let stored = stored_state(&store);
    assert_eq!(stored.generation, 2);
    assert!(stored.same_refresh_token(&SecretString::from("rt-2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_holder_died_is_taken_over_after_it_expires() {
    quiet_injected_panics();
    let (store, keap) = seeded(Duration::ZERO).await;
    keap.script([KeapFault::CrashBefore]);
    let doomed = source(store.clone(), keap.clone());
    assert!(doomed.credential().await.is_err(), "the holder's flight died");
    assert!(stored_state(&store).lease.is_some(), "its lease stays behind");
    let sources: Vec<TokenSource> = (0..4).map(|_| source(store.clone(), keap.clone())).collect();
    // Nobody can tell it died before its call: no takeover until the late-commit grace is over.
    for result in storm(&sources, 2).await {
        assert!(matches!(result, Err(TokenError::Unavailable { .. })), "{result:?}");
    }
    assert_eq!(keap.calls(), 0);
    tokio::time::sleep(fast_settings().late_commit_grace).await;
    for result in storm(&sources, 2).await {
        assert_eq!(token_of(&result.unwrap()), "at-2");
    }
    assert_eq!(keap.calls(), 1);
    assert_eq!(store.versions(SECRET_ID).len(), 4, "connect, dead lease, lease, commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_keap_and_the_commit_is_the_one_counted_loss() {
    quiet_injected_panics();
    let (store, keap) = seeded(Duration::ZERO).await;
    keap.script([KeapFault::CrashAfterIssue]);
    assert!(source(store.clone(), keap.clone()).credential().await.is_err());
    // Its lease ran out with no outcome: nobody spends the token again during the grace, in
    // case its commit still lands.
    let result = source(store.clone(), keap.clone()).credential().await;
    assert!(matches!(result, Err(TokenError::Unavailable { .. })), "{result:?}");
    assert_eq!(keap.calls(), 1);
    tokio::time::sleep(fast_settings().late_commit_grace).await;
    let result = source(store.clone(), keap.clone()).credential().await;
    assert!(matches!(result, Err(TokenError::NeedsReauth { .. })), "{result:?}");
    keap.ledger(|l| {
        assert_eq!((l.crashes_after_issue, l.invalid_grants, l.successes), (1, 1, 1));
    });
    assert_eq!(stored_state(&store).status, LinkStatus::NeedsReauth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_put_but_not_swapped_is_finished_by_the_next_contender() {
    quiet_injected_panics();
    let (store, keap) = seeded(Duration::ZERO).await;
    // Calls of the doomed process: read, put lease, swap lease, put commit, [dies] swap commit.
    let chaos = StoreChaos {
        crash_at_call: Some((4, false)),
        ..StoreChaos::default()
    };
    let faulty = Arc::new(FaultyStore::new(store.clone(), chaos));
    assert!(source(faulty, keap.clone()).credential().await.is_err());
    let result = source(store.clone(), keap.clone()).credential().await;
    assert_eq!(token_of(&result.unwrap()), "at-2");
    assert_eq!(keap.calls(), 1);
    assert_eq!(store.versions(SECRET_ID).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_put_but_not_swapped_is_swapped_in_and_taken_over() {
    quiet_injected_panics();
    let (store, keap) = seeded(Duration::ZERO).await;
    let chaos = StoreChaos {
        crash_at_call: Some((2, false)),
        ..StoreChaos::default()
    };
    let faulty = Arc::new(FaultyStore::new(store.clone(), chaos));
    assert!(source(faulty, keap.clone()).credential().await.is_err());
    let orphan = child_version_id(&store.versions(SECRET_ID)[0], Step::Lease);
    assert_eq!(store.versions(SECRET_ID)[1], orphan);
    // Swapped in, the lease may be held (its writer may have retried the swap): it runs out,
    // then the late-commit grace, then the takeover.
    let next = source(store.clone(), keap.clone());
    assert!(matches!(next.credential().await, Err(TokenError::Unavailable { .. })));
    tokio::time::sleep(fast_settings().lease_duration + fast_settings().late_commit_grace).await;
    let result = next.credential().await;
    assert_eq!(token_of(&result.unwrap()), "at-2");
    assert_eq!(keap.calls(), 1);
    assert_eq!(store.versions(SECRET_ID).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_rotation_rotates_only_when_due_and_once() {
    let (store, keap) = seeded(Duration::from_secs(1800)).await; // new pairs live 3600 s
    let counting = Arc::new(CountingStore::new(store.clone()));
    let a = source(counting.clone(), keap.clone());
    let relaxed = RotationPolicy {
        lead: Duration::from_secs(600),
        max_refresh_age: Duration::from_secs(30 * 86_400),
    };
    let report = a.rotate_if_due(relaxed).await.unwrap();
    assert_eq!(report.action, RotationAction::NotDue);
    assert_eq!((counting.counts().total(), keap.calls()), (1, 0));
    let due = RotationPolicy {
        lead: Duration::from_secs(2700),
        max_refresh_age: Duration::from_secs(30 * 86_400),
    };
    let b = source(store.clone(), keap.clone());
    let (ra, rb) = tokio::join!(a.rotate_if_due(due), b.rotate_if_due(due));
    let mut actions = vec![ra.unwrap().action, rb.unwrap().action];
    actions.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(actions, vec![RotationAction::Rotated, RotationAction::RotatedByOther]);
    assert_eq!(keap.calls(), 1);
    let aged = RotationPolicy {
        lead: Duration::from_secs(1),
        max_refresh_age: Duration::ZERO,
    };
    assert_eq!(a.rotate_if_due(aged).await.unwrap().action, RotationAction::Rotated);
    assert_eq!(keap.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_first_rereads_the_store_then_refreshes_only_the_rejected_token() {
    let (store, keap) = seeded(Duration::from_secs(3600)).await;
    let stale = source(store.clone(), keap.clone());
    let rejected = stale.credential().await.unwrap();
    // Another process rotates meanwhile.
    let rotator = source(store.clone(), keap.clone());
    let forced = RotationPolicy {
        lead: Duration::from_secs(7200),
        max_refresh_age: Duration::ZERO,
    };
    rotator.rotate_if_due(forced).await.unwrap();
    assert_eq!(token_of(&stale.after_unauthorized(&rejected).await.unwrap()), "at-2");
    assert_eq!(keap.calls(), 1, "the stored token differs: no refresh");
    let rejected = stale.credential().await.unwrap();
    assert_eq!(token_of(&stale.after_unauthorized(&rejected).await.unwrap()), "at-3");
    assert_eq!(keap.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_another_account_needs_an_explicit_switch() {
    let store = Arc::new(MemoryStore::new());
    let keap = FakeKeap::new();
    let source = source(store.clone(), keap.clone());
    assert!(matches!(source.credential().await, Err(TokenError::NotConnected)));
    assert!(!source.status().await.unwrap().connected);
    let first = source.connect(keap.authorize(), false).await.unwrap();
    assert_eq!(
        first,
        ConnectOutcome::Connected {
            account: Some("ab123.infusionsoft.com".into()),
            replaced: false
        }
    );
    let mut other = keap.authorize();
    other.account = Some("zz999.infusionsoft.com".into());
    let refused = source.connect(other.clone(), false).await;
    assert!(
        matches!(refused, Err(ConnectError::DifferentAccount { .. })),
        "{refused:?}"
    );
    assert_eq!(stored_state(&store).account.as_deref(), Some("ab123.infusionsoft.com"));
    source.connect(other, true).await.unwrap();
    let status = source.status().await.unwrap();
    assert_eq!(
        (status.account.as_deref(), status.generation),
        (Some("zz999.infusionsoft.com"), Some(2))
    );
    let versions = store.versions(SECRET_ID);
    assert_eq!(
        versions[1],
        child_version_id(&versions[0], Step::Connect),
        "version ids derive from the parent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connections_both_land_one_after_the_other() {
    let store = Arc::new(MemoryStore::new());
    let keap = FakeKeap::new();
    let (a, b) = (source(store.clone(), keap.clone()), source(store.clone(), keap.clone()));
    let (ga, gb) = (keap.authorize(), keap.authorize());
    let (ra, rb) = tokio::join!(a.connect(ga, false), b.connect(gb, false));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(stored_state(&store).generation, 2);
}

#[tokio::test]
async fn the_api_key_source_hands_out_the_key_and_never_touches_a_store() {
    let source = ApiKeySource::new(SecretString::from("KeapAK-secret-key"));
    assert!(matches!(source.credential().await.unwrap(), Credential::ApiKey(_)));
    let status = source.status().await.unwrap();
    assert_eq!((status.mode, status.connected), ("api-key", true));
    let report = source
        .rotate_if_due(RotationPolicy {
            lead: Duration::ZERO,
            max_refresh_age: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(report.action, RotationAction::ApiKeyChecked);
    assert!(!format!("{source:?}").contains("KeapAK-secret-key"));
    assert!(source.connect(FakeKeap::new().authorize(), false).await.is_err());
}

#[tokio::test]
async fn a_lease_too_short_for_the_keap_call_is_refused_at_construction() {
    let settings = TokenSettings {
        lease_duration: Duration::from_millis(100),
        ..fast_settings()
    };
    let result = TokenSource::new(Arc::new(MemoryStore::new()), SECRET_ID, FakeKeap::new(), settings);
    assert!(matches!(result, Err(TokenError::Misconfigured(_))));
}

#[tokio::test]
async fn no_token_appears_in_debug_output_or_errors() {
    let (store, keap) = seeded(Duration::from_secs(3600)).await;
    let source = source(store.clone(), keap);
    let credential = source.credential().await.unwrap();
    let status = serde_json::to_string(&source.status().await.unwrap()).unwrap();
    let state = format!("{:?}", stored_state(&store));
    for text in [format!("{source:?}"), format!("{credential:?}"), status, state] {
        assert!(!text.contains("at-1") && !text.contains("rt-1"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_shorter_lived_than_the_margin_is_not_refreshed_on_every_request() {
    let store = Arc::new(MemoryStore::new());
    let keap = FakeKeap::new();
    let mut grant = keap.authorize();
    grant.expires_in = Duration::from_secs(40); // the margin is 60 s
    source(store.clone(), keap.clone()).connect(grant, false).await.unwrap();
    let counting = Arc::new(CountingStore::new(store));
    let source = source(counting.clone(), keap.clone());
    source.credential().await.unwrap();
    counting.reset();
    for _ in 0..10 {
        source.credential().await.unwrap();
    }
    assert_eq!(
        (keap.calls(), counting.counts().total()),
        (0, 0),
        "half the lifetime is left: no refresh"
    );
}
