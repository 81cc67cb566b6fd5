//! Small measurements the storm and the cost model are read against: one Keap token call and
//! one store round trip on loopback, and the store and Keap calls of a scheduled refresh run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keap_relay::SecretString;
use keap_relay::store::SecretStore;
use keap_relay::store::counting::{CountingStore, StoreCounts};
use keap_relay::store::file::FileStore;
use keap_relay::store::memory::MemoryStore;
use keap_relay::token::{Connection, RotationAction, RotationPolicy, TokenSettings};
use keap_sandbox::Sandbox;
use serde::Serialize;

use crate::seed;
use crate::stats::{Summary, ms};
use crate::{BenchError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct RoundTrips {
    /// One refresh at Keap's token endpoint (the sandbox), new connection each time as a
    /// fresh contender process makes it.
    pub keap_token_call: Summary,
    /// One `read_current` of the file store.
    pub store_read: Summary,
    /// One `put_version` plus `swap_current` of the file store (a rotation does two).
    pub store_write: Summary,
}

pub async fn round_trips(sandbox: &Sandbox, store_dir: &Path, samples: usize) -> Result<RoundTrips> {
    let mut keap = Vec::new();
    for _ in 0..samples + 1 {
        let grant = seed::grant(sandbox, None);
        let client = seed::token_source_client(&sandbox.token_url())?;
        let started = Instant::now();
        client
            .refresh(&grant.refresh_token)
            .await
            .map_err(|e| BenchError::Failed(format!("baseline refresh: {e}")))?;
        keap.push(ms(started.elapsed()));
    }
    keap.remove(0);

    let store = FileStore::new(store_dir);
    let secret_id = format!("round-trip-{}", uuid::Uuid::new_v4().simple());
    let value = SecretString::from(seed::app_secret_json());
    let fail = |e: keap_relay::store::StoreError| BenchError::Failed(format!("file store: {e}"));
    store.put_version(&secret_id, "v0", &value).await.map_err(fail)?;
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    let mut current = "v0".to_owned();
    for index in 0..samples {
        let started = Instant::now();
        store.read_current(&secret_id).await.map_err(fail)?;
        reads.push(ms(started.elapsed()));
        let next = format!("v{}", index + 1);
        let started = Instant::now();
        store.put_version(&secret_id, &next, &value).await.map_err(fail)?;
        store.swap_current(&secret_id, &current, &next).await.map_err(fail)?;
        writes.push(ms(started.elapsed()));
        current = next;
    }
    Ok(RoundTrips {
        keap_token_call: Summary::of_ms(&keap),
        store_read: Summary::of_ms(&reads),
        store_write: Summary::of_ms(&writes),
    })
}

/// Store and Keap calls of one scheduled refresh run in a fresh process (the refresh
/// function's `rotate_if_due` with the template's lead and maximum age).
#[derive(Debug, Clone, Serialize)]
pub struct RefreshCalls {
    /// Nothing due: the run only reads the token state.
    pub not_due: StoreCounts,
    /// Due: lease, Keap refresh, commit.
    pub rotation: StoreCounts,
    pub rotation_keap_token_calls: u64,
    /// Rotation run wall time on loopback (memory store).
    pub rotation_ms: f64,
}

pub async fn refresh_calls(sandbox: &Sandbox) -> Result<RefreshCalls> {
    let policy = RotationPolicy {
        lead: Duration::from_secs(6 * 3600),
        max_refresh_age: Duration::from_secs(30 * 86400),
    };
    let run = |expires_in: Duration| async move {
        let memory = Arc::new(MemoryStore::new());
        seed::connect(
            memory.clone() as Arc<dyn SecretStore>,
            "token",
            sandbox,
            Some(expires_in),
        )
        .await?;
        let counting = Arc::new(CountingStore::new(memory));
        let source = seed::token_source(
            counting.clone(),
            "token",
            &sandbox.token_url(),
            TokenSettings::default(),
        )?;
        sandbox.reset_stats();
        let started = Instant::now();
        let report = source
            .rotate_if_due(policy)
            .await
            .map_err(|e| BenchError::Failed(format!("refresh run: {e}")))?;
        Ok::<_, BenchError>((
            report.action,
            counting.counts(),
            sandbox.stats().calls_to("POST", "/token") as u64,
            started.elapsed(),
        ))
    };
    let (action, not_due, _, _) = run(Duration::from_secs(24 * 3600)).await?;
    if action != RotationAction::NotDue {
        return Err(BenchError::Failed(format!("a fresh token was rotated: {action:?}")));
    }
    let (action, rotation, keap, took) = run(Duration::from_secs(3600)).await?;
    if action != RotationAction::Rotated {
        return Err(BenchError::Failed(format!(
            "a token with 1 h left was not rotated: {action:?}"
        )));
    }
    Ok(RefreshCalls {
        not_due,
        rotation,
        rotation_keap_token_calls: keap,
        rotation_ms: ms(took),
    })
}
