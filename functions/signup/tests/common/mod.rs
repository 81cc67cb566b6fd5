//! Test harness: the real handler, the real Keap client and `SignupService`, an in-process
//! Keap sandbox, and the sample events from `events/` re-signed at test time.
#![allow(dead_code)] // each test file uses its own part of the harness

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::config::WelcomeEmail;
use keap_relay::keap::api::KeapApi;
use keap_relay::signup::signature::unix_seconds;
use keap_relay::signup::{
    MemoryQueue, MemoryReplayRecords, ReplayRecords, SignupQueue, SignupService, SignupSettings, TagRef,
};
use keap_relay::token::{Credential, CredentialSource, TokenError};
use keap_sandbox::{DEFAULT_API_KEY, Sandbox, SandboxConfig};
use lambda_http::http::{HeaderMap, StatusCode};
use lambda_http::{Body, Request};
use serde_json::Value;
use signup::event_signing::resign_event;
use signup::handler::{self, SigningKeyUnavailable, SignupDeps};

/// The key the sample events are signed with (and the local run's default).
pub const SIGNING_KEY: &str = "local-signup-signing-key";
pub const WELCOME_TAG: &str = "Welcome";

/// A credential source whose behaviour each test picks.
pub struct TestCredentials {
    first: Mutex<Result<Credential, fn() -> TokenError>>,
    /// What `after_unauthorized` hands out (the "re-read" store value).
    refreshed: Credential,
    pub after_unauthorized_calls: AtomicUsize,
}

fn api_key(key: &str) -> Credential {
    Credential::ApiKey(SecretString::from(key.to_owned()))
}

impl TestCredentials {
    /// The sandbox's valid API key.
    pub fn valid() -> Self {
        Self::stale_then_valid(DEFAULT_API_KEY)
    }

    /// First a key Keap refuses; after a 401, the valid one (as if another process rotated).
    pub fn stale_then_valid(first: &str) -> Self {
        Self {
            first: Mutex::new(Ok(api_key(first))),
            refreshed: api_key(DEFAULT_API_KEY),
            after_unauthorized_calls: AtomicUsize::new(0),
        }
    }

    /// A key Keap refuses, before and after the re-read.
    pub fn revoked() -> Self {
        Self {
            first: Mutex::new(Ok(api_key("KeapAK-revoked"))),
            refreshed: api_key("KeapAK-revoked"),
            after_unauthorized_calls: AtomicUsize::new(0),
        }
    }

    /// Nobody connected Keap yet.
    pub fn not_connected() -> Self {
        Self {
            first: Mutex::new(Err(|| TokenError::NotConnected)),
            refreshed: api_key(DEFAULT_API_KEY),
            after_unauthorized_calls: AtomicUsize::new(0),
        }
    }

    pub fn reauth_calls(&self) -> usize {
        self.after_unauthorized_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl CredentialSource for TestCredentials {
    async fn credential(&self) -> Result<Credential, TokenError> {
        self.first.lock().unwrap().clone().map_err(|make| make())
    }

    async fn after_unauthorized(&self, _rejected: &Credential) -> Result<Credential, TokenError> {
        self.after_unauthorized_calls.fetch_add(1, Ordering::SeqCst);
        *self.first.lock().unwrap() = Ok(self.refreshed.clone());
        Ok(self.refreshed.clone())
    }
}

pub struct TestDeps {
    pub service: SignupService,
    pub queue: Option<Arc<MemoryQueue>>,
    pub replays: Arc<MemoryReplayRecords>,
}

#[async_trait]
impl SignupDeps for TestDeps {
    async fn signing_key(&self) -> Result<SecretString, SigningKeyUnavailable> {
        Ok(SecretString::from(SIGNING_KEY))
    }

    fn service(&self) -> &SignupService {
        &self.service
    }

    fn queue(&self) -> Option<&dyn SignupQueue> {
        self.queue.as_deref().map(|queue| queue as &dyn SignupQueue)
    }

    fn replays(&self) -> &dyn ReplayRecords {
        self.replays.as_ref()
    }
}

/// See [`Options::configure`].
pub type Configure = Box<dyn Fn(&Sandbox) -> keap_relay::config::SignupOptions>;

pub struct Options {
    pub credentials: TestCredentials,
    pub queue: bool,
    pub welcome_tag: Option<&'static str>,
    pub welcome_email: bool,
    pub retry_budget: Duration,
    /// Welcome goal and template, field settings, allow-lists.
    pub signup_options: keap_relay::config::SignupOptions,
    /// Sets the sandbox up and gives the options that name what it set up (in place of
    /// `signup_options`).
    pub configure: Option<Configure>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            credentials: TestCredentials::valid(),
            queue: false,
            welcome_tag: Some(WELCOME_TAG),
            welcome_email: true,
            retry_budget: Duration::from_secs(3),
            signup_options: Default::default(),
            configure: None,
        }
    }
}

