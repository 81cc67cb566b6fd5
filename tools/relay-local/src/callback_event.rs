//! `relay-local callback-event`: finishes an OAuth sign-in for `cargo lambda invoke`, where no
//! browser follows the redirects. It takes the `oauth` function's answer to
//! `events/oauth-start.json` (a 302 to Keap's authorize page), lets the authorize page approve
//! (the sandbox with `--auto-approve` answers at once with a 302 to the redirect URI), and
//! prints the API Gateway event of that callback request, code and state included, with the
//! cookie `/oauth/start` set (the answer's `cookies`), as the browser would send it.

use axum::body::Bytes;
use reqwest::header::LOCATION;
use serde_json::Value;

use crate::gateway;

#[derive(Debug, thiserror::Error)]
pub enum CallbackEventError {
    #[error("the input is not the JSON answer of an invocation: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("the oauth function answered {0}, not 302: was the request authorized (events/oauth-start.json)?")]
    NotARedirect(String),
    #[error("the answer has no location header")]
    NoLocation,
    #[error("the authorize page could not be reached: {0}")]
    Authorize(reqwest::Error),
    #[error(
        "the authorize page answered {0} instead of redirecting back; start the sandbox with --auto-approve (a real Keap needs a browser)"
    )]
    NotApproved(u16),
    #[error("the redirect back is not a URL this tool understands: {0}")]
    BadRedirect(String),
}

/// The authorize URL in the `oauth` function's answer to `GET /oauth/start`.
pub fn authorize_url(invocation_answer: &str) -> Result<String, CallbackEventError> {
    let answer: Value = serde_json::from_str(invocation_answer)?;
    let status = &answer["statusCode"];
    if status.as_u64() != Some(302) {
        return Err(CallbackEventError::NotARedirect(status.to_string()));
    }
    answer["headers"]
        .as_object()
        .and_then(|headers| headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("location")))
        .and_then(|(_, value)| value.as_str())
        .map(str::to_owned)
        .ok_or(CallbackEventError::NoLocation)
}

/// The cookies the `oauth` function's answer to `GET /oauth/start` sets, as `name=value` pairs a
/// browser sends back: API Gateway's v2 answer carries them in `cookies` (`lambda_http` moves
/// every `Set-Cookie` there); `set-cookie` in `headers` or `multiValueHeaders` is read as well.
pub fn start_cookies(invocation_answer: &str) -> Result<Vec<String>, CallbackEventError> {
    let answer: Value = serde_json::from_str(invocation_answer)?;
    let mut set_cookies: Vec<String> = Vec::new();
    let strings = |value: &Value| -> Vec<String> {
        match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    };
    set_cookies.extend(strings(&answer["cookies"]));
    for headers in ["headers", "multiValueHeaders"] {
        if let Some(headers) = answer[headers].as_object() {
            for (name, value) in headers {
                if name.eq_ignore_ascii_case("set-cookie") {
                    set_cookies.extend(strings(value));
                }
            }
        }
    }
    let mut pairs: Vec<String> = Vec::new();
    for set_cookie in set_cookies {
        let pair = set_cookie.split(';').next().unwrap_or_default().trim().to_owned();
        if pair.contains('=') && !pairs.contains(&pair) {
            pairs.push(pair);
        }
    }
    Ok(pairs)
}

/// Opens the authorize page once and returns where it sends the browser back to.
pub async fn approve(authorize_url: &str) -> Result<String, CallbackEventError> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(CallbackEventError::Authorize)?;
    let response = client
        .get(authorize_url)
        .send()
        .await
        .map_err(|e| CallbackEventError::Authorize(e.without_url()))?;
    if response.status() != reqwest::StatusCode::FOUND {
        return Err(CallbackEventError::NotApproved(response.status().as_u16()));
    }
    response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .ok_or(CallbackEventError::NoLocation)
}

/// The API Gateway event of the browser's request to `redirect` (the callback URL with the
/// code and state) carrying `cookies` (`name=value` pairs), as the local server builds it.
pub fn callback_event(redirect: &str, cookies: &[String]) -> Result<Value, CallbackEventError> {
    let url = url_parts(redirect).ok_or_else(|| CallbackEventError::BadRedirect(without_query(redirect).to_owned()))?;
    let mut request = http::Request::builder()
        .method("GET")
        .uri(url.path_and_query)
        .header("host", url.host)
        .header("accept", "text/html")
        .header("user-agent", "relay-local callback-event");
    if !cookies.is_empty() {
        request = request.header("cookie", cookies.join("; "));
    }
    let request = request
        .body(())
        .map_err(|_| CallbackEventError::BadRedirect(without_query(redirect).to_owned()))?;
    let (parts, ()) = request.into_parts();
    Ok(gateway::event_json(&parts, &Bytes::new()))
}

