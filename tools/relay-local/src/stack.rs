//! Everything the local run starts: the Keap sandbox (when asked), one shared-crate `App` per
//! function as on Lambda (each with its own token cache, all over the same secret store), an
//! HTTP server that hands each route to its function's handler through [`crate::gateway`],
//! the scheduled refresh as a timer and the signup queue drained by `signup-retry`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use keap_relay::ExposeSecret;
use keap_relay::app::{App, AppError, store_and_queue};
use keap_relay::config::{AppSecret, Config, ConfigError};
use keap_relay::events::EventSink;
use keap_relay::events::webhook::Webhook;
use keap_relay::notices::{MemoryNotices, Notices};
use keap_relay::queues::QueueInspector;
use keap_relay::signup::SignupQueue;
use keap_relay::store::{self, AppSecretError, SecretStore};
use keap_sandbox::siteverify::FakeSiteverify;
use keap_sandbox::{ClientConfig, Sandbox, SandboxConfig};
use refresh::{MetricsSink, RefreshError, RefreshSummary};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::defaults;
use crate::events_queue::{EventsDrainReport, LocalEventQueue};
use crate::gateway::{self, Functions, Routing};
use crate::progress;
use crate::queue::LocalQueue;
use crate::secrets::{self, SecretsError, Seeded};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("EVENTS_WEBHOOK_URL: {0}")]
    Events(String),
    #[error("cannot create the secret store's directory ({0}): {1}")]
    StoreDir(String, std::io::Error),
    #[error("cannot listen on {addr} for {what}: {source}; pick another port with {flag}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        flag: &'static str,
        source: std::io::Error,
    },
}

/// The template's `EventsMaxReceiveCount`.
const EVENTS_MAX_RECEIVES: u32 = 8;

/// How the local run treats the signup queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// The dead-letter queue's `maxReceiveCount` (the template's default).
    pub max_receives: u32,
    pub visibility_timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_receives: 5,
            visibility_timeout: Duration::from_secs(30),
        }
    }
}

pub struct StackOptions {
    /// The relay's listener, bound before the configuration was read (its port is in
    /// `KEAP_REDIRECT_URI`).
    pub relay: std::net::TcpListener,
    /// Serve the example website (`crate::site`) on this listener.
    pub site: Option<std::net::TcpListener>,
    /// Start the Keap sandbox on this address and point Keap's URLs at it (unless set).
    pub sandbox: Option<SocketAddr>,
    pub queue: QueueSettings,
}

/// The app secret as the stack found it.
#[derive(Debug)]
pub enum AppSecretState {
    Ready {
        secret: AppSecret,
        seeded: Seeded,
    },
    /// Handlers will answer 503 until it is written (`relay-local app-secret`).
    Unavailable(AppSecretError),
}

