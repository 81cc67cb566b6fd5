//! The release `signup` binary under the Runtime API emulator for many invocations: peak
//! memory (`VmHWM`) afterwards, and the time from handing out an event to its response.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cold_start::{FunctionProcess, MemoryKib};
use crate::events::SignupEvents;
use crate::runtime_api::{ApiEvent, Invocation, RuntimeApi};
use crate::stats::{Summary, ms};
use crate::{BenchError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct InvocationRun {
    pub invocations: usize,
    /// Responses with status 200/201.
    pub succeeded: usize,
    /// Status codes of the others (first few).
    pub failures: Vec<String>,
    /// After the last response, while the process waits for the next event.
    pub memory_kib: MemoryKib,
    /// Event handed out to response received (lambda_http decode, handler, Keap on loopback).
    pub round_trip: Summary,
    /// Which store the process used.
    pub store: String,
}

/// Runs `invocations` signups (unique emails) through the binary, one at a time as Lambda does.
pub async fn run_signups(
    api: &mut RuntimeApi,
    binary: &Path,
    env: &[(String, String)],
    events: &SignupEvents,
    invocations: usize,
    store: &str,
    scratch: &Path,
) -> Result<InvocationRun> {
    api.reset();
    for index in 0..invocations {
        let email = events.email("binary", index);
        api.push(Invocation {
            request_id: format!("bench-{index:06}"),
            event: events.event(&email)?,
        });
    }
    let mut process = FunctionProcess::spawn(binary, env, &scratch.join("signup-invocations.stderr"))?;
    let mut round_trips = Vec::with_capacity(invocations);
    let mut failures = Vec::new();
    let mut succeeded = 0;
    let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(50) * invocations as u32;
    let mut answered = 0;
    while answered < invocations {
        let left = deadline.saturating_duration_since(Instant::now());
        match api.next_event(left).await {
            Some(ApiEvent::Next { .. }) => {}
            Some(ApiEvent::Response { request_id, at, status }) => {
                answered += 1;
                if let Some(sent) = api.sent_at(&request_id) {
                    round_trips.push(ms(at.saturating_duration_since(sent)));
                }
                match status {
                    Some(200 | 201) => succeeded += 1,
                    other if failures.len() < 5 => failures.push(format!("{request_id}: status {other:?}")),
                    _ => {}
                }
            }
            Some(ApiEvent::Error { request_id, body }) => {
                answered += 1;
                if failures.len() < 5 {
                    failures.push(format!("{request_id}: error {body}"));
                }
            }
            Some(ApiEvent::InitError { body }) => {
                return Err(BenchError::Failed(format!(
                    "signup: init error {body}; {}",
                    process.diagnosis()
                )));
            }
            None => {
                return Err(BenchError::Failed(format!(
                    "signup: {answered} of {invocations} invocations answered in time; {}",
                    process.diagnosis()
                )));
            }
        }
    }
    // The process has answered everything and is parked in its next poll.
    let memory_kib = process.memory_kib()?;
    process.stop();
    Ok(InvocationRun {
        invocations,
        succeeded,
        failures,
        memory_kib,
        round_trip: Summary::of_ms(&round_trips),
        store: store.to_owned(),
    })
}
