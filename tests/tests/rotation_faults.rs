//! Fault runs of the rotation against the Keap sandbox: Keap failing (5xx), Keap too slow
//! (timeouts), Keap's answer dropped after it rotated, the store failing around the commit,
//! and a lease holder killed mid-refresh. For each: nothing issued is lost, versions stay
//! bounded, and nobody spends a refresh token twice.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keap_relay::ExposeSecret;
use keap_relay::store::memory::{FaultPoint, MemoryStore};
use keap_relay::store::{SecretStore, StoreOp};
use keap_relay::token::{Credential, CredentialSource, LinkStatus, TokenState};
use keap_sandbox::ReusePolicy;
use relay_tests::rotation::{ContenderLine, StoreSpec, StormSetup, fingerprint, spawn_contenders, unleash};
use test_support::temp::TempDir;

const PROCESSES: usize = 4;
const CALLERS: usize = 4;

fn contender_program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rotation-contender"))
}

async fn file_setup(dir: &TempDir) -> StormSetup {
    let mut setup = StormSetup::new(StoreSpec::File(dir.path().to_owned()), ReusePolicy::RevokeFamily, true).await;
    setup.args.callers = CALLERS;
    setup
}

async fn storm(setup: &StormSetup) -> relay_tests::rotation::StormOutcome {
    unleash(spawn_contenders(contender_program(), &setup.args, PROCESSES)).await
}

