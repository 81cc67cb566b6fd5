//! The operator console: `GET /admin`, `/status`'s added sections, and the CSRF-protected
//! actions (redrive, discard, switching the event receiver on), over the real handler, the
//! sandbox and memory queues.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use keap_relay::config::{AuthMode, SignupOptions, WelcomeGoal};
use keap_relay::events::{EventType, MemorySink, receiver};
use keap_relay::keap::api::KeapApi;
use keap_relay::notices::{MemoryNotices, Notices};
use keap_relay::queues::{MemoryInspector, QueueInspector};
use keap_relay::signup::{GoalStatus, Signup, SignupService, SignupSettings};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_relay::token::RotationPolicy;
use lambda_http::Request;
use serde_json::Value;

fn get(path: &str) -> Request {
    event_with_route("status.json", "GET", path)
}

/// A console form POST, as a browser sends it from the console page.
fn post(path: &str, form: &str, extra: &[(&str, &str)]) -> Request {
    let mut json = event_json("status.json");
    json["rawPath"] = Value::String(path.into());
    json["requestContext"]["http"]["method"] = Value::String("POST".into());
    json["requestContext"]["http"]["path"] = Value::String(path.into());
    json["headers"]["content-type"] = Value::String("application/x-www-form-urlencoded".into());
    json["headers"]["sec-fetch-site"] = Value::String("same-origin".into());
    for (name, value) in extra {
        json["headers"][*name] = Value::String((*value).into());
    }
    json["body"] = Value::String(form.into());
    to_request(&json)
}

/// The CSRF token of the console page (its first `name="csrf"` field).
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form on the page") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

struct Console {
    harness: Harness,
    signups: Arc<MemoryInspector>,
    events: Arc<MemoryInspector>,
    state: Arc<MemoryStore>,
    sink: Arc<MemorySink>,
}

async fn console() -> Console {
    let mut harness = Harness::start().await;
    let signups = Arc::new(MemoryInspector::new());
    let events = Arc::new(MemoryInspector::new());
    let state = Arc::new(MemoryStore::new());
    let sink = Arc::new(MemorySink::new());
    harness.deps.console.signups = Some(signups.clone() as Arc<dyn QueueInspector>);
    harness.deps.console.events = Some(events.clone() as Arc<dyn QueueInspector>);
    harness.deps.console.events_receiver = Some("https://product.example.com".into());
    harness.deps.console.receiver_state = Some((state.clone() as Arc<dyn SecretStore>, "events-state".into()));
    harness.deps.console.emit = Some(sink.clone());
    Console {
        harness,
        signups,
        events,
        state,
        sink,
    }
}

#[tokio::test]
async fn the_console_needs_the_admin_and_keeps_to_itself() {
    let console = console().await;
    let anonymous = console
        .harness
        .run(event_with_route("oauth-start-unauthorized.json", "GET", "/admin"))
        .await;
    assert_eq!(anonymous.status(), 401);
    assert!(header(&anonymous, "www-authenticate").is_some());

    let page = console.harness.run(get("/admin")).await;
    assert_eq!(page.status(), 200);
    let csp = header(&page, "content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("form-action 'self'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(header(&page, "cache-control"), Some("no-store"));
    let html = body_text(&page);
    assert!(!html.contains("<script"), "no script at all");
    assert!(html.contains("name=\"viewport\""), "readable on a phone");
    assert!(
        html.contains("not connected") && html.contains("href=\"oauth/start\""),
        "{html}"
    );

    let wrong_method = console
        .harness
        .run(event_with_route("status.json", "POST", "/admin"))
        .await;
    assert_eq!(wrong_method.status(), 405);
    let wrong_method = console.harness.run(get("/admin/redrive")).await;
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(header(&wrong_method, "allow"), Some("POST"));
}

#[tokio::test]
async fn connection_states_and_a_reconnect_that_tells_the_product() {
    let console = console().await;
    let connected = console.harness.connect_via_browser("").await;
    assert_eq!(connected.status(), 200);
    let html = body_text(&console.harness.run(get("/admin")).await);
    assert!(html.contains("data-state=\"connected\""), "{html}");
    assert!(!html.contains("id=\"reconnect\""));
    assert!(console.sink.take().is_empty(), "a first connection is no recovery");

    // Keap refuses the refresh token: needs re-authorization, with reason and since when.
    console.harness.sandbox.expire_refresh_tokens();
    console.harness.sandbox.expire_access_tokens();
    let policy = RotationPolicy {
        lead: Duration::from_secs(86_400 + 60),
        max_refresh_age: Duration::ZERO,
    };
    let _ = console.harness.connection.rotate_if_due(policy).await;
    let html = body_text(&console.harness.run(get("/admin")).await);
    assert!(
        html.contains("data-state=\"needs_re-authorization\"") || html.contains("needs re-authorization"),
        "{html}"
    );
    assert!(html.contains("id=\"reconnect\"") && html.contains("Since "), "{html}");
    let status: Value = serde_json::from_str(&body_text(&console.harness.run(get("/status")).await)).unwrap();
    assert_eq!(status["needs_reauth"], true);
    assert!(status["needs_reauth_since"].is_string(), "{status}");

    console.harness.connect_via_browser("").await;
    let events = console.sink.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventType::ConnectionRecovered);
}

