//! Fixed-window request quotas per credential, reported the way Keap's gateway does.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::RateLimit;
use crate::oauth_store::Credential;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    used: u32,
}

impl Window {
    fn roll(&mut self, now: Instant, length: Duration) {
        if now.duration_since(self.started) >= length {
            self.started = now;
            self.used = 0;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Windows {
    second: Window,
    minute: Window,
}

/// What the `x-keap-product-quota-*` headers say about one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaReport {
    pub limit: u32,
    pub time_unit: &'static str,
    pub used: u32,
    pub available: u32,
    /// Time until the window resets.
    pub resets_in: Duration,
}

impl QuotaReport {
    pub(crate) fn expiry_epoch_ms(&self) -> u128 {
        (SystemTime::now() + self.resets_in)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    }

    /// Whole seconds until the window resets, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.resets_in.as_millis().div_ceil(1000).max(1) as u64
    }

    /// A report for a throttle that has no configured quota behind it (the
    /// `throttle_next` fault): Keap's documented per-minute limits.
    pub(crate) fn keap_default(credential: &Credential) -> Self {
        let limit = match credential {
            Credential::OAuthClient(_) => 1500,
            Credential::ApiKey(_) => RateLimit::KEAP_API_KEY.per_minute,
        };
        QuotaReport {
            limit,
            time_unit: "minute",
            used: limit,
            available: 0,
            resets_in: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Quotas {
    windows: HashMap<Credential, Windows>,
}

impl Quotas {
    /// Count one call. `Ok` carries the minute window's report (for the response headers);
    /// `Err` the report of the window that is exhausted; a refused call is not counted.
    pub(crate) fn admit(
        &mut self,
        credential: &Credential,
        limit: RateLimit,
        now: Instant,
    ) -> Result<QuotaReport, QuotaReport> {
        let fresh = Window { started: now, used: 0 };
        let windows = self.windows.entry(credential.clone()).or_insert(Windows {
            second: fresh,
            minute: fresh,
        });
        windows.second.roll(now, Duration::from_secs(1));
        windows.minute.roll(now, Duration::from_secs(60));
        let report = |w: &Window, limit: u32, unit: &'static str, length: Duration| QuotaReport {
            limit,
            time_unit: unit,
            used: w.used,
            available: limit.saturating_sub(w.used),
            resets_in: length.saturating_sub(now.duration_since(w.started)),
        };
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        if limit.per_second > 0 && windows.second.used >= limit.per_second {
            return Err(report(&windows.second, limit.per_second, "second", second));
        }
        if limit.per_minute > 0 && windows.minute.used >= limit.per_minute {
            return Err(report(&windows.minute, limit.per_minute, "minute", minute));
        }
        windows.second.used += 1;
        windows.minute.used += 1;
        if limit.per_minute > 0 {
            Ok(report(&windows.minute, limit.per_minute, "minute", minute))
        } else {
            Ok(report(&windows.second, limit.per_second, "second", second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Credential {
        Credential::ApiKey("k".to_owned())
    }

    #[test]
    fn per_second_window_refuses_then_resets() {
        let mut quotas = Quotas::default();
        let limit = RateLimit {
            per_second: 2,
            per_minute: 0,
        };
        let start = Instant::now();
        assert!(quotas.admit(&key(), limit, start).is_ok());
        assert!(quotas.admit(&key(), limit, start).is_ok());
        let refused = quotas.admit(&key(), limit, start).unwrap_err();
        assert_eq!((refused.time_unit, refused.limit, refused.available), ("second", 2, 0));
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(quotas.admit(&key(), limit, start + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn per_minute_window_counts_across_seconds_and_keys_are_separate() {
        let mut quotas = Quotas::default();
        let limit = RateLimit {
            per_second: 10,
            per_minute: 3,
        };
        let start = Instant::now();
        for (second, available) in [(0, 2), (1, 1), (2, 0)] {
            let report = quotas
                .admit(&key(), limit, start + Duration::from_secs(second))
                .unwrap();
            assert_eq!(
                (report.time_unit, report.available, report.used),
                ("minute", available, 3 - available)
            );
        }
        let refused = quotas.admit(&key(), limit, start + Duration::from_secs(3)).unwrap_err();
        assert_eq!(refused.time_unit, "minute");
        assert_eq!(refused.retry_after_secs(), 57);
        let other = Credential::OAuthClient("c".to_owned());
        assert!(quotas.admit(&other, limit, start + Duration::from_secs(3)).is_ok());
        assert!(quotas.admit(&key(), limit, start + Duration::from_secs(60)).is_ok());
    }
}
