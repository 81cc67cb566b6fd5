//! Authorization codes, grant families and tokens. Pure, synchronous logic: callers hold
//! the sandbox's single lock around every call, which is what makes a refresh atomic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{ReusePolicy, SandboxConfig};
use crate::stats::Stats;

/// Keap's token response body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub scope: String,
}

/// Why a `/token` request was refused; `reason` is the stats key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// No client authentication where it is required (401 + `WWW-Authenticate`).
    #[error("client authentication missing ({reason})")]
    MissingClientAuth {
        reason: &'static str,
        description: &'static str,
    },
    /// Unknown client or wrong secret (400).
    #[error("invalid_client")]
    InvalidClient,
    #[error("invalid_grant ({reason})")]
    InvalidGrant {
        reason: &'static str,
        description: &'static str,
    },
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
}

impl TokenError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            TokenError::InvalidRequest(_) => "invalid_request",
            TokenError::MissingClientAuth { reason, .. } => reason,
            TokenError::InvalidClient => "invalid_client",
            TokenError::InvalidGrant { reason, .. } => reason,
            TokenError::UnsupportedGrantType => "unsupported_grant_type",
        }
    }
}

const INVALID_REFRESH: &str = "Invalid refresh token";
const INVALID_CODE: &str = "Invalid authorization code";

fn refresh_refused(reason: &'static str) -> TokenError {
    TokenError::InvalidGrant {
        reason,
        description: INVALID_REFRESH,
    }
}

fn code_refused(reason: &'static str, description: &'static str) -> TokenError {
    TokenError::InvalidGrant { reason, description }
}

#[derive(Debug)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    expires_at: Instant,
    /// The grant family the code was exchanged into, once used.
    exchanged_into: Option<u64>,
}

#[derive(Debug)]
struct Family {
    client_id: String,
    revoked: bool,
}

#[derive(Debug)]
struct IssuedToken {
    family: u64,
    expires_at: Instant,
    /// Refresh tokens only: already exchanged for a new pair.
    used: bool,
}

/// Which credential a valid REST caller presented; the rate-limit bucket key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Credential {
    /// An OAuth access token; quotas are per client app, as at Keap.
    OAuthClient(String),
    ApiKey(String),
}

#[derive(Debug, Default)]
pub(crate) struct OAuthStore {
    clock_offset: Duration,
    codes: HashMap<String, CodeGrant>,
    families: HashMap<u64, Family>,
    next_family: u64,
    access: HashMap<String, IssuedToken>,
    refresh: HashMap<String, IssuedToken>,
}

fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

