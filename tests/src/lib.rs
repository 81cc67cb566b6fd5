//! Helpers shared by the integration tests.

pub mod lambda_pool;
pub mod rotation;
pub mod sm_fault_proxy;
