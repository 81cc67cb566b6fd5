//! The launch-spike benchmark (bench/README.md, "Launch spike"; run by `bench/launch-spike.sh`,
//! ignored by `cargo test`): signups arriving far faster than Keap's quota, through the real
//! `signup` and `signup-retry` binaries under the Lambda Runtime API pool of the load test
//! (`relay_tests::lambda_pool`), against the sandbox enforcing the OAuth client's quota
//! (1,500 calls a minute, 25 a second) and moto's SQS as the signup queue.
//!
//! Reports: the time until every signup is in Keap (contact and tags) against the quota's
//! minimum for the calls needed, the share of Keap calls answered 429, signups lost, and the
//! answers the sender saw. Written to `target/launch-spike/report.json` and printed.
//!
//! Size: `SPIKE_SIGNUPS` (5000), `SPIKE_SECONDS` (60, the arrival window),
//! `SPIKE_SIGNUP_PROCESSES` (16), `SPIKE_RETRY_PROCESSES` (2, template.yaml's
//! MaximumConcurrency), `SPIKE_LIVE_HEADROOM_PERCENT` (5), `SPIKE_TIME_SCALE` (1; 10 shortens
//! the sandbox's minute for a quick look).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use keap_relay::store::SecretStore;
use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_sandbox::{RateLimit, Sandbox, SandboxConfig};
use relay_bench::deployment::DeploymentEnv;
use relay_bench::events::{EXTRA_TAG, SignupEvents, WELCOME_TAG};
use relay_bench::seed;
use relay_tests::lambda_pool::{FunctionPool, Outcome, SqsSource, poll_sqs_once};
use relay_tests::load::{env_number, tag_ids_named};
use serde_json::json;
use test_support::moto::{MotoServer, sm_client, sqs_client};
use test_support::temp::TempDir;

const APP_SECRET_ID: &str = "keap-relay/app";
const TOKEN_SECRET_ID: &str = "keap-relay/token";
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(15);
/// template.yaml's event source mapping.
const BATCH_SIZE: i32 = 5;

struct Queue {
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
}

impl Queue {
    async fn create(endpoint: &str) -> Queue {
        let sqs = sqs_client(endpoint);
        let url = sqs
            .create_queue()
            .queue_name("keap-relay-SignupQueue")
            .attributes(QueueAttributeName::VisibilityTimeout, "30")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        Queue { sqs, url, arn }
    }
}

/// Lambda's event source mapping: one batch through `signup-retry`.
async fn poll_once(queue: &Queue, retry: &FunctionPool) -> usize {
    let source = SqsSource {
        sqs: &queue.sqs,
        url: &queue.url,
        arn: &queue.arn,
        batch_size: BATCH_SIZE,
    };
    poll_sqs_once(&source, retry).await.0
}

/// What the sender saw.
#[derive(Default)]
struct Answers {
    ok: AtomicU64,
    queued: AtomicU64,
    with_retry_after: AtomicU64,
    bad_5xx: AtomicU64,
    other: AtomicU64,
}

