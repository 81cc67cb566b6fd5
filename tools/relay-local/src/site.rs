//! The example website (`examples/website-form/`) served on its own port, so that it is a
//! different origin from the relay, as a team's real site is: `/` the plain form, `/fetch.html`
//! the `fetch()` variant, `/thanks.html` and `/error.html` the pages the relay sends a plain
//! form on to. The pages' placeholder relay URL is replaced with the local relay's.
//!
//! When the local run verifies a human check against the fake siteverify
//! (`keap_sandbox::siteverify`), each page load gets a fresh passing token where the page has
//! its `<!-- human-check -->` marker: the hidden field the provider's widget would add.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keap_relay::forms::CaptchaProvider;

/// The relay URL the example pages carry, replaced when served.
pub const PLACEHOLDER_RELAY_URL: &str = "https://abc123defg.execute-api.us-east-1.amazonaws.com";
/// Where the pages put the human check's widget.
pub const HUMAN_CHECK_MARKER: &str = "<!-- human-check -->";
pub const DEFAULT_SITE_PORT: u16 = 9100;

const PAGES: [(&str, &str); 5] = [
    ("/", include_str!("../../../examples/website-form/index.html")),
    ("/index.html", include_str!("../../../examples/website-form/index.html")),
    ("/fetch.html", include_str!("../../../examples/website-form/fetch.html")),
    (
        "/thanks.html",
        include_str!("../../../examples/website-form/thanks.html"),
    ),
    ("/error.html", include_str!("../../../examples/website-form/error.html")),
];

/// What the site needs to know.
#[derive(Debug, Clone)]
pub struct Site {
    pub relay_url: String,
    /// The provider whose field gets a passing token on each page load (only with the fake).
    pub fake_human_check: Option<CaptchaProvider>,
}

/// The site's listener, bound before the configuration is read (its origin is a default of
/// `FORM_ALLOWED_ORIGINS`).
pub fn bind(port: u16) -> Result<std::net::TcpListener, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::TcpListener::bind(addr).map_err(|error| {
        format!("cannot listen on {addr} for the example website: {error}; pick another port with --site-port")
    })
}

pub fn router(site: Site) -> Router {
    Router::new().fallback(page).with_state(site)
}

async fn page(State(site): State<Site>, uri: axum::http::Uri) -> Response {
    let Some((_, text)) = PAGES.iter().find(|(path, _)| *path == uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut html = text.replace(PLACEHOLDER_RELAY_URL, &site.relay_url);
    if let Some(provider) = site.fake_human_check {
        let token = format!(
            "{}.{}",
            keap_sandbox::siteverify::PASSING_TOKEN_PREFIX,
            uuid::Uuid::new_v4()
        );
        let field = format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{token}\"> <!-- a passing token from the local fake, as the widget would add -->",
            provider.token_field()
        );
        html = html.replace(HUMAN_CHECK_MARKER, &field);
    }
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_has_the_placeholder_or_is_a_landing_page() {
        for (path, text) in PAGES {
            if matches!(path, "/" | "/index.html" | "/fetch.html") {
                assert!(text.contains(PLACEHOLDER_RELAY_URL), "{path}");
                assert!(text.contains(HUMAN_CHECK_MARKER), "{path}");
                assert!(text.contains("name=\"_gotcha\""), "{path}: the default honeypot field");
            }
        }
    }
}
