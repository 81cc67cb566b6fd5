//! Load and fault run: a stream of signed signups through several copies of the signup
//! function (each its own `App`, token cache and single flight, as separate Lambda processes
//! are) over one shared token store, the retry worker (`signup-retry`'s handler over an
//! SQS-like queue with a receive count and a dead-letter queue) and the scheduled refresh
//! running concurrently, while faults are injected at random points:
//! Keap 5xx, 429 bursts with and without `Retry-After`, slow Keap, every access token expiring
//! mid-stream, Secrets Manager throttling and lost answers (before and after the write took
//! effect), and requests killed mid-flight (the task dropped, as a Lambda timeout or crash
//! does; the sender retries what got no answer).
//!
//! Then it reconciles: every 2xx signup is a contact with the welcome tag and at most one
//! welcome email; every 202 is delivered after the queue drains or sits in the DLQ; no 5xx
//! without `Retry-After`; the store holds a working pair; Keap's refreshes equal the
//! generations stored (no issued pair lost, no refresh token spent twice). Everything the run
//! logged at TRACE holds no token, client secret, API key, signing key or admin password.
//! Every event the run emitted (issue 15) is then delivered by the `events` function to a
//! receiver that fails a third of its calls: events delivered = events emitted.
//!
//! Size: `LOAD_SIGNUPS` (default 200), `LOAD_RATE` (arrivals per second, default 20),
//! `LOAD_FAULT_MS` (mean time between fault switches, default 1500),
//! `LOAD_COPIES` (signup copies, default 4), `LOAD_CONCURRENCY` (default 8), `LOAD_SEED`,
//! `LOAD_LOG_LEVEL` (default trace).
//! `cargo test -p relay-tests --test load_signups -- --nocapture` prints the figures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use keap_relay::app::App;
use keap_relay::events::{Event, EventSink, MemorySink};
use keap_relay::signup::signature;
use keap_relay::signup::{QueueError, QueuedSignup, QueuedWelcome, SignupQueue};
use keap_relay::store::memory::{FaultPoint, MemoryStore};
use keap_relay::store::{SecretStore, StoreOp};
use keap_relay::token::{Credential, RotationPolicy};
use keap_relay::{ExposeSecret, SecretString};
use keap_sandbox::{Sandbox, SandboxConfig};
use relay_tests::load::{KEAP_FAULTS, Rng, answers, env_number, error_kind, inject_keap_fault, tag_ids_named};
use relay_tests::relay_server::{self, ADMIN_PASSWORD, APP_SECRET_ID, SIGNING_KEY, TOKEN_SECRET_ID, WELCOME_TAG};
use test_support::logs::LogCapture;

/// The signup function's timeout (template parameter ApiFunctionTimeoutSeconds, default 15).
const LAMBDA_TIMEOUT: Duration = Duration::from_secs(15);
/// The queue's visibility timeout, compressed: the template's is minutes, so the 5 receives
/// of a message span several fault windows here as they span a Keap outage there.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(4);
/// SQS's `maxReceiveCount` in the template's redrive policy.
const MAX_RECEIVES: u32 = 5;

/// The retry queue as SQS behaves for it: messages with ids and receive counts, redelivered
/// until acknowledged, moved to the dead-letter queue after `MAX_RECEIVES` receives.
#[derive(Default)]
struct SqsLike {
    inner: Mutex<QueueState>,
    /// The event queue every function of the run publishes into (issue 15).
    events: Arc<MemorySink>,
}

#[derive(Default)]
struct QueueState {
    next_id: u64,
    /// (message id, body, receives so far, visible again at).
    waiting: Vec<(String, String, u32, std::time::Instant)>,
    dead: Vec<(String, String)>,
}

impl SqsLike {
    fn push(&self, body: String, delay: Duration) {
        let mut state = self.inner.lock().unwrap();
        state.next_id += 1;
        let id = format!("m-{}", state.next_id);
        state.waiting.push((id, body, 0, std::time::Instant::now() + delay));
    }
}

#[async_trait]
impl SignupQueue for SqsLike {
    async fn enqueue(&self, signup: &QueuedSignup, delay: Duration) -> Result<(), QueueError> {
        self.push(signup.to_message(), delay);
        Ok(())
    }

