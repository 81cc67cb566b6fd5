//! Runtime fault switches. Every method takes `&self` and may be called from any thread
//! while the sandbox serves requests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Faults injected into the sandbox's answers.
///
/// - `latency` delays every REST call (`/crm/rest/...`) before it is handled.
/// - `token_latency` delays every `/token` call before it is handled.
/// - `server_error_rate` (0..=1) answers that share of REST and `/token` calls with a
///   gateway-style 502 or 503 before anything is done (no token is rotated, nothing stored).
/// - `throttle_next(n, retry_after)` answers the next `n` authenticated REST calls 429.
/// - `drop_next_refresh_responses(n)`: the next `n` successful refreshes are applied (old
///   refresh token dead, new pair issued and counted) but the connection is closed without
///   an HTTP response.
/// - `sent_despite_5xx_rate` (0..=1): of the injected 5xx answers to a call that sends email or
///   achieves a goal, this share comes *after* the email went out (the goal was achieved): the
///   caller cannot tell from the answer whether it happened.
/// - `fail_next_sends(n)`: the next `n` email sends or goal achievements answer a gateway 502
///   (after doing the work when `sent_despite_5xx_rate` says so).
/// - `sent_listing_delay`: a sent email shows in `GET /v1/emails` only this long after it
///   went out.
#[derive(Debug)]
pub struct Faults {
    latency: Mutex<Duration>,
    token_latency: Mutex<Duration>,
    server_error_rate_bits: AtomicU64,
    throttle: Mutex<Throttle>,
    dropped_refreshes_left: AtomicU32,
    sent_despite_5xx_rate_bits: AtomicU64,
    sent_listing_delay: Mutex<Duration>,
    failing_sends_left: AtomicU32,
    rng: Mutex<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Throttle {
    remaining: u32,
    retry_after: Option<u32>,
}

/// The fault knobs as JSON, for `POST /_sandbox/faults`. Absent fields are left as they are;
/// `clear: true` first resets everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    #[serde(default)]
    pub clear: bool,
    pub latency_ms: Option<u64>,
    pub token_latency_ms: Option<u64>,
    pub server_error_rate: Option<f64>,
    pub throttle_next: Option<u32>,
    /// Retry-After seconds for the `throttle_next` answers.
    pub retry_after: Option<u32>,
    pub drop_next_refresh_responses: Option<u32>,
    pub sent_despite_5xx_rate: Option<f64>,
    pub sent_listing_delay_ms: Option<u64>,
    pub fail_next_sends: Option<u32>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Mutex::new(Duration::ZERO),
            token_latency: Mutex::new(Duration::ZERO),
            server_error_rate_bits: AtomicU64::new(0f64.to_bits()),
            throttle: Mutex::new(Throttle::default()),
            dropped_refreshes_left: AtomicU32::new(0),
            sent_despite_5xx_rate_bits: AtomicU64::new(0f64.to_bits()),
            sent_listing_delay: Mutex::new(Duration::ZERO),
            failing_sends_left: AtomicU32::new(0),
            rng: Mutex::new(seed()),
        }
    }
}

