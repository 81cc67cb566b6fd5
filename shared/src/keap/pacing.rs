//! Quota-aware pacing of Keap calls, shared by every process through Keap's own headers.
//!
//! Keap counts one quota per OAuth app record (1,500 calls a minute, 150,000 a day, a spike
//! limit of about 25 a second) or per API key (10/s, 240/min, 30,000/day), whatever the
//! number of processes calling. Each answer reports the window's state
//! (`x-keap-product-quota-{limit,time-unit,available,used,expiry-time}`, pipe-separated as
//! `minute|day`; `x-keap-product-throttle-*` likewise), so every process knows what is left
//! (`A`) and for how long (`T`) without talking to the others. The rule (docs/pacing.md):
//!
//! - the calls that are left are spread over the time that is left: all processes together
//!   aim at `A / T` calls a second, capped by the spike limit;
//! - each process takes its share `1/k`, where `k` is how many calls the whole app made per
//!   call of this process (the growth of `used` between two of its own answers, smoothed).
//!   Before a first answer, `k` is the configured number of processes. Even when `k` is
//!   misjudged, a window cannot be overspent: every process slows as `A` shrinks, and none
//!   calls once `A` is down to a small guard;
//! - bulk work (queued retries, backfills) leaves a share of every window to live signups,
//!   and stops when the day's quota is down to its reserve;
//! - after a 429, nobody in this process calls before `Retry-After` (else the window's
//!   expiry, else an exponential backoff).
//!
//! A call that would wait longer than `max_wait` is not made: [`Paced`] says how long to
//! wait, and the caller queues the work (the signup function answers 202, the retry worker
//! delays the message with an SQS timer) instead of holding a Lambda environment.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{AuthMode, ConfigError};

/// Which work a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallClass {
    /// A signup arriving now (and the oauth/refresh functions' occasional calls).
    Live,
    /// Queued retries and backfills: they leave headroom to live signups and stop at the
    /// day's reserve.
    Bulk,
}

/// Keap's limits for the credential in use. Zero: no limit in that window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuotaLimits {
    pub per_second: u32,
    pub per_minute: u32,
    pub per_day: u32,
}

impl QuotaLimits {
    /// Keap's documented quota for an OAuth app record (shared by every connected account).
    pub const OAUTH_CLIENT: QuotaLimits = QuotaLimits {
        per_second: 25,
        per_minute: 1500,
        per_day: 150_000,
    };
    /// Keap's documented quota for a Personal Access Token or Service Account Key.
    pub const API_KEY: QuotaLimits = QuotaLimits {
        per_second: 10,
        per_minute: 240,
        per_day: 30_000,
    };

    pub fn for_mode(mode: AuthMode) -> Self {
        match mode {
            AuthMode::OAuth => Self::OAUTH_CLIENT,
            AuthMode::ApiKey => Self::API_KEY,
        }
    }

    /// The steady rate the limits allow, in calls a second.
    fn steady_rate(&self) -> f64 {
        let mut rate = f64::INFINITY;
        if self.per_second > 0 {
            rate = rate.min(f64::from(self.per_second));
        }
        if self.per_minute > 0 {
            rate = rate.min(f64::from(self.per_minute) / 60.0);
        }
        if rate.is_finite() { rate } else { 1000.0 }
    }
}

/// How this process paces its Keap calls (`KEAP_QUOTA_*`, `KEAP_PACING_*`, `KEAP_*_PERCENT`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PacingSettings {
    /// `KEAP_PACING=off` turns pacing off (tests against an unlimited sandbox; not for Keap).
    pub enabled: bool,
    pub limits: QuotaLimits,
    /// How many processes are expected to call Keap at once, before the headers tell
    /// (`KEAP_PACING_PROCESSES`; the retry worker's maximum concurrency plus the signup
    /// function's usual concurrency).
    pub processes: u32,
    /// Share of every window that bulk work leaves to live signups (`KEAP_LIVE_HEADROOM_PERCENT`).
    pub live_headroom_percent: u8,
    /// Bulk work stops when less than this share of the day is left (`KEAP_DAILY_RESERVE_PERCENT`).
    pub daily_reserve_percent: u8,
    /// Pace below the spike limit by this share: the spike window is not reported by Keap and
    /// windows are not aligned between client and gateway (`KEAP_SPIKE_MARGIN_PERCENT`).
    pub spike_margin_percent: u8,
    /// The longest a call waits for its turn in process (`KEAP_PACING_MAX_WAIT_MS`); beyond,
    /// the call is not made and the work is queued.
    pub max_wait: Duration,
    pub class: CallClass,
}