    async fn enqueue_welcome(&self, welcome: &QueuedWelcome, delay: Duration) -> Result<(), QueueError> {
        self.push(welcome.to_message(), delay);
        Ok(())
    }
}

impl SqsLike {
    /// One poll of up to 10 messages through `signup-retry`'s handler; returns how many were
    /// acknowledged.
    async fn poll(&self, service: &keap_relay::signup::SignupService) -> usize {
        let batch: Vec<(String, String, u32)> = {
            let mut state = self.inner.lock().unwrap();
            let now = std::time::Instant::now();
            let mut batch = Vec::new();
            let mut index = 0;
            while index < state.waiting.len() && batch.len() < 10 {
                if state.waiting[index].3 <= now {
                    let (id, body, count, _) = state.waiting.remove(index);
                    batch.push((id, body, count + 1));
                } else {
                    index += 1;
                }
            }
            batch
        };
        if batch.is_empty() {
            return 0;
        }
        let records: Vec<serde_json::Value> = batch
            .iter()
            .map(|(id, body, count)| {
                serde_json::json!({
                    "messageId": id, "body": body, "eventSource": "aws:sqs",
                    "attributes": {"ApproximateReceiveCount": count.to_string()},
                })
            })
            .collect();
        let event = serde_json::from_value(serde_json::json!({ "Records": records })).unwrap();
        let events: &dyn EventSink = self.events.as_ref();
        let failed: Vec<String> =
            // The queue is its own parking queue, as SQS is in the template.
            match signup_retry::handler::handle_with_events(event, service, Some(self), Some(events)).await {
                Ok(response) => response
                    .batch_item_failures
                    .into_iter()
                    .map(|f| f.item_identifier)
                    .collect(),
                Err(_) => batch.iter().map(|(id, _, _)| id.clone()).collect(),
            };
        let mut state = self.inner.lock().unwrap();
        let mut acknowledged = 0;
        for (id, body, count) in batch {
            if !failed.contains(&id) {
                acknowledged += 1;
            } else if count >= MAX_RECEIVES {
                state.dead.push((id, body));
            } else {
                // Invisible for the visibility timeout, then received again.
                state
                    .waiting
                    .push((id, body, count, std::time::Instant::now() + VISIBILITY_TIMEOUT));
            }
        }
        acknowledged
    }

    fn waiting(&self) -> usize {
        self.inner.lock().unwrap().waiting.len()
    }

    fn dead_emails(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .dead
            .iter()
            .map(|(_, body)| QueuedSignup::from_message(body).unwrap().signup.email)
            .collect()
    }

