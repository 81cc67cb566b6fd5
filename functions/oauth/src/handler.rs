//! The routes of the `oauth` function: `GET /oauth/start`, `GET /oauth/callback`, `GET /status`.
//!
//! [`handle`] never fails: every problem becomes a precise HTTP answer (HTML for the browser
//! routes, JSON for `/status` and unknown routes). Each route stops at its first problem with
//! `?` and the [`Page`] that explains it, which [`handle`] renders; the pages and their copy
//! are in [`crate::pages`]. Nothing here logs or returns a token, the authorization code, the
//! client secret or the admin password.
//!
//! Who may read what (issue 14): an answer to someone who has not yet shown to be the
//! administrator (Basic auth on `/oauth/start` and `/status`, a verified state and browser
//! binding on the callback) keeps its status and code but none of its detail (the app secret's
//! id, the auth mode, which setting is missing): that goes to the log.

use std::sync::Arc;
use std::time::SystemTime;

use keap_relay::config::{AppSecret, AuthMode};
use keap_relay::keap::pacing::{QuotaReporter, QuotaUse};
use keap_relay::metrics;
use keap_relay::oauth_state::{STATE_TTL, StateError, StateKey};
use keap_relay::token::{ConnectError, ConnectOutcome, Connection, TokenError, TokenState};
use keap_relay::{ExposeSecret, SecretString};
use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use uuid::Uuid;

use crate::basic_auth::{self, AdminAuth};
use crate::pages::{self, Page};
use crate::ports::{AppSecretSource, AuthorizationServer, MetricsSink};
use crate::state_cookie;

/// Built once per cold start in `main.rs`; tests build it with doubles.
pub struct OAuthDeps {
    pub mode: AuthMode,
    /// `KEAP_REDIRECT_URI`: the callback URL registered with Keap.
    pub redirect_uri: Option<String>,
    pub secrets: Arc<dyn AppSecretSource>,
    pub keap: Arc<dyn AuthorizationServer>,
    pub connection: Arc<dyn Connection>,
    /// The `FunctionName` dimension of the `AdminLoginFailures` metric (`AWS_LAMBDA_FUNCTION_NAME`).
    pub function_name: String,
    pub metrics: Arc<dyn MetricsSink>,
    /// Keap's quota use for `/status` (`keap::pacing`); none: not shown.
    pub quota: Option<Arc<dyn QuotaReporter>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Start,
    Callback,
    Status,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Start => "/oauth/start",
            Route::Callback => "/oauth/callback",
            Route::Status => "/status",
        }
    }
}

pub async fn handle(request: Request, deps: &OAuthDeps) -> Response<Body> {
    let route = match route_path(&request).as_str() {
        "/oauth/start" => Route::Start,
        "/oauth/callback" => Route::Callback,
        "/status" => Route::Status,
        other => {
            return pages::json_error(StatusCode::NOT_FOUND, "not_found", &format!("no route for {other}"));
        }
    };
    if request.method() != Method::GET {
        return pages::method_not_allowed(request.method());
    }
    // A refusal is an HTML page on the browser routes, a JSON error on `/status`.
    match route {
        Route::Start => start(&request, deps).await.unwrap_or_else(Page::into_response),
        Route::Callback => {
            let mut response = callback(&request, deps).await.unwrap_or_else(Page::into_response);
            // The browser binding is single use, whatever the outcome.
            state_cookie::clear_on(&mut response, &cookie_path(deps));
            response
        }
        Route::Status => status(&request, deps).await.unwrap_or_else(Page::into_json_response),
    }
}

/// `GET /oauth/start[?switch=1]`: administrator only; 302 to Keap's authorize page, setting the
/// cookie that binds the state to this browser.
async fn start(request: &Request, deps: &OAuthDeps) -> Result<Response<Body>, Page> {
    let secret = admin_gate(request, deps, Route::Start).await?;
    // The administrator from here on: pages may name settings and causes.
    if deps.mode == AuthMode::ApiKey {
        return Err(pages::oauth_not_used());
    }
    let switch = parse_switch(request.query_string_parameters().first("switch"))?;
    let (redirect_uri, state_key) = oauth_settings(deps, &secret)?;
    let state = state_key.issue(&redirect_uri, switch, SystemTime::now());
    let url = deps
        .keap
        .authorize_url(&redirect_uri, &state.value)
        .await
        .map_err(|error| pages::exchange_failure(&error))?;
    let cookie = state_cookie::set(
        state.browser_binding.expose_secret(),
        &state_cookie::path_for(Some(&redirect_uri)),
        STATE_TTL,
    );
    tracing::info!(nonce = %state.nonce, switch, "sending the administrator to Keap's authorize page");
    Ok(pages::redirect_setting_cookie(&url, cookie))
}