pub struct Stack {
    /// The configuration every function runs with (Keap's URLs point at the sandbox when it runs).
    pub config: Config,
    /// `http://127.0.0.1:PORT` of the relay.
    pub relay_url: String,
    /// `http://127.0.0.1:PORT` of the example website, when served.
    pub site_url: Option<String>,
    /// The fake siteverify the human check is verified with (sandbox runs only).
    pub fake_siteverify: Option<FakeSiteverify>,
    pub sandbox: Option<Sandbox>,
    pub store: Arc<dyn SecretStore>,
    pub app_secret: AppSecretState,
    refresh: Arc<refresh::Deps>,
    retry: Arc<signup_retry::Deps>,
    /// The event queue and the `events` function, when `EVENTS_WEBHOOK_URL` is set.
    events: Option<(Arc<LocalEventQueue>, Arc<events::Deps>)>,
    /// `None` when `SIGNUP_QUEUE_URL` sends queued signups to SQS instead.
    pub queue: Option<Arc<LocalQueue>>,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Stack {
    /// Reads the configuration from the environment (after [`defaults::apply_env_defaults`]),
    /// starts the sandbox if asked, and serves the routes. Seeds the app secret only when
    /// the sandbox runs: against a real Keap it must be the operator's.
    pub async fn start(options: StackOptions) -> Result<Stack, StackError> {
        let mut config = Config::from_env()?;
        secrets::prepare_store(&config)
            .map_err(|source| StackError::StoreDir(secrets::describe_store(&config), source))?;
        let (store, sqs_queue) = store_and_queue(&config).await;
        let (app_secret, sandbox) = match options.sandbox {
            Some(addr) => {
                let (secret, seeded) =
                    secrets::app_secret_or_seed(store.as_ref(), &config.app_secret_id, &defaults::app_secret()).await?;
                let sandbox =
                    Sandbox::bind(sandbox_config(&secret), addr)
                        .await
                        .map_err(|source| StackError::Listen {
                            what: "the Keap sandbox",
                            addr,
                            flag: "--sandbox-port",
                            source,
                        })?;
                point_at_sandbox(&mut config, &sandbox);
                (AppSecretState::Ready { secret, seeded }, Some(sandbox))
            }
            None => match store::load_app_secret(store.as_ref(), &config.app_secret_id).await {
                Ok(secret) => (
                    AppSecretState::Ready {
                        secret,
                        seeded: Seeded::Existing,
                    },
                    None,
                ),
                Err(error) => (AppSecretState::Unavailable(error), None),
            },
        };

        // With the sandbox, a human check without its own verify URL goes to a local fake that
        // knows the app secret's captcha_secret, as Keap's URLs go to the sandbox.
        let fake_siteverify = match (&sandbox, &app_secret) {
            (Some(_), AppSecretState::Ready { secret, .. })
                if config.forms.human_check.is_some() && !defaults::is_set("FORM_CAPTCHA_VERIFY_URL") =>
            {
                let known = secret
                    .captcha_secret
                    .as_ref()
                    .map_or(keap_sandbox::siteverify::DEFAULT_SECRET, |s| s.expose_secret());
                let fake = FakeSiteverify::start(known)
                    .await
                    .map_err(|source| StackError::Listen {
                        what: "the fake siteverify",
                        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                        flag: "(a free port)",
                        source,
                    })?;
                if let Some(check) = config.forms.human_check.as_mut() {
                    check.verify_url = url::Url::parse(&fake.url()).map_err(|e| ConfigError::Invalid {
                        name: "FORM_CAPTCHA_VERIFY_URL",
                        reason: e.to_string(),
                    })?;
                }
                Some(fake)
            }
            _ => None,
        };

        let local_queue = config.signup_queue_url.is_none().then(|| {
            Arc::new(LocalQueue::new(
                options.queue.max_receives,
                options.queue.visibility_timeout,
            ))
        });
        // As on Lambda, only signup and signup-retry get the queue (in memory, or SQS).
        let queue = local_queue
            .clone()
            .map(|queue| queue as Arc<dyn SignupQueue>)
            .or(sqs_queue);
        // Events (EVENTS_WEBHOOK_URL): every function publishes into the local event queue.
        let event_queue = config
            .events
            .webhook_url
            .is_some()
            .then(|| Arc::new(LocalEventQueue::new(EVENTS_MAX_RECEIVES)));
        let sink = event_queue.clone().map(|queue| queue as Arc<dyn EventSink>);
        // One set of notices for every function, as the state table is on Lambda: what signup
        // and signup-retry note, the console shows.
        let notices: Arc<dyn Notices> = Arc::new(MemoryNotices::new());
        let function_app = |queue: Option<Arc<dyn SignupQueue>>| {
            App::with_parts(config.clone(), store.clone(), queue)
                .map(|app| app.with_events(sink.clone()).with_notices(notices.clone()))
        };
        let mut oauth_deps = oauth::Deps::from_app(&function_app(None)?);
        // The console looks into the local queue (SQS's, when SIGNUP_QUEUE_URL is set).
        if let Some(local) = &local_queue {
            oauth_deps.console.signups = Some(local.clone() as Arc<dyn QueueInspector>);
        }
        let events = match (&event_queue, &config.events.webhook_url) {
            (Some(queue), Some(url)) => {
                let state_id = config
                    .events
                    .state_secret_id
                    .clone()
                    .unwrap_or_else(|| defaults::EVENTS_STATE_SECRET_ID.into());
                oauth_deps.console.events = Some(queue.clone() as Arc<dyn QueueInspector>);
                oauth_deps.console.events_receiver = oauth::admin::origin_of(url);
                oauth_deps.console.receiver_state = Some((store.clone(), state_id.clone()));
                let app = function_app(None)?;
                let deps = events::Deps {
                    webhook: Some(Webhook::new(url).map_err(|e| StackError::Events(e.to_string()))?),
                    key: app.app_secret.clone(),
                    state: Some((store.clone(), state_id)),
                    retry: Some(queue.clone() as Arc<dyn events::RetryLater>),
                };
                Some((queue.clone(), Arc::new(deps)))
            }
            _ => None,
        };
        let functions = Arc::new(Functions {
            oauth: oauth_deps,
            // The form route's metrics in the debug log, as the refresh function's below.
            signup: signup::Deps::from_app(&function_app(queue.clone())?).with_metrics(Arc::new(DebugLogMetrics)),
        });
        let refresh = Arc::new(refresh_deps(&function_app(None)?));
        // Parks signups waiting for a reconnection in the same queue, as on Lambda.
        let retry = Arc::new(signup_retry::Deps::from_app(&function_app(queue)?));

        let relay_addr = options.relay.local_addr().map_err(|source| StackError::Listen {
            what: "keap-relay",
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            flag: "--port",
            source,
        })?;
        let listen_error = |source| StackError::Listen {
            what: "keap-relay",
            addr: relay_addr,
            flag: "--port",
            source,
        };
        options.relay.set_nonblocking(true).map_err(listen_error)?;
        let listener = tokio::net::TcpListener::from_std(options.relay).map_err(listen_error)?;
        let control_queue = local_queue.clone();
        let (stop_server, stopped) = oneshot::channel::<()>();
        let (site_url, site_router) = match options.site {
            Some(site) => {
                let addr = site.local_addr().map_err(|source| StackError::Listen {
                    what: "the example website",
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    flag: "--site-port",
                    source,
                })?;
                let site_error = |source| StackError::Listen {
                    what: "the example website",
                    addr,
                    flag: "--site-port",
                    source,
                };
                site.set_nonblocking(true).map_err(site_error)?;
                let listener = tokio::net::TcpListener::from_std(site).map_err(site_error)?;
                let router = crate::site::router(crate::site::Site {
                    relay_url: format!("http://{relay_addr}"),
                    fake_human_check: fake_siteverify
                        .as_ref()
                        .and(config.forms.human_check.as_ref())
                        .map(|check| check.provider),
                });
                (Some(format!("http://{addr}")), Some((listener, router)))
            }
            None => (None, None),
        };
        let server = tokio::spawn(async move {
            let stopped = async move {
                let _ = stopped.await;
            };
            let relay = axum::serve(
                listener,
                gateway::router(functions, Routing::Template).merge(local_routes(control_queue)),
            );
            match site_router {
                None => relay.with_graceful_shutdown(stopped).await,
                Some((site_listener, site_router)) => {
                    // Both stop together: the site is served while the relay is.
                    let site = axum::serve(site_listener, site_router);
                    tokio::select! {
                        served = relay.with_graceful_shutdown(stopped) => served,
                        served = site => served,
                    }
                }
            }
        });

        Ok(Stack {
            config,
            relay_url: format!("http://{relay_addr}"),
            site_url,
            fake_siteverify,
            sandbox,
            store,
            app_secret,
            refresh,
            retry,
            events,
            queue: local_queue,
            stop_server: Some(stop_server),
            server: Some(server),
        })
    }

    /// Runs the `refresh` handler once with a scheduled event, as EventBridge would.
    pub async fn run_scheduled_refresh(&self) -> Result<RefreshSummary, RefreshError> {
        refresh::handle(scheduled_event(), &self.refresh).await
    }

    /// Starts the schedule and the queue drain; both stop when `shutdown` turns true.
    pub fn start_timers(
        &self,
        refresh_every: Duration,
        drain_every: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut timers = Vec::new();
        let refresh = self.refresh.clone();
        timers.push(tokio::spawn(every(refresh_every, shutdown.clone(), move || {
            let refresh = refresh.clone();
            async move { report_scheduled_refresh(refresh::handle(scheduled_event(), &refresh).await) }
        })));
        if let Some((queue, deps)) = self.events.clone() {
            timers.push(tokio::spawn(every(drain_every, shutdown.clone(), move || {
                let (queue, deps) = (queue.clone(), deps.clone());
                async move { report_events_drain(queue.drain(&deps).await) }
            })));
        }
        if let Some(queue) = self.queue.clone() {
            let retry = self.retry.clone();
            timers.push(tokio::spawn(every(drain_every, shutdown, move || {
                let (queue, retry) = (queue.clone(), retry.clone());
                async move { report_drain(&queue, queue.drain(&retry).await) }
            })));
        }
        timers
    }

    /// Stops serving (open requests finish) and stops the sandbox.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "the relay server stopped with an error"),
                Err(error) => tracing::warn!(%error, "the relay server task failed"),
            }
        }
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.shutdown().await;
        }
    }
}

