//! Invariant 10 of `docs/token-rotation.md` over the real Secrets Manager path (the SDK and
//! `SecretsManagerStore` against moto): Keap's token endpoint down while the access token is
//! dead, requests arriving steadily from several processes. Versions written follow the shared
//! backoff, not the request rate, and the connection rotates within one backoff period after
//! Keap comes back. (The day-long version of this runs on a simulated clock in
//! `shared/tests/rotation_hard_faults.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_relay::token::{CredentialSource, TokenError, TokenSettings, TokenSource};
use keap_sandbox::ReusePolicy;
use relay_tests::rotation::{StoreSpec, StormSetup};
use test_support::moto::{MotoServer, sm_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_outage_writes_versions_by_the_backoff_not_by_the_request_rate() {
    const PROCESSES: usize = 4;
    const RATE_PER_SECOND: u64 = 40;
    const OUTAGE: Duration = Duration::from_secs(8);
    let moto = MotoServer::start().await;
    let setup = StormSetup::new(
        StoreSpec::SecretsManager {
            endpoint: moto.endpoint.clone(),
        },
        ReusePolicy::RevokeFamily,
        true,
    )
    .await;
    let settings = TokenSettings {
        backoff_min: Duration::from_millis(250),
        backoff_max: Duration::from_secs(1),
        ..setup.args.timings.settings()
    };
    let processes: Vec<TokenSource> = (0..PROCESSES)
        .map(|_| {
            let store = Arc::new(SecretsManagerStore::new(sm_client(&moto.endpoint)));
            TokenSource::new(
                store,
                setup.secret_id.clone(),
                Arc::new(setup.args.oauth_client()),
                settings.clone(),
            )
            .unwrap()
        })
        .collect();
    setup.sandbox.faults().set_server_error_rate(1.0);

    let every = Duration::from_secs(1) / RATE_PER_SECOND as u32;
    let started = Instant::now();
    let mut requests = 0u64;
    while started.elapsed() < OUTAGE {
        let result = processes[requests as usize % PROCESSES].credential().await;
        assert!(matches!(result, Err(TokenError::Unavailable { .. })), "{result:?}");
        requests += 1;
        tokio::time::sleep(every).await;
    }
    let versions = setup.new_versions().await;
    let token_calls = setup.sandbox.stats().server_errors;
    // Attempts at most every backoff: 0.25, 0.5, then every 1 s (plus one per process whose
    // cached backoff ran out at the same moment: they race for one lease, losers write nothing).
    let attempts_allowed = 2 + OUTAGE.as_secs() + 1;
    println!("outage over moto: {requests} requests, {token_calls} token calls, {versions} versions in {OUTAGE:?}");
    assert!(
        versions as u64 <= 2 * attempts_allowed,
        "{versions} versions for {requests} requests"
    );
    assert!(token_calls <= attempts_allowed, "{token_calls} token calls");
    assert_eq!(setup.sandbox.stats().refreshes_served, 0);

    // Keap is back: one process rotates within one backoff period.
    setup.sandbox.faults().clear();
    let back = Instant::now();
    loop {
        let result = processes[requests as usize % PROCESSES].credential().await;
        requests += 1;
        if result.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < settings.backoff_max + Duration::from_secs(1),
            "no rotation within one backoff: {result:?}"
        );
        tokio::time::sleep(every).await;
    }
    println!("rotated {} ms after Keap came back", back.elapsed().as_millis());
    let stats = setup.sandbox.stats();
    assert_eq!((stats.refreshes_served, stats.refresh_failures_total()), (1, 0));
    assert_eq!(setup.stored().await.generation, 2);
}
