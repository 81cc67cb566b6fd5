//! A decorator that counts calls per operation, so tests and benches can assert how often
//! the store is touched (invariants 3 and 4 of `docs/token-rotation.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use secrecy::SecretString;
use serde::Serialize;

use super::{PutOutcome, SecretStore, StoreError, StoreOp, StoredVersion, SwapOutcome};

/// Calls made so far, by operation; `created` counts puts that created a version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    pub read_current: u64,
    pub read_version: u64,
    pub put: u64,
    pub swap: u64,
    pub created: u64,
}

impl StoreCounts {
    pub fn total(&self) -> u64 {
        self.read_current + self.read_version + self.put + self.swap
    }

    pub fn writes(&self) -> u64 {
        self.put + self.swap
    }
}

#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn SecretStore>,
    calls: [AtomicU64; 4],
    created: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn SecretStore>) -> Self {
        Self {
            inner,
            calls: Default::default(),
            created: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> StoreCounts {
        let get = |op: StoreOp| self.calls[op as usize].load(Ordering::Relaxed);
        StoreCounts {
            read_current: get(StoreOp::ReadCurrent),
            read_version: get(StoreOp::ReadVersion),
            put: get(StoreOp::Put),
            swap: get(StoreOp::Swap),
            created: self.created.load(Ordering::Relaxed),
        }
    }

    pub fn reset(&self) {
        for counter in &self.calls {
            counter.store(0, Ordering::Relaxed);
        }
        self.created.store(0, Ordering::Relaxed);
    }

    fn count(&self, op: StoreOp) {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl SecretStore for CountingStore {
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.count(StoreOp::ReadCurrent);
        self.inner.read_current(secret_id).await
    }

    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.count(StoreOp::ReadVersion);
        self.inner.read_version(secret_id, version_id).await
    }

    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError> {
        self.count(StoreOp::Put);
        let outcome = self.inner.put_version(secret_id, version_id, value).await;
        if matches!(outcome, Ok(PutOutcome::Created)) {
            self.created.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        self.count(StoreOp::Swap);
        self.inner.swap_current(secret_id, from, to).await
    }
}
