//! What Keap's API gateway does before a request reaches the CRM: check the credential
//! (even for unknown paths), enforce quotas, and, here, inject faults. Also the call log.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

use super::{CONTROL_PREFIX, ConnectionDropped, REST_PREFIX, TOKEN_PATH};
use crate::Shared;
use crate::crm::ApiVersion;
use crate::oauth_store::Credential;
use crate::quota::{QuotaReport, WindowReport};
use crate::stats::{AuthKind, CallRecord};

pub(crate) async fn gateway(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path.starts_with(CONTROL_PREFIX) {
        return next.run(request).await;
    }
    let method = request.method().to_string();
    let presented = auth_kind(request.headers());
    let response = if path == REST_PREFIX || path.starts_with(&format!("{REST_PREFIX}/")) {
        rest_gate(&shared, request, next).await
    } else if path == TOKEN_PATH {
        token_gate(&shared, request, next).await
    } else {
        next.run(request).await
    };
    // The token endpoint knows about body credentials, which headers cannot show.
    let auth = response.extensions().get::<AuthKind>().copied().unwrap_or(presented);
    let status = if response.extensions().get::<ConnectionDropped>().is_some() {
        0
    } else {
        response.status().as_u16()
    };
    shared.world().stats.calls.push(CallRecord {
        method,
        path,
        auth,
        status,
    });
    response
}

/// The credential style a request's headers show.
pub(crate) fn auth_kind(headers: &HeaderMap) -> AuthKind {
    if headers.contains_key("x-keap-api-key") {
        return AuthKind::ApiKey;
    }
    match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(value) if scheme_value(value, "bearer").is_some() => AuthKind::Bearer,
        Some(value) if scheme_value(value, "basic").is_some() => AuthKind::Basic,
        _ => AuthKind::None,
    }
}

/// `Scheme value` with a case-insensitive scheme; the trimmed value.
pub(crate) fn scheme_value<'a>(header_value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, value) = header_value.trim().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| value.trim())
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<Credential> {
    let api_keys = &shared.config.api_keys;
    if let Some(key) = headers.get("x-keap-api-key") {
        let key = key.to_str().ok()?.trim();
        return api_keys
            .iter()
            .any(|k| k == key)
            .then(|| Credential::ApiKey(key.to_owned()));
    }
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = scheme_value(authorization, "bearer")?;
    if api_keys.iter().any(|k| k == token) {
        return Some(Credential::ApiKey(token.to_owned()));
    }
    shared
        .world()
        .oauth
        .check_access_token(token)
        .map(|client| Credential::OAuthClient(client.to_owned()))
}

async fn rest_gate(shared: &Shared, mut request: Request, next: Next) -> Response {
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(credential) = authenticate(shared, request.headers()) else {
        shared.world().stats.unauthorized += 1;
        return invalid_access_token();
    };
    if let Some(retry_after) = shared.faults.take_throttle() {
        shared.world().stats.throttled += 1;
        return throttled(&QuotaReport::keap_default(&credential), retry_after.map(u64::from));
    }
    let quota = match shared.config.rate_limit {
        None => None,
        Some(limit) => {
            let mut world = shared.world();
            let now = std::time::Instant::now();
            match world
                .quotas
                .admit(&credential, limit, now, std::time::SystemTime::now())
            {
                Ok(report) => Some(report),
                Err(refusal) => {
                    world.stats.throttled += 1;
                    return throttled(&refusal.report, Some(refusal.exhausted.retry_after_secs()));
                }
            }
        }
    };
    request.extensions_mut().insert(credential);
    let send = is_send(request.method(), request.uri().path());
    let forced = send && shared.faults.take_failing_send();
    if let Some(status) = shared.faults.roll_server_error().or(forced.then_some(502)) {
        shared.world().stats.server_errors += 1;
        // An upstream failure after the work was done: the email went out, the answer did not.
        if send && shared.faults.roll_sent_despite_5xx() {
            shared.world().stats.sent_despite_5xx += 1;
            let _ = next.run(request).await;
        }
        return gateway_error(status);
    }
    let mut response = next.run(request).await;
    if let Some(report) = quota {
        quota_headers(response.headers_mut(), &report);
    }
    response
}

/// Calls that send an email or achieve a goal (the ones whose 5xx leaves the caller unsure).
fn is_send(method: &http::Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix(REST_PREFIX) else {
        return false;
    };
    method == http::Method::POST
        && (matches!(
            rest,
            "/v1/emails/queue" | "/v2/emails:send" | "/v2/emails/templates:send" | "/v2/automations/goals/achieve"
        ) || rest.starts_with("/v1/campaigns/goals/"))
}

async fn token_gate(shared: &Shared, request: Request, next: Next) -> Response {
    let latency = shared.faults.token_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = shared.faults.roll_server_error() {
        shared.world().stats.server_errors += 1;
        return gateway_error(status);
    }
    next.run(request).await
}

/// Keap's gateway answer for a missing, unknown, expired or revoked credential.
pub(crate) fn invalid_access_token() -> Response {
    super::json(
        StatusCode::UNAUTHORIZED,
        &json!({"fault": {"faultstring": "Invalid Access Token",
                "detail": {"errorcode": "keymanagement.service.invalid_access_token"}}}),
    )
}

fn throttled(report: &QuotaReport, retry_after: Option<u64>) -> Response {
    let mut response = super::json(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({"code": "429", "message": "Quota Exceeded", "status": "Request Throttled", "details": null}),
    );
    quota_headers(response.headers_mut(), report);
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// `x-keap-product-throttle-*` for the spike window; `x-keap-product-quota-*` for the minute
/// and the day, pipe-separated when both are limited (as Keap sends `minute|day`).
fn quota_headers(headers: &mut HeaderMap, report: &QuotaReport) {
    let groups = [
        (
            "x-keap-product-throttle",
            report.throttle.iter().copied().collect::<Vec<_>>(),
        ),
        ("x-keap-product-quota", report.quota.clone()),
    ];
    for (prefix, windows) in groups {
        if windows.is_empty() {
            continue;
        }
        let joined = |f: &dyn Fn(&WindowReport) -> String| windows.iter().map(f).collect::<Vec<_>>().join("|");
        let pairs = [
            ("limit", joined(&|w| w.limit.to_string())),
            ("time-unit", joined(&|w| w.time_unit.to_owned())),
            ("interval", joined(&|_| "1".to_owned())),
            ("available", joined(&|w| w.available.to_string())),
            ("used", joined(&|w| w.used.to_string())),
            ("expiry-time", joined(&|w| w.expiry_epoch_ms().to_string())),
        ];
        for (name, value) in pairs {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(format!("{prefix}-{name}").as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
    }
}

/// An injected upstream failure, shaped like the gateway's own faults.
pub(crate) fn gateway_error(status: u16) -> Response {
    let (status, faultstring, errorcode) = if status == 502 {
        (
            StatusCode::BAD_GATEWAY,
            "Unexpected EOF at target",
            "messaging.adaptors.http.flow.UnexpectedEOFAtTarget",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "The Service is temporarily unavailable",
            "messaging.adaptors.http.flow.ServiceUnavailable",
        )
    };
    super::json(
        status,
        &json!({"fault": {"faultstring": faultstring, "detail": {"errorcode": errorcode}}}),
    )
}

/// An authenticated call to a path the sandbox does not serve.
pub(crate) async fn unknown_rest_path(request: Request) -> Response {
    let version = if request.uri().path().starts_with("/v2/") {
        ApiVersion::V2
    } else {
        ApiVersion::V1
    };
    super::ApiError::new(version, StatusCode::NOT_FOUND, "Resource not found").into_response()
}
