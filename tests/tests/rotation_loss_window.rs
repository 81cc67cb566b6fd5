//! The one loss no storage design prevents (`docs/token-rotation.md`, "What can still be
//! lost"): a process that dies after Keap answered a refresh and before its commit is
//! current. This measures that window over moto's Secrets Manager through the real SDK
//! adapter (the commit's put and swap), and checks it fits the commit window the protocol
//! reserves for it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::keap::oauth::{OAuthError, TokenEndpoint};
use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_relay::token::{Connection, RotationAction, RotationPolicy, TokenGrant, TokenSource};
use keap_sandbox::ReusePolicy;
use relay_tests::rotation::{StoreSpec, StormSetup};
use test_support::moto::{MotoServer, sm_client};

/// Keap's token endpoint, noting when each answer arrived.
#[derive(Debug)]
struct Timed {
    inner: keap_relay::keap::oauth::OAuthClient,
    answered: Mutex<Option<Instant>>,
}

#[async_trait]
impl TokenEndpoint for Timed {
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, OAuthError> {
        let answer = self.inner.refresh(refresh_token).await;
        *self.answered.lock().unwrap() = Some(Instant::now());
        answer
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_between_keaps_answer_and_the_stored_pair_fits_the_commit_window() {
    const ROTATIONS: usize = 30;
    let moto = MotoServer::start().await;
    let setup = StormSetup::new(
        StoreSpec::SecretsManager {
            endpoint: moto.endpoint.clone(),
        },
        ReusePolicy::RevokeFamily,
        false,
    )
    .await;
    let settings = setup.args.timings.settings();
    let keap = Arc::new(Timed {
        inner: setup.args.oauth_client(),
        answered: Mutex::new(None),
    });
    let store = Arc::new(SecretsManagerStore::new(sm_client(&moto.endpoint)));
    let source = TokenSource::new(store, setup.secret_id.clone(), keap.clone(), settings.clone()).expect("settings");
    // A lead longer than any lifetime: every run is due.
    let always = RotationPolicy {
        lead: Duration::from_secs(100 * 86_400),
        max_refresh_age: Duration::ZERO,
    };
    let mut windows = Vec::with_capacity(ROTATIONS);
    for _ in 0..ROTATIONS {
        let report = source.rotate_if_due(always).await.expect("rotates");
        let stored_at = Instant::now();
        assert_eq!(report.action, RotationAction::Rotated);
        let answered = keap.answered.lock().unwrap().take().expect("Keap answered");
        windows.push(stored_at - answered);
    }
    windows.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99, max) = (
        windows[ROTATIONS / 2],
        windows[ROTATIONS * 99 / 100],
        windows[ROTATIONS - 1],
    );
    println!(
        "loss window over moto (commit put + swap, {ROTATIONS} rotations): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );
    assert_eq!(setup.sandbox.stats().refreshes_served, ROTATIONS as u64);
    assert_eq!(setup.sandbox.stats().refresh_failures_total(), 0);
    assert!(
        max < settings.commit_allowance,
        "the commit must fit its window: {max:?}"
    );
}
