//! A per-address limit on form posts, in this process's memory: a fixed one-minute window per
//! client address. On Lambda each concurrent instance has its own count and a new instance
//! starts at zero, so this only slows one client hammering one warm instance; the README
//! ("Website forms") explains how to put a real per-address rule (AWS WAF) in front.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses tracked at once; beyond it (after dropping expired windows) new addresses
/// are let through rather than letting the table grow without bound.
pub const MAX_TRACKED: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct IpLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl IpLimiter {
    /// `per_minute` 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one post from `ip`; `Err(wait)` when over the limit, with the time until its
    /// window ends.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(&ip) && windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                tracing::warn!(
                    tracked = MAX_TRACKED,
                    "the per-address form limit is full; letting a new address through"
                );
                return Ok(());
            }
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_minute {
            return Err(WINDOW.saturating_sub(now.saturating_duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_window() {
        let limiter = IpLimiter::new(2);
        let start = Instant::now();
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(limiter.check(a, start).is_ok());
        assert!(limiter.check(a, start).is_ok());
        let wait = limiter.check(a, start + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert!(limiter.check(b, start).is_ok());
        assert!(limiter.check(a, start + WINDOW).is_ok());
    }

    #[test]
    fn zero_turns_it_off_and_a_full_table_lets_new_addresses_through() {
        let off = IpLimiter::new(0);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..100 {
            assert!(off.check(ip, Instant::now()).is_ok());
        }
        let limiter = IpLimiter::new(1);
        let now = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            assert!(limiter.check(IpAddr::from(i.to_be_bytes()), now).is_ok());
        }
        assert!(limiter.check(ip, now).is_ok());
        assert!(limiter.check(ip, now).is_ok(), "not tracked while the table is full");
        // Once the windows have expired, the table makes room again.
        assert!(limiter.check(ip, now + WINDOW).is_ok());
        assert!(limiter.check(ip, now + WINDOW).is_err());
    }
}
