//! Hostile answers from "Keap" (issue 14, items 4 and 5), against the production wiring
//! (`App::with_parts`: the one HTTP client, the Keap clients, the token source, the signup
//! service and the signup function's handler), with a tiny local server in Keap's place.
//!
//! - A redirect (301, 302, 303, 307, 308) to another port is not followed: the other port
//!   receives nothing (no `X-Keap-API-Key`, no client secret, no refresh token), each call is
//!   an error (never a success) and a signup is queued, not answered as created or refused.
//! - A `Retry-After: 18446744073709551615` (2^64 - 1 seconds) on a 429, from the REST API or
//!   the token endpoint, neither panics nor makes anyone wait: the signup is queued, or
//!   answered 503 with a `Retry-After` of at most an hour.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keap_relay::SecretString;
use keap_relay::app::App;
use keap_relay::config::{AppSecret, AuthMode, Config};
use keap_relay::keap::MAX_RETRY_AFTER;
use keap_relay::keap::api::{ApiError, ContactUpsert};
use keap_relay::keap::oauth::OAuthError;
use keap_relay::signup::signature::{self, unix_seconds};
use keap_relay::signup::{MemoryQueue, Signup, SignupError, SignupQueue};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_relay::token::{Credential, TokenError, TokenGrant};
use relay_tests::relay_server::signup_request;
use serde_json::{Value, json};

const API_KEY: &str = "KeapAK-never-leaves-keap";
/// What a followed redirect would carry to its target.
const CLIENT_SECRET: &str = "client-secret-never-leaves-keap";
const REFRESH_TOKEN: &str = "refresh-token-never-leaves-keap";
const SIGNING_KEY: &str = "hostile-keap-signing-key";
const HUGE_RETRY_AFTER: &str = "18446744073709551615";

/// What a local server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    /// Header names and values, and the bodies, of every request.
    text: Mutex<String>,
}

/// How the stand-in for Keap answers every request.
#[derive(Clone)]
enum Answer {
    /// This status (held in the atomic, so a test can change it) with `Location` pointing at
    /// `elsewhere`, on the same path.
    Redirect {
        status: Arc<AtomicU16>,
        elsewhere: SocketAddr,
    },
    /// 429 with `Retry-After: 18446744073709551615`.
    Throttle,
    /// 200 with a body every client call would accept.
    Success,
}

#[derive(Clone)]
struct Server {
    answer: Answer,
    seen: Arc<Seen>,
}

async fn answer(State(server): State<Server>, uri: Uri, headers: HeaderMap, body: String) -> Response {
    server.seen.requests.fetch_add(1, Ordering::SeqCst);
    {
        let mut text = server.seen.text.lock().unwrap();
        for (name, value) in &headers {
            text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        text.push_str(&body);
        text.push('\n');
    }
    match &server.answer {
        Answer::Redirect { status, elsewhere } => {
            let status = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
            let location = format!("http://{elsewhere}{uri}");
            (status, [(header::LOCATION, location)]).into_response()
        }
        Answer::Throttle => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HUGE_RETRY_AFTER)],
            r#"{"message":"slow down"}"#,
        )
            .into_response(),
        Answer::Success => axum::Json(json!({
            "id": 1,
            "access_token": "issued-elsewhere",
            "refresh_token": "issued-elsewhere",
            "expires_in": 86400,
            "scope": "full|elsewhere",
        }))
        .into_response(),
    }
}

async fn serve(answer: Answer) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let router = Router::new().fallback(self::answer).with_state(Server {
        answer,
        seen: seen.clone(),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, seen)
}

fn app_secret_json() -> String {
    json!({
        "client_id": "hostile-keap-client",
        "client_secret": CLIENT_SECRET,
        "api_key": API_KEY,
        "signup_signing_key": SIGNING_KEY,
        "admin_password": "hostile-keap-admin",
    })
    .to_string()
}