pub struct Harness {
    pub sandbox: Sandbox,
    pub deps: TestDeps,
    pub credentials: Arc<TestCredentials>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("<no error code>")
    }
}

impl Harness {
    pub async fn start(options: Options) -> Harness {
        let sandbox = Sandbox::start(SandboxConfig::default()).await.expect("sandbox starts");
        let credentials = Arc::new(options.credentials);
        let settings = SignupSettings {
            welcome_tag: options.welcome_tag.map(TagRef::parse),
            welcome_email: options.welcome_email.then(|| WelcomeEmail {
                user_id: 1,
                subject: "Welcome!".into(),
                html_body: "<p>Glad you are here.</p>".into(),
            }),
            retry_budget: options.retry_budget,
            options: match &options.configure {
                Some(configure) => configure(&sandbox),
                None => options.signup_options,
            },
        };
        let api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(5));
        let queue = options.queue.then(|| Arc::new(MemoryQueue::new()));
        let service = SignupService::new(api, credentials.clone(), settings)
            .with_welcome_queue(queue.clone().map(|q| q as Arc<dyn SignupQueue>));
        Harness {
            sandbox,
            deps: TestDeps {
                service,
                queue,
                replays: Arc::new(MemoryReplayRecords::new()),
            },
            credentials,
        }
    }

    pub async fn send(&self, request: Request) -> Answer {
        let response = handler::handle(&request, &self.deps).await;
        let (parts, body) = response.into_parts();
        let json = match body {
            Body::Empty => Value::Null,
            body => serde_json::from_slice(body.as_ref()).expect("every answer is JSON"),
        };
        Answer {
            status: parts.status,
            headers: parts.headers,
            json,
        }
    }

    pub fn queued(&self) -> Vec<String> {
        self.deps.queue.as_ref().map(|q| q.messages()).unwrap_or_default()
    }
}

/// An event file from `events/`, as JSON.
pub use test_support::events::json as event;
/// The event as API Gateway would deliver it, through lambda_http's own deserializer.
#[allow(unused_imports)] // not every test file sends a stored event as is
pub use test_support::events::to_request as request;

/// The event re-signed now with `key`.
pub fn signed_with(event: &Value, key: &str, at: i64) -> Request {
    let text = resign_event(&event.to_string(), &SecretString::from(key.to_owned()), at).unwrap();
    lambda_http::request::from_str(&text).expect("a valid API Gateway v2 event")
}

pub fn now() -> i64 {
    unix_seconds(std::time::SystemTime::now())
}

/// The event re-signed now with the test signing key, as a new request: every call gets a
/// timestamp of its own (a second later than the last one when needed), since the same signed
/// request twice is a replay (see tests/replays.rs).
pub fn signed(event: &Value) -> Request {
    static LAST_SIGNED_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = now();
    let next = |last: i64| now.max(last + 1);
    let last = LAST_SIGNED_AT
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(next(last)))
        .unwrap_or_else(|last| last);
    signed_with(event, SIGNING_KEY, next(last))
}

/// The stored event file, re-signed now.
pub fn signed_file(name: &str) -> Request {
    signed(&event(name))
}

/// The event with another (plain-text) body.
pub fn with_body(mut event: Value, body: &str) -> Value {
    event["body"] = Value::String(body.to_owned());
    event["isBase64Encoded"] = Value::Bool(false);
    event
}

/// The valid event with a JSON body.
pub fn valid_with(body: Value) -> Value {
    with_body(event("signup-valid.json"), &body.to_string())
}

pub fn with_header(mut event: Value, name: &str, value: Option<&str>) -> Value {
    let headers = event["headers"].as_object_mut().unwrap();
    match value {
        Some(value) => headers.insert(name.to_owned(), Value::String(value.to_owned())),
        None => headers.remove(name),
    };
    event
}
