//! Hostile input to `POST /signup`, over HTTP through the API Gateway stand-in to the real
//! handler and a Keap sandbox. Covers what the signup function's own tests do not: replays of a
//! captured request, signatures bound to the exact bytes, hostile signature headers, bodies
//! that are not text, Unicode edge cases in names, and the longest valid address.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::signup::signature::{self, unix_seconds};
use keap_relay::signup::{QueuedMessage, ReplayRecords, SignupQueue, SignupService};
use relay_tests::relay_server::{self, RelayOptions, RelayServer, SIGNING_KEY};
use serde_json::{Value, json};
use signup::handler::{SigningKeyUnavailable, SignupDeps};

struct Answer {
    status: u16,
    json: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("<none>")
    }
}

fn now() -> i64 {
    unix_seconds(SystemTime::now())
}

fn key() -> SecretString {
    SecretString::from(SIGNING_KEY)
}

async fn start() -> RelayServer {
    relay_server::start(RelayOptions::default())
        .await
        .expect("relay starts")
}

async fn post(relay: &RelayServer, body: impl Into<Vec<u8>>, headers: &[(&str, &[u8])]) -> Answer {
    let mut request = reqwest::Client::new()
        .post(format!("{}/signup", relay.url()))
        .body(body.into());
    let mut has_content_type = false;
    for (name, value) in headers {
        has_content_type |= name.eq_ignore_ascii_case("content-type");
        request = request.header(
            *name,
            reqwest::header::HeaderValue::from_bytes(value).expect("a header value"),
        );
    }
    if !has_content_type {
        request = request.header("content-type", "application/json");
    }
    let response = request.send().await.expect("the relay answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!(status < 500, "a 5xx ({status}) for hostile input: {text}");
    Answer {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn post_signed(relay: &RelayServer, body: &[u8]) -> Answer {
    let header = signature::sign(&key(), now(), body);
    post(relay, body.to_vec(), &[("x-signature", header.as_bytes())]).await
}

/// The signup function's dependencies seen from another moment: what a replay later sees.
struct At<'a> {
    inner: &'a signup::AppDeps,
    now: SystemTime,
}

#[async_trait]
impl SignupDeps for At<'_> {
    async fn signing_key(&self) -> Result<SecretString, SigningKeyUnavailable> {
        self.inner.signing_key().await
    }

    fn service(&self) -> &SignupService {
        self.inner.service()
    }

    fn queue(&self) -> Option<&dyn SignupQueue> {
        self.inner.queue()
    }

    fn replays(&self) -> &dyn ReplayRecords {
        self.inner.replays()
    }

    fn now(&self) -> SystemTime {
        self.now
    }
}

/// The same captured request bytes, handed to the handler as API Gateway would at `at`.
async fn replay(relay: &RelayServer, body: &[u8], header: &str, at: SystemTime) -> u16 {
    let event = relay_server::signup_request(body, header);
    let deps = At {
        inner: &relay.functions.signup,
        now: at,
    };
    signup::handler::handle(&event, &deps).await.status().as_u16()
}

#[tokio::test]
async fn a_captured_request_replayed_is_harmless_inside_the_window_and_refused_after_it() {
    let relay = start().await;
    let body = br#"{"email":"replayed@example.com","given_name":"Rae"}"#;
    let signed_at = SystemTime::now();
    let header = signature::sign(&key(), unix_seconds(signed_at), body);

    assert_eq!(replay(&relay, body, &header, signed_at).await, 201);
    let writes = |relay: &RelayServer| {
        let stats = relay.sandbox.stats();
        stats.calls_to("PUT", "/crm/rest/v1/contacts") + stats.calls_to("POST", "/crm/rest/v1/contacts")
    };
    let writes_after_the_original = writes(&relay);
    // Inside the 300 s window a replay gets the original answer (201, not 200 "updated") and
    // reaches neither Keap nor the queue (docs/security.md, item 3), also with the header
    // rewritten around the same MAC (entries reordered, upper-cased, a junk entry added).
    let mac = header.split_once("v1=").unwrap().1;
    let rewritten = format!("v1=00,t={},v1={}", unix_seconds(signed_at), mac.to_ascii_uppercase());
    for header in [header.as_str(), rewritten.as_str()] {
        assert_eq!(
            replay(&relay, body, header, signed_at + Duration::from_secs(300)).await,
            201
        );
    }
    assert_eq!(writes(&relay), writes_after_the_original, "no replay reached Keap");
    // One second past the tolerance the identical bytes are refused, either way in time.
    assert_eq!(
        replay(&relay, body, &header, signed_at + Duration::from_secs(301)).await,
        401
    );
    assert_eq!(
        replay(&relay, body, &header, signed_at - Duration::from_secs(301)).await,
        401
    );

    let stats = relay.sandbox.stats();
    assert_eq!((stats.contacts_created, stats.emails_queued), (1, 1), "{stats:?}");
}

#[tokio::test]
async fn a_signature_covers_the_exact_bytes_and_timestamp() {
    let relay = start().await;
    let body = r#"{"email":"exact@example.com","given_name":"Ex"}"#;
    let t = now();
    let header = signature::sign(&key(), t, body.as_bytes());
    let mac = header.split_once("v1=").unwrap().1.to_owned();
    let same_json_other_bytes = [
        r#"{"given_name":"Ex","email":"exact@example.com"}"#.to_owned(),
        r#"{ "email": "exact@example.com", "given_name": "Ex" }"#.to_owned(),
        format!("{body}\n"),
        body.replace("Ex", "\\u0045x"),
    ];
    for other in &same_json_other_bytes {
        let answer = post(&relay, other.clone(), &[("x-signature", header.as_bytes())]).await;
        assert_eq!((answer.status, answer.code()), (401, "invalid_signature"), "{other}");
    }
    for moved in [t - 1, t + 1] {
        let header = format!("t={moved},v1={mac}");
        let answer = post(&relay, body, &[("x-signature", header.as_bytes())]).await;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "invalid_signature"),
            "t moved to {moved}"
        );
    }
    // A signature made with another key (a leaked key of another deployment).
    let foreign = signature::sign(&SecretString::from("another-deployment-key"), t, body.as_bytes());
    assert_eq!(
        post(&relay, body, &[("x-signature", foreign.as_bytes())]).await.status,
        401
    );
    assert_eq!(relay.sandbox.stats().contacts_created, 0);
    // The genuine one still works (the header is case-insensitive on the wire).
    assert_eq!(
        post(&relay, body, &[("X-SIGNATURE", header.as_bytes())]).await.status,
        201
    );
}

