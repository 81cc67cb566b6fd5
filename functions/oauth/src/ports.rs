//! What the oauth routes need from outside, as traits so tests inject doubles.
//! [`crate::Deps::from_app`] adapts the shared crate's `App` (app secret, OAuth client,
//! `Connection`) to them (see `adapters.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use keap_relay::config::AppSecret;
use keap_relay::token::TokenGrant;

/// The operator-written app secret, read once and cached by the implementation.
#[async_trait]
pub trait AppSecretSource: Send + Sync {
    async fn app_secret(&self) -> Result<Arc<AppSecret>, SecretUnavailable>;
}

/// Reading the app secret failed: the shared "could not be loaded" error of the HTTP edges.
/// The detail names the secret and the cause, never its value.
pub use keap_relay::http_edge::Unavailable as SecretUnavailable;

/// Keap's authorization server: the authorize page and the code exchange.
#[async_trait]
pub trait AuthorizationServer: Send + Sync {
    /// The authorize page URL for this client with `redirect_uri` and `state`.
    async fn authorize_url(&self, redirect_uri: &str, state: &str) -> Result<String, ExchangeError>;

    /// Exchanges a one-time authorization code for a pair.
    async fn exchange_code(&self, code: &str, redirect_uri: &str) -> Result<TokenGrant, ExchangeError>;
}

/// Why a code exchange gave no pair. No variant carries the code or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// Keap refused the code itself (HTTP 400 `invalid_grant`/`invalid_request`: used,
    /// expired, or issued for another redirect URI).
    #[error("Keap refused the authorization code ({error}{})", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    CodeRejected { error: String, description: Option<String> },
    /// Keap refused this app's client id or secret (`invalid_client`, 401).
    #[error("Keap refused the app's client credentials: {0}")]
    ClientRejected(String),
    /// Keap did not answer usably (5xx, 429, timeout, unreadable body).
    #[error("Keap's token endpoint is unavailable: {0}")]
    Unavailable(String),
    /// The deployment lacks what the exchange needs (client id or secret).
    #[error("keap-relay is not configured for OAuth: {0}")]
    Misconfigured(String),
}

/// Where EMF lines go (the `AdminLoginFailures` metric): the shared port.
pub use keap_relay::metrics::{MetricsSink, StdoutMetrics};
