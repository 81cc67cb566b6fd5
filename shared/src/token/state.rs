//! The token secret's JSON value. An empty `{}` (or no secret at all) means "not connected".
//!
//! The tokens are serialized inside the secret, but this type's `Debug` redacts them, and
//! [`TokenState::to_secret`] hands the JSON out only as a [`SecretString`].

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{ConnectionStatus, TokenGrant};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    #[default]
    NotConnected,
    Connected,
    NeedsReauth,
}

/// A rotation in progress: `holder` may call Keap's token endpoint until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    #[serde(with = "time")]
    pub until: SystemTime,
}

#[derive(Clone, Default, Serialize, Deserialize)]
pub struct TokenState {
    /// Incremented by every new pair (refresh or connect).
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub status: LinkStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret")]
    pub access_token: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
    pub access_expires_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "secret")]
    pub refresh_token: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
    pub refresh_issued_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
    pub last_refresh_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
    pub last_error_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_reauth_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
    pub needs_reauth_at: Option<SystemTime>,
    /// Shared backoff (invariant 10): no process takes a lease before this time. Set when a
    /// holder gives up without spending the token (Keap 5xx/429/unreachable, bad client).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
    pub retry_not_before: Option<SystemTime>,
    /// Refresh attempts that failed in a row since the last new pair (drives the backoff).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// Rotations in a row that a 401 forced (not the margin or the schedule); a 401-driven
    /// refresh waits a backoff after the last refresh that grows with this count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unauthorized_refreshes: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl std::fmt::Debug for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenState")
            .field("generation", &self.generation)
            .field("status", &self.status)
            .field("account", &self.account)
            .field("access_token", &self.access_token.as_ref().map(|_| "[REDACTED]"))
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[REDACTED]"))
            .field("refresh_issued_at", &self.refresh_issued_at)
            .field("lease", &self.lease)
            .field("last_error", &self.last_error)
            .field("needs_reauth_reason", &self.needs_reauth_reason)
            .field("retry_not_before", &self.retry_not_before)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// The last second the token secret can hold (RFC 3339 ends with the year 9999).
const LATEST_STORABLE_SECS: u64 = 253_402_300_799;

/// `at + by`, saturating at the latest time the token secret can hold: `by` may come from
/// Keap (`expires_in`) or the configuration, `at` from the stored state, and a plain `+`
/// panics on overflow (as a time past the year 9999 would when the state is written).
pub(crate) fn later(at: SystemTime, by: Duration) -> SystemTime {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(LATEST_STORABLE_SECS);
    at.checked_add(by).map_or(latest, |sum| sum.min(latest))
}

/// Time left until `until`, zero when it has passed.
pub(crate) fn left(until: SystemTime, now: SystemTime) -> Duration {
    until.duration_since(now).unwrap_or_default()
}

