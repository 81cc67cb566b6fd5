//! The form route (`POST /form`, `POST /form/{form_name}`, their preflight) with the production
//! wiring (`App` + `Deps`) against an in-process Keap sandbox and a fake siteverify, fed the
//! sample events in `events/form-*.json`.

use std::sync::{Arc, Mutex};

use keap_relay::SecretString;
use keap_relay::app::App;
use keap_relay::config::{AuthMode, Config, WelcomeEmail, local_config};
use keap_relay::forms::FormsConfig;
use keap_relay::metrics::MetricsSink;
use keap_relay::signup::{MemoryQueue, SignupQueue};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_sandbox::siteverify::{FakeSiteverify, PASSING_TOKEN_PREFIX};
use keap_sandbox::{DEFAULT_API_KEY, Sandbox, SandboxConfig};
use lambda_http::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use test_support::events;

const ORIGIN: &str = "https://www.example.com";
const THANKS: &str = "https://www.example.com/thanks";
const CAPTCHA_SECRET: &str = "form-test-captcha-secret";

#[derive(Default)]
struct RecordedMetrics(Mutex<Vec<String>>);

impl MetricsSink for RecordedMetrics {
    fn emit(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

impl RecordedMetrics {
    fn blocked(&self, reason: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|line| line["Reason"] == reason && line["FormPostsBlocked"] == 1.0)
            .count()
    }
}

struct Harness {
    sandbox: Sandbox,
    deps: signup::Deps,
    metrics: Arc<RecordedMetrics>,
    queue: Arc<MemoryQueue>,
    siteverify: Option<FakeSiteverify>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn vars(extra: &[(&str, String)]) -> FormsConfig {
    let mut all: Vec<(String, String)> = vec![
        ("FORM_ALLOWED_ORIGINS".into(), ORIGIN.into()),
        ("FORM_THANK_YOU_URL".into(), THANKS.into()),
        ("FORM_TAGS".into(), "Website".into()),
        (
            "FORMS_JSON".into(),
            json!({ "contact": { "tags": ["Contact form"], "thank_you_url": "https://www.example.com/contact/thanks", "custom_fields": ["Plan"] } })
                .to_string(),
        ),
    ];
    for (name, value) in extra {
        all.retain(|(n, _)| n != name);
        all.push(((*name).to_owned(), value.clone()));
    }
    // Blank counts as unset, as in `FormsConfig::from_env`.
    FormsConfig::from_lookup(|name| {
        all.iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    })
    .unwrap()
}

#[derive(Default)]
struct Setup {
    forms: Vec<(&'static str, String)>,
    captcha: bool,
    captcha_secret_in_app_secret: bool,
    api_key: Option<&'static str>,
}

impl Harness {
    async fn start(setup: Setup) -> Harness {
        let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
        // The named form "contact" fills this custom field (FORMS_JSON below).
        sandbox.add_custom_field("Plan", "Text", &[]);
        let siteverify = if setup.captcha {
            Some(FakeSiteverify::start(CAPTCHA_SECRET).await.unwrap())
        } else {
            None
        };
        let mut forms = setup.forms.clone();
        if let Some(fake) = &siteverify {
            forms.push(("FORM_CAPTCHA_PROVIDER", "turnstile".into()));
            forms.push(("FORM_CAPTCHA_VERIFY_URL", fake.url()));
        }
        let config = Config {
            welcome_tag: Some("Welcome".into()),
            welcome_email: Some(WelcomeEmail {
                user_id: 1,
                subject: "Welcome!".into(),
                html_body: "<p>Hi</p>".into(),
            }),
            forms: vars(&forms),
            ..local_config(AuthMode::ApiKey, &sandbox.base_url())
        };
        let mut secret = json!({ "api_key": setup.api_key.unwrap_or(DEFAULT_API_KEY), "signup_signing_key": "k" });
        if setup.captcha_secret_in_app_secret {
            secret["captcha_secret"] = json!(CAPTCHA_SECRET);
        }
        let store = Arc::new(MemoryStore::new());
        store
            .put_version("app", "v1", &SecretString::from(secret.to_string()))
            .await
            .unwrap();
        let queue = Arc::new(MemoryQueue::new());
        let shared_queue: Arc<dyn SignupQueue> = queue.clone();
        let app = App::with_parts(config, store, Some(shared_queue)).unwrap();
        let metrics = Arc::new(RecordedMetrics::default());
        let deps = signup::Deps::from_app(&app).with_metrics(metrics.clone());
        Harness {
            sandbox,
            deps,
            metrics,
            queue,
            siteverify,
        }
    }

