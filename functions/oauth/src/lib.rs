//! The `oauth` function: connects keap-relay to a Keap account (`/oauth/start`,
//! `/oauth/callback`) and reports the connection's health (`/status`).
//!
//! `main.rs` builds the dependencies once ([`Deps::from_app`]); [`handle`] is plain async code
//! that tests drive with API Gateway events from `events/`.

pub mod adapters;
pub mod admin;
pub mod basic_auth;
pub mod handler;
pub mod pages;
pub mod ports;
pub mod state_cookie;

pub use handler::{OAuthDeps, handle};

/// The handler's dependencies, under the name every function crate gives them.
pub type Deps = OAuthDeps;
