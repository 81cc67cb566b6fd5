//! The error vocabulary every HTTP function of keap-relay answers with:
//!
//! - the JSON error envelope `{"error":{"code":…,"message":…}}` ([`error_response`]), where
//!   `code` is stable and machine-readable and `message` is for people;
//! - `405 method_not_allowed` with its `Allow` header ([`method_not_allowed`]);
//! - `Retry-After` in whole seconds ([`with_retry_after`]);
//! - [`Unavailable`], what a dependency a handler needs (the app secret, a key in it) fails with.
//!
//! Answers are `http::Response<String>` (the types `lambda_http` re-exports); a function turns
//! one into its own body type with `response.map(Body::from)`.

use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Response, StatusCode};
use serde::Serialize;

/// The `Content-Type` of every JSON answer.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A dependency a handler needs could not be had (the app secret could not be read, a key is
/// missing from it): the request is answered 503. The detail names what and why, never a
/// secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// `{"error":{"code":…,"message":…}}` with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<String> {
    json_body(
        status,
        serde_json::json!({ "error": { "code": code, "message": message } }).to_string(),
    )
}

/// `value` as JSON with `status`; a value that cannot be encoded becomes a 500 `serialization` error.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<String> {
    match serde_json::to_string(value) {
        Ok(body) => json_body(status, body),
        Err(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "serialization",
            "the response could not be encoded",
        ),
    }
}

/// `405 method_not_allowed` for a request made with `method`, naming the `allow`ed method(s)
/// in the message and in the `Allow` header.
pub fn method_not_allowed(method: &Method, allow: &'static str) -> Response<String> {
    let message = format!("{method} is not allowed here; use {allow}");
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &message);
    response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Adds `Retry-After: <seconds>`, rounded up to a whole second and at least 1 (a client told
/// 0 would retry at once).
pub fn with_retry_after<B>(mut response: Response<B>, after: Duration) -> Response<B> {
    let seconds = after.as_secs().saturating_add(u64::from(after.subsec_nanos() > 0));
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

fn json_body(status: StatusCode, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    response
}

/// HTML-escapes text for element content and quoted attributes (the pages of the oauth and
/// form routes).
pub fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// The headers of every HTML page the relay serves (the oauth and form pages): no caching,
/// no sniffing, no referrer, and no active content at all.
pub fn protect_page(headers: &mut http::HeaderMap) {
    use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_envelope() {
        let response = error_response(StatusCode::BAD_REQUEST, "invalid_json", "the body is \"not\" JSON");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CONTENT_TYPE], JSON_CONTENT_TYPE);
        assert_eq!(
            response.body(),
            r#"{"error":{"code":"invalid_json","message":"the body is \"not\" JSON"}}"#
        );
    }

    #[test]
    fn json_answers_keep_the_value_as_serialized() {
        let response = json_response(StatusCode::ACCEPTED, &serde_json::json!({ "queued": true, "id": "x" }));
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.body(), r#"{"id":"x","queued":true}"#);
    }

    #[test]
    fn a_wrong_method_is_405_with_allow() {
        let response = method_not_allowed(&Method::GET, "POST");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "POST");
        let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert_eq!(body["error"]["message"], "GET is not allowed here; use POST");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let response = with_retry_after(Response::new(()), Duration::from_millis(1500));
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        let response = with_retry_after(response, Duration::ZERO);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert_eq!(
            with_retry_after(Response::new(()), Duration::from_secs(300)).headers()[RETRY_AFTER],
            "300"
        );
    }
}