/// The production wiring with Keap at `keap`, over a memory store holding the app secret.
async fn app(keap: SocketAddr, mode: AuthMode, queue: Option<Arc<MemoryQueue>>) -> App {
    let config = Config {
        auth_mode: mode,
        app_secret_id: "app".into(),
        token_secret_id: "token".into(),
        redirect_uri: Some("https://relay.example/oauth/callback".into()),
        api_url: format!("http://{keap}/crm/rest"),
        token_url: format!("http://{keap}/token"),
        authorize_url: format!("http://{keap}/app/oauth/authorize"),
        http_timeout: Duration::from_secs(5),
        signup_retry_budget: Duration::from_millis(300),
        ..Config::defaults()
    };
    config.validate().expect("a loopback Keap is a valid one");
    let store = Arc::new(MemoryStore::new());
    store
        .put_version("app", "v1", &SecretString::from(app_secret_json()))
        .await
        .unwrap();
    let store: Arc<dyn SecretStore> = store;
    App::with_parts(config, store, queue.map(|q| q as Arc<dyn SignupQueue>)).unwrap()
}

fn signup_body() -> Vec<u8> {
    br#"{"email":"hostile.keap@example.com","given_name":"Ada"}"#.to_vec()
}

/// A signed `POST /signup` through the signup function's handler; returns status, headers, JSON.
/// Each call is a new signed request (its own second), not a replay of the previous one.
async fn post_signup(app: &App) -> (u16, lambda_http::http::HeaderMap, Value) {
    static LAST_SIGNED_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let body = signup_body();
    let now = unix_seconds(SystemTime::now());
    let previous = LAST_SIGNED_AT.fetch_max(now, Ordering::SeqCst);
    let at = if previous >= now {
        LAST_SIGNED_AT.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now
    };
    let header = signature::sign(&SecretString::from(SIGNING_KEY), at, &body);
    let deps = signup::Deps::from_app(app);
    let response = signup::handle(&signup_request(&body, &header), &deps).await;
    let (parts, body) = response.into_parts();
    let json = serde_json::from_slice(body.as_ref()).unwrap_or(Value::Null);
    (parts.status.as_u16(), parts.headers, json)
}

#[tokio::test]
async fn a_redirect_from_keap_is_not_followed_and_nothing_reaches_its_target() {
    let (elsewhere, elsewhere_saw) = serve(Answer::Success).await;
    let status = Arc::new(AtomicU16::new(307));
    let (keap, keap_saw) = serve(Answer::Redirect {
        status: status.clone(),
        elsewhere,
    })
    .await;
    let queue = Arc::new(MemoryQueue::new());
    let app = app(keap, AuthMode::ApiKey, Some(queue.clone())).await;
    let secret = AppSecret::from_json(&app_secret_json()).unwrap();
    let oauth = app.oauth.get(&secret).await.unwrap();

    for code in [307, 308, 301, 302, 303] {
        status.store(code, Ordering::SeqCst);

        let upsert = ContactUpsert {
            email: "hostile.keap@example.com".into(),
            ..ContactUpsert::default()
        };
        let credential = Credential::ApiKey(SecretString::from(API_KEY));
        match app.api.upsert_contact(&credential, &upsert).await {
            Err(error @ ApiError::Protocol { .. }) => {
                assert!(error.to_string().contains("redirect"), "{code}: {error}")
            }
            other => panic!("{code}: a redirect of the REST API must be an error, got {other:?}"),
        }

        let refreshed = oauth.refresh(&SecretString::from(REFRESH_TOKEN)).await;
        match &refreshed {
            Err(error @ OAuthError::Protocol { status, .. }) => {
                assert_eq!(*status, code);
                assert!(!error.may_have_rotated(), "a redirect issued nothing");
            }
            other => panic!("{code}: a redirect of the token endpoint must be an error, got {other:?}"),
        }
        let exchanged = oauth
            .exchange_code("an-authorization-code", "https://relay.example/oauth/callback")
            .await;
        assert!(
            matches!(exchanged, Err(OAuthError::Protocol { status, .. }) if status == code),
            "{code}: {exchanged:?}"
        );

        let (status_code, _, answer) = post_signup(&app).await;
        assert_eq!(status_code, 202, "{code}: a signup Keap redirected is queued: {answer}");
    }

    assert_eq!(queue.messages().len(), 5, "one queued signup per redirect status");
    assert!(
        keap_saw.requests.load(Ordering::SeqCst) >= 20,
        "the calls reached the stand-in"
    );
    assert!(
        keap_saw.text.lock().unwrap().contains(API_KEY),
        "the stand-in saw the key"
    );
    assert_eq!(
        elsewhere_saw.requests.load(Ordering::SeqCst),
        0,
        "the redirect target received requests:\n{}",
        elsewhere_saw.text.lock().unwrap()
    );
}

