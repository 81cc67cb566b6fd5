//! The `SecretStore` contract (AWS semantics), checked on the memory and file adapters alike.

use std::sync::Arc;

use keap_relay::store::file::FileStore;
use keap_relay::store::memory::{FaultPoint, MemoryStore};
use keap_relay::store::{PutOutcome, SecretStore, StoreError, StoreOp, SwapOutcome, load_app_secret};
use keap_relay::{ExposeSecret, SecretString};

const ID: &str = "keap-relay/token";

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keap-relay-store-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn contract(store: Arc<dyn SecretStore>) {
    assert!(store.read_current(ID).await.unwrap().is_none(), "no secret yet");
    assert!(store.read_version(ID, "v-1").await.unwrap().is_none());

    // The first write becomes current.
    assert_eq!(store.put_version(ID, "v-1", &secret("one")).await.unwrap(), PutOutcome::Created);
    let current = store.read_current(ID).await.unwrap().unwrap();
    assert_eq!((current.version_id.as_str(), current.value.expose_secret()), ("v-1", "one"));

    // A put never moves current; same value is idempotent, another value conflicts.
    assert_eq!(store.put_version(ID, "v-2", &secret("two")).await.unwrap(), PutOutcome::Created);
    assert_eq!(store.read_current(ID).await.unwrap().unwrap().version_id, "v-1");
    assert_eq!(store.put_version(ID, "v-2", &secret("two")).await.unwrap(), PutOutcome::AlreadyExists);
    assert_eq!(store.put_version(ID, "v-2", &secret("other")).await.unwrap(), PutOutcome::Conflict);
    assert_eq!(store.read_version(ID, "v-2").await.unwrap().unwrap().value.expose_secret(), "two");

    // Compare-and-swap of current.
    assert_eq!(store.swap_current(ID, "v-2", "v-1").await.unwrap(), SwapOutcome::Stale);
    assert_eq!(store.swap_current(ID, "v-1", "v-2").await.unwrap(), SwapOutcome::Swapped);
    assert_eq!(store.swap_current(ID, "v-1", "v-2").await.unwrap(), SwapOutcome::Stale, "a retried swap looks stale");
    assert_eq!(store.read_current(ID).await.unwrap().unwrap().value.expose_secret(), "two");
    assert!(matches!(store.swap_current("no-such-secret", "a", "b").await, Err(StoreError::NotFound { .. })));

    // Many contenders aiming at one child: one creates it, one swap wins.
    let mut puts = Vec::new();
    for n in 0..12 {
        let store = store.clone();
        puts.push(tokio::spawn(async move { store.put_version(ID, "v-3", &secret(&format!("contender {n}"))).await.unwrap() }));
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
        swaps.push(tokio::spawn(async move { store.swap_current(ID, "v-2", "v-3").await.unwrap() }));
    }
    let mut swapped = 0;
    for swap in swaps {
        swapped += usize::from(swap.await.unwrap() == SwapOutcome::Swapped);
    }
    assert_eq!(swapped, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_keeps_the_contract() {
    let dir = temp_dir();
    contract(Arc::new(FileStore::new(&dir))).await;
    let ids = FileStore::new(&dir).version_ids(ID).unwrap();
    assert_eq!(ids.len(), 3, "only created versions exist, no temporary files: {ids:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_stores_of_separate_instances_share_one_lock() {
    let dir = temp_dir();
    let first = FileStore::new(&dir);
    first.put_version(ID, "base", &secret("base")).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..16 {
        let store = FileStore::new(&dir); // as another process would
        tasks.push(tokio::spawn(async move {
            let child = format!("child-{}", n % 2);
            let put = store.put_version(ID, &child, &secret(&format!("value {n}"))).await.unwrap();
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
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn file_store_refuses_version_ids_that_are_not_file_names() {
    let dir = temp_dir();
    let store = FileStore::new(&dir);
    for bad in ["../escape", "a/b", "", "."] {
        assert!(matches!(store.put_version(ID, bad, &secret("x")).await, Err(StoreError::Permanent { .. })), "{bad:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn memory_store_faults_strike_before_or_after_the_effect() {
    let store = MemoryStore::new();
    store.fail_next(StoreOp::Put, 1, FaultPoint::BeforeApply);
    store.fail_next(StoreOp::Put, 1, FaultPoint::AfterApply);
    assert!(store.put_version(ID, "v-1", &secret("one")).await.unwrap_err().is_transient());
    assert!(store.versions(ID).is_empty());
    assert!(store.put_version(ID, "v-1", &secret("one")).await.unwrap_err().is_transient());
    assert_eq!(store.versions(ID), vec!["v-1".to_owned()], "applied although the caller saw an error");
    assert_eq!(store.put_version(ID, "v-1", &secret("one")).await.unwrap(), PutOutcome::AlreadyExists);
}

#[tokio::test]
async fn the_app_secret_loader_names_what_is_missing_without_quoting_values() {
    let store = MemoryStore::new();
    let missing = load_app_secret(&store, "app").await.unwrap_err().to_string();
    assert!(missing.contains("app") && missing.contains("client_id"), "{missing}");
    store.put_version("app", "v-1", &secret(r#"{"client_id": 5, "client_secret": "top-secret"}"#)).await.unwrap();
    let invalid = load_app_secret(&store, "app").await.unwrap_err().to_string();
    assert!(!invalid.contains("top-secret") && invalid.contains("not valid"), "{invalid}");
    let store = MemoryStore::new();
    store.put_version("app", "v-1", &secret(r#"{"client_id": "cid", "client_secret": "top-secret"}"#)).await.unwrap();
    let app = load_app_secret(&store, "app").await.unwrap();
    assert_eq!(app.client_id.as_deref(), Some("cid"));
}
