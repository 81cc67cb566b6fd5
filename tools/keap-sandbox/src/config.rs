//! How a sandbox is set up: OAuth clients, API keys, lifetimes and policies.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One registered OAuth client (a "Keap app").
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Registered redirect URIs, compared exactly. Empty: any http(s) URI is accepted.
    pub redirect_uris: Vec<String>,
}

impl ClientConfig {
    /// A client that accepts any http(s) redirect URI.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uris: Vec::new(),
        }
    }

    /// Restrict the client to these redirect URIs.
    pub fn with_redirect_uris<I, S>(mut self, uris: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.redirect_uris = uris.into_iter().map(Into::into).collect();
        self
    }
}

// The secret never reaches a log line.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("redirect_uris", &self.redirect_uris)
            .finish()
    }
}

/// What happens when a refresh token that was already used is presented again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReusePolicy {
    /// The reuse is refused with `invalid_grant`; the grant's current pair keeps working.
    #[default]
    Reject,
    /// The reuse is refused with `invalid_grant` and the whole grant (its current access
    /// and refresh token) is revoked, as the OAuth 2.0 Security BCP allows.
    RevokeFamily,
}

/// Request quota per credential (per OAuth client, or per API key), enforced in fixed windows
/// and reported in Keap's headers (`x-keap-product-throttle-*` for the second,
/// `x-keap-product-quota-*` for the minute and the day). Zero means no limit for that window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub per_minute: u32,
    /// Calls per day; the day resets at 00:00 UTC, as Keap's does.
    #[serde(default)]
    pub per_day: u32,
    /// Shortens the minute and the day by this factor (1 = real time; 10 = a 6 s "minute"),
    /// so that tests can run through several windows in seconds. The second stays a second.
    /// The headers report the shortened windows, so a client that reads them paces right.
    #[serde(default = "one")]
    pub time_scale: u32,
}

fn one() -> u32 {
    1
}

impl RateLimit {
    /// No limit in any window: the base for a struct literal (`..RateLimit::OFF`).
    pub const OFF: RateLimit = RateLimit {
        per_second: 0,
        per_minute: 0,
        per_day: 0,
        time_scale: 1,
    };

    /// Keap's documented quota for Personal Access Tokens and Service Account Keys.
    pub const KEAP_API_KEY: RateLimit = RateLimit {
        per_second: 10,
        per_minute: 240,
        per_day: 30_000,
        time_scale: 1,
    };

    /// Keap's documented quota for an OAuth client (one app record, shared by every account
    /// connected to it), with the spike limit of about 25 calls a second.
    pub const KEAP_OAUTH_CLIENT: RateLimit = RateLimit {
        per_second: 25,
        per_minute: 1500,
        per_day: 150_000,
        time_scale: 1,
    };
}

/// Everything a sandbox needs to start. `Default` gives a ready-to-use setup.
#[derive(Clone)]
pub struct SandboxConfig {
    pub clients: Vec<ClientConfig>,
    /// Personal Access Tokens / Service Account Keys, accepted via `X-Keap-API-Key`
    /// or `Authorization: Bearer`.
    pub api_keys: Vec<String>,
    /// Keap account name: scope `full|<tenant>.infusionsoft.com`, header `x-keap-tenant-id`.
    pub tenant: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub code_ttl: Duration,
    pub reuse_policy: ReusePolicy,
    /// The authorize page redirects at once with a code instead of showing a consent page.
    pub auto_approve: bool,
    pub rate_limit: Option<RateLimit>,
}

pub const DEFAULT_CLIENT_ID: &str = "sandbox-client";
pub const DEFAULT_CLIENT_SECRET: &str = "sandbox-secret";
pub const DEFAULT_API_KEY: &str = "KeapAK-sandbox-key";
pub const DEFAULT_TENANT: &str = "ab123";

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            clients: vec![ClientConfig::new(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)],
            api_keys: vec![DEFAULT_API_KEY.to_owned()],
            tenant: DEFAULT_TENANT.to_owned(),
            access_ttl: Duration::from_secs(86_400),
            refresh_ttl: Duration::from_secs(45 * 86_400),
            code_ttl: Duration::from_secs(60),
            reuse_policy: ReusePolicy::Reject,
            auto_approve: false,
            rate_limit: None,
        }
    }
}

impl SandboxConfig {
    /// The scope string Keap returns with every token: `full|<tenant>.infusionsoft.com`.
    pub fn scope(&self) -> String {
        format!("full|{}.infusionsoft.com", self.tenant)
    }

    pub(crate) fn client(&self, client_id: &str) -> Option<&ClientConfig> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }
}

impl fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("clients", &self.clients)
            .field("api_keys", &format_args!("[{} redacted]", self.api_keys.len()))
            .field("tenant", &self.tenant)
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("code_ttl", &self.code_ttl)
            .field("reuse_policy", &self.reuse_policy)
            .field("auto_approve", &self.auto_approve)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}
