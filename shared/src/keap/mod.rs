//! Clients for Keap: [`oauth`] (authorize URL, code exchange, refresh) and [`api`] (REST).
pub mod api;
pub mod oauth;
