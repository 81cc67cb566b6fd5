//! The `SecretStore` contract (AWS Secrets Manager's semantics), written once and run against
//! every adapter by `shared/tests/store_contract.rs`: memory, file, and Secrets Manager on moto.

use std::sync::Arc;

use keap_relay::store::{PutOutcome, SecretStore, StoreError, SwapOutcome};
use keap_relay::{ExposeSecret, SecretString};

/// The secret the contract writes; the store must not hold it yet.
pub const SECRET_ID: &str = "keap-relay/token";

// Version ids as the token protocol makes them (UUIDs): Secrets Manager takes 32 to 64
// characters as a version id.
const V1: &str = "00000000-0000-4000-8000-000000000001";
const V2: &str = "00000000-0000-4000-8000-000000000002";
const V3: &str = "00000000-0000-4000-8000-000000000003";
const UNKNOWN: &str = "00000000-0000-4000-8000-0000000000ff";

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

/// Checks the contract on `store`, which must not hold [`SECRET_ID`] yet. Leaves three versions
/// of it, the last current. Spawns tasks: run it on a multi-threaded
/// runtime, so the contenders really race.
pub async fn check(store: Arc<dyn SecretStore>) {
    const ID: &str = SECRET_ID;
    assert!(store.read_current(ID).await.unwrap().is_none(), "no secret yet");
    assert!(store.read_version(ID, V1).await.unwrap().is_none());

    // The first write becomes current.
    assert_eq!(
        store.put_version(ID, V1, &secret("one")).await.unwrap(),
        PutOutcome::Created
    );
    let current = store.read_current(ID).await.unwrap().unwrap();
    assert_eq!(
        (current.version_id.as_str(), current.value.expose_secret()),
        (V1, "one")
    );

    // A put never moves current; same value is idempotent, another value conflicts. (Secrets
    // Manager does not tell an idempotent retry from the first put: both may say Created.)
    assert_eq!(
        store.put_version(ID, V2, &secret("two")).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(store.read_current(ID).await.unwrap().unwrap().version_id, V1);
    let retried = store.put_version(ID, V2, &secret("two")).await.unwrap();
    assert!(
        matches!(retried, PutOutcome::AlreadyExists | PutOutcome::Created),
        "a retried put: {retried:?}"
    );
    assert_eq!(
        store.put_version(ID, V2, &secret("other")).await.unwrap(),
        PutOutcome::Conflict
    );
    assert_eq!(
        store.read_version(ID, V2).await.unwrap().unwrap().value.expose_secret(),
        "two"
    );

    // Compare-and-swap of current.
    assert_eq!(store.swap_current(ID, V2, V1).await.unwrap(), SwapOutcome::Stale);
    assert_eq!(store.swap_current(ID, V1, V2).await.unwrap(), SwapOutcome::Swapped);
    assert_eq!(
        store.swap_current(ID, V1, V2).await.unwrap(),
        SwapOutcome::Stale,
        "a retried swap looks stale"
    );
    assert_eq!(
        store.read_current(ID).await.unwrap().unwrap().value.expose_secret(),
        "two"
    );
    assert!(matches!(
        store.swap_current("no-such-secret", V1, UNKNOWN).await,
        Err(StoreError::NotFound { .. })
    ));

    // Many contenders aiming at one child: one creates it, one swap wins.
    let mut puts = Vec::new();
    for n in 0..12 {
        let store = store.clone();
        puts.push(tokio::spawn(async move {
            store
                .put_version(ID, V3, &secret(&format!("contender {n}")))
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for put in puts {
        match put.await.unwrap() {
            PutOutcome::Created => created += 1,
            PutOutcome::Conflict => {}
            PutOutcome::AlreadyExists => panic!("values differ"),
        }
    }
    assert_eq!(created, 1);
    let mut swaps = Vec::new();
    for _ in 0..12 {
        let store = store.clone();
        swaps.push(tokio::spawn(
            async move { store.swap_current(ID, V2, V3).await.unwrap() },
        ));
    }
    let mut swapped = 0;
    for swap in swaps {
        swapped += usize::from(swap.await.unwrap() == SwapOutcome::Swapped);
    }
    assert_eq!(swapped, 1);
}
