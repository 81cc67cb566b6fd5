//! The storm: 64 contenders in 8 OS processes (8 callers each, each process with its own cache)
//! find the access token expired at once, against the in-process Keap sandbox, over the file
//! store and over moto's Secrets Manager, with Keap rejecting reuse and with Keap revoking the
//! whole grant on reuse. Exactly one refresh may reach Keap and nothing may be lost.

use std::path::Path;

use keap_sandbox::ReusePolicy;
use relay_tests::rotation::{StoreSpec, StormSetup, fingerprint, spawn_contenders, unleash};
use test_support::moto::MotoServer;
use test_support::temp::TempDir;

const PROCESSES: usize = 8;
const CALLERS: usize = 8;

fn contender_program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rotation-contender"))
}

async fn storm_rotates_exactly_once(store: StoreSpec, policy: ReusePolicy) {
    let mut setup = StormSetup::new(store, policy, true).await;
    setup.args.callers = CALLERS;
    let before = setup.stored().await;
    let contenders = spawn_contenders(contender_program(), &setup.args, PROCESSES);
    let outcome = unleash(contenders).await;

    let stats = setup.sandbox.stats();
    assert_eq!(
        stats.refreshes_served, 1,
        "exactly one refresh reached Keap ({policy:?})"
    );
    assert_eq!(
        stats.refresh_failures_total(),
        0,
        "no invalid_grant: {:?}",
        stats.refresh_failures
    );
    assert_eq!(outcome.calls.len(), PROCESSES * CALLERS);
    assert!(outcome.errors().is_empty(), "{:?}", outcome.errors());

    let stored = setup.stored().await;
    assert_eq!(stored.generation, before.generation + 1);
    assert!(stored.lease.is_none());
    let stored_access = stored.access_token.clone().expect("stored access token");
    assert!(
        !stored.same_refresh_token(before.refresh_token.as_ref().unwrap()),
        "the store holds the new pair"
    );
    let fingerprints = outcome.fingerprints();
    assert_eq!(fingerprints.len(), 1, "every contender ended with one token");
    assert_eq!(
        fingerprints.into_iter().next().unwrap(),
        Some(fingerprint(&stored_access))
    );
    assert!(setup.new_versions().await <= 2, "at most a lease and a commit");
    assert_eq!(outcome.created, 2, "losers created no version");
    println!(
        "storm {policy:?}: {} store calls, {} writes, last contender served after {:?}",
        outcome.store_calls, outcome.store_writes, outcome.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_over_the_file_store_when_keap_rejects_reuse() {
    let dir = TempDir::new("storm-file");
    storm_rotates_exactly_once(StoreSpec::File(dir.path().to_owned()), ReusePolicy::Reject).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_over_the_file_store_when_keap_revokes_the_family() {
    let dir = TempDir::new("storm-file-revoke");
    storm_rotates_exactly_once(StoreSpec::File(dir.path().to_owned()), ReusePolicy::RevokeFamily).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_over_moto_secrets_manager_under_both_reuse_policies() {
    let moto = MotoServer::start().await;
    for policy in [ReusePolicy::Reject, ReusePolicy::RevokeFamily] {
        storm_rotates_exactly_once(
            StoreSpec::SecretsManager {
                endpoint: moto.endpoint.clone(),
            },
            policy,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_with_cached_valid_tokens_touches_neither_store_nor_keap() {
    let dir = TempDir::new("storm-cached");
    let mut setup = StormSetup::new(StoreSpec::File(dir.path().to_owned()), ReusePolicy::Reject, false).await;
    setup.args.callers = CALLERS;
    setup.args.warm = true; // each process reads once before the storm
    let contenders = spawn_contenders(contender_program(), &setup.args, PROCESSES);
    let outcome = unleash(contenders).await;
    assert!(outcome.errors().is_empty(), "{:?}", outcome.errors());
    assert_eq!(outcome.store_calls, 0);
    assert_eq!(setup.sandbox.stats().refreshes_served, 0);
    assert_eq!(setup.sandbox.stats().refresh_failures_total(), 0);
    assert_eq!(setup.new_versions().await, 0);
}
