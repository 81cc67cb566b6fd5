//! Test harness: the real handler, the in-process Keap sandbox, the real `OAuthClient`
//! adapter, and the real token source over a memory store.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keap_relay::app::LazyOAuthClient;
use keap_relay::config::{AppSecret, AuthMode};
use keap_relay::keap::oauth::{OAuthClient, OAuthEndpoints};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_relay::token::{ApiKeySource, Connection, ConnectionStatus, TokenGrant, TokenSettings, TokenSource};
use keap_relay::{ExposeSecret, SecretString};
use keap_sandbox::{Sandbox, SandboxConfig};
use lambda_http::{Body, Request, Response};
use oauth::adapters::KeapAuthorization;
use oauth::ports::{AppSecretSource, MetricsSink, SecretUnavailable};
use oauth::{OAuthDeps, handle};
use serde_json::Value;

pub const ADMIN_PASSWORD: &str = "local-admin-password";
pub const SIGNING_KEY: &str = "local-signup-signing-key";
/// The `FunctionName` of the harness's metrics.
pub const FUNCTION_NAME: &str = "keap-relay-OAuthFunction-test";
pub const REDIRECT_URI: &str = "https://relay.example.com/oauth/callback";

/// The events in `events/` as JSON, to be adjusted and parsed like API Gateway's payloads.
pub use test_support::events::json as event_json;
/// An event file exactly as stored.
pub use test_support::events::request as event;
pub use test_support::events::to_request;

/// An event file with another query string (raw and parsed, as API Gateway sends both).
pub fn event_with_query(name: &str, raw_query: &str) -> Request {
    event_with_query_and_cookies(name, raw_query, &[])
}

/// An event file with another query string and the given `name=value` cookies (API Gateway's
/// `cookies` array, which `lambda_http` joins into one `Cookie` header).
pub fn event_with_query_and_cookies(name: &str, raw_query: &str, cookies: &[&str]) -> Request {
    let mut json = event_json(name);
    let mut parsed = serde_json::Map::new();
    for (key, value) in url::form_urlencoded::parse(raw_query.as_bytes()) {
        parsed.insert(key.into_owned(), Value::String(value.into_owned()));
    }
    json["rawQueryString"] = Value::String(raw_query.to_owned());
    json["queryStringParameters"] = Value::Object(parsed);
    if !cookies.is_empty() {
        json["cookies"] = Value::Array(cookies.iter().map(|c| Value::String((*c).to_owned())).collect());
    }
    to_request(&json)
}

/// An event file with its `authorization` header replaced (or removed with `None`).
pub fn event_with_authorization(name: &str, authorization: Option<&str>) -> Request {
    let mut json = event_json(name);
    let headers = json["headers"].as_object_mut().unwrap();
    match authorization {
        Some(value) => headers.insert("authorization".into(), Value::String(value.into())),
        None => headers.remove("authorization"),
    };
    to_request(&json)
}

/// An event file with another method and path.
pub fn event_with_route(name: &str, method: &str, path: &str) -> Request {
    let mut json = event_json(name);
    json["rawPath"] = Value::String(path.into());
    json["requestContext"]["http"]["method"] = Value::String(method.into());
    json["requestContext"]["http"]["path"] = Value::String(path.into());
    to_request(&json)
}

pub fn body_text(response: &Response<Body>) -> String {
    match response.body() {
        Body::Text(text) => text.clone(),
        Body::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Body::Empty => String::new(),
        _ => String::new(),
    }
}

pub fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

pub struct StaticSecret(pub Arc<AppSecret>);

#[async_trait]
impl AppSecretSource for StaticSecret {
    async fn app_secret(&self) -> Result<Arc<AppSecret>, SecretUnavailable> {
        Ok(self.0.clone())
    }
}

pub fn app_secret(client_secret: &str, admin_password: Option<&str>) -> AppSecret {
    AppSecret {
        client_id: Some(keap_sandbox::DEFAULT_CLIENT_ID.into()),
        client_secret: Some(SecretString::from(client_secret)),
        api_key: None,
        signup_signing_key: Some(SecretString::from(SIGNING_KEY)),
        admin_password: admin_password.map(SecretString::from),
    }
}

/// EMF lines, kept for the test to read.
#[derive(Default)]
pub struct RecordedMetrics(Mutex<Vec<String>>);

