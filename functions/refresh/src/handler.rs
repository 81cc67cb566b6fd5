//! The scheduled refresh: rotates the OAuth pair ahead of need (access token inside the lead
//! time, or refresh token older than the maximum age) and reports the connection's health,
//! as CloudWatch metrics (EMF lines on stdout) and JSON logs.
//!
//! Outcomes and what Lambda sees:
//! - rotated / not due: `Ok`, metrics `NeedsReauth 0`.
//! - the connection needs a person (refresh token refused, never connected, API key refused):
//!   `Ok` so the schedule does not retry in a storm, but `NeedsReauth 1` (alarmed) and one
//!   error-level log line naming the page to open.
//! - Keap or the store failing for now: `Err` so Lambda records an error, `RefreshFailures 1`.
//! - Secrets Manager's version quota (a store failure that lasts up to 24 h): as above, plus
//!   `SecretVersionQuotaExceeded 1` (alarmed) and an error-level line saying what it means.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use keap_relay::app::App;
use keap_relay::config::AuthMode;
use keap_relay::events::{self, Event, EventSink};
use keap_relay::keap::api::{ApiError, KeapApi};
use keap_relay::metrics::{self, EmfRecord, NAMESPACE, SECRET_VERSION_QUOTA_EXCEEDED, Unit};
use keap_relay::token::{Connection, ConnectionStatus, Credential, RotationAction, RotationPolicy, TokenError};
use serde::Serialize;

/// The handler's dependencies: built once per cold start by [`Deps::from_app`] (in `main.rs`
/// and the local run); tests build it with their own parts.
pub struct Deps {
    pub mode: AuthMode,
    pub policy: RotationPolicy,
    pub connection: Arc<dyn Connection>,
    /// API-key mode's cheap authenticated call.
    pub key_check: Arc<dyn CredentialCheck>,
    /// The page an administrator opens to (re)connect (`KEAP_START_URL`, or derived from
    /// `KEAP_REDIRECT_URI`).
    pub start_url: Option<String>,
    /// The `FunctionName` dimension of the metrics (`AWS_LAMBDA_FUNCTION_NAME`).
    pub function_name: String,
    pub metrics: Arc<dyn MetricsSink>,
    /// Where events to the product go (`EVENTS_QUEUE_URL`); none: no events.
    pub events: Option<Arc<dyn EventSink>>,
}

/// How long after Keap's refusal the schedule keeps announcing `connection.needs_reauth`: every
/// run in that window sends the same event (one id), so a lost delivery is made up for and a
/// receiver dropping repeats sees it once.
pub const NEEDS_REAUTH_EVENT_WINDOW: Duration = Duration::from_secs(3600);

/// The name the tests and the handler use.
pub type RefreshDeps = Deps;

impl Deps {
    /// From the process-wide [`App`]: metrics as EMF lines on stdout, the start page from
    /// `KEAP_START_URL` or next to `KEAP_REDIRECT_URI`.
    pub fn from_app(app: &App) -> Self {
        let config = &app.config;
        Self {
            mode: config.auth_mode,
            policy: RotationPolicy {
                lead: config.refresh_lead,
                max_refresh_age: config.refresh_max_age,
            },
            connection: app.connection.clone(),
            key_check: Arc::new(app.api.clone()),
            start_url: config
                .start_url
                .clone()
                .or_else(|| config.redirect_uri.as_deref().and_then(start_url_from_redirect)),
            function_name: config.function_name.clone().unwrap_or_else(|| "refresh".into()),
            metrics: Arc::new(StdoutMetrics),
            events: app.events.clone(),
        }
    }
}

/// One authenticated call that tells whether Keap accepts a credential.
#[async_trait]
pub trait CredentialCheck: Send + Sync {
    async fn check_credential(&self, credential: &Credential) -> Result<(), ApiError>;
}