/// `GET /oauth/callback?code&state&scope` (or `?error=access_denied&state`).
///
/// Anyone can call it: until the state and the browser binding verify, every refusal is
/// answered without its detail ([`before_auth`]). A verified state proves this is the browser
/// of the administrator who passed `/oauth/start` minutes ago, so the pages after that may say
/// what went wrong.
async fn callback(request: &Request, deps: &OAuthDeps) -> Result<Response<Body>, Page> {
    if deps.mode == AuthMode::ApiKey {
        return Err(before_auth(pages::oauth_not_used()));
    }
    let query = request.query_string_parameters();
    let cookies = state_cookie::values(request.headers());
    let cookies: Vec<&str> = cookies.iter().map(String::as_str).collect();
    let settings = match app_secret(deps).await {
        Ok(secret) => oauth_settings(deps, &secret),
        Err(page) => Err(page),
    };
    let verify = |(redirect_uri, state_key): &(String, StateKey)| {
        state_key.verify(query.first("state"), &cookies, redirect_uri, SystemTime::now())
    };
    if let Some(error) = query.first("error") {
        // Keap's description is shown only to the browser that started this sign-in.
        let verified = settings.as_ref().ok().map(verify).is_some_and(|v| v.is_ok());
        if error == "access_denied" {
            tracing::info!(verified, "the administrator declined access in Keap");
        } else {
            tracing::warn!(%error, verified, "Keap answered the authorization with an error");
        }
        let description = query.first("error_description").filter(|_| verified);
        return Err(pages::keap_declined(error, description));
    }
    let settings = settings.map_err(before_auth)?;
    let state = verify(&settings).map_err(|error| refused_state(error, None))?;
    let (redirect_uri, _) = settings;
    let pair_issued_at = pair_issued_at(deps.connection.as_ref()).await?;
    state
        .ensure_unused(pair_issued_at)
        .map_err(|error| refused_state(error, Some(state.nonce)))?;
    let code = query
        .first("code")
        .filter(|code| !code.trim().is_empty())
        .ok_or_else(pages::code_missing)?;
    let grant = deps.keap.exchange_code(code, &redirect_uri).await.map_err(|error| {
        tracing::warn!(nonce = %state.nonce, error = %error, "the authorization code exchange failed; nothing stored");
        pages::exchange_failure(&error)
    })?;
    let requested = grant.account.clone().unwrap_or_else(|| grant.scope.clone());
    match deps.connection.connect(grant, state.switch).await {
        Ok(ConnectOutcome::Connected { account, replaced }) => {
            let account = account.unwrap_or(requested);
            tracing::info!(nonce = %state.nonce, %account, replaced, switch = state.switch, "connected to Keap");
            Ok(pages::connected(&account).into_response())
        }
        Err(ConnectError::DifferentAccount { current, requested }) => {
            tracing::warn!(%current, %requested, "refused to replace the connection with another Keap account");
            Err(pages::different_account(&current, &requested))
        }
        Err(ConnectError::Token(error)) => {
            tracing::error!(error = %error, "could not store the new Keap connection");
            Err(pages::store_failure(&error))
        }
    }
}

/// `GET /status`: administrator only; the connection's health as JSON, never a token.
async fn status(request: &Request, deps: &OAuthDeps) -> Result<Response<Body>, Page> {
    admin_gate(request, deps, Route::Status).await?;
    let status = match deps.connection.status().await {
        Ok(status) => status,
        // Only the token source reports "not connected", and it does so as an OAuth status.
        Err(TokenError::NotConnected) => TokenState::default().status_report(SystemTime::now()),
        Err(error) => {
            tracing::error!(error = %error, "could not read the connection status");
            return Err(pages::status_unavailable(&error));
        }
    };
    let quota = match &deps.quota {
        Some(reporter) => reporter.quota_use().await,
        None => None,
    };
    Ok(pages::json(StatusCode::OK, &StatusBody { status, quota }))
}

/// The `/status` body: the connection's fields, and `quota` when known (additive).
#[derive(serde::Serialize)]
struct StatusBody {
    #[serde(flatten)]
    status: keap_relay::token::ConnectionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<QuotaUse>,
}

/// Basic auth against the app secret's `admin_password`. No password, or one shorter than
/// [`basic_auth::MIN_ADMIN_PASSWORD_CHARS`], closes the route (503) rather than opening it.
/// Every refused credential is logged with the caller's address (never what was typed) and
/// counted (`AdminLoginFailures`).
async fn admin_gate(request: &Request, deps: &OAuthDeps, route: Route) -> Result<Arc<AppSecret>, Page> {
    let secret = app_secret(deps).await.map_err(before_auth)?;
    match basic_auth::check(request.headers(), secret.admin_password.as_ref()) {
        AdminAuth::Granted => Ok(secret),
        AdminAuth::NoCredentials => Err(pages::unauthorized()),
        AdminAuth::Denied => {
            failed_login(request, deps, route);
            Err(pages::unauthorized())
        }
        AdminAuth::NotConfigured => Err(before_auth(pages::admin_password_missing())),
        AdminAuth::TooShort => Err(before_auth(pages::admin_password_too_short())),
    }
}