/// After a run that ended without a new pair, a clean storm still rotates exactly once.
async fn recovers_with_one_refresh(setup: &StormSetup) {
    setup.sandbox.faults().clear();
    // Invariant 10: nobody tries again before the shared backoff recorded by the failure.
    if let Some(at) = setup.stored().await.retry_not_before {
        tokio::time::sleep(
            at.duration_since(std::time::SystemTime::now()).unwrap_or_default() + Duration::from_millis(50),
        )
        .await;
    }
    let served_before = setup.sandbox.stats().refreshes_served;
    let outcome = storm(setup).await;
    assert!(outcome.errors().is_empty(), "{:?}", outcome.errors());
    assert_eq!(setup.sandbox.stats().refreshes_served, served_before + 1);
    assert_eq!(setup.sandbox.stats().refresh_failures_total(), 0);
    let stored = setup.stored().await;
    assert_eq!(
        outcome.fingerprints().into_iter().collect::<Vec<_>>(),
        vec![Some(fingerprint(stored.access_token.as_ref().unwrap()))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keap_server_errors_release_the_lease_and_spend_nothing() {
    let dir = TempDir::new("faults-5xx");
    let setup = file_setup(&dir).await;
    setup.sandbox.faults().set_server_error_rate(1.0);
    setup.sandbox.faults().set_token_latency(Duration::from_millis(300)); // all others wait meanwhile
    let outcome = storm(&setup).await;
    assert_eq!(
        outcome.errors().len(),
        PROCESSES * CALLERS,
        "an expired token cannot be served"
    );
    assert!(
        outcome.errors().iter().all(|e| e.contains("temporarily unavailable")),
        "{:?}",
        outcome.errors()
    );
    let stats = setup.sandbox.stats();
    assert_eq!(
        (stats.refreshes_served, stats.server_errors),
        (0, 1),
        "waiters share the holder's failure"
    );
    let stored = setup.stored().await;
    assert!(stored.lease.is_none() && stored.last_error.is_some() && stored.status == LinkStatus::Connected);
    assert_eq!(setup.new_versions().await, 2, "lease and release");
    recovers_with_one_refresh(&setup).await;
    assert_eq!(setup.new_versions().await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keap_timeout_needs_reauth_and_the_token_is_never_sent_again() {
    let dir = TempDir::new("faults-timeout");
    let setup = file_setup(&dir).await;
    setup.sandbox.faults().set_token_latency(Duration::from_millis(2500)); // over the 1.5 s timeout
    let outcome = storm(&setup).await;
    assert_eq!(outcome.errors().len(), PROCESSES * CALLERS);
    assert!(
        outcome
            .errors()
            .iter()
            .all(|e| e.contains("re-authorization") && e.contains("/oauth/start")),
        "{:?}",
        outcome.errors()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the sandbox finish the slow call
    let stats = setup.sandbox.stats();
    assert!(
        stats.refreshes_served + stats.refresh_failures_total() <= 1,
        "one call at most: {stats:?}"
    );
    let stored = setup.stored().await;
    assert_eq!(stored.status, LinkStatus::NeedsReauth);
    assert!(
        stored
            .needs_reauth_reason
            .as_deref()
            .unwrap()
            .contains("answer was lost")
    );
    // Nobody calls Keap's token endpoint again until a new authorization.
    setup.sandbox.faults().clear();
    let again = storm(&setup).await;
    assert_eq!(again.errors().len(), PROCESSES * CALLERS);
    let after = setup.sandbox.stats();
    assert_eq!(
        (after.refreshes_served, after.refresh_failures_total()),
        (stats.refreshes_served, stats.refresh_failures_total())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_refresh_answer_needs_reauth_after_one_call_and_the_holders_one_retry() {
    let dir = TempDir::new("faults-drop");
    let setup = file_setup(&dir).await;
    setup.sandbox.faults().drop_next_refresh_responses(1);
    let outcome = storm(&setup).await;
    for error in outcome.errors() {
        assert!(
            error.contains("Keap may have rotated the token but its answer was lost") && error.contains("/oauth/start"),
            "{error}"
        );
    }
    assert_eq!(outcome.errors().len(), PROCESSES * CALLERS);
    let stats = setup.sandbox.stats();
    // Invariant 1's exception: the holder retried once inside its lease; Keap refused the spent
    // token (and, under revoke-family, the pair it lost), and nobody sent it again.
    assert_eq!(
        (
            stats.refreshes_served,
            stats.dropped_responses,
            stats.refresh_failures_total()
        ),
        (1, 1, 1)
    );
    let status = setup.stored().await.status_report(std::time::SystemTime::now());
    assert!(
        status.needs_reauth
            && status
                .needs_reauth_reason
                .unwrap()
                .contains("re-authorize at /oauth/start")
    );
    assert_eq!(setup.new_versions().await, 2, "lease and the needs_reauth record");
    // No loop: further requests fail fast without calling Keap.
    let again = storm(&setup).await;
    assert_eq!(again.errors().len(), PROCESSES * CALLERS);
    assert_eq!(setup.sandbox.stats().refreshes_served, 1);
    assert_eq!(
        setup.sandbox.stats().refresh_failures_total(),
        1,
        "no call after the retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_refresh_is_taken_over_after_expiry() {
    let dir = TempDir::new("faults-kill");
    let mut setup = file_setup(&dir).await;
    let marker = dir.path().join("pause-keap-calls");
    std::fs::write(&marker, b"").unwrap();
    setup.args.pause_marker = Some(marker.clone());
    setup.args.pause_ms = 1400; // inside the 1.5 s Keap timeout, well inside the 4 s lease
    let mut contenders = spawn_contenders(contender_program(), &setup.args, PROCESSES);
    for contender in &mut contenders {
        contender.go();
    }
    // Find the process whose lease is current, and kill it before its request leaves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        if let Some(lease) = setup.stored().await.lease {
            break lease.holder;
        }
        assert!(Instant::now() < deadline, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let victim = contenders
        .iter()
        .position(|c| holder.starts_with(&c.process_id))
        .expect("holder is a contender");
    contenders.remove(victim).kill();
    std::fs::remove_file(&marker).unwrap();
    let outcome = unleash_started(contenders).await;
    // Nobody can tell the holder died before its call rather than after it: no takeover (and
    // no second use of the token) before the late-commit grace is over.
    assert!(
        outcome.errors().iter().all(|e| e.contains("interrupted")),
        "{:?}",
        outcome.errors()
    );
    assert_eq!(outcome.calls.len(), (PROCESSES - 1) * CALLERS);
    assert_eq!(setup.sandbox.stats().refreshes_served, 0);
    tokio::time::sleep(setup.args.timings.settings().late_commit_grace).await;
    let outcome = storm(&setup).await;
    assert!(outcome.errors().is_empty(), "{:?}", outcome.errors());
    let stats = setup.sandbox.stats();
    assert_eq!((stats.refreshes_served, stats.refresh_failures_total()), (1, 0));
    let stored = setup.stored().await;
    assert_eq!(
        outcome.fingerprints().into_iter().collect::<Vec<_>>(),
        vec![Some(fingerprint(stored.access_token.as_ref().unwrap()))]
    );
    assert_eq!(setup.new_versions().await, 3, "dead lease, lease taken over, commit");
}

/// Collects contenders that were already told to go.
async fn unleash_started(contenders: Vec<relay_tests::rotation::Contender>) -> relay_tests::rotation::StormOutcome {
    tokio::task::spawn_blocking(move || {
        let mut outcome = relay_tests::rotation::StormOutcome::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        for mut contender in contenders {
            let (calls, _done) = contender.collect(deadline).expect("contender finished");
            outcome
                .calls
                .extend(calls.into_iter().filter(|c| matches!(c, ContenderLine::Call { .. })));
        }
        outcome
    })
    .await
    .unwrap()
}

/// Store throttling and 5xx (before and after the effect) on put and swap while the holder is
/// calling Keap: the commit retries with the same version id and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_faults_on_put_and_swap_during_a_storm_lose_nothing() {
    for point in [FaultPoint::BeforeApply, FaultPoint::AfterApply] {
        let memory = Arc::new(MemoryStore::new());
        let dir = TempDir::new("faults-store-unused");
        let setup = file_setup(&dir).await;
        // Move the first authorization into the memory store.
        let current = setup
            .store
            .open()
            .read_current(&setup.secret_id)
            .await
            .unwrap()
            .unwrap();
        memory
            .put_version(&setup.secret_id, &current.version_id, &current.value)
            .await
            .unwrap();
        setup.sandbox.faults().set_token_latency(Duration::from_millis(200));
        let sources: Vec<_> = (0..16).map(|_| setup.args.token_source(memory.clone())).collect();
        let mut callers = Vec::new();
        for source in &sources {
            for _ in 0..4 {
                let source = source.clone();
                callers.push(tokio::spawn(async move { source.credential().await }));
            }
        }
        // Arm the faults once the holder is calling Keap: they strike the commit.
        let deadline = Instant::now() + Duration::from_secs(10);
        let leased = |memory: &MemoryStore| {
            memory
                .peek_current(&setup.secret_id)
                .is_some_and(|v| TokenState::from_json(v.value.expose_secret()).unwrap().lease.is_some())
        };
        while !leased(&memory) {
            assert!(Instant::now() < deadline, "nobody took the lease");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        memory.fail_next(StoreOp::Put, 2, point);
        memory.fail_next(StoreOp::Swap, 2, point);
        memory.fail_next(StoreOp::ReadCurrent, 2, point);
        let mut tokens = std::collections::BTreeSet::new();
        for caller in callers {
            match caller.await.unwrap() {
                Ok(Credential::AccessToken { token, .. }) => tokens.insert(fingerprint(&token)),
                other => panic!("{point:?}: {other:?}"),
            };
        }
        let stats = setup.sandbox.stats();
        assert_eq!(
            (stats.refreshes_served, stats.refresh_failures_total()),
            (1, 0),
            "{point:?}"
        );
        let stored =
            TokenState::from_json(memory.peek_current(&setup.secret_id).unwrap().value.expose_secret()).unwrap();
        assert_eq!(
            tokens.into_iter().collect::<Vec<_>>(),
            vec![fingerprint(stored.access_token.as_ref().unwrap())]
        );
        assert_eq!(
            memory.versions(&setup.secret_id).len(),
            3,
            "{point:?}: first version, lease, commit"
        );
    }
}
