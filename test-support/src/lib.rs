//! Helpers shared by keap-relay's tests, each written once:
//!
//! - [`events`]: the sample events in the repository's `events/`;
//! - [`grant`]: a pair minted by the Keap sandbox as a [`keap_relay::token::TokenGrant`];
//! - [`logs`]: log lines captured in memory;
//! - [`moto`]: `moto_server` started and stopped by a test, and AWS clients aimed at it;
//! - [`temp`]: a temporary directory removed on drop;
//! - [`store_contract`]: the `SecretStore` contract, run against every adapter.
//!
//! A dev-dependency only (and a dependency of the test crate `relay-tests`): no function
//! build links it.

pub mod events;
pub mod grant;
pub mod logs;
pub mod moto;
pub mod store_contract;
pub mod temp;