impl OAuthStore {
    /// The sandbox's notion of now; `advance_clock` moves it forward.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    pub(crate) fn advance_clock(&mut self, by: Duration) {
        self.clock_offset += by;
    }

    pub(crate) fn issue_code(&mut self, config: &SandboxConfig, client_id: &str, redirect_uri: &str) -> String {
        let code = random_token("sbx-code-");
        let expires_at = self.now() + config.code_ttl;
        self.codes.insert(
            code.clone(),
            CodeGrant {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                expires_at,
                exchanged_into: None,
            },
        );
        code
    }

    /// A new grant family with its first pair.
    pub(crate) fn new_grant(&mut self, config: &SandboxConfig, client_id: &str) -> TokenResponse {
        let family = self.next_family;
        self.next_family += 1;
        self.families.insert(
            family,
            Family {
                client_id: client_id.to_owned(),
                revoked: false,
            },
        );
        self.issue_pair(config, family)
    }

    fn issue_pair(&mut self, config: &SandboxConfig, family: u64) -> TokenResponse {
        let now = self.now();
        let access_token = random_token("sbx-at-");
        let refresh_token = random_token("sbx-rt-");
        self.access.insert(
            access_token.clone(),
            IssuedToken {
                family,
                expires_at: now + config.access_ttl,
                used: false,
            },
        );
        self.refresh.insert(
            refresh_token.clone(),
            IssuedToken {
                family,
                expires_at: now + config.refresh_ttl,
                used: false,
            },
        );
        TokenResponse {
            access_token,
            token_type: "bearer".to_owned(),
            expires_in: config.access_ttl.as_secs(),
            refresh_token,
            scope: config.scope(),
        }
    }

    /// `grant_type=authorization_code`, client already authenticated.
    pub(crate) fn exchange_code(
        &mut self,
        config: &SandboxConfig,
        client_id: &str,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenResponse, TokenError> {
        let now = self.now();
        let grant = self
            .codes
            .get(code)
            .ok_or_else(|| code_refused("invalid_grant_unknown", INVALID_CODE))?;
        if let Some(family) = grant.exchanged_into {
            // RFC 6749 4.1.2: a reused code should revoke what it issued.
            if config.reuse_policy == ReusePolicy::RevokeFamily {
                self.revoke_family(family);
            }
            return Err(code_refused("invalid_grant_used", INVALID_CODE));
        }
        if grant.expires_at <= now {
            return Err(code_refused("invalid_grant_expired", INVALID_CODE));
        }
        if grant.client_id != client_id {
            return Err(code_refused("client_mismatch", INVALID_CODE));
        }
        if grant.redirect_uri != redirect_uri {
            return Err(code_refused("redirect_uri_mismatch", "Invalid redirect uri"));
        }
        let pair = self.new_grant(config, client_id);
        let family = self.refresh[&pair.refresh_token].family;
        if let Some(grant) = self.codes.get_mut(code) {
            grant.exchanged_into = Some(family);
        }
        Ok(pair)
    }

    /// `grant_type=refresh_token`, client already authenticated. Rotates: the presented
    /// refresh token dies, a new pair is issued; the previous access token stays valid
    /// until its own expiry (Keap documents no early revocation).
    pub(crate) fn refresh(
        &mut self,
        config: &SandboxConfig,
        client_id: &str,
        refresh_token: &str,
    ) -> Result<TokenResponse, TokenError> {
        let now = self.now();
        let token = self
            .refresh
            .get(refresh_token)
            .ok_or_else(|| refresh_refused("invalid_grant_unknown"))?;
        let family_id = token.family;
        let family = &self.families[&family_id];
        if family.client_id != client_id {
            // Another client's token: as good as unknown to this one.
            return Err(refresh_refused("invalid_grant_unknown"));
        }
        if token.used {
            if config.reuse_policy == ReusePolicy::RevokeFamily {
                self.revoke_family(family_id);
            }
            return Err(refresh_refused("invalid_grant_used"));
        }
        if family.revoked {
            return Err(refresh_refused("invalid_grant_revoked"));
        }
        if token.expires_at <= now {
            return Err(refresh_refused("invalid_grant_expired"));
        }
        if let Some(token) = self.refresh.get_mut(refresh_token) {
            token.used = true;
        }
        Ok(self.issue_pair(config, family_id))
    }

    fn revoke_family(&mut self, family: u64) {
        if let Some(f) = self.families.get_mut(&family) {
            f.revoked = true;
        }
    }

    /// Is this bearer token a live access token? Returns its client id.
    pub(crate) fn check_access_token(&self, token: &str) -> Option<&str> {
        let issued = self.access.get(token)?;
        let family = self.families.get(&issued.family)?;
        (!family.revoked && issued.expires_at > self.now()).then_some(family.client_id.as_str())
    }

    /// Every access and refresh token issued so far, live or not.
    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        self.access.keys().chain(self.refresh.keys()).cloned().collect()
    }

    pub(crate) fn expire_access_tokens(&mut self) {
        let now = self.now();
        for token in self.access.values_mut() {
            token.expires_at = token.expires_at.min(now);
        }
    }

    pub(crate) fn expire_refresh_tokens(&mut self) {
        let now = self.now();
        for token in self.refresh.values_mut() {
            token.expires_at = token.expires_at.min(now);
        }
    }
}

/// Count a token failure under the right map.
pub(crate) fn count_failure(stats: &mut Stats, grant_type: GrantType, err: &TokenError) {
    match grant_type {
        GrantType::RefreshToken => Stats::count(&mut stats.refresh_failures, err.reason()),
        GrantType::AuthorizationCode => {
            stats.code_exchange_failures += 1;
            Stats::count(&mut stats.code_exchange_failure_reasons, err.reason());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrantType {
    AuthorizationCode,
    RefreshToken,
}
