//! Whether the receiver may be called: a receiver that answered 410 is switched off until the
//! operator switches it on again in the console. The switch is a small JSON document in the
//! secret store (`EVENTS_STATE_SECRET_ID`), the store the functions already use; no database.

use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::store::{PutOutcome, SecretStore, StoreError, SwapOutcome};

/// The stored switch. `{}` (or nothing stored) is "enabled".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverState {
    #[serde(default)]
    pub disabled: bool,
    /// Why (the 410) and when it was switched off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub disabled_at: Option<SystemTime>,
    /// Who switched it on last, and when (the console's Basic-auth user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub enabled_at: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverStateError {
    #[error("the events state store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the events state secret is not valid JSON: {0}")]
    Malformed(String),
    #[error("the events state changed while it was written; try again")]
    Conflict,
}

/// Reads the switch; nothing stored is "enabled".
pub async fn load(store: &dyn SecretStore, secret_id: &str) -> Result<ReceiverState, ReceiverStateError> {
    match store.read_current(secret_id).await? {
        None => Ok(ReceiverState::default()),
        Some(version) if version.value.expose_secret().trim().is_empty() => Ok(ReceiverState::default()),
        Some(version) => serde_json::from_str(version.value.expose_secret())
            .map_err(|e| ReceiverStateError::Malformed(format!("line {}, column {}", e.line(), e.column()))),
    }
}

/// Switches the receiver off after its 410.
pub async fn disable(
    store: &dyn SecretStore,
    secret_id: &str,
    reason: &str,
    now: SystemTime,
) -> Result<ReceiverState, ReceiverStateError> {
    update(store, secret_id, |state| ReceiverState {
        disabled: true,
        disabled_reason: Some(reason.to_owned()),
        disabled_at: Some(now),
        ..state
    })
    .await
}

/// Switches the receiver on again (the console), recording who did it.
pub async fn enable(
    store: &dyn SecretStore,
    secret_id: &str,
    who: &str,
    now: SystemTime,
) -> Result<ReceiverState, ReceiverStateError> {
    update(store, secret_id, |state| ReceiverState {
        disabled: false,
        enabled_by: Some(who.to_owned()),
        enabled_at: Some(now),
        ..state
    })
    .await
}

/// Read, change, write a new version and move `current` to it (compare-and-swap: a concurrent
/// writer makes this one fail with [`ReceiverStateError::Conflict`] rather than be lost).
async fn update(
    store: &dyn SecretStore,
    secret_id: &str,
    change: impl FnOnce(ReceiverState) -> ReceiverState,
) -> Result<ReceiverState, ReceiverStateError> {
    let current = store.read_current(secret_id).await?;
    let state = match &current {
        Some(version) if !version.value.expose_secret().trim().is_empty() => {
            serde_json::from_str(version.value.expose_secret()).unwrap_or_default()
        }
        _ => ReceiverState::default(),
    };
    let next = change(state);
    let value = SecretString::from(serde_json::to_string(&next).expect("the state always serializes"));
    let version_id = uuid::Uuid::new_v4().to_string();
    match store.put_version(secret_id, &version_id, &value).await? {
        PutOutcome::Created | PutOutcome::AlreadyExists => {}
        PutOutcome::Conflict => return Err(ReceiverStateError::Conflict),
    }
    if let Some(previous) = current {
        match store.swap_current(secret_id, &previous.version_id, &version_id).await? {
            SwapOutcome::Swapped => {}
            SwapOutcome::Stale => return Err(ReceiverStateError::Conflict),
        }
    }
    Ok(next)
}

mod opt_rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(time) => serializer.collect_str(&humantime::format_rfc3339_seconds(*time)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SystemTime>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| humantime::parse_rfc3339_weak(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn nothing_stored_is_enabled_and_the_switch_round_trips() {
        let store = MemoryStore::new();
        assert!(!load(&store, "events").await.unwrap().disabled);
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        disable(&store, "events", "the receiver answered 410", now)
            .await
            .unwrap();
        let state = load(&store, "events").await.unwrap();
        assert!(state.disabled);
        assert_eq!(state.disabled_reason.as_deref(), Some("the receiver answered 410"));
        assert_eq!(state.disabled_at, Some(now));
        enable(&store, "events", "admin", now).await.unwrap();
        let state = load(&store, "events").await.unwrap();
        assert!(!state.disabled);
        assert_eq!(state.enabled_by.as_deref(), Some("admin"));
    }
}
