//! The bill implied by the measured figures at AWS's public prices (us-east-1, arm64).
//!
//! Measured here: the relay's own handler time, Keap calls and Secrets Manager calls per
//! signup, cold starts, and the store calls of a refresh run. Not measurable on loopback and
//! therefore assumed (and printed as such): Keap's and Secrets Manager's latency in production.

use serde::Serialize;

use crate::probes::RefreshCalls;

/// Prices as given in issue 7 (AWS's public pricing pages), assumed valid on [`Prices::date`].
#[derive(Debug, Clone, Serialize)]
pub struct Prices {
    pub date: String,
    pub lambda_arm64_per_gb_second: f64,
    pub lambda_per_million_requests: f64,
    pub secrets_manager_per_secret_month: f64,
    pub secrets_manager_per_10k_calls: f64,
    pub sqs_per_million_requests: f64,
    pub http_api_per_million_requests: f64,
}

impl Prices {
    pub fn aws_public(date: &str) -> Prices {
        Prices {
            date: date.to_owned(),
            lambda_arm64_per_gb_second: 0.000_013_333_4,
            lambda_per_million_requests: 0.20,
            secrets_manager_per_secret_month: 0.40,
            secrets_manager_per_10k_calls: 0.05,
            sqs_per_million_requests: 0.40,
            http_api_per_million_requests: 1.00,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Assumptions {
    /// `MemorySize` of every function in template.yaml.
    pub memory_mb: f64,
    /// Production latency of one Keap REST or token call (not measured here).
    pub keap_call_ms: f64,
    /// Production latency of one Secrets Manager call from Lambda (not measured here).
    pub secrets_manager_call_ms: f64,
    /// `rate(1 hour)` over a 30-day month.
    pub refresh_runs_per_month: f64,
    /// Keap access tokens live 24 h; the schedule rotates when less than the 6 h lead is
    /// left, so about every 18 h.
    pub rotations_per_month: f64,
    /// Every hourly refresh run is a cold start (idle environments are reclaimed sooner).
    pub refresh_runs_cold: bool,
    /// The app secret and the token secret.
    pub secrets: f64,
    /// Idle SQS event source mapping: pollers (AWS starts with five) x 20 s long polls.
    pub idle_queue_pollers: f64,
    pub long_poll_seconds: f64,
}

impl Default for Assumptions {
    fn default() -> Self {
        Assumptions {
            memory_mb: 128.0,
            keap_call_ms: 250.0,
            secrets_manager_call_ms: 20.0,
            refresh_runs_per_month: 720.0,
            rotations_per_month: 40.0,
            refresh_runs_cold: true,
            secrets: 2.0,
            idle_queue_pollers: 5.0,
            long_poll_seconds: 20.0,
        }
    }
}

/// The measured figures the model uses.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Relay's own time per warm signup (p50), Keap excluded.
    pub signup_own_ms: f64,
    pub keap_calls_per_signup: f64,
    pub store_calls_per_warm_signup: f64,
    /// Store reads of the first signup of a process (app secret + token state).
    pub store_calls_first_signup: f64,
    pub signup_cold_start_ms: f64,
    pub refresh_cold_start_ms: f64,
    pub refresh: RefreshCalls,
}

/// One line of the bill.
#[derive(Debug, Clone, Serialize)]
pub struct CostLine {
    pub scenario: String,
    pub invocations: f64,
    /// Billed duration per invocation, 1 ms granularity, INIT included for cold starts
    /// (custom runtimes are billed for INIT).
    pub billed_ms_per_invocation: f64,
    pub lambda_gb_seconds: f64,
    pub lambda_usd: f64,
    pub secrets_manager_calls: f64,
    pub secrets_manager_usd: f64,
    pub sqs_requests: f64,
    pub sqs_usd: f64,
    pub http_api_usd: f64,
    pub total_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostModel {
    pub prices: Prices,
    pub assumptions: Assumptions,
    pub measured: Measured,
    pub lines: Vec<CostLine>,
}

#[derive(Default)]
struct Usage {
    scenario: &'static str,
    invocations: f64,
    billed_ms: f64,
    secrets_manager_calls: f64,
    sqs_requests: f64,
    http_requests: f64,
    fixed_usd: f64,
}

fn price(usage: Usage, prices: &Prices, assumptions: &Assumptions) -> CostLine {
    let gb_seconds = usage.invocations * usage.billed_ms / 1000.0 * assumptions.memory_mb / 1024.0;
    let lambda_usd =
        gb_seconds * prices.lambda_arm64_per_gb_second + usage.invocations * prices.lambda_per_million_requests / 1e6;
    let secrets_manager_usd =
        usage.secrets_manager_calls * prices.secrets_manager_per_10k_calls / 1e4 + usage.fixed_usd;
    let sqs_usd = usage.sqs_requests * prices.sqs_per_million_requests / 1e6;
    let http_api_usd = usage.http_requests * prices.http_api_per_million_requests / 1e6;
    CostLine {
        scenario: usage.scenario.to_owned(),
        invocations: usage.invocations,
        billed_ms_per_invocation: usage.billed_ms,
        lambda_gb_seconds: gb_seconds,
        lambda_usd,
        secrets_manager_calls: usage.secrets_manager_calls,
        secrets_manager_usd,
        sqs_requests: usage.sqs_requests,
        sqs_usd,
        http_api_usd,
        total_usd: lambda_usd + secrets_manager_usd + sqs_usd + http_api_usd,
    }
}

pub fn model(prices: Prices, assumptions: Assumptions, measured: Measured) -> CostModel {
    let a = &assumptions;
    let m = &measured;
    let keap_ms = m.keap_calls_per_signup * a.keap_call_ms;
    let warm_ms = (m.signup_own_ms + keap_ms).ceil();
    let cold_ms =
        (m.signup_cold_start_ms + m.signup_own_ms + keap_ms + m.store_calls_first_signup * a.secrets_manager_call_ms)
            .ceil();

    let not_due = m.refresh.not_due.total() as f64;
    let rotation = m.refresh.rotation.total() as f64;
    let due = a.rotations_per_month;
    let idle = a.refresh_runs_per_month - due;
    // A cold run reads the app secret once more (the Keap connection is built on first use).
    let app_secret_reads = if a.refresh_runs_cold { 1.0 } else { 0.0 };
    let init_ms = if a.refresh_runs_cold {
        m.refresh_cold_start_ms
    } else {
        0.0
    };
    let idle_run_ms = init_ms + (app_secret_reads + not_due) * a.secrets_manager_call_ms;
    let rotation_run_ms = init_ms + (app_secret_reads + rotation) * a.secrets_manager_call_ms + a.keap_call_ms;
    let refresh_ms = ((idle * idle_run_ms.ceil() + due * rotation_run_ms.ceil()) / a.refresh_runs_per_month).ceil();
    let refresh_calls = a.refresh_runs_per_month * app_secret_reads + idle * not_due + due * rotation;
    let idle_polls = a.idle_queue_pollers * 30.0 * 86_400.0 / a.long_poll_seconds;

    let signups = |scenario, billed_ms, calls_per_signup: f64| Usage {
        scenario,
        invocations: 1000.0,
        billed_ms,
        secrets_manager_calls: 1000.0 * calls_per_signup,
        http_requests: 1000.0,
        ..Usage::default()
    };
    let usages = [
        signups("1,000 signups, warm", warm_ms, m.store_calls_per_warm_signup),
        signups("1,000 signups, each a cold start", cold_ms, m.store_calls_first_signup),
        Usage {
            scenario: "1,000 signups queued (Keap down): SendMessage, Receive, Delete each",
            sqs_requests: 3000.0,
            ..Usage::default()
        },
        Usage {
            scenario: "refresh function, per month (hourly)",
            invocations: a.refresh_runs_per_month,
            billed_ms: refresh_ms,
            secrets_manager_calls: refresh_calls,
            ..Usage::default()
        },
        Usage {
            scenario: "fixed, per month: 2 secrets, idle queue polling",
            sqs_requests: idle_polls,
            fixed_usd: a.secrets * prices.secrets_manager_per_secret_month,
            ..Usage::default()
        },
    ];
    let lines = usages.into_iter().map(|usage| price(usage, &prices, a)).collect();
    CostModel {
        prices,
        assumptions,
        measured,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keap_relay::store::counting::StoreCounts;

    fn measured() -> Measured {
        Measured {
            signup_own_ms: 0.6,
            keap_calls_per_signup: 2.0,
            store_calls_per_warm_signup: 0.0,
            store_calls_first_signup: 2.0,
            signup_cold_start_ms: 10.0,
            refresh_cold_start_ms: 10.0,
            refresh: RefreshCalls {
                not_due: StoreCounts {
                    read_current: 1,
                    ..StoreCounts::default()
                },
                rotation: StoreCounts {
                    read_current: 1,
                    put: 2,
                    swap: 2,
                    created: 2,
                    ..StoreCounts::default()
                },
                rotation_keap_token_calls: 1,
                rotation_ms: 1.0,
            },
        }
    }

    #[test]
    fn warm_signups_bill_own_time_plus_assumed_keap_latency() {
        let model = model(Prices::aws_public("2026-11-22"), Assumptions::default(), measured());
        let warm = &model.lines[0];
        assert_eq!(warm.billed_ms_per_invocation, 501.0);
        // 1000 x 0.501 s x 0.125 GB
        assert!((warm.lambda_gb_seconds - 62.625).abs() < 1e-9);
        assert_eq!(warm.secrets_manager_calls, 0.0);
        assert!((warm.http_api_usd - 0.001).abs() < 1e-12);
    }

    #[test]
    fn refresh_month_counts_reads_rotations_and_cold_app_secret_reads() {
        let model = model(Prices::aws_public("2026-11-22"), Assumptions::default(), measured());
        let refresh = &model.lines[3];
        // 720 app-secret reads + 680 idle reads + 40 rotations of 5 calls
        assert_eq!(refresh.secrets_manager_calls, 720.0 + 680.0 + 200.0);
        let fixed = &model.lines[4];
        assert!((fixed.secrets_manager_usd - 0.80).abs() < 1e-12);
        assert_eq!(fixed.sqs_requests, 648_000.0);
    }
}
