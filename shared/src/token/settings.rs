//! Timing of the rotation protocol, checked at start so settings that cannot work are
//! refused with the names of the variables to change (see `docs/token-rotation.md`).

use std::time::Duration;

use super::TokenError;

/// Production values come from [`TokenSettings::from_config`]; tests shrink them.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Refresh before use when the access token has less than this left.
    pub access_margin: Duration,
    /// How long a lease lasts.
    pub lease_duration: Duration,
    /// Upper bound of one call to Keap's token endpoint.
    pub keap_timeout: Duration,
    /// Time reserved for the commit: a holder calls Keap only if the lease (less the clock
    /// skew) and the invocation both have `keap_timeout + commit_allowance` left.
    pub commit_allowance: Duration,
    /// A lease counts as live until `until + clock_skew`.
    pub clock_skew: Duration,
    /// Hard bound of one store call (invariant 8): a call with no answer by then counts as a
    /// transient failure whose effect is unknown.
    pub store_call_timeout: Duration,
    /// After a lease ran out with no outcome stored, nobody takes it over for this long: the
    /// holder's commit may still land (a put held up in the network, a thawed process), and a
    /// takeover would spend the token a second time (invariant 8).
    pub late_commit_grace: Duration,
    /// Shared backoff after failed refreshes (invariant 10): `min`, doubling, at most `max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Backoff of a waiting contender's polls (exponential, with jitter). The first poll comes
    /// soon: a rotation takes one Keap round trip and two store writes, and reads are cheap.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Attempts at one store call that fails transiently, outside the commit (which keeps
    /// trying until its window closes: the new pair exists nowhere else).
    pub store_attempts: usize,
    /// A contender that lost the put of a lease waits this long for the winner's swap before
    /// finishing the swap itself (the winner may have died between put and swap).
    pub orphan_grace: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            access_margin: Duration::from_secs(300),
            lease_duration: Duration::from_secs(30),
            keap_timeout: Duration::from_secs(10),
            commit_allowance: Duration::from_secs(8),
            clock_skew: Duration::from_secs(2),
            store_call_timeout: Duration::from_secs(3),
            late_commit_grace: Duration::from_secs(60),
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(2 * 3600),
            poll_min: Duration::from_millis(15),
            poll_max: Duration::from_secs(1),
            store_attempts: 5,
            orphan_grace: Duration::from_secs(2),
        }
    }
}

impl TokenSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            access_margin: config.access_margin,
            lease_duration: config.lease_duration,
            keap_timeout: config.http_timeout,
            backoff_min: config.refresh_backoff_min,
            backoff_max: config.refresh_backoff_max,
            ..Self::default()
        }
    }

    /// The time a holder needs on its lease before it may call Keap.
    pub fn holder_needs(&self) -> Duration {
        self.keap_timeout + self.commit_allowance + self.clock_skew
    }

    /// The shared backoff after `failures` failed attempts in a row (at least 1).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.backoff_min.saturating_mul(1u32 << doublings).min(self.backoff_max)
    }

    /// Refuses settings under which the protocol cannot keep its invariants.
    pub fn check(&self) -> Result<(), TokenError> {
        let bad = |message: String| Err(TokenError::Misconfigured(message));
        if self.commit_allowance < self.store_call_timeout * 2 {
            return bad(format!(
                "the commit allowance ({:?}) must fit two store calls of up to {:?} (a put and a swap)",
                self.commit_allowance, self.store_call_timeout
            ));
        }
        // Taking the lease is one store write; the Keap call and the commit must still fit.
        let needed = self.holder_needs() + self.store_call_timeout;
        if self.lease_duration < needed {
            return bad(format!(
                "KEAP_LEASE_SECONDS ({}s) is too short: a lease must cover taking it ({:?}), the Keap call \
                 (KEAP_HTTP_TIMEOUT_SECONDS, {:?}), the commit ({:?}) and the clock skew ({:?}), {}s in all; \
                 raise KEAP_LEASE_SECONDS or lower KEAP_HTTP_TIMEOUT_SECONDS",
                self.lease_duration.as_secs_f64(),
                self.store_call_timeout,
                self.keap_timeout,
                self.commit_allowance,
                self.clock_skew,
                needed.as_secs_f64().ceil()
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad(format!(
                "KEAP_REFRESH_BACKOFF_MIN_SECONDS ({:?}) must be positive and at most KEAP_REFRESH_BACKOFF_MAX_SECONDS ({:?})",
                self.backoff_min, self.backoff_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_hold_and_a_lease_of_timeout_plus_five_seconds_is_refused() {
        TokenSettings::default().check().unwrap();
        let tight = TokenSettings {
            lease_duration: Duration::from_secs(15),
            ..TokenSettings::default()
        };
        let message = tight.check().unwrap_err().to_string();
        assert!(
            message.contains("KEAP_LEASE_SECONDS") && message.contains("KEAP_HTTP_TIMEOUT_SECONDS"),
            "{message}"
        );
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let settings = TokenSettings::default();
        assert_eq!(settings.backoff(1), Duration::from_secs(30));
        assert_eq!(settings.backoff(3), Duration::from_secs(120));
        assert_eq!(settings.backoff(40), Duration::from_secs(7200));
    }
}
