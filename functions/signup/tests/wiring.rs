//! The production wiring (`App` + `AppDeps`): app secret and token state in a memory store,
//! the real OAuth token source or API key, against an in-process Keap sandbox.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{SIGNING_KEY, request, signed_file};
use keap_relay::SecretString;
use keap_relay::app::App;
use keap_relay::config::{AuthMode, Config, WelcomeEmail, local_config};
use keap_relay::signup::{MemoryQueue, SignupQueue};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_relay::token::RotationPolicy;
use keap_sandbox::{DEFAULT_API_KEY, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Sandbox, SandboxConfig};
use lambda_http::http::StatusCode;
use serde_json::{Value, json};
use signup::AppDeps;
use signup::handler::handle;

async fn store_with(app_secret: Value) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    store
        .put_version("app", "operator-1", &SecretString::from(app_secret.to_string()))
        .await
        .unwrap();
    store
}

fn config(mode: AuthMode, sandbox: &Sandbox) -> Config {
    let welcome_email = WelcomeEmail {
        user_id: 1,
        subject: "Welcome!".into(),
        html_body: "<p>Hi</p>".into(),
    };
    Config {
        welcome_tag: Some("Welcome".into()),
        welcome_email: Some(welcome_email),
        ..local_config(mode, &sandbox.base_url())
    }
}

fn oauth_secret() -> Value {
    json!({ "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET, "signup_signing_key": SIGNING_KEY })
}

async fn status_and_code(deps: &AppDeps, request: lambda_http::Request) -> (StatusCode, Value) {
    let response = handle(&request, deps).await;
    let status = response.status();
    (status, serde_json::from_slice(response.body().as_ref()).unwrap())
}

async fn connect(app: &App, sandbox: &Sandbox) {
    app.connection
        .connect(test_support::grant::minted(sandbox), false)
        .await
        .expect("pair stored");
}

#[tokio::test]
async fn oauth_mode_refreshes_after_a_401_and_the_signup_goes_through() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let app = App::with_parts(
        config(AuthMode::OAuth, &sandbox),
        store_with(oauth_secret()).await,
        None,
    )
    .unwrap();
    connect(&app, &sandbox).await;
    let deps = AppDeps::from_app(&app);

    let (status, body) = status_and_code(&deps, signed_file("signup-valid.json")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Keap stops honouring the cached access token: 401, store re-read, one refresh, retry.
    sandbox.expire_access_tokens();
    let (status, body) = status_and_code(&deps, signed_file("signup-valid.json")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = sandbox.stats();
    assert_eq!((stats.unauthorized, stats.refreshes_served), (1, 1));
    assert_eq!(stats.emails_queued, 1);
}

#[tokio::test]
async fn a_401_on_the_token_another_process_stored_refreshes_that_one_instead_of_giving_up() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let store = store_with(oauth_secret()).await;
    let this = App::with_parts(config(AuthMode::OAuth, &sandbox), store.clone(), None).unwrap();
    connect(&this, &sandbox).await;
    let deps = AppDeps::from_app(&this);
    let (status, body) = status_and_code(&deps, signed_file("signup-valid.json")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Another process (the scheduled refresh) rotates; then Keap ends every access token,
    // the newly stored one included.
    let other = App::with_parts(config(AuthMode::OAuth, &sandbox), store, None).unwrap();
    // A refresh token older than zero is always due (the lead is capped at half the pair's life).
    let forced = RotationPolicy {
        lead: Duration::from_secs(100 * 86_400),
        max_refresh_age: Duration::ZERO,
    };
    other.connection.rotate_if_due(forced).await.unwrap();
    sandbox.expire_access_tokens();

    // 401 on the cached token, 401 on the stored one, then a refresh of the stored one.
    let (status, body) = status_and_code(&deps, signed_file("signup-valid.json")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = sandbox.stats();
    assert_eq!((stats.unauthorized, stats.refreshes_served), (2, 2));
}

#[tokio::test]
async fn oauth_mode_before_anyone_connected_queues_or_answers_keap_not_connected() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let store = store_with(oauth_secret()).await;

    let deps = AppDeps::from_app(&App::with_parts(config(AuthMode::OAuth, &sandbox), store.clone(), None).unwrap());
    let (status, body) = status_and_code(&deps, signed_file("signup-valid.json")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("keap_not_connected"))
    );

    let queue = Arc::new(MemoryQueue::new());
    let app = App::with_parts(
        config(AuthMode::OAuth, &sandbox),
        store,
        Some(queue.clone() as Arc<dyn SignupQueue>),
    )
    .unwrap();
    let (status, body) = status_and_code(&AppDeps::from_app(&app), signed_file("signup-valid.json")).await;
    assert_eq!((status, body["queued"].clone()), (StatusCode::ACCEPTED, json!(true)));
    assert_eq!(queue.messages().len(), 1);
}

#[tokio::test]
async fn api_key_mode_reads_the_key_from_the_app_secret() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let store = store_with(json!({ "api_key": DEFAULT_API_KEY, "signup_signing_key": SIGNING_KEY })).await;
    let deps = AppDeps::from_app(&App::with_parts(config(AuthMode::ApiKey, &sandbox), store, None).unwrap());

    let (status, body) = status_and_code(&deps, signed_file("signup-valid.json")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(sandbox.contact_by_email("ada.lovelace@example.com").is_some());
}

#[tokio::test]
async fn without_a_signing_key_every_signup_is_503_and_nothing_reaches_keap() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let store = store_with(json!({ "api_key": DEFAULT_API_KEY })).await;
    let deps = AppDeps::from_app(&App::with_parts(config(AuthMode::ApiKey, &sandbox), store, None).unwrap());

    let (status, body) = status_and_code(&deps, signed_file("signup-valid.json")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("signing_key_unavailable"))
    );
    // Still no 500 and no Keap call for a request that would have been refused anyway.
    let (status, _) = status_and_code(&deps, request(&common::event("signup-wrong-method.json"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(sandbox.stats().calls.is_empty());
}
