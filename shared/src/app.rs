//! The wiring every function's `main.rs` uses, built once per process (outside the handler)
//! so caches live across invocations.
//!
//! Cold start does no network call: the app secret is read from the store on first use and
//! cached (a failed read is retried on the next use), and what needs it is built at that
//! moment too: Keap's OAuth client ([`App::oauth`], one per process, shared by the token
//! source and the oauth function) and the Keap connection ([`App::connection`]).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::config::{AppSecret, AuthMode, Config, ConfigError, StoreKind};
use crate::keap::api::KeapApi;
use crate::keap::oauth::{OAuthClient, OAuthEndpoints};
use crate::signup::{SignupQueue, SignupService, SignupSettings, SqsQueue};
use crate::store::file::FileStore;
use crate::store::secrets_manager::{self, SecretsManagerStore};
use crate::store::{self, AppSecretError, SecretStore};
use crate::token::{
    ApiKeySource, ConnectError, ConnectOutcome, Connection, ConnectionStatus, Credential, CredentialSource,
    RotationPolicy, RotationReport, TokenError, TokenGrant, TokenSettings, TokenSource,
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// The operator-written app secret, read on first use and then kept.
#[derive(Debug)]
pub struct AppSecretCache {
    store: Arc<dyn SecretStore>,
    secret_id: String,
    cell: OnceCell<Arc<AppSecret>>,
}

impl AppSecretCache {
    pub fn new(store: Arc<dyn SecretStore>, secret_id: impl Into<String>) -> Self {
        Self {
            store,
            secret_id: secret_id.into(),
            cell: OnceCell::new(),
        }
    }

    /// The app secret; one store read per process unless a read fails.
    pub async fn get(&self) -> Result<Arc<AppSecret>, AppSecretError> {
        self.cell
            .get_or_try_init(|| async {
                store::load_app_secret(self.store.as_ref(), &self.secret_id)
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
    }
}

/// A store failure stays retryable; a missing or malformed secret is a configuration problem.
fn token_error(error: AppSecretError) -> TokenError {
    match error {
        AppSecretError::Store { source, .. } => TokenError::Store(source),
        other => TokenError::Misconfigured(other.to_string()),
    }
}

/// Keap's OAuth client (authorize page, code exchange, refresh), built on first use because
/// it needs the app secret's client id and secret; one per process.
#[derive(Debug)]
pub struct LazyOAuthClient {
    endpoints: OAuthEndpoints,
    http: reqwest::Client,
    cell: OnceCell<Arc<OAuthClient>>,
}

impl LazyOAuthClient {
    pub fn new(endpoints: OAuthEndpoints, http: reqwest::Client) -> Self {
        Self {
            endpoints,
            http,
            cell: OnceCell::new(),
        }
    }

    /// The client; the first call builds it with `app_secret` (the process's cached one).
    pub async fn get(&self, app_secret: &AppSecret) -> Result<Arc<OAuthClient>, ConfigError> {
        self.cell
            .get_or_try_init(|| async {
                OAuthClient::with_app_secret(self.http.clone(), &self.endpoints, app_secret).map(Arc::new)
            })
            .await
            .cloned()
    }
}

/// The Keap connection of `KEAP_AUTH_MODE` (`connection_from_config` below), built on first use
/// because it needs the app secret.
pub struct LazyConnection {
    config: Config,
    store: Arc<dyn SecretStore>,
    oauth: Arc<LazyOAuthClient>,
    app_secret: Arc<AppSecretCache>,
    cell: OnceCell<Arc<dyn Connection>>,
}

impl std::fmt::Debug for LazyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyConnection")
            .field("mode", &self.config.auth_mode)
            .field("built", &self.cell.initialized())
            .finish()
    }
}

impl LazyConnection {
    pub fn new(
        config: Config,
        store: Arc<dyn SecretStore>,
        oauth: Arc<LazyOAuthClient>,
        app_secret: Arc<AppSecretCache>,
    ) -> Self {
        Self {
            config,
            store,
            oauth,
            app_secret,
            cell: OnceCell::new(),
        }
    }

    /// The real connection, built on the first call.
    pub async fn get(&self) -> Result<Arc<dyn Connection>, TokenError> {
        self.cell
            .get_or_try_init(|| async {
                let secret = self.app_secret.get().await.map_err(token_error)?;
                connection_from_config(&self.config, self.store.clone(), &secret, &self.oauth).await
            })
            .await
            .cloned()
    }
}

/// The connection the handlers use, chosen by `KEAP_AUTH_MODE`: a [`TokenSource`] over the
/// token secret (oauth) or an [`ApiKeySource`] (api-key, no store calls at all).
async fn connection_from_config(
    config: &Config,
    store: Arc<dyn SecretStore>,
    app_secret: &AppSecret,
    oauth: &LazyOAuthClient,
) -> Result<Arc<dyn Connection>, TokenError> {
    match config.auth_mode {
        AuthMode::ApiKey => {
            let key = app_secret
                .api_key
                .clone()
                .ok_or_else(|| TokenError::Misconfigured("api-key mode needs api_key in the app secret".into()))?;
            Ok(Arc::new(ApiKeySource::new(key)))
        }
        AuthMode::OAuth => {
            if config.token_secret_id.is_empty() {
                return Err(TokenError::Misconfigured(
                    "oauth mode needs KEAP_TOKEN_SECRET_ID".into(),
                ));
            }
            let client = oauth
                .get(app_secret)
                .await
                .map_err(|e| TokenError::Misconfigured(e.to_string()))?;
            let source = TokenSource::new(
                store,
                config.token_secret_id.clone(),
                client,
                TokenSettings::from_config(config),
            )?;
            Ok(Arc::new(source))
        }
    }
}

#[async_trait]
impl CredentialSource for LazyConnection {
    async fn credential(&self) -> Result<Credential, TokenError> {
        self.get().await?.credential().await
    }

    async fn after_unauthorized(&self, rejected: &Credential) -> Result<Credential, TokenError> {
        self.get().await?.after_unauthorized(rejected).await
    }
}

#[async_trait]
impl Connection for LazyConnection {
    async fn connect(&self, grant: TokenGrant, allow_switch: bool) -> Result<ConnectOutcome, ConnectError> {
        self.get().await?.connect(grant, allow_switch).await
    }

    async fn status(&self) -> Result<ConnectionStatus, TokenError> {
        self.get().await?.status().await
    }

    async fn rotate_if_due(&self, policy: RotationPolicy) -> Result<RotationReport, TokenError> {
        self.get().await?.rotate_if_due(policy).await
    }
}

/// Everything a function needs, built once.
pub struct App {
    pub config: Config,
    /// The one HTTP client of the process (Keap's token endpoint and REST API).
    pub http: reqwest::Client,
    pub store: Arc<dyn SecretStore>,
    pub app_secret: Arc<AppSecretCache>,
    /// Keap's OAuth client: the token source's refreshes and the oauth function's routes.
    pub oauth: Arc<LazyOAuthClient>,
    /// OAuth token source or API key, per `KEAP_AUTH_MODE`.
    pub connection: Arc<dyn Connection>,
    pub api: KeapApi,
    /// `SIGNUP_QUEUE_URL`, when set.
    pub queue: Option<Arc<dyn SignupQueue>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("api", &self.api)
            .field("queue", &self.queue.is_some())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Reads the environment and wires everything; no network call.
    pub async fn from_env() -> Result<App, AppError> {
        App::from_config(Config::from_env()?).await
    }

    pub async fn from_config(config: Config) -> Result<App, AppError> {
        let (store, queue) = store_and_queue(&config).await;
        App::with_parts(config, store, queue)
    }

    /// Wires an app over a given store and queue (the local run and tests).
    pub fn with_parts(
        config: Config,
        store: Arc<dyn SecretStore>,
        queue: Option<Arc<dyn SignupQueue>>,
    ) -> Result<App, AppError> {
        let http = http_client(&config)?;
        let app_secret = Arc::new(AppSecretCache::new(store.clone(), config.app_secret_id.clone()));
        let oauth = Arc::new(LazyOAuthClient::new(
            OAuthEndpoints::from_config(&config)?,
            http.clone(),
        ));
        let connection: Arc<dyn Connection> = Arc::new(LazyConnection::new(
            config.clone(),
            store.clone(),
            oauth.clone(),
            app_secret.clone(),
        ));
        let api = KeapApi::from_config(http.clone(), &config);
        Ok(App {
            config,
            http,
            store,
            app_secret,
            oauth,
            connection,
            api,
            queue,
        })
    }

    /// A signup service over this app's connection and client (keep one per process: it
    /// caches tag ids).
    pub fn signup_service(&self) -> SignupService {
        let credentials: Arc<dyn CredentialSource> = self.connection.clone();
        SignupService::new(self.api.clone(), credentials, SignupSettings::from_config(&self.config))
    }
}

/// The secret store (`KEAP_STORE`) and the signup queue (`SIGNUP_QUEUE_URL`, when set). The
/// AWS configuration (standard chain, which honours `AWS_ENDPOINT_URL`; no network call) is
/// loaded once, and only when one of them needs it. Secrets Manager gets the time bounds and
/// retries of [`secrets_manager::client_config`].
pub async fn store_and_queue(config: &Config) -> (Arc<dyn SecretStore>, Option<Arc<dyn SignupQueue>>) {
    let aws = OnceCell::new();
    let aws = || aws.get_or_init(|| aws_config::defaults(aws_config::BehaviorVersion::latest()).load());
    let store: Arc<dyn SecretStore> = match &config.store {
        StoreKind::SecretsManager => {
            let client = aws_sdk_secretsmanager::Client::from_conf(secrets_manager::client_config(aws().await));
            Arc::new(SecretsManagerStore::new(client))
        }
        StoreKind::File(dir) => Arc::new(FileStore::new(dir.clone())),
    };
    let queue = match &config.signup_queue_url {
        Some(url) => {
            Some(Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(aws().await), url.clone())) as Arc<dyn SignupQueue>)
        }
        None => None,
    };
    (store, queue)
}

