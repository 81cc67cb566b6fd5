//! keap-relay's benchmark harness (`./bench/run.sh`): whole-process measurements against the
//! local Keap sandbox on loopback, and the report they go into. The in-process micro benchmarks
//! are criterion benches in `benches/`.
//!
//! - [`runtime_api`]: a Lambda Runtime API emulator that function binaries poll.
//! - [`deployment`]: the environment a deployed function sees (template.yaml), aimed at the sandbox.
//! - [`cold_start`], [`invocations`]: function binaries started and invoked under the emulator.
//! - [`steady`]: the signup handler in-process, with the sandbox's own time subtracted.
//! - [`storm`]: token-rotation storms of contender processes over the file store.
//! - [`probes`]: store calls of the scheduled refresh; round-trip baselines.
//! - [`cost`]: the monthly bill implied by the measured figures.
//! - [`report`]: `results/latest.json` and `results/latest.md`.

pub mod cold_start;
pub mod cost;
pub mod deployment;
pub mod error;
pub mod events;
pub mod invocations;
pub mod moto;
pub mod probes;
pub mod report;
pub mod runtime_api;
pub mod seed;
pub mod stats;
pub mod steady;
pub mod storm;

pub use error::{BenchError, Result};
