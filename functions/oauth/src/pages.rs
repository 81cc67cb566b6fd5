//! What the oauth function answers: small HTML pages for the browser routes, the same problems
//! as JSON errors (`keap_relay::http_edge`) for `/status`, and the copy of every page (titles
//! and texts, below [`Page`]). Every piece of text that is not a literal here goes through
//! [`escape_html`].

use keap_relay::http_edge::{self, escape_html};
use keap_relay::oauth_state::{StateError, StateKeyError};
use keap_relay::token::TokenError;
use lambda_http::http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use lambda_http::http::{HeaderValue, Method, StatusCode};
use lambda_http::{Body, Response};
use serde::Serialize;

use crate::basic_auth;
use crate::ports::ExchangeError;

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
        Self {
            status,
            code,
            title: title.into(),
            message: message.into(),
            link: None,
        }
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

    /// The page as HTML, for the browser routes.
    pub fn into_response(self) -> Response<Body> {
        html(&self, None)
    }

    /// The page's status, code and message as the JSON error envelope, for `/status`.
    pub fn into_json_response(self) -> Response<Body> {
        finish(http_edge::error_response(self.status, self.code, &self.message))
    }
}

/// A 302 to `location` with a tiny fallback page.
pub fn redirect(location: &str) -> Response<Body> {
    redirect_setting_cookie(location, None)
}

/// A 302 to `location` that also sets a cookie (`/oauth/start`: the state's browser binding).
pub fn redirect_setting_cookie(location: &str, set_cookie: Option<HeaderValue>) -> Response<Body> {
    let Ok(header) = HeaderValue::from_str(location) else {
        return bad_authorize_url().into_response();
    };
    let page = Page::new(
        StatusCode::FOUND,
        "redirect",
        "Continue to Keap",
        "Your browser should continue to Keap.",
    )
    .with_link(location, "Continue to Keap");
    let mut response = html(&page, Some(header));
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

/// The same answer without its detail (status and code kept), for a caller who has not shown
/// to be the administrator: no secret id or ARN, no auth mode, no name of a missing setting.
/// The handler logs the detail; the operator finds it there under the code.
pub fn without_detail(page: Page) -> Page {
    let (title, message) = if page.status.is_server_error() {
        (
            "Service unavailable",
            "keap-relay cannot handle this request right now. Its operator finds the reason in the \
             oauth function's log under the code below.",
        )
    } else {
        (
            "Not available",
            "keap-relay cannot handle this request here. Its operator finds the reason in the oauth \
             function's log under the code below.",
        )
    };
    Page::new(page.status, page.code, title, message)
}

/// `{"error": {"code": …, "message": …}}` (see [`keap_relay::http_edge`]) with this function's headers.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    finish(http_edge::error_response(status, code, message))
}

/// 405 for a browser route, which all take GET only.
pub fn method_not_allowed(method: &Method) -> Response<Body> {
    finish(http_edge::method_not_allowed(method, "GET"))
}

/// 405 for a console action, which takes POST only.
pub fn post_only(method: &Method) -> Response<Body> {
    finish(http_edge::method_not_allowed(method, "POST"))
}

/// The console page: the headers of every page, and a policy that also keeps its forms on this
/// origin (`form-action 'self'`) and its base URL fixed.
pub fn console_page(html: String) -> Response<Body> {
    let mut response = Response::new(html);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    let mut response = finish(response);
    response
        .headers_mut()
        .insert("content-security-policy", HeaderValue::from_static(CONSOLE_CSP));
    response
}

/// The console's Content-Security-Policy: no script, no remote anything, forms to itself only.
pub const CONSOLE_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// 303 to `location` (relative: the console after an action).
pub fn see_other(location: &str) -> Response<Body> {
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    finish(response)
}

/// The console's fixed notices, by the code its actions redirect with (`?done=`): nothing
/// from the query reaches the page but the choice among these.
pub fn console_notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "redriven" => "The dead letter was sent back to its queue.",
        "discarded" => "The dead letter was discarded.",
        "not_found" => "That dead letter is no longer there (already redriven, discarded, or expired).",
        "receiver_enabled" => "The event receiver is switched on again.",
        _ => return None,
    })
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    finish(http_edge::json_response(status, value))
}

fn html(page: &Page, location: Option<HeaderValue>) -> Response<Body> {
    let mut response = Response::new(page.render());
    *response.status_mut() = page.status;
    if let Some(location) = location {
        response.headers_mut().insert(LOCATION, location);
    }
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    finish(response)
}

/// No caching (pages carry one-time links and account data), no sniffing, no referrer
/// (the callback URL holds an authorization code), and no active content at all. Every 401,
/// HTML or JSON, carries the Basic challenge.
fn finish(mut response: Response<String>) -> Response<Body> {
    let challenge = (response.status() == StatusCode::UNAUTHORIZED).then_some(basic_auth::CHALLENGE);
    let headers = response.headers_mut();
    http_edge::protect_page(headers);
    if let Some(challenge) = challenge {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response.map(Body::from)
}

// The copy: one function per answer, in the order a sign-in meets them.

pub fn unauthorized() -> Page {
    Page::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Sign-in required",
        "This page is for the keap-relay administrator: sign in with the admin password.",
    )
}

