//! The real implementations of [`crate::ports`]: the shared app's cached app secret, and
//! Keap's authorization server through the shared app's [`LazyOAuthClient`].

use std::sync::Arc;

use async_trait::async_trait;
use keap_relay::app::{App, AppSecretCache, LazyOAuthClient};
use keap_relay::config::AppSecret;
use keap_relay::keap::oauth::{OAuthClient, OAuthError};
use keap_relay::keap::pacing::ProbingQuotaReporter;
use keap_relay::queues::{QueueInspector, SqsInspector};
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
            console: crate::admin::ConsoleDeps {
                welcome: crate::admin::Welcome::from_config(&app.config),
                emit: app.events.clone(),
                quota: Some(Arc::new(ProbingQuotaReporter::new(
                    app.api.clone(),
                    app.connection.clone(),
                ))),
                notices: Some(app.notices.clone()),
                ..crate::admin::ConsoleDeps::default()
            },
        }
    }

    /// [`Self::from_app`] with the console reading the SQS queues of the configuration
    /// (`SIGNUP_QUEUE_URL` and `SIGNUP_DEAD_LETTER_QUEUE_URL`, `EVENTS_QUEUE_URL` and
    /// `EVENTS_DEAD_LETTER_QUEUE_URL`) and the receiver switch (`EVENTS_STATE_SECRET_ID`).
    pub async fn from_app_with_queues(app: &App) -> Self {
        let mut deps = Self::from_app(app);
        let config = &app.config;
        let events = &config.events;
        let pairs = [
            (
                config.signup_queue_url.clone(),
                events.signup_dead_letter_queue_url.clone(),
            ),
            (events.queue_url.clone(), events.dead_letter_queue_url.clone()),
        ];
        if pairs.iter().any(|(q, d)| q.is_some() && d.is_some()) {
            let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
            let client = aws_sdk_sqs::Client::new(&aws);
            let inspector = |(queue, dead): &(Option<String>, Option<String>)| match (queue, dead) {
                (Some(queue), Some(dead)) => {
                    Some(Arc::new(SqsInspector::new(client.clone(), queue, dead)) as Arc<dyn QueueInspector>)
                }
                _ => None,
            };
            deps.console.signups = inspector(&pairs[0]);
            deps.console.events = inspector(&pairs[1]);
        }
        deps.console.events_receiver = events.webhook_url.as_deref().and_then(crate::admin::origin_of);
        deps.console.receiver_state = events.state_secret_id.clone().map(|id| (app.store.clone(), id));
        deps
    }
}
