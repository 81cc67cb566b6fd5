//! Keap's OAuth endpoints: the authorize URL, the code exchange and the refresh.
//!
//! Every failure is classified by what it means for a single-use refresh token:
//! [`OAuthError::NotSent`] is safe to retry, [`OAuthError::OutcomeUnknown`] is not (Keap may
//! have rotated the token and the answer was lost), [`OAuthError::RefreshTokenRejected`] means
//! the token is dead or was used by someone else. No error or `Debug` output holds a secret.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::retry_after;
use crate::config::{AppSecret, Config, ConfigError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// HTTP 400 `invalid_grant` / `invalid_request` to a refresh: the refresh token is dead,
    /// or a concurrent rotation used it first.
    #[error("Keap refused the refresh token ({error}: {description})")]
    RefreshTokenRejected { error: String, description: String },
    /// HTTP 400 to a code exchange: the code expired, was used, or the redirect URI differs.
    #[error("Keap refused the authorization code ({error}: {description})")]
    CodeRejected { error: String, description: String },
    /// The client id or secret is wrong.
    #[error("Keap refused the client credentials ({0}); check client_id and client_secret in the app secret")]
    InvalidClient(String),
    /// 5xx or 429: nothing was issued; retry later.
    #[error("Keap's token endpoint is temporarily unavailable (HTTP {status})")]
    Transient { status: u16, retry_after: Option<Duration> },
    /// The request never reached Keap (connection refused, DNS): safe to retry.
    #[error("could not reach Keap's token endpoint: {0}")]
    NotSent(String),
    /// The request was sent but no answer came back (timeout, connection reset): Keap may
    /// have issued a new pair and retired the refresh token.
    #[error("Keap's answer was lost ({0}); it may have rotated the token")]
    OutcomeUnknown(String),
    /// An answer this client does not understand.
    #[error("unexpected answer from Keap's token endpoint (HTTP {status}): {detail}")]
    Protocol { status: u16, detail: String },
}

impl OAuthError {
    /// True when Keap may have issued a new pair that this caller never saw: retrying with
    /// the same refresh token could spend a token that is already rotated.
    pub fn may_have_rotated(&self) -> bool {
        match self {
            OAuthError::OutcomeUnknown(_) => true,
            OAuthError::Protocol { status, .. } => (200..300).contains(status),
            _ => false,
        }
    }
}

/// The refresh call, as a port: the token source depends on this, tests count calls to fakes.
#[async_trait]
pub trait TokenEndpoint: Send + Sync + std::fmt::Debug {
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, OAuthError>;
}

/// Client for Keap's authorize page and token endpoint.
#[derive(Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    token_url: Url,
    authorize_url: Url,
    client_id: String,
    client_secret: SecretString,
    timeout: Duration,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.token_url.as_str())
            .field("authorize_url", &self.authorize_url.as_str())
            .field("client_id", &self.client_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Where Keap's authorize page and token endpoint are, and how long a call may take.
#[derive(Debug, Clone)]
pub struct OAuthEndpoints {
    pub authorize_url: Url,
    pub token_url: Url,
    pub timeout: Duration,
}

impl OAuthEndpoints {
    /// `KEAP_AUTHORIZE_URL`, `KEAP_TOKEN_URL` and `KEAP_HTTP_TIMEOUT_SECONDS`.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let parse = |name, value: &str| {
            Url::parse(value).map_err(|e| ConfigError::Invalid {
                name,
                reason: e.to_string(),
            })
        };
        Ok(Self {
            authorize_url: parse("KEAP_AUTHORIZE_URL", &config.authorize_url)?,
            token_url: parse("KEAP_TOKEN_URL", &config.token_url)?,
            timeout: config.http_timeout,
        })
    }
}