/// One failed administrator login: a warning with the source address and the EMF count.
fn failed_login(request: &Request, deps: &OAuthDeps, route: Route) {
    let source_ip = source_ip(request).unwrap_or_else(|| "unknown".into());
    tracing::warn!(
        source_ip = %source_ip,
        route = route.path(),
        "failed administrator login: the Basic credentials were refused"
    );
    let record = metrics::admin_login_failure_record(deps.function_name.clone(), route.path(), &source_ip);
    deps.metrics.emit(&record.to_line(SystemTime::now()));
}

/// The caller's address as API Gateway saw it (`requestContext.http.sourceIp`).
fn source_ip(request: &Request) -> Option<String> {
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.clone().filter(|ip| !ip.is_empty()),
        _ => None,
    }
}

/// A refusal answered to someone who has not shown to be the administrator: the detail goes to
/// the log (error level for the deployment's own problems), the page keeps status and code.
fn before_auth(page: Page) -> Page {
    if page.status.is_server_error() {
        tracing::error!(code = page.code, detail = %page.message, "refused before authentication");
    } else {
        tracing::warn!(code = page.code, detail = %page.message, "refused before authentication");
    }
    pages::without_detail(page)
}

async fn app_secret(deps: &OAuthDeps) -> Result<Arc<AppSecret>, Page> {
    deps.secrets
        .app_secret()
        .await
        .map_err(|error| pages::secret_unavailable(&error.to_string()))
}

/// The redirect URI and the state key, or the configuration error page (with its detail:
/// callers that answer before authentication pass it through [`before_auth`]).
fn oauth_settings(deps: &OAuthDeps, secret: &AppSecret) -> Result<(String, StateKey), Page> {
    let redirect_uri = deps.redirect_uri.clone().ok_or_else(pages::redirect_uri_missing)?;
    // The client secret is not part of the state key, but nothing works without it: say so
    // at the start rather than after the administrator approved in Keap.
    secret
        .client_secret
        .as_ref()
        .filter(|s: &&SecretString| !s.expose_secret().is_empty())
        .ok_or_else(pages::client_secret_missing)?;
    let state_key = StateKey::for_app_secret(secret).map_err(pages::state_key_unavailable)?;
    Ok((redirect_uri, state_key))
}

/// The path of the browser-binding cookie: the registered callback URL's.
fn cookie_path(deps: &OAuthDeps) -> String {
    state_cookie::path_for(deps.redirect_uri.as_deref())
}

/// When the stored pair was issued (`None`: nothing stored), for the single-use check of a state.
async fn pair_issued_at(connection: &dyn Connection) -> Result<Option<SystemTime>, Page> {
    match connection.status().await {
        Ok(status) => Ok(status.last_refresh_at),
        Err(TokenError::NotConnected) => Ok(None),
        Err(error) => Err(pages::store_failure(&error)),
    }
}

fn refused_state(error: StateError, nonce: Option<Uuid>) -> Page {
    tracing::warn!(reason = error.code(), nonce = ?nonce, "refused an OAuth callback's state");
    pages::state_refused(error)
}

fn parse_switch(value: Option<&str>) -> Result<bool, Page> {
    match value.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(_) => Err(pages::bad_switch()),
    }
}

/// The request path without the stage prefix API Gateway adds for named stages.
fn route_path(request: &Request) -> String {
    let raw = request.raw_http_path();
    let path = if raw.is_empty() { request.uri().path() } else { raw };
    let stage = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.stage.clone(),
        _ => None,
    };
    let path = match stage.as_deref() {
        Some(stage) if stage != "$default" => path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(stage))
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path),
        _ => path,
    };
    match path.trim_end_matches('/') {
        "" => "/".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keap_relay::keap::pacing::{PacingSettings, QuotaLimits};

    #[test]
    fn the_status_body_keeps_every_connection_field_and_adds_quota_only_when_known() {
        let status = TokenState::default().status_report(SystemTime::now());
        let plain = serde_json::to_value(&status).unwrap();
        let without = serde_json::to_value(StatusBody {
            status: status.clone(),
            quota: None,
        })
        .unwrap();
        assert_eq!(without, plain, "no quota: the body is exactly the connection status");
        let pacer = keap_relay::keap::pacing::Pacer::new(PacingSettings::defaults(AuthMode::OAuth));
        let with = serde_json::to_value(StatusBody {
            status,
            quota: Some(pacer.quota_use()),
        })
        .unwrap();
        for (field, value) in plain.as_object().unwrap() {
            assert_eq!(&with[field], value, "{field}");
        }
        assert_eq!(
            with["quota"]["limits"],
            serde_json::to_value(QuotaLimits::OAUTH_CLIENT).unwrap()
        );
        assert_eq!(with["quota"]["bulk_paused"], false);
    }
}