/// One signup as a product's backend sends it: retried after a 5xx (honouring
/// `Retry-After`), done at the first 2xx.
async fn send_one(pool: &FunctionPool, events: &SignupEvents, email: &str, answers: &Answers) {
    for _ in 0..20 {
        let outcome = pool.invoke(events.event(email).expect("a signed event")).await;
        let Outcome::Response(answer) = outcome else {
            answers.bad_5xx.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let status = answer["statusCode"].as_u64().unwrap_or(0);
        match status {
            200 | 201 => {
                answers.ok.fetch_add(1, Ordering::Relaxed);
                return;
            }
            202 => {
                answers.queued.fetch_add(1, Ordering::Relaxed);
                return;
            }
            500..=599 => {
                let retry_after = answer["headers"]
                    .as_object()
                    .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case("retry-after")))
                    .and_then(|(_, v)| v.as_str()?.parse::<u64>().ok());
                match retry_after {
                    Some(secs) => {
                        answers.with_retry_after.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(secs.min(30))).await;
                    }
                    None => {
                        answers.bad_5xx.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            _ => {
                eprintln!("launch_spike: {email}: {status}: {}", answer["body"]);
                answers.other.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark of several minutes: bench/launch-spike.sh"]
async fn launch_spike() {
    let signups = env_number("SPIKE_SIGNUPS", 5000) as usize;
    let window = Duration::from_secs(env_number("SPIKE_SECONDS", 60).max(1));
    let signup_processes = env_number("SPIKE_SIGNUP_PROCESSES", 16).max(1) as usize;
    let retry_processes = env_number("SPIKE_RETRY_PROCESSES", 2).max(1) as usize;
    let headroom = env_number("SPIKE_LIVE_HEADROOM_PERCENT", 5).min(90);
    let scale = env_number("SPIKE_TIME_SCALE", 1).max(1) as u32;

    let bin_dir = relay_tests::lambda_pool::build_function_binaries(&["signup", "signup-retry"]);
    let scratch = TempDir::new("launch-spike");
    let log_dir = scratch.path().join("logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::create_dir_all(scratch.path().join("home")).unwrap();

    let limit = RateLimit {
        time_scale: scale,
        ..RateLimit::KEAP_OAUTH_CLIENT
    };
    let sandbox = Arc::new(
        Sandbox::start(SandboxConfig {
            rate_limit: Some(limit),
            ..SandboxConfig::default()
        })
        .await
        .unwrap(),
    );
    let moto = MotoServer::start().await;
    let store: Arc<dyn SecretStore> = Arc::new(SecretsManagerStore::new(sm_client(&moto.endpoint)));
    seed::put_app_secret(store.as_ref(), APP_SECRET_ID).await.unwrap();
    seed::connect(store.clone(), TOKEN_SECRET_ID, &sandbox, None)
        .await
        .unwrap();
    let queue = Arc::new(Queue::create(&moto.endpoint).await);
    sandbox.reset_stats();

    let per_minute = (limit.per_minute * scale).to_string();
    let headroom = headroom.to_string();
    let env_of = |function: &str, extra: &[(&str, &str)]| {
        let ids = (APP_SECRET_ID, TOKEN_SECRET_ID);
        let home = scratch.path().join("home");
        let deployment = DeploymentEnv::on_moto(function, &sandbox.base_url(), &moto.endpoint, &home, ids, &queue.url);
        let common = [
            ("SIGNUP_QUEUE_URL", queue.url.as_str()),
            ("KEAP_QUOTA_PER_MINUTE", per_minute.as_str()),
            ("KEAP_LIVE_HEADROOM_PERCENT", headroom.as_str()),
            ("RUST_LOG", "warn"),
        ];
        deployment.vars_with(common.iter().chain(extra))
    };
    let pool = |function: &'static str, size: usize, extra: &[(&str, &str)]| {
        let (binary, env, log_dir) = (bin_dir.join(function), env_of(function, extra), log_dir.clone());
        async move { FunctionPool::start(function, &binary, env, size, FUNCTION_TIMEOUT, &log_dir).await }
    };
    let processes = (signup_processes + retry_processes).to_string();
    // A live signup waits a moment for its turn, else it is queued (202) at once.
    let signup_pool = Arc::new(
        pool(
            "signup",
            signup_processes,
            &[
                ("KEAP_PACING_MAX_WAIT_MS", "200"),
                ("KEAP_PACING_PROCESSES", &processes),
            ],
        )
        .await
        .unwrap(),
    );
    let retry_pool = Arc::new(pool("signup-retry", retry_processes, &[]).await.unwrap());

    let events = Arc::new(SignupEvents::new(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))).unwrap());
    let answers = Arc::new(Answers::default());
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pollers: Vec<_> = (0..retry_processes)
        .map(|_| {
            let (running, queue, retry_pool) = (running.clone(), queue.clone(), retry_pool.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    poll_once(&queue, &retry_pool).await;
                }
            })
        })
        .collect();

    let emails: Vec<String> = (0..signups).map(|n| events.email("spike", n)).collect();
    let started = Instant::now();
    let mut senders = Vec::new();
    for (n, email) in emails.iter().enumerate() {
        let at = started + window.mul_f64(n as f64 / signups as f64);
        tokio::time::sleep_until(at.into()).await;
        let (pool, events, answers, email) = (signup_pool.clone(), events.clone(), answers.clone(), email.clone());
        senders.push(tokio::spawn(
            async move { send_one(&pool, &events, &email, &answers).await },
        ));
    }
    let arrivals_done = started.elapsed();
    for sender in senders {
        sender.await.unwrap();
    }
    let answered = started.elapsed();

    // Until every signup is in Keap: its contact, welcome tag and extra tag.
    let give_up = Instant::now() + Duration::from_secs(1800);
    let mut last_print = Instant::now();
    let all_in = loop {
        let stats = sandbox.stats();
        if stats.contacts_created >= signups as u64 && stats.tags_applied >= 2 * signups as u64 {
            break Some(started.elapsed());
        }
        if Instant::now() > give_up {
            break None;
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            last_print = Instant::now();
            eprintln!(
                "launch_spike: {:.0} s: {} contacts, {} tags applied, {} answered 429",
                started.elapsed().as_secs_f64(),
                stats.contacts_created,
                stats.tags_applied,
                stats.throttled
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    running.store(false, Ordering::Relaxed);
    for poller in pollers {
        let _ = poller.await;
    }

    // Processes that look a tag up at the same moment may each create it: any tag so named.
    let welcome = tag_ids_named(&sandbox, WELCOME_TAG).await;
    let extra = tag_ids_named(&sandbox, EXTRA_TAG).await;
    let lost: Vec<&String> = emails
        .iter()
        .filter(|email| {
            sandbox.contact_by_email(email).is_none_or(|c| {
                !c.tag_ids.iter().any(|t| welcome.contains(t)) || !c.tag_ids.iter().any(|t| extra.contains(t))
            })
        })
        .collect();
    let stats = sandbox.stats();
    let rest: Vec<_> = stats.calls.iter().filter(|c| c.path.starts_with("/crm/rest")).collect();
    let throttled = rest.iter().filter(|c| c.status == 429).count();
    let needed = rest.len() - throttled;
    let sustained = f64::from(limit.per_second).min(f64::from(limit.per_minute * scale) / 60.0);
    let minimum = needed as f64 / sustained;
    let report = json!({
        "signups": signups,
        "arrival_window_s": window.as_secs_f64(),
        "arrivals_done_s": arrivals_done.as_secs_f64(),
        "sender_answered_s": answered.as_secs_f64(),
        "all_in_keap_s": all_in.map(|d| d.as_secs_f64()),
        "keap_calls_needed": needed,
        "quota_minimum_s": minimum,
        "of_minimum_percent": all_in.map(|d| d.as_secs_f64() / minimum * 100.0),
        "keap_calls": rest.len(),
        "keap_429": throttled,
        "keap_429_percent": throttled as f64 / rest.len().max(1) as f64 * 100.0,
        "lost": lost.len(),
        "sender": {
            "200": answers.ok.load(Ordering::Relaxed),
            "202": answers.queued.load(Ordering::Relaxed),
            "5xx_with_retry_after": answers.with_retry_after.load(Ordering::Relaxed),
            "5xx_without_retry_after": answers.bad_5xx.load(Ordering::Relaxed),
            "other": answers.other.load(Ordering::Relaxed),
        },
        "setup": {
            "signup_processes": signup_processes,
            "retry_processes": retry_processes,
            "live_headroom_percent": headroom,
            "sandbox_limit": {"per_second": limit.per_second, "per_minute": limit.per_minute, "time_scale": scale},
        },
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("{text}");
    let out = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/launch-spike"));
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("report.json"), &text).unwrap();
    signup_pool.shutdown().await;
    retry_pool.shutdown().await;
    assert!(lost.is_empty(), "{} signups lost", lost.len());
}