pub fn admin_password_missing() -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "admin_password_missing",
        "Configuration error",
        "The app secret has no admin_password, so the administrator routes stay closed. \
         Add admin_password to the app secret.",
    )
}

pub fn admin_password_too_short() -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "admin_password_too_short",
        "Configuration error",
        format!(
            "The app secret's admin_password is shorter than {} characters, so the administrator \
             routes stay closed. Put a longer one in the app secret (openssl rand -hex 16).",
            basic_auth::MIN_ADMIN_PASSWORD_CHARS
        ),
    )
}

pub fn secret_unavailable(detail: &str) -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "app_secret_unavailable",
        "Configuration error",
        detail,
    )
}

pub fn redirect_uri_missing() -> Page {
    config_error(
        "redirect_uri_missing",
        "KEAP_REDIRECT_URI is not set for this function.",
    )
}

pub fn client_secret_missing() -> Page {
    config_error(
        "client_secret_missing",
        "The app secret has no client_secret, which OAuth mode needs.",
    )
}

/// The app secret lacks what the OAuth state key is derived from.
pub fn state_key_unavailable(error: StateKeyError) -> Page {
    config_error(error.code(), &format!("{error}. Add it to the app secret."))
}

fn config_error(code: &'static str, message: &str) -> Page {
    Page::new(StatusCode::SERVICE_UNAVAILABLE, code, "Configuration error", message)
}

fn bad_authorize_url() -> Page {
    Page::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "bad_authorize_url",
        "Configuration error",
        "The Keap authorize URL built from the configuration is not a valid header value.",
    )
}

pub fn oauth_not_used() -> Page {
    Page::new(
        StatusCode::CONFLICT,
        "oauth_not_used",
        "OAuth is not used",
        "This deployment connects to Keap with an API key (KEAP_AUTH_MODE=api-key), so there is \
         nothing to authorize. Set KEAP_AUTH_MODE=oauth to use OAuth instead.",
    )
}

pub fn bad_switch() -> Page {
    Page::new(
        StatusCode::BAD_REQUEST,
        "bad_switch",
        "Invalid switch option",
        "The switch parameter must be 1 (replace a connection to another Keap account) or 0.",
    )
}

/// The callback carries `error=…` instead of a code. `description` is Keap's
/// `error_description`, passed only once the state and the browser binding verified: before
/// that, anyone could have written it (a crafted link), so it is not shown. Likewise `error`
/// appears only when it is a plain OAuth error code.
pub fn keap_declined(error: &str, description: Option<&str>) -> Page {
    if error == "access_denied" {
        return Page::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "Access was declined",
            "Access was declined in Keap, so nothing was connected or changed.",
        )
        .with_link("start", "Start again");
    }
    let plain = !error.is_empty() && error.len() <= 64 && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let error = if plain { error } else { "an unrecognized error" };
    let detail = description.map(|d| format!(": {d}")).unwrap_or_default();
    Page::new(
        StatusCode::BAD_REQUEST,
        "keap_error",
        "Keap reported an error",
        format!("Keap did not authorize keap-relay ({error}{detail}). Nothing was changed."),
    )
    .with_link("start", "Start again")
}

pub fn state_refused(error: StateError) -> Page {
    let page = match error {
        StateError::Reused => Page::new(
            StatusCode::BAD_REQUEST,
            error.code(),
            "This sign-in link was already used",
            "This sign-in link was already used, or the connection changed after it was issued. Nothing was changed.",
        ),
        StateError::BrowserMissing | StateError::BrowserMismatch => Page::new(
            if error == StateError::BrowserMismatch {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            },
            error.code(),
            "This sign-in did not start in this browser",
            format!("{error}. Nothing was changed."),
        ),
        _ => Page::new(
            StatusCode::BAD_REQUEST,
            error.code(),
            "This sign-in link is not valid",
            error.to_string(),
        ),
    };
    page.with_link("start", "Start again")
}

pub fn code_missing() -> Page {
    Page::new(
        StatusCode::BAD_REQUEST,
        "code_missing",
        "No authorization code",
        "Keap's answer carries no authorization code, so there is nothing to connect.",
    )
    .with_link("start", "Start again")
}

pub fn exchange_failure(error: &ExchangeError) -> Page {
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
        ExchangeError::Misconfigured(_) => Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "oauth_misconfigured",
            "Configuration error",
            error.to_string(),
        ),
    }
}

pub fn connected(account: &str) -> Page {
    Page::new(
        StatusCode::OK,
        "connected",
        "Connected to Keap",
        format!("keap-relay is now connected to the Keap account {account}. You can close this page."),
    )
}