impl MetricsSink for RecordedMetrics {
    fn emit(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

impl RecordedMetrics {
    pub fn lines(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// `name=value` of a `Set-Cookie` header (the attributes dropped), as a browser would send it back.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().trim().to_owned()
}

/// The `Set-Cookie` headers of a response.
pub fn set_cookies(response: &Response<Body>) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

pub const TOKEN_SECRET_ID: &str = "keap-relay/token";

pub struct Harness {
    pub sandbox: Sandbox,
    pub deps: OAuthDeps,
    pub store: Arc<MemoryStore>,
    pub connection: Arc<dyn Connection>,
    pub metrics: Arc<RecordedMetrics>,
    /// The administrator's browser's cookie for the callback path (`name=value`), as the last
    /// `/oauth/start` or callback answer left it.
    pub browser_cookie: Mutex<Option<String>>,
    http: reqwest::Client,
}

impl Harness {
    pub async fn start() -> Self {
        Self::with(
            AuthMode::OAuth,
            app_secret(keap_sandbox::DEFAULT_CLIENT_SECRET, Some(ADMIN_PASSWORD)),
        )
        .await
    }

    pub async fn with(mode: AuthMode, secret: AppSecret) -> Self {
        let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
        sandbox.set_auto_approve(true);
        let endpoints = OAuthEndpoints {
            authorize_url: sandbox.authorize_url().parse().unwrap(),
            token_url: sandbox.token_url().parse().unwrap(),
            timeout: Duration::from_secs(5),
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let store = Arc::new(MemoryStore::new());
        let connection: Arc<dyn Connection> = match mode {
            AuthMode::ApiKey => Arc::new(ApiKeySource::new(SecretString::from(keap_sandbox::DEFAULT_API_KEY))),
            AuthMode::OAuth => {
                let refresher = OAuthClient::new(
                    http.clone(),
                    endpoints.token_url.clone(),
                    endpoints.authorize_url.clone(),
                    keap_sandbox::DEFAULT_CLIENT_ID.into(),
                    secret.client_secret.clone().unwrap(),
                    endpoints.timeout,
                );
                let source = TokenSource::new(
                    store.clone(),
                    TOKEN_SECRET_ID,
                    Arc::new(refresher),
                    TokenSettings::default(),
                );
                Arc::new(source.unwrap())
            }
        };
        let secrets: Arc<dyn AppSecretSource> = Arc::new(StaticSecret(Arc::new(secret)));
        let metrics = Arc::new(RecordedMetrics::default());
        let deps = OAuthDeps {
            mode,
            redirect_uri: Some(REDIRECT_URI.into()),
            secrets: secrets.clone(),
            keap: Arc::new(KeapAuthorization::new(
                Arc::new(LazyOAuthClient::new(endpoints, http.clone())),
                secrets,
            )),
            connection: connection.clone(),
            function_name: FUNCTION_NAME.into(),
            metrics: metrics.clone(),
            quota: None,
        };
        Harness {
            sandbox,
            deps,
            store,
            connection,
            metrics,
            browser_cookie: Mutex::new(None),
            http,
        }
    }

    pub async fn run(&self, request: Request) -> Response<Body> {
        handle(request, &self.deps).await
    }

    /// `/oauth/start` (as in `events/oauth-start.json`, plus `query`), then Keap's authorize
    /// page (auto-approving): the query string Keap sends back to the callback. The browser
    /// keeps the cookie `/oauth/start` set ([`Harness::callback`] sends it).
    pub async fn authorize(&self, query: &str) -> String {
        let start = self.run(event_with_query("oauth-start.json", query)).await;
        assert_eq!(start.status(), 302, "{}", body_text(&start));
        self.keep_cookies(&start);
        let location = header(&start, "location").unwrap().to_owned();
        let keap = self.http.get(&location).send().await.unwrap();
        assert_eq!(
            keap.status(),
            302,
            "sandbox authorize page: {}",
            keap.text().await.unwrap()
        );
        let back = url::Url::parse(keap.headers()["location"].to_str().unwrap()).unwrap();
        assert_eq!(&back[..url::Position::AfterPath], REDIRECT_URI);
        back.query().unwrap_or_default().to_owned()
    }

    /// What a browser does with the `Set-Cookie` headers of an answer (the attributes are the
    /// `state_cookie` module's tests' concern): `Max-Age=0` removes, anything else replaces.
    pub fn keep_cookies(&self, response: &Response<Body>) {
        for set_cookie in set_cookies(response) {
            let pair = cookie_pair(&set_cookie);
            let mut jar = self.browser_cookie.lock().unwrap();
            *jar = if set_cookie.contains("Max-Age=0") {
                None
            } else {
                Some(pair)
            };
        }
    }

    /// The callback with `query`, from the administrator's browser (its cookie, if any); the
    /// browser then applies the answer's `Set-Cookie`.
    pub async fn callback(&self, query: &str) -> Response<Body> {
        let cookie = self.browser_cookie.lock().unwrap().clone();
        let response = self.callback_with_cookies(query, cookie.as_slice()).await;
        self.keep_cookies(&response);
        response
    }

    /// The callback with `query` and exactly these `name=value` cookies (another browser, an
    /// attacker's request).
    pub async fn callback_with_cookies(&self, query: &str, cookies: &[impl AsRef<str>]) -> Response<Body> {
        let cookies: Vec<&str> = cookies.iter().map(AsRef::as_ref).collect();
        self.run(event_with_query_and_cookies("oauth-callback.json", query, &cookies))
            .await
    }

    /// The whole browser round trip; returns the callback's response.
    pub async fn connect_via_browser(&self, start_query: &str) -> Response<Body> {
        let callback_query = self.authorize(start_query).await;
        self.callback(&callback_query).await
    }

    pub async fn status(&self) -> ConnectionStatus {
        self.connection.status().await.unwrap()
    }

    pub async fn stored_account(&self) -> Option<String> {
        self.status().await.account
    }

    /// How many versions the token secret has: nothing stored means this does not move.
    pub fn token_versions(&self) -> usize {
        self.store.versions(TOKEN_SECRET_ID).len()
    }

    /// Every token value ever written to the token secret.
    pub async fn stored_tokens(&self) -> Vec<String> {
        let mut tokens = Vec::new();
        for version in self.store.versions(TOKEN_SECRET_ID) {
            let stored = self
                .store
                .read_version(TOKEN_SECRET_ID, &version)
                .await
                .unwrap()
                .unwrap();
            let json: Value = serde_json::from_str(stored.value.expose_secret()).unwrap();
            for field in ["access_token", "refresh_token"] {
                if let Some(token) = json[field].as_str() {
                    tokens.push(token.to_owned());
                }
            }
        }
        tokens
    }

    /// Stores a pair for another Keap account, as an earlier authorization would have.
    pub async fn seed(&self, account: &str) {
        let grant = TokenGrant {
            access_token: SecretString::from("seeded-access-token"),
            refresh_token: SecretString::from("seeded-refresh-token"),
            expires_in: Duration::from_secs(86_400),
            scope: format!("full|{account}"),
            account: Some(account.into()),
        };
        self.connection.connect(grant, false).await.unwrap();
    }
}

/// A value of a query string.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
