//! The authorize page and the token endpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{RawQuery, Request, State};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

use super::{ConnectionDropped, gateway::scheme_value};
use crate::Shared;
use crate::oauth_store::{GrantType, TokenError, count_failure};
use crate::server::ConnHandle;
use crate::stats::{AuthKind, Stats};

/// Parse `a=b&c=d`; a repeated parameter is an error (RFC 6749 3.1, 3.2).
fn parse_params(raw: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for (name, value) in form_urlencoded::parse(raw) {
        if params.insert(name.to_string(), value.into_owned()).is_some() {
            return Err(format!("parameter {name} is repeated"));
        }
    }
    Ok(params)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn error_page(message: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><title>Keap sandbox: authorization error</title></head>\
         <body><h1>Authorization error</h1><p>{}</p></body></html>",
        html_escape(message)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

/// Checked authorize parameters.
struct AuthorizeRequest {
    client_id: String,
    redirect_uri: url::Url,
    redirect_uri_raw: String,
    response_type: String,
    scope: Option<String>,
    state: Option<String>,
}

/// Errors here are shown as a page: with a bad client or redirect URI there is nowhere
/// safe to redirect to.
fn check_authorize(shared: &Shared, params: &HashMap<String, String>) -> Result<AuthorizeRequest, String> {
    let client_id = params
        .get("client_id")
        .filter(|v| !v.is_empty())
        .ok_or("client_id is missing")?;
    let client = shared
        .config
        .client(client_id)
        .ok_or_else(|| format!("Unknown client_id {client_id:?}"))?;
    let redirect_uri_raw = params
        .get("redirect_uri")
        .filter(|v| !v.is_empty())
        .ok_or("redirect_uri is missing")?;
    let redirect_uri =
        url::Url::parse(redirect_uri_raw).map_err(|err| format!("redirect_uri is not a valid URL: {err}"))?;
    if !matches!(redirect_uri.scheme(), "http" | "https") {
        return Err("redirect_uri must be an http(s) URL".to_owned());
    }
    if !client.redirect_uris.is_empty() && !client.redirect_uris.iter().any(|u| u == redirect_uri_raw) {
        return Err("redirect_uri is not registered for this client".to_owned());
    }
    Ok(AuthorizeRequest {
        client_id: client_id.clone(),
        redirect_uri,
        redirect_uri_raw: redirect_uri_raw.clone(),
        response_type: params.get("response_type").cloned().unwrap_or_default(),
        scope: params.get("scope").cloned(),
        state: params.get("state").cloned(),
    })
}

fn redirect_with(mut target: url::Url, pairs: &[(&str, &str)], state: Option<&str>) -> Response {
    {
        let mut query = target.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    // Keap answers 302 Found.
    (StatusCode::FOUND, [(header::LOCATION, target.as_str().to_owned())]).into_response()
}

/// Approved: a fresh code, or an error redirect for a response type Keap does not support.
fn approve(shared: &Shared, request: &AuthorizeRequest) -> Response {
    if request.response_type != "code" {
        return redirect_with(
            request.redirect_uri.clone(),
            &[("error", "unsupported_response_type")],
            request.state.as_deref(),
        );
    }
    let code = shared
        .world()
        .oauth
        .issue_code(&shared.config, &request.client_id, &request.redirect_uri_raw);
    let scope = shared.config.scope();
    redirect_with(
        request.redirect_uri.clone(),
        &[("code", &code), ("scope", &scope)],
        request.state.as_deref(),
    )
}

/// `GET /app/oauth/authorize`
pub(crate) async fn authorize_page(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params = match parse_params(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(message) => return error_page(&message),
    };
    let request = match check_authorize(&shared, &params) {
        Ok(request) => request,
        Err(message) => return error_page(&message),
    };
    if shared.auto_approve.load(Ordering::SeqCst) {
        return approve(&shared, &request);
    }
    let hidden = |name: &str, value: Option<&str>| match value {
        Some(value) => format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            html_escape(value)
        ),
        None => String::new(),
    };
    let fields = [
        hidden("client_id", Some(&request.client_id)),
        hidden("redirect_uri", Some(&request.redirect_uri_raw)),
        hidden("response_type", Some(&request.response_type)),
        hidden("scope", request.scope.as_deref()),
        hidden("state", request.state.as_deref()),
    ]
    .concat();
    let body = format!(
        "<!doctype html><html><head><title>Keap sandbox: authorize</title></head><body>\
         <h1>Allow {client} to access {tenant}.infusionsoft.com?</h1>\
         <form method=\"post\" action=\"\">{fields}\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button> \
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
         </form></body></html>",
        client = html_escape(&request.client_id),
        tenant = html_escape(&shared.config.tenant),
    );
    Html(body).into_response()
}

/// `POST /app/oauth/authorize` (the consent form): `decision=approve|deny`.
pub(crate) async fn authorize_decision(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let params = match parse_params(&body) {
        Ok(params) => params,
        Err(message) => return error_page(&message),
    };
    let request = match check_authorize(&shared, &params) {
        Ok(request) => request,
        Err(message) => return error_page(&message),
    };
    match params.get("decision").map(String::as_str) {
        Some("approve") => approve(&shared, &request),
        Some("deny") => redirect_with(
            request.redirect_uri,
            &[("error", "access_denied")],
            request.state.as_deref(),
        ),
        _ => error_page("decision must be approve or deny"),
    }
}

fn token_error(err: &TokenError) -> Response {
    let (status, error, description): (StatusCode, &str, &str) = match err {
        TokenError::InvalidRequest(description) => (StatusCode::BAD_REQUEST, "invalid_request", description),
        TokenError::MissingClientAuth { description, .. } => (StatusCode::UNAUTHORIZED, "invalid_client", description),
        TokenError::InvalidClient => (StatusCode::BAD_REQUEST, "invalid_client", "Invalid client credentials"),
        TokenError::InvalidGrant { description, .. } => (StatusCode::BAD_REQUEST, "invalid_grant", description),
        TokenError::UnsupportedGrantType => (
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ),
    };
    let mut response = super::json(status, &json!({"error": error, "error_description": description}));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Keap\""),
        );
    }
    response
}

fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Client credentials from `Authorization: Basic`, if the header is there at all.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), TokenError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let malformed = TokenError::MissingClientAuth {
        reason: "bad_auth_header",
        description: "Malformed Authorization header: expected Basic base64(client_id:client_secret)",
    };
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| scheme_value(v, "basic"))
        .and_then(|encoded| base64::engine::general_purpose::STANDARD.decode(encoded).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|text| {
            let (id, secret) = text.split_once(':')?;
            Some((id.to_owned(), secret.to_owned()))
        });
    Some(parsed.ok_or(malformed))
}

fn authenticate_client(shared: &Shared, client_id: &str, secret: &str) -> Result<(), TokenError> {
    match shared.config.client(client_id) {
        Some(client) if client.client_secret == secret => Ok(()),
        _ => Err(TokenError::InvalidClient),
    }
}

fn required<'a>(params: &'a HashMap<String, String>, name: &str, missing: &'static str) -> Result<&'a str, TokenError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or(TokenError::InvalidRequest(missing))
}

/// `POST /token`
pub(crate) async fn token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let connection = parts.extensions.get::<ConnectInfo<ConnHandle>>().map(|c| c.0.clone());
    let body = match axum::body::to_bytes(body, 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => {
            return refuse_request(
                &shared,
                "invalid_request",
                TokenError::InvalidRequest("Request body too large or unreadable"),
                AuthKind::None,
            );
        }
    };
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    let presented = super::gateway::auth_kind(&parts.headers);
    if !is_form {
        return refuse_request(
            &shared,
            "unsupported_content_type",
            TokenError::InvalidRequest("Content-Type must be application/x-www-form-urlencoded"),
            presented,
        );
    }
    let params = match parse_params(&body) {
        Ok(params) => params,
        Err(_) => {
            return refuse_request(
                &shared,
                "invalid_request",
                TokenError::InvalidRequest("A parameter is repeated"),
                presented,
            );
        }
    };
    let auth = match presented {
        AuthKind::None if params.contains_key("client_id") || params.contains_key("client_secret") => {
            AuthKind::BodyCredentials
        }
        other => other,
    };
    let grant_type = match params.get("grant_type").map(String::as_str) {
        Some("authorization_code") => GrantType::AuthorizationCode,
        Some("refresh_token") => GrantType::RefreshToken,
        None | Some("") => {
            return refuse_request(
                &shared,
                "invalid_request",
                TokenError::InvalidRequest("grant_type is required"),
                auth,
            );
        }
        Some(_) => {
            return refuse_request(
                &shared,
                "unsupported_grant_type",
                TokenError::UnsupportedGrantType,
                auth,
            );
        }
    };
    let outcome = match grant_type {
        GrantType::AuthorizationCode => exchange_code(&shared, &params),
        GrantType::RefreshToken => refresh(&shared, &parts.headers, &params),
    };
    let mut response = match outcome {
        Ok(pair) => {
            let mut response = super::json(StatusCode::OK, &json!(pair));
            if let Ok(tenant) = HeaderValue::from_str(&shared.config.tenant) {
                response.headers_mut().insert("x-keap-tenant-id", tenant);
            }
            if grant_type == GrantType::RefreshToken
                && let Some(connection) = &connection
                && shared.faults.take_dropped_refresh()
            {
                connection.sever();
                shared.world().stats.dropped_responses += 1;
                response.extensions_mut().insert(ConnectionDropped);
                tracing::debug!("refresh applied, response dropped by fault injection");
            }
            response
        }
        Err(err) => {
            count_failure(&mut shared.world().stats, grant_type, &err);
            tracing::debug!(reason = err.reason(), "token request refused");
            token_error(&err)
        }
    };
    no_store(&mut response);
    response.extensions_mut().insert(auth);
    response
}

