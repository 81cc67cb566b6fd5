//! In-process micro benchmarks (criterion): the CPU work of a signup before Keap is called,
//! and the cost of a credential while the cached token is valid. No benchmark asserts a time.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use keap_relay::SecretString;
use keap_relay::app::App;
use keap_relay::config::{AuthMode, local_config};
use keap_relay::oauth_state::StateKey;
use keap_relay::signup::Signup;
use keap_relay::signup::signature::{self, unix_seconds};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_relay::token::{ApiKeySource, Connection, CredentialSource, TokenGrant, TokenSettings, TokenState};
use relay_bench::events::{SIGNING_KEY, SignupEvents};
use relay_bench::seed;
use signup::AppDeps;

/// Nothing listens here: the benches below never reach Keap.
const NO_KEAP: &str = "http://127.0.0.1:9";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn grant() -> TokenGrant {
    TokenGrant {
        access_token: SecretString::from("bench-access-token-0123456789abcdef0123456789abcdef"),
        refresh_token: SecretString::from("bench-refresh-token-0123456789abcdef0123456789abcdef"),
        expires_in: Duration::from_secs(86_400),
        scope: "full|ab123.infusionsoft.com".into(),
        account: Some("ab123.infusionsoft.com".into()),
    }
}

fn signup_checks(c: &mut Criterion) {
    let key = SecretString::from(SIGNING_KEY);
    let body = SignupEvents::body("ada.lovelace@example.com");
    let now = SystemTime::now();
    let header = signature::sign(&key, unix_seconds(now), body.as_bytes());
    let mut group = c.benchmark_group("signup");
    group.bench_function("verify_signature", |b| {
        b.iter(|| signature::verify(&key, Some(black_box(header.as_str())), black_box(body.as_bytes()), now))
    });
    group.bench_function("validate_body", |b| {
        b.iter(|| Signup::from_json(black_box(body.as_bytes())))
    });
    group.finish();
}

fn state_codecs(c: &mut Criterion) {
    let state = TokenState::connected(&grant(), 7, SystemTime::now());
    let json = {
        use keap_relay::ExposeSecret;
        state.to_secret().expose_secret().to_owned()
    };
    let mut group = c.benchmark_group("token_state");
    group.bench_function("parse", |b| b.iter(|| TokenState::from_json(black_box(&json))));
    group.bench_function("serialize", |b| b.iter(|| black_box(&state).to_secret()));
    group.finish();

    let key = StateKey::from_deployment_secrets(
        &SecretString::from("bench-signup-signing-key"),
        &SecretString::from("bench-admin-password"),
    );
    let redirect = "https://abc123defg.execute-api.us-east-1.amazonaws.com/oauth/callback";
    let issued = key.issue(redirect, false, SystemTime::now());
    let binding = [keap_relay::ExposeSecret::expose_secret(&issued.browser_binding)];
    let mut group = c.benchmark_group("oauth_state");
    group.bench_function("issue", |b| {
        b.iter(|| key.issue(black_box(redirect), false, SystemTime::now()))
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            key.verify(
                Some(black_box(issued.value.as_str())),
                &binding,
                redirect,
                SystemTime::now(),
            )
        })
    });
    group.finish();
}

fn cached_credentials(c: &mut Criterion) {
    let rt = runtime();
    let store = Arc::new(MemoryStore::new());
    let source = seed::token_source(
        store as Arc<dyn SecretStore>,
        "token",
        &format!("{NO_KEAP}/token"),
        TokenSettings::default(),
    )
    .expect("token source");
    rt.block_on(async {
        source.connect(grant(), false).await.expect("connect");
        source.credential().await.expect("first credential fills the cache");
    });
    let api_key = ApiKeySource::new(SecretString::from("KeapAK-bench"));
    let mut group = c.benchmark_group("credential");
    group.bench_function("cached_oauth_token", |b| b.to_async(&rt).iter(|| source.credential()));
    group.bench_function("api_key", |b| b.to_async(&rt).iter(|| api_key.credential()));
    group.finish();
}

/// The whole handler up to the signature check (a 401): request parsing is done, the signing
/// key is cached, nothing reaches Keap.
fn handler_rejection(c: &mut Criterion) {
    let rt = runtime();
    let store = Arc::new(MemoryStore::new());
    let config = local_config(AuthMode::OAuth, NO_KEAP);
    rt.block_on(seed::put_app_secret(store.as_ref(), &config.app_secret_id))
        .expect("app secret");
    let deps = AppDeps::from_app(&App::with_parts(config, store, None).expect("app"));
    let events = SignupEvents::new(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).expect("sample event");
    let event = events.event("ada.lovelace@example.com").expect("event");
    let forged = event.replace("v1=", "v1=00");
    let request = lambda_http::request::from_str(&forged).expect("request");
    let mut group = c.benchmark_group("handler");
    group.bench_function("reject_bad_signature", |b| {
        b.to_async(&rt).iter(|| signup::handler::handle(&request, &deps))
    });
    group.finish();
}

criterion_group!(
    benches,
    signup_checks,
    state_codecs,
    cached_credentials,
    handler_rejection
);
criterion_main!(benches);
