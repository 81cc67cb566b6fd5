//! A versioned secret store with one compare-and-swap: the move of the `current` label.
//!
//! The semantics are those of AWS Secrets Manager (see `../shared/reference/secrets-manager.md`),
//! where moto differs, AWS wins:
//! - a version's value never changes; putting an existing version id with the same value is
//!   an idempotent success, with a different value a [`PutOutcome::Conflict`];
//! - a put never moves `current`;
//! - [`SecretStore::swap_current`] moves `current` from an expected version to another and
//!   fails with [`SwapOutcome::Stale`] when `current` is elsewhere.
//!
//! Adapters: [`memory`] (tests), [`file`] (local default), [`secrets_manager`] (production).

use async_trait::async_trait;
use secrecy::SecretString;

/// One version of a secret.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub version_id: String,
    pub value: SecretString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The version did not exist and now does.
    Created,
    /// The version existed with this exact value (an idempotent retry, or another contender
    /// that computed the same child).
    AlreadyExists,
    /// The version exists with a different value.
    Conflict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapOutcome {
    Swapped,
    /// `current` was not on the expected version (someone else moved it first).
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Throttling, 5xx, timeouts: worth retrying with the same version id.
    #[error("store temporarily unavailable during {operation}: {detail}")]
    Transient { operation: &'static str, detail: String },
    #[error("store refused {operation}: {detail}")]
    Permanent { operation: &'static str, detail: String },
    #[error("secret {secret_id} does not exist")]
    NotFound { secret_id: String },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }
}

#[async_trait]
pub trait SecretStore: Send + Sync + std::fmt::Debug {
    /// The version labelled current, or `None` when the secret exists but has no value yet
    /// (or, for stores that create secrets on first write, does not exist).
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError>;

    /// A given version, labelled or not.
    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError>;

    /// Creates `version_id` with `value` without moving `current`. When the secret has no
    /// current version at all, the new version becomes current (the first write).
    async fn put_version(&self, secret_id: &str, version_id: &str, value: &SecretString) -> Result<PutOutcome, StoreError>;

    /// Moves `current` from `from` to `to` (compare-and-swap).
    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError>;
}
