//! Fixed-window request quotas per credential (second, minute, day), reported the way
//! Keap's gateway does: `x-keap-product-throttle-*` for the spike window (the second) and
//! `x-keap-product-quota-*` for the minute and the day (pipe-separated, `minute|day`, when
//! both are limited).

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

/// The day: aligned to 00:00 UTC (to `86400 / time_scale` second boundaries when scaled).
#[derive(Debug, Clone, Copy)]
struct Day {
    index: u64,
    used: u32,
}

#[derive(Debug, Clone, Copy)]
struct Windows {
    second: Window,
    minute: Window,
    day: Day,
}

/// What the headers say about one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowReport {
    pub limit: u32,
    pub time_unit: &'static str,
    pub used: u32,
    pub available: u32,
    /// Time until the window resets.
    pub resets_in: Duration,
}

impl WindowReport {
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
}

/// Every limited window after one call: the spike window (`throttle`) and the quota
/// windows (minute, then day).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct QuotaReport {
    pub throttle: Option<WindowReport>,
    pub quota: Vec<WindowReport>,
}

/// A refused call: the window that is exhausted, and every window's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub exhausted: WindowReport,
    pub report: QuotaReport,
}

impl QuotaReport {
    /// A report for a throttle that has no configured quota behind it (the
    /// `throttle_next` fault): Keap's documented per-minute limits, used up.
    pub(crate) fn keap_default(credential: &Credential) -> Self {
        let limit = match credential {
            Credential::OAuthClient(_) => RateLimit::KEAP_OAUTH_CLIENT.per_minute,
            Credential::ApiKey(_) => RateLimit::KEAP_API_KEY.per_minute,
        };
        QuotaReport {
            throttle: None,
            quota: vec![WindowReport {
                limit,
                time_unit: "minute",
                used: limit,
                available: 0,
                resets_in: Duration::from_secs(60),
            }],
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Quotas {
    windows: HashMap<Credential, Windows>,
}

const SECOND: Duration = Duration::from_secs(1);

impl Quotas {
    /// Count one call at `now` (`wall`: the same moment on the wall clock, for the UTC day).
    /// `Ok` carries every window's report (for the response headers); `Err` the exhausted
    /// window too. A refused call is counted in no window.
    pub(crate) fn admit(
        &mut self,
        credential: &Credential,
        limit: RateLimit,
        now: Instant,
        wall: SystemTime,
    ) -> Result<QuotaReport, Refusal> {
        let scale = limit.time_scale.max(1);
        let minute = Duration::from_secs(60) / scale;
        let day_length = Duration::from_secs(86_400) / scale;
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let day_index = (since_epoch.as_millis() / day_length.as_millis().max(1)) as u64;
        let day_resets_in = Duration::from_millis(
            ((day_index as u128 + 1) * day_length.as_millis()).saturating_sub(since_epoch.as_millis()) as u64,
        );

        let fresh = Window { started: now, used: 0 };
        let windows = self.windows.entry(credential.clone()).or_insert(Windows {
            second: fresh,
            minute: fresh,
            day: Day {
                index: day_index,
                used: 0,
            },
        });
        windows.second.roll(now, SECOND);
        windows.minute.roll(now, minute);
        if windows.day.index != day_index {
            windows.day = Day {
                index: day_index,
                used: 0,
            };
        }
        let fixed = |w: &Window, limit: u32, unit: &'static str, length: Duration| WindowReport {
            limit,
            time_unit: unit,
            used: w.used,
            available: limit.saturating_sub(w.used),
            resets_in: length.saturating_sub(now.duration_since(w.started)),
        };
        let report = |windows: &Windows| {
            let mut quota = Vec::new();
            if limit.per_minute > 0 {
                quota.push(fixed(&windows.minute, limit.per_minute, "minute", minute));
            }
            if limit.per_day > 0 {
                quota.push(WindowReport {
                    limit: limit.per_day,
                    time_unit: "day",
                    used: windows.day.used,
                    available: limit.per_day.saturating_sub(windows.day.used),
                    resets_in: day_resets_in,
                });
            }
            QuotaReport {
                throttle: (limit.per_second > 0).then(|| fixed(&windows.second, limit.per_second, "second", SECOND)),
                quota,
            }
        };
        let before = report(windows);
        let exhausted = before
            .throttle
            .iter()
            .chain(&before.quota)
            .find(|w| w.available == 0)
            .copied();
        if let Some(exhausted) = exhausted {
            return Err(Refusal {
                exhausted,
                report: before,
            });
        }
        windows.second.used += 1;
        windows.minute.used += 1;
        windows.day.used += 1;
        Ok(report(windows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Credential {
        Credential::ApiKey("k".to_owned())
    }

    fn limit(per_second: u32, per_minute: u32, per_day: u32) -> RateLimit {
        RateLimit {
            per_second,
            per_minute,
            per_day,
            ..RateLimit::OFF
        }
    }

    #[test]
    fn per_second_window_refuses_then_resets() {
        let mut quotas = Quotas::default();
        let limit = limit(2, 0, 0);
        let (start, wall) = (Instant::now(), SystemTime::now());
        let first = quotas.admit(&key(), limit, start, wall).unwrap();
        let throttle = first.throttle.unwrap();
        assert_eq!(
            (throttle.time_unit, throttle.available, throttle.used),
            ("second", 1, 1)
        );
        assert!(first.quota.is_empty());
        assert!(quotas.admit(&key(), limit, start, wall).is_ok());
        let refused = quotas.admit(&key(), limit, start, wall).unwrap_err().exhausted;
        assert_eq!((refused.time_unit, refused.limit, refused.available), ("second", 2, 0));
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(quotas.admit(&key(), limit, start + SECOND, wall).is_ok());
    }

    #[test]
    fn per_minute_window_counts_across_seconds_and_keys_are_separate() {
        let mut quotas = Quotas::default();
        let limit = limit(10, 3, 0);
        let (start, wall) = (Instant::now(), SystemTime::now());
        for (second, available) in [(0, 2), (1, 1), (2, 0)] {
            let report = quotas
                .admit(&key(), limit, start + Duration::from_secs(second), wall)
                .unwrap();
            let minute = report.quota[0];
            assert_eq!(
                (minute.time_unit, minute.available, minute.used),
                ("minute", available, 3 - available)
            );
        }
        let refused = quotas
            .admit(&key(), limit, start + Duration::from_secs(3), wall)
            .unwrap_err()
            .exhausted;
        assert_eq!(refused.time_unit, "minute");
        assert_eq!(refused.retry_after_secs(), 57);
        let other = Credential::OAuthClient("c".to_owned());
        assert!(
            quotas
                .admit(&other, limit, start + Duration::from_secs(3), wall)
                .is_ok()
        );
        assert!(
            quotas
                .admit(&key(), limit, start + Duration::from_secs(60), wall)
                .is_ok()
        );
    }

    #[test]
    fn the_day_resets_at_utc_midnight_and_refused_calls_are_not_counted() {
        let mut quotas = Quotas::default();
        let limit = limit(0, 100, 2);
        let start = Instant::now();
        // 23:59:59 UTC on some day.
        let late = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 86_399);
        let report = quotas.admit(&key(), limit, start, late).unwrap();
        assert_eq!(report.quota.len(), 2);
        let day = report.quota[1];
        assert_eq!((day.time_unit, day.available, day.resets_in), ("day", 1, SECOND));
        assert!(quotas.admit(&key(), limit, start, late).is_ok());
        let refused = quotas.admit(&key(), limit, start, late).unwrap_err();
        assert_eq!(refused.exhausted.time_unit, "day");
        assert_eq!(refused.report.quota[0].used, 2, "the refused call is not counted");
        let next_day = late + SECOND;
        assert!(quotas.admit(&key(), limit, start + SECOND, next_day).is_ok());
    }

    #[test]
    fn a_time_scale_shortens_the_minute_but_not_the_second() {
        let mut quotas = Quotas::default();
        let limit = RateLimit {
            time_scale: 10,
            ..limit(5, 2, 0)
        };
        let (start, wall) = (Instant::now(), SystemTime::now());
        let report = quotas.admit(&key(), limit, start, wall).unwrap();
        assert_eq!(report.quota[0].resets_in, Duration::from_secs(6));
        assert_eq!(report.throttle.unwrap().resets_in, SECOND);
        assert!(quotas.admit(&key(), limit, start, wall).is_ok());
        assert!(quotas.admit(&key(), limit, start + SECOND, wall).is_err());
        assert!(
            quotas
                .admit(&key(), limit, start + Duration::from_secs(6), wall)
                .is_ok()
        );
    }
}