/// Routes of the local run only (never in template.yaml): `POST /_local/dead-letters` puts its
/// body into the local dead-letter queue, so the console's Redrive and Discard can be tried
/// (the browser test does). 404 when the queue is SQS's.
fn local_routes(queue: Option<Arc<LocalQueue>>) -> axum::Router {
    async fn dead_letter(
        axum::extract::State(queue): axum::extract::State<Option<Arc<LocalQueue>>>,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        match queue {
            Some(queue) => {
                let id = queue.add_dead_letter(body);
                (http::StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response()
            }
            None => (
                http::StatusCode::NOT_FOUND,
                axum::Json(json!({ "message": "Not Found" })),
            )
                .into_response(),
        }
    }
    axum::Router::new()
        .route("/_local/dead-letters", axum::routing::post(dead_letter))
        .with_state(queue)
}

/// The sandbox knows the OAuth client and API key of the app secret, whatever they are.
fn sandbox_config(secret: &AppSecret) -> SandboxConfig {
    let mut config = SandboxConfig::default();
    if let (Some(id), Some(client_secret)) = (&secret.client_id, &secret.client_secret) {
        config.clients = vec![ClientConfig::new(id.clone(), client_secret.expose_secret().to_owned())];
    }
    if let Some(key) = &secret.api_key {
        config.api_keys = vec![key.expose_secret().to_owned()];
    }
    config
}

/// Keap's three URLs at the sandbox, except those the environment sets.
fn point_at_sandbox(config: &mut Config, sandbox: &Sandbox) {
    let [api, token, authorize] = defaults::KEAP_URL_VARS.map(defaults::is_set);
    if !api {
        config.api_url = sandbox.api_url();
    }
    if !token {
        config.token_url = sandbox.token_url();
    }
    if !authorize {
        config.authorize_url = sandbox.authorize_url();
    }
}

/// As `functions/refresh/src/main.rs` wires it, with the metrics in the debug log instead of
/// stdout (EMF lines would drown the progress lines).
fn refresh_deps(app: &App) -> refresh::Deps {
    refresh::Deps {
        metrics: Arc::new(DebugLogMetrics),
        ..refresh::Deps::from_app(app)
    }
}

struct DebugLogMetrics;

impl MetricsSink for DebugLogMetrics {
    fn emit(&self, line: &str) {
        tracing::debug!(target: "relay_local::metrics", "{line}");
    }
}

/// What EventBridge sends on schedule.
fn scheduled_event() -> EventBridgeEvent<serde_json::Value> {
    let event = json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "region": "local",
        "resources": ["arn:aws:events:local:000000000000:rule/keap-relay-refresh"],
        "detail": {},
    });
    serde_json::from_value(event).expect("the scheduled event literal has EventBridge's shape")
}

