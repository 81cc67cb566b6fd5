//! Helpers shared by the integration tests.

pub mod lambda_pool;
pub mod load;
pub mod relay_server;
pub mod rotation;
pub mod sm_fault_proxy;