impl OAuthClient {
    pub fn new(
        http: reqwest::Client,
        token_url: Url,
        authorize_url: Url,
        client_id: String,
        client_secret: SecretString,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            token_url,
            authorize_url,
            client_id,
            client_secret,
            timeout,
        }
    }

    /// The client of `endpoints` with the app secret's `client_id` and `client_secret`.
    pub fn with_app_secret(
        http: reqwest::Client,
        endpoints: &OAuthEndpoints,
        app_secret: &AppSecret,
    ) -> Result<Self, ConfigError> {
        let (Some(client_id), Some(client_secret)) = (&app_secret.client_id, &app_secret.client_secret) else {
            return Err(ConfigError::AppSecret(
                "oauth mode needs client_id and client_secret in the app secret".into(),
            ));
        };
        Ok(Self::new(
            http,
            endpoints.token_url.clone(),
            endpoints.authorize_url.clone(),
            client_id.clone(),
            client_secret.clone(),
            endpoints.timeout,
        ))
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Keap's authorize page for this client (`response_type=code`, `scope=full`).
    pub fn authorize_url(&self, redirect_uri: &str, state: &str) -> Url {
        let mut url = self.authorize_url.clone();
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("response_type", "code")
            .append_pair("scope", "full")
            .append_pair("state", state);
        url
    }

    /// Exchanges an authorization code (client credentials in the body, as Keap documents).
    pub async fn exchange_code(&self, code: &str, redirect_uri: &str) -> Result<TokenGrant, OAuthError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose_secret()),
        ];
        let request = self.http.post(self.token_url.clone()).form(&form);
        self.token_call(request, GrantKind::Code).await
    }

    /// Spends `refresh_token` for a new pair (client credentials as HTTP Basic).
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, OAuthError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let request = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .form(&form);
        self.token_call(request, GrantKind::Refresh).await
    }

    async fn token_call(&self, request: reqwest::RequestBuilder, kind: GrantKind) -> Result<TokenGrant, OAuthError> {
        let response = request
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(classify_send_error)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let tenant_header = response
            .headers()
            .get("x-keap-tenant-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) if status.is_success() => {
                return Err(OAuthError::OutcomeUnknown(format!(
                    "reading the answer failed: {}",
                    without_url(&e)
                )));
            }
            Err(_) => return Err(classify_status(status, retry_after, &[], kind)),
        };
        if !status.is_success() {
            return Err(classify_status(status, retry_after, &body, kind));
        }
        parse_grant(&body, tenant_header).map_err(|detail| OAuthError::Protocol {
            status: status.as_u16(),
            detail,
        })
    }
}

#[async_trait]
impl TokenEndpoint for OAuthClient {
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, OAuthError> {
        OAuthClient::refresh(self, refresh_token).await
    }
}

#[derive(Debug, Clone, Copy)]
enum GrantKind {
    Code,
    Refresh,
}

