//! The `SecretStore` contract (AWS semantics, `test_support::store_contract`), checked on the
//! memory, file and Secrets Manager adapters alike (the last on moto), and what only the file
//! and memory stores promise besides.

use std::sync::Arc;

use keap_relay::SecretString;
use keap_relay::store::file::FileStore;
use keap_relay::store::memory::{FaultPoint, MemoryStore};
use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_relay::store::{PutOutcome, SecretStore, StoreError, StoreOp, SwapOutcome, load_app_secret};
use test_support::moto::{MotoServer, sm_client};
use test_support::store_contract::{self, SECRET_ID as ID};
use test_support::temp::TempDir;

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_contract() {
    store_contract::check(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_keeps_the_contract() {
    let dir = TempDir::new("store-contract");
    store_contract::check(Arc::new(FileStore::new(dir.path()))).await;
    let ids = FileStore::new(dir.path()).version_ids(ID).unwrap();
    assert_eq!(ids.len(), 3, "only created versions exist, no temporary files: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_manager_store_keeps_the_contract_on_moto() {
    let moto = MotoServer::start().await;
    store_contract::check(Arc::new(SecretsManagerStore::new(sm_client(&moto.endpoint)))).await;
}

/// Unlike Secrets Manager, the memory and file stores tell an idempotent retry from a first put.
#[tokio::test]
async fn memory_and_file_stores_report_a_retried_put_as_already_there() {
    let dir = TempDir::new("store-retry");
    let stores: [Arc<dyn SecretStore>; 2] = [Arc::new(MemoryStore::new()), Arc::new(FileStore::new(dir.path()))];
    for store in stores {
        assert_eq!(
            store.put_version(ID, "v-1", &secret("one")).await.unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            store.put_version(ID, "v-1", &secret("one")).await.unwrap(),
            PutOutcome::AlreadyExists
        );
        assert_eq!(
            store.put_version(ID, "v-1", &secret("other")).await.unwrap(),
            PutOutcome::Conflict
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_stores_of_separate_instances_share_one_lock() {
    let dir = TempDir::new("store-lock");
    let first = FileStore::new(dir.path());
    first.put_version(ID, "base", &secret("base")).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..16 {
        let store = FileStore::new(dir.path()); // as another process would
        tasks.push(tokio::spawn(async move {
            let child = format!("child-{}", n % 2);
            let put = store
                .put_version(ID, &child, &secret(&format!("value {n}")))
                .await
                .unwrap();
            let swap = store.swap_current(ID, "base", &child).await.unwrap();
            (put, swap)
        }));
    }
    let mut created = 0;
    let mut swapped = 0;
    for task in tasks {
        let (put, swap) = task.await.unwrap();
        created += usize::from(put == PutOutcome::Created);
        swapped += usize::from(swap == SwapOutcome::Swapped);
    }
    assert_eq!((created, swapped), (2, 1));
}

#[tokio::test]
async fn file_store_refuses_version_ids_that_are_not_file_names() {
    let dir = TempDir::new("store-names");
    let store = FileStore::new(dir.path());
    for bad in ["../escape", "a/b", "", "."] {
        assert!(
            matches!(
                store.put_version(ID, bad, &secret("x")).await,
                Err(StoreError::Permanent { .. })
            ),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn memory_store_faults_strike_before_or_after_the_effect() {
    let store = MemoryStore::new();
    store.fail_next(StoreOp::Put, 1, FaultPoint::BeforeApply);
    store.fail_next(StoreOp::Put, 1, FaultPoint::AfterApply);
    assert!(
        store
            .put_version(ID, "v-1", &secret("one"))
            .await
            .unwrap_err()
            .is_transient()
    );
    assert!(store.versions(ID).is_empty());
    assert!(
        store
            .put_version(ID, "v-1", &secret("one"))
            .await
            .unwrap_err()
            .is_transient()
    );
    assert_eq!(
        store.versions(ID),
        vec!["v-1".to_owned()],
        "applied although the caller saw an error"
    );
    assert_eq!(
        store.put_version(ID, "v-1", &secret("one")).await.unwrap(),
        PutOutcome::AlreadyExists
    );
}

#[tokio::test]
async fn the_app_secret_loader_names_what_is_missing_without_quoting_values() {
    let store = MemoryStore::new();
    let missing = load_app_secret(&store, "app").await.unwrap_err().to_string();
    assert!(missing.contains("app") && missing.contains("client_id"), "{missing}");
    store
        .put_version(
            "app",
            "v-1",
            &secret(r#"{"client_id": 5, "client_secret": "top-secret"}"#),
        )
        .await
        .unwrap();
    let invalid = load_app_secret(&store, "app").await.unwrap_err().to_string();
    assert!(
        !invalid.contains("top-secret") && invalid.contains("not valid"),
        "{invalid}"
    );
    let store = MemoryStore::new();
    store
        .put_version(
            "app",
            "v-1",
            &secret(r#"{"client_id": "cid", "client_secret": "top-secret"}"#),
        )
        .await
        .unwrap();
    let app = load_app_secret(&store, "app").await.unwrap();
    assert_eq!(app.client_id.as_deref(), Some("cid"));
}