impl TokenState {
    /// Parses the stored JSON; `{}` is a valid "not connected" state.
    pub fn from_json(json: &str) -> Result<Self, String> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        // serde_json may quote the offending value, which could be a token.
        serde_json::from_str(json).map_err(|e| {
            format!(
                "the token secret is not valid ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })
    }

    pub fn to_secret(&self) -> SecretString {
        SecretString::from(serde_json::to_string(self).expect("a TokenState always serializes"))
    }

    /// A fresh connection from an authorization (or any new pair).
    pub fn connected(grant: &TokenGrant, generation: u64, now: SystemTime) -> Self {
        Self {
            generation,
            status: LinkStatus::Connected,
            account: grant.account.clone(),
            access_token: Some(grant.access_token.clone()),
            access_expires_at: Some(later(now, grant.expires_in)),
            refresh_token: Some(grant.refresh_token.clone()),
            refresh_issued_at: Some(now),
            scope: Some(grant.scope.clone()),
            last_refresh_at: Some(now),
            ..Self::default()
        }
    }

    /// The state after a successful refresh: the new pair, the next generation, no lease.
    pub fn refreshed(&self, grant: &TokenGrant, now: SystemTime) -> Self {
        let mut next = Self::connected(grant, self.generation + 1, now);
        next.account = grant.account.clone().or_else(|| self.account.clone());
        next
    }

    pub fn with_lease(&self, holder: &str, until: SystemTime) -> Self {
        Self {
            lease: Some(Lease {
                holder: holder.to_owned(),
                until,
            }),
            ..self.clone()
        }
    }

    /// The lease dropped, `error` recorded (a refresh that failed without spending the token),
    /// and nobody to try again before `retry_not_before`.
    pub fn released(&self, error: &str, now: SystemTime, retry_not_before: SystemTime) -> Self {
        Self {
            lease: None,
            last_error: Some(error.to_owned()),
            last_error_at: Some(now),
            retry_not_before: Some(retry_not_before),
            failures: self.failures.saturating_add(1),
            ..self.clone()
        }
    }

    /// The pair's lifetime as issued (zero when unknown).
    pub fn lifetime(&self) -> Duration {
        match (self.access_expires_at, self.refresh_issued_at) {
            (Some(expires), Some(issued)) => expires.duration_since(issued).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Time left before the shared backoff allows another attempt (zero when it does).
    pub fn backoff_left(&self, now: SystemTime) -> Duration {
        self.retry_not_before.map(|at| left(at, now)).unwrap_or_default()
    }

    pub fn needing_reauth(&self, reason: &str, now: SystemTime) -> Self {
        Self {
            status: LinkStatus::NeedsReauth,
            lease: None,
            needs_reauth_reason: Some(reason.to_owned()),
            needs_reauth_at: Some(now),
            last_error: Some(reason.to_owned()),
            last_error_at: Some(now),
            ..self.clone()
        }
    }

    /// Time the access token has left (zero when expired or absent).
    pub fn access_left(&self, now: SystemTime) -> Duration {
        match (&self.access_token, self.access_expires_at) {
            (Some(_), Some(expires_at)) => left(expires_at, now),
            _ => Duration::ZERO,
        }
    }

    pub fn refresh_age(&self, now: SystemTime) -> Option<Duration> {
        self.refresh_issued_at
            .map(|issued| now.duration_since(issued).unwrap_or_default())
    }

    /// The lease, if it may still be in use: not past `until` plus the clock-skew margin.
    pub fn live_lease(&self, now: SystemTime, skew: Duration) -> Option<&Lease> {
        self.lease.as_ref().filter(|lease| later(lease.until, skew) > now)
    }

    pub fn same_refresh_token(&self, token: &SecretString) -> bool {
        self.refresh_token
            .as_ref()
            .is_some_and(|t| t.expose_secret() == token.expose_secret())
    }

    pub fn same_access_token(&self, token: &SecretString) -> bool {
        self.access_token
            .as_ref()
            .is_some_and(|t| t.expose_secret() == token.expose_secret())
    }

    pub fn status_report(&self, now: SystemTime) -> ConnectionStatus {
        ConnectionStatus {
            mode: "oauth",
            connected: self.status == LinkStatus::Connected,
            account: self.account.clone(),
            access_expires_at: self.access_expires_at,
            access_expires_in_seconds: self.access_expires_at.map(|at| match at.duration_since(now) {
                Ok(ahead) => ahead.as_secs() as i64,
                Err(behind) => -(behind.duration().as_secs() as i64),
            }),
            refresh_token_age_days: self
                .refresh_age(now)
                .map(|age| (age.as_secs_f64() / 86_400.0 * 100.0).round() / 100.0),
            last_refresh_at: self.last_refresh_at,
            last_error: self.last_error.clone(),
            needs_reauth: self.status == LinkStatus::NeedsReauth,
            needs_reauth_reason: self.needs_reauth_reason.clone(),
            generation: (self.status != LinkStatus::NotConnected).then_some(self.generation),
            retry_not_before: self.retry_not_before.filter(|at| *at > now),
            last_error_at: self.last_error_at,
            needs_reauth_since: self.needs_reauth_at.filter(|_| self.status == LinkStatus::NeedsReauth),
        }
    }
}

/// Times as RFC 3339 with milliseconds: readable in the console, precise enough for leases.
mod time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

mod opt_time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => super::time::serialize(time, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => humantime::parse_rfc3339_weak(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// The tokens must be written into the secret's value (and only there).
mod secret {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(token: &Option<SecretString>, serializer: S) -> Result<S::Ok, S::Error> {
        match token {
            Some(token) => serializer.serialize_str(token.expose_secret()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.map(SecretString::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> TokenGrant {
        TokenGrant {
            access_token: SecretString::from("access-abc"),
            refresh_token: SecretString::from("refresh-xyz"),
            expires_in: Duration::from_secs(86_400),
            scope: "full|ab123.infusionsoft.com".into(),
            account: Some("ab123.infusionsoft.com".into()),
        }
    }

    #[test]
    fn empty_secret_means_not_connected() {
        let state = TokenState::from_json("{}").unwrap();
        assert_eq!(state.status, LinkStatus::NotConnected);
        assert_eq!(TokenState::from_json("").unwrap().status, LinkStatus::NotConnected);
        assert!(!state.status_report(SystemTime::now()).connected);
    }

    #[test]
    fn round_trips_through_json_with_tokens_inside_and_redacted_debug() {
        let now = SystemTime::now();
        let state = TokenState::connected(&grant(), 3, now).with_lease("p1/0", now + Duration::from_secs(30));
        let json = state.to_secret();
        assert!(json.expose_secret().contains("refresh-xyz"));
        let back = TokenState::from_json(json.expose_secret()).unwrap();
        assert_eq!(back.generation, 3);
        assert!(back.same_refresh_token(&SecretString::from("refresh-xyz")));
        assert_eq!(back.lease.as_ref().map(|l| l.holder.as_str()), Some("p1/0"));
        let debug = format!("{back:?}");
        assert!(
            !debug.contains("access-abc") && !debug.contains("refresh-xyz"),
            "{debug}"
        );
        let status = serde_json::to_string(&back.status_report(now)).unwrap();
        assert!(!status.contains("access-abc") && !status.contains("refresh-xyz"));
    }

    #[test]
    fn times_from_absurd_durations_saturate_and_still_serialize() {
        let now = SystemTime::now();
        let endless = TokenGrant {
            expires_in: Duration::MAX,
            ..grant()
        };
        let state = TokenState::connected(&endless, 1, now);
        let back = TokenState::from_json(state.to_secret().expose_secret()).unwrap();
        assert!(back.access_left(now) > Duration::from_secs(7_000 * 365 * 86_400));
        let stored = TokenState::from_json(r#"{"lease":{"holder":"p","until":"9999-12-31T23:59:59Z"}}"#).unwrap();
        assert!(stored.live_lease(now, Duration::MAX).is_some());
    }

    #[test]
    fn invalid_json_errors_do_not_quote_the_value() {
        let error = TokenState::from_json(r#"{"generation":"refresh-xyz"}"#).unwrap_err();
        assert!(!error.contains("refresh-xyz"), "{error}");
    }
}
