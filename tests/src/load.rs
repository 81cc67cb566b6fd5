//! What the load runs (`load_signups.rs`, `load_e2e.rs`) share: their size knobs, a seeded
//! random source for the fault schedule, the wait for every signup's answer, and how a logged
//! reason is shortened for the figures.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

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

/// Waits for every sender's `(key, answer)`, each within `limit` (a hang is a failure), and
/// says on stderr every `every` answers how far the run is.
pub async fn answers<K: Eq + Hash, A>(
    run: &str,
    senders: Vec<tokio::task::JoinHandle<(K, A)>>,
    limit: Duration,
    every: usize,
) -> HashMap<K, A> {
    let mut answers = HashMap::new();
    for (n, sender) in senders.into_iter().enumerate() {
        let (key, answer) = tokio::time::timeout(limit, sender)
            .await
            .expect("a signup hung")
            .unwrap();
        answers.insert(key, answer);
        if (n + 1) % every == 0 {
            eprintln!("{run}: {} signups answered", n + 1);
        }
    }
    answers
}

/// A short, stable label for an error message (for the figures, not for matching).
pub fn error_kind(message: &str) -> String {
    message.split([':', '(']).next().unwrap_or(message).trim().to_owned()
}

/// How many Keap-side faults [`inject_keap_fault`] knows.
pub const KEAP_FAULTS: u64 = 5;

/// Switches on Keap-side fault `which` (`0..KEAP_FAULTS`) in the sandbox and says which:
/// 5xx on 30 % of calls, 20 × 429 with and without `Retry-After`, slow Keap, or every access
/// token expired at once.
pub fn inject_keap_fault(sandbox: &keap_sandbox::Sandbox, which: u64) -> &'static str {
    let faults = sandbox.faults();
    match which {
        0 => {
            faults.set_server_error_rate(0.3);
            "keap 5xx 30%"
        }
        1 => {
            faults.throttle_next(20, Some(1));
            "keap 429 x20 with Retry-After"
        }
        2 => {
            faults.throttle_next(20, None);
            "keap 429 x20 without Retry-After"
        }
        3 => {
            faults.set_latency(std::time::Duration::from_millis(300));
            "slow keap 300 ms"
        }
        _ => {
            sandbox.expire_access_tokens();
            "access tokens expired"
        }
    }
}

/// Ids of every tag named `name` in the sandbox. Cold processes that look the tag up at the
/// same moment may each create it (Keap allows duplicate names): any of them is that tag.
pub async fn tag_ids_named(sandbox: &keap_sandbox::Sandbox, name: &str) -> Vec<i64> {
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/tags?limit=1000", sandbox.api_url()))
        .query(&[("name", name)])
        .header("X-Keap-API-Key", keap_sandbox::DEFAULT_API_KEY)
        .send()
        .await
        .expect("the sandbox answers")
        .json()
        .await
        .expect("a tag list");
    listed["tags"]
        .as_array()
        .expect("a tag list")
        .iter()
        .filter_map(|t| t["id"].as_i64())
        .collect()
}
