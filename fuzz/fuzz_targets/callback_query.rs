//! `GET /oauth/callback` with an arbitrary query string, through the same path API Gateway
//! takes: the raw query is parsed into `queryStringParameters` (repeated names joined with
//! commas), the event goes through `lambda_http`'s deserializer, and `oauth::handle` answers
//! with doubles for the app secret, Keap and the token store.
//!
//! The literal `state=VALID` in the input is replaced by a freshly issued state, so the fuzzer
//! also reaches the code exchange and the connect. Query strings that are not valid in a URI
//! are skipped: no HTTP request can carry them. Checks: no panic; only documented statuses
//! (never a 500); no secret in any answer; input never comes back unescaped in a page.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::config::{AppSecret, AuthMode};
use keap_relay::oauth_state::StateKey;
use keap_relay::token::{
    ConnectError, ConnectOutcome, Connection, ConnectionStatus, Credential, CredentialSource, RotationPolicy,
    RotationReport, TokenError, TokenGrant,
};
use lambda_http::Body;
use libfuzzer_sys::fuzz_target;
use oauth::OAuthDeps;
use oauth::ports::{AppSecretSource, AuthorizationServer, ExchangeError, MetricsSink, SecretUnavailable};
use serde_json::{Map, Value, json};

const CLIENT_SECRET: &str = "fuzz-client-secret";
const SIGNING_KEY: &str = "fuzz-signup-signing-key";
const ADMIN_PASSWORD: &str = "fuzz-admin-password";
const ISSUED_ACCESS: &str = "fuzz-issued-access-token";
const ISSUED_REFRESH: &str = "fuzz-issued-refresh-token";
const REDIRECT_URI: &str = "https://relay.example.com/oauth/callback";

struct Secret;

#[async_trait]
impl AppSecretSource for Secret {
    async fn app_secret(&self) -> Result<Arc<AppSecret>, SecretUnavailable> {
        Ok(Arc::new(AppSecret {
            client_id: Some("fuzz-client".into()),
            client_secret: Some(SecretString::from(CLIENT_SECRET)),
            api_key: None,
            signup_signing_key: Some(SecretString::from(SIGNING_KEY)),
            admin_password: Some(SecretString::from(ADMIN_PASSWORD)),
        }))
    }
}

/// Keap: the code `good` (or `other-account`) is exchanged; any other code is refused.
struct Keap;

#[async_trait]
impl AuthorizationServer for Keap {
    async fn authorize_url(&self, redirect_uri: &str, state: &str) -> Result<String, ExchangeError> {
        Ok(format!(
            "https://keap.example/authorize?redirect_uri={redirect_uri}&state={state}"
        ))
    }

    async fn exchange_code(&self, code: &str, _redirect_uri: &str) -> Result<TokenGrant, ExchangeError> {
        let account = match code {
            "good" => "ab123.infusionsoft.com",
            "other-account" => "zz999.infusionsoft.com",
            "down" => return Err(ExchangeError::Unavailable("HTTP 503".into())),
            _ => {
                return Err(ExchangeError::CodeRejected {
                    error: "invalid_grant".into(),
                    description: None,
                });
            }
        };
        Ok(TokenGrant {
            access_token: SecretString::from(ISSUED_ACCESS),
            refresh_token: SecretString::from(ISSUED_REFRESH),
            expires_in: Duration::from_secs(86_400),
            scope: format!("full|{account}"),
            account: Some(account.into()),
        })
    }
}

/// A store connected to `ab123` long ago (so any fresh state is newer than the pair).
struct Store;

#[async_trait]
impl CredentialSource for Store {
    async fn credential(&self) -> Result<Credential, TokenError> {
        Err(TokenError::NotConnected)
    }

    async fn after_unauthorized(&self, _rejected: &Credential) -> Result<Credential, TokenError> {
        Err(TokenError::NotConnected)
    }
}

#[async_trait]
impl Connection for Store {
    async fn connect(&self, grant: TokenGrant, allow_switch: bool) -> Result<ConnectOutcome, ConnectError> {
        match grant.account.as_deref() {
            Some("zz999.infusionsoft.com") if !allow_switch => Err(ConnectError::DifferentAccount {
                current: "ab123.infusionsoft.com".into(),
                requested: "zz999.infusionsoft.com".into(),
            }),
            account => Ok(ConnectOutcome::Connected {
                account: account.map(str::to_owned),
                replaced: true,
            }),
        }
    }

