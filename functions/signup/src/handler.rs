//! `POST /signup` (API Gateway HTTP API, payload v2).
//!
//! Checks run cheapest first and each has its own answer: 405 method, 413 size, 415 content
//! type, 401 signature, 400 body; then the signup goes to Keap (201/200), names a custom field,
//! lead source, field or tag Keap or the deployment does not take (400), is refused by Keap
//! (422), or, when Keap cannot take it now, is queued (202) or answered 503 with `Retry-After`.
//! No input leads to a 500 or a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::events::{self, Event, EventSink};
use keap_relay::http_edge::{self, with_retry_after};
use keap_relay::metrics;
use keap_relay::signup::{
    Claim, QueuedSignup, RecordedAnswer, ReplayRecords, Signup, SignupError, SignupOutcome, SignupQueue, SignupService,
    signature,
};
use lambda_http::http::{HeaderMap, Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde_json::json;

/// Why [`SignupDeps::signing_key`] failed: the shared [`Unavailable`](keap_relay::http_edge::Unavailable), answered 503.
pub use keap_relay::http_edge::Unavailable as SigningKeyUnavailable;

/// Largest accepted body (after API Gateway's Base64 is undone).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `Retry-After` when Keap is failing and said nothing more precise.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(30);
/// `Retry-After` when Keap is not connected: a person has to act first.
const NOT_CONNECTED_RETRY_AFTER: Duration = Duration::from_secs(300);
/// API Gateway gives up on an integration after 30 s, whatever the function's own timeout.
const GATEWAY_LIMIT: Duration = Duration::from_secs(29);
/// Kept back from the deadline to queue the signup and answer.
const DEADLINE_RESERVE: Duration = Duration::from_millis(2500);

/// What the handler needs; the function wires the real ones, tests their own.
#[async_trait]
pub trait SignupDeps: Send + Sync {
    /// `signup_signing_key` from the app secret (loaded on first use, then cached).
    async fn signing_key(&self) -> Result<SecretString, SigningKeyUnavailable>;
    fn service(&self) -> &SignupService;
    /// Where signups wait when Keap cannot take them now (`SIGNUP_QUEUE_URL`).
    fn queue(&self) -> Option<&dyn SignupQueue>;
    /// The answers given to signed signups, for their replays (`SIGNUP_REPLAY_TABLE`).
    fn replays(&self) -> &dyn ReplayRecords;
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    /// Where events to the product go (`EVENTS_QUEUE_URL`); none: no events.
    fn events(&self) -> Option<&dyn EventSink> {
        None
    }
}

/// Answers one request. Never fails: every outcome is an HTTP answer.
pub async fn handle<D: SignupDeps + ?Sized>(request: &Request, deps: &D) -> Response<Body> {
    if request.method() != Method::POST {
        return http_edge::method_not_allowed(request.method(), "POST").map(Body::from);
    }
    let body: &[u8] = request.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        let message = format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024);
        return error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &message);
    }
    if !is_json(request.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be application/json",
        );
    }

    let key = match deps.signing_key().await {
        Ok(key) => key,
        Err(problem) => {
            tracing::error!(error = %problem, "the signup signing key is unavailable: cannot check signatures");
            let message = "the signup signing key could not be loaded; try again later";
            return with_retry_after(
                error(StatusCode::SERVICE_UNAVAILABLE, "signing_key_unavailable", message),
                UNAVAILABLE_RETRY_AFTER,
            );
        }
    };
    let header = request
        .headers()
        .get(signature::HEADER)
        .map(|v| v.to_str().unwrap_or("not-ascii"));
    let verified = match signature::verify_request(&key, header, body, deps.now()) {
        Ok(verified) => verified,
        Err(problem) => {
            tracing::info!(code = problem.code(), "signature refused");
            return error(StatusCode::UNAUTHORIZED, problem.code(), &problem.to_string());
        }
    };

    let signup = match Signup::from_json(body) {
        Ok(signup) => signup,
        Err(invalid) => {
            tracing::info!(code = invalid.code(), "invalid signup body");
            return error(StatusCode::BAD_REQUEST, invalid.code(), &invalid.to_string());
        }
    };

    // A signed request may arrive again while its signature is valid: the first arrival's
    // answer is given again, with nothing sent to Keap or queued (docs/security.md, item 3).
    let records = deps.replays();
    let now = deps.now();
    let claim = records
        .claim(
            &verified.replay_key,
            now,
            now + GATEWAY_LIMIT + DEADLINE_RESERVE,
            verified.replayable_until(),
        )
        .await;
    let owner = match claim {
        Ok(Claim::Claimed { owner }) => Some(owner),
        Ok(Claim::Answered(answer)) => {
            tracing::info!(status = answer.status, "replayed signup answered from its record");
            println!("{}", metrics::count_line(metrics::SIGNUP_REPLAYS, function_name()));
            return replayed(answer);
        }
        Ok(Claim::InProgress) => {
            tracing::info!("replayed signup arrived while the first is being processed");
            println!("{}", metrics::count_line(metrics::SIGNUP_REPLAYS, function_name()));
            let message = "this signed request is being processed; ask again for its answer";
            return with_retry_after(
                error(StatusCode::CONFLICT, "replay_in_progress", message),
                Duration::from_secs(2),
            );
        }
        Err(problem) => {
            tracing::warn!(error = %problem, "replay records unavailable: processing without replay protection");
            None
        }
    };
    let response = answer(deliver(request, signup, deps).await);
    if let Some(owner) = owner {
        let kept = match recorded(&response) {
            Some(answer) => records.complete(&verified.replay_key, owner, &answer).await,
            None => records.release(&verified.replay_key, owner).await,
        };
        if let Err(problem) = kept {
            tracing::warn!(error = %problem, "could not record the signup's answer for replays");
        }
    }
    response
}

