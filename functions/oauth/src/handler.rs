//! The routes of the `oauth` function: `GET /oauth/start`, `GET /oauth/callback`, `GET /status`.
//!
//! [`handle`] never fails: every problem becomes a precise HTTP answer (HTML for the browser
//! routes, JSON for `/status` and unknown routes). Nothing here logs or returns a token,
//! the authorization code, the client secret or the admin password.

use std::sync::Arc;
use std::time::SystemTime;

use keap_relay::config::{AppSecret, AuthMode};
use keap_relay::oauth_state::{StateKey, VerifiedState};
use keap_relay::token::{ConnectError, ConnectOutcome, Connection, ConnectionStatus, TokenError, TokenState};
use lambda_http::http::header::{ALLOW, WWW_AUTHENTICATE};
use lambda_http::http::{HeaderValue, Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

use crate::basic_auth::{self, AdminAuth};
use crate::pages::{self, Page};
use crate::ports::{AppSecretSource, AuthorizationServer, ExchangeError};

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

/// How problems are rendered: pages for the browser routes, JSON for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Json,
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
        let mut response = pages::json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{} is not allowed here; use GET", request.method()),
        );
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match route {
        Route::Start => start(&request, deps).await,
        Route::Callback => callback(&request, deps).await,
        Route::Status => status(&request, deps).await,
    }
}

/// `GET /oauth/start[?switch=1]`: administrator only; 302 to Keap's authorize page.
async fn start(request: &Request, deps: &OAuthDeps) -> Response<Body> {
    let secret = match admin_gate(request, deps, Format::Html).await {
        Ok(secret) => secret,
        Err(response) => return response,
    };
    if deps.mode == AuthMode::ApiKey {
        return oauth_not_used().into_response();
    }
    let switch = match parse_switch(request.query_string_parameters().first("switch")) {
        Ok(switch) => switch,
        Err(page) => return page.into_response(),
    };
    let (redirect_uri, state_key) = match oauth_settings(deps, &secret) {
        Ok(settings) => settings,
        Err(page) => return page.into_response(),
    };
    let state = state_key.issue(&redirect_uri, switch, SystemTime::now());
    match deps.keap.authorize_url(&redirect_uri, &state.value).await {
        Ok(url) => {
            tracing::info!(nonce = %state.nonce, switch, "sending the administrator to Keap's authorize page");
            pages::redirect(&url)
        }
        Err(error) => exchange_failure(&error).into_response(),
    }
}

/// `GET /oauth/callback?code&state&scope` (or `?error=access_denied&state`).
async fn callback(request: &Request, deps: &OAuthDeps) -> Response<Body> {
    if deps.mode == AuthMode::ApiKey {
        return oauth_not_used().into_response();
    }
    let query = request.query_string_parameters();
    if let Some(error) = query.first("error") {
        return keap_declined(error, query.first("error_description")).into_response();
    }
    let secret = match deps.secrets.app_secret().await {
        Ok(secret) => secret,
        Err(error) => return secret_unavailable(&error.to_string()).into_response(),
    };
    let (redirect_uri, state_key) = match oauth_settings(deps, &secret) {
        Ok(settings) => settings,
        Err(page) => return page.into_response(),
    };
    let state = match state_key.verify(query.first("state"), &redirect_uri, SystemTime::now()) {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(reason = error.code(), "refused an OAuth callback: bad state");
            return Page::new(StatusCode::BAD_REQUEST, error.code(), "This sign-in link is not valid", error.to_string())
                .with_link("start", "Start again")
                .into_response();
        }
    };
    if let Err(page) = refuse_used_state(&state, deps.connection.as_ref()).await {
        return page.into_response();
    }
    let Some(code) = query.first("code").filter(|code| !code.trim().is_empty()) else {
        return Page::new(
            StatusCode::BAD_REQUEST,
            "code_missing",
            "No authorization code",
            "Keap's answer carries no authorization code, so there is nothing to connect.",
        )
        .with_link("start", "Start again")
        .into_response();
    };
    let grant = match deps.keap.exchange_code(code, &redirect_uri).await {
        Ok(grant) => grant,
        Err(error) => {
            tracing::warn!(nonce = %state.nonce, error = %error, "the authorization code exchange failed; nothing stored");
            return exchange_failure(&error).into_response();
        }
    };
    let requested = grant.account.clone().unwrap_or_else(|| grant.scope.clone());
    match deps.connection.connect(grant, state.switch).await {
        Ok(ConnectOutcome::Connected { account, replaced }) => {
            let account = account.unwrap_or(requested);
            tracing::info!(nonce = %state.nonce, %account, replaced, switch = state.switch, "connected to Keap");
            Page::new(
                StatusCode::OK,
                "connected",
                "Connected to Keap",
                format!("keap-relay is now connected to the Keap account {account}. You can close this page."),
            )
            .into_response()
        }
        Err(ConnectError::DifferentAccount { current, requested }) => {
            tracing::warn!(%current, %requested, "refused to replace the connection with another Keap account");
            Page::new(
                StatusCode::CONFLICT,
                "different_account",
                "Already connected to another Keap account",
                format!(
                    "keap-relay is connected to the Keap account {current}, but you signed in to {requested}. \
                     Nothing was changed. To replace the connection, start again with the switch option."
                ),
            )
            .with_link("start?switch=1", "Switch to the other account")
            .into_response()
        }
        Err(ConnectError::Token(error)) => {
            tracing::error!(error = %error, "could not store the new Keap connection");
            store_failure(&error).into_response()
        }
    }
}