struct UrlParts<'a> {
    host: &'a str,
    path_and_query: &'a str,
}

fn url_parts(url: &str) -> Option<UrlParts<'_>> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let (host, path_and_query) = rest
        .find('/')
        .map_or((rest, "/"), |slash| (&rest[..slash], &rest[slash..]));
    Some(UrlParts { host, path_and_query })
}

fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keap_sandbox::{Sandbox, SandboxConfig};

    #[test]
    fn the_location_comes_from_a_302_answer_only() {
        let answer =
            r#"{"statusCode":302,"headers":{"Location":"http://127.0.0.1:9400/app/oauth/authorize?x=1"},"body":""}"#;
        assert_eq!(
            authorize_url(answer).unwrap(),
            "http://127.0.0.1:9400/app/oauth/authorize?x=1"
        );
        assert!(
            matches!(authorize_url(r#"{"statusCode":401,"headers":{}}"#), Err(CallbackEventError::NotARedirect(s)) if s == "401")
        );
        assert!(matches!(
            authorize_url(r#"{"statusCode":302,"headers":{}}"#),
            Err(CallbackEventError::NoLocation)
        ));
        assert!(matches!(authorize_url("nope"), Err(CallbackEventError::NotJson(_))));
    }

    #[test]
    fn the_cookies_of_the_start_answer_are_read_where_lambda_http_puts_them() {
        let answer = r#"{"statusCode":302,"headers":{"location":"x"},"multiValueHeaders":{},
            "cookies":["keap_relay_oauth=b1nd; Max-Age=600; Path=/oauth/callback; Secure; HttpOnly; SameSite=Lax"]}"#;
        assert_eq!(start_cookies(answer).unwrap(), ["keap_relay_oauth=b1nd"]);
        let in_headers = r#"{"statusCode":302,"headers":{"Set-Cookie":"a=1; Path=/"},
            "multiValueHeaders":{"set-cookie":["a=1; Path=/","b=2"]}}"#;
        assert_eq!(start_cookies(in_headers).unwrap(), ["a=1", "b=2"]);
        assert!(start_cookies(r#"{"statusCode":302,"headers":{}}"#).unwrap().is_empty());
    }

    #[test]
    fn the_event_carries_the_code_and_state_of_the_redirect() {
        let event = callback_event("https://abc.execute-api.us-east-1.amazonaws.com/oauth/callback?code=C1&state=S.2&scope=full%7Cab123.infusionsoft.com", &["keap_relay_oauth=b1nd".to_owned(), "x=y".to_owned()]).unwrap();
        assert_eq!(event["rawPath"], "/oauth/callback");
        assert_eq!(event["requestContext"]["http"]["method"], "GET");
        assert_eq!(event["headers"]["host"], "abc.execute-api.us-east-1.amazonaws.com");
        assert_eq!(event["queryStringParameters"]["code"], "C1");
        assert_eq!(event["queryStringParameters"]["state"], "S.2");
        assert_eq!(event["queryStringParameters"]["scope"], "full|ab123.infusionsoft.com");
        assert_eq!(event["cookies"], serde_json::json!(["keap_relay_oauth=b1nd", "x=y"]));
        assert!(callback_event("ftp://x/y", &[]).is_err());
    }

    #[tokio::test]
    async fn an_auto_approving_sandbox_sends_the_browser_back_with_a_code() {
        let sandbox = Sandbox::start(SandboxConfig {
            auto_approve: true,
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let authorize = format!(
            "{}?client_id={}&redirect_uri=https%3A%2F%2Frelay.example%2Foauth%2Fcallback&response_type=code&state=st",
            sandbox.authorize_url(),
            keap_sandbox::DEFAULT_CLIENT_ID
        );
        let back = approve(&authorize).await.unwrap();
        assert!(back.starts_with("https://relay.example/oauth/callback?"), "{back}");
        let event = callback_event(&back, &[]).unwrap();
        assert_eq!(event["queryStringParameters"]["state"], "st");
        assert!(
            event["queryStringParameters"]["code"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );

        sandbox.set_auto_approve(false);
        assert!(matches!(
            approve(&authorize).await,
            Err(CallbackEventError::NotApproved(200))
        ));
    }
}