    fn dead_ids(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .dead
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// What happened to one signup, from the sender's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Delivered,
    Queued,
    GaveUp,
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    killed: AtomicU64,
    timed_out: AtomicU64,
    retried_503: AtomicU64,
    bad_5xx: AtomicU64,
    unexpected_4xx: AtomicU64,
}

async fn send_one(copies: &[Arc<signup::AppDeps>], index: u64, rng_seed: u64, counters: &Counters) -> Fate {
    let mut rng = Rng(rng_seed | 1);
    let body = serde_json::json!({
        "email": format!("load-{index}@example.com"),
        "given_name": format!("Load {index}"),
        "opt_in": index.is_multiple_of(3),
        "tags": if index.is_multiple_of(5) { serde_json::json!(["Load test"]) } else { serde_json::json!([]) },
    })
    .to_string();
    for _attempt in 0..8 {
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let header = signature::sign(
            &SecretString::from(SIGNING_KEY),
            signature::unix_seconds(SystemTime::now()),
            body.as_bytes(),
        );
        let mut event = relay_server::signup_request(body.as_bytes(), &header);
        // The invocation's deadline, as the Lambda runtime hands it to the handler.
        let mut context = lambda_http::Context::default();
        context.deadline = (SystemTime::now() + LAMBDA_TIMEOUT)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        event.extensions_mut().insert(context);
        let deps = copies[rng.below(copies.len() as u64) as usize].clone();
        let kill = rng.below(100) == 0;
        let call = tokio::spawn(async move { signup::handler::handle(&event, deps.as_ref()).await });
        let response = if kill {
            // The function dies mid-request: no answer reaches the sender.
            tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
            call.abort();
            counters.killed.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            // Lambda's own deadline (the template's ApiFunctionTimeoutSeconds, 15 s by default):
            // past it the invocation is cut off and API Gateway answers 503 without Retry-After.
            match tokio::time::timeout(LAMBDA_TIMEOUT, call).await {
                Ok(answer) => Some(answer.expect("the handler never panics")),
                Err(_) => {
                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    eprintln!("load: signup {index} timed out");
                    None
                }
            }
        };
        let Some(response) = response else {
            continue; // no answer (API Gateway's 502/504): the sender retries
        };
        match response.status().as_u16() {
            200 | 201 => {
                if std::env::var("LOAD_DEBUG").is_ok() {
                    eprintln!("DELIVERED {index} {:?}", response.body());
                }
                return Fate::Delivered;
            }
            202 => return Fate::Queued,
            503 => {
                let retry_after = response.headers().get("retry-after");
                if retry_after.is_none() {
                    counters.bad_5xx.fetch_add(1, Ordering::Relaxed);
                }
                counters.retried_503.fetch_add(1, Ordering::Relaxed);
                // Honour Retry-After, compressed (the run's clock is minutes, not hours).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            status if status >= 500 => {
                counters.bad_5xx.fetch_add(1, Ordering::Relaxed);
            }
            status => {
                counters.unexpected_4xx.fetch_add(1, Ordering::Relaxed);
                panic!("a valid signup got {status}: {:?}", response.body());
            }
        }
    }
    Fate::GaveUp
}

/// Injects one random fault (or clears them), and says which.
fn inject(rng: &mut Rng, sandbox: &Sandbox, store: &MemoryStore) -> &'static str {
    match rng.below(KEAP_FAULTS + 5) {
        which @ 0..KEAP_FAULTS => inject_keap_fault(sandbox, which),
        5 => {
            store.fail_next(StoreOp::ReadCurrent, 3, FaultPoint::BeforeApply);
            "store reads throttled x3"
        }
        6 => {
            store.fail_next(StoreOp::Put, 2, FaultPoint::AfterApply);
            store.fail_next(StoreOp::Swap, 1, FaultPoint::AfterApply);
            "store writes applied but answers lost"
        }
        7 => {
            store.fail_next(StoreOp::Swap, 2, FaultPoint::BeforeApply);
            "store swaps throttled x2"
        }
        _ => {
            sandbox.faults().clear();
            "faults cleared"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_under_load_and_faults_are_all_delivered_or_dead_lettered_and_no_token_is_lost() {
    // Everything the process logs, for the audit at the end.
    let captured = LogCapture::default();
    let level = std::env::var("LOAD_LOG_LEVEL").unwrap_or_else(|_| "trace".into());
    // The production format (keap_relay::app::init_tracing), into a buffer; the sandbox is
    // Keap, not the relay, so its own lines are left out.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!("{level},keap_sandbox=off")))
        .with_target(false)
        .with_current_span(false)
        .with_ansi(false)
        .with_writer(captured.clone())
        .init();

    let signups = env_number("LOAD_SIGNUPS", 200);
    let copies_count = env_number("LOAD_COPIES", 4) as usize;
    let seed = env_number("LOAD_SEED", 20_260_601);
    let concurrency = env_number("LOAD_CONCURRENCY", 8) as usize;
    // Arrivals per second: the stream lasts long enough for dozens of fault windows.
    let rate = env_number("LOAD_RATE", 20).max(1);
    // Mean time between two fault switches.
    let fault_every = env_number("LOAD_FAULT_MS", 1500).max(10);

    let sandbox = Arc::new(Sandbox::start(SandboxConfig::default()).await.unwrap());
    let store = Arc::new(MemoryStore::new());
    store
        .put_version(
            APP_SECRET_ID,
            "app-v1",
            &SecretString::from(relay_server::RelayServer::app_secret_json()),
        )
        .await
        .unwrap();
    let queue = Arc::new(SqsLike::default());
    let mut config = relay_server::config(
        &sandbox,
        "http://127.0.0.1:9/oauth/callback",
        Duration::from_millis(800),
    );
    config.lease_duration = Duration::from_secs(20);
    config.http_timeout = Duration::from_secs(3);
    // Welcomes written ahead for new contacts are checked after this (900 s by default), so
    // the queue can drain within the run.
    config.signup_options.welcome_recheck_after = Duration::from_secs(3);
    // This sandbox enforces no quota and sends no quota headers, so pacing would hold each
    // process to a guessed share of a quota that is not there (every signup queued); this
    // test is about faults and tokens. Pacing under Keap's quota: quota_pacing.rs and
    // launch_spike.rs.
    config.pacing.enabled = false;
    let shared_store: Arc<dyn SecretStore> = store.clone();
    let events_sink: Arc<dyn EventSink> = queue.events.clone();
    let app = |with_queue: bool| {
        let queue: Option<Arc<dyn SignupQueue>> = with_queue.then(|| queue.clone() as Arc<dyn SignupQueue>);
        App::with_parts(config.clone(), shared_store.clone(), queue)
            .unwrap()
            .with_events(Some(events_sink.clone()))
    };

    // The administrator connects (through the oauth function's connection), as /oauth/callback would.
    let oauth_app = app(false);
    oauth_app
        .connection
        .connect(test_support::grant::minted(&sandbox), false)
        .await
        .unwrap();
    let first_generation = oauth_app.connection.status().await.unwrap().generation.unwrap();
    sandbox.reset_stats();

    let copies: Arc<Vec<Arc<signup::AppDeps>>> = Arc::new(
        (0..copies_count)
            .map(|_| Arc::new(signup::AppDeps::from_app(&app(true))))
            .collect(),
    );
    let retry_app = app(false);
    let retry_service = Arc::new(retry_app.signup_service());
    let refresh_app = app(false);
    let counters = Arc::new(Counters::default());
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));

    // The scheduled refresh, concurrently and often, forcing a rotation each time.
    // A refresh token older than zero is always due (the lead is capped at half the pair's life).
    let forced = RotationPolicy {
        lead: Duration::from_secs(100 * 86_400),
        max_refresh_age: Duration::ZERO,
    };
    let scheduled = {
        let running = running.clone();
        tokio::spawn(async move {
            let mut runs: BTreeMap<String, u64> = BTreeMap::new();
            while running.load(Ordering::Relaxed) {
                let outcome = match refresh_app.connection.rotate_if_due(forced).await {
                    Ok(report) => format!("{:?}", report.action),
                    Err(error) => format!("error: {}", error_kind(&error.to_string())),
                };
                *runs.entry(outcome).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            runs
        })
    };
    // The retry worker polls all along (SQS invokes signup-retry as messages arrive).
    let worker = {
        let running = running.clone();
        let queue = queue.clone();
        let service = retry_service.clone();
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                if queue.poll(&service).await == 0 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
        })
    };
    // Faults at random points of the stream.
    let fault_log = Arc::new(Mutex::new(BTreeMap::<&'static str, u64>::new()));
    let injector = {
        let running = running.clone();
        let fault_log = fault_log.clone();
        let store = store.clone();
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            let mut rng = Rng(seed ^ 0x5eed);
            while running.load(Ordering::Relaxed) {
                let what = inject(&mut rng, &sandbox, &store);
                *fault_log.lock().unwrap().entry(what).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(fault_every / 2 + rng.below(fault_every))).await;
            }
        })
    };

    // The stream.
    let started = std::time::Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut senders = Vec::new();
    let mut arrivals = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for index in 0..signups {
        arrivals.tick().await;
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let copies = copies.clone();
        let counters = counters.clone();
        senders.push(tokio::spawn(async move {
            let fate = send_one(&copies, index, seed.wrapping_mul(index + 1), &counters).await;
            drop(permit);
            (index, fate)
        }));
    }
    // Each signup is bounded (8 attempts of at most a few seconds): a hang is a failure.
    let fates = answers("load", senders, Duration::from_secs(120), 100).await;
    let stream_time = started.elapsed();

    // Faults off; the queue drains; background tasks stop.
    running.store(false, Ordering::Relaxed);
    let bounded = Duration::from_secs(60);
    tokio::time::timeout(bounded, injector)
        .await
        .expect("the fault injector stops")
        .unwrap();
    sandbox.faults().clear();
    tokio::time::timeout(bounded, worker)
        .await
        .expect("the retry worker stops")
        .unwrap();
    let scheduled_runs = tokio::time::timeout(bounded, scheduled)
        .await
        .expect("the scheduled refresh stops")
        .unwrap();
    eprintln!("load: stream done, draining {} queued", queue.waiting());
    let drain_deadline = std::time::Instant::now() + Duration::from_secs(120);
    while queue.waiting() > 0 && std::time::Instant::now() < drain_deadline {
        let acknowledged = tokio::time::timeout(Duration::from_secs(30), queue.poll(&retry_service))
            .await
            .unwrap_or_else(|_| panic!("a signup-retry batch hung ({} waiting)", queue.waiting()));
        if acknowledged == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(queue.waiting(), 0, "the queue drains once Keap is healthy");

    // Reconcile.
    let dead = queue.dead_emails();
    let welcome_tags = tag_ids_named(&sandbox, WELCOME_TAG).await;
    let (mut delivered, mut queued, mut queued_then_delivered, mut gave_up, mut lost) = (0, 0, 0, 0, 0);
    for index in 0..signups {
        let email = format!("load-{index}@example.com");
        let contact = sandbox.contact_by_email(&email);
        if let Some(contact) = &contact {
            assert!(
                contact.emails_received <= 1,
                "{email} got {} welcome emails",
                contact.emails_received
            );
        }
        let in_keap = contact
            .as_ref()
            .is_some_and(|c| c.tag_ids.iter().any(|id| welcome_tags.contains(id)));
        match fates[&index] {
            Fate::Delivered => {
                delivered += 1;
                assert!(in_keap, "{email} was answered 2xx but is not a tagged contact");
            }
            Fate::Queued => {
                queued += 1;
                if in_keap {
                    queued_then_delivered += 1;
                } else if !dead.contains(&email) {
                    lost += 1;
                }
            }
            Fate::GaveUp => gave_up += 1,
        }
    }

    // The token store holds a working pair, and Keap issued exactly the pairs that were stored.
    let status = oauth_app.connection.status().await.unwrap();
    assert!(status.connected && !status.needs_reauth, "{status:?}");
    let final_generation = status.generation.unwrap();
    let stats = sandbox.stats();
    let fresh = app(false);
    let credential = fresh
        .connection
        .credential()
        .await
        .expect("a credential from the stored pair");
    assert!(matches!(credential, Credential::AccessToken { .. }));
    let probe = fresh
        .api
        .find_tag_by_name(&credential, WELCOME_TAG)
        .await
        .expect("the stored access token works");
    assert!(probe.is_some_and(|id| welcome_tags.contains(&id)));
    let rotated = fresh
        .connection
        .rotate_if_due(forced)
        .await
        .expect("the stored refresh token works");
    assert_eq!(rotated.status.generation, Some(final_generation + 1));
    let refreshes_before_probe = stats.refreshes_served;
    let versions = store.versions(TOKEN_SECRET_ID).len();

    // The audit: nothing secret in anything logged.
    let mut secrets: Vec<String> = vec![
        keap_sandbox::DEFAULT_CLIENT_SECRET.into(),
        keap_sandbox::DEFAULT_API_KEY.into(),
        SIGNING_KEY.into(),
        ADMIN_PASSWORD.into(),
    ];
    for version in store.versions(TOKEN_SECRET_ID) {
        let value = store.read_version(TOKEN_SECRET_ID, &version).await.unwrap().unwrap();
        let json: serde_json::Value = serde_json::from_str(value.value.expose_secret()).unwrap();
        for field in ["access_token", "refresh_token"] {
            if let Some(token) = json[field].as_str() {
                secrets.push(token.to_owned());
            }
        }
    }
    secrets.sort();
    secrets.dedup();
    // The events the run emitted, delivered by the events function to a receiver that fails
    // often (500, 503 with Retry-After, 429, 410-free): every one arrives.
    let emitted = queue.events.take();
    let events = deliver_events(&emitted, seed).await;

    let logged = captured.text();
    let log_lines = logged.lines().count();
    // Each dead letter's reason, as an operator finds it: the last line signup-retry logged
    // with its message id.
    let mut dead_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for id in queue.dead_ids() {
        let needle = format!("\"message_id\":\"{id}\"");
        let reason = logged
            .lines()
            .filter(|line| line.contains(&needle))
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|line| line["fields"]["reason"].as_str().map(error_kind))
            .next_back()
            // A record skipped because Keap already failed earlier in its batch is logged
            // without a reason of its own (the earlier record's reason is the cause).
            .unwrap_or_else(|| "no reason logged (skipped in every batch)".to_owned());
        *dead_reasons.entry(reason).or_default() += 1;
    }
    if let Ok(path) = std::env::var("LOAD_LOG_FILE") {
        std::fs::write(path, &logged).unwrap();
    }
    for secret in &secrets {
        assert!(
            !logged.contains(secret.as_str()),
            "a secret ({} chars) appears in the logs",
            secret.len()
        );
    }

    let report = serde_json::json!({
        "signups_sent": signups,
        "attempts": counters.attempts.load(Ordering::Relaxed),
        "delivered_at_once": delivered,
        "queued_202": queued,
        "queued_then_delivered": queued_then_delivered,
        "dead_lettered": dead.len(),
        "dead_letter_reasons": dead_reasons,
        "gave_up_after_8_attempts": gave_up,
        "lost": lost,
        "killed_mid_request": counters.killed.load(Ordering::Relaxed),
        "invocations_timed_out": counters.timed_out.load(Ordering::Relaxed),
        "answered_503_with_retry_after": counters.retried_503.load(Ordering::Relaxed),
        "5xx_without_retry_after": counters.bad_5xx.load(Ordering::Relaxed),
        "keap_refreshes_served": refreshes_before_probe,
        "keap_refresh_failures": stats.refresh_failures,
        "generations_stored": final_generation - first_generation,
        "token_versions_written": versions,
        "scheduled_refresh_runs": scheduled_runs,
        "faults_injected": *fault_log.lock().unwrap(),
        "keap_5xx_injected": stats.server_errors,
        "keap_429": stats.throttled,
        "keap_401": stats.unauthorized,
        "welcome_emails": stats.emails_queued,
        "welcome_tags_in_keap": welcome_tags.len(),
        "contacts_created": stats.contacts_created,
        "log_lines_audited": log_lines,
        "secrets_checked": secrets.len(),
        "stream_seconds": stream_time.as_secs_f64(),
        "events_emitted": emitted.len(),
        "events_delivered": events.delivered,
        "events_dead_lettered": events.dead_lettered,
        "event_receiver_calls": events.calls,
        "event_receiver_faults": events.faults,
        "events_by_type": events.by_type,
    });
    println!("LOAD REPORT {}", serde_json::to_string_pretty(&report).unwrap());

    assert_eq!(lost, 0, "every 202 is delivered or dead-lettered");
    assert_eq!(events.delivered, emitted.len(), "events delivered = events emitted");
    assert_eq!(events.bad_signatures, 0, "every event is signed");
    assert!(events.faults > 0, "the receiver failed some deliveries");
    assert_eq!(
        counters.bad_5xx.load(Ordering::Relaxed),
        0,
        "no 5xx without Retry-After"
    );
    assert_eq!(
        stats.refresh_failure("invalid_grant_used"),
        0,
        "a refresh token was spent twice"
    );
    assert_eq!(
        refreshes_before_probe,
        final_generation - first_generation,
        "every pair Keap issued was stored (and nothing else rotated)"
    );
    assert_eq!(
        counters.timed_out.load(Ordering::Relaxed),
        0,
        "no invocation ran into Lambda's timeout"
    );
}