fn http_client(config: &Config) -> Result<reqwest::Client, AppError> {
    reqwest::Client::builder()
        .timeout(config.http_timeout)
        .connect_timeout(config.connect_timeout())
        .user_agent(concat!("keap-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AppError::Http(e.to_string()))
}

/// The invocation's deadline for [`crate::token::invocation::run`] (invariant 9), from the
/// Lambda context's `deadline` in milliseconds since the epoch.
pub fn invocation_deadline(context_deadline_ms: u64) -> Option<SystemTime> {
    crate::token::invocation::deadline_from_millis(context_deadline_ms, SystemTime::now())
}

/// JSON log lines on stdout (one object per event, as CloudWatch Logs likes them). The level
/// comes from `RUST_LOG` (full filter syntax), else Lambda's `AWS_LAMBDA_LOG_LEVEL`, else info.
/// Calling it twice is harmless.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(lambda_log_level(std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().as_deref())));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .with_current_span(false)
        .with_ansi(false)
        .try_init();
}

/// Lambda's advanced logging levels (`TRACE`..`FATAL`) as a filter directive.
fn lambda_log_level(level: Option<&str>) -> &'static str {
    match level.map(|l| l.trim().to_ascii_uppercase()).as_deref() {
        Some("TRACE") => "trace",
        Some("DEBUG") => "debug",
        Some("WARN") => "warn",
        Some("ERROR" | "FATAL") => "error",
        _ => "info",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{AuthMode, local_config};
    use crate::store::memory::MemoryStore;
    use crate::store::{PutOutcome, SecretStore};
    use secrecy::SecretString;

    fn config(mode: AuthMode) -> Config {
        Config {
            signup_retry_budget: Duration::from_millis(100),
            ..local_config(mode, "http://127.0.0.1:9")
        }
    }

    async fn put(store: &MemoryStore, id: &str, value: &str) {
        let outcome = store.put_version(id, "v1", &SecretString::from(value)).await.unwrap();
        assert_eq!(outcome, PutOutcome::Created);
    }

    #[tokio::test]
    async fn nothing_is_read_until_first_use_and_a_missing_secret_is_retried_later() {
        let store = Arc::new(MemoryStore::new());
        let app = App::with_parts(config(AuthMode::ApiKey), store.clone(), None).unwrap();

        let missing = app.connection.credential().await.unwrap_err();
        assert!(matches!(missing, TokenError::Misconfigured(_)), "{missing:?}");

        put(&store, "app", r#"{"api_key":"KeapAK-x","signup_signing_key":"k"}"#).await;
        let credential = app.connection.credential().await.unwrap();
        assert!(credential.same_as(&Credential::ApiKey(SecretString::from("KeapAK-x"))));
        assert!(app.app_secret.get().await.unwrap().signup_signing_key.is_some());
    }

    #[tokio::test]
    async fn api_key_mode_without_a_key_is_misconfigured_without_leaking_anything() {
        let store = Arc::new(MemoryStore::new());
        put(&store, "app", r#"{"client_id":"c","client_secret":"very-secret"}"#).await;
        let app = App::with_parts(config(AuthMode::ApiKey), store, None).unwrap();
        let error = app.connection.credential().await.unwrap_err().to_string();
        assert!(error.contains("api_key") && !error.contains("very-secret"), "{error}");
    }

    #[tokio::test]
    async fn the_token_source_and_the_oauth_routes_share_one_oauth_client() {
        let store = Arc::new(MemoryStore::new());
        put(&store, "app", r#"{"client_id":"from-the-store","client_secret":"s"}"#).await;
        let app = App::with_parts(config(AuthMode::OAuth), store, None).unwrap();
        // The first use of the connection builds the token source, and with it the client.
        let _ = app.connection.status().await;
        let other = AppSecret::from_json(r#"{"client_id":"other","client_secret":"t"}"#).unwrap();
        assert_eq!(app.oauth.get(&other).await.unwrap().client_id(), "from-the-store");
    }

    #[test]
    fn lambda_levels_map_to_filters() {
        assert_eq!(lambda_log_level(Some("DEBUG")), "debug");
        assert_eq!(lambda_log_level(Some("fatal")), "error");
        assert_eq!(lambda_log_level(None), "info");
        assert_eq!(lambda_log_level(Some("chatty")), "info");
    }
}
