//! The cookie that binds an OAuth state to the administrator's browser (issue 14).
//!
//! `/oauth/start` sets it to the state's browser binding ([`keap_relay::oauth_state`]):
//! `Secure` (browsers also keep and send it on `http://localhost` and `http://127.0.0.1`, which
//! they treat as secure contexts), `HttpOnly`, `SameSite=Lax` (sent on Keap's top-level redirect
//! back, never on a cross-site subrequest) and scoped to the callback's own path. The callback
//! requires it to match the state and clears it in every answer.

use std::time::Duration;

use lambda_http::http::HeaderMap;
use lambda_http::http::header::COOKIE;
use lambda_http::http::{HeaderValue, header::SET_COOKIE};
use lambda_http::{Body, Response};

/// The cookie's name.
pub const NAME: &str = "keap_relay_oauth";

/// The callback path when `KEAP_REDIRECT_URI` is unset or unparsable (the callback then
/// refuses anyway).
const DEFAULT_PATH: &str = "/oauth/callback";

/// The path the cookie is scoped to: the registered callback URL's path (it includes a named
/// stage's prefix, which the browser sees and the route table does not).
pub fn path_for(redirect_uri: Option<&str>) -> String {
    redirect_uri
        .and_then(|uri| url::Url::parse(uri).ok())
        .map(|url| url.path().to_owned())
        .filter(|path| path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic() && b != b';'))
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

/// `Set-Cookie` for a fresh binding (URL-safe Base64: nothing to quote).
pub fn set(binding: &str, path: &str, max_age: Duration) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{NAME}={binding}; Max-Age={}; Path={path}; Secure; HttpOnly; SameSite=Lax",
        max_age.as_secs()
    ))
    .ok()
}

/// `Set-Cookie` that removes the cookie (same name and path, expired).
pub fn clear(path: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{NAME}=; Max-Age=0; Path={path}; Secure; HttpOnly; SameSite=Lax"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("keap_relay_oauth=; Max-Age=0; Secure; HttpOnly; SameSite=Lax"))
}

/// Adds the clearing `Set-Cookie` to a callback answer.
pub fn clear_on(response: &mut Response<Body>, path: &str) {
    response.headers_mut().append(SET_COOKIE, clear(path));
}

/// Every value of the cookie in the request (`Cookie` headers, `; `-separated pairs; API
/// Gateway joins its `cookies` array into one header). Empty values are left out.
pub fn values(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, value)| name.trim() == NAME && !value.trim().is_empty())
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_secure_http_only_lax_and_scoped_to_the_callback() {
        let path = path_for(Some("https://abc.execute-api.us-east-1.amazonaws.com/oauth/callback"));
        assert_eq!(path, "/oauth/callback");
        let cookie = set("b1nd1ng", &path, Duration::from_secs(600)).unwrap();
        assert_eq!(
            cookie,
            "keap_relay_oauth=b1nd1ng; Max-Age=600; Path=/oauth/callback; Secure; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            clear(&path),
            "keap_relay_oauth=; Max-Age=0; Path=/oauth/callback; Secure; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn the_path_follows_the_registered_callback_url() {
        assert_eq!(
            path_for(Some("https://api.example.com/prod/oauth/callback")),
            "/prod/oauth/callback"
        );
        assert_eq!(
            path_for(Some("http://127.0.0.1:9000/oauth/callback")),
            "/oauth/callback"
        );
        assert_eq!(path_for(None), "/oauth/callback");
        assert_eq!(path_for(Some("not a url")), "/oauth/callback");
    }

    #[test]
    fn values_are_read_from_every_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("other=1; keap_relay_oauth=abc;x=y"));
        headers.append(COOKIE, HeaderValue::from_static("keap_relay_oauth=\"def\""));
        headers.append(COOKIE, HeaderValue::from_static("keap_relay_oauth="));
        headers.append(COOKIE, HeaderValue::from_static("keap_relay_oauthx=no"));
        assert_eq!(values(&headers), ["abc", "def"]);
        assert!(values(&HeaderMap::new()).is_empty());
    }
}
