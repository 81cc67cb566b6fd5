//! keap-relay's shared core.
//!
//! - [`store`]: a versioned secret store with compare-and-swap (Secrets Manager, file, memory).
//! - [`token`]: the token source that hands out a valid Keap credential and rotates the
//!   OAuth pair without ever losing a newly issued refresh token.
//! - [`keap`]: clients for Keap's OAuth endpoints and REST API.
//! - [`signup`]: signature check, body validation and the signup flow itself.
//! - [`config`]: environment configuration and the operator-written app secret.
//! - [`notices`]: what the functions saw that the operator console shows (a welcome goal
//!   nobody listens to).

pub mod config;
pub mod events;
pub mod forms;
pub mod keap;
pub mod signup;
pub mod store;
pub mod token;

pub use secrecy::{ExposeSecret, SecretString};
pub mod app;
pub mod http_edge;
pub mod metrics;
pub mod notices;
pub mod oauth_state;
pub mod queues;