    fn siteverify(&self) -> &FakeSiteverify {
        self.siteverify.as_ref().expect("started with a human check")
    }

    async fn send(&self, event: &Value) -> Answer {
        let response = signup::route(&events::to_request(event), &self.deps).await;
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.as_ref().to_vec()).unwrap(),
        }
    }

    fn contact(&self, email: &str) -> Option<keap_sandbox::ContactView> {
        self.sandbox.contact_by_email(email)
    }

    fn tag_names(&self, email: &str) -> Vec<String> {
        let contact = self.contact(email).expect("contact exists");
        ["Welcome", "Website", "Contact form"]
            .into_iter()
            .filter(|name| {
                self.sandbox
                    .tag_by_name(name)
                    .is_some_and(|id| contact.tag_ids.contains(&id))
            })
            .map(str::to_owned)
            .collect()
    }
}

fn with_body(mut event: Value, body: &str) -> Value {
    event["body"] = Value::String(body.to_owned());
    event["isBase64Encoded"] = Value::Bool(false);
    event
}

fn with_header(mut event: Value, name: &str, value: Option<&str>) -> Value {
    let headers = event["headers"].as_object_mut().unwrap();
    match value {
        Some(value) => headers.insert(name.to_owned(), Value::String(value.to_owned())),
        None => headers.remove(name),
    };
    event
}

fn with_path(mut event: Value, path: &str) -> Value {
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event
}

#[tokio::test]
async fn a_plain_form_is_sent_to_keap_and_to_the_thank_you_page_and_repeats_are_harmless() {
    let harness = Harness::start(Setup::default()).await;
    let answer = harness.send(&events::json("form-urlencoded.json")).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.header("location"), Some(THANKS));
    let contact = harness.contact("grace.hopper@example.com").expect("created");
    assert_eq!(
        (contact.given_name.as_str(), contact.family_name.as_str()),
        ("Grace", "Hopper")
    );
    assert_eq!(harness.tag_names("grace.hopper@example.com"), ["Welcome", "Website"]);
    assert_eq!(contact.emails_received, 1);
    assert_eq!(
        contact.opt_in_reason.as_deref(),
        Some("Signed up through the website form")
    );

    let again = harness.send(&events::json("form-urlencoded.json")).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    let contact = harness.contact("grace.hopper@example.com").unwrap();
    assert_eq!(contact.emails_received, 1, "no second welcome email");
    assert_eq!(harness.metrics.blocked("honeypot"), 0, "an empty honeypot is no hit");
}

