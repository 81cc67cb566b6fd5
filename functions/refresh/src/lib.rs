//! The `refresh` function: the EventBridge schedule's token rotation and health report.
//! `main.rs` wires the real dependencies; [`handler::handle`] is plain async code.

pub mod handler;

pub use handler::{CredentialCheck, MetricsSink, RefreshDeps, RefreshError, RefreshSummary, RunStatus, StdoutMetrics, handle};
