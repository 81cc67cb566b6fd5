//! What the load runs (`load_signups.rs`, `load_e2e.rs`) share: their size knobs, a seeded
//! random source for the fault schedule, and how a logged reason is shortened for the figures.

/// `name` from the environment as a number, else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*, seeded: a run's fault schedule is reproducible from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A short, stable label for an error message (for the figures, not for matching).
pub fn error_kind(message: &str) -> String {
    message.split([':', '(']).next().unwrap_or(message).trim().to_owned()
}
