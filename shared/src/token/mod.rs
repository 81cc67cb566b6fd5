//! The token source: hands out a valid Keap credential and hides all refreshing behind it
//! (in the spirit of Go's `oauth2.ReuseTokenSource`).
//!
//! Handlers depend on the [`CredentialSource`] and [`Connection`] ports only, so tests can
//! inject doubles; the real implementation is [`TokenSource`] (OAuth, rotating pair in a
//! [`crate::store::SecretStore`]) and [`ApiKeySource`] (a PAT or Service Account Key).

pub mod api_key;
pub mod clock;
pub mod invocation;
mod protocol;
pub mod settings;
pub mod source;
pub mod state;
mod versions;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

pub use api_key::ApiKeySource;
pub use clock::{Clock, SystemClock, TokioClock};
pub use settings::TokenSettings;
pub use source::TokenSource;
pub use state::{LinkStatus, TokenState};
pub use versions::{Step, child_version_id};

/// Defined next to the token endpoint's answer it is parsed from.
pub use crate::keap::oauth::TokenGrant;

/// What authenticates one call to Keap's REST API.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An OAuth access token, sent as `Authorization: Bearer`.
    AccessToken { token: SecretString, generation: u64 },
    /// A Personal Access Token or Service Account Key, sent as `X-Keap-API-Key`.
    ApiKey(SecretString),
}

impl Credential {
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Credential::AccessToken { token, .. } => request.bearer_auth(token.expose_secret()),
            Credential::ApiKey(key) => request.header("X-Keap-API-Key", key.expose_secret()),
        }
    }

    /// True when both are the same secret (used after a 401 to tell a stale cache apart).
    pub fn same_as(&self, other: &Credential) -> bool {
        match (self, other) {
            (Credential::AccessToken { token: a, .. }, Credential::AccessToken { token: b, .. })
            | (Credential::ApiKey(a), Credential::ApiKey(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// No pair was ever stored (nobody went through `/oauth/start` yet).
    #[error("Keap is not connected: an administrator must open /oauth/start")]
    NotConnected,
    /// Keap refused the stored refresh token; only a new authorization helps.
    #[error("the Keap connection needs re-authorization: {reason}")]
    NeedsReauth { reason: String },
    /// Keap or the store is failing for now; worth retrying later.
    #[error("Keap credentials temporarily unavailable: {detail}")]
    Unavailable {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The client id or secret is wrong, or the configuration is incomplete.
    #[error("Keap client misconfigured: {0}")]
    Misconfigured(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Port used by the signup path.
#[async_trait]
pub trait CredentialSource: Send + Sync {
    /// A credential that is valid now. With a cached, healthy token this makes no store call.
    async fn credential(&self) -> Result<Credential, TokenError>;

    /// Keap answered 401 to `rejected`: re-read the store (another process may have rotated)
    /// and hand out a different credential, refreshing only if the stored one is the rejected one.
    async fn after_unauthorized(&self, rejected: &Credential) -> Result<Credential, TokenError>;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ConnectOutcome {
    /// First connection, or the same account again (pair replaced safely).
    Connected { account: Option<String>, replaced: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("already connected to Keap account {current}; start again with ?switch=1 to connect {requested} instead")]
    DifferentAccount { current: String, requested: String },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// When the scheduled function rotates ahead of need.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// Rotate when the access token has less than this left.
    pub lead: Duration,
    /// Rotate when the refresh token is older than this.
    pub max_refresh_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationAction {
    /// Nothing was due.
    NotDue,
    /// This call rotated the pair.
    Rotated,
    /// Another process rotated while we waited.
    RotatedByOther,
    /// API-key mode: nothing to rotate; the key was checked.
    ApiKeyChecked,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationReport {
    pub action: RotationAction,
    pub status: ConnectionStatus,
}

/// What `/status` reports and the refresh function logs. Never a token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionStatus {
    /// `oauth` or `api-key`.
    pub mode: &'static str,
    pub connected: bool,
    pub account: Option<String>,
    #[serde(with = "opt_rfc3339")]
    pub access_expires_at: Option<SystemTime>,
    pub access_expires_in_seconds: Option<i64>,
    pub refresh_token_age_days: Option<f64>,
    #[serde(with = "opt_rfc3339")]
    pub last_refresh_at: Option<SystemTime>,
    pub last_error: Option<String>,
    pub needs_reauth: bool,
    pub needs_reauth_reason: Option<String>,
    pub generation: Option<u64>,
    /// After failed refreshes, no process tries again before this time (the shared backoff).
    #[serde(with = "opt_rfc3339")]
    pub retry_not_before: Option<SystemTime>,
    /// When `last_error` happened (the console's "last failure").
    #[serde(with = "opt_rfc3339")]
    pub last_error_at: Option<SystemTime>,
    /// Since when the connection needs re-authorization.
    #[serde(with = "opt_rfc3339")]
    pub needs_reauth_since: Option<SystemTime>,
}

/// Port used by the oauth and refresh functions.
#[async_trait]
pub trait Connection: CredentialSource {
    /// Stores a pair from the OAuth callback. Refuses to replace a connection to a different
    /// Keap account unless `allow_switch`.
    async fn connect(&self, grant: TokenGrant, allow_switch: bool) -> Result<ConnectOutcome, ConnectError>;

    /// The connection's health as stored (one store read).
    async fn status(&self) -> Result<ConnectionStatus, TokenError>;

    /// Rotates when the policy says it is due, through the same lease protocol as requests.
    async fn rotate_if_due(&self, policy: RotationPolicy) -> Result<RotationReport, TokenError>;
}

pub(crate) mod opt_rfc3339 {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(time) => serializer.collect_str(&humantime::format_rfc3339_seconds(*time)),
            None => serializer.serialize_none(),
        }
    }
}