/// `GET /status`: administrator only; the connection's health as JSON, never a token.
async fn status(request: &Request, deps: &OAuthDeps) -> Response<Body> {
    if let Err(response) = admin_gate(request, deps, Format::Json).await {
        return response;
    }
    match deps.connection.status().await {
        Ok(status) => pages::json(StatusCode::OK, &status),
        // Only the token source reports "not connected", and it does so as an OAuth status.
        Err(TokenError::NotConnected) => pages::json(StatusCode::OK, &TokenState::default().status_report(SystemTime::now())),
        Err(error) => {
            tracing::error!(error = %error, "could not read the connection status");
            pages::json_error(StatusCode::SERVICE_UNAVAILABLE, "status_unavailable", &error.to_string())
        }
    }
}

/// Basic auth against the app secret's `admin_password`. No password configured closes
/// the route (503) rather than opening it.
async fn admin_gate(request: &Request, deps: &OAuthDeps, format: Format) -> Result<Arc<AppSecret>, Response<Body>> {
    let secret = deps
        .secrets
        .app_secret()
        .await
        .map_err(|error| respond(secret_unavailable(&error.to_string()), format))?;
    match basic_auth::check(request.headers(), secret.admin_password.as_ref()) {
        AdminAuth::Granted => Ok(secret),
        AdminAuth::NotConfigured => Err(respond(
            Page::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin_password_missing",
                "Configuration error",
                "The app secret has no admin_password, so the administrator routes stay closed. \
                 Add admin_password to the app secret.",
            ),
            format,
        )),
        AdminAuth::Denied => {
            let mut response = respond(
                Page::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Sign-in required",
                    "This page is for the keap-relay administrator: sign in with the admin password.",
                ),
                format,
            );
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(basic_auth::CHALLENGE));
            Err(response)
        }
    }
}

fn respond(page: Page, format: Format) -> Response<Body> {
    match format {
        Format::Html => page.into_response(),
        Format::Json => pages::json_error(page.status, page.code, &page.message),
    }
}

/// The redirect URI and the state key, or the configuration error page.
fn oauth_settings(deps: &OAuthDeps, secret: &AppSecret) -> Result<(String, StateKey), Page> {
    let config_error = |code, message: &str| Page::new(StatusCode::SERVICE_UNAVAILABLE, code, "Configuration error", message);
    let redirect_uri = deps
        .redirect_uri
        .clone()
        .ok_or_else(|| config_error("redirect_uri_missing", "KEAP_REDIRECT_URI is not set for this function."))?;
    let client_secret = secret
        .client_secret
        .as_ref()
        .filter(|s| !keap_relay::ExposeSecret::expose_secret(*s).is_empty())
        .ok_or_else(|| config_error("client_secret_missing", "The app secret has no client_secret, which OAuth mode needs."))?;
    Ok((redirect_uri, StateKey::derive(client_secret)))
}

