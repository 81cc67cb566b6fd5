//! Counters and the call log, read by tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a request presented its credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthKind {
    /// No credentials at all.
    #[default]
    None,
    /// `Authorization: Bearer <token>` (an access token or an API key).
    Bearer,
    /// `X-Keap-API-Key: <key>`.
    ApiKey,
    /// `Authorization: Basic <base64(id:secret)>`.
    Basic,
    /// `client_id` / `client_secret` form fields on `/token`.
    BodyCredentials,
}

/// One request as the sandbox saw it. `path` has no query string (it could hold a code).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    pub auth: AuthKind,
    /// The HTTP status sent; 0 when the connection was closed without a response
    /// (the `drop_next_refresh_responses` fault).
    pub status: u16,
}

/// A snapshot of everything the sandbox counted since start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Successful `refresh_token` grants (including those whose response was dropped).
    pub refreshes_served: u64,
    /// Failed `refresh_token` grants by reason: `invalid_grant_unknown`, `invalid_grant_used`,
    /// `invalid_grant_expired`, `invalid_grant_revoked`, `invalid_client`,
    /// `missing_client_auth`, `bad_auth_header`, `invalid_request`.
    pub refresh_failures: BTreeMap<String, u64>,
    /// Successful `authorization_code` grants.
    pub code_exchanges: u64,
    pub code_exchange_failures: u64,
    /// Failed code exchanges by reason: `invalid_grant_unknown`, `invalid_grant_used`,
    /// `invalid_grant_expired`, `redirect_uri_mismatch`, `client_mismatch`, `invalid_client`,
    /// `missing_client_auth`, `invalid_request`.
    pub code_exchange_failure_reasons: BTreeMap<String, u64>,
    /// `/token` requests refused before their grant type was known: `unsupported_content_type`,
    /// `invalid_request`, `unsupported_grant_type`.
    pub token_request_failures: BTreeMap<String, u64>,
    /// Pairs issued through `Sandbox::mint_grant` or `POST /_sandbox/grant`.
    pub grants_minted: u64,
    pub contacts_created: u64,
    pub contacts_updated: u64,
    /// Tag applications that changed something (`SUCCESS`), not duplicates.
    pub tags_applied: u64,
    pub tags_created: u64,
    /// One per recipient contact of a queued / sent email.
    pub emails_queued: u64,
    /// REST calls answered 401.
    pub unauthorized: u64,
    /// REST calls answered 429.
    pub throttled: u64,
    /// Injected 5xx answers (REST and `/token`).
    pub server_errors: u64,
    /// Of those, answers to an email send or goal achievement sent after it was done.
    pub sent_despite_5xx: u64,
    /// API goals achieved (one per listening campaign started).
    pub campaigns_started: u64,
    /// Achievements of a goal no campaign listens to.
    pub goals_without_listener: u64,
    /// Responses deliberately not sent (connection closed instead).
    pub dropped_responses: u64,
    pub calls: Vec<CallRecord>,
}

impl Stats {
    /// All refresh failures, whatever the reason.
    pub fn refresh_failures_total(&self) -> u64 {
        self.refresh_failures.values().sum()
    }

    /// Refresh failures for one reason (0 when none).
    pub fn refresh_failure(&self, reason: &str) -> u64 {
        self.refresh_failures.get(reason).copied().unwrap_or(0)
    }

    /// Calls whose method and path match exactly.
    pub fn calls_to(&self, method: &str, path: &str) -> usize {
        self.calls
            .iter()
            .filter(|c| c.method.eq_ignore_ascii_case(method) && c.path == path)
            .count()
    }

    pub(crate) fn count(map: &mut BTreeMap<String, u64>, reason: &str) {
        *map.entry(reason.to_owned()).or_default() += 1;
    }
}
