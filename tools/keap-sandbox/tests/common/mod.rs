//! Helpers shared by the sandbox's integration tests.
#![allow(dead_code)] // each test file uses a different subset

use keap_sandbox::{Sandbox, SandboxConfig, TokenResponse};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

pub const CLIENT_ID: &str = keap_sandbox::DEFAULT_CLIENT_ID;
pub const CLIENT_SECRET: &str = keap_sandbox::DEFAULT_CLIENT_SECRET;
pub const API_KEY: &str = keap_sandbox::DEFAULT_API_KEY;
pub const REDIRECT_URI: &str = "https://relay.example.com/oauth/callback";

pub async fn sandbox() -> Sandbox {
    start(SandboxConfig::default()).await
}

pub async fn start(config: SandboxConfig) -> Sandbox {
    Sandbox::start(config).await.expect("sandbox starts")
}

/// A client that does not follow redirects, so the authorize answer can be read.
pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

pub async fn json_of(response: Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text:?}"))
}

/// Run the authorize step (auto-approved) and return the code from the redirect.
pub async fn authorize_code(sandbox: &Sandbox, redirect_uri: &str) -> String {
    sandbox.set_auto_approve(true);
    let response = client()
        .get(sandbox.authorize_url())
        .query(&[
            ("client_id", CLIENT_ID),
            ("redirect_uri", redirect_uri),
            ("response_type", "code"),
            ("scope", "full"),
            ("state", "s1"),
        ])
        .send()
        .await
        .expect("authorize");
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = location(&response);
    query_param(&location, "code").expect("code in redirect")
}

pub fn location(response: &Response) -> url::Url {
    let location = response
        .headers()
        .get("location")
        .expect("Location header")
        .to_str()
        .expect("ascii Location");
    url::Url::parse(location).expect("absolute Location")
}

pub fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned())
}

pub async fn exchange_code(sandbox: &Sandbox, code: &str, redirect_uri: &str) -> Response {
    client()
        .post(sandbox.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .expect("token request")
}

pub async fn refresh_with(client: &Client, sandbox: &Sandbox, refresh_token: &str) -> reqwest::Result<Response> {
    client
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)])
        .send()
        .await
}

pub async fn refresh(sandbox: &Sandbox, refresh_token: &str) -> Response {
    refresh_with(&client(), sandbox, refresh_token)
        .await
        .expect("token request")
}

pub async fn refreshed_pair(sandbox: &Sandbox, refresh_token: &str) -> TokenResponse {
    let response = refresh(sandbox, refresh_token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("token response")
}

/// Assert Keap's `invalid_grant` body.
pub async fn assert_invalid_grant(response: Response) {
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(response).await,
        serde_json::json!({"error": "invalid_grant", "error_description": "Invalid refresh token"})
    );
}

/// An authenticated REST call with the default API key header.
pub fn rest(sandbox: &Sandbox, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    client()
        .request(method, format!("{}{path}", sandbox.api_url()))
        .header("X-Keap-API-Key", API_KEY)
}

pub async fn get_bearer(sandbox: &Sandbox, path: &str, token: &str) -> Response {
    client()
        .get(format!("{}{path}", sandbox.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("REST call")
}

pub async fn assert_invalid_access_token(response: Response) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(response).await,
        serde_json::json!({"fault": {"faultstring": "Invalid Access Token",
            "detail": {"errorcode": "keymanagement.service.invalid_access_token"}}})
    );
}