/// Refused before the grant type was known.
fn refuse_request(shared: &Shared, reason: &str, err: TokenError, auth: AuthKind) -> Response {
    Stats::count(&mut shared.world().stats.token_request_failures, reason);
    let mut response = token_error(&err);
    no_store(&mut response);
    response.extensions_mut().insert(auth);
    response
}

fn exchange_code(shared: &Shared, params: &HashMap<String, String>) -> Result<crate::TokenResponse, TokenError> {
    let (Some(client_id), Some(secret)) = (params.get("client_id"), params.get("client_secret")) else {
        return Err(TokenError::MissingClientAuth {
            reason: "missing_client_auth",
            description: "client_id and client_secret are required in the request body",
        });
    };
    authenticate_client(shared, client_id, secret)?;
    let code = required(params, "code", "code is required")?;
    let redirect_uri = required(params, "redirect_uri", "redirect_uri is required")?;
    let mut world = shared.world();
    let pair = world
        .oauth
        .exchange_code(&shared.config, client_id, code, redirect_uri)?;
    world.stats.code_exchanges += 1;
    Ok(pair)
}

fn refresh(
    shared: &Shared,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<crate::TokenResponse, TokenError> {
    let (client_id, secret) = basic_credentials(headers).unwrap_or(Err(TokenError::MissingClientAuth {
        reason: "missing_client_auth",
        description: "Client authentication via the Authorization: Basic header is required",
    }))?;
    authenticate_client(shared, &client_id, &secret)?;
    let refresh_token = required(params, "refresh_token", "refresh_token is required")?;
    // One lock from lookup to rotation: concurrent refreshes of one token get one winner.
    let mut world = shared.world();
    let pair = world.oauth.refresh(&shared.config, &client_id, refresh_token)?;
    world.stats.refreshes_served += 1;
    Ok(pair)
}