fn seed() -> u64 {
    let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
    (hi ^ lo) | 1
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere never leaves these plain values half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Faults {
    /// Delay every REST call by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.latency) = latency;
    }

    /// Delay every `/token` call by `latency`.
    pub fn set_token_latency(&self, latency: Duration) {
        *lock(&self.token_latency) = latency;
    }

    /// Answer this share (clamped to 0..=1) of REST and `/token` calls with a 502/503.
    pub fn set_server_error_rate(&self, rate: f64) {
        let rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
        self.server_error_rate_bits.store(rate.to_bits(), Ordering::SeqCst);
    }

    /// The next `n` authenticated REST calls get 429, with `Retry-After` when given.
    pub fn throttle_next(&self, n: u32, retry_after: Option<u32>) {
        *lock(&self.throttle) = Throttle {
            remaining: n,
            retry_after,
        };
    }

    /// The next `n` successful refreshes are applied but their connection is closed
    /// without an HTTP response.
    pub fn drop_next_refresh_responses(&self, n: u32) {
        self.dropped_refreshes_left.store(n, Ordering::SeqCst);
    }

    /// Of the injected 5xx answers to email sends and goal achievements, this share (clamped
    /// to 0..=1) is sent after the email went out or the goal was achieved.
    pub fn set_sent_despite_5xx_rate(&self, rate: f64) {
        let rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
        self.sent_despite_5xx_rate_bits.store(rate.to_bits(), Ordering::SeqCst);
    }

    /// The next `n` email sends or goal achievements answer a gateway 502.
    pub fn fail_next_sends(&self, n: u32) {
        self.failing_sends_left.store(n, Ordering::SeqCst);
    }

    pub(crate) fn take_failing_send(&self) -> bool {
        self.failing_sends_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// A sent email shows in `GET /v1/emails` only `delay` after it went out.
    pub fn set_sent_listing_delay(&self, delay: Duration) {
        *lock(&self.sent_listing_delay) = delay;
    }

    /// Back to no faults at all.
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        self.set_token_latency(Duration::ZERO);
        self.set_server_error_rate(0.0);
        self.throttle_next(0, None);
        self.drop_next_refresh_responses(0);
        self.set_sent_despite_5xx_rate(0.0);
        self.set_sent_listing_delay(Duration::ZERO);
        self.fail_next_sends(0);
    }

    /// Apply the JSON form of the knobs.
    pub fn apply(&self, settings: &FaultSettings) {
        if settings.clear {
            self.clear();
        }
        if let Some(ms) = settings.latency_ms {
            self.set_latency(Duration::from_millis(ms));
        }
        if let Some(ms) = settings.token_latency_ms {
            self.set_token_latency(Duration::from_millis(ms));
        }
        if let Some(rate) = settings.server_error_rate {
            self.set_server_error_rate(rate);
        }
        if let Some(n) = settings.throttle_next {
            self.throttle_next(n, settings.retry_after);
        }
        if let Some(n) = settings.drop_next_refresh_responses {
            self.drop_next_refresh_responses(n);
        }
        if let Some(rate) = settings.sent_despite_5xx_rate {
            self.set_sent_despite_5xx_rate(rate);
        }
        if let Some(ms) = settings.sent_listing_delay_ms {
            self.set_sent_listing_delay(Duration::from_millis(ms));
        }
        if let Some(n) = settings.fail_next_sends {
            self.fail_next_sends(n);
        }
    }

    pub(crate) fn sent_listing_delay(&self) -> Duration {
        *lock(&self.sent_listing_delay)
    }

    /// Whether an injected 5xx to a send comes after the send.
    pub(crate) fn roll_sent_despite_5xx(&self) -> bool {
        let rate = f64::from_bits(self.sent_despite_5xx_rate_bits.load(Ordering::SeqCst));
        if rate <= 0.0 {
            return false;
        }
        let unit = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        unit < rate
    }

    pub(crate) fn latency(&self) -> Duration {
        *lock(&self.latency)
    }

    pub(crate) fn token_latency(&self) -> Duration {
        *lock(&self.token_latency)
    }

    pub(crate) fn server_error_rate(&self) -> f64 {
        f64::from_bits(self.server_error_rate_bits.load(Ordering::SeqCst))
    }

    /// Decide whether this call fails with an injected 5xx, and which one.
    pub(crate) fn roll_server_error(&self) -> Option<u16> {
        let rate = self.server_error_rate();
        if rate <= 0.0 {
            return None;
        }
        let draw = self.next_random();
        // 53 random bits -> uniform in [0, 1).
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        (unit < rate).then_some(if draw & 1 == 0 { 502 } else { 503 })
    }

    /// Consume one throttled answer, if any are pending: `Some(retry_after)`.
    pub(crate) fn take_throttle(&self) -> Option<Option<u32>> {
        let mut throttle = lock(&self.throttle);
        if throttle.remaining == 0 {
            return None;
        }
        throttle.remaining -= 1;
        Some(throttle.retry_after)
    }

    /// Consume one dropped refresh response, if any are pending.
    pub(crate) fn take_dropped_refresh(&self) -> bool {
        self.dropped_refreshes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn next_random(&self) -> u64 {
        // xorshift64*: plenty for fault sampling, no extra dependency.
        let mut state = lock(&self.rng);
        let mut x = *state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
