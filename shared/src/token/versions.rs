//! Version ids and store calls of the rotation protocol: every call is bounded in time
//! (invariant 8 of `docs/token-rotation.md`), every write is a child version put under an id
//! derived from its parent and then swapped in, and transient errors are retried with the
//! same id and value, so a retry is idempotent.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use uuid::Uuid;

use super::TokenError;
use super::settings::TokenSettings;
use super::state::TokenState;
use crate::store::{PutOutcome, SecretStore, StoreError, StoredVersion, SwapOutcome};

/// Namespace of the name-based (v5) version ids.
const VERSION_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_6170_2d72_656c_6179_2d76_6572_7369);
/// The parent of the first version of a secret that does not exist yet.
pub(crate) const ROOT_PARENT: &str = "root";

/// The steps of the protocol; a child's id is `uuid_v5(parent id + "/" + step)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Lease,
    Commit,
    Release,
    Reauth,
    Connect,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Lease => "lease",
            Step::Commit => "commit",
            Step::Release => "release",
            Step::Reauth => "reauth",
            Step::Connect => "connect",
        }
    }
}

/// The version id every contender computes for `step` on top of `parent`.
pub fn child_version_id(parent: &str, step: Step) -> String {
    Uuid::new_v5(&VERSION_NAMESPACE, format!("{parent}/{}", step.as_str()).as_bytes()).to_string()
}

/// The current version as read, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub version_id: String,
    pub state: TokenState,
}

/// What an attempt to write a child version found.
pub(crate) enum ChildWrite {
    /// The child is current now.
    Current(String),
    /// `current` is elsewhere, or the child holds another value: re-read and decide again.
    Lost,
}

pub(crate) fn transient_to_unavailable(error: StoreError) -> TokenError {
    if error.is_transient() {
        TokenError::Unavailable {
            detail: error.to_string(),
            retry_after: None,
        }
    } else {
        TokenError::Store(error)
    }
}

/// Exponential backoff with jitter that differs per process.
pub(crate) fn jittered(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        // backon without `std` seeds every process alike; jitter must differ per process.
        .with_jitter_seed(Uuid::new_v4().as_u64_pair().0)
        .without_max_times()
        .build()
}

/// The token secret, as the protocol sees it.
#[derive(Debug, Clone)]
pub(crate) struct Versions {
    pub store: Arc<dyn SecretStore>,
    pub secret_id: String,
    pub settings: TokenSettings,
}

