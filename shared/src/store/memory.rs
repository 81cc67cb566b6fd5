//! An in-memory [`SecretStore`] for tests, following AWS semantics (not moto's), with fault
//! hooks: make the next calls of an operation fail with a transient error, either before the
//! operation takes effect or after (the answer is lost, as with a timeout).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::{PutOutcome, SecretStore, StoreError, StoreOp, StoredVersion, SwapOutcome};

/// When an injected fault strikes, relative to the operation's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The call fails and changes nothing (throttling, a 5xx before the write).
    BeforeApply,
    /// The call takes effect but its caller sees a transient error (a lost answer).
    AfterApply,
}

#[derive(Debug, Default)]
struct Secret {
    /// Values by version id, and the order of creation (for inspection by tests).
    values: HashMap<String, String>,
    created: Vec<String>,
    /// When each version was created (for the version quota).
    created_at: Vec<SystemTime>,
    current: Option<String>,
}

/// Secrets Manager's version quota: puts are refused while `limit` or more versions younger
/// than `window` exist (see `docs/token-rotation.md`, invariant 10).
#[derive(Debug, Clone)]
pub struct VersionQuota {
    pub clock: Arc<dyn crate::token::Clock>,
    pub limit: usize,
    pub window: Duration,
}

impl VersionQuota {
    /// AWS's numbers: about 100 versions younger than 24 h.
    pub fn aws(clock: Arc<dyn crate::token::Clock>) -> Self {
        Self {
            clock,
            limit: 100,
            window: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    secrets: BTreeMap<String, Secret>,
    faults: HashMap<StoreOp, Vec<FaultPoint>>,
    quota: Option<VersionQuota>,
    quota_refusals: u64,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that refuses puts as Secrets Manager does once its version quota is reached.
    pub fn with_quota(quota: VersionQuota) -> Self {
        let store = Self::default();
        store.lock().quota = Some(quota);
        store
    }

    /// Puts refused by the version quota so far.
    pub fn quota_refusals(&self) -> u64 {
        self.lock().quota_refusals
    }

    /// Versions of a secret created at or after `since` (by the quota's clock).
    pub fn versions_since(&self, secret_id: &str, since: SystemTime) -> usize {
        self.lock()
            .secrets
            .get(secret_id)
            .map_or(0, |s| s.created_at.iter().filter(|at| **at >= since).count())
    }

    /// The next `times` calls of `op` (on any secret) fail with [`StoreError::Transient`].
    pub fn fail_next(&self, op: StoreOp, times: usize, point: FaultPoint) {
        let mut inner = self.lock();
        inner
            .faults
            .entry(op)
            .or_default()
            .extend(std::iter::repeat_n(point, times));
    }

    /// Version ids of a secret in the order they were created.
    pub fn versions(&self, secret_id: &str) -> Vec<String> {
        self.lock()
            .secrets
            .get(secret_id)
            .map(|s| s.created.clone())
            .unwrap_or_default()
    }

    pub fn current_version_id(&self, secret_id: &str) -> Option<String> {
        self.lock().secrets.get(secret_id).and_then(|s| s.current.clone())
    }

    /// The current version, read without fault hooks (for test assertions).
    pub fn peek_current(&self, secret_id: &str) -> Option<StoredVersion> {
        let inner = self.lock();
        let secret = inner.secrets.get(secret_id)?;
        let id = secret.current.as_ref()?;
        Some(version(id, &secret.values[id]))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (each operation
        // mutates in one step), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `apply` under the lock with the fault hooks of `op` honoured.
    fn with_faults<T>(
        &self,
        op: StoreOp,
        apply: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self.lock();
        let fault = inner
            .faults
            .get_mut(&op)
            .and_then(|queue| (!queue.is_empty()).then(|| queue.remove(0)));
        let transient = |point: &str| StoreError::Transient {
            operation: op.name(),
            detail: format!("injected fault ({point})"),
        };
        match fault {
            Some(FaultPoint::BeforeApply) => Err(transient("before apply")),
            Some(FaultPoint::AfterApply) => {
                apply(&mut inner)?;
                Err(transient("after apply"))
            }
            None => apply(&mut inner),
        }
    }
}

fn version(version_id: &str, value: &str) -> StoredVersion {
    StoredVersion {
        version_id: version_id.to_owned(),
        value: SecretString::from(value.to_owned()),
    }
}

#[async_trait]
impl SecretStore for MemoryStore {
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.with_faults(StoreOp::ReadCurrent, |inner| {
            Ok(inner.secrets.get(secret_id).and_then(|secret| {
                let id = secret.current.as_ref()?;
                Some(version(id, &secret.values[id]))
            }))
        })
    }

    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.with_faults(StoreOp::ReadVersion, |inner| {
            Ok(inner
                .secrets
                .get(secret_id)
                .and_then(|secret| secret.values.get(version_id))
                .map(|value| version(version_id, value)))
        })
    }

    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError> {
        self.with_faults(StoreOp::Put, |inner| {
            let now = inner
                .quota
                .as_ref()
                .map_or_else(SystemTime::now, |quota| quota.clock.now());
            let quota = inner.quota.clone();
            let secret = inner.secrets.entry(secret_id.to_owned()).or_default();
            if let Some(existing) = secret.values.get(version_id) {
                return Ok(if existing == value.expose_secret() {
                    PutOutcome::AlreadyExists
                } else {
                    PutOutcome::Conflict
                });
            }
            if let Some(quota) = quota {
                let young = secret
                    .created_at
                    .iter()
                    .filter(|at| now.duration_since(**at).unwrap_or_default() < quota.window)
                    .count();
                if young >= quota.limit {
                    inner.quota_refusals += 1;
                    return Err(StoreError::QuotaExceeded {
                        operation: StoreOp::Put.name(),
                        detail: format!(
                            "LimitExceededException: {young} versions younger than {:?}",
                            quota.window
                        ),
                    });
                }
            }
            secret
                .values
                .insert(version_id.to_owned(), value.expose_secret().to_owned());
            secret.created.push(version_id.to_owned());
            secret.created_at.push(now);
            if secret.current.is_none() {
                secret.current = Some(version_id.to_owned());
            }
            Ok(PutOutcome::Created)
        })
    }

    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        self.with_faults(StoreOp::Swap, |inner| {
            let secret = inner.secrets.get_mut(secret_id).ok_or_else(|| StoreError::NotFound {
                secret_id: secret_id.to_owned(),
            })?;
            if !secret.values.contains_key(to) {
                return Err(StoreError::Permanent {
                    operation: "swap_current",
                    detail: format!("version {to} does not exist"),
                });
            }
            if secret.current.as_deref() != Some(from) {
                return Ok(SwapOutcome::Stale);
            }
            secret.current = Some(to.to_owned());
            Ok(SwapOutcome::Swapped)
        })
    }
}
