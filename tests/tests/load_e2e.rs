//! Load and faults end to end, with the real function binaries: `signup`, `signup-retry` and
//! `refresh` run as separate OS processes, several of each, under a Lambda Runtime API of
//! their own (`relay_tests::lambda_pool`), against the Keap sandbox, moto's Secrets Manager
//! (through a fault proxy) and moto's SQS (a queue with a dead-letter queue and a redrive
//! policy; this test polls it as Lambda's event source mapping does).
//!
//! A stream of signed signups goes through the signup processes while, at random points:
//! Keap answers 5xx, 429 bursts with and without `Retry-After`, Keap is slow, every access
//! token expires, Secrets Manager throttles reads and swaps or loses the answer to writes
//! that took effect, and a signup or signup-retry process is SIGKILLed mid-request. The
//! scheduled refresh runs all along and rotates the pair every time.
//!
//! Then it reconciles what the sender saw with what Keap, the queues and the store hold:
//! every 2xx is a tagged contact with at most one welcome email; every 202 is delivered after
//! the queue drains or sits in the dead-letter queue with its reason; no 5xx without
//! `Retry-After` other than the gateway's answer for a process this test killed (which the
//! sender retries); the store holds a working pair; Keap issued exactly as many pairs as the
//! store recorded (no issued pair lost, no refresh token spent twice). What the processes
//! logged (at TRACE for the relay's crates) holds no token or secret. Last, the one case
//! that may end in `needs_reauth`: a refresh answer lost on the way back.
//!
//! The welcome: `LOAD_E2E_WELCOME=email` (default: the direct email) or `goal` (an API goal
//! whose campaign sends an email when it starts). Half the injected 5xx answers to a send come
//! after the email went out, and Keap lists a sent email only after a delay: every contact in
//! Keap must have exactly one welcome, as the sandbox counts them (`missed_welcomes`,
//! `duplicate_welcomes` in the report).
//!
//! Size: `LOAD_E2E_SIGNUPS` (default 300), `LOAD_E2E_RATE` (arrivals per second, 25),
//! `LOAD_E2E_FAULT_MS` (mean time between fault switches, 700 ms), `LOAD_E2E_SIGNUP_PROCESSES`
//! (4), `LOAD_E2E_RETRY_PROCESSES` (2), `LOAD_E2E_SEED`, `LOAD_E2E_DRAIN_SECONDS` (240: how long the
//! queue may take to drain once the faults stop). The report is printed and written to
//! `target/load-e2e/report.json`:
//! `LOAD_E2E_SIGNUPS=5000 cargo test -p relay-tests --test load_e2e -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use keap_relay::ExposeSecret;
use keap_relay::signup::QueuedSignup;
use keap_relay::store::SecretStore;
use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_relay::token::{Connection, Credential, CredentialSource, RotationPolicy, TokenError, TokenSettings};
use keap_sandbox::{Sandbox, SandboxConfig};
use relay_bench::deployment::DeploymentEnv;
use relay_bench::events::{SIGNING_KEY, SignupEvents, WELCOME_TAG};
use relay_bench::seed;
use relay_tests::lambda_pool::{FunctionPool, Outcome, SqsSource, poll_sqs_once};
use relay_tests::load::{KEAP_FAULTS, Rng, answers, env_number, error_kind, inject_keap_fault, tag_ids_named};
use relay_tests::sm_fault_proxy::{Fault, FaultProxy, GET_SECRET_VALUE, PUT_SECRET_VALUE, UPDATE_SECRET_VERSION_STAGE};
use serde_json::{Value, json};
use test_support::moto::{MotoServer, create_replay_table, sm_client, sqs_client};
use test_support::temp::TempDir;

const APP_SECRET_ID: &str = "keap-relay/app";
const TOKEN_SECRET_ID: &str = "keap-relay/token";
/// The functions' timeout (template parameter ApiFunctionTimeoutSeconds, default 15).
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(15);
/// The queue's visibility timeout, compressed from the template's 360 s but, as there, longer
/// than a function may run: a message is never handled by two processes at once unless one
/// was killed. (Keap failing no longer spends receives: signup-retry backs off with message
/// timers.)
const VISIBILITY_TIMEOUT_SECS: u32 = 20;
/// `maxReceiveCount` of the template's redrive policy.
const MAX_RECEIVES: u32 = 5;
/// The scheduled refresh, compressed from the template's rate.
const REFRESH_EVERY: Duration = Duration::from_millis(1500);
/// A process is killed only this long after the last "access tokens expired" fault: only
/// then can a signup process be rotating, and a process killed between Keap's new pair and
/// the store write loses that pair, which Keap's single-use refresh tokens make unrecoverable
/// (the dropped-answer case, run on purpose at the end).
const NO_KILL_AFTER_EXPIRY: Duration = Duration::from_secs(5);
/// At most this many attempts per signup by the sender.
const ATTEMPTS: usize = 8;
/// Of the injected 5xx answers to an email send or goal achievement, the share sent after it
/// went out.
const SENT_DESPITE_5XX: f64 = 0.5;
/// How long after an email went out Keap's sandbox lists it.
const LISTING_DELAY: Duration = Duration::from_millis(300);
/// `KEAP_WELCOME_RECHECK_SECONDS`, compressed as the queue's times are, but longer than a
/// function may run plus the listing delay: a live signup may send until its timeout, and a
/// welcome record that found nothing listed after this long sends (docs/welcome-and-fields.md).
const WELCOME_RECHECK_SECS: &str = "20";

