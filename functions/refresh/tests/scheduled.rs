//! The scheduled refresh, driven with `events/scheduled-refresh.json` through the real handler,
//! the real token source over a memory store, and the in-process Keap sandbox.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use keap_relay::SecretString;
use keap_relay::config::AuthMode;
use keap_relay::keap::api::KeapApi;
use keap_relay::keap::oauth::OAuthClient;
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_relay::token::{ApiKeySource, Connection, RotationPolicy, TokenGrant, TokenSettings, TokenSource, TokenState};
use keap_sandbox::{Sandbox, SandboxConfig};
use refresh::{MetricsSink, RefreshDeps, RefreshSummary, RunStatus, handle};
use serde_json::Value;
use test_support::logs::LogCapture;

const TOKEN_SECRET_ID: &str = "keap-relay/token";
const START_URL: &str = "https://relay.example.com/oauth/start";
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3_600);

fn scheduled_event() -> EventBridgeEvent<Value> {
    test_support::events::parse("scheduled-refresh.json")
}

#[derive(Default)]
struct CollectedMetrics(Mutex<Vec<String>>);

impl MetricsSink for CollectedMetrics {
    fn emit(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

impl CollectedMetrics {
    /// The only EMF line of the last run, parsed.
    fn last(&self) -> Value {
        serde_json::from_str(self.0.lock().unwrap().last().expect("one EMF line per run")).unwrap()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Error-level lines that tell a person to re-authorize at the start URL (JSON log lines
/// captured for one test; the test runtime is single-threaded).
fn reauth_errors(logs: &LogCapture) -> usize {
    logs.json_lines()
        .iter()
        .filter(|line| {
            line["level"] == "ERROR"
                && line["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(START_URL))
        })
        .count()
}

struct Harness {
    sandbox: Sandbox,
    store: Arc<MemoryStore>,
    metrics: Arc<CollectedMetrics>,
    deps: RefreshDeps,
}

impl Harness {
    async fn oauth() -> Self {
        let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
        let store = Arc::new(MemoryStore::new());
        let http = reqwest::Client::new();
        let refresher = OAuthClient::new(
            http.clone(),
            sandbox.token_url().parse().unwrap(),
            sandbox.authorize_url().parse().unwrap(),
            keap_sandbox::DEFAULT_CLIENT_ID.into(),
            SecretString::from(keap_sandbox::DEFAULT_CLIENT_SECRET),
            Duration::from_secs(5),
        );
        // A short shared backoff, so a test can wait it out.
        let settings = TokenSettings {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            ..TokenSettings::default()
        };
        let source = TokenSource::new(store.clone(), TOKEN_SECRET_ID, Arc::new(refresher), settings).unwrap();
        Self::assemble(sandbox, store, AuthMode::OAuth, Arc::new(source))
    }

    async fn api_key(key: &str) -> Self {
        let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
        let connection = Arc::new(ApiKeySource::new(SecretString::from(key)));
        Self::assemble(sandbox, Arc::new(MemoryStore::new()), AuthMode::ApiKey, connection)
    }

    fn assemble(sandbox: Sandbox, store: Arc<MemoryStore>, mode: AuthMode, connection: Arc<dyn Connection>) -> Self {
        let metrics = Arc::new(CollectedMetrics::default());
        let deps = RefreshDeps {
            mode,
            policy: RotationPolicy {
                lead: 6 * HOUR,
                max_refresh_age: 30 * DAY,
            },
            connection,
            key_check: Arc::new(KeapApi::new(
                reqwest::Client::new(),
                &sandbox.api_url(),
                Duration::from_secs(5),
            )),
            start_url: Some(START_URL.into()),
            function_name: "keap-relay-RefreshFunction-abc".into(),
            metrics: metrics.clone(),
            events: None,
        };
        Harness {
            sandbox,
            store,
            metrics,
            deps,
        }
    }

    /// Stores a pair as if it had been connected at `issued_at` with `expires_in` of access
    /// life; `refresh_token` None means a pair the sandbox really issued.
    async fn seed(&self, issued_at: SystemTime, expires_in: Duration, refresh_token: Option<&str>) -> TokenGrant {
        let minted = test_support::grant::minted(&self.sandbox);
        let refresh_token = refresh_token.map_or(minted.refresh_token.clone(), SecretString::from);
        let grant = TokenGrant {
            refresh_token,
            expires_in,
            ..minted
        };
        let state = TokenState::connected(&grant, 1, issued_at);
        self.store
            .put_version(TOKEN_SECRET_ID, "seeded", &state.to_secret())
            .await
            .unwrap();
        grant
    }

    async fn run(&self) -> Result<RefreshSummary, refresh::RefreshError> {
        handle(scheduled_event(), &self.deps).await
    }

    fn refreshes(&self) -> u64 {
        self.sandbox.stats().refreshes_served
    }
}

fn metric(doc: &Value, name: &str) -> Option<f64> {
    doc.get(name).and_then(Value::as_f64)
}

#[test]
fn the_scheduled_event_file_is_an_eventbridge_scheduled_event() {
    let event = scheduled_event();
    assert_eq!(event.detail_type, "Scheduled Event");
    assert_eq!(event.source, "aws.events");
    let with_detail: EventBridgeEvent<Value> = serde_json::from_value(
        serde_json::json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {"any": ["thing"]}}),
    )
    .unwrap();
    assert_eq!(with_detail.detail["any"][0], "thing");
}

#[tokio::test]
async fn a_healthy_pair_is_left_alone_and_reported() {
    let h = Harness::oauth().await;
    let grant = h.seed(SystemTime::now(), DAY, None).await;
    let summary = h.run().await.unwrap();
    assert_eq!(summary.action, "not_due");
    assert_eq!(summary.status, RunStatus::Ok);
    assert_eq!(h.refreshes(), 0);

    let doc = h.metrics.last();
    assert_eq!(metric(&doc, "Refreshes"), Some(0.0));
    assert_eq!(metric(&doc, "RefreshFailures"), Some(0.0));
    assert_eq!(metric(&doc, "NeedsReauth"), Some(0.0));
    assert!(metric(&doc, "AccessTokenSecondsToExpiry").unwrap() > 23.0 * 3600.0);
    assert_eq!(metric(&doc, "RefreshTokenAgeDays"), Some(0.0));

    let summary = serde_json::to_string(&summary).unwrap();
    for secret in [&grant.access_token, &grant.refresh_token] {
        assert!(
            !summary.contains(keap_relay::ExposeSecret::expose_secret(secret)),
            "{summary}"
        );
    }
}

#[tokio::test]
async fn an_access_token_inside_the_lead_time_is_rotated() {
    let h = Harness::oauth().await;
    h.seed(SystemTime::now() - 23 * HOUR, DAY, None).await;
    let summary = h.run().await.unwrap();
    assert_eq!(summary.action, "rotated");
    assert_eq!(summary.status, RunStatus::Ok);
    assert_eq!(h.refreshes(), 1);
    let connection = summary.connection.unwrap();
    assert_eq!(connection.generation, Some(2));
    assert!(connection.access_expires_in_seconds.unwrap() > 23 * 3600);

    let doc = h.metrics.last();
    assert_eq!(metric(&doc, "Refreshes"), Some(1.0));
    assert_eq!(metric(&doc, "NeedsReauth"), Some(0.0));

    // Nothing is due any more.
    assert_eq!(h.run().await.unwrap().action, "not_due");
    assert_eq!(h.refreshes(), 1);
}

#[tokio::test]
async fn a_refresh_token_older_than_the_maximum_age_is_rotated() {
    let h = Harness::oauth().await;
    // Issued 31 days ago; its access token still has a day left (only the age is due).
    h.seed(SystemTime::now() - 31 * DAY, 32 * DAY, None).await;
    let summary = h.run().await.unwrap();
    assert_eq!(summary.action, "rotated");
    assert_eq!(h.refreshes(), 1);
    assert_eq!(summary.connection.unwrap().refresh_token_age_days, Some(0.0));
    assert_eq!(metric(&h.metrics.last(), "RefreshTokenAgeDays"), Some(0.0));
}

#[tokio::test]
async fn a_refused_refresh_token_is_reported_once_per_run_without_failing() {
    let h = Harness::oauth().await;
    let logs = LogCapture::default();
    let _guard = logs.json_on_this_thread(tracing::Level::INFO);
    h.seed(
        SystemTime::now() - 23 * HOUR,
        DAY,
        Some("a-refresh-token-keap-never-issued"),
    )
    .await;

    let summary = h.run().await.expect("needs_reauth must not fail the function");
    assert_eq!(summary.status, RunStatus::NeedsReauth);
    assert_eq!(summary.start_url.as_deref(), Some(START_URL));
    assert!(summary.connection.unwrap().needs_reauth);
    let doc = h.metrics.last();
    assert_eq!(metric(&doc, "NeedsReauth"), Some(1.0));
    assert_eq!(metric(&doc, "RefreshFailures"), Some(0.0));
    assert_eq!(doc["status"], "needs_reauth");
    assert_eq!(reauth_errors(&logs), 1);
    let calls = h.sandbox.stats().refresh_failures_total();
    assert_eq!(calls, 1);

    // The next run calls nobody, and says it again, once.
    logs.clear();
    let again = h.run().await.unwrap();
    assert_eq!(again.status, RunStatus::NeedsReauth);
    assert_eq!(h.sandbox.stats().refresh_failures_total(), calls);
    assert_eq!(h.refreshes(), 0);
    assert_eq!(metric(&h.metrics.last(), "NeedsReauth"), Some(1.0));
    assert_eq!(reauth_errors(&logs), 1);
    assert_eq!(h.metrics.count(), 2);
}

#[tokio::test]
async fn never_connected_asks_for_a_connection_without_failing() {
    let h = Harness::oauth().await;
    let logs = LogCapture::default();
    let _guard = logs.json_on_this_thread(tracing::Level::INFO);
    let summary = h.run().await.unwrap();
    assert_eq!(summary.status, RunStatus::NotConnected);
    assert_eq!(summary.start_url.as_deref(), Some(START_URL));
    assert_eq!(metric(&h.metrics.last(), "NeedsReauth"), Some(1.0));
    assert_eq!(reauth_errors(&logs), 1);
    assert_eq!(h.refreshes(), 0);
}

#[tokio::test]
async fn keap_failing_for_now_fails_the_run() {
    let h = Harness::oauth().await;
    h.seed(SystemTime::now() - 23 * HOUR, DAY, None).await;
    h.sandbox.faults().set_server_error_rate(1.0);
    let error = h.run().await.unwrap_err();
    let diagnostic: lambda_runtime::Diagnostic = error.into();
    assert_eq!(diagnostic.error_type, "KeapRelay.RefreshFailed");
    let doc = h.metrics.last();
    assert_eq!(metric(&doc, "RefreshFailures"), Some(1.0));
    assert_eq!(metric(&doc, "NeedsReauth"), Some(0.0));
    assert_eq!(metric(&doc, "Refreshes"), Some(0.0));
    assert_eq!(doc["status"], "failed");

    // Keap back: inside the shared backoff the next run fails without calling Keap; after
    // it, the run rotates the same, still valid, refresh token.
    h.sandbox.faults().clear();
    let served = h.refreshes();
    assert!(h.run().await.is_err());
    assert_eq!(h.refreshes(), served, "no Keap call inside the backoff");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(h.run().await.unwrap().action, "rotated");
}

#[tokio::test]
async fn the_emf_line_follows_the_alarms_contract() {
    let h = Harness::oauth().await;
    h.seed(SystemTime::now(), DAY, None).await;
    h.run().await.unwrap();
    let lines = h.metrics.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 1);
    assert!(!lines[0].contains('\n'));
    let doc: Value = serde_json::from_str(&lines[0]).unwrap();
    let directive = &doc["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "KeapRelay");
    assert_eq!(directive["Dimensions"], serde_json::json!([["FunctionName"]]));
    assert_eq!(doc["FunctionName"], "keap-relay-RefreshFunction-abc");
    let names: Vec<&str> = directive["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Refreshes",
            "RefreshFailures",
            "NeedsReauth",
            "AccessTokenSecondsToExpiry",
            "RefreshTokenAgeDays"
        ]
    );
    for name in names {
        assert!(doc[name].is_number(), "{name} has no value");
    }
    assert!(doc["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
}

#[tokio::test]
async fn api_key_mode_only_checks_the_key() {
    let h = Harness::api_key(keap_sandbox::DEFAULT_API_KEY).await;
    let summary = h.run().await.unwrap();
    assert_eq!(summary.action, "api_key_checked");
    assert_eq!(summary.status, RunStatus::Ok);
    assert_eq!(h.refreshes(), 0);
    assert_eq!(h.sandbox.stats().calls.len(), 1, "one cheap call");
    let doc = h.metrics.last();
    assert_eq!(metric(&doc, "NeedsReauth"), Some(0.0));
    assert_eq!(metric(&doc, "RefreshFailures"), Some(0.0));
    assert_eq!(doc["mode"], "api-key");
}

#[tokio::test]
async fn a_refused_api_key_is_reported_without_failing() {
    let h = Harness::api_key("KeapAK-revoked").await;
    let summary = h.run().await.unwrap();
    assert_eq!(summary.status, RunStatus::NeedsReauth);
    assert_eq!(summary.start_url, None, "no OAuth page helps an API key");
    assert_eq!(metric(&h.metrics.last(), "NeedsReauth"), Some(1.0));
}

#[tokio::test]
async fn a_throttled_api_key_check_fails_the_run() {
    let h = Harness::api_key(keap_sandbox::DEFAULT_API_KEY).await;
    h.sandbox.faults().throttle_next(1, Some(1));
    let error = h.run().await.unwrap_err();
    assert!(matches!(error, refresh::RefreshError::KeyCheck(_)), "{error}");
    assert_eq!(metric(&h.metrics.last(), "RefreshFailures"), Some(1.0));
}

#[tokio::test]
async fn a_refusal_is_announced_to_the_product_as_one_event_with_the_reconnect_url() {
    let mut h = Harness::oauth().await;
    let sink = Arc::new(keap_relay::events::MemorySink::new());
    h.deps.events = Some(sink.clone());
    h.seed(
        SystemTime::now() - 23 * HOUR,
        DAY,
        Some("a-refresh-token-keap-never-issued"),
    )
    .await;
    h.run().await.unwrap();
    h.run().await.unwrap();
    let events = sink.take();
    assert_eq!(events.len(), 2, "each run in the window says it: {events:?}");
    assert_eq!(events[0].kind, keap_relay::events::EventType::ConnectionNeedsReauth);
    assert_eq!(
        events[0].id, events[1].id,
        "the same refusal is one event to the receiver"
    );
    assert_eq!(events[0].data["reconnect_url"], START_URL);
    assert!(events[0].data["since"].is_string());
}