#[tokio::test]
async fn hostile_signature_headers_are_refused_with_401_never_5xx() {
    let relay = start().await;
    let body = br#"{"email":"hostile-header@example.com"}"#;
    let t = now();
    let good = signature::sign(&key(), t, body);
    let many_entries = format!("t={t},{}", "v1=00,".repeat(1200));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("8 KiB of v1 entries", many_entries.into_bytes()),
        ("smallest timestamp", b"t=-9223372036854775808,v1=00".to_vec()),
        ("timestamp beyond i64", b"t=99999999999999999999,v1=00".to_vec()),
        ("non-ASCII bytes", b"t=1,v1=\xe9\xff".to_vec()),
        ("only separators", b",,,=,=".to_vec()),
        ("odd-length hex", format!("t={t},v1=abc").into_bytes()),
        ("the MAC as base64", format!("t={t},v1=3q2+7w==").into_bytes()),
        (
            "good MAC under another scheme name",
            good.replace("v1=", "v0=").into_bytes(),
        ),
        (
            "good header with a second timestamp",
            format!("{good},t={}", t - 1000).into_bytes(),
        ),
    ];
    for (what, header) in cases {
        let answer = post(&relay, body.to_vec(), &[("x-signature", &header)]).await;
        assert_eq!(answer.status, 401, "{what}: {:?}", answer.json);
        assert!(
            matches!(answer.code(), "invalid_signature" | "expired_signature"),
            "{what}: {}",
            answer.code()
        );
    }
    // Two X-Signature lines (one forged) reach the handler joined by a comma: refused, not
    // "any line matches".
    let request = reqwest::Client::new()
        .post(format!("{}/signup", relay.url()))
        .header("content-type", "application/json")
        .header("x-signature", good.as_str())
        .header("x-signature", format!("t={t},v1=00"))
        .body(body.to_vec());
    assert_eq!(request.send().await.unwrap().status(), 401);
    assert_eq!(relay.sandbox.stats().contacts_created, 0);
}