#[tokio::test]
async fn status_keeps_its_fields_and_adds_the_consoles() {
    let console = console().await;
    console.signups.counts.lock().unwrap().delayed = 2;
    console
        .signups
        .add_dead_letter("m-1", "{\"email\":\"a@example.com\"}", 5);
    let status: Value = serde_json::from_str(&body_text(&console.harness.run(event("status.json")).await)).unwrap();
    for field in [
        "mode",
        "connected",
        "account",
        "access_expires_at",
        "access_expires_in_seconds",
        "refresh_token_age_days",
        "last_refresh_at",
        "last_error",
        "needs_reauth",
        "needs_reauth_reason",
        "generation",
        "retry_not_before",
    ] {
        assert!(status.get(field).is_some(), "{field} kept: {status}");
    }
    assert_eq!(status["signup_queue"]["delayed"], 2);
    assert_eq!(status["signup_queue"]["dead_letters"], 1);
    assert_eq!(
        status["signup_queue"]["dead_letter_sample"][0]["subject"],
        "a@example.com"
    );
    assert_eq!(status["events"]["receiver_enabled"], true);
    assert!(status["history"].is_array());
}

#[tokio::test]
async fn redrive_and_discard_need_the_pages_csrf_token() {
    let console = console().await;
    console
        .signups
        .add_dead_letter("m-1", "{\"email\":\"a@example.com\"}", 5);
    console.events.add_dead_letter("e-1", "{}", 8);
    let page = body_text(&console.harness.run(get("/admin")).await);
    assert!(
        page.contains("a@example.com") && page.contains("Redrive") && page.contains("Discard"),
        "{page}"
    );
    let csrf = csrf_of(&page);

    // Forged: no token, a wrong one, or from another site with the right one.
    for (form, extra) in [
        ("queue=signups&id=m-1".to_owned(), vec![]),
        ("queue=signups&id=m-1&csrf=1.00".to_owned(), vec![]),
        (
            format!("queue=signups&id=m-1&csrf={csrf}"),
            vec![("sec-fetch-site", "cross-site")],
        ),
    ] {
        let refused = console.harness.run(post("/admin/redrive", &form, &extra)).await;
        assert_eq!(refused.status(), 403, "{form}");
    }
    assert!(console.signups.redriven().is_empty());

    let done = console
        .harness
        .run(post(
            "/admin/redrive",
            &format!("queue=signups&id=m-1&csrf={csrf}"),
            &[],
        ))
        .await;
    assert_eq!(done.status(), 303);
    assert_eq!(header(&done, "location"), Some("../admin?done=redriven"));
    assert_eq!(console.signups.redriven(), ["{\"email\":\"a@example.com\"}"]);

    let again = console
        .harness
        .run(post(
            "/admin/redrive",
            &format!("queue=signups&id=m-1&csrf={csrf}"),
            &[],
        ))
        .await;
    assert_eq!(header(&again, "location"), Some("../admin?done=not_found"));

    let discarded = console
        .harness
        .run(post("/admin/discard", &format!("queue=events&id=e-1&csrf={csrf}"), &[]))
        .await;
    assert_eq!(header(&discarded, "location"), Some("../admin?done=discarded"));
    assert_eq!(console.events.counts().await.unwrap().dead_letters, 0);

    let bad = console
        .harness
        .run(post("/admin/discard", &format!("queue=nope&id=e-1&csrf={csrf}"), &[]))
        .await;
    assert_eq!(bad.status(), 400);

    let notice = body_text(
        &console
            .harness
            .run(event_with_query_on("/admin", "done=redriven"))
            .await,
    );
    assert!(notice.contains("sent back to its queue"), "{notice}");
    let unknown = body_text(
        &console
            .harness
            .run(event_with_query_on("/admin", "done=%3Cscript%3E"))
            .await,
    );
    assert!(!unknown.contains("id=\"notice\""));
}

fn event_with_query_on(path: &str, query: &str) -> Request {
    let mut json = event_json("status.json");
    json["rawPath"] = Value::String(path.into());
    json["requestContext"]["http"]["path"] = Value::String(path.into());
    json["rawQueryString"] = Value::String(query.into());
    let mut parsed = serde_json::Map::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        parsed.insert(key.into_owned(), Value::String(value.into_owned()));
    }
    json["queryStringParameters"] = Value::Object(parsed);
    to_request(&json)
}

