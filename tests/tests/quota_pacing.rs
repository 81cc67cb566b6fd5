//! Quota-aware pacing (`keap_relay::keap::pacing`) against the sandbox's exact quota windows,
//! configured down (a 6 s "minute") so that the run goes through several windows in seconds.
//!
//! Several independent pacers, as separate Lambda environments would be, each with its own
//! client and nothing shared but Keap's answers, send as fast as they are allowed: together
//! they stay under the quota (under 1 % of calls answered 429) and still finish close to the
//! quota's minimum time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keap_relay::SecretString;
use keap_relay::keap::api::KeapApi;
use keap_relay::keap::pacing::{CallClass, Pacer, PacingSettings, QuotaLimits};
use keap_relay::token::Credential;
use keap_sandbox::{DEFAULT_API_KEY, RateLimit, Sandbox, SandboxConfig};

/// The sandbox's limits: the minute binds (60 per 6 s = 10/s), the spike limit is 20/s.
const LIMIT: RateLimit = RateLimit {
    per_second: 20,
    per_minute: 60,
    per_day: 0,
    time_scale: 10,
};

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig {
        rate_limit: Some(LIMIT),
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

fn pacer(processes: u32, class: CallClass, max_wait: Duration) -> Arc<Pacer> {
    let mut settings = PacingSettings {
        // What the operator configures: the spike limit and the minute (as counted in the
        // sandbox's shortened minute, 60 calls per 6 s = 600 a real minute).
        limits: QuotaLimits {
            per_second: LIMIT.per_second,
            per_minute: 600,
            per_day: 0,
        },
        processes,
        ..PacingSettings::defaults(keap_relay::config::AuthMode::ApiKey)
    }
    .with_class(class);
    // Here even bulk work gives its turn up quickly, to show the live share left free.
    settings.max_wait = max_wait;
    Arc::new(Pacer::new(settings))
}

/// `processes` environments, each running `tasks` concurrent callers, `calls` calls in all.
async fn run(sandbox: &Sandbox, processes: u32, tasks: usize, calls: usize) -> (Duration, Vec<Arc<Pacer>>) {
    let credential = Credential::ApiKey(SecretString::from(DEFAULT_API_KEY));
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(calls));
    let started = Instant::now();
    let mut handles = Vec::new();
    let mut pacers = Vec::new();
    for _ in 0..processes {
        let pacer = pacer(processes, CallClass::Live, Duration::from_secs(10));
        pacers.push(pacer.clone());
        let api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(10)).with_pacer(pacer);
        for _ in 0..tasks {
            let (api, credential, remaining) = (api.clone(), credential.clone(), remaining.clone());
            handles.push(tokio::spawn(async move {
                while remaining
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok()
                {
                    // A 429 or a paced refusal: wait as told and send the same call again.
                    loop {
                        match api.check_credential(&credential).await {
                            Ok(()) => break,
                            Err(error) if error.is_transient() => {
                                tokio::time::sleep(error.retry_after().unwrap_or(Duration::from_millis(200))).await;
                            }
                            Err(error) => panic!("{error}"),
                        }
                    }
                }
            }));
        }
    }
    for handle in handles {
        handle.await.unwrap();
    }
    (started.elapsed(), pacers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_processes_share_the_quota_without_a_429_storm() {
    let sandbox = sandbox().await;
    let calls = 150;
    let (elapsed, pacers) = run(&sandbox, 3, 2, calls).await;
    let stats = sandbox.stats();
    let answered = stats.calls.len() as u64;
    let throttled = stats.throttled;
    // The quota's minimum: the calls at its sustained rate (60 per 6 s).
    let minimum = Duration::from_secs_f64(calls as f64 / 10.0);
    eprintln!(
        "{calls} calls by 3 processes: {elapsed:?} (minimum {minimum:?}, {:.0} %), {throttled} of {answered} answered 429",
        elapsed.as_secs_f64() / minimum.as_secs_f64() * 100.0
    );
    assert_eq!(answered - throttled, calls as u64);
    assert!(throttled * 100 <= answered, "{throttled} 429s of {answered} calls");
    assert!(
        elapsed.as_secs_f64() <= minimum.as_secs_f64() * 1.25,
        "{elapsed:?} against a minimum of {minimum:?}"
    );
    let sent: u64 = pacers.iter().map(|p| p.quota_use().calls_sent).sum();
    assert_eq!(sent, answered, "every call went through a pacer");
    let report = pacers[0].quota_use();
    assert_eq!(report.windows.len(), 2, "the spike and the minute windows: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_work_leaves_the_live_share_free() {
    let sandbox = sandbox().await;
    let credential = Credential::ApiKey(SecretString::from(DEFAULT_API_KEY));
    // A backfill alone, as fast as it may, for two windows.
    let bulk = pacer(1, CallClass::Bulk, Duration::from_millis(100));
    let api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(10)).with_pacer(bulk);
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut live_ok = 0;
    let live_api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(10)).with_pacer(pacer(
        1,
        CallClass::Live,
        Duration::from_millis(100),
    ));
    while Instant::now() < deadline {
        match api.check_credential(&credential).await {
            Ok(()) => {}
            Err(error) if error.is_transient() => {
                // While bulk work waits for the next window, a live call still gets through.
                if live_api.check_credential(&credential).await.is_ok() {
                    live_ok += 1;
                }
                tokio::time::sleep(error.retry_after().unwrap_or_default().min(Duration::from_millis(500))).await;
            }
            Err(error) => panic!("{error}"),
        }
    }
    let stats = sandbox.stats();
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert!(live_ok >= 1, "live calls found room while bulk work waited");
}

#[tokio::test]
async fn status_reports_the_quota_from_one_probe_then_from_what_calls_taught() {
    use keap_relay::keap::pacing::{ProbingQuotaReporter, QuotaReporter, Unit};
    use keap_relay::token::ApiKeySource;
    let sandbox = Sandbox::start(SandboxConfig {
        rate_limit: Some(RateLimit { per_day: 1000, ..LIMIT }),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(10)).with_pacer(pacer(
        1,
        CallClass::Live,
        Duration::from_secs(1),
    ));
    let reporter = ProbingQuotaReporter::new(
        api.clone(),
        Arc::new(ApiKeySource::new(SecretString::from(DEFAULT_API_KEY))),
    );
    let first = reporter.quota_use().await.expect("a report after one probe");
    assert_eq!(sandbox.stats().calls.len(), 1);
    let units: Vec<Unit> = first.windows.iter().map(|w| w.time_unit).collect();
    assert_eq!(units, [Unit::Second, Unit::Minute, Unit::Day]);
    assert_eq!((first.windows[2].used, first.windows[2].available), (1, 999));
    // Fresh enough: no second probe.
    let again = reporter.quota_use().await.unwrap();
    assert_eq!(sandbox.stats().calls.len(), 1);
    assert_eq!(again.windows[2].used, 1);
    let json = serde_json::to_value(&again).unwrap();
    assert_eq!(json["windows"][2]["time_unit"], "day");
    assert_eq!(json["bulk_paused"], false);
}
