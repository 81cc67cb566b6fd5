//! The `signup` function: `POST /signup` (see [`handler`]), the website forms' `POST /form`
//! and `POST /form/{form_name}` (see [`form`]), its production dependencies ([`Deps`], built
//! once by `main.rs`), and [`event_signing`] for the `sign-event` tool and tests.

pub mod event_signing;
pub mod form;
pub mod handler;

use std::sync::Arc;

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::app::{App, AppSecretCache};
use keap_relay::events::EventSink;
use keap_relay::forms::FormsConfig;
use keap_relay::http_edge::Unavailable;
use keap_relay::metrics::{MetricsSink, StdoutMetrics};
use keap_relay::signup::{ReplayRecords, SignupQueue, SignupService};
use lambda_http::{Body, Request, Response};

use form::FormDeps;
use form::limit::IpLimiter;
pub use handler::handle;
use handler::{SigningKeyUnavailable, SignupDeps};

/// Answers one request to the function: the form paths to [`form::handle`], everything else
/// (`POST /signup`) to [`handler::handle`].
pub async fn route<D: FormDeps + ?Sized>(request: &Request, deps: &D) -> Response<Body> {
    if form::is_form_path(request.uri().path()) {
        form::handle(request, deps).await
    } else {
        handler::handle(request, deps).await
    }
}

/// The handler's dependencies over the process-wide [`App`].
pub struct Deps {
    app_secret: Arc<AppSecretCache>,
    /// Keep one per process: it caches tag ids.
    service: SignupService,
    queue: Option<Arc<dyn SignupQueue>>,
    replays: Arc<dyn ReplayRecords>,
    forms: FormsConfig,
    http: reqwest::Client,
    limiter: IpLimiter,
    metrics: Arc<dyn MetricsSink>,
    events: Option<Arc<dyn EventSink>>,
}

/// The name the tests and benches use.
pub type AppDeps = Deps;

impl Deps {
    pub fn from_app(app: &App) -> Self {
        Self {
            app_secret: app.app_secret.clone(),
            service: app.signup_service(),
            queue: app.queue.clone(),
            replays: app.replays.clone(),
            forms: app.config.forms.clone(),
            http: app.http.clone(),
            limiter: IpLimiter::new(app.config.forms.rate_limit_per_minute),
            metrics: Arc::new(StdoutMetrics),
            events: app.events.clone(),
        }
    }

    /// The same, with the form route's metrics going to `metrics` (tests, the local run).
    pub fn with_metrics(self, metrics: Arc<dyn MetricsSink>) -> Self {
        Self { metrics, ..self }
    }
}

#[async_trait]
impl SignupDeps for Deps {
    async fn signing_key(&self) -> Result<SecretString, SigningKeyUnavailable> {
        let secret = self
            .app_secret
            .get()
            .await
            .map_err(|e| SigningKeyUnavailable(e.to_string()))?;
        secret
            .signup_signing_key
            .clone()
            .ok_or_else(|| SigningKeyUnavailable("the app secret has no signup_signing_key".into()))
    }

    fn service(&self) -> &SignupService {
        &self.service
    }

    fn queue(&self) -> Option<&dyn SignupQueue> {
        self.queue.as_deref()
    }

    fn replays(&self) -> &dyn ReplayRecords {
        self.replays.as_ref()
    }

    fn events(&self) -> Option<&dyn EventSink> {
        self.events.as_deref()
    }
}

#[async_trait]
impl FormDeps for Deps {
    fn forms(&self) -> &FormsConfig {
        &self.forms
    }

    async fn captcha_secret(&self) -> Result<SecretString, Unavailable> {
        let secret = self.app_secret.get().await.map_err(|e| Unavailable(e.to_string()))?;
        secret
            .captcha_secret
            .clone()
            .ok_or_else(|| Unavailable("the app secret has no captcha_secret".into()))
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn limiter(&self) -> &IpLimiter {
        &self.limiter
    }

    fn metrics(&self) -> &dyn MetricsSink {
        self.metrics.as_ref()
    }
}