/// The relay's state table in moto's DynamoDB.
const STATE_TABLE: &str = "keap-relay-SignupReplayTable";

/// The welcome model: sends that may go out despite a 5xx, and a delayed sent-email listing
/// (set again after every "faults cleared").
fn welcome_model(sandbox: &Sandbox) {
    sandbox.faults().set_sent_despite_5xx_rate(SENT_DESPITE_5XX);
    sandbox.faults().set_sent_listing_delay(LISTING_DELAY);
}

/// The signup queue and its dead-letter queue, as template.yaml declares them (times
/// compressed).
struct Queues {
    sqs: aws_sdk_sqs::Client,
    main: String,
    main_arn: String,
    dead: String,
}

impl Queues {
    async fn create(endpoint: &str) -> Queues {
        let sqs = sqs_client(endpoint);
        let dead = sqs
            .create_queue()
            .queue_name("keap-relay-SignupDLQ")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let arn = |url: String| {
            let sqs = sqs.clone();
            async move {
                sqs.get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .unwrap()
                    .attributes
                    .unwrap()[&QueueAttributeName::QueueArn]
                    .clone()
            }
        };
        let redrive = json!({"deadLetterTargetArn": arn(dead.clone()).await, "maxReceiveCount": MAX_RECEIVES});
        let main = sqs
            .create_queue()
            .queue_name("keap-relay-SignupQueue")
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                VISIBILITY_TIMEOUT_SECS.to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let main_arn = arn(main.clone()).await;
        Queues {
            sqs,
            main,
            main_arn,
            dead,
        }
    }

    /// Messages still in the main queue: visible, in flight or delayed.
    async fn waiting(&self) -> u64 {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.main)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .map(|name| attributes.get(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum()
    }

    /// Every dead letter: (message id, body).
    async fn dead_letters(&self) -> Vec<(String, String)> {
        let mut letters = BTreeMap::new();
        for _ in 0..3 {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.dead)
                .max_number_of_messages(10)
                .visibility_timeout(600)
                .send()
                .await
                .unwrap();
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            for message in messages {
                letters.insert(message.message_id.unwrap_or_default(), message.body.unwrap_or_default());
            }
        }
        letters.into_iter().collect()
    }
}

/// Lambda's SQS event source mapping (batches of up to 10): one batch through `signup-retry`,
/// its outcome counted.
async fn poll_once(queues: &Queues, retry: &FunctionPool, outcomes: &Mutex<BTreeMap<String, u64>>) -> usize {
    let source = SqsSource {
        sqs: &queues.sqs,
        url: &queues.main,
        arn: &queues.main_arn,
        batch_size: 10,
    };
    let (acknowledged, outcome) = poll_sqs_once(&source, retry).await;
    if let Some(outcome) = outcome {
        *outcomes.lock().unwrap().entry(outcome_label(&outcome)).or_default() += 1;
    }
    acknowledged
}

fn outcome_label(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Response(answer) => match answer.get("statusCode").and_then(Value::as_u64) {
            Some(status) => format!("status {status}"),
            None => match answer.get("action").and_then(Value::as_str) {
                Some(action) => format!("{action} ({})", answer["status"].as_str().unwrap_or("?")),
                None => "answered".into(),
            },
        },
        Outcome::FunctionError(body) => {
            let kind: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            format!("function error {}", kind["errorType"].as_str().unwrap_or("(unparsed)"))
        }
        Outcome::Crashed { killed: true } => "killed by the test".into(),
        Outcome::Crashed { killed: false } => "process exited".into(),
        Outcome::TimedOut => "timed out".into(),
    }
}

/// EventBridge's scheduled event (the sample in `events/`).
fn scheduled_event() -> String {
    test_support::events::text("scheduled-refresh.json")
}

/// Everything the processes of `pools` wrote so far.
fn logs_of(pools: &[&FunctionPool]) -> String {
    pools
        .iter()
        .flat_map(|pool| pool.log_files())
        .map(|file| std::fs::read_to_string(file).unwrap_or_default())
        .collect()
}