#[tokio::test]
async fn fetch_gets_json_with_cors_for_the_allowed_origin_and_its_preflight() {
    let harness = Harness::start(Setup::default()).await;
    let preflight = harness.send(&events::json("form-preflight.json")).await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert_eq!(preflight.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(preflight.header("access-control-allow-methods"), Some("POST, OPTIONS"));
    assert!(
        preflight
            .header("access-control-allow-headers")
            .unwrap()
            .contains("content-type")
    );
    assert_eq!(preflight.header("vary"), Some("Origin"));

    let answer = harness.send(&events::json("form-fetch-json.json")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json(), json!({ "ok": true }));
    assert_eq!(answer.header("access-control-allow-origin"), Some(ORIGIN));
    let contact = harness.contact("dorothy.vaughan@example.com").expect("created");
    assert_eq!(contact.family_name, "Vaughan");
    assert_eq!(contact.email_status, "SingleOptIn");

    // A refusal to an allowed origin carries CORS too, so the page's script can read it.
    let invalid = with_body(events::json("form-fetch-json.json"), r#"{"email":"not-an-address"}"#);
    let answer = harness.send(&invalid).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"]["code"], "invalid_email");
    assert_eq!(answer.header("access-control-allow-origin"), Some(ORIGIN));
}

#[tokio::test]
async fn a_named_form_takes_multipart_and_its_own_settings() {
    let harness = Harness::start(Setup::default()).await;
    let answer = harness.send(&events::json("form-multipart-named.json")).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(
        answer.header("location"),
        Some("https://www.example.com/contact/thanks")
    );
    assert_eq!(
        harness.tag_names("katherine.johnson@example.com"),
        ["Welcome", "Contact form"]
    );
    let unknown = with_path(events::json("form-multipart-named.json"), "/form/nope");
    let answer = harness.send(&unknown).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.body.contains("unknown_form") && !answer.body.contains("nope"));
}

#[tokio::test]
async fn a_foreign_origin_gets_403_and_nothing_reaches_keap() {
    let harness = Harness::start(Setup::default()).await;
    let answer = harness.send(&events::json("form-foreign-origin.json")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.body.contains("origin_not_allowed"));
    assert_eq!(answer.header("access-control-allow-origin"), None);
    assert!(
        answer.header("location").is_none(),
        "never sent on to the site's error page"
    );
    // Without Origin, the Referer decides; with neither, nothing is allowed.
    let referer_only = with_header(events::json("form-foreign-origin.json"), "origin", None);
    assert_eq!(harness.send(&referer_only).await.status, StatusCode::FORBIDDEN);
    let neither = with_header(referer_only, "referer", None);
    assert_eq!(harness.send(&neither).await.status, StatusCode::FORBIDDEN);
    let preflight = with_header(
        events::json("form-preflight.json"),
        "origin",
        Some("https://evil.example"),
    );
    let answer = harness.send(&preflight).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.header("access-control-allow-origin"), None);
    assert!(harness.contact("victim@example.com").is_none());
    assert_eq!(harness.sandbox.stats().calls.len(), 0, "no call to Keap at all");
    assert_eq!(harness.metrics.blocked("origin"), 4);
}

#[tokio::test]
async fn a_filled_honeypot_is_answered_as_a_success_counted_and_sends_nothing() {
    let harness = Harness::start(Setup::default()).await;
    let good = harness.send(&events::json("form-urlencoded.json")).await;
    let trap = harness.send(&events::json("form-honeypot.json")).await;
    assert_eq!(trap.status, good.status);
    assert_eq!(trap.header("location"), good.header("location"));
    assert_eq!(trap.body, good.body);
    assert!(harness.contact("bot@example.com").is_none());
    assert_eq!(harness.metrics.blocked("honeypot"), 1);
    let json_trap = with_body(
        events::json("form-fetch-json.json"),
        r#"{"email":"bot@example.com","_gotcha":"x"}"#,
    );
    let answer = harness.send(&json_trap).await;
    assert_eq!((answer.status, answer.json()), (StatusCode::OK, json!({ "ok": true })));
    assert!(harness.contact("bot@example.com").is_none());
}