impl Versions {
    /// Runs one store call with the hard time bound; no answer in time is a transient error
    /// whose effect is unknown (the call may still land).
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.settings.store_call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Transient {
                operation,
                detail: format!("no answer within {:?}", self.settings.store_call_timeout),
            }),
        }
    }

    pub async fn read_current_raw(&self) -> Result<Option<StoredVersion>, StoreError> {
        self.bounded("read_current", self.store.read_current(&self.secret_id))
            .await
    }

    pub async fn read_version(&self, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.bounded("read_version", self.store.read_version(&self.secret_id, version_id))
            .await
    }

    pub async fn put(&self, version_id: &str, value: &SecretString) -> Result<PutOutcome, StoreError> {
        self.bounded(
            "put_version",
            self.store.put_version(&self.secret_id, version_id, value),
        )
        .await
    }

    pub async fn swap(&self, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        self.bounded("swap_current", self.store.swap_current(&self.secret_id, from, to))
            .await
    }

    /// Reads and parses the current version, retrying transient store errors a few times.
    pub async fn read(&self) -> Result<Option<Snapshot>, TokenError> {
        let mut delays = jittered(self.settings.poll_min, self.settings.poll_max);
        let mut attempt = 1;
        loop {
            match self.read_current_raw().await {
                Ok(None) | Err(StoreError::NotFound { .. }) => return Ok(None),
                Ok(Some(StoredVersion { version_id, value })) => {
                    let state = TokenState::from_json(value.expose_secret()).map_err(TokenError::Misconfigured)?;
                    return Ok(Some(Snapshot { version_id, state }));
                }
                Err(error) if error.is_transient() && attempt < self.settings.store_attempts => {
                    tracing::debug!(%error, attempt, "store read failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(delays.next().unwrap_or(self.settings.poll_max)).await;
                }
                Err(error) => return Err(transient_to_unavailable(error)),
            }
        }
    }

    /// Reads the current version; an absent secret or an empty state is [`TokenError::NotConnected`].
    pub async fn read_connected(&self) -> Result<Snapshot, TokenError> {
        self.read().await?.ok_or(TokenError::NotConnected)
    }

    /// A short write (lease, release, reauth, connect): `state` as the `step` child of `parent`,
    /// within [`Versions::short_deadline`].
    pub async fn write_state(&self, parent: &str, step: Step, state: &TokenState) -> Result<ChildWrite, TokenError> {
        self.write_child(parent, step, &state.to_secret(), self.short_deadline())
            .await
    }

    /// The deadline of a short write (lease, release, reauth, connect).
    pub fn short_deadline(&self) -> Instant {
        Instant::now()
            + (self.settings.poll_max + self.settings.store_call_timeout) * self.settings.store_attempts as u32
    }

    /// Puts `value` as `child_version_id(parent, step)` and swaps it in from `parent`, retrying
    /// transient errors with the same id and value; no attempt starts after `deadline`. When
    /// the time is up after the put, one read tells whether a swap whose answer was lost made
    /// the child current (so a process never orphans its own write).
    pub async fn write_child(
        &self,
        parent: &str,
        step: Step,
        value: &SecretString,
        deadline: Instant,
    ) -> Result<ChildWrite, TokenError> {
        let child = child_version_id(parent, step);
        let mut delays = jittered(self.settings.poll_min, self.settings.poll_max);
        let mut pause = |error: StoreError| {
            let delay = delays.next().unwrap_or(self.settings.poll_max);
            if error.is_transient() && Instant::now() + delay < deadline {
                tracing::debug!(%error, step = step.as_str(), "store write failed; retrying with the same version id");
                Ok(delay)
            } else {
                Err(error)
            }
        };
        loop {
            match self.put(&child, value).await {
                Ok(PutOutcome::Conflict) => return Ok(ChildWrite::Lost),
                Ok(PutOutcome::Created | PutOutcome::AlreadyExists) => break,
                Err(error) => tokio::time::sleep(pause(error).map_err(transient_to_unavailable)?).await,
            }
        }
        loop {
            match self.swap(parent, &child).await {
                Ok(SwapOutcome::Swapped) => return Ok(ChildWrite::Current(child)),
                // A swap whose answer was lost looks stale on retry: check where current is.
                Ok(SwapOutcome::Stale) => return self.is_current(&child).await,
                Err(error) => match pause(error) {
                    Ok(delay) => tokio::time::sleep(delay).await,
                    Err(error) => {
                        return match self.is_current(&child).await {
                            Ok(ChildWrite::Current(child)) => Ok(ChildWrite::Current(child)),
                            _ => Err(transient_to_unavailable(error)),
                        };
                    }
                },
            }
        }
    }

    async fn is_current(&self, child: &str) -> Result<ChildWrite, TokenError> {
        Ok(match self.read().await? {
            Some(current) if current.version_id == child => ChildWrite::Current(child.to_owned()),
            _ => ChildWrite::Lost,
        })
    }

    /// The first version of a secret that has none: the put itself makes it current.
    pub async fn write_first(&self, value: &SecretString) -> Result<ChildWrite, TokenError> {
        let child = child_version_id(ROOT_PARENT, Step::Connect);
        let mut delays = jittered(self.settings.poll_min, self.settings.poll_max);
        for attempt in 1..=self.settings.store_attempts {
            match self.put(&child, value).await {
                Ok(PutOutcome::Conflict) => return Ok(ChildWrite::Lost),
                Ok(_) => {
                    return Ok(match self.read_current_raw().await.map_err(transient_to_unavailable)? {
                        Some(current) if current.version_id == child => ChildWrite::Current(child),
                        _ => ChildWrite::Lost,
                    });
                }
                Err(error) if error.is_transient() && attempt < self.settings.store_attempts => {
                    tokio::time::sleep(delays.next().unwrap_or(self.settings.poll_max)).await;
                }
                Err(error) => return Err(transient_to_unavailable(error)),
            }
        }
        Ok(ChildWrite::Lost)
    }

    /// A lease that ran out may have left its outcome put but not swapped in (the holder died
    /// between the two, or its swap failed): the value is fixed, so anyone may finish the swap.
    /// True when it did, or when `current` moved meanwhile (read again either way).
    pub async fn finish_outcome_of(&self, expired: &Snapshot) -> bool {
        for step in [Step::Commit, Step::Reauth, Step::Release] {
            let child = child_version_id(&expired.version_id, step);
            if let Ok(Some(_)) = self.read_version(&child).await {
                let swapped = self.swap(&expired.version_id, &child).await;
                tracing::info!(
                    generation = expired.state.generation,
                    step = step.as_str(),
                    ?swapped,
                    "finished an outcome its holder left unswapped"
                );
                return matches!(swapped, Ok(SwapOutcome::Swapped | SwapOutcome::Stale));
            }
        }
        false
    }
}