/// What delivering the run's events showed.
struct EventFigures {
    /// Distinct event ids the receiver took with a valid signature.
    delivered: usize,
    dead_lettered: usize,
    calls: u64,
    faults: u64,
    bad_signatures: u64,
    by_type: BTreeMap<String, u64>,
}

/// The receiver of the events: checks each signature; fails about one call in three (500, 503
/// with `Retry-After`, 429), chosen by `seed`.
#[derive(Default)]
struct FlakyReceiver {
    rng: Mutex<Option<Rng>>,
    taken: Mutex<BTreeMap<String, String>>,
    calls: AtomicU64,
    faults: AtomicU64,
    bad_signatures: AtomicU64,
}

const EVENTS_KEY: &str = "load-run-events-signing-key";

async fn receive_event(
    axum::extract::State(receiver): axum::extract::State<Arc<FlakyReceiver>>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    receiver.calls.fetch_add(1, Ordering::Relaxed);
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    if signature::verify(&SecretString::from(EVENTS_KEY), header, &body, SystemTime::now()).is_err() {
        receiver.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return http::StatusCode::UNAUTHORIZED.into_response();
    }
    let roll = receiver
        .rng
        .lock()
        .unwrap()
        .as_mut()
        .map(|rng| rng.below(9))
        .unwrap_or(0);
    let fault = match roll {
        0 => Some(http::StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        1 => Some((http::StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "30")]).into_response()),
        2 => Some(http::StatusCode::TOO_MANY_REQUESTS.into_response()),
        _ => None,
    };
    if let Some(fault) = fault {
        receiver.faults.fetch_add(1, Ordering::Relaxed);
        return fault;
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = event["id"].as_str().unwrap_or_default().to_owned();
    let kind = event["type"].as_str().unwrap_or_default().to_owned();
    receiver.taken.lock().unwrap().insert(id, kind);
    http::StatusCode::NO_CONTENT.into_response()
}

