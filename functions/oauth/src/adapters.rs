//! The real implementations of [`crate::ports`]: the shared app's cached app secret, and
//! Keap's authorization server through the shared app's [`LazyOAuthClient`].

use std::sync::Arc;

use async_trait::async_trait;
use keap_relay::app::{App, AppSecretCache, LazyOAuthClient};
use keap_relay::config::AppSecret;
use keap_relay::keap::oauth::{OAuthClient, OAuthError};
use keap_relay::keap::pacing::ProbingQuotaReporter;
use keap_relay::token::TokenGrant;

use crate::ports::{AppSecretSource, AuthorizationServer, ExchangeError, SecretUnavailable, StdoutMetrics};

/// The shared app's cached app secret (one store read per process unless a read fails).
#[async_trait]
impl AppSecretSource for AppSecretCache {
    async fn app_secret(&self) -> Result<Arc<AppSecret>, SecretUnavailable> {
        self.get().await.map_err(|e| SecretUnavailable(e.to_string()))
    }
}

/// Keap's authorize page and token endpoint, through the process's one OAuth client (built on
/// first use from the app secret's client id and secret).
pub struct KeapAuthorization {
    client: Arc<LazyOAuthClient>,
    secrets: Arc<dyn AppSecretSource>,
}

impl KeapAuthorization {
    pub fn new(client: Arc<LazyOAuthClient>, secrets: Arc<dyn AppSecretSource>) -> Self {
        Self { client, secrets }
    }

    async fn client(&self) -> Result<Arc<OAuthClient>, ExchangeError> {
        let secret = self
            .secrets
            .app_secret()
            .await
            .map_err(|e| ExchangeError::Misconfigured(e.to_string()))?;
        self.client
            .get(&secret)
            .await
            .map_err(|e| ExchangeError::Misconfigured(e.to_string()))
    }
}

#[async_trait]
impl AuthorizationServer for KeapAuthorization {
    async fn authorize_url(&self, redirect_uri: &str, state: &str) -> Result<String, ExchangeError> {
        Ok(self.client().await?.authorize_url(redirect_uri, state).into())
    }

    async fn exchange_code(&self, code: &str, redirect_uri: &str) -> Result<TokenGrant, ExchangeError> {
        self.client()
            .await?
            .exchange_code(code, redirect_uri)
            .await
            .map_err(exchange_error)
    }
}

fn exchange_error(error: OAuthError) -> ExchangeError {
    match error {
        OAuthError::CodeRejected { error, description } | OAuthError::RefreshTokenRejected { error, description } => {
            ExchangeError::CodeRejected {
                error,
                description: Some(description).filter(|d| !d.is_empty()),
            }
        }
        OAuthError::InvalidClient(detail) => ExchangeError::ClientRejected(detail),
        other @ (OAuthError::Transient { .. }
        | OAuthError::NotSent(_)
        | OAuthError::OutcomeUnknown(_)
        | OAuthError::Protocol { .. }) => ExchangeError::Unavailable(other.to_string()),
    }
}

impl crate::OAuthDeps {
    /// The handler's dependencies over the shared app, built once per process (`main.rs`, the
    /// local run). Metrics go to stdout as EMF lines.
    pub fn from_app(app: &App) -> Self {
        let secrets: Arc<dyn AppSecretSource> = app.app_secret.clone();
        Self {
            mode: app.config.auth_mode,
            redirect_uri: app.config.redirect_uri.clone(),
            keap: Arc::new(KeapAuthorization::new(app.oauth.clone(), secrets.clone())),
            secrets,
            connection: app.connection.clone(),
            function_name: app.config.function_name.clone().unwrap_or_else(|| "oauth".into()),
            metrics: Arc::new(StdoutMetrics),
            quota: Some(Arc::new(ProbingQuotaReporter::new(
                app.api.clone(),
                app.connection.clone(),
            ))),
        }
    }
}
