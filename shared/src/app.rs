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
use crate::events::{EventSink, SqsSink};
use crate::keap::api::KeapApi;
use crate::keap::oauth::{OAuthClient, OAuthEndpoints};
use crate::keap::pacing::{CallClass, Pacer};
use crate::notices::{DynamoNotices, MemoryNotices, Notices};
use crate::signup::replay;
use crate::signup::{
    DynamoReplayRecords, DynamoSendSlots, MemoryReplayRecords, MemorySendSlots, ReplayRecords, SignupQueue,
    SignupService, SignupSettings, SqsQueue, WelcomeSendSlots,
};
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
    /// Answers to signed signups, for replays (`SIGNUP_REPLAY_TABLE`, else this process only).
    pub replays: Arc<dyn ReplayRecords>,
    /// What the functions note for the console, e.g. a welcome goal nobody listens to (the
    /// state table `SIGNUP_REPLAY_TABLE`, else this process only).
    pub notices: Arc<dyn Notices>,
    /// Where queued welcome records take their send slots (the state table, else this
    /// process only).
    pub send_slots: Arc<dyn WelcomeSendSlots>,
    /// The event queue (`EVENTS_QUEUE_URL`) when events are on (`EVENTS_WEBHOOK_URL` set too).
    pub events: Option<Arc<dyn EventSink>>,
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
        let events = events_sink(&config).await;
        let state = match &config.signup_replay_table {
            Some(table) => Some(state_table(table).await),
            None => None,
        };
        let app = App::with_parts(config, store, queue)?.with_events(events);
        Ok(match state {
            Some(state) => App {
                replays: state.replays,
                notices: state.notices,
                send_slots: state.send_slots,
                ..app
            },
            None => app,
        })
    }

    /// Replaces where the console's notices are kept (the local run shares one between its
    /// functions).
    pub fn with_notices(mut self, notices: Arc<dyn Notices>) -> App {
        self.notices = notices;
        self
    }

    /// Replaces where the answers to signed signups are kept.
    pub fn with_replays(mut self, replays: Arc<dyn ReplayRecords>) -> App {
        self.replays = replays;
        self
    }

    /// The same app emitting its events to `events` (the local run's queue, tests' memory sink).
    pub fn with_events(mut self, events: Option<Arc<dyn EventSink>>) -> App {
        self.events = events;
        self
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
            replays: Arc::new(MemoryReplayRecords::new()),
            notices: Arc::new(MemoryNotices::new()),
            send_slots: Arc::new(MemorySendSlots::new()),
            events: None,
        })
    }

    /// A signup service over this app's connection and client (keep one per process: it
    /// caches tag ids).
    pub fn signup_service(&self) -> SignupService {
        let credentials: Arc<dyn CredentialSource> = self.connection.clone();
        SignupService::new(self.api.clone(), credentials, SignupSettings::from_config(&self.config))
            .with_welcome_queue(self.queue.clone())
            .with_notices(Some(self.notices.clone()))
            .with_send_slots(self.send_slots.clone())
            .with_function_name(self.config.function_name.as_deref().unwrap_or("signup"))
    }

    /// A signup service for bulk work (queued retries, backfills): its own pacer, which
    /// leaves headroom to live signups and stops at the day's reserve (`keap::pacing`).
    pub fn bulk_signup_service(&self) -> SignupService {
        let credentials: Arc<dyn CredentialSource> = self.connection.clone();
        let mut api = self.api.clone();
        if self.config.pacing.enabled {
            let settings = self.config.pacing.clone().with_class(CallClass::Bulk);
            api = api.with_pacer(Arc::new(Pacer::new(settings)));
        }
        // The same welcome queue as live signups: a new contact's welcomes are written ahead
        // to it and retried through it (docs/welcome-and-fields.md).
        SignupService::new(api, credentials, SignupSettings::from_config(&self.config))
            .with_welcome_queue(self.queue.clone())
            .with_notices(Some(self.notices.clone()))
            .with_send_slots(self.send_slots.clone())
            .with_function_name(self.config.function_name.as_deref().unwrap_or("signup-retry"))
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

/// What the relay keeps in its small state table (`SIGNUP_REPLAY_TABLE`).
struct StateTable {
    replays: Arc<dyn ReplayRecords>,
    notices: Arc<dyn Notices>,
    send_slots: Arc<dyn WelcomeSendSlots>,
}

/// The state table over the standard AWS configuration chain: the replay records, the
/// console's notices and the welcome send slots, one bounded client.
async fn state_table(table: &str) -> StateTable {
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        replay::with_replay_bounds(aws_sdk_dynamodb::config::Builder::from(&aws)).build(),
    );
    StateTable {
        replays: Arc::new(DynamoReplayRecords::new(client.clone(), table)),
        notices: Arc::new(DynamoNotices::new(client.clone(), table)),
        send_slots: Arc::new(DynamoSendSlots::new(client, table)),
    }
}