    async fn status(&self) -> Result<ConnectionStatus, TokenError> {
        Ok(ConnectionStatus {
            mode: "oauth",
            connected: true,
            account: Some("ab123.infusionsoft.com".into()),
            access_expires_at: None,
            access_expires_in_seconds: None,
            refresh_token_age_days: None,
            last_refresh_at: Some(SystemTime::now() - Duration::from_secs(3600)),
            last_error: None,
            needs_reauth: false,
            needs_reauth_reason: None,
            generation: Some(1),
            retry_not_before: None,
        })
    }

    async fn rotate_if_due(&self, _policy: RotationPolicy) -> Result<RotationReport, TokenError> {
        Err(TokenError::NotConnected)
    }
}

/// The failed-login metric goes nowhere here.
struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn emit(&self, _line: &str) {}
}

struct World {
    runtime: tokio::runtime::Runtime,
    deps: OAuthDeps,
    key: StateKey,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
        deps: OAuthDeps {
            mode: AuthMode::OAuth,
            redirect_uri: Some(REDIRECT_URI.into()),
            secrets: Arc::new(Secret),
            keap: Arc::new(Keap),
            connection: Arc::new(Store),
            function_name: "oauth".into(),
            metrics: Arc::new(NoMetrics),
            quota: None,
        },
        key: StateKey::from_deployment_secrets(&SecretString::from(SIGNING_KEY), &SecretString::from(ADMIN_PASSWORD)),
    })
}

/// API Gateway's `queryStringParameters`: decoded pairs, repeated names joined with commas.
fn parameters(raw: &str) -> Map<String, Value> {
    let mut parameters = Map::new();
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        match parameters.get_mut(name.as_ref()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                parameters.insert(name.into_owned(), Value::String(value.into_owned()));
            }
        }
    }
    parameters
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let issued = world.key.issue(
        REDIRECT_URI,
        data.first().is_some_and(|b| b & 1 == 1),
        SystemTime::now(),
    );
    let raw = String::from_utf8_lossy(data).replace("state=VALID", &format!("state={}", issued.value));
    // An HTTP request line carries only a valid URI; lambda_http panics ("failed to build
    // request") on an event whose raw query is not one (see docs/security.md), so such input
    // is outside what API Gateway delivers and outside this target.
    if format!("/oauth/callback?{raw}")
        .parse::<lambda_http::http::Uri>()
        .is_err()
    {
        return;
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/oauth/callback",
        "rawQueryString": raw,
        "headers": {"host": "relay.example.com"},
        // The browser that started the sign-in carries the state's binding cookie.
        "cookies": [format!("{}={}", oauth::state_cookie::NAME, keap_relay::ExposeSecret::expose_secret(&issued.browser_binding))],
        "requestContext": {
            "http": {"method": "GET", "path": "/oauth/callback", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "fuzz"},
            "stage": "$default",
            "requestId": "fuzz",
            "routeKey": "$default",
            "accountId": "fuzz",
            "apiId": "fuzz",
            "domainName": "relay.example.com",
            "timeEpoch": 0
        },
        "isBase64Encoded": false
    });
    let query = parameters(&raw);
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    // What API Gateway sends always deserializes; anything else is not this target's concern.
    let Ok(request) = lambda_http::request::from_str(&event.to_string()) else {
        return;
    };
    let response = world.runtime.block_on(oauth::handle(request, &world.deps));
    let status = response.status().as_u16();
    assert!(
        matches!(status, 200 | 400 | 403 | 409 | 502 | 503),
        "undocumented status {status} for {raw:?}"
    );
    let body = match response.body() {
        Body::Text(text) => text.clone(),
        Body::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    };
    for secret in [CLIENT_SECRET, ADMIN_PASSWORD, ISSUED_ACCESS, ISSUED_REFRESH] {
        assert!(!body.contains(secret), "a secret in the answer to {raw:?}");
    }
    let lower = body.to_ascii_lowercase();
    assert!(
        !lower.contains("<script") && !lower.contains("<img") && !lower.contains("<svg"),
        "markup from the input: {body}"
    );
});