#[tokio::test]
async fn bodies_that_are_not_text_or_too_big_get_precise_4xx() {
    let relay = start().await;
    // Invalid UTF-8 arrives Base64-encoded from API Gateway; signed, it is invalid JSON.
    let binary = b"{\"email\":\"a@example.com\",\"given_name\":\"\xff\xfe\"}";
    let answer = post_signed(&relay, binary).await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_json"));
    // A lone surrogate escape, and nesting deeper than the parser's limit.
    let surrogate = br#"{"email":"a@example.com","given_name":"\ud800"}"#;
    assert_eq!(post_signed(&relay, surrogate).await.code(), "invalid_json");
    let deep = format!(
        r#"{{"email":"a@example.com","x":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert_eq!(post_signed(&relay, deep.as_bytes()).await.code(), "invalid_json");
    // Size is checked before the content type and the signature: no work for an attacker's
    // megabyte, whatever it claims to be.
    let over = vec![b'x'; 64 * 1024 + 1];
    let answer = post(&relay, over, &[("content-type", b"text/plain")]).await;
    assert_eq!((answer.status, answer.code()), (413, "payload_too_large"));
    // Far over the limit: refused by the gateway stand-in as API Gateway would, never a 5xx.
    let huge = vec![b'{'; 2 * 1024 * 1024];
    assert_eq!(post(&relay, huge, &[]).await.status, 413);
    assert_eq!(relay.sandbox.stats().contacts_created, 0);
}

#[tokio::test]
async fn unicode_in_names_is_kept_verbatim_and_control_characters_are_refused() {
    let relay = start().await;
    // Keap takes names of up to 40 characters (code points).
    let accepted = [
        ("emoji-40@example.com", "😀".repeat(40)),
        // Not control characters (they are format and separator characters): kept as sent.
        ("bidi@example.com", "\u{202e}evil\u{202c}".to_owned()),
        ("separator@example.com", "Line\u{2028}Para\u{2029}End".to_owned()),
        ("zwj@example.com", "👩\u{200d}💻 Ada".to_owned()),
        ("markup@example.com", "<script>alert(1)</script>".to_owned()),
        ("combining@example.com", "Zoe\u{0308}".to_owned()),
    ];
    for (email, name) in &accepted {
        let body = json!({ "email": email, "given_name": name }).to_string();
        let answer = post_signed(&relay, body.as_bytes()).await;
        assert_eq!(answer.status, 201, "{name:?}: {:?}", answer.json);
        assert!(
            !answer.json.to_string().contains(name.as_str()),
            "the name is not echoed back"
        );
        assert_eq!(&relay.sandbox.contact_by_email(email).unwrap().given_name, name);
    }
    // Past Keap's 40 characters the relay refuses the name itself, before calling Keap.
    let refused = [
        "😀".repeat(41),
        "😀".repeat(101),
        "Next\u{0085}Line".to_owned(),
        "Del\u{007f}ete".to_owned(),
        "Bell\u{0007}".to_owned(),
        "Csi\u{009b}31m".to_owned(),
    ];
    for name in &refused {
        let body = json!({ "email": "refused@example.com", "family_name": name }).to_string();
        let answer = post_signed(&relay, body.as_bytes()).await;
        assert_eq!((answer.status, answer.code()), (400, "invalid_field"), "{name:?}");
    }
    assert!(relay.sandbox.contact_by_email("refused@example.com").is_none());
}

#[tokio::test]
async fn exotic_valid_addresses_reach_keap_and_overlong_ones_get_a_precise_answer() {
    let relay = start().await;
    // 100 characters (Keap's limit), with every kind of character a real address may carry.
    let local = format!("o'brien+news_{}-x", "9".repeat(40));
    let exotic = format!(
        "{local}@mail.{}.sub-domain.example.co.uk",
        "d".repeat(100 - local.len() - 31)
    );
    assert_eq!(exotic.len(), 100);
    let answer = post_signed(&relay, json!({ "email": exotic }).to_string().as_bytes()).await;
    assert_eq!(answer.status, 201, "{:?}", answer.json);
    assert!(relay.sandbox.contact_by_email(&exotic).is_some());
    // Upper case and surrounding blanks: the same contact, not a second one.
    let shouted = format!("  {}  ", exotic.to_uppercase());
    let answer = post_signed(&relay, json!({ "email": shouted }).to_string().as_bytes()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);

    // The longest address RFC 5321 allows (64-character local part, 63-character labels, 254 in
    // all) passes the relay's check, and Keap, which stores at most 100, refuses it: 422.
    let local = "l".repeat(64);
    let longest = format!("{local}@{}.{}.{}.com", "a".repeat(63), "b".repeat(63), "c".repeat(57));
    assert_eq!(longest.len(), 254);
    let answer = post_signed(&relay, json!({ "email": longest }).to_string().as_bytes()).await;
    assert_eq!(
        (answer.status, answer.code()),
        (422, "keap_rejected"),
        "{:?}",
        answer.json
    );
    // One more character is the relay's own 400.
    let too_long = format!("{local}@{}.{}.{}.com", "a".repeat(63), "b".repeat(63), "c".repeat(58));
    let answer = post_signed(&relay, json!({ "email": too_long }).to_string().as_bytes()).await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_email"));

    assert_eq!(relay.sandbox.stats().contacts_created, 1);
    // The created contact's welcome is written ahead to the queue (docs/welcome-and-fields.md);
    // no signup is.
    let signups_queued = relay
        .queue
        .messages()
        .iter()
        .filter(|m| matches!(QueuedMessage::from_message(m), Ok(QueuedMessage::Signup(_))))
        .count();
    assert_eq!(signups_queued, 0, "refusals are not queued");
}
