//! Helpers shared by the integration tests.

pub mod rotation;
pub mod sm_fault_proxy;