/// Runs `tick` every `period` (first after one period) until `shutdown` turns true; a tick
/// that has started finishes.
async fn every<F, Fut>(period: Duration, mut shutdown: watch::Receiver<bool>, tick: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => tick().await,
            _ = shutdown.changed() => return,
        }
    }
}

/// Quiet when nothing was due; a line for a rotation or a problem.
fn report_scheduled_refresh(result: Result<RefreshSummary, RefreshError>) {
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            return progress::background(&format!(
                "scheduled refresh failed: {error} (it runs again on schedule)"
            ));
        }
    };
    let routine = matches!(summary.action, "not_due" | "api_key_checked");
    if routine && summary.status == refresh::RunStatus::Ok {
        tracing::debug!(action = summary.action, "scheduled refresh: nothing to do");
        return;
    }
    let generation = summary
        .connection
        .as_ref()
        .and_then(|c| c.generation)
        .map(|g| format!(", generation {g}"))
        .unwrap_or_default();
    let todo = summary
        .start_url
        .as_deref()
        .map(|url| format!("; open {url} to connect Keap again"))
        .unwrap_or_default();
    progress::background(&format!(
        "scheduled refresh: {} ({}{generation}){todo}",
        summary.action,
        run_status_name(summary.status)
    ));
}

/// The status as the refresh function's JSON answer names it.
pub fn run_status_name(status: refresh::RunStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|s| s.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn report_events_drain(result: Result<EventsDrainReport, serde_json::Error>) {
    match result {
        Ok(report) if report == EventsDrainReport::default() => {}
        Ok(report) => progress::background(&format!(
            "events: {} delivered, {} backing off, {} dead-lettered",
            report.delivered, report.retrying, report.dead_lettered
        )),
        Err(error) => progress::background(&format!("the events function could not run: {error}")),
    }
}

fn report_drain(queue: &LocalQueue, result: Result<crate::queue::DrainReport, crate::queue::DrainError>) {
    match result {
        Ok(report) if report.is_empty() => {}
        Ok(report) => {
            let parked = match report.parked {
                0 => String::new(),
                n => format!(" ({n} parked until Keap is connected)"),
            };
            progress::background(&format!(
                "signup-retry: {} delivered, {} back in the queue{parked}, {} dead-lettered ({} waiting, {} dead letters)",
                report.delivered,
                report.retrying + report.parked,
                report.dead_lettered,
                queue.pending(),
                queue.dead_letters()
            ))
        }
        Err(error) => progress::background(&format!("signup-retry could not run: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduled_event_parses_as_eventbridge_sends_it() {
        let event = scheduled_event();
        assert_eq!(event.detail_type, "Scheduled Event");
        assert_eq!(event.source, "aws.events");
    }

    #[test]
    fn the_sandbox_accepts_the_app_secrets_client_and_key() {
        let secret =
            secrets::parse_app_secret(r#"{"client_id":"mine","client_secret":"s","api_key":"KeapAK-mine"}"#).unwrap();
        let config = sandbox_config(&secret);
        assert_eq!(config.clients[0].client_id, "mine");
        assert_eq!(config.api_keys, ["KeapAK-mine"]);
        let defaults = sandbox_config(&secrets::parse_app_secret("{}").unwrap());
        assert_eq!(defaults.clients[0].client_id, keap_sandbox::DEFAULT_CLIENT_ID);
    }
}
