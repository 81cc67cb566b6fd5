//! `POST /form` and `POST /form/{form_name}` (and their `OPTIONS` preflight): a team's own
//! HTML form or `fetch()` posts here directly; no signature, so the abuse controls stand in
//! for it. Checks run cheapest first, and nothing reaches Keap unless all pass:
//!
//! 405 method, 404 unknown form, 403 origin (`Origin`, else `Referer`), 429 per-address limit,
//! 413 size, 415 content type, 400 body; a filled honeypot is answered as a success with
//! nothing sent; then the human check (400 missing or failed, 503 provider unavailable); then
//! the signup body is built from the fields and takes the path of `POST /signup`
//! ([`crate::handler::deliver`]): upsert, tags, welcome, queue when Keap cannot take it now.

pub mod answer;
pub mod fields;
pub mod human_check;
pub mod limit;

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::forms::{FormsConfig, is_form_name, request_origin};
use keap_relay::http_edge::{self, Unavailable};
use keap_relay::metrics::{EmfRecord, MetricsSink, NAMESPACE, Unit};
use keap_relay::signup::Signup;
use lambda_http::http::{Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

use crate::handler::{Delivery, MAX_BODY_BYTES, SignupDeps, deliver};
use answer::{Caller, Refusal};
use fields::{Encoding, Fields};
use human_check::HumanCheckError;
use limit::IpLimiter;

/// Count 1 per form post refused as abuse, dimension `Reason`: `honeypot` (answered as a
/// success), `origin`, `captcha`, `rate_limit`.
pub const FORM_POSTS_BLOCKED: &str = "FormPostsBlocked";

/// What the form route needs besides the signup path.
#[async_trait]
pub trait FormDeps: SignupDeps {
    fn forms(&self) -> &FormsConfig;
    /// `captcha_secret` from the app secret.
    async fn captcha_secret(&self) -> Result<SecretString, Unavailable>;
    /// For the provider's siteverify.
    fn http(&self) -> &reqwest::Client;
    fn limiter(&self) -> &IpLimiter;
    fn metrics(&self) -> &dyn MetricsSink;
}

/// True for the paths this module answers: `/form` and `/form/{anything}` (after an optional
/// stage prefix).
pub fn is_form_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').rsplit('/').take(2).collect();
    matches!(segments.as_slice(), ["form", ..] | [_, "form"])
}

/// `Ok(None)` for `/form`, `Ok(Some(name))` for `/form/{name}`; `Err` for anything else.
fn form_name(path: &str) -> Result<Option<&str>, ()> {
    let trimmed = path.trim_end_matches('/');
    let mut segments = trimmed.rsplit('/');
    match (segments.next(), segments.next()) {
        (Some("form"), _) => Ok(None),
        (Some(name), Some("form")) if is_form_name(name) => Ok(Some(name)),
        _ => Err(()),
    }
}