pub fn different_account(current: &str, requested: &str) -> Page {
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
}

pub fn store_failure(error: &TokenError) -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "Could not save the connection",
        format!("{error}. Nothing was changed; start again in a minute."),
    )
    .with_link("start", "Start again")
}

pub fn bad_console_form(detail: &str) -> Page {
    Page::new(
        StatusCode::BAD_REQUEST,
        "bad_console_form",
        "Invalid console request",
        detail,
    )
    .with_link("../admin", "Back to the console")
}

pub fn csrf_refused() -> Page {
    Page::new(
        StatusCode::FORBIDDEN,
        "csrf_refused",
        "Not sent from the console",
        "This action must be sent from the console page (its form token is missing, wrong or more \
         than an hour old). Nothing was changed.",
    )
    .with_link("../admin", "Back to the console")
}

pub fn events_not_configured() -> Page {
    Page::new(
        StatusCode::CONFLICT,
        "events_not_configured",
        "Events are not configured",
        "EVENTS_STATE_SECRET_ID is not set, so there is no receiver switch to turn on.",
    )
}

pub fn console_failure(detail: &str) -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "console_action_failed",
        "The action failed",
        format!("{detail}. Nothing may have changed; try again in a minute."),
    )
    .with_link("../admin", "Back to the console")
}

/// `/status` could not read the connection (answered as JSON).
pub fn status_unavailable(error: &TokenError) -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "status_unavailable",
        "Status unavailable",
        error.to_string(),
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_variable_is_escaped() {
        let page = Page::new(
            StatusCode::OK,
            "connected",
            "<b>t</b>",
            "a & \"b\" <script>alert('x')</script>",
        )
        .with_link("start?switch=1&x=\"><script>", "<i>again</i>");
        let html = page.render();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>t</b>"));
        assert!(html.contains("a &amp; &quot;b&quot; &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(html.contains("href=\"start?switch=1&amp;x=&quot;&gt;&lt;script&gt;\""));
    }

    #[test]
    fn page_response_headers() {
        let page = Page::new(StatusCode::CONFLICT, "different_account", "Title", "Message");
        let answers = [
            (page.clone().into_response(), "text/html; charset=utf-8"),
            (page.into_json_response(), "application/json"),
        ];
        for (response, content_type) in answers {
            assert_eq!(response.status(), StatusCode::CONFLICT);
            assert_eq!(response.headers()[CONTENT_TYPE], content_type);
            assert_eq!(response.headers()[lambda_http::http::header::CACHE_CONTROL], "no-store");
            assert_eq!(response.headers()["referrer-policy"], "no-referrer");
        }
    }

    #[test]
    fn every_401_carries_the_basic_challenge() {
        for response in [unauthorized().into_response(), unauthorized().into_json_response()] {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()[WWW_AUTHENTICATE], basic_auth::CHALLENGE);
        }
        assert!(!bad_switch().into_response().headers().contains_key(WWW_AUTHENTICATE));
    }

    #[test]
    fn a_page_as_json_is_the_error_envelope() {
        let page = Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "status_unavailable",
            "Title",
            "the store \"s\" is down",
        );
        let response = page.into_json_response();
        let Body::Text(body) = response.body() else {
            panic!("a text body")
        };
        assert_eq!(
            body,
            r#"{"error":{"code":"status_unavailable","message":"the store \"s\" is down"}}"#
        );
    }

    #[test]
    fn without_detail_keeps_status_and_code_only() {
        let page = secret_unavailable("secret arn:aws:secretsmanager:us-east-1:1:secret:keap-relay/app does not exist");
        let shown = without_detail(page).render();
        assert!(shown.contains("keap-relay: app_secret_unavailable"), "{shown}");
        assert!(
            !shown.contains("arn:aws") && !shown.contains("keap-relay/app"),
            "{shown}"
        );
        let shown = without_detail(oauth_not_used());
        assert_eq!(shown.status, StatusCode::CONFLICT);
        assert!(!shown.render().contains("KEAP_AUTH_MODE") && !shown.render().contains("API key"));
    }

    #[test]
    fn keap_error_text_is_shown_only_when_passed_and_plain() {
        let page = keap_declined("invalid_scope", None).render();
        assert!(page.contains("(invalid_scope)"), "{page}");
        let page = keap_declined("Call 555-0100 to restore your account", None).render();
        assert!(
            !page.contains("555-0100") && page.contains("an unrecognized error"),
            "{page}"
        );
        let page = keap_declined("server_error", Some("Keap is down")).render();
        assert!(page.contains("(server_error: Keap is down)"), "{page}");
    }

    #[test]
    fn redirect_sets_location() {
        let response = redirect("https://accounts.example.com/authorize?a=1&b=2");
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(
            response.headers()[LOCATION],
            "https://accounts.example.com/authorize?a=1&b=2"
        );
        let bad = redirect("https://example.com/\nx");
        assert_eq!(bad.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