#[async_trait]
impl CredentialCheck for KeapApi {
    async fn check_credential(&self, credential: &Credential) -> Result<(), ApiError> {
        KeapApi::check_credential(self, credential).await
    }
}

pub use keap_relay::metrics::{MetricsSink, StdoutMetrics};

/// How the run ended, for the summary, the logs and the metrics' `status` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Ok,
    /// Keap refused the stored credential: an administrator must act.
    NeedsReauth,
    /// Nobody connected Keap yet: an administrator must act.
    NotConnected,
    /// Keap or the store failed for now; the function returns an error.
    Failed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::NeedsReauth => "needs_reauth",
            RunStatus::NotConnected => "not_connected",
            RunStatus::Failed => "failed",
        }
    }

    fn needs_person(self) -> bool {
        matches!(self, RunStatus::NeedsReauth | RunStatus::NotConnected)
    }
}

/// The function's JSON answer. Never a token.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshSummary {
    /// What the run did: `not_due`, `rotated`, `rotated_by_other`, `api_key_checked`, or
    /// `none` when nothing could be done.
    pub action: &'static str,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
    /// Where to re-authorize, when that is needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_url: Option<String>,
}

/// A failure worth retrying; Lambda records it as an error (alarmed through `Errors` and
/// `RefreshFailures`).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the scheduled token refresh failed: {0}")]
    Token(#[source] TokenError),
    #[error("the scheduled API key check failed: {0}")]
    KeyCheck(#[source] ApiError),
}

impl From<RefreshError> for lambda_runtime::Diagnostic {
    fn from(error: RefreshError) -> Self {
        let error_type = match &error {
            RefreshError::Token(_) => "KeapRelay.RefreshFailed",
            RefreshError::KeyCheck(_) => "KeapRelay.ApiKeyCheckFailed",
        };
        lambda_runtime::Diagnostic {
            error_type: error_type.into(),
            error_message: error.to_string(),
        }
    }
}

pub async fn handle(
    event: EventBridgeEvent<serde_json::Value>,
    deps: &RefreshDeps,
) -> Result<RefreshSummary, RefreshError> {
    tracing::debug!(event_id = event.id.as_deref().unwrap_or(""), detail_type = %event.detail_type, "scheduled refresh");
    match deps.mode {
        AuthMode::OAuth => rotate(deps).await,
        AuthMode::ApiKey => check_api_key(deps).await,
    }
}

async fn rotate(deps: &RefreshDeps) -> Result<RefreshSummary, RefreshError> {
    let (action, status, error) = match deps.connection.rotate_if_due(deps.policy).await {
        Ok(report) => (action_name(&report.action), Some(report.status), None),
        // The health gauges still matter when the rotation failed: one best-effort read.
        Err(error) => ("none", deps.connection.status().await.ok(), Some(error)),
    };
    let run_status = match (&error, &status) {
        (Some(TokenError::NeedsReauth { .. }), _) => RunStatus::NeedsReauth,
        (Some(TokenError::NotConnected), _) => RunStatus::NotConnected,
        (Some(_), _) => RunStatus::Failed,
        (None, Some(status)) if status.needs_reauth => RunStatus::NeedsReauth,
        (None, Some(status)) if !status.connected => RunStatus::NotConnected,
        (None, _) => RunStatus::Ok,
    };
    let quota = error.as_ref().is_some_and(metrics::is_quota_exceeded);
    emit_metrics(deps, action, run_status, status.as_ref(), quota);
    match (run_status, error) {
        (RunStatus::Failed, Some(error)) => {
            if quota {
                report_quota_exceeded(&error);
            }
            tracing::error!(error = %error, "the scheduled token refresh failed; it runs again on schedule");
            return Err(RefreshError::Token(error));
        }
        (status_now, error) if status_now.needs_person() => {
            let reason = match error {
                Some(error) => error.to_string(),
                None => status
                    .as_ref()
                    .and_then(|s| s.needs_reauth_reason.clone())
                    .unwrap_or_else(|| "Keap is not connected".into()),
            };
            report_needs_person(deps, run_status, &reason);
            if run_status == RunStatus::NeedsReauth {
                announce_needs_reauth(deps, status.as_ref(), &reason).await;
            }
        }
        _ => {
            let status = status.as_ref();
            tracing::info!(
                action,
                account = status.and_then(|s| s.account.as_deref()).unwrap_or(""),
                access_expires_in_seconds = status.and_then(|s| s.access_expires_in_seconds),
                refresh_token_age_days = status.and_then(|s| s.refresh_token_age_days),
                generation = status.and_then(|s| s.generation),
                "scheduled refresh done"
            );
        }
    }
    Ok(summary(deps, action, run_status, status))
}

/// `connection.needs_reauth` while the refusal is recent (see [`NEEDS_REAUTH_EVENT_WINDOW`]).
async fn announce_needs_reauth(deps: &RefreshDeps, status: Option<&ConnectionStatus>, reason: &str) {
    let since = status.and_then(|s| s.needs_reauth_since);
    let recent = since
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .is_none_or(|age| age <= NEEDS_REAUTH_EVENT_WINDOW);
    if recent {
        let event = Event::connection_needs_reauth(Some(reason), since, deps.start_url.as_deref());
        events::emit(deps.events.as_deref(), event).await;
    }
}

async fn check_api_key(deps: &RefreshDeps) -> Result<RefreshSummary, RefreshError> {
    const ACTION: &str = "api_key_checked";
    let checked = match deps.connection.credential().await {
        Ok(credential) => deps.key_check.check_credential(&credential).await,
        Err(error) => {
            // No key to check (missing from the app secret, or the secret is unreadable).
            emit_metrics(
                deps,
                "none",
                RunStatus::Failed,
                None,
                metrics::is_quota_exceeded(&error),
            );
            tracing::error!(error = %error, "the scheduled API key check could not get the key");
            return Err(RefreshError::Token(error));
        }
    };
    match checked {
        Ok(()) => {
            emit_metrics(deps, ACTION, RunStatus::Ok, None, false);
            tracing::info!(action = ACTION, "Keap accepts the API key");
            Ok(summary(
                deps,
                ACTION,
                RunStatus::Ok,
                deps.connection.status().await.ok(),
            ))
        }
        Err(ApiError::Unauthorized { .. }) => {
            emit_metrics(deps, ACTION, RunStatus::NeedsReauth, None, false);
            report_needs_person(deps, RunStatus::NeedsReauth, "Keap refused the API key (401)");
            Ok(summary(
                deps,
                ACTION,
                RunStatus::NeedsReauth,
                deps.connection.status().await.ok(),
            ))
        }
        Err(error) => {
            emit_metrics(deps, ACTION, RunStatus::Failed, None, false);
            tracing::error!(error = %error, "the scheduled API key check failed; it runs again on schedule");
            Err(RefreshError::KeyCheck(error))
        }
    }
}

fn summary(
    deps: &RefreshDeps,
    action: &'static str,
    status: RunStatus,
    connection: Option<ConnectionStatus>,
) -> RefreshSummary {
    let start_url = (status.needs_person() && deps.mode == AuthMode::OAuth)
        .then(|| deps.start_url.clone())
        .flatten();
    RefreshSummary {
        action,
        status,
        connection,
        start_url,
    }
}

/// One EMF line per run, whatever the outcome (the alarms treat missing data as fine).
/// `SecretVersionQuotaExceeded` is in it only when the run met the version quota.
fn emit_metrics(
    deps: &RefreshDeps,
    action: &str,
    run_status: RunStatus,
    status: Option<&ConnectionStatus>,
    quota: bool,
) {
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    let mut record = EmfRecord::new(NAMESPACE)
        .dimension("FunctionName", deps.function_name.clone())
        .metric("Refreshes", Unit::Count, flag(action == "rotated"))
        .metric("RefreshFailures", Unit::Count, flag(run_status == RunStatus::Failed))
        .metric("NeedsReauth", Unit::Count, flag(run_status.needs_person()))
        .property("mode", mode_name(deps.mode))
        .property("action", action)
        .property("status", run_status.as_str());
    if let Some(seconds) = status.and_then(|s| s.access_expires_in_seconds) {
        record = record.metric("AccessTokenSecondsToExpiry", Unit::Seconds, seconds as f64);
    }
    if let Some(days) = status.and_then(|s| s.refresh_token_age_days) {
        record = record.metric("RefreshTokenAgeDays", Unit::None, days);
    }
    if quota {
        record = record.metric(SECRET_VERSION_QUOTA_EXCEEDED, Unit::Count, 1.0);
    }
    deps.metrics.emit(&record.to_line(SystemTime::now()));
}

/// What the version quota means for the operator, next to the failure line.
fn report_quota_exceeded(error: &TokenError) {
    tracing::error!(
        error = %error,
        "Secrets Manager refuses new versions of the token secret (version quota) until old versions age out, up to 24 h; \
         until then no rotation or re-authorization can be stored (see docs/token-rotation.md)"
    );
}

/// The one error-level line of a run that needs a person, naming what to do.
fn report_needs_person(deps: &RefreshDeps, status: RunStatus, reason: &str) {
    let todo = match (deps.mode, deps.start_url.as_deref()) {
        (AuthMode::ApiKey, _) => {
            "put a valid Personal Access Token or Service Account Key in the app secret's api_key".to_owned()
        }
        (AuthMode::OAuth, Some(url)) => format!("an administrator must open {url} and connect Keap"),
        (AuthMode::OAuth, None) => "an administrator must open /oauth/start and connect Keap".to_owned(),
    };
    tracing::error!(
        status = status.as_str(),
        reason,
        start_url = deps.start_url.as_deref().unwrap_or(""),
        "Keap needs re-authorization: {todo}"
    );
}

fn mode_name(mode: AuthMode) -> &'static str {
    match mode {
        AuthMode::OAuth => "oauth",
        AuthMode::ApiKey => "api-key",
    }
}

