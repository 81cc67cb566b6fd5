//! A versioned secret store with one compare-and-swap: the move of the `current` label.
//!
//! The semantics are those of AWS Secrets Manager (see `docs/secrets-manager.md`),
//! where moto differs, AWS wins:
//! - a version's value never changes; putting an existing version id with the same value is
//!   an idempotent success, with a different value a [`PutOutcome::Conflict`];
//! - a put never moves `current`;
//! - [`SecretStore::swap_current`] moves `current` from an expected version to another and
//!   fails with [`SwapOutcome::Stale`] when `current` is elsewhere.
//!
//! Adapters: [`memory`] (tests), [`file`] (local default), [`secrets_manager`] (production),
//! and [`counting`], a decorator that counts calls per operation.

pub mod counting;
pub mod file;
pub mod memory;
pub mod secrets_manager;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{AppSecret, ConfigError};

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

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Throttling, 5xx, timeouts: worth retrying with the same version id.
    #[error("store temporarily unavailable during {operation}: {detail}")]
    Transient { operation: &'static str, detail: String },
    #[error("store refused {operation}: {detail}")]
    Permanent { operation: &'static str, detail: String },
    /// Secrets Manager's version quota (`LimitExceededException`): no write succeeds until
    /// versions age out (up to 24 h). Not retried within a call; see `docs/token-rotation.md`.
    #[error("store refused {operation}: the secret's version quota is exhausted ({detail})")]
    QuotaExceeded { operation: &'static str, detail: String },
    #[error("secret {secret_id} does not exist")]
    NotFound { secret_id: String },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }

    /// Secrets Manager's version quota: no write of the secret succeeds for up to 24 h.
    pub fn is_quota_exceeded(&self) -> bool {
        matches!(self, StoreError::QuotaExceeded { .. })
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
    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError>;

    /// Moves `current` from `from` to `to` (compare-and-swap).
    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError>;
}

/// The four store operations, for fault hooks and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreOp {
    ReadCurrent,
    ReadVersion,
    Put,
    Swap,
}

impl StoreOp {
    pub const ALL: [StoreOp; 4] = [StoreOp::ReadCurrent, StoreOp::ReadVersion, StoreOp::Put, StoreOp::Swap];

    pub fn name(self) -> &'static str {
        match self {
            StoreOp::ReadCurrent => "read_current",
            StoreOp::ReadVersion => "read_version",
            StoreOp::Put => "put_version",
            StoreOp::Swap => "swap_current",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppSecretError {
    #[error(
        "the app secret {secret_id} does not exist or has no value; create it with the fields client_id, client_secret (oauth mode) or api_key (api-key mode)"
    )]
    Missing { secret_id: String },
    #[error("the app secret {secret_id} is not valid: {reason}")]
    Invalid { secret_id: String, reason: String },
    #[error("could not read the app secret {secret_id}: {source}")]
    Store { secret_id: String, source: StoreError },
}

/// Reads the operator-written app secret (`KEAP_APP_SECRET_ID`). Field presence per mode is
/// checked by whoever needs the field (the connection built in [`crate::app`]).
pub async fn load_app_secret(store: &dyn SecretStore, secret_id: &str) -> Result<AppSecret, AppSecretError> {
    let current = match store.read_current(secret_id).await {
        Ok(current) => current,
        Err(StoreError::NotFound { .. }) => None,
        Err(source) => {
            return Err(AppSecretError::Store {
                secret_id: secret_id.into(),
                source,
            });
        }
    };
    let Some(version) = current else {
        return Err(AppSecretError::Missing {
            secret_id: secret_id.into(),
        });
    };
    AppSecret::from_json(version.value.expose_secret()).map_err(|error| AppSecretError::Invalid {
        secret_id: secret_id.into(),
        reason: match error {
            ConfigError::AppSecret(reason) => reason,
            other => other.to_string(),
        },
    })
}