impl PacingSettings {
    pub fn defaults(mode: AuthMode) -> Self {
        Self {
            enabled: true,
            limits: QuotaLimits::for_mode(mode),
            processes: 4,
            live_headroom_percent: 10,
            daily_reserve_percent: 10,
            spike_margin_percent: 5,
            // A live signup answers fast: beyond this it is queued (202) with the wait as its delay.
            max_wait: Duration::from_millis(250),
            class: CallClass::Live,
        }
    }

    /// The defaults for `mode` with every variable that is set in its place.
    pub fn from_env_with(mode: AuthMode, var: impl Fn(&'static str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut settings = Self::defaults(mode);
        match var("KEAP_PACING").as_deref().map(str::trim) {
            None | Some("on") => {}
            Some("off") => settings.enabled = false,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: "KEAP_PACING",
                    reason: "must be on or off".into(),
                });
            }
        }
        let number = |name: &'static str, max: u64| -> Result<Option<u64>, ConfigError> {
            let Some(raw) = var(name) else { return Ok(None) };
            match raw.trim().parse::<u64>() {
                Ok(value) if value <= max => Ok(Some(value)),
                _ => Err(ConfigError::Invalid {
                    name,
                    reason: format!("must be a whole number from 0 to {max}"),
                }),
            }
        };
        if let Some(v) = number("KEAP_QUOTA_PER_SECOND", 100_000)? {
            settings.limits.per_second = v as u32;
        }
        if let Some(v) = number("KEAP_QUOTA_PER_MINUTE", 10_000_000)? {
            settings.limits.per_minute = v as u32;
        }
        if let Some(v) = number("KEAP_QUOTA_PER_DAY", 1_000_000_000)? {
            settings.limits.per_day = v as u32;
        }
        if let Some(v) = number("KEAP_PACING_PROCESSES", 1000)? {
            settings.processes = (v as u32).max(1);
        }
        if let Some(v) = number("KEAP_LIVE_HEADROOM_PERCENT", 90)? {
            settings.live_headroom_percent = v as u8;
        }
        if let Some(v) = number("KEAP_DAILY_RESERVE_PERCENT", 90)? {
            settings.daily_reserve_percent = v as u8;
        }
        if let Some(v) = number("KEAP_SPIKE_MARGIN_PERCENT", 50)? {
            settings.spike_margin_percent = v as u8;
        }
        if let Some(v) = number("KEAP_PACING_MAX_WAIT_MS", 60_000)? {
            settings.max_wait = Duration::from_millis(v);
        }
        Ok(settings)
    }

    /// Pacing off: for tests against a sandbox without limits.
    pub fn off(mode: AuthMode) -> Self {
        Self {
            enabled: false,
            ..Self::defaults(mode)
        }
    }

    /// For bulk work a turn is waited for at least [`BULK_MIN_WAIT`]: a queued retry that gave
    /// up its turn for anything shorter would go back to the queue and lose far more time.
    pub fn with_class(mut self, class: CallClass) -> Self {
        self.class = class;
        if class == CallClass::Bulk {
            self.max_wait = self.max_wait.max(BULK_MIN_WAIT);
        }
        self
    }
}

/// The shortest in-process wait for a bulk call's turn (see [`PacingSettings::with_class`]).
pub const BULK_MIN_WAIT: Duration = Duration::from_secs(5);

/// The call was not made: Keap's quota needs this process to wait `wait` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Keap's quota is paced: next call in {} ms ({reason})", wait.as_millis())]
pub struct Paced {
    pub wait: Duration,
    pub reason: &'static str,
}

/// One window as an answer's headers reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedWindow {
    pub time_unit: Unit,
    pub limit: u32,
    pub used: u32,
    pub available: u32,
    /// Epoch milliseconds when the window resets.
    pub expiry_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

