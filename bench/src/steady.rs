//! Steady-state signup, in-process: the real `signup::handler::handle` with the production
//! wiring (`App` + `AppDeps`, OAuth token source over a counted memory store) against an
//! in-process sandbox, for many signups with distinct emails.
//!
//! The sandbox's own time is taken out by a paired baseline: after each signup, the same two
//! Keap requests (contact upsert, tag application, identical bodies) are sent with a bare
//! reqwest client, and `own = handler − baseline` for that pair. The baseline authenticates
//! with the API key so its calls can be told apart from the handler's in the sandbox's log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keap_relay::app::App;
use keap_relay::config::{AuthMode, Config, local_config};
use keap_relay::store::SecretStore;
use keap_relay::store::counting::{CountingStore, StoreCounts};
use keap_relay::store::memory::MemoryStore;
use keap_sandbox::{AuthKind, CallRecord, DEFAULT_API_KEY, Sandbox, SandboxConfig};
use serde::Serialize;
use serde_json::json;
use signup::AppDeps;

use crate::events::{EXTRA_TAG, SignupEvents, WELCOME_TAG};
use crate::seed;
use crate::stats::{Summary, ms};
use crate::{BenchError, Result};

const WARMUP_SIGNUPS: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct SteadyState {
    pub signups: usize,
    /// Answered 200/201.
    pub succeeded: usize,
    /// `handle()` wall time, Keap round trips on loopback included.
    pub handler: Summary,
    /// The same two Keap requests sent bare: the sandbox's time plus loopback.
    pub keap_baseline: Summary,
    /// Per signup, handler minus its paired baseline: the relay's own time.
    pub own: Summary,
    pub keap_calls_per_signup: f64,
    /// Over the measured signups, by `METHOD path` (ids as `{id}`).
    pub keap_calls: BTreeMap<String, u64>,
    /// The first signup of a fresh process (tag ids unknown, nothing cached).
    pub first_signup_keap_calls: BTreeMap<String, u64>,
    pub store_calls_first_signup: StoreCounts,
    pub store_calls_measured: StoreCounts,
    pub store_calls_per_signup: f64,
}

/// `METHOD /path` with numeric segments as `{id}`.
fn call_key(call: &CallRecord) -> String {
    let path: Vec<String> = call
        .path
        .split('/')
        .map(|segment| {
            if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
                "{id}".to_owned()
            } else {
                segment.to_owned()
            }
        })
        .collect();
    format!("{} {}", call.method, path.join("/"))
}

fn count_calls<'a>(calls: impl Iterator<Item = &'a CallRecord>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for call in calls {
        *counts.entry(call_key(call)).or_default() += 1;
    }
    counts
}

/// The bare version of the handler's two Keap requests (bodies as `KeapApi` sends them).
struct Baseline {
    http: reqwest::Client,
    api: String,
    tag_ids: Vec<i64>,
}

impl Baseline {
    /// Sends `request` with the API key and reads its JSON answer, as `KeapApi` does.
    async fn call(&self, what: &str, request: reqwest::RequestBuilder) -> Result<serde_json::Value> {
        let failed = |e: reqwest::Error| BenchError::Failed(format!("baseline {what}: {e}"));
        request
            .header("X-Keap-API-Key", DEFAULT_API_KEY)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?
            .json()
            .await
            .map_err(failed)
    }

    async fn pair(&self, email: &str) -> Result<Duration> {
        let started = Instant::now();
        let upsert = json!({
            "duplicate_option": "Email",
            "email_addresses": [{ "email": email, "field": "EMAIL1" }],
            "given_name": "Ada",
            "family_name": "Lovelace",
            "opt_in_reason": "Signed up through landing-page",
            "source_type": "API",
        });
        let contact = self
            .call(
                "upsert",
                self.http.put(format!("{}/v1/contacts", self.api)).json(&upsert),
            )
            .await?;
        let id = contact["id"]
            .as_i64()
            .ok_or_else(|| BenchError::Failed("baseline upsert: no id".into()))?;
        let tags = json!({ "tagIds": self.tag_ids });
        self.call(
            "tags",
            self.http
                .post(format!("{}/v1/contacts/{id}/tags", self.api))
                .json(&tags),
        )
        .await?;
        Ok(started.elapsed())
    }
}

fn succeeded(response: &lambda_http::Response<lambda_http::Body>) -> bool {
    response.status().is_success()
}

pub async fn measure(events: &SignupEvents, signups: usize) -> Result<SteadyState> {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(BenchError::io("start the sandbox"))?;
    let memory = Arc::new(MemoryStore::new());
    let counting = Arc::new(CountingStore::new(memory.clone()));
    let config = Config {
        welcome_tag: Some(WELCOME_TAG.into()),
        ..local_config(AuthMode::OAuth, &sandbox.base_url())
    };
    seed::put_app_secret(memory.as_ref(), &config.app_secret_id).await?;
    seed::connect(
        memory.clone() as Arc<dyn SecretStore>,
        &config.token_secret_id,
        &sandbox,
        None,
    )
    .await?;
    let app = App::with_parts(config, counting.clone(), None).map_err(|e| BenchError::Failed(e.to_string()))?;
    let deps = AppDeps::from_app(&app);

    sandbox.reset_stats();
    counting.reset();
    let first = signup::handler::handle(&events.request(&events.email("first", 0))?, &deps).await;
    if !succeeded(&first) {
        return Err(BenchError::Failed(format!(
            "the first signup was answered {}",
            first.status()
        )));
    }
    let first_signup_keap_calls = count_calls(sandbox.stats().calls.iter());
    let store_calls_first_signup = counting.counts();
    for index in 0..WARMUP_SIGNUPS {
        signup::handler::handle(&events.request(&events.email("warmup", index))?, &deps).await;
    }

    let tag_id = |name: &str| {
        sandbox
            .tag_by_name(name)
            .ok_or_else(|| BenchError::Failed(format!("tag {name} missing")))
    };
    let baseline = Baseline {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BenchError::Failed(e.to_string()))?,
        api: sandbox.api_url(),
        tag_ids: vec![tag_id(WELCOME_TAG)?, tag_id(EXTRA_TAG)?],
    };
    baseline.pair(&events.email("baseline-warmup", 0)).await?;

    sandbox.reset_stats();
    counting.reset();
    let (mut handler, mut bare, mut own) = (Vec::new(), Vec::new(), Vec::new());
    let mut ok = 0;
    for index in 0..signups {
        let request = events.request(&events.email("steady", index))?;
        let started = Instant::now();
        let response = signup::handler::handle(&request, &deps).await;
        let took = started.elapsed();
        ok += usize::from(succeeded(&response));
        let pair = baseline.pair(&events.email("baseline", index)).await?;
        handler.push(ms(took));
        bare.push(ms(pair));
        own.push(ms(took) - ms(pair));
    }
    let stats = sandbox.stats();
    let keap_calls = count_calls(stats.calls.iter().filter(|c| c.auth != AuthKind::ApiKey));
    let store_calls_measured = counting.counts();
    Ok(SteadyState {
        signups,
        succeeded: ok,
        handler: Summary::of_ms(&handler),
        keap_baseline: Summary::of_ms(&bare),
        own: Summary::of_ms(&own),
        keap_calls_per_signup: keap_calls.values().sum::<u64>() as f64 / signups as f64,
        keap_calls,
        first_signup_keap_calls,
        store_calls_first_signup,
        store_calls_per_signup: store_calls_measured.total() as f64 / signups as f64,
        store_calls_measured,
    })
}
