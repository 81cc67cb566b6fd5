//! The real implementations of [`crate::ports`]: the shared app's cached app secret, and
//! Keap's authorization server through the shared [`OAuthClient`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keap_relay::app::AppSecretCache;
use keap_relay::config::{AppSecret, Config, ConfigError};
use keap_relay::keap::oauth::{OAuthClient, OAuthError};
use keap_relay::token::TokenGrant;
use tokio::sync::OnceCell;
use url::Url;

use crate::ports::{AppSecretSource, AuthorizationServer, ExchangeError, SecretUnavailable};

/// The shared app's cached app secret (one store read per process unless a read fails).
#[async_trait]
impl AppSecretSource for AppSecretCache {
    async fn app_secret(&self) -> Result<Arc<AppSecret>, SecretUnavailable> {
        self.get().await.map_err(|e| SecretUnavailable(e.to_string()))
    }
}

/// Keap's authorize page and token endpoint. The [`OAuthClient`] needs the client id and
/// secret, so it is built on first use from the app secret.
pub struct KeapAuthorization {
    endpoints: KeapEndpoints,
    http: reqwest::Client,
    secrets: Arc<dyn AppSecretSource>,
    client: OnceCell<OAuthClient>,
}

/// Where Keap's OAuth endpoints are and how long a call may take.
#[derive(Debug, Clone)]
pub struct KeapEndpoints {
    pub authorize_url: Url,
    pub token_url: Url,
    pub timeout: Duration,
}

impl KeapEndpoints {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let parse = |name, value: &str| Url::parse(value).map_err(|e| ConfigError::Invalid { name, reason: e.to_string() });
        Ok(Self {
            authorize_url: parse("KEAP_AUTHORIZE_URL", &config.authorize_url)?,
            token_url: parse("KEAP_TOKEN_URL", &config.token_url)?,
            timeout: config.http_timeout,
        })
    }
}

impl KeapAuthorization {
    pub fn new(endpoints: KeapEndpoints, http: reqwest::Client, secrets: Arc<dyn AppSecretSource>) -> Self {
        Self { endpoints, http, secrets, client: OnceCell::new() }
    }

    async fn client(&self) -> Result<&OAuthClient, ExchangeError> {
        self.client
            .get_or_try_init(|| async {
                let secret = self.secrets.app_secret().await.map_err(|e| ExchangeError::Misconfigured(e.to_string()))?;
                let (Some(client_id), Some(client_secret)) = (&secret.client_id, &secret.client_secret) else {
                    return Err(ExchangeError::Misconfigured(
                        "the app secret needs client_id and client_secret in oauth mode".into(),
                    ));
                };
                Ok(OAuthClient::new(
                    self.http.clone(),
                    self.endpoints.token_url.clone(),
                    self.endpoints.authorize_url.clone(),
                    client_id.clone(),
                    client_secret.clone(),
                    self.endpoints.timeout,
                ))
            })
            .await
    }
}

#[async_trait]
impl AuthorizationServer for KeapAuthorization {
    async fn authorize_url(&self, redirect_uri: &str, state: &str) -> Result<String, ExchangeError> {
        Ok(self.client().await?.authorize_url(redirect_uri, state).into())
    }

    async fn exchange_code(&self, code: &str, redirect_uri: &str) -> Result<TokenGrant, ExchangeError> {
        self.client().await?.exchange_code(code, redirect_uri).await.map_err(exchange_error)
    }
}

fn exchange_error(error: OAuthError) -> ExchangeError {
    match error {
        OAuthError::CodeRejected { error, description } | OAuthError::RefreshTokenRejected { error, description } => {
            ExchangeError::CodeRejected { error, description: Some(description).filter(|d| !d.is_empty()) }
        }
        OAuthError::InvalidClient(detail) => ExchangeError::ClientRejected(detail),
        other @ (OAuthError::Transient { .. }
        | OAuthError::NotSent(_)
        | OAuthError::OutcomeUnknown(_)
        | OAuthError::Protocol { .. }) => ExchangeError::Unavailable(other.to_string()),
    }
}

/// The handler's dependencies over the shared app (built once per process in `main.rs`).
pub fn deps_from_app(app: &keap_relay::app::App) -> Result<crate::OAuthDeps, ConfigError> {
    let secrets: Arc<dyn AppSecretSource> = app.app_secret.clone();
    Ok(crate::OAuthDeps {
        mode: app.config.auth_mode,
        redirect_uri: app.config.redirect_uri.clone(),
        keap: Arc::new(KeapAuthorization::new(KeapEndpoints::from_config(&app.config)?, app.http.clone(), secrets.clone())),
        secrets,
        connection: app.connection.clone(),
    })
}