/// reqwest errors name the URL; ours carry no secret, but keep messages short and stable.
fn without_url(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    if let Some(url) = error.url() {
        message = message.replace(url.as_str(), "token endpoint");
    }
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

fn classify_send_error(error: reqwest::Error) -> OAuthError {
    if error.is_connect() || error.is_builder() {
        OAuthError::NotSent(without_url(&error))
    } else {
        // Timeouts and connections closed after the request went out: Keap may have acted.
        OAuthError::OutcomeUnknown(without_url(&error))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

fn classify_status(status: StatusCode, retry_after: Option<Duration>, body: &[u8], kind: GrantKind) -> OAuthError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return OAuthError::Transient {
            status: status.as_u16(),
            retry_after,
        };
    }
    if status.is_redirection() {
        // The client follows no redirect: it would resend the client secret or the refresh
        // token to wherever the `Location` points. Nothing was issued here.
        return OAuthError::Protocol {
            status: status.as_u16(),
            detail: "a redirect, not followed (check KEAP_TOKEN_URL)".into(),
        };
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (error, description) = parsed
        .map(|b| (b.error, truncate(&b.error_description)))
        .unwrap_or_default();
    match (status, error.as_str()) {
        (_, "invalid_client" | "unauthorized_client") | (StatusCode::UNAUTHORIZED, _) => {
            OAuthError::InvalidClient(if error.is_empty() {
                format!("HTTP {}", status.as_u16())
            } else {
                error
            })
        }
        (StatusCode::BAD_REQUEST, "invalid_grant" | "invalid_request") => match kind {
            GrantKind::Refresh => OAuthError::RefreshTokenRejected { error, description },
            GrantKind::Code => OAuthError::CodeRejected { error, description },
        },
        _ => OAuthError::Protocol {
            status: status.as_u16(),
            detail: if error.is_empty() {
                "no OAuth error code in the body".into()
            } else {
                format!("{error}: {description}")
            },
        },
    }
}

/// Keap's descriptions are short fixed texts; cap them anyway so no echoed input gets far.
fn truncate(text: &str) -> String {
    text.chars().take(120).collect()
}

/// The longest access-token life taken from Keap's `expires_in` (Keap's own is 24 hours): a
/// larger one is read as this, so the expiry time stays a time the token secret can hold.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(365 * 86_400);

/// A freshly authorized pair from the OAuth callback's code exchange (or any refresh).
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_in: Duration,
    /// Raw `scope`, e.g. `full|ab123.infusionsoft.com`.
    pub scope: String,
    /// The Keap account (tenant), from the part of `scope` after `|` or `x-keap-tenant-id`.
    pub account: Option<String>,
}

#[derive(Deserialize)]
struct GrantBody {
    access_token: SecretString,
    refresh_token: Option<SecretString>,
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    scope: String,
}

fn parse_grant(body: &[u8], tenant_header: Option<String>) -> Result<TokenGrant, String> {
    // serde_json may quote the offending value: report only the error's kind and position.
    let grant: GrantBody = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the token answer is not the expected JSON ({:?} error at column {})",
            e.classify(),
            e.column()
        )
    })?;
    let refresh_token = grant.refresh_token.ok_or("the token answer has no refresh_token")?;
    let expires_in = match &grant.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or("the token answer has no valid expires_in")?
    .min(MAX_EXPIRES_IN.as_secs());
    let account = grant
        .scope
        .split_once('|')
        .map(|(_, tenant)| tenant.trim().to_owned())
        .filter(|tenant| !tenant.is_empty())
        .or(tenant_header.filter(|t| !t.trim().is_empty()));
    Ok(TokenGrant {
        access_token: grant.access_token,
        refresh_token,
        expires_in: Duration::from_secs(expires_in),
        scope: grant.scope,
        account,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_takes_lifetime_and_tenant_from_the_answer() {
        let body = br#"{"access_token":"a","token_type":"bearer","expires_in":28800,"refresh_token":"r","scope":"full|ab123.infusionsoft.com"}"#;
        let grant = parse_grant(body, None).unwrap();
        assert_eq!(grant.expires_in, Duration::from_secs(28800));
        assert_eq!(grant.account.as_deref(), Some("ab123.infusionsoft.com"));
        assert_eq!(grant.scope, "full|ab123.infusionsoft.com");
    }

    #[test]
    fn tenant_falls_back_to_the_header() {
        let body = br#"{"access_token":"a","expires_in":"86400","refresh_token":"r","scope":"full"}"#;
        let grant = parse_grant(body, Some("xy9".into())).unwrap();
        assert_eq!(grant.account.as_deref(), Some("xy9"));
        assert_eq!(grant.expires_in, Duration::from_secs(86400));
    }

    #[test]
    fn an_absurd_lifetime_is_capped() {
        let body = br#"{"access_token":"a","expires_in":18446744073709551615,"refresh_token":"r","scope":"full"}"#;
        assert_eq!(parse_grant(body, None).unwrap().expires_in, MAX_EXPIRES_IN);
    }

    #[test]
    fn redirects_are_protocol_errors_that_spent_nothing() {
        for status in [
            StatusCode::TEMPORARY_REDIRECT,
            StatusCode::PERMANENT_REDIRECT,
            StatusCode::FOUND,
        ] {
            let error = classify_status(status, None, br#"{"error":"invalid_grant"}"#, GrantKind::Refresh);
            assert!(matches!(error, OAuthError::Protocol { .. }), "{error:?}");
            assert!(!error.may_have_rotated());
        }
    }

    #[test]
    fn malformed_answers_never_quote_their_content() {
        let error = parse_grant(br#"{"access_token":12345678,"refresh_token":"s3cr3t"}"#, None).unwrap_err();
        assert!(!error.contains("12345678") && !error.contains("s3cr3t"), "{error}");
        assert!(
            parse_grant(br#"{"access_token":"a","refresh_token":"r"}"#, None)
                .unwrap_err()
                .contains("expires_in")
        );
    }

    #[test]
    fn status_codes_are_classified() {
        let rejected = classify_status(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":"invalid_request","error_description":"Invalid Refresh Token"}"#,
            GrantKind::Refresh,
        );
        assert!(matches!(rejected, OAuthError::RefreshTokenRejected { .. }));
        let code = classify_status(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":"invalid_grant"}"#,
            GrantKind::Code,
        );
        assert!(matches!(code, OAuthError::CodeRejected { .. }));
        let client = classify_status(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":"invalid_client"}"#,
            GrantKind::Refresh,
        );
        assert!(matches!(client, OAuthError::InvalidClient(_)));
        let throttled = classify_status(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(7)),
            b"{}",
            GrantKind::Refresh,
        );
        assert!(
            matches!(throttled, OAuthError::Transient { status: 429, retry_after: Some(d) } if d == Duration::from_secs(7))
        );
        assert!(matches!(
            classify_status(StatusCode::BAD_GATEWAY, None, b"", GrantKind::Refresh),
            OAuthError::Transient { status: 502, .. }
        ));
        assert!(matches!(
            classify_status(StatusCode::FORBIDDEN, None, b"", GrantKind::Refresh),
            OAuthError::Protocol { status: 403, .. }
        ));
    }

    #[test]
    fn authorize_url_carries_the_documented_parameters() {
        let client = OAuthClient::new(
            reqwest::Client::new(),
            Url::parse("https://example.test/token").unwrap(),
            Url::parse("https://example.test/authorize").unwrap(),
            "cid".into(),
            SecretString::from("s3cr3t-value"),
            Duration::from_secs(1),
        );
        let url = client.authorize_url("https://app.test/oauth/callback", "st&ate");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("client_id"), Some("cid"));
        assert_eq!(get("redirect_uri"), Some("https://app.test/oauth/callback"));
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("scope"), Some("full"));
        assert_eq!(get("state"), Some("st&ate"));
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }
}