/// The longest window expiry taken from a header: a day and a bit.
const MAX_EXPIRY_AHEAD: Duration = Duration::from_secs(86_400 + 3600);
/// A window's expiry-time moves by less than this between two answers of the same window.
const SAME_WINDOW_SLACK_MS: u64 = 1500;
/// No call when a window has this many calls left or fewer (other processes may be sending
/// theirs right now).
const GUARD_CALLS: f64 = 2.0;
/// Weight of a new sample in the smoothed estimate of the number of processes.
const SHARE_SMOOTHING: f64 = 0.2;

/// Reads `x-keap-product-throttle-*` and `x-keap-product-quota-*` (pipe-separated lists).
/// Values that do not parse are skipped; every number is bounded by its type.
pub fn reported_windows(headers: &http::HeaderMap) -> Vec<ReportedWindow> {
    let mut windows = Vec::new();
    for prefix in ["x-keap-product-throttle", "x-keap-product-quota"] {
        let list = |name: &str| -> Vec<String> {
            headers
                .get(format!("{prefix}-{name}"))
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split('|').take(8).map(|s| s.trim().to_owned()).collect())
                .unwrap_or_default()
        };
        let (units, limits, used, available, expiry) = (
            list("time-unit"),
            list("limit"),
            list("used"),
            list("available"),
            list("expiry-time"),
        );
        for (i, unit) in units.iter().enumerate() {
            let unit = match unit.to_ascii_lowercase().as_str() {
                "second" => Unit::Second,
                "minute" => Unit::Minute,
                "hour" => Unit::Hour,
                "day" => Unit::Day,
                _ => continue,
            };
            let at = |values: &Vec<String>| values.get(i).and_then(|v| v.parse::<u64>().ok());
            let (Some(limit), Some(available), Some(expiry_ms)) = (at(&limits), at(&available), at(&expiry)) else {
                continue;
            };
            let limit = limit.min(u64::from(u32::MAX)) as u32;
            let available = available.min(u64::from(limit)) as u32;
            let used = at(&used).map_or(limit - available, |u| u.min(u64::from(u32::MAX)) as u32);
            windows.push(ReportedWindow {
                time_unit: unit,
                limit,
                used,
                available,
                expiry_ms,
            });
        }
    }
    windows
}

/// A reported window, anchored to this process's clock.
#[derive(Debug, Clone, Copy)]
struct Seen {
    window: ReportedWindow,
    expires_at: Instant,
    seen_at: SystemTime,
    /// Calls this process had sent when the answer came.
    my_sent: u64,
}

#[derive(Debug)]
struct State {
    next_slot: Instant,
    blocked_until: Option<Instant>,
    throttle: Option<Seen>,
    minute: Option<Seen>,
    day: Option<Seen>,
    /// Smoothed estimate of the calls the whole app makes per call of this process.
    share: f64,
    sent: u64,
    throttled: u64,
    consecutive_throttles: u32,
}

/// Paces one process's calls to Keap. Cheap to share (`Arc`); every method takes `&self`.
#[derive(Debug)]
pub struct Pacer {
    settings: PacingSettings,
    state: Mutex<State>,
}

