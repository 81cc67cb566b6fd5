//! The small HTML pages and JSON bodies the oauth function answers with. Every piece of
//! text that is not a literal here goes through [`escape_html`].

use lambda_http::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use lambda_http::http::{HeaderValue, StatusCode};
use lambda_http::{Body, Response};
use serde::Serialize;

/// One HTML page: a title, a plain-text message and a machine-readable code.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    /// Stable code shown on the page (`connected`, `state_expired`, …) for support and tests.
    pub code: &'static str,
    pub title: String,
    pub message: String,
    /// Optional follow-up link (relative or absolute URL, link text).
    pub link: Option<(String, String)>,
}

impl Page {
    pub fn new(status: StatusCode, code: &'static str, title: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code, title: title.into(), message: message.into(), link: None }
    }

    pub fn with_link(mut self, href: impl Into<String>, text: impl Into<String>) -> Self {
        self.link = Some((href.into(), text.into()));
        self
    }

    pub fn render(&self) -> String {
        let link = match &self.link {
            Some((href, text)) => format!("<p><a href=\"{}\">{}</a></p>", escape_html(href), escape_html(text)),
            None => String::new(),
        };
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} - keap-relay</title></head>\n<body style=\"font-family: sans-serif; max-width: 40em; margin: 3em auto\">\
             <h1>{title}</h1>\n<p>{message}</p>\n{link}<p><small>keap-relay: {code}</small></p></body></html>\n",
            title = escape_html(&self.title),
            message = escape_html(&self.message),
            code = self.code,
        )
    }

    pub fn into_response(self) -> Response<Body> {
        let body = self.render();
        let response = with_common_headers(Response::builder().status(self.status), "text/html; charset=utf-8");
        finish(response, body)
    }
}

/// A 302 to `location` with a tiny fallback page.
pub fn redirect(location: &str) -> Response<Body> {
    let page = Page::new(StatusCode::FOUND, "redirect", "Continue to Keap", "Your browser should continue to Keap.")
        .with_link(location, "Continue to Keap");
    let body = page.render();
    match HeaderValue::from_str(location) {
        Ok(location) => {
            let builder = Response::builder().status(StatusCode::FOUND).header(LOCATION, location);
            finish(with_common_headers(builder, "text/html; charset=utf-8"), body)
        }
        Err(_) => Page::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad_authorize_url",
            "Configuration error",
            "The Keap authorize URL built from the configuration is not a valid header value.",
        )
        .into_response(),
    }
}

/// `{"error": {"code": …, "message": …}}`, the shape every JSON error of keap-relay uses.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({"error": {"code": code, "message": message}}))
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(body) => finish(with_common_headers(Response::builder().status(status), "application/json"), body),
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "serialization", "the response could not be encoded"),
    }
}

/// No caching (pages carry one-time links and account data), no sniffing, no referrer
/// (the callback URL holds an authorization code), and no active content at all.
fn with_common_headers(builder: lambda_http::http::response::Builder, content_type: &'static str) -> lambda_http::http::response::Builder {
    builder
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
}

fn finish(builder: lambda_http::http::response::Builder, body: String) -> Response<Body> {
    // Every header above is a valid static value, so building cannot fail; keep a plain
    // 500 as the answer if it ever did rather than a panic.
    builder.body(Body::from(body)).unwrap_or_else(|_| {
        let mut response = Response::new(Body::Empty);
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_variable_is_escaped() {
        let page = Page::new(StatusCode::OK, "connected", "<b>t</b>", "a & \"b\" <script>alert('x')</script>")
            .with_link("start?switch=1&x=\"><script>", "<i>again</i>");
        let html = page.render();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>t</b>"));
        assert!(html.contains("a &amp; &quot;b&quot; &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(html.contains("href=\"start?switch=1&amp;x=&quot;&gt;&lt;script&gt;\""));
    }

    #[test]
    fn page_response_headers() {
        let response = Page::new(StatusCode::CONFLICT, "different_account", "Title", "Message").into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    }

    #[test]
    fn redirect_sets_location() {
        let response = redirect("https://accounts.example.com/authorize?a=1&b=2");
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()[LOCATION], "https://accounts.example.com/authorize?a=1&b=2");
        let bad = redirect("https://example.com/\nx");
        assert_eq!(bad.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
