//! Wall-clock time for leases and backoffs, behind a port so tests can run a simulated day.
//!
//! Leases are compared across processes, so they use wall-clock time ([`SystemTime`]); waits
//! and deadlines inside one process use `tokio::time`, which tests can pause and advance.
//! [`TokioClock`] ties the two together: its wall clock moves exactly as tokio's clock does.

use std::sync::Arc;
use std::time::SystemTime;

/// The wall clock the rotation protocol reads.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The machine's clock (production).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that advances with `tokio::time` (so `tokio::time::pause` and `advance` move
/// it): `start` plus the tokio time elapsed since it was made. For simulations.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: SystemTime,
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start: SystemTime) -> Self {
        Self {
            start,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.start + self.origin.elapsed()
    }
}

/// The production clock as a shareable port.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