/// The SQS event queue when events are on: `EVENTS_QUEUE_URL` and `EVENTS_WEBHOOK_URL` both set
/// (without a receiver there is nobody to tell).
pub async fn events_sink(config: &Config) -> Option<Arc<dyn EventSink>> {
    let (Some(url), Some(_)) = (&config.events.queue_url, &config.events.webhook_url) else {
        return None;
    };
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    Some(Arc::new(SqsSink::new(aws_sdk_sqs::Client::new(&aws), url.clone())))
}

/// The one HTTP client. It follows no redirect: a 3xx from Keap comes back as an answer (an
/// error to its caller), because following it would carry `X-Keap-API-Key` or the bearer token
/// to the `Location`'s host, and on a 307/308 resend a refresh token or the client secret.
fn http_client(config: &Config) -> Result<reqwest::Client, AppError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
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

/// `KEAP_UNSAFE_TRACE_PAYLOADS=1`: a local debugging switch that lifts the cap of
/// [`PAYLOAD_LOGGING_TARGETS`]. Never set in template.yaml: with it, a TRACE or DEBUG level
/// writes raw events and HTTP payloads (the admin password, OAuth codes and tokens, signup
/// bodies) to the logs.
pub const UNSAFE_TRACE_PAYLOADS: &str = "KEAP_UNSAFE_TRACE_PAYLOADS";

/// Targets (prefixes, as `RUST_LOG` matches them) of the third-party crates that log raw
/// payloads below INFO: the Lambda runtime logs every event it receives at TRACE ("raw JSON
/// event received from Lambda", with the `authorization` header, OAuth codes and states,
/// signup bodies), and the HTTP stacks and the AWS SDK may log headers and bodies. Whatever
/// `RUST_LOG` or Lambda's log level asks, their events above INFO are dropped, unless
/// [`UNSAFE_TRACE_PAYLOADS`] is set.
pub const PAYLOAD_LOGGING_TARGETS: &[&str] = &[
    "lambda_runtime", // and lambda_runtime_api_client
    "lambda_http",
    "aws_smithy_", // every aws_smithy_* crate
    "aws_sdk_",    // every service client
    "aws_config",
    "aws_runtime",
    "aws_sigv4",
    "aws_credential_types",
    "aws_types",
    "hyper", // and hyper_util, hyper_rustls
    "h2",
    "rustls",
    "reqwest",
    "tower", // and tower_http
];

/// What [`init_tracing`] reads from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// `RUST_LOG` (full filter syntax); when absent or invalid, `lambda_level` decides.
    pub rust_log: Option<String>,
    /// Lambda's `AWS_LAMBDA_LOG_LEVEL` (`TRACE`..`FATAL`); info when absent.
    pub lambda_level: Option<String>,
    /// [`UNSAFE_TRACE_PAYLOADS`] is `1` (or `true`).
    pub unsafe_payloads: bool,
}

impl LogSettings {
    pub fn from_env() -> Self {
        Self {
            rust_log: std::env::var("RUST_LOG").ok(),
            lambda_level: std::env::var("AWS_LAMBDA_LOG_LEVEL").ok(),
            unsafe_payloads: std::env::var(UNSAFE_TRACE_PAYLOADS)
                .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true")),
        }
    }
}

/// True when an event or span of `target` at `level` may be logged: always for the relay's
/// own crates; for [`PAYLOAD_LOGGING_TARGETS`] only at INFO and above unless `unsafe_payloads`.
pub fn payload_cap_allows(target: &str, level: &tracing::Level, unsafe_payloads: bool) -> bool {
    unsafe_payloads
        || *level <= tracing::Level::INFO
        || !PAYLOAD_LOGGING_TARGETS.iter().any(|prefix| target.starts_with(prefix))
}

/// The production subscriber, writing to `writer`: JSON lines (one object per event, as
/// CloudWatch Logs likes them) filtered by `RUST_LOG`, else Lambda's `AWS_LAMBDA_LOG_LEVEL`,
/// else info; then [`payload_cap_allows`] over that. The cap is a filter of its own, not
/// directives appended to `RUST_LOG`: a more specific directive
/// (`lambda_runtime::layers=trace`) or a span directive (`[Lambda runtime invoke]=trace`)
/// would win over those.
pub fn log_subscriber<W>(settings: &LogSettings, writer: W) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;

    let filter = settings
        .rust_log
        .as_deref()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(lambda_log_level(settings.lambda_level.as_deref())));
    let unsafe_payloads = settings.unsafe_payloads;
    let cap = tracing_subscriber::filter::filter_fn(move |metadata| {
        payload_cap_allows(metadata.target(), metadata.level(), unsafe_payloads)
    });
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .with_current_span(false)
        .with_ansi(false)
        .with_writer(writer)
        .finish()
        .with(cap)
}