#[tokio::test]
async fn a_retry_after_of_two_to_the_64_seconds_from_the_rest_api_neither_panics_nor_waits() {
    let (keap, keap_saw) = serve(Answer::Throttle).await;

    // The service itself: Keap's wait is passed on, capped.
    let app_without_queue = app(keap, AuthMode::ApiKey, None).await;
    let signup = Signup::from_json(&signup_body()).unwrap();
    let started = Instant::now();
    match app_without_queue.signup_service().process(&signup).await {
        Err(error @ SignupError::Unavailable { .. }) => {
            assert_eq!(error.retry_after(), Some(MAX_RETRY_AFTER), "{error}")
        }
        other => panic!("a throttled signup is unavailable, got {other:?}"),
    }

    // Without a queue: 503 with a Retry-After a client can use.
    let (status, headers, answer) = post_signup(&app_without_queue).await;
    assert_eq!(status, 503, "{answer}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "Retry-After: {retry_after}");

    // With a queue: 202, queued.
    let queue = Arc::new(MemoryQueue::new());
    let app_with_queue = app(keap, AuthMode::ApiKey, Some(queue.clone())).await;
    let (status, _, answer) = post_signup(&app_with_queue).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(queue.messages().len(), 1);

    assert!(
        started.elapsed() < Duration::from_secs(20),
        "nobody waited on Keap's Retry-After"
    );
    // Keap saw the first call; the process's pacer then held the later ones for Keap's
    // (capped) wait rather than sending them into the throttle (docs/pacing.md).
    assert!(keap_saw.requests.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_retry_after_of_two_to_the_64_seconds_from_the_token_endpoint_neither_panics_nor_waits() {
    let (keap, _) = serve(Answer::Throttle).await;
    let app = app(keap, AuthMode::OAuth, None).await;

    // The client: a transient refusal with the capped wait.
    let secret = AppSecret::from_json(&app_secret_json()).unwrap();
    let refreshed = app
        .oauth
        .get(&secret)
        .await
        .unwrap()
        .refresh(&SecretString::from(REFRESH_TOKEN))
        .await;
    assert!(
        matches!(refreshed, Err(OAuthError::Transient { status: 429, retry_after: Some(wait) }) if wait == MAX_RETRY_AFTER),
        "{refreshed:?}"
    );

    // The token source: a stored pair whose access token has expired; the refresh is refused
    // with the huge Retry-After, the shared backoff is stored, and the signup is answered.
    let grant = TokenGrant {
        access_token: SecretString::from("expired-access-token"),
        refresh_token: SecretString::from(REFRESH_TOKEN),
        expires_in: Duration::ZERO,
        scope: "full|hostile".into(),
        account: Some("hostile".into()),
    };
    app.connection.connect(grant, false).await.unwrap();
    match app.connection.credential().await {
        Err(TokenError::Unavailable { retry_after, .. }) => {
            let wait = retry_after.expect("a wait");
            assert!(wait <= Duration::from_secs(2 * 3600), "{wait:?}");
        }
        other => panic!("a throttled refresh leaves the connection unavailable, got {other:?}"),
    }
    let status = app.connection.status().await.unwrap();
    assert!(status.retry_not_before.is_some(), "{status:?}");
    assert!(status.connected, "a throttled refresh spends nothing: {status:?}");

    let (code, headers, answer) = post_signup(&app).await;
    assert_eq!(code, 503, "{answer}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2 * 3600).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(!answer.to_string().contains(REFRESH_TOKEN));
}
