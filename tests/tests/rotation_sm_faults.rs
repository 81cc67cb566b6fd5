//! The real Secrets Manager path under faults: the AWS SDK (no SDK retries) and the
//! `SecretsManagerStore` adapter, aimed at a fault-injecting proxy in front of moto, under a
//! `TokenSource` rotating against the Keap sandbox. Throttling and 5xx on the commit's put and
//! swap must be classified as transient and retried with the same version id: one Keap refresh,
//! nothing issued lost, versions bounded. What is stored is checked against moto directly.

use std::sync::Arc;

use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_relay::store::{SecretStore, StoreError};
use keap_relay::token::{Credential, CredentialSource, TokenSource, TokenState};
use keap_relay::{ExposeSecret, SecretString};
use keap_sandbox::ReusePolicy;
use relay_tests::rotation::{StoreSpec, StormSetup};
use relay_tests::sm_fault_proxy::{
    Fault, FaultProxy, FaultedRequest, GET_SECRET_VALUE, PUT_SECRET_VALUE, UPDATE_SECRET_VERSION_STAGE,
};
use test_support::moto::{MotoServer, sm_client};

/// Moto, the proxy in front of it, a sandbox and a stored first authorization whose access
/// token has expired (written through moto directly, before any fault is armed).
struct Rig {
    setup: StormSetup,
    proxy: FaultProxy,
    // Dropped last: the proxy and the setup point at it.
    _moto: MotoServer,
}

impl Rig {
    async fn new() -> Rig {
        let moto = MotoServer::start().await;
        let proxy = FaultProxy::start(&moto.endpoint).await;
        // RevokeFamily: a refresh token spent twice would revoke the grant and show up as failures.
        let setup = StormSetup::new(
            StoreSpec::SecretsManager {
                endpoint: moto.endpoint.clone(),
            },
            ReusePolicy::RevokeFamily,
            true,
        )
        .await;
        Rig {
            setup,
            proxy,
            _moto: moto,
        }
    }

    /// A token source whose store goes through the proxy.
    fn proxied_source(&self) -> TokenSource {
        self.setup
            .args
            .token_source(Arc::new(SecretsManagerStore::new(self.proxy.sm_client())))
    }

    /// The version labelled current, read from moto directly.
    async fn current_version_id(&self) -> String {
        self.setup
            .store
            .open()
            .read_current(&self.setup.secret_id)
            .await
            .expect("read")
            .expect("current")
            .version_id
    }

    /// One rotation through the proxy; checks everything that must hold whatever the faults.
    async fn rotate_and_check(&self) -> TokenState {
        let before = self.setup.stored().await;
        let credential = self
            .proxied_source()
            .credential()
            .await
            .expect("the rotation completes despite the faults");
        let Credential::AccessToken { token, generation } = credential else {
            panic!("an OAuth access token")
        };

        let stats = self.setup.sandbox.stats();
        assert_eq!(stats.refreshes_served, 1, "exactly one refresh reached Keap");
        assert_eq!(
            stats.refresh_failures_total(),
            0,
            "no refresh token spent twice: {:?}",
            stats.refresh_failures
        );

        let stored = self.setup.stored().await;
        assert_eq!(stored.generation, before.generation + 1);
        assert_eq!(generation, stored.generation);
        assert!(stored.lease.is_none(), "the commit cleared the lease");
        assert!(
            !stored.same_refresh_token(before.refresh_token.as_ref().unwrap()),
            "moto holds the new refresh token"
        );
        assert!(
            stored.same_access_token(&token),
            "the caller got the stored access token"
        );
        let new_versions = self.setup.new_versions().await;
        assert!(
            (2..=3).contains(&new_versions),
            "a lease and a commit, no stray versions: {new_versions}"
        );
        stored
    }
}

fn faulted_on(faulted: &[FaultedRequest], target: &str) -> Vec<FaultedRequest> {
    faulted.iter().filter(|f| f.target == target).cloned().collect()
}

/// The state a faulted PutSecretValue tried to write.
fn put_state(request: &FaultedRequest) -> TokenState {
    TokenState::from_json(request.body["SecretString"].as_str().expect("SecretString")).expect("a token state")
}