fn action_name(action: &RotationAction) -> &'static str {
    match action {
        RotationAction::NotDue => "not_due",
        RotationAction::Rotated => "rotated",
        RotationAction::RotatedByOther => "rotated_by_other",
        RotationAction::ApiKeyChecked => "api_key_checked",
    }
}

/// The `/oauth/start` page next to the callback: `https://host/stage/oauth/callback` becomes
/// `https://host/stage/oauth/start`. `None` when the redirect URI is not a URL.
pub fn start_url_from_redirect(redirect_uri: &str) -> Option<String> {
    let mut url = url::Url::parse(redirect_uri).ok()?;
    let path = url.path().trim_end_matches('/');
    let base = path
        .strip_suffix("/oauth/callback")
        .or_else(|| path.rsplit_once('/').map(|(base, _)| base))?;
    let start = format!("{base}/oauth/start");
    url.set_path(&start);
    url.set_query(None);
    url.set_fragment(None);
    Some(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_url_sits_next_to_the_callback() {
        assert_eq!(
            start_url_from_redirect("https://abc.execute-api.us-east-1.amazonaws.com/oauth/callback").as_deref(),
            Some("https://abc.execute-api.us-east-1.amazonaws.com/oauth/start")
        );
        assert_eq!(
            start_url_from_redirect("https://relay.example.com/prod/oauth/callback/?x=1").as_deref(),
            Some("https://relay.example.com/prod/oauth/start")
        );
        assert_eq!(
            start_url_from_redirect("https://relay.example.com/keap/return").as_deref(),
            Some("https://relay.example.com/keap/oauth/start")
        );
        assert_eq!(start_url_from_redirect("not a url"), None);
    }
}
