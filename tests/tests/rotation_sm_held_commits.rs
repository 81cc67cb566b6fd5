//! Issue 11, "Done when" #1: a storm over moto's Secrets Manager, through a fault proxy that holds
//! every commit put past the lease (the write lands after its sender gave up, inside
//! `lease + clock_skew + late_commit_grace`), with contenders (each its own `TokenSource`, a
//! "process") arriving all through the lease and the grace. Nobody may take the expired lease
//! over while the holder's commit can still land; whoever finds the commit child swaps it in.
//! Exactly one Keap refresh, no refresh token spent twice, and the connection ends connected
//! with the last pair, under both reuse policies of the sandbox. The stored state is read from
//! moto directly, never through the proxy.

use std::sync::Arc;
use std::time::Duration;

use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_relay::token::{
    Connection, Credential, CredentialSource, LinkStatus, RotationAction, RotationPolicy, TokenError,
};
use keap_relay::{ExposeSecret, SecretString};
use keap_sandbox::ReusePolicy;
use relay_tests::rotation::{StoreSpec, StormSetup, fingerprint};
use relay_tests::sm_fault_proxy::{Fault, FaultProxy, PUT_SECRET_VALUE};
use test_support::moto::MotoServer;
use tokio::time::Instant;

/// A new contender every so often, from the start until past the lease and the grace.
const ARRIVAL_EVERY: Duration = Duration::from_millis(200);

/// What one contender's single `credential()` call ended with.
#[derive(Debug)]
enum Outcome {
    Token(SecretString),
    Unavailable(String),
    Other(TokenError),
}

/// True when the sandbox accepts `token` on its REST API now.
async fn accepted_by_keap(setup: &StormSetup, token: &SecretString) -> bool {
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/tags", setup.sandbox.api_url()))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .expect("sandbox REST call");
    answer.status().is_success()
}