/// The commit's put is throttled (400 ThrottlingException), then its swap answers 500 without
/// taking effect: both are retried, the rotation completes with one Keap refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_commit_put_and_failed_commit_swap_still_rotate_once() {
    let rig = Rig::new().await;
    // The first put and swap take the lease; the second ones are the commit.
    rig.proxy.fail_after(PUT_SECRET_VALUE, 1, &[Fault::Throttle]);
    rig.proxy
        .fail_after(UPDATE_SECRET_VERSION_STAGE, 1, &[Fault::ServerError]);

    let stored = rig.rotate_and_check().await;

    let faulted = rig.proxy.faulted();
    assert_eq!(faulted.len(), 2, "{faulted:?}");
    let puts = faulted_on(&faulted, PUT_SECRET_VALUE);
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].fault, Fault::Throttle);
    let throttled = put_state(&puts[0]);
    assert!(
        throttled.lease.is_none() && throttled.generation == stored.generation,
        "the throttled put was the commit"
    );
    assert!(
        throttled.same_refresh_token(stored.refresh_token.as_ref().unwrap()),
        "the commit carried the new pair"
    );
    let current = rig.current_version_id().await;
    assert_eq!(
        puts[0].body["ClientRequestToken"].as_str(),
        Some(current.as_str()),
        "retried with the same version id"
    );
    let swaps = faulted_on(&faulted, UPDATE_SECRET_VERSION_STAGE);
    assert_eq!(swaps.len(), 1);
    assert_eq!(
        swaps[0].body["MoveToVersionId"].as_str(),
        Some(current.as_str()),
        "the failed swap was the commit's"
    );
    assert!(
        rig.proxy.count(PUT_SECRET_VALUE) >= 3,
        "lease, throttled commit, retried commit"
    );
    assert!(
        rig.proxy.count(UPDATE_SECRET_VERSION_STAGE) >= 3,
        "lease, failed commit swap, retried swap"
    );
}

/// The commit's put reaches moto but its answer is a 500: the retry with the same version id
/// is an idempotent success, no version is added, nothing issued is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_put_applied_but_answer_lost_is_retried_idempotently() {
    let rig = Rig::new().await;
    rig.proxy
        .fail_after(PUT_SECRET_VALUE, 1, &[Fault::ServerErrorAfterApply]);

    let stored = rig.rotate_and_check().await;

    let faulted = rig.proxy.faulted();
    assert_eq!(faulted.len(), 1, "{faulted:?}");
    let lost = &faulted[0];
    assert_eq!(
        (lost.target.as_str(), lost.fault),
        (PUT_SECRET_VALUE, Fault::ServerErrorAfterApply)
    );
    let applied = put_state(lost);
    assert!(applied.lease.is_none() && applied.same_refresh_token(stored.refresh_token.as_ref().unwrap()));
    let current = rig.current_version_id().await;
    assert_eq!(
        lost.body["ClientRequestToken"].as_str(),
        Some(current.as_str()),
        "the applied version became current"
    );
    assert!(
        rig.proxy.count(PUT_SECRET_VALUE) >= 3,
        "lease, applied-but-lost commit, idempotent retry"
    );
    assert_eq!(
        rig.setup.new_versions().await,
        2,
        "the retry reused the version id: only a lease and a commit"
    );
}

/// Adapter level: a throttled or 5xx GetSecretValue is `StoreError::Transient`, reached the
/// adapter exactly once (no SDK retry), and its message carries no secret value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_are_transient_and_leak_no_secret() {
    let moto = MotoServer::start().await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let secret_id = format!("sm-faults-{}", uuid::Uuid::new_v4());
    let value = format!("{{\"refresh_token\":\"do-not-print-{}\"}}", uuid::Uuid::new_v4());
    sm_client(&moto.endpoint)
        .create_secret()
        .name(&secret_id)
        .secret_string(&value)
        .send()
        .await
        .expect("create secret");
    let store = SecretsManagerStore::new(proxy.sm_client());

    for (fault, code) in [
        (Fault::Throttle, "ThrottlingException"),
        (Fault::ServerError, "InternalServiceError"),
    ] {
        proxy.fail_always(GET_SECRET_VALUE, fault);
        let seen = proxy.count(GET_SECRET_VALUE);
        let error = store
            .read_current(&secret_id)
            .await
            .expect_err("the proxy fails every read");
        assert_eq!(
            proxy.count(GET_SECRET_VALUE),
            seen + 1,
            "{fault:?}: the SDK did not retry"
        );
        assert!(error.is_transient(), "{fault:?}: {error}");
        assert!(
            matches!(
                &error,
                StoreError::Transient {
                    operation: "read_current",
                    ..
                }
            ),
            "{error:?}"
        );
        let (display, debug) = (error.to_string(), format!("{error:?}"));
        assert!(display.contains(code), "{fault:?}: the code is named: {display}");
        assert!(
            !display.contains("do-not-print") && !debug.contains("do-not-print"),
            "{fault:?}: {debug}"
        );
    }

    proxy.clear();
    let current = store
        .read_current(&secret_id)
        .await
        .expect("read through the proxy")
        .expect("current");
    assert_eq!(
        current.value.expose_secret(),
        SecretString::from(value).expose_secret(),
        "the proxy forwards faithfully"
    );
}