/// The answer worth keeping for replays (see [`RecordedAnswer::is_final`]).
fn recorded(response: &Response<Body>) -> Option<RecordedAnswer> {
    let status = response.status().as_u16();
    if !RecordedAnswer::is_final(status) {
        return None;
    }
    let body = std::str::from_utf8(response.body().as_ref()).ok()?.to_owned();
    let retry_after_seconds = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Some(RecordedAnswer {
        status,
        body,
        retry_after_seconds,
    })
}

/// The recorded answer again, marked as a replay.
fn replayed(answer: RecordedAnswer) -> Response<Body> {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotent-replayed", "true")
        .body(Body::from(answer.body))
        .expect("a status from the record and static headers make a valid response");
    if let Some(seconds) = answer.retry_after_seconds {
        response = with_retry_after(response, Duration::from_secs(seconds));
    }
    response
}

fn function_name() -> String {
    std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "signup".into())
}

/// The HTTP answer to a [`Delivery`] of `POST /signup`.
fn answer(delivery: Delivery) -> Response<Body> {
    match delivery {
        Delivery::Sent(outcome) => {
            let status = if outcome.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(status, &outcome)
        }
        Delivery::Queued { id } => json_response(StatusCode::ACCEPTED, &json!({ "queued": true, "id": id })),
        Delivery::Invalid { code, message } => error(StatusCode::BAD_REQUEST, code, &message),
        Delivery::Rejected { message } => error(StatusCode::UNPROCESSABLE_ENTITY, "keap_rejected", &message),
        Delivery::Unavailable {
            code,
            message,
            retry_after,
        } => with_retry_after(error(StatusCode::SERVICE_UNAVAILABLE, code, message), retry_after),
    }
}