/// What happened to one signup, from the sender's side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Delivered,
    Queued,
    GaveUp,
    Refused(u64),
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    gateway_5xx_after_kill: AtomicU64,
    replays_in_progress: AtomicU64,
    answered_503_with_retry_after: AtomicU64,
    bad_5xx: AtomicU64,
    relay_failures: AtomicU64,
}

/// One signup as a product's backend sends it: retried on a 5xx (honouring `Retry-After`,
/// compressed) or on the gateway's 502 when the function process died; done on 2xx or 4xx.
async fn send_one(pool: &FunctionPool, events: &SignupEvents, email: &str, counters: &Counters) -> Fate {
    for _ in 0..ATTEMPTS {
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let outcome = pool.invoke(events.event(email).expect("a signed event")).await;
        let answer = match outcome {
            Outcome::Response(answer) => answer,
            Outcome::Crashed { killed: true } => {
                // API Gateway's 502: the sender cannot tell whether it landed, so it retries.
                counters.gateway_5xx_after_kill.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            other => {
                eprintln!("load_e2e: {email}: {}", outcome_label(&other));
                counters.relay_failures.fetch_add(1, Ordering::Relaxed);
                counters.bad_5xx.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let status = answer["statusCode"].as_u64().unwrap_or(0);
        let has_retry_after = answer["headers"]
            .as_object()
            .is_some_and(|headers| headers.keys().any(|k| k.eq_ignore_ascii_case("retry-after")));
        match status {
            200 | 201 => return Fate::Delivered,
            202 => return Fate::Queued,
            // The same signed request (same second) again while a killed process's replay
            // claim still holds: asked again after its Retry-After, signed anew, as a client
            // would.
            409 if answer["body"]
                .as_str()
                .is_some_and(|b| b.contains("replay_in_progress")) =>
            {
                counters.replays_in_progress.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            500..=599 => {
                if has_retry_after {
                    counters.answered_503_with_retry_after.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("load_e2e: {email}: {status} without Retry-After: {}", answer["body"]);
                    counters.bad_5xx.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => {
                eprintln!("load_e2e: {email}: a valid signup got {status}: {}", answer["body"]);
                return Fate::Refused(status);
            }
        }
    }
    Fate::GaveUp
}

struct FaultSwitch {
    sandbox: Arc<Sandbox>,
    proxy: Arc<FaultProxy>,
    signup: Arc<FunctionPool>,
    retry: Arc<FunctionPool>,
    last_expiry: Option<Instant>,
}

impl FaultSwitch {
    /// Injects one random fault (or clears them), and says which.
    async fn inject(&mut self, rng: &mut Rng) -> &'static str {
        match rng.below(KEAP_FAULTS + 6) {
            which @ 0..KEAP_FAULTS => {
                if which == KEAP_FAULTS - 1 {
                    self.last_expiry = Some(Instant::now());
                }
                inject_keap_fault(&self.sandbox, which)
            }
            5 => {
                self.proxy.fail_after(GET_SECRET_VALUE, 0, &[Fault::Throttle; 3]);
                "secrets manager reads throttled x3"
            }
            6 => {
                self.proxy
                    .fail_after(PUT_SECRET_VALUE, 0, &[Fault::ServerErrorAfterApply]);
                self.proxy
                    .fail_after(UPDATE_SECRET_VERSION_STAGE, 0, &[Fault::ServerErrorAfterApply]);
                "secrets manager writes applied, answers lost"
            }
            7 => {
                self.proxy
                    .fail_after(UPDATE_SECRET_VERSION_STAGE, 0, &[Fault::Throttle, Fault::ServerError]);
                "secrets manager swaps throttled and failed"
            }
            kill @ (8 | 9) => {
                let pool = if kill == 8 { &self.signup } else { &self.retry };
                if self.last_expiry.is_some_and(|at| at.elapsed() < NO_KILL_AFTER_EXPIRY) {
                    "kill skipped (a rotation may be in flight)"
                } else if !kill_when_busy(pool, rng).await {
                    "kill skipped (no process busy)"
                } else if kill == 8 {
                    "signup process killed mid-request"
                } else {
                    "signup-retry process killed mid-batch"
                }
            }
            _ => {
                self.sandbox.faults().clear();
                welcome_model(&self.sandbox);
                self.proxy.clear();
                "faults cleared"
            }
        }
    }
}

/// Kills a process of `pool` in the middle of an invocation, waiting up to a second for one
/// to be busy.
async fn kill_when_busy(pool: &FunctionPool, rng: &mut Rng) -> bool {
    let give_up = Instant::now() + Duration::from_secs(1);
    while Instant::now() < give_up {
        if pool.kill_busy(rng.next_u64()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// Every token Keap issued and the store still holds, and the secrets the functions were given.
async fn secrets_to_audit(store: &SecretsManagerStore, sandbox: &Sandbox) -> Vec<String> {
    let mut secrets: Vec<String> = vec![
        keap_sandbox::DEFAULT_CLIENT_SECRET.into(),
        keap_sandbox::DEFAULT_API_KEY.into(),
        SIGNING_KEY.into(),
    ];
    secrets.extend(sandbox.issued_tokens());
    // Pages until one brings nothing new (moto may repeat a page with a next token).
    let mut version_ids = BTreeSet::new();
    let mut next_token = None;
    loop {
        let page = store
            .client()
            .list_secret_version_ids()
            .secret_id(TOKEN_SECRET_ID)
            .include_deprecated(true)
            .max_results(100)
            .set_next_token(next_token)
            .send()
            .await
            .unwrap();
        let before = version_ids.len();
        version_ids.extend(
            page.versions
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| v.version_id),
        );
        next_token = page.next_token;
        if next_token.is_none() || version_ids.len() == before {
            break;
        }
    }
    for version_id in version_ids {
        let value = store
            .client()
            .get_secret_value()
            .secret_id(TOKEN_SECRET_ID)
            .version_id(version_id)
            .send()
            .await
            .unwrap();
        let state: Value = serde_json::from_str(value.secret_string().unwrap_or("{}")).unwrap_or(Value::Null);
        for field in ["access_token", "refresh_token"] {
            if let Some(token) = state[field].as_str() {
                secrets.push(token.to_owned());
            }
        }
    }
    secrets.sort();
    secrets.dedup();
    secrets
}

/// The reason `signup-retry` last logged for message `id` (what an operator reads beside
/// the dead letter).
fn dead_letter_reason(logs: &str, id: &str) -> String {
    let needle = format!("\"message_id\":\"{id}\"");
    logs.lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| line["fields"]["reason"].as_str().map(error_kind))
        .next_back()
        .unwrap_or_else(|| "no reason logged (skipped in every batch)".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_function_processes_under_load_and_faults_lose_no_signup_and_no_token() {
    let signups = env_number("LOAD_E2E_SIGNUPS", 300) as usize;
    let rate = env_number("LOAD_E2E_RATE", 25).max(1);
    let fault_every = env_number("LOAD_E2E_FAULT_MS", 700).max(10);
    let signup_processes = env_number("LOAD_E2E_SIGNUP_PROCESSES", 4).max(1) as usize;
    let retry_processes = env_number("LOAD_E2E_RETRY_PROCESSES", 2).max(1) as usize;
    let seed = env_number("LOAD_E2E_SEED", 20_261_122);
    let goal_mode = match std::env::var("LOAD_E2E_WELCOME").as_deref() {
        Ok("goal") => true,
        Ok("email") | Err(_) => false,
        Ok(other) => panic!("LOAD_E2E_WELCOME={other}: expected email or goal"),
    };

    let bin_dir = relay_tests::lambda_pool::build_function_binaries(&["signup", "signup-retry", "refresh"]);
    let scratch = TempDir::new("load-e2e");
    let log_dir = scratch.path().join("logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::create_dir_all(scratch.path().join("home")).unwrap();

    let sandbox = Arc::new(Sandbox::start(SandboxConfig::default()).await.unwrap());
    let moto = MotoServer::start().await;
    let proxy = Arc::new(FaultProxy::start(&moto.endpoint).await);
    let direct = SecretsManagerStore::new(sm_client(&moto.endpoint));
    let store: Arc<dyn SecretStore> = Arc::new(direct.clone());
    seed::put_app_secret(store.as_ref(), APP_SECRET_ID).await.unwrap();
    seed::connect(store.clone(), TOKEN_SECRET_ID, &sandbox, None)
        .await
        .unwrap();
    let operator_settings = TokenSettings {
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(2),
        ..TokenSettings::default()
    };
    let operator = seed::token_source(store.clone(), TOKEN_SECRET_ID, &sandbox.token_url(), operator_settings).unwrap();
    let first_generation = operator.status().await.unwrap().generation.unwrap();
    let queues = Queues::create(&moto.endpoint).await;
    // template.yaml's SignupReplayTable: replay records, notices and the welcome send slots
    // every process shares.
    create_replay_table(&moto.endpoint, STATE_TABLE).await;
    if goal_mode {
        sandbox.add_campaign("relay", "signup", Some("Welcome (campaign)"));
    }
    welcome_model(&sandbox);
    sandbox.reset_stats();
    let welcome_vars: &[(&str, &str)] = if goal_mode {
        &[
            ("KEAP_WELCOME_GOAL", "relay:signup"),
            ("KEAP_WELCOME_EMAIL_SUBJECT", ""),
            ("KEAP_WELCOME_EMAIL_USER_ID", ""),
            ("KEAP_WELCOME_EMAIL_HTML", ""),
        ]
    } else {
        &[
            ("KEAP_WELCOME_EMAIL_SUBJECT", "Welcome aboard"),
            ("KEAP_WELCOME_EMAIL_USER_ID", "1"),
            ("KEAP_WELCOME_EMAIL_HTML", "<p>Welcome!</p>"),
        ]
    };

    // template.yaml's environment, aimed at the sandbox, moto's SQS and (through the fault
    // proxy) moto's Secrets Manager.
    let env_of = |function: &str, extra: &[(&str, &str)]| {
        let ids = (APP_SECRET_ID, TOKEN_SECRET_ID);
        let home = scratch.path().join("home");
        let deployment =
            DeploymentEnv::on_moto(function, &sandbox.base_url(), &moto.endpoint, &home, ids, &queues.main);
        let overrides = [
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint.as_str()),
            ("SIGNUP_QUEUE_URL", queues.main.as_str()),
            ("SIGNUP_REPLAY_TABLE", STATE_TABLE),
            ("KEAP_WELCOME_RECHECK_SECONDS", WELCOME_RECHECK_SECS),
            ("KEAP_HTTP_TIMEOUT_SECONDS", "3"),
            ("KEAP_LEASE_SECONDS", "20"),
            // Keap fails every few seconds here: a short shared backoff keeps the run short.
            ("KEAP_REFRESH_BACKOFF_MIN_SECONDS", "1"),
            ("KEAP_REFRESH_BACKOFF_MAX_SECONDS", "2"),
            // This sandbox enforces no quota and sends no quota headers (Keap always does), so
            // pacing would hold every process to a guessed share of a quota that is not there:
            // at 5,000 signups nearly every signup was queued and the drain outlasted the run.
            // This test is about faults, tokens and welcomes; pacing under Keap's quota is
            // launch_spike.rs and quota_pacing.rs.
            ("KEAP_PACING", "off"),
            (
                "RUST_LOG",
                "info,keap_relay=trace,signup=trace,signup_retry=trace,refresh=trace",
            ),
        ];
        deployment.vars_with(overrides.iter().chain(welcome_vars).chain(extra))
    };
    let pool = |function: &'static str, size: usize, extra: &[(&str, &str)]| {
        let (binary, env, log_dir) = (bin_dir.join(function), env_of(function, extra), log_dir.clone());
        async move { FunctionPool::start(function, &binary, env, size, FUNCTION_TIMEOUT, &log_dir).await }
    };
    let signup_pool = Arc::new(pool("signup", signup_processes, &[]).await.unwrap());
    let retry_pool = Arc::new(pool("signup-retry", retry_processes, &[]).await.unwrap());
    // The scheduled refresh rotates on every run (a lead longer than the token's life).
    // Rotates on every run: a refresh token older than 0 s is due (the lead alone is capped at half the pair's life).
    let refresh_pool = Arc::new(
        pool("refresh", 1, &[("KEAP_REFRESH_MAX_AGE_SECONDS", "0")])
            .await
            .unwrap(),
    );

    let events = Arc::new(SignupEvents::new(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))).unwrap());
    let counters = Arc::new(Counters::default());
    let running = Arc::new(AtomicBool::new(true));
    let queue_outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));

    let scheduled = {
        let (running, refresh_pool) = (running.clone(), refresh_pool.clone());
        let event = scheduled_event();
        tokio::spawn(async move {
            let mut runs = BTreeMap::<String, u64>::new();
            while running.load(Ordering::Relaxed) {
                *runs
                    .entry(outcome_label(&refresh_pool.invoke(event.clone()).await))
                    .or_default() += 1;
                tokio::time::sleep(REFRESH_EVERY).await;
            }
            runs
        })
    };
    let queues = Arc::new(queues);
    let pollers: Vec<_> = (0..retry_processes)
        .map(|_| {
            let (running, queues, retry_pool, outcomes) = (
                running.clone(),
                queues.clone(),
                retry_pool.clone(),
                queue_outcomes.clone(),
            );
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    poll_once(&queues, &retry_pool, &outcomes).await;
                }
            })
        })
        .collect();
    let fault_log = Arc::new(Mutex::new(BTreeMap::<&'static str, u64>::new()));
    let stream_done = Arc::new(AtomicBool::new(false));
    let injector = {
        let mut switch = FaultSwitch {
            sandbox: sandbox.clone(),
            proxy: proxy.clone(),
            signup: signup_pool.clone(),
            retry: retry_pool.clone(),
            last_expiry: None,
        };
        let (stream_done, fault_log) = (stream_done.clone(), fault_log.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed ^ 0x5eed);
            while !stream_done.load(Ordering::Relaxed) {
                let what = switch.inject(&mut rng).await;
                *fault_log.lock().unwrap().entry(what).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(fault_every / 2 + rng.below(fault_every))).await;
            }
        })
    };

    // The stream: arrivals at `rate`, each signup its own task (the sender's concurrency is
    // bounded by the signup processes, as reserved concurrency bounds it).
    let started = Instant::now();
    let mut arrivals = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut senders = Vec::with_capacity(signups);
    for index in 0..signups {
        arrivals.tick().await;
        let (pool, events, counters) = (signup_pool.clone(), events.clone(), counters.clone());
        let email = events.email("e2e", index);
        senders.push(tokio::spawn(async move {
            let fate = send_one(&pool, &events, &email, &counters).await;
            (email, fate)
        }));
    }
    let fates = answers("load_e2e", senders, Duration::from_secs(300), 500).await;
    let stream_time = started.elapsed();

    // Faults off; the retry worker drains the queue; everything stops.
    stream_done.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), injector)
        .await
        .expect("the injector stops")
        .unwrap();
    sandbox.faults().clear();
    welcome_model(&sandbox);
    proxy.clear();
    eprintln!(
        "load_e2e: stream done in {:.0} s; draining the queue",
        started.elapsed().as_secs_f64()
    );
    let drain_started = Instant::now();
    let mut left = queues.waiting().await;
    let drain_limit = Duration::from_secs(env_number("LOAD_E2E_DRAIN_SECONDS", 240));
    while left > 0 && drain_started.elapsed() < drain_limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = queues.waiting().await;
    }
    let drain_time = drain_started.elapsed();
    running.store(false, Ordering::Relaxed);
    for poller in pollers {
        tokio::time::timeout(Duration::from_secs(60), poller)
            .await
            .expect("a poller stops")
            .unwrap();
    }
    let scheduled_runs = tokio::time::timeout(Duration::from_secs(60), scheduled)
        .await
        .expect("the schedule stops")
        .unwrap();

    // Reconcile the signups.
    eprintln!("load_e2e: drained ({left} left); reconciling");
    let dead = queues.dead_letters().await;
    let dead_emails: BTreeSet<String> = dead
        .iter()
        .filter_map(|(_, body)| QueuedSignup::from_message(body).ok().map(|q| q.signup.email))
        .collect();
    let welcome_tags = tag_ids_named(&sandbox, WELCOME_TAG).await;
    let mut tally = BTreeMap::<&'static str, u64>::new();
    let mut problems = Vec::new();
    let (mut missed_welcomes, mut duplicate_welcomes) = (0u64, 0u64);
    for (email, fate) in &fates {
        let contact = sandbox.contact_by_email(email);
        // Counted by the sandbox per contact: emails received (the direct email, or the
        // campaign's), and in goal mode the campaign starts too.
        let welcomes = contact.as_ref().map_or(0, |c| {
            if goal_mode {
                c.goals_achieved.max(c.emails_received)
            } else {
                c.emails_received
            }
        });
        if welcomes > 1 {
            duplicate_welcomes += 1;
            problems.push(format!("{email} got {welcomes} welcomes"));
        }
        if welcomes == 0 && contact.is_some() {
            missed_welcomes += 1;
            problems.push(format!("{email} is in Keap and got no welcome"));
        }
        *tally
            .entry(if welcomes == 1 {
                "welcome_emails_received"
            } else {
                "no_welcome_email"
            })
            .or_default() += 1;
        let in_keap = contact
            .as_ref()
            .is_some_and(|c| c.tag_ids.iter().any(|id| welcome_tags.contains(id)));
        let bucket = match fate {
            Fate::Delivered if in_keap => "delivered_at_once",
            Fate::Delivered => {
                problems.push(format!("{email} was answered 2xx but is not a tagged contact"));
                "answered_2xx_but_missing"
            }
            Fate::Queued if in_keap => "queued_then_delivered",
            Fate::Queued if dead_emails.contains(email) => "queued_then_dead_lettered",
            Fate::Queued => {
                problems.push(format!(
                    "{email} was queued (202) and is neither in Keap nor dead-lettered"
                ));
                "lost"
            }
            Fate::GaveUp => "sender_gave_up_after_8_attempts",
            Fate::Refused(_) => {
                problems.push(format!("{email}: a valid signup was refused"));
                "refused_4xx"
            }
        };
        *tally.entry(bucket).or_default() += 1;
    }

    // The store holds a working pair, and Keap issued exactly the pairs that were stored.
    let stats = sandbox.stats();
    let status = operator.status().await.unwrap();
    let final_generation = status.generation.unwrap_or(first_generation);
    let credential = operator.credential().await.expect("a credential from the stored pair");
    let Credential::AccessToken { token, .. } = &credential else {
        panic!("an OAuth access token")
    };
    let probe = reqwest::Client::new()
        .get(format!("{}/v1/tags?name={WELCOME_TAG}", sandbox.api_url()))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap()
        .status();
    // A refresh token older than zero is always due (the lead is capped at half the pair's life).
    let forced = RotationPolicy {
        lead: Duration::from_secs(100 * 86_400),
        max_refresh_age: Duration::ZERO,
    };
    // A failure just before the faults stopped may have left the (2 s) shared backoff running.
    let mut rotated = operator.rotate_if_due(forced).await;
    for _ in 0..5 {
        let Err(TokenError::Unavailable { retry_after, .. }) = &rotated else {
            break;
        };
        tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1)) + Duration::from_millis(100)).await;
        rotated = operator.rotate_if_due(forced).await;
    }
    let rotated = rotated.expect("the stored refresh token works");
    let puts_seen = proxy.count(PUT_SECRET_VALUE);

    // The one case that may end in needs_reauth: Keap applies a refresh and its answer is
    // lost. The refresh process must stop after that one call (never spend the dead token
    // again), and a signup that then meets a refused token is queued and parked, not lost.
    eprintln!("load_e2e: the dropped-answer case");
    let refreshes_before_drop = sandbox.stats().refreshes_served;
    sandbox.faults().drop_next_refresh_responses(1);
    let dropped_run = outcome_label(&refresh_pool.invoke(scheduled_event()).await);
    let after_drop = operator.status().await.unwrap();
    sandbox.expire_access_tokens();
    let last_email = events.email("e2e-after-drop", 0);
    let last_fate = send_one(&signup_pool, &events, &last_email, &counters).await;
    let parked = poll_once(&queues, &retry_pool, &queue_outcomes).await;
    let dropped_case = json!({
        "refresh_run": dropped_run,
        "keap_token_calls": sandbox.stats().refreshes_served - refreshes_before_drop,
        "status_after": if after_drop.needs_reauth { "needs_reauth" } else { "not needs_reauth" },
        "next_signup": format!("{last_fate:?}"),
        "acknowledged_by_signup_retry": parked,
        "waiting_in_queue": queues.waiting().await,
        "parked": logs_of(&[&retry_pool]).matches("signup parked until it is").count(),
    });

    // The audit: nothing secret in anything the processes wrote.
    eprintln!("load_e2e: auditing the logs");
    let secrets = secrets_to_audit(&direct, &sandbox).await;
    for pool in [&signup_pool, &retry_pool, &refresh_pool] {
        pool.shutdown().await;
    }
    let logs = logs_of(&[&signup_pool, &retry_pool, &refresh_pool]);
    let leaked = secrets.iter().filter(|secret| logs.contains(secret.as_str())).count();
    let mut dead_reasons = BTreeMap::<String, u64>::new();
    for (id, _) in &dead {
        *dead_reasons.entry(dead_letter_reason(&logs, id)).or_default() += 1;
    }
    let pool_figures = |pool: &FunctionPool| {
        let c = &pool.counters;
        json!({
            "processes_started": c.cold_starts.load(Ordering::Relaxed),
            "invocations": c.invocations.load(Ordering::Relaxed),
            "killed_mid_request": c.killed.load(Ordering::Relaxed),
            "exited_on_their_own": c.crashed.load(Ordering::Relaxed),
            "timed_out": c.timed_out.load(Ordering::Relaxed),
            "function_errors": c.function_errors.load(Ordering::Relaxed),
        })
    };
    let report = json!({
        "signups_sent": signups,
        "outcomes": tally,
        "dead_lettered": dead.len(),
        "dead_letter_reasons": dead_reasons,
        "sender_attempts": counters.attempts.load(Ordering::Relaxed),
        "gateway_502_after_a_kill_retried": counters.gateway_5xx_after_kill.load(Ordering::Relaxed),
        "replays_in_progress_asked_again": counters.replays_in_progress.load(Ordering::Relaxed),
        "answered_503_with_retry_after": counters.answered_503_with_retry_after.load(Ordering::Relaxed),
        "5xx_without_retry_after": counters.bad_5xx.load(Ordering::Relaxed),
        "processes": {
            "signup": pool_figures(&signup_pool),
            "signup-retry": pool_figures(&retry_pool),
            "refresh": pool_figures(&refresh_pool),
        },
        "signup_retry_batches": *queue_outcomes.lock().unwrap(),
        "scheduled_refresh_runs": scheduled_runs,
        "faults_injected": *fault_log.lock().unwrap(),
        "keap": {
            "refreshes_served": stats.refreshes_served,
            "refresh_failures": stats.refresh_failures,
            "5xx_injected": stats.server_errors,
            "429": stats.throttled,
            "401": stats.unauthorized,
            "contacts_created": stats.contacts_created,
            "welcome_emails": stats.emails_queued,
            "welcome_tags": welcome_tags.len(),
        },
        "store": {
            "generations_stored": final_generation - first_generation,
            "token_versions_written": puts_seen,
            "secrets_manager_calls_faulted": proxy.faulted().len(),
            "final_status": if status.needs_reauth { "needs_reauth" } else if status.connected { "connected" } else { "not connected" },
        },
        "log_bytes_audited": logs.len(),
        "secrets_checked": secrets.len(),
        "secrets_found_in_logs": leaked,
        "dropped_refresh_answer": dropped_case,
        "welcome": {
            "mode": if goal_mode { "goal" } else { "email" },
            "missed_welcomes": missed_welcomes,
            "duplicate_welcomes": duplicate_welcomes,
            "sends_that_went_out_despite_a_5xx": stats.sent_despite_5xx,
            "campaigns_started": stats.campaigns_started,
            "sent_email_listings_read": stats.calls_to("GET", "/crm/rest/v1/emails"),
        },
        "stream_seconds": stream_time.as_secs_f64(),
        "drain_seconds": drain_time.as_secs_f64(),
        "left_in_queue_after_drain": left,
        "signups_parked_waiting_for_a_reconnection": logs.matches("signup parked until it is").count(),
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("LOAD E2E REPORT {text}");
    // The report and the functions' logs (audited above: nothing secret) for a look afterwards.
    let out = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/load-e2e"));
    if std::fs::create_dir_all(out).is_ok() {
        let _ = std::fs::write(out.join("report.json"), &text);
        let _ = std::fs::write(out.join("functions.log"), &logs);
    }

    assert_eq!(left, 0, "the queue drains once Keap and the store are healthy");
    assert_eq!(
        (missed_welcomes, duplicate_welcomes),
        (0, 0),
        "every contact in Keap is welcomed exactly once"
    );

    assert!(
        problems.is_empty(),
        "{} signups unaccounted for: {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    assert_eq!(
        counters.bad_5xx.load(Ordering::Relaxed),
        0,
        "no 5xx without Retry-After (other than for a killed process)"
    );
    assert_eq!(
        counters.relay_failures.load(Ordering::Relaxed),
        0,
        "no signup process crashed, errored or timed out on its own"
    );
    for pool in [&signup_pool, &retry_pool, &refresh_pool] {
        assert_eq!(
            pool.counters.crashed.load(Ordering::Relaxed),
            0,
            "{} processes exited on their own",
            pool.function()
        );
        assert_eq!(
            pool.counters.timed_out.load(Ordering::Relaxed),
            0,
            "{} invocations timed out",
            pool.function()
        );
    }
    assert!(
        status.connected && !status.needs_reauth,
        "the store holds a working pair: {status:?}"
    );
    assert_eq!(probe.as_u16(), 200, "the stored access token works");
    assert_eq!(
        rotated.status.generation,
        Some(final_generation + 1),
        "the stored refresh token works"
    );
    assert_eq!(
        stats.refresh_failure("invalid_grant_used"),
        0,
        "a refresh token was spent twice"
    );
    assert_eq!(
        stats.refreshes_served,
        final_generation - first_generation,
        "every pair Keap issued was stored, and nothing else rotated"
    );
    assert_eq!(
        dropped_case["keap_token_calls"], 1,
        "a lost refresh answer ends refreshing: {dropped_case}"
    );
    assert_eq!(dropped_case["status_after"], "needs_reauth", "{dropped_case}");
    assert_eq!(
        last_fate,
        Fate::Queued,
        "a signup after the lost answer is queued: {dropped_case}"
    );
    assert_eq!(
        dropped_case["parked"], 1,
        "and parked for a reconnection, not dead-lettered: {dropped_case}"
    );
    assert_eq!(
        dropped_case["waiting_in_queue"], 1,
        "the parked signup waits in the queue: {dropped_case}"
    );
    assert!(
        proxy.count(GET_SECRET_VALUE) > 0,
        "the functions read Secrets Manager through the fault proxy"
    );
    assert_eq!(leaked, 0, "a secret appears in the functions' logs");
    assert!(
        logs.contains("rotated the Keap token pair"),
        "the audit read the TRACE logs of the processes"
    );
}