#[tokio::test]
async fn the_human_check_is_required_and_verified_and_failures_send_nothing() {
    let harness = Harness::start(Setup {
        captcha: true,
        captcha_secret_in_app_secret: true,
        forms: vec![("FORM_ERROR_URL", "https://www.example.com/oops".into())],
        ..Setup::default()
    })
    .await;
    let missing = harness.send(&events::json("form-urlencoded.json")).await;
    assert_eq!(missing.status, StatusCode::SEE_OTHER);
    assert_eq!(
        missing.header("location"),
        Some("https://www.example.com/oops?error=captcha_missing")
    );
    let base = events::json("form-urlencoded.json");
    let body = base["body"].as_str().unwrap().to_owned();
    let forged = with_body(base.clone(), &format!("{body}&cf-turnstile-response=forged"));
    let answer = harness.send(&forged).await;
    assert_eq!(
        answer.header("location"),
        Some("https://www.example.com/oops?error=captcha_failed")
    );
    assert!(harness.contact("grace.hopper@example.com").is_none());
    assert_eq!(harness.metrics.blocked("captcha"), 2);

    let token = format!("{PASSING_TOKEN_PREFIX}.one");
    let passing = with_body(base.clone(), &format!("{body}&cf-turnstile-response={token}"));
    let answer = harness.send(&passing).await;
    assert_eq!(answer.header("location"), Some(THANKS), "{}", answer.body);
    assert!(harness.contact("grace.hopper@example.com").is_some());
    assert_eq!(harness.siteverify().remote_ips(), ["198.51.100.23", "198.51.100.23"]);
    // A token is good once (the provider says timeout-or-duplicate).
    let answer = harness.send(&passing).await;
    assert_eq!(
        answer.header("location"),
        Some("https://www.example.com/oops?error=captcha_failed")
    );
    // JSON callers get the code in the envelope.
    let json_missing = harness.send(&events::json("form-fetch-json.json")).await;
    assert_eq!(json_missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(json_missing.json()["error"]["code"], "captcha_missing");
}

#[tokio::test]
async fn without_captcha_secret_the_human_check_is_unavailable_and_nothing_is_sent() {
    let harness = Harness::start(Setup {
        captcha: true,
        captcha_secret_in_app_secret: false,
        ..Setup::default()
    })
    .await;
    let base = events::json("form-fetch-json.json");
    let event = with_body(
        base,
        &json!({ "email": "a@example.com", "cf-turnstile-response": format!("{PASSING_TOKEN_PREFIX}.x") }).to_string(),
    );
    let answer = harness.send(&event).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"]["code"], "captcha_unavailable");
    assert!(answer.header("retry-after").is_some());
    assert!(!answer.body.contains("captcha_secret") && !answer.body.contains("127.0.0.1"));
    assert!(harness.contact("a@example.com").is_none());
}

#[tokio::test]
async fn limits_and_bad_bodies_get_their_codes_and_values_are_never_reflected() {
    let harness = Harness::start(Setup {
        forms: vec![
            ("FORM_RATE_LIMIT_PER_MINUTE", "5".into()),
            ("FORM_THANK_YOU_URL", String::new()),
        ],
        ..Setup::default()
    })
    .await;
    let base = events::json("form-urlencoded.json");
    let hostile = with_body(
        base.clone(),
        "email=%3Cscript%3Ealert(1)%3C%2Fscript%3E&first_name=%3Cb%3Ex",
    );
    let answer = harness.send(&hostile).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(answer.body.contains("invalid_email"), "{}", answer.body);
    assert!(!answer.body.contains("<script>") && !answer.body.contains("alert(1)") && !answer.body.contains("<b>x"));
    assert!(
        answer
            .header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );

    let too_big = with_body(
        base.clone(),
        &format!("email=a%40example.com&x={}", "a".repeat(64 * 1024)),
    );
    assert_eq!(harness.send(&too_big).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    let text = with_header(base.clone(), "content-type", Some("text/plain"));
    assert_eq!(harness.send(&text).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let file = with_header(
        with_body(
            base.clone(),
            "--b\r\nContent-Disposition: form-data; name=\"cv\"; filename=\"cv.pdf\"\r\n\r\n%PDF\r\n--b--\r\n",
        ),
        "content-type",
        Some("multipart/form-data; boundary=b"),
    );
    let answer = harness.send(&file).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.contains("file_not_accepted"));
    let wrong_method = {
        let mut event = base.clone();
        event["requestContext"]["http"]["method"] = json!("GET");
        event
    };
    let answer = harness.send(&wrong_method).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.header("allow"), Some("POST, OPTIONS"));
    // Without a thank-you page, the relay's own.
    let answer = harness.send(&base).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("Thank you"));
    // Five posts from this address so far (the 405 is answered before the limit): the sixth waits.
    let answer = harness.send(&base).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{}", answer.body);
    assert!(answer.header("retry-after").is_some());
    assert_eq!(harness.metrics.blocked("rate_limit"), 1);
    let elsewhere = {
        let mut event = base.clone();
        event["requestContext"]["http"]["sourceIp"] = json!("192.0.2.44");
        event
    };
    assert_eq!(harness.send(&elsewhere).await.status, StatusCode::OK);
}

#[tokio::test]
async fn when_keap_cannot_take_it_the_post_is_queued_and_answered_as_a_success() {
    let harness = Harness::start(Setup {
        api_key: Some("KeapAK-not-known-to-the-sandbox"),
        ..Setup::default()
    })
    .await;
    let answer = harness.send(&events::json("form-fetch-json.json")).await;
    assert_eq!(
        (answer.status, answer.json()),
        (StatusCode::OK, json!({ "ok": true })),
        "{}",
        answer.body
    );
    let queued = harness.queue.messages();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].contains("dorothy.vaughan@example.com"));
}

#[tokio::test]
async fn the_signup_route_still_answers_as_before() {
    let harness = Harness::start(Setup::default()).await;
    let answer = harness.send(&events::json("signup-bad-signature.json")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}
