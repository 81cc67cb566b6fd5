//! How the form route answers: a plain HTML form gets a `303 See Other` to the form's
//! thank-you or error page (the error page with `?error=<code>`), or without one a small page
//! in the relay's style; `fetch()` gets JSON. Allowed origins get CORS headers.
//!
//! Pages carry fixed copy per code: nothing the visitor sent and nothing of the configuration
//! (no URL, origin list or provider detail) is ever written into them.

use keap_relay::http_edge::{self, escape_html};
use lambda_http::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
    CONTENT_TYPE, LOCATION, VARY,
};
use lambda_http::http::{HeaderMap, HeaderValue, StatusCode, header};
use lambda_http::{Body, Response};
use url::Url;

/// Who is asking, which decides the answer's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A plain `<form method="post">`: redirects and pages.
    Browser,
    /// `fetch()` (or any client): JSON.
    Script,
}

impl Caller {
    /// JSON for a JSON body or an `Accept` that names JSON; pages otherwise.
    pub fn of(headers: &HeaderMap) -> Caller {
        let names_json = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("json"))
        };
        if names_json(CONTENT_TYPE) || names_json(header::ACCEPT) {
            Caller::Script
        } else {
            Caller::Browser
        }
    }
}

/// A refusal: status, stable code and a message for people (no submitted value in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<std::time::Duration>,
    /// Whether a plain form may be sent on to the form's error page. Not for a request from a
    /// foreign origin or for an unknown form: the error page belongs to the site.
    pub to_error_page: bool,
}

impl Refusal {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            to_error_page: true,
        }
    }

    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn not_to_error_page(mut self) -> Self {
        self.to_error_page = false;
        self
    }
}

/// The success answer: a 303 to the thank-you page, the thank-you page itself, or
/// `{"ok": true}`. The same whether Keap took the contact now or it was queued (and for a
/// filled honeypot), so it says nothing about the contact.
pub fn success(caller: Caller, thank_you: Option<&Url>) -> Response<Body> {
    match (caller, thank_you) {
        (Caller::Script, _) => json(StatusCode::OK, &serde_json::json!({ "ok": true })),
        (Caller::Browser, Some(url)) => see_other(url.as_str()),
        (Caller::Browser, None) => page(
            StatusCode::OK,
            "Thank you",
            "Your details have been received.",
            "received",
        ),
    }
}

/// A refusal as JSON, as a 303 to the error page, or as an error page.
pub fn refusal(caller: Caller, error_page: Option<&Url>, refusal: &Refusal) -> Response<Body> {
    let mut response = match (caller, error_page) {
        (Caller::Script, _) => finish(http_edge::error_response(
            refusal.status,
            refusal.code,
            &refusal.message,
        )),
        (Caller::Browser, Some(url)) if refusal.to_error_page => {
            let mut url = url.clone();
            url.query_pairs_mut().append_pair("error", refusal.code);
            see_other(url.as_str())
        }
        (Caller::Browser, _) => page(refusal.status, title(refusal.status), &refusal.message, refusal.code),
    };
    if let Some(after) = refusal.retry_after {
        response = http_edge::with_retry_after(response, after);
    }
    response
}

/// 204 to an allowed preflight.
pub fn preflight() -> Response<Body> {
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, accept"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    finish(response)
}

/// Adds the CORS headers for an allowed `origin` (never `*`: the exact origin, with `Vary`).
pub fn allow_origin(mut response: Response<Body>, origin: Option<&str>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    if let Some(value) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    response
}

fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        403 => "Not accepted here",
        404 => "No such form",
        429 => "Too many attempts",
        500..=599 => "Please try again later",
        _ => "Please check the form",
    }
}

fn see_other(location: &str) -> Response<Body> {
    // A Url serializes to a valid header value; should it not, the page below still works.
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    finish(response)
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    finish(http_edge::json_response(status, value))
}

/// A small page in the relay's style (as the oauth function's): fixed copy, escaped anyway.
fn page(status: StatusCode, title: &str, message: &str, code: &str) -> Response<Body> {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} - keap-relay</title></head>\n<body style=\"font-family: sans-serif; max-width: 40em; margin: 3em auto\">\
         <h1>{title}</h1>\n<p>{message}</p>\n<p><small>keap-relay: {code}</small></p></body></html>\n",
        title = escape_html(title),
        message = escape_html(message),
        code = escape_html(code),
    );
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    finish(response)
}

/// No caching, no sniffing, no referrer, no active content.
fn finish(mut response: Response<String>) -> Response<Body> {
    let headers = response.headers_mut();
    http_edge::protect_page(headers);
    response.map(Body::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(response: &Response<Body>) -> String {
        String::from_utf8(response.body().as_ref().to_vec()).unwrap()
    }

    #[test]
    fn a_plain_form_is_sent_on_and_a_script_gets_json() {
        let thanks = Url::parse("https://www.example.com/thanks").unwrap();
        let response = success(Caller::Browser, Some(&thanks));
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[LOCATION], "https://www.example.com/thanks");
        let response = success(Caller::Browser, None);
        assert_eq!(response.status(), StatusCode::OK);
        assert!(text(&response).contains("Thank you"));
        let response = success(Caller::Script, Some(&thanks));
        assert_eq!(text(&response), r#"{"ok":true}"#);

        let oops = Url::parse("https://www.example.com/oops?lang=en").unwrap();
        let invalid = Refusal::new(StatusCode::BAD_REQUEST, "invalid_email", "`email` is not valid");
        let response = refusal(Caller::Browser, Some(&oops), &invalid);
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            response.headers()[LOCATION],
            "https://www.example.com/oops?lang=en&error=invalid_email"
        );
        let foreign = invalid.clone().not_to_error_page();
        assert_eq!(
            refusal(Caller::Browser, Some(&oops), &foreign).status(),
            StatusCode::BAD_REQUEST
        );
        let response = refusal(Caller::Script, Some(&oops), &invalid);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(text(&response).contains(r#""code":"invalid_email""#));
    }

    #[test]
    fn pages_escape_what_they_show() {
        let hostile = Refusal::new(StatusCode::BAD_REQUEST, "x", "<script>alert(1)</script>");
        let body = text(&refusal(Caller::Browser, None, &hostile));
        assert!(!body.contains("<script>") && body.contains("&lt;script&gt;"), "{body}");
    }

    #[test]
    fn callers_are_told_apart_by_content_type_and_accept() {
        let mut headers = HeaderMap::new();
        assert_eq!(Caller::of(&headers), Caller::Browser);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert_eq!(Caller::of(&headers), Caller::Browser);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(Caller::of(&headers), Caller::Script);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(Caller::of(&headers), Caller::Script);
    }
}