struct EventsKey;

#[async_trait]
impl events::SigningKey for EventsKey {
    async fn events_signing_key(&self) -> Result<SecretString, String> {
        Ok(SecretString::from(EVENTS_KEY))
    }
}

/// The events function over an SQS-like event queue (the template's 8 receives; the backoffs
/// compressed to nothing) until every event is delivered or dead-lettered.
async fn deliver_events(emitted: &[Event], seed: u64) -> EventFigures {
    let receiver = Arc::new(FlakyReceiver::default());
    *receiver.rng.lock().unwrap() = Some(Rng((seed ^ 0xE7E7) | 1));
    let router = axum::Router::new()
        .route("/events", axum::routing::post(receive_event))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let deps = events::Deps {
        webhook: Some(keap_relay::events::webhook::Webhook::new(&url).unwrap()),
        key: Arc::new(EventsKey),
        state: None,
        retry: None,
    };
    const EVENT_RECEIVES: u32 = 8;
    let mut waiting: Vec<(&Event, u32)> = emitted.iter().map(|e| (e, 0)).collect();
    let mut dead_lettered = 0;
    while !waiting.is_empty() {
        let take = waiting.len().min(10);
        let batch: Vec<(&Event, u32)> = waiting.drain(..take).map(|(e, n)| (e, n + 1)).collect();
        let records: Vec<serde_json::Value> = batch
            .iter()
            .map(|(event, receives)| {
                serde_json::json!({
                    "messageId": event.id.to_string(), "receiptHandle": format!("{}-{receives}", event.id),
                    "body": event.to_json(), "eventSource": "aws:sqs",
                    "attributes": {"ApproximateReceiveCount": receives.to_string()},
                })
            })
            .collect();
        let sqs = serde_json::from_value(serde_json::json!({ "Records": records })).unwrap();
        let response = events::handle(sqs, &deps).await.unwrap();
        let failed: Vec<String> = response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        for (event, receives) in batch {
            if failed.contains(&event.id.to_string()) {
                if receives >= EVENT_RECEIVES {
                    dead_lettered += 1;
                } else {
                    waiting.push((event, receives));
                }
            }
        }
    }
    server.abort();
    let taken = receiver.taken.lock().unwrap().clone();
    let mut by_type = BTreeMap::new();
    for kind in taken.values() {
        *by_type.entry(kind.clone()).or_default() += 1;
    }
    let delivered = emitted.iter().filter(|e| taken.contains_key(&e.id.to_string())).count();
    EventFigures {
        delivered,
        dead_lettered,
        calls: receiver.calls.load(Ordering::Relaxed),
        faults: receiver.faults.load(Ordering::Relaxed),
        bad_signatures: receiver.bad_signatures.load(Ordering::Relaxed),
        by_type,
    }
}