/// A state is single use. Lambda copies share no memory and `/oauth/start` stores nothing, so
/// instead of a list of used nonces this leans on the stored pair: completing a state stores a
/// pair whose issue time (`last_refresh_at`, set by every connect and refresh) is after the
/// state's, so any later use of the same state finds a newer pair and is refused. A rotation
/// during the minutes of a sign-in refuses the state as well; starting again fixes that.
/// Keap's authorization codes are single use on top of this.
async fn refuse_used_state(state: &VerifiedState, connection: &dyn Connection) -> Result<(), Page> {
    let status = match connection.status().await {
        Ok(status) => status,
        Err(TokenError::NotConnected) => return Ok(()),
        Err(error) => return Err(store_failure(&error)),
    };
    if state_predates_pair(state, &status) {
        tracing::warn!(nonce = %state.nonce, "refused an OAuth callback: state already used");
        return Err(Page::new(
            StatusCode::BAD_REQUEST,
            "state_reused",
            "This sign-in link was already used",
            "This sign-in link was already used, or the connection changed after it was issued. Nothing was changed.",
        )
        .with_link("start", "Start again"));
    }
    Ok(())
}

/// Both times have millisecond precision; a state issued in the same millisecond as the pair
/// counts as newer (a real sign-in takes seconds between `/oauth/start` and the callback).
fn state_predates_pair(state: &VerifiedState, status: &ConnectionStatus) -> bool {
    status.last_refresh_at.is_some_and(|pair_issued_at| state.issued_at < pair_issued_at)
}

fn parse_switch(value: Option<&str>) -> Result<bool, Page> {
    match value.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(_) => Err(Page::new(
            StatusCode::BAD_REQUEST,
            "bad_switch",
            "Invalid switch option",
            "The switch parameter must be 1 (replace a connection to another Keap account) or 0.",
        )),
    }
}

fn keap_declined(error: &str, description: Option<&str>) -> Page {
    if error == "access_denied" {
        tracing::info!("the administrator declined access in Keap");
        return Page::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "Access was declined",
            "Access was declined in Keap, so nothing was connected or changed.",
        )
        .with_link("start", "Start again");
    }
    tracing::warn!(%error, "Keap answered the authorization with an error");
    let detail = description.map(|d| format!(": {d}")).unwrap_or_default();
    Page::new(
        StatusCode::BAD_REQUEST,
        "keap_error",
        "Keap reported an error",
        format!("Keap did not authorize keap-relay ({error}{detail}). Nothing was changed."),
    )
    .with_link("start", "Start again")
}

fn exchange_failure(error: &ExchangeError) -> Page {
    match error {
        ExchangeError::CodeRejected { .. } => Page::new(
            StatusCode::BAD_REQUEST,
            "code_rejected",
            "Keap refused the authorization code",
            format!(
                "{error}. Codes work once and only for a few minutes, and only with the registered \
                 redirect URI. Nothing was stored."
            ),
        )
        .with_link("start", "Start again"),
        ExchangeError::ClientRejected(_) => Page::new(
            StatusCode::BAD_GATEWAY,
            "client_rejected",
            "Keap refused this app",
            format!("{error}. Check client_id and client_secret in the app secret. Nothing was stored."),
        ),
        ExchangeError::Unavailable(_) => Page::new(
            StatusCode::BAD_GATEWAY,
            "keap_unavailable",
            "Keap is not answering",
            format!("{error}. Nothing was stored; try again in a minute."),
        )
        .with_link("start", "Start again"),
        ExchangeError::Misconfigured(_) => {
            Page::new(StatusCode::SERVICE_UNAVAILABLE, "oauth_misconfigured", "Configuration error", error.to_string())
        }
    }
}

fn store_failure(error: &TokenError) -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "Could not save the connection",
        format!("{error}. Nothing was changed; start again in a minute."),
    )
    .with_link("start", "Start again")
}

fn secret_unavailable(detail: &str) -> Page {
    Page::new(StatusCode::SERVICE_UNAVAILABLE, "app_secret_unavailable", "Configuration error", detail)
}

fn oauth_not_used() -> Page {
    Page::new(
        StatusCode::CONFLICT,
        "oauth_not_used",
        "OAuth is not used",
        "This deployment connects to Keap with an API key (KEAP_AUTH_MODE=api-key), so there is \
         nothing to authorize. Set KEAP_AUTH_MODE=oauth to use OAuth instead.",
    )
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