/// Installs [`log_subscriber`] over stdout with the environment's [`LogSettings`]. Calling it
/// twice is harmless. With [`UNSAFE_TRACE_PAYLOADS`] set, the first line says so, whatever
/// level the filter lets through.
pub fn init_tracing() {
    use tracing_subscriber::util::SubscriberInitExt;

    let settings = LogSettings::from_env();
    if log_subscriber(&settings, std::io::stdout).try_init().is_ok() && settings.unsafe_payloads {
        // The same JSON line format, but unfiltered: `RUST_LOG=error,lambda_runtime=trace`
        // would otherwise log payloads without the warning.
        let unfiltered = tracing_subscriber::fmt()
            .json()
            .with_target(false)
            .with_ansi(false)
            .with_writer(std::io::stdout)
            .finish();
        tracing::subscriber::with_default(unfiltered, || {
            tracing::warn!(
                variable = UNSAFE_TRACE_PAYLOADS,
                "UNSAFE: KEAP_UNSAFE_TRACE_PAYLOADS is set, so the Lambda runtime, HTTP and AWS SDK crates log at \
                 the requested level; at DEBUG or TRACE that includes raw events and HTTP payloads: the admin \
                 password, OAuth codes, tokens and signup bodies may be written to these logs. Unset it after \
                 debugging."
            )
        });
    }
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

    /// Emits what the Lambda runtime, hyper and the AWS SDK log at TRACE and DEBUG, and the
    /// relay's own TRACE line, through [`log_subscriber`] with `settings`; returns the output.
    fn logged_with(settings: LogSettings) -> String {
        let captured = test_support::logs::LogCapture::default();
        tracing::subscriber::with_default(log_subscriber(&settings, captured.clone()), || {
            let invoke = tracing::info_span!(target: "lambda_runtime::layers::trace", "Lambda runtime invoke");
            let _entered = invoke.enter();
            tracing::trace!(
                target: "lambda_runtime::layers::api_response",
                body = "authorization: Basic c2VjcmV0LWV2ZW50",
                "raw JSON event received from Lambda"
            );
            tracing::trace!(target: "hyper_util::client::legacy", "payload-of-hyper-util");
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "payload-of-the-aws-sdk");
            tracing::debug!(target: "reqwest::connect", "payload-of-reqwest");
            tracing::info!(target: "lambda_runtime::runtime", "info-of-the-runtime");
            tracing::trace!(target: "keap_relay::token", "trace-of-the-relay");
        });
        captured.text()
    }

    const PAYLOADS: [&str; 4] = [
        "c2VjcmV0LWV2ZW50",
        "payload-of-hyper-util",
        "payload-of-the-aws-sdk",
        "payload-of-reqwest",
    ];

    #[test]
    fn third_party_payload_logging_is_capped_at_info_whatever_the_level_asks() {
        let asking_for_everything = [
            (Some("trace"), None),
            (None, Some("TRACE")),
            // More specific than any directive appended after them, and a span directive.
            (
                Some(
                    "trace,lambda_runtime::layers::api_response=trace,hyper_util::client=trace,aws_smithy_runtime=trace,reqwest=debug",
                ),
                None,
            ),
            (Some("trace,[Lambda runtime invoke]=trace"), None),
        ];
        for (rust_log, lambda_level) in asking_for_everything {
            let settings = LogSettings {
                rust_log: rust_log.map(str::to_owned),
                lambda_level: lambda_level.map(str::to_owned),
                unsafe_payloads: false,
            };
            let logged = logged_with(settings.clone());
            for payload in PAYLOADS {
                assert!(
                    !logged.contains(payload),
                    "{payload} logged with {settings:?}:\n{logged}"
                );
            }
            assert!(logged.contains("trace-of-the-relay"), "{settings:?}:\n{logged}");
            assert!(logged.contains("info-of-the-runtime"), "{settings:?}:\n{logged}");
        }
    }

    #[test]
    fn the_unsafe_switch_lifts_the_cap_and_nothing_else_does() {
        let logged = logged_with(LogSettings {
            rust_log: Some("trace".into()),
            lambda_level: None,
            unsafe_payloads: true,
        });
        for payload in PAYLOADS {
            assert!(logged.contains(payload), "{payload} missing:\n{logged}");
        }
        assert!(payload_cap_allows(
            "keap_relay::keap::api",
            &tracing::Level::TRACE,
            false
        ));
        assert!(payload_cap_allows(
            "lambda_runtime_api_client",
            &tracing::Level::INFO,
            false
        ));
        assert!(!payload_cap_allows(
            "lambda_runtime_api_client",
            &tracing::Level::DEBUG,
            false
        ));
        assert!(!payload_cap_allows(
            "aws_sdk_secretsmanager::operation",
            &tracing::Level::TRACE,
            false
        ));
    }

    #[test]
    fn lambda_levels_map_to_filters() {
        assert_eq!(lambda_log_level(Some("DEBUG")), "debug");
        assert_eq!(lambda_log_level(Some("fatal")), "error");
        assert_eq!(lambda_log_level(None), "info");
        assert_eq!(lambda_log_level(Some("chatty")), "info");
    }
}