/// What became of a valid signup: the part `POST /signup` and the form route share.
#[derive(Debug)]
pub enum Delivery {
    /// Keap took it.
    Sent(SignupOutcome),
    /// Keap could not take it now; it waits in the queue for `signup-retry`.
    Queued { id: String },
    /// The signup asks for something Keap or this deployment does not take (an unknown custom
    /// field, a value of the wrong type, a field or tag off the allow-list): a precise 400.
    Invalid { code: &'static str, message: String },
    /// Keap refused the contact (its message, which may quote the submitted values).
    Rejected { message: String },
    /// Keap could not take it now and there is no queue (or queuing failed): try again later.
    Unavailable {
        code: &'static str,
        message: &'static str,
        retry_after: Duration,
    },
}

/// Sends a valid signup to Keap (upsert, tags, welcome), stopping in time to queue it when
/// Keap cannot take it before the deadline.
pub async fn deliver<D: SignupDeps + ?Sized>(request: &Request, signup: Signup, deps: &D) -> Delivery {
    // A signup still waiting on Keap (a slow answer, a rotation in another process) when the
    // function is about to time out would be lost; stop in time and queue it instead.
    let budget = keap_budget(request, SystemTime::now());
    let result = match tokio::time::timeout(budget, deps.service().process(&signup)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(SignupError::Unavailable {
            retry_after: None,
            detail: format!(
                "Keap did not finish within the {} ms left before the deadline",
                budget.as_millis()
            ),
        }),
    };
    match result {
        Ok(outcome) => {
            tracing::info!(
                contact_id = outcome.contact_id,
                created = outcome.created,
                "signup sent to Keap"
            );
            // A welcome goal nobody listens to was reported by the service (warning, metric,
            // notice for /status): SignupService::report_goal.
            events::emit(deps.events(), Event::signup_delivered(&signup.email, &outcome, None)).await;
            Delivery::Sent(outcome)
        }
        Err(SignupError::Invalid { code, message }) => {
            tracing::info!(code, %message, "the signup asks for something Keap or this deployment does not take");
            Delivery::Invalid { code, message }
        }
        Err(SignupError::Rejected { status, message }) => {
            tracing::info!(keap_status = status, %message, "Keap refused the contact");
            Delivery::Rejected { message }
        }
        Err(failure) => defer(signup, failure, deps).await,
    }
}

/// Keap cannot take the signup now: queue it when a queue exists, else say when to retry.
async fn defer<D: SignupDeps + ?Sized>(signup: Signup, failure: SignupError, deps: &D) -> Delivery {
    tracing::warn!(code = failure.code(), error = %failure, "Keap could not take the signup");
    if metrics::mentions_quota_exceeded(&failure.to_string()) {
        // The token secret cannot take new versions (up to 24 h): alarmed, see SecretVersionQuotaAlarm.
        println!("{}", metrics::quota_exceeded_line(function_name()));
    }
    if let Some(queue) = deps.queue() {
        let queued = QueuedSignup::new(signup, deps.now());
        match queue.enqueue(&queued, failure.retry_after().unwrap_or_default()).await {
            Ok(()) => {
                tracing::info!(queued_id = %queued.id, "signup queued for signup-retry");
                let event = Event::signup_queued(&queued.signup.email, queued.id, failure.code());
                events::emit(deps.events(), event).await;
                return Delivery::Queued {
                    id: queued.id.to_string(),
                };
            }
            Err(problem) => tracing::error!(error = %problem, "could not queue the signup either"),
        }
    }
    let (message, retry_after) = match &failure {
        SignupError::NotConnected { .. } => (
            "Keap is not connected; an administrator must connect it, then try again",
            NOT_CONNECTED_RETRY_AFTER,
        ),
        _ => (
            "Keap is unavailable right now; try again later",
            failure.retry_after().unwrap_or(UNAVAILABLE_RETRY_AFTER),
        ),
    };
    Delivery::Unavailable {
        code: failure.code(),
        message,
        retry_after,
    }
}

/// How long the Keap calls may take: until shortly before the Lambda deadline and never past
/// API Gateway's limit. A deadline that has already passed is no real one (Lambda hands an
/// invocation over before its deadline; `cargo lambda watch` sends a fixed 600000, i.e. 1970),
/// so then only the gateway's limit counts.
fn keap_budget(request: &Request, now: SystemTime) -> Duration {
    let gateway = GATEWAY_LIMIT - DEADLINE_RESERVE;
    let left = request.lambda_context_ref().and_then(|context| {
        (UNIX_EPOCH + Duration::from_millis(context.deadline))
            .duration_since(now)
            .ok()
    });
    match left {
        Some(left) => left.saturating_sub(DEADLINE_RESERVE).min(gateway),
        None => gateway,
    }
}

/// `application/json` or any `application/*+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    http_edge::json_response(status, value).map(Body::from)
}

/// The `{"error":{"code","message"}}` answer (see [`keap_relay::http_edge`]).
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    http_edge::error_response(status, code, message).map(Body::from)
}

#[cfg(test)]
mod tests {
    use lambda_http::http::HeaderValue;

    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        let check = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json(&headers)
        };
        assert!(check("application/json"));
        assert!(check("Application/JSON; charset=utf-8"));
        assert!(check("application/vnd.api+json"));
        assert!(!check("text/plain"));
        assert!(!check("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn the_keap_budget_ends_before_the_lambda_deadline_and_the_gateway_limit() {
        // Whole milliseconds, as the Lambda context carries them.
        let now = UNIX_EPOCH
            + Duration::from_millis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64);
        let with_deadline = |left: Duration| {
            let mut context = lambda_http::Context::default();
            context.deadline = (now + left).duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            Request::default().with_lambda_context(context)
        };
        assert_eq!(
            keap_budget(&with_deadline(Duration::from_secs(10)), now),
            Duration::from_millis(7500)
        );
        assert_eq!(keap_budget(&with_deadline(Duration::from_secs(1)), now), Duration::ZERO);
        assert_eq!(
            keap_budget(&with_deadline(Duration::from_secs(900)), now),
            GATEWAY_LIMIT - DEADLINE_RESERVE
        );
        assert_eq!(keap_budget(&Request::default(), now), GATEWAY_LIMIT - DEADLINE_RESERVE);
        // cargo lambda's emulator sends a deadline of 600000 ms after the epoch
        let mut emulated = lambda_http::Context::default();
        emulated.deadline = 600_000;
        let emulated = Request::default().with_lambda_context(emulated);
        assert_eq!(keap_budget(&emulated, now), GATEWAY_LIMIT - DEADLINE_RESERVE);
    }
}