/// What this process knows of Keap's quota, for `/status` and progress lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuotaUse {
    /// Each window as Keap last reported it.
    pub windows: Vec<QuotaWindowUse>,
    /// When that report came (RFC 3339), if any came.
    pub reported_at: Option<String>,
    /// The day's quota is down to its reserve: retries and backfills wait for the next day.
    pub bulk_paused: bool,
    /// Calls this process sent, and how many of them Keap answered 429.
    pub calls_sent: u64,
    pub calls_throttled: u64,
    pub limits: QuotaLimits,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuotaWindowUse {
    pub time_unit: Unit,
    pub limit: u32,
    pub used: u32,
    pub available: u32,
    /// RFC 3339.
    pub resets_at: String,
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl Pacer {
    pub fn new(settings: PacingSettings) -> Self {
        let share = f64::from(settings.processes.max(1));
        Self {
            settings,
            state: Mutex::new(State {
                next_slot: Instant::now(),
                blocked_until: None,
                throttle: None,
                minute: None,
                day: None,
                share,
                sent: 0,
                throttled: 0,
                consecutive_throttles: 0,
            }),
        }
    }

    pub fn settings(&self) -> &PacingSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for this process's next turn (at most `max_wait`), or says how long the caller
    /// should wait instead. A turn that is granted is spent: call Keap right after.
    pub async fn acquire(&self) -> Result<(), Paced> {
        let wait = self.reserve(Instant::now(), self.settings.max_wait)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The slot logic of [`Pacer::acquire`], clock given: the wait before the call.
    pub(crate) fn reserve(&self, now: Instant, max_wait: Duration) -> Result<Duration, Paced> {
        let mut state = self.lock();
        let class = self.settings.class;
        if class == CallClass::Bulk
            && let Some(day) = state.day.filter(|d| d.expires_at > now)
        {
            let reserve = f64::from(day.window.limit) * f64::from(self.settings.daily_reserve_percent) / 100.0;
            if f64::from(day.window.available) <= reserve.max(GUARD_CALLS) {
                return Err(Paced {
                    wait: day.expires_at - now,
                    reason: "the day's quota is down to the reserve kept for live signups",
                });
            }
        }
        let mut earliest = state.next_slot.max(now);
        let mut reason = "pacing to the quota";
        if let Some(blocked) = state.blocked_until.filter(|b| *b > earliest) {
            earliest = blocked;
            reason = "Keap answered 429";
        }
        // A spent window (as far as this process knows): nothing before it resets.
        for seen in [state.throttle, state.minute, state.day].into_iter().flatten() {
            if seen.expires_at > earliest && f64::from(seen.window.available) <= self.guard(&seen) {
                earliest = seen.expires_at;
                reason = "the window's quota is spent";
            }
        }
        let wait = earliest - now;
        if wait > max_wait {
            return Err(Paced { wait, reason });
        }
        let interval = self.interval(&state, earliest);
        state.next_slot = earliest + interval;
        state.sent += 1;
        Ok(wait)
    }

    /// The largest share divisor this process assumes: twice the configured processes. A
    /// process held back by its own pacing sees many calls of others per call of its own,
    /// which would only slow it further; the windows' guard, not this estimate, is what
    /// keeps the app under the quota.
    fn max_share(&self) -> f64 {
        f64::from(self.settings.processes.max(1)) * 2.0
    }

    /// The calls a window keeps back: the guard, and for bulk work the live signups' share.
    fn guard(&self, seen: &Seen) -> f64 {
        let mut keep = GUARD_CALLS;
        if self.settings.class == CallClass::Bulk && seen.window.time_unit != Unit::Day {
            keep += f64::from(seen.window.limit) * f64::from(self.settings.live_headroom_percent) / 100.0 / 4.0;
        }
        keep
    }

    /// Time between two calls of this process, at `at`.
    fn interval(&self, state: &State, at: Instant) -> Duration {
        let settings = &self.settings;
        let class_share = match settings.class {
            CallClass::Live => 1.0,
            CallClass::Bulk => 1.0 - f64::from(settings.live_headroom_percent) / 100.0,
        };
        let spike_share = 1.0 - f64::from(settings.spike_margin_percent) / 100.0;
        let mut total = settings.limits.steady_rate() * spike_share * class_share;
        if settings.limits.per_second > 0 {
            total = total.min(f64::from(settings.limits.per_second) * spike_share * class_share);
        }
        if let Some(minute) = state.minute.filter(|m| m.expires_at > at) {
            let left = (minute.expires_at - at).as_secs_f64().max(0.25);
            let usable = f64::from(minute.window.available) * class_share - GUARD_CALLS;
            total = total.min((usable / left).max(0.0));
        }
        let mine = total / state.share.max(1.0);
        if mine <= 0.0 {
            return Duration::from_secs(1);
        }
        Duration::from_secs_f64((1.0 / mine).min(60.0))
    }

    /// Learns from one of Keap's answers: its status and headers.
    pub fn observe(&self, status: u16, headers: &http::HeaderMap) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let windows = reported_windows(headers);
        let mut state = self.lock();
        let wall_ms = epoch_ms(wall);
        let my_sent = state.sent;
        for window in windows {
            let ahead = Duration::from_millis(window.expiry_ms.saturating_sub(wall_ms)).min(MAX_EXPIRY_AHEAD);
            let seen = Seen {
                window,
                expires_at: now + ahead,
                seen_at: wall,
                my_sent,
            };
            match window.time_unit {
                Unit::Second => state.throttle = Some(seen),
                Unit::Minute | Unit::Hour => {
                    if let Some(previous) = state.minute
                        && previous.window.expiry_ms.abs_diff(window.expiry_ms) < SAME_WINDOW_SLACK_MS
                        && window.used > previous.window.used
                        && my_sent > previous.my_sent
                    {
                        // How many calls the whole app made per call of this process.
                        let sample =
                            f64::from(window.used - previous.window.used) / (my_sent - previous.my_sent) as f64;
                        let sample = sample.clamp(1.0, self.max_share());
                        state.share = state.share * (1.0 - SHARE_SMOOTHING) + sample * SHARE_SMOOTHING;
                    }
                    state.minute = Some(seen);
                }
                Unit::Day => state.day = Some(seen),
            }
        }
        if status == 429 {
            state.throttled += 1;
            state.consecutive_throttles = state.consecutive_throttles.saturating_add(1);
            let retry_after = headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(super::parse_retry_after);
            let backoff = Duration::from_millis(500 << state.consecutive_throttles.min(6));
            let until = now + retry_after.unwrap_or(backoff);
            state.blocked_until = Some(state.blocked_until.map_or(until, |b| b.max(until)));
            // Others are calling more than this process thought: take a smaller share.
            state.share = (state.share * 1.5).min(self.max_share());
        } else {
            state.consecutive_throttles = 0;
        }
    }

    /// When Keap last reported the quota to this process.
    pub fn last_report_at(&self) -> Option<SystemTime> {
        let state = self.lock();
        [state.throttle, state.minute, state.day]
            .into_iter()
            .flatten()
            .map(|s| s.seen_at)
            .max()
    }

    /// What this process knows of the quota.
    pub fn quota_use(&self) -> QuotaUse {
        let state = self.lock();
        let now = Instant::now();
        let wall = SystemTime::now();
        let windows: Vec<Seen> = [state.throttle, state.minute, state.day]
            .into_iter()
            .flatten()
            .collect();
        let reported_at = windows.iter().map(|s| s.seen_at).max().map(rfc3339);
        let bulk_paused = state.day.is_some_and(|day| {
            day.expires_at > now
                && f64::from(day.window.available)
                    <= f64::from(day.window.limit) * f64::from(self.settings.daily_reserve_percent) / 100.0
        });
        QuotaUse {
            windows: windows
                .iter()
                .map(|seen| {
                    // A window that has reset since it was reported is reported as fresh.
                    let reset = seen.expires_at <= now;
                    QuotaWindowUse {
                        time_unit: seen.window.time_unit,
                        limit: seen.window.limit,
                        used: if reset { 0 } else { seen.window.used },
                        available: if reset {
                            seen.window.limit
                        } else {
                            seen.window.available
                        },
                        resets_at: rfc3339(wall + seen.expires_at.saturating_duration_since(now)),
                    }
                })
                .collect(),
            reported_at,
            bulk_paused,
            calls_sent: state.sent,
            calls_throttled: state.throttled,
            limits: self.settings.limits,
        }
    }
}

/// What `/status` shows of the quota: the last report this process has, refreshed by one
/// cheap call (`GET /v1/tags?limit=1`) when it is older than [`QUOTA_REPORT_MAX_AGE`].
#[async_trait::async_trait]
pub trait QuotaReporter: Send + Sync {
    async fn quota_use(&self) -> Option<QuotaUse>;
}

/// A status view costs at most one Keap call per this long and process.
pub const QUOTA_REPORT_MAX_AGE: Duration = Duration::from_secs(60);

/// [`QuotaReporter`] over a paced client and the functions' credential source.
pub struct ProbingQuotaReporter {
    api: super::api::KeapApi,
    credentials: std::sync::Arc<dyn crate::token::CredentialSource>,
}

impl ProbingQuotaReporter {
    pub fn new(api: super::api::KeapApi, credentials: std::sync::Arc<dyn crate::token::CredentialSource>) -> Self {
        Self { api, credentials }
    }
}

#[async_trait::async_trait]
impl QuotaReporter for ProbingQuotaReporter {
    async fn quota_use(&self) -> Option<QuotaUse> {
        let pacer = self.api.pacer()?;
        let fresh = pacer
            .last_report_at()
            .is_some_and(|at| at.elapsed().unwrap_or_default() < QUOTA_REPORT_MAX_AGE);
        if !fresh {
            // Not connected, or Keap unavailable: report what is known, if anything.
            if let Ok(credential) = self.credentials.credential().await
                && let Err(error) = self.api.check_credential(&credential).await
            {
                tracing::info!(error = %error, "quota probe for /status failed");
            }
        }
        pacer.last_report_at().map(|_| pacer.quota_use())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn quota(units: &str, limit: &str, used: &str, available: &str, expiry: &str) -> http::HeaderMap {
        headers(&[
            ("x-keap-product-quota-time-unit", units),
            ("x-keap-product-quota-limit", limit),
            ("x-keap-product-quota-used", used),
            ("x-keap-product-quota-available", available),
            ("x-keap-product-quota-expiry-time", expiry),
        ])
    }

    fn in_ms(ms: u64) -> String {
        (epoch_ms(SystemTime::now()) + ms).to_string()
    }

    fn settings(class: CallClass, processes: u32) -> PacingSettings {
        PacingSettings {
            processes,
            ..PacingSettings::defaults(AuthMode::OAuth)
        }
        .with_class(class)
    }

    #[test]
    fn pipe_separated_windows_are_read_and_junk_is_skipped() {
        let expiry = format!("{}|{}", in_ms(30_000), in_ms(3_600_000));
        let map = quota("minute|day", "1500|150000", "10|900", "1490|149100", &expiry);
        let windows = reported_windows(&map);
        assert_eq!(windows.len(), 2);
        assert_eq!((windows[0].time_unit, windows[0].available), (Unit::Minute, 1490));
        assert_eq!((windows[1].time_unit, windows[1].used), (Unit::Day, 900));
        let junk = quota("fortnight|minute", "x|5", "1|1", "2|99999", "0|1");
        let windows = reported_windows(&junk);
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].available, 5, "available is capped at the limit");
        assert!(reported_windows(&http::HeaderMap::new()).is_empty());
    }

    #[test]
    fn before_any_answer_a_process_takes_its_configured_share_of_the_spike_limit() {
        let pacer = Pacer::new(settings(CallClass::Live, 4));
        let now = Instant::now();
        assert_eq!(pacer.reserve(now, Duration::from_secs(5)), Ok(Duration::ZERO));
        let second = pacer.reserve(now, Duration::from_secs(5)).unwrap();
        // 25/s less the 5 % margin, shared by 4: one call every ~168 ms.
        let expected = 1.0 / (25.0 * 0.95 / 4.0);
        assert!((second.as_secs_f64() - expected).abs() < 0.001, "{second:?}");
    }

    #[test]
    fn a_process_alone_learns_it_may_use_the_whole_remainder() {
        let pacer = Pacer::new(settings(CallClass::Live, 4));
        let expiry = in_ms(30_000);
        for used in 1..=30u32 {
            pacer.reserve(Instant::now(), Duration::from_secs(60)).unwrap();
            let available = (1500 - used).to_string();
            pacer.observe(200, &quota("minute", "1500", &used.to_string(), &available, &expiry));
        }
        let share = pacer.lock().share;
        assert!(share < 1.2, "alone, the share converges to 1: {share}");
        let state = pacer.lock();
        let interval = pacer.interval(&state, Instant::now());
        // Capped by the spike limit (25/s less 5 %), not by 1470 calls in 30 s.
        assert!((interval.as_secs_f64() - 1.0 / 23.75).abs() < 0.01, "{interval:?}");
    }

    #[test]
    fn with_others_calling_a_process_slows_to_its_share_and_stops_at_the_guard() {
        let pacer = Pacer::new(settings(CallClass::Live, 2));
        let expiry = in_ms(20_000);
        let mut used = 0;
        for _ in 0..30 {
            pacer.reserve(Instant::now(), Duration::from_secs(60)).unwrap();
            used += 3; // two other processes call as often
            pacer.observe(
                200,
                &quota("minute", "1500", &used.to_string(), &(1500 - used).to_string(), &expiry),
            );
        }
        let share = pacer.lock().share;
        assert!((2.5..=3.0).contains(&share), "{share}");
        pacer.observe(200, &quota("minute", "1500", "1498", "2", &expiry));
        let refused = pacer.reserve(Instant::now(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(refused.reason, "the window's quota is spent");
        assert!(refused.wait > Duration::from_secs(18) && refused.wait <= Duration::from_secs(20));
    }

    #[test]
    fn a_process_held_back_by_its_own_pacing_does_not_slow_itself_further() {
        let pacer = Pacer::new(settings(CallClass::Bulk, 2));
        let expiry = in_ms(40_000);
        let mut used = 0;
        for _ in 0..20 {
            pacer.reserve(Instant::now(), Duration::from_secs(60)).unwrap();
            used += 200; // everyone else called 199 times meanwhile
            pacer.observe(200, &quota("minute", "100000", &used.to_string(), "90000", &expiry));
        }
        pacer.observe(429, &http::HeaderMap::new());
        assert_eq!(pacer.lock().share, 4.0, "at most twice the configured processes");
    }

    #[test]
    fn a_429_blocks_for_retry_after_and_is_counted() {
        let pacer = Pacer::new(settings(CallClass::Live, 1));
        pacer.reserve(Instant::now(), Duration::ZERO).unwrap();
        pacer.observe(429, &headers(&[("retry-after", "7")]));
        let refused = pacer.reserve(Instant::now(), Duration::from_secs(2)).unwrap_err();
        assert_eq!(refused.reason, "Keap answered 429");
        assert!(refused.wait > Duration::from_secs(6));
        assert_eq!(
            (pacer.quota_use().calls_sent, pacer.quota_use().calls_throttled),
            (1, 1)
        );
    }

    #[test]
    fn bulk_work_stops_at_the_daily_reserve_live_signups_do_not() {
        let day = quota(
            "minute|day",
            "1500|150000",
            "1|140000",
            "1499|10000",
            &format!("{}|{}", in_ms(60_000), in_ms(7_200_000)),
        );
        for (class, refused) in [(CallClass::Bulk, true), (CallClass::Live, false)] {
            let pacer = Pacer::new(settings(class, 1));
            pacer.observe(200, &day);
            let answer = pacer.reserve(Instant::now(), Duration::from_secs(1));
            assert_eq!(answer.is_err(), refused, "{class:?}");
            assert!(pacer.quota_use().bulk_paused);
            if let Err(paced) = answer {
                assert!(paced.wait > Duration::from_secs(7000), "{paced:?}");
            }
        }
    }

    #[test]
    fn bulk_work_leaves_headroom_in_the_minute() {
        let pacer = Pacer::new(settings(CallClass::Bulk, 1));
        // 10 % of 1500, a quarter of it kept as a hard floor: 37.5 + the guard.
        pacer.observe(200, &quota("minute", "1500", "1461", "39", &in_ms(10_000)));
        assert!(pacer.reserve(Instant::now(), Duration::from_secs(1)).is_err());
        let live = Pacer::new(settings(CallClass::Live, 1));
        live.observe(200, &quota("minute", "1500", "1461", "39", &in_ms(10_000)));
        assert!(live.reserve(Instant::now(), Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn settings_come_from_the_environment_and_are_bounded() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &'static str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
        };
        let settings = PacingSettings::from_env_with(
            AuthMode::ApiKey,
            env(&[("KEAP_PACING_PROCESSES", "6"), ("KEAP_LIVE_HEADROOM_PERCENT", "20")]),
        )
        .unwrap();
        assert_eq!(settings.limits, QuotaLimits::API_KEY);
        assert_eq!((settings.processes, settings.live_headroom_percent), (6, 20));
        let error = PacingSettings::from_env_with(AuthMode::OAuth, env(&[("KEAP_LIVE_HEADROOM_PERCENT", "95")]));
        assert!(matches!(
            error,
            Err(ConfigError::Invalid {
                name: "KEAP_LIVE_HEADROOM_PERCENT",
                ..
            })
        ));
    }
}