#[tokio::test]
async fn a_receiver_switched_off_by_a_410_is_shown_and_switched_on_by_the_operator() {
    let console = console().await;
    receiver::disable(
        console.state.as_ref(),
        "events-state",
        "the receiver answered 410 Gone",
        SystemTime::now(),
    )
    .await
    .unwrap();
    let page = body_text(&console.harness.run(get("/admin")).await);
    assert!(
        page.contains("switched off") && page.contains("id=\"enable-receiver\""),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let done = console
        .harness
        .run(post("/admin/enable-events", &format!("csrf={csrf}"), &[]))
        .await;
    assert_eq!(header(&done, "location"), Some("../admin?done=receiver_enabled"));
    let state = receiver::load(console.state.as_ref(), "events-state").await.unwrap();
    assert!(!state.disabled);
    assert_eq!(state.enabled_by.as_deref(), Some("admin"));
}

/// A signup service over the harness's sandbox (API key) achieving `relay:signup` as its
/// welcome goal, noting what it sees in `notices`, as signup and signup-retry do.
fn goal_service(harness: &Harness, notices: &Arc<MemoryNotices>) -> SignupService {
    let settings = SignupSettings {
        welcome_tag: None,
        welcome_email: None,
        retry_budget: Duration::from_secs(2),
        options: SignupOptions {
            welcome_goal: Some(WelcomeGoal::Named {
                integration: "relay".into(),
                call_name: "signup".into(),
            }),
            ..SignupOptions::default()
        },
    };
    let api = KeapApi::new(
        reqwest::Client::new(),
        &harness.sandbox.api_url(),
        Duration::from_secs(5),
    );
    SignupService::new(api, harness.connection.clone(), settings)
        .with_notices(Some(notices.clone() as Arc<dyn Notices>))
}

async fn status(harness: &Harness) -> Value {
    serde_json::from_str(&body_text(&harness.run(get("/status")).await)).unwrap()
}

async fn goal_status(service: &SignupService, email: &str) -> GoalStatus {
    let signup = Signup::from_json(format!(r#"{{"email":"{email}"}}"#).as_bytes()).unwrap();
    let outcome = service.process(&signup).await.unwrap();
    outcome.welcome_goal.expect("a goal is configured").status
}

#[tokio::test]
async fn a_welcome_goal_nobody_listens_to_shows_on_status_and_the_console_until_a_campaign_starts() {
    let mut harness = Harness::with(
        AuthMode::ApiKey,
        app_secret(keap_sandbox::DEFAULT_CLIENT_SECRET, Some(ADMIN_PASSWORD)),
    )
    .await;
    let notices = Arc::new(MemoryNotices::new());
    harness.deps.console.notices = Some(notices.clone() as Arc<dyn Notices>);
    harness.deps.console.welcome.goal = Some("relay:signup".into());
    let service = goal_service(&harness, &notices);
    let before = status(&harness).await;
    assert_eq!(before["welcome"]["goal"], "relay:signup");
    assert!(before["welcome"]["goal_without_listener"].is_null(), "{before}");

    // two signups in a row, no campaign listens: both warned about, one write
    assert_eq!(goal_status(&service, "ada@example.com").await, GoalStatus::NoListener);
    assert_eq!(goal_status(&service, "grace@example.com").await, GoalStatus::NoListener);
    assert_eq!(notices.writes(), 1, "rate limited");
    let seen = status(&harness).await;
    let notice = &seen["welcome"]["goal_without_listener"];
    assert_eq!(notice["goal"], "relay:signup", "{seen}");
    assert!(notice["first_seen_at"].as_str().unwrap().ends_with('Z'), "{seen}");
    assert!(notice["last_seen_at"].is_string(), "{seen}");
    // exactly the fields openapi.yaml lists (additionalProperties: false there)
    let keys = |value: &Value| value.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&seen["welcome"]),
        ["email", "goal", "goal_without_listener", "tag"]
    );
    assert_eq!(keys(notice), ["first_seen_at", "goal", "last_seen_at"]);
    let page = body_text(&harness.run(get("/admin")).await);
    assert!(
        page.contains("id=\"welcome-goal-without-listener\"") && page.contains("relay:signup"),
        "{page}"
    );

    // a deployment configured with another goal does not show this one's notice
    harness.deps.console.welcome.goal = Some("relay:other".into());
    assert!(status(&harness).await["welcome"]["goal_without_listener"].is_null());
    harness.deps.console.welcome.goal = Some("relay:signup".into());

    // someone publishes the campaign: the next achievement starts it and clears the notice
    harness.sandbox.add_campaign("relay", "signup", None);
    assert_eq!(goal_status(&service, "mary@example.com").await, GoalStatus::Achieved);
    let fixed = status(&harness).await;
    assert!(fixed["welcome"]["goal_without_listener"].is_null(), "{fixed}");
    assert_eq!(notices.writes(), 2);
    let page = body_text(&harness.run(get("/admin")).await);
    assert!(!page.contains("welcome-goal-without-listener"), "{page}");
}