async fn held_commits_storm(policy: ReusePolicy) {
    // RUST_LOG=keap_relay=debug shows the protocol's steps.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let moto = MotoServer::start().await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    // The first authorization is written through moto directly; its access token has expired.
    let setup = StormSetup::new(
        StoreSpec::SecretsManager {
            endpoint: moto.endpoint.clone(),
        },
        policy,
        true,
    )
    .await;
    let settings = setup.args.timings.settings();
    let before = setup.stored().await;
    let old_access = before.access_token.clone().expect("a first access token");
    let hold = settings.lease_duration + Duration::from_secs(1);
    assert!(
        hold > settings.lease_duration + settings.clock_skew
            && hold + settings.store_call_timeout < settings.lease_duration + settings.late_commit_grace,
        "the hold must outlast the lease and leave the commit inside the grace: {settings:?}"
    );
    proxy.hold_puts_above_generation(before.generation, hold);

    // One contender at once, then one every ARRIVAL_EVERY until past the lease and the grace.
    let arrivals = settings.lease_duration + settings.late_commit_grace + Duration::from_secs(1);
    let count = (arrivals.as_millis() / ARRIVAL_EVERY.as_millis()) as u32 + 1;
    let storm_start = Instant::now();
    let mut contenders = Vec::new();
    for i in 0..count {
        let source = setup
            .args
            .token_source(Arc::new(SecretsManagerStore::new(proxy.sm_client())));
        let arrive = storm_start + ARRIVAL_EVERY * i;
        contenders.push(tokio::spawn(async move {
            tokio::time::sleep_until(arrive).await;
            let asked = Instant::now();
            let outcome = match source.credential().await {
                Ok(Credential::AccessToken { token, .. }) => Outcome::Token(token),
                Ok(other) => panic!("an OAuth access token, not {other:?}"),
                Err(TokenError::Unavailable { detail, .. }) => Outcome::Unavailable(detail),
                Err(error) => Outcome::Other(error),
            };
            (arrive - storm_start, asked.elapsed(), outcome)
        }));
    }
    let mut outcomes = Vec::new();
    for contender in contenders {
        outcomes.push(contender.await.expect("contender task"));
    }
    let storm = storm_start.elapsed();
    // Every held put reaches moto before anything is checked (they are idempotent retries).
    assert!(
        proxy.wait_held_forwarded(hold + Duration::from_secs(5)).await,
        "held puts still pending: {}",
        proxy.held_pending()
    );

    let stats = setup.sandbox.stats();
    assert_eq!(
        stats.refreshes_served, 1,
        "{policy:?}: exactly one refresh reached Keap"
    );
    assert_eq!(
        stats.refresh_failures_total(),
        0,
        "{policy:?}: no refresh token spent twice: {:?}",
        stats.refresh_failures
    );

    let stored = setup.stored().await;
    assert_eq!(stored.generation, before.generation + 1, "{policy:?}: one new pair");
    assert_eq!(stored.status, LinkStatus::Connected, "{policy:?}");
    assert!(stored.lease.is_none(), "{policy:?}: no lease left behind");
    assert!(
        !stored.same_refresh_token(before.refresh_token.as_ref().unwrap()),
        "{policy:?}: moto holds the new refresh token"
    );
    let new_access = stored.access_token.clone().expect("a stored access token");
    // Keap issued two access tokens (the first authorization and the one refresh): the stored
    // one is the other, i.e. the last issued, and Keap takes it.
    assert_ne!(
        fingerprint(&new_access),
        fingerprint(&old_access),
        "{policy:?}: the stored access token is new"
    );
    assert!(
        setup
            .sandbox
            .issued_tokens()
            .contains(&new_access.expose_secret().to_owned()),
        "{policy:?}: issued by Keap"
    );
    assert!(
        accepted_by_keap(&setup, &new_access).await,
        "{policy:?}: Keap accepts the stored access token"
    );
    assert!(
        !accepted_by_keap(&setup, &old_access).await,
        "{policy:?}: the first access token had expired"
    );

    let (mut ok, mut unavailable, mut in_grace) = (0, 0, 0);
    for (arrived, took, outcome) in &outcomes {
        match outcome {
            Outcome::Token(token) => {
                assert_eq!(
                    fingerprint(token),
                    fingerprint(&new_access),
                    "{policy:?}: contender at {arrived:?} got the new token"
                );
                ok += 1;
            }
            Outcome::Unavailable(detail) => {
                unavailable += 1;
                // Found the lease run out with no outcome stored yet: waiting out the late-commit grace.
                in_grace += usize::from(detail.contains("interrupted"));
            }
            Outcome::Other(error) => panic!("{policy:?}: contender at {arrived:?} (after {took:?}): {error:?}"),
        }
    }
    assert!(
        ok >= 1,
        "{policy:?}: at least one contender got the new token: {outcomes:?}"
    );
    // The first contender held the lease: its own puts never answer in time, but it finds its
    // pair swapped in by a later contender and hands it out.
    assert!(
        matches!(outcomes[0].2, Outcome::Token(_)),
        "{policy:?}: the lease holder ended with the new token: {:?}",
        outcomes[0]
    );
    let held = proxy.held();
    assert!(held >= 1, "{policy:?}: the commit put was held");
    let held_puts: Vec<_> = proxy
        .faulted()
        .into_iter()
        .filter(|f| f.target == PUT_SECRET_VALUE && f.fault == Fault::Hold(hold))
        .collect();
    assert_eq!(held_puts.len(), held);
    assert!(
        held_puts
            .iter()
            .all(|f| f.body["ClientRequestToken"] == held_puts[0].body["ClientRequestToken"]),
        "{policy:?}: every held put was the same commit (same version id)"
    );
    let versions = setup.new_versions().await;
    assert_eq!(versions, 2, "{policy:?}: a lease and a commit, nothing else");

    // The last pair works for one more rotation, by a fresh source straight on moto.
    let fresh = setup.args.token_source(setup.store.open());
    let due_now = RotationPolicy {
        lead: Duration::ZERO,
        max_refresh_age: Duration::ZERO,
    };
    let report = fresh
        .rotate_if_due(due_now)
        .await
        .expect("one more rotation with the stored pair");
    assert_eq!(report.action, RotationAction::Rotated, "{policy:?}");
    let stats = setup.sandbox.stats();
    assert_eq!(
        (stats.refreshes_served, stats.refresh_failures_total()),
        (2, 0),
        "{policy:?}: {:?}",
        stats.refresh_failures
    );
    let rotated = setup.stored().await;
    assert_eq!(rotated.generation, before.generation + 2);
    let Credential::AccessToken { token, .. } =
        fresh.credential().await.expect("a credential after the extra rotation")
    else {
        panic!("an OAuth access token")
    };
    assert!(
        rotated.same_access_token(&token) && accepted_by_keap(&setup, &token).await,
        "{policy:?}"
    );

    println!(
        "held commits {policy:?}: {held} held puts, {count} contenders ({ok} ok, {unavailable} unavailable, {in_grace} of them in the grace), {versions} versions written, \
         storm {storm:?}, whole test {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_commits_storm_when_keap_rejects_reuse() {
    held_commits_storm(ReusePolicy::Reject).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_commits_storm_when_keap_revokes_the_family() {
    held_commits_storm(ReusePolicy::RevokeFamily).await;
}
