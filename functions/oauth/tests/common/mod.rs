//! Test harness: the real handler, the in-process Keap sandbox, the real `OAuthClient`
//! adapter, and the real token source over a memory store.

#![allow(dead_code)]

use std::sync::Arc;
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
use oauth::ports::{AppSecretSource, SecretUnavailable};
use oauth::{OAuthDeps, handle};
use serde_json::Value;

pub const ADMIN_PASSWORD: &str = "local-admin-password";
pub const REDIRECT_URI: &str = "https://relay.example.com/oauth/callback";

/// The events in `events/` as JSON, to be adjusted and parsed like API Gateway's payloads.
pub use test_support::events::json as event_json;
/// An event file exactly as stored.
pub use test_support::events::request as event;
pub use test_support::events::to_request;

/// An event file with another query string (raw and parsed, as API Gateway sends both).
pub fn event_with_query(name: &str, raw_query: &str) -> Request {
    let mut json = event_json(name);
    let mut parsed = serde_json::Map::new();
    for (key, value) in url::form_urlencoded::parse(raw_query.as_bytes()) {
        parsed.insert(key.into_owned(), Value::String(value.into_owned()));
    }
    json["rawQueryString"] = Value::String(raw_query.to_owned());
    json["queryStringParameters"] = Value::Object(parsed);
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
        signup_signing_key: None,
        admin_password: admin_password.map(SecretString::from),
    }
}

pub const TOKEN_SECRET_ID: &str = "keap-relay/token";

pub struct Harness {
    pub sandbox: Sandbox,
    pub deps: OAuthDeps,
    pub store: Arc<MemoryStore>,
    pub connection: Arc<dyn Connection>,
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
        let deps = OAuthDeps {
            mode,
            redirect_uri: Some(REDIRECT_URI.into()),
            secrets: secrets.clone(),
            keap: Arc::new(KeapAuthorization::new(
                Arc::new(LazyOAuthClient::new(endpoints, http.clone())),
                secrets,
            )),
            connection: connection.clone(),
        };
        Harness {
            sandbox,
            deps,
            store,
            connection,
            http,
        }
    }

    pub async fn run(&self, request: Request) -> Response<Body> {
        handle(request, &self.deps).await
    }

    /// `/oauth/start` (as in `events/oauth-start.json`, plus `query`), then Keap's authorize
    /// page (auto-approving): the query string Keap sends back to the callback.
    pub async fn authorize(&self, query: &str) -> String {
        let start = self.run(event_with_query("oauth-start.json", query)).await;
        assert_eq!(start.status(), 302, "{}", body_text(&start));
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

    /// The whole browser round trip; returns the callback's response.
    pub async fn connect_via_browser(&self, start_query: &str) -> Response<Body> {
        let callback_query = self.authorize(start_query).await;
        self.run(event_with_query("oauth-callback.json", &callback_query)).await
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
