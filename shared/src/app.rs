//! The wiring every function's `main.rs` uses, built once per process (outside the handler)
//! so caches live across invocations.
//!
//! Cold start does no network call: the app secret is read from the store on first use and
//! cached (a failed read is retried on the next use), and the Keap connection that needs it
//! is built at that moment too, behind [`App::connection`].

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::config::{AppSecret, Config, ConfigError};
use crate::keap::api::KeapApi;
use crate::signup::{SignupQueue, SignupService, SignupSettings, SqsQueue};
use crate::store::{self, AppSecretError, SecretStore};
use crate::token::{
    self, ConnectError, ConnectOutcome, Connection, ConnectionStatus, Credential, CredentialSource, RotationPolicy,
    RotationReport, TokenError, TokenGrant,
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
        Self { store, secret_id: secret_id.into(), cell: OnceCell::new() }
    }

    /// The app secret; one store read per process unless a read fails.
    pub async fn get(&self) -> Result<Arc<AppSecret>, AppSecretError> {
        self.cell
            .get_or_try_init(|| async { store::load_app_secret(self.store.as_ref(), &self.secret_id).await.map(Arc::new) })
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

/// The Keap connection of `KEAP_AUTH_MODE` ([`token::connection_from_config`]), built on first
/// use because it needs the app secret.
pub struct LazyConnection {
    config: Config,
    store: Arc<dyn SecretStore>,
    http: reqwest::Client,
    app_secret: Arc<AppSecretCache>,
    cell: OnceCell<Arc<dyn Connection>>,
}

impl std::fmt::Debug for LazyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyConnection").field("mode", &self.config.auth_mode).field("built", &self.cell.initialized()).finish()
    }
}

impl LazyConnection {
    pub fn new(config: Config, store: Arc<dyn SecretStore>, http: reqwest::Client, app_secret: Arc<AppSecretCache>) -> Self {
        Self { config, store, http, app_secret, cell: OnceCell::new() }
    }

    /// The real connection, built on the first call.
    pub async fn get(&self) -> Result<Arc<dyn Connection>, TokenError> {
        self.cell
            .get_or_try_init(|| async {
                let secret = self.app_secret.get().await.map_err(token_error)?;
                token::connection_from_config(&self.config, self.store.clone(), &secret, self.http.clone())
            })
            .await
            .cloned()
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
        let store = store::from_config(&config).await;
        let queue = match &config.signup_queue_url {
            Some(url) => {
                let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
                Some(Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&aws), url.clone())) as Arc<dyn SignupQueue>)
            }
            None => None,
        };
        App::with_parts(config, store, queue)
    }

    /// Wires an app over a given store and queue (the local run and tests).
    pub fn with_parts(config: Config, store: Arc<dyn SecretStore>, queue: Option<Arc<dyn SignupQueue>>) -> Result<App, AppError> {
        let http = http_client(&config)?;
        let app_secret = Arc::new(AppSecretCache::new(store.clone(), config.app_secret_id.clone()));
        let connection: Arc<dyn Connection> =
            Arc::new(LazyConnection::new(config.clone(), store.clone(), http.clone(), app_secret.clone()));
        let api = KeapApi::from_config(http.clone(), &config);
        Ok(App { config, http, store, app_secret, connection, api, queue })
    }

    /// A signup service over this app's connection and client (keep one per process: it
    /// caches tag ids).
    pub fn signup_service(&self) -> SignupService {
        let credentials: Arc<dyn CredentialSource> = self.connection.clone();
        SignupService::new(self.api.clone(), credentials, SignupSettings::from_config(&self.config))
    }
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
        Config { signup_retry_budget: Duration::from_millis(100), ..local_config(mode, "http://127.0.0.1:9") }
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

    #[test]
    fn lambda_levels_map_to_filters() {
        assert_eq!(lambda_log_level(Some("DEBUG")), "debug");
        assert_eq!(lambda_log_level(Some("fatal")), "error");
        assert_eq!(lambda_log_level(None), "info");
        assert_eq!(lambda_log_level(Some("chatty")), "info");
    }
}