/// Answers one request to the form route. Never fails: every outcome is an HTTP answer.
pub async fn handle<D: FormDeps + ?Sized>(request: &Request, deps: &D) -> Response<Body> {
    let caller = Caller::of(request.headers());
    if request.method() != Method::POST && request.method() != Method::OPTIONS {
        return http_edge::method_not_allowed(request.method(), "POST, OPTIONS").map(Body::from);
    }
    let unknown = || {
        let refusal = Refusal::new(StatusCode::NOT_FOUND, "unknown_form", "There is no such form here.");
        answer::refusal(caller, None, &refusal.not_to_error_page())
    };
    let Ok(name) = form_name(request.uri().path()) else {
        return unknown();
    };
    let Some(form) = deps.forms().form(name) else {
        return unknown();
    };

    let header = |name: header::HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
    let origin = request_origin(header(header::ORIGIN), header(header::REFERER));
    if !form.allowed_origins.allows(origin.as_deref()) {
        tracing::info!(
            form = name.unwrap_or("default"),
            "form post from an origin that is not allowed"
        );
        blocked(deps, "origin");
        let refusal = Refusal::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "This form does not accept posts from this site.",
        );
        return answer::refusal(caller, None, &refusal.not_to_error_page());
    }
    let cors = |response| answer::allow_origin(response, origin.as_deref());
    if request.method() == Method::OPTIONS {
        tracing::info!(form = name.unwrap_or("default"), "CORS preflight allowed");
        return cors(answer::preflight());
    }
    let refuse = |refusal: Refusal| cors(answer::refusal(caller, form.error_url.as_ref(), &refusal));

    let ip = source_ip(request);
    if let Some(ip) = ip
        && let Err(wait) = deps.limiter().check(ip, Instant::now())
    {
        tracing::info!(%ip, "form posts over the per-address limit");
        blocked(deps, "rate_limit");
        return refuse(
            Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many attempts from this address; try again in a minute.",
            )
            .retry_after(wait),
        );
    }

    let body: &[u8] = request.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        let message = format!("The form is larger than {} KiB.", MAX_BODY_BYTES / 1024);
        return refuse(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            message,
        ));
    }
    let Some(encoding) = Encoding::of(request.headers()) else {
        return refuse(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "The form must be sent as application/x-www-form-urlencoded, multipart/form-data or application/json.",
        ));
    };
    let fields = match Fields::decode(&encoding, body).await {
        Ok(fields) => fields,
        Err(bad) => return refuse(Refusal::new(StatusCode::BAD_REQUEST, bad.code(), bad.to_string())),
    };

    let forms = deps.forms();
    if fields.get(&forms.honeypot_field).is_some() {
        // Answered exactly as a success, so the sender learns nothing.
        tracing::info!(
            form = name.unwrap_or("default"),
            "honeypot filled: answered as a success, nothing sent"
        );
        blocked(deps, "honeypot");
        return cors(answer::success(caller, form.thank_you_url.as_ref()));
    }

    if let Some(check) = &forms.human_check {
        let outcome = match fields.get(check.provider.token_field()) {
            None if check.required => Err(HumanCheckError::Missing),
            None => Ok(()),
            Some(token) => match deps.captcha_secret().await {
                Err(problem) => Err(HumanCheckError::Unavailable { detail: problem.0 }),
                Ok(secret) => {
                    let remote_ip = ip.map(|ip| ip.to_string());
                    human_check::verify(deps.http(), check, &secret, token, remote_ip.as_deref()).await
                }
            },
        };
        if let Err(problem) = outcome {
            let refusal = Refusal::new(StatusCode::BAD_REQUEST, problem.code(), problem.to_string());
            return refuse(match problem {
                HumanCheckError::Unavailable { detail } => {
                    tracing::error!(provider = check.provider.name(), %detail, "the human check could not be verified");
                    Refusal {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        ..refusal
                    }
                    .retry_after(std::time::Duration::from_secs(30))
                }
                HumanCheckError::Failed { provider_codes } => {
                    tracing::info!(provider = check.provider.name(), codes = ?provider_codes, "human check failed");
                    blocked(deps, "captcha");
                    refusal
                }
                HumanCheckError::Missing => {
                    tracing::info!(provider = check.provider.name(), "human check missing");
                    blocked(deps, "captcha");
                    refusal
                }
            });
        }
    }

    let recorded_ip = forms.record_ip.then(|| ip.map(|ip| ip.to_string())).flatten();
    let signup = match fields::signup_body(&fields, form, recorded_ip.as_deref()).map(|body| Signup::from_object(&body))
    {
        Ok(Ok(signup)) => signup,
        Ok(Err(invalid)) => {
            tracing::info!(code = invalid.code(), "invalid form post");
            return refuse(Refusal::new(
                StatusCode::BAD_REQUEST,
                invalid.code(),
                invalid.to_string(),
            ));
        }
        Err(bad) => return refuse(Refusal::new(StatusCode::BAD_REQUEST, bad.code(), bad.to_string())),
    };

    match deliver(request, signup, deps).await {
        Delivery::Sent(_) | Delivery::Queued { .. } => cors(answer::success(caller, form.thank_you_url.as_ref())),
        // Which field this deployment does not take (an unknown custom field, a value of the
        // wrong type, a field off the allow-list); escaped like every refusal.
        Delivery::Invalid { code, message } => refuse(Refusal::new(StatusCode::BAD_REQUEST, code, message)),
        // Keap's message may quote the submitted values: logged by `deliver`, not shown.
        Delivery::Rejected { .. } => refuse(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "keap_rejected",
            "These details could not be accepted; please check them.",
        )),
        Delivery::Unavailable { code, retry_after, .. } => refuse(
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "The form cannot be received right now; please try again later.",
            )
            .retry_after(retry_after),
        ),
    }
}

/// The caller's address as API Gateway saw it (`requestContext.http.sourceIp`).
fn source_ip(request: &Request) -> Option<IpAddr> {
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.as_deref()?.trim().parse().ok(),
        _ => None,
    }
}

fn blocked<D: FormDeps + ?Sized>(deps: &D, reason: &'static str) {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "signup".into());
    let record = EmfRecord::new(NAMESPACE)
        .dimension("FunctionName", function)
        .dimension("Reason", reason)
        .metric(FORM_POSTS_BLOCKED, Unit::Count, 1.0);
    deps.metrics().emit(&record.to_line(SystemTime::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_paths_and_names() {
        assert_eq!(form_name("/form"), Ok(None));
        assert_eq!(form_name("/form/"), Ok(None));
        assert_eq!(form_name("/prod/form"), Ok(None));
        assert_eq!(form_name("/form/contact"), Ok(Some("contact")));
        assert_eq!(form_name("/form/contact-us_2/"), Ok(Some("contact-us_2")));
        assert_eq!(form_name("/form/a%20b"), Err(()));
        assert_eq!(form_name("/form/a/b"), Err(()));
        assert_eq!(form_name("/signup"), Err(()));
        assert!(is_form_path("/form") && is_form_path("/form/x") && is_form_path("/prod/form/x"));
        assert!(!is_form_path("/signup") && !is_form_path("/formx") && !is_form_path("/form/a/b"));
    }
}
