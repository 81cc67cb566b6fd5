//! The routes of the `oauth` function: `GET /oauth/start`, `GET /oauth/callback`, `GET /status`.
//!
//! [`handle`] never fails: every problem becomes a precise HTTP answer (HTML for the browser
//! routes, JSON for `/status` and unknown routes). Each route stops at its first problem with
//! `?` and the [`Page`] that explains it, which [`handle`] renders; the pages and their copy
//! are in [`crate::pages`]. Nothing here logs or returns a token, the authorization code, the
//! client secret or the admin password.

use std::sync::Arc;
use std::time::SystemTime;

use keap_relay::config::{AppSecret, AuthMode};
use keap_relay::oauth_state::{StateError, StateKey};
use keap_relay::token::{ConnectError, ConnectOutcome, Connection, TokenError, TokenState};
use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use uuid::Uuid;

use crate::basic_auth::{self, AdminAuth};
use crate::pages::{self, Page};
use crate::ports::{AppSecretSource, AuthorizationServer};

/// Built once per cold start in `main.rs`; tests build it with doubles.
pub struct OAuthDeps {
    pub mode: AuthMode,
    /// `KEAP_REDIRECT_URI`: the callback URL registered with Keap.
    pub redirect_uri: Option<String>,
    pub secrets: Arc<dyn AppSecretSource>,
    pub keap: Arc<dyn AuthorizationServer>,
    pub connection: Arc<dyn Connection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Start,
    Callback,
    Status,
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
        Route::Callback => callback(&request, deps).await.unwrap_or_else(Page::into_response),
        Route::Status => status(&request, deps).await.unwrap_or_else(Page::into_json_response),
    }
}

/// `GET /oauth/start[?switch=1]`: administrator only; 302 to Keap's authorize page.
async fn start(request: &Request, deps: &OAuthDeps) -> Result<Response<Body>, Page> {
    let secret = admin_gate(request, deps).await?;
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
    tracing::info!(nonce = %state.nonce, switch, "sending the administrator to Keap's authorize page");
    Ok(pages::redirect(&url))
}

/// `GET /oauth/callback?code&state&scope` (or `?error=access_denied&state`).
async fn callback(request: &Request, deps: &OAuthDeps) -> Result<Response<Body>, Page> {
    if deps.mode == AuthMode::ApiKey {
        return Err(pages::oauth_not_used());
    }
    let query = request.query_string_parameters();
    if let Some(error) = query.first("error") {
        if error == "access_denied" {
            tracing::info!("the administrator declined access in Keap");
        } else {
            tracing::warn!(%error, "Keap answered the authorization with an error");
        }
        return Err(pages::keap_declined(error, query.first("error_description")));
    }
    let secret = app_secret(deps).await?;
    let (redirect_uri, state_key) = oauth_settings(deps, &secret)?;
    let state = state_key
        .verify(query.first("state"), &redirect_uri, SystemTime::now())
        .map_err(|error| refused_state(error, None))?;
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
    admin_gate(request, deps).await?;
    let status = match deps.connection.status().await {
        Ok(status) => status,
        // Only the token source reports "not connected", and it does so as an OAuth status.
        Err(TokenError::NotConnected) => TokenState::default().status_report(SystemTime::now()),
        Err(error) => {
            tracing::error!(error = %error, "could not read the connection status");
            return Err(pages::status_unavailable(&error));
        }
    };
    Ok(pages::json(StatusCode::OK, &status))
}

/// Basic auth against the app secret's `admin_password`. No password configured closes
/// the route (503) rather than opening it.
async fn admin_gate(request: &Request, deps: &OAuthDeps) -> Result<Arc<AppSecret>, Page> {
    let secret = app_secret(deps).await?;
    match basic_auth::check(request.headers(), secret.admin_password.as_ref()) {
        AdminAuth::Granted => Ok(secret),
        AdminAuth::NotConfigured => Err(pages::admin_password_missing()),
        AdminAuth::Denied => Err(pages::unauthorized()),
    }
}

async fn app_secret(deps: &OAuthDeps) -> Result<Arc<AppSecret>, Page> {
    deps.secrets
        .app_secret()
        .await
        .map_err(|error| pages::secret_unavailable(&error.to_string()))
}

/// The redirect URI and the state key, or the configuration error page.
fn oauth_settings(deps: &OAuthDeps, secret: &AppSecret) -> Result<(String, StateKey), Page> {
    let redirect_uri = deps.redirect_uri.clone().ok_or_else(pages::redirect_uri_missing)?;
    let client_secret = secret
        .client_secret
        .as_ref()
        .filter(|s| !keap_relay::ExposeSecret::expose_secret(*s).is_empty())
        .ok_or_else(pages::client_secret_missing)?;
    Ok((redirect_uri, StateKey::derive(client_secret)))
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
