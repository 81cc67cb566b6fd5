//! `POST /signup` end to end: the sample events from `events/`, re-signed now, through the
//! real handler, `SignupService` and Keap client, against an in-process Keap sandbox.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use keap_relay::signup::QueuedSignup;
use lambda_http::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_valid_signup_creates_the_contact_tags_it_and_sends_the_welcome_email() {
    let h = Harness::start(Options::default()).await;
    let answer = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["created"], true);
    assert_eq!(
        answer.json["tags"],
        json!({ "Newsletter": "SUCCESS", "Welcome": "SUCCESS" })
    );
    assert_eq!(answer.json["welcome_email"], "sent");
    let contact = h
        .sandbox
        .contact_by_email("ada.lovelace@example.com")
        .expect("contact stored in Keap");
    assert_eq!(answer.json["contact_id"], contact.id.to_string());
    assert_eq!(
        (contact.given_name.as_str(), contact.family_name.as_str()),
        ("Ada", "Lovelace")
    );
    let welcome = h.sandbox.tag_by_name(WELCOME_TAG).expect("welcome tag created");
    let newsletter = h.sandbox.tag_by_name("Newsletter").expect("requested tag created");
    assert!(contact.tag_ids.contains(&welcome) && contact.tag_ids.contains(&newsletter));
    assert_eq!(contact.emails_received, 1);
    assert!(contact.opt_in_reason.is_some(), "opt_in: true passes an opt-in reason");
}

#[tokio::test]
async fn repeating_a_signup_updates_the_contact_and_sends_no_second_email() {
    let h = Harness::start(Options::default()).await;
    assert_eq!(
        h.send(signed_file("signup-valid.json")).await.status,
        StatusCode::CREATED
    );
    let lookups_before = h.sandbox.stats().calls_to("GET", "/crm/rest/v1/tags");

    // The sender's second signup: a new signed request (the same one again is a replay: see
    // tests/replays.rs).
    let again = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
    assert_eq!(again.json["created"], false);
    assert_eq!(
        again.json["tags"],
        json!({ "Newsletter": "DUPLICATE", "Welcome": "DUPLICATE" })
    );
    assert_eq!(again.json["welcome_email"], "already_welcomed");
    let stats = h.sandbox.stats();
    assert_eq!((stats.contacts_created, stats.emails_queued), (1, 1));
    assert_eq!(
        h.sandbox
            .contact_by_email("ada.lovelace@example.com")
            .unwrap()
            .emails_received,
        1
    );
    // Tag names were resolved once and cached: no second lookup or creation.
    assert_eq!(stats.calls_to("GET", "/crm/rest/v1/tags"), lookups_before);
    assert_eq!(stats.tags_created, 2);
}

#[tokio::test]
async fn tag_ids_are_used_as_given_and_the_welcome_tag_may_be_an_id() {
    let h = Harness::start(Options {
        welcome_tag: None,
        ..Options::default()
    })
    .await;
    let first = h
        .send(signed(&valid_with(
            json!({ "email": "first@example.com", "tags": ["Vip"] }),
        )))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let vip = h.sandbox.tag_by_name("Vip").unwrap();

    let second = h
        .send(signed(&valid_with(
            json!({ "email": "second@example.com", "tags": [vip, vip.to_string()] }),
        )))
        .await;

    assert_eq!(second.status, StatusCode::CREATED, "{}", second.json);
    assert_eq!(second.json["tags"], json!({ vip.to_string(): "SUCCESS" }));
    assert!(
        h.sandbox
            .contact_by_email("second@example.com")
            .unwrap()
            .tag_ids
            .contains(&vip)
    );
}

#[tokio::test]
async fn a_base64_encoded_body_with_unicode_names_is_read_as_sent() {
    let h = Harness::start(Options::default()).await;
    let answer = h.send(signed_file("signup-base64.json")).await;

    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let contact = h.sandbox.contact_by_email("zoe.oconnor@example.ie").unwrap();
    assert_eq!(
        (contact.given_name.as_str(), contact.family_name.as_str()),
        ("Zoë", "O'Connor")
    );
    assert_eq!(contact.opt_in_reason, None, "opt_in: false sends no opt-in reason");
}

#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let h = Harness::start(Options::default()).await;
    let answer = h.send(signed_file("signup-wrong-method.json")).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.code(), "method_not_allowed");
    assert_eq!(answer.headers["allow"], "POST");
}

#[tokio::test]
async fn bad_signatures_are_401_with_their_own_codes() {
    let h = Harness::start(Options::default()).await;
    let valid = event("signup-valid.json");
    let cases = [
        (
            "stored bad-signature event (expired)",
            request(&event("signup-bad-signature.json")),
            "expired_signature",
        ),
        (
            "bad-signature event, fresh but wrong key",
            signed_with(&event("signup-bad-signature.json"), "not-the-signing-key", now()),
            "invalid_signature",
        ),
        ("stored valid event (expired)", request(&valid), "expired_signature"),
        (
            "301 s old",
            signed_with(&valid, SIGNING_KEY, now() - 301),
            "expired_signature",
        ),
        (
            "301 s in the future",
            signed_with(&valid, SIGNING_KEY, now() + 301),
            "expired_signature",
        ),
        (
            "missing header",
            request(&with_header(valid.clone(), "x-signature", None)),
            "missing_signature",
        ),
        (
            "garbage header",
            request(&with_header(valid.clone(), "x-signature", Some("sha256=abc"))),
            "invalid_signature",
        ),
    ];
    for (what, request, code) in cases {
        let answer = h.send(request).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::UNAUTHORIZED, code),
            "{what}"
        );
    }
    // A signature made over another body.
    let header = keap_relay::signup::signature::sign(&SIGNING_KEY.into(), now(), br#"{"email":"other@example.com"}"#);
    let answer = h.send(request(&with_header(valid, "x-signature", Some(&header)))).await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );
    assert_eq!(h.sandbox.stats().contacts_created, 0, "nothing reached Keap");
}

#[tokio::test]
async fn a_body_over_64_kib_is_413_and_one_at_the_limit_is_read() {
    let h = Harness::start(Options::default()).await;
    let padded = |len: usize| {
        let base = json!({ "email": "big@example.com", "padding": "" }).to_string();
        json!({ "email": "big@example.com", "padding": "x".repeat(len - base.len()) }).to_string()
    };
    let over = h
        .send(signed(&with_body(event("signup-valid.json"), &padded(64 * 1024 + 1))))
        .await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    let at_limit = h
        .send(signed(&with_body(event("signup-valid.json"), &padded(64 * 1024))))
        .await;
    assert_eq!(at_limit.status, StatusCode::CREATED, "{}", at_limit.json);

    // API Gateway Base64-encodes some bodies: the limit applies to the decoded bytes.
    let mut encoded = event("signup-valid.json");
    encoded["body"] = base64::engine::general_purpose::STANDARD
        .encode(padded(64 * 1024 + 1))
        .into();
    encoded["isBase64Encoded"] = true.into();
    let answer = h.send(signed(&encoded)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_body_that_is_not_json_by_content_type_is_415() {
    let h = Harness::start(Options::default()).await;
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let answer = h
            .send(signed(&with_header(
                event("signup-valid.json"),
                "content-type",
                content_type,
            )))
            .await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{content_type:?}"
        );
    }
    let answer = h
        .send(signed(&with_header(
            event("signup-valid.json"),
            "content-type",
            Some("application/json; charset=utf-8"),
        )))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
}

#[tokio::test]
async fn invalid_bodies_are_400_with_precise_codes() {
    let h = Harness::start(Options::default()).await;
    let file_cases = [
        ("signup-bad-json.json", "invalid_json"),
        ("signup-invalid-email.json", "invalid_email"),
    ];
    for (file, code) in file_cases {
        let answer = h.send(signed_file(file)).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, code),
            "{file}"
        );
        assert!(answer.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let body_cases = [
        (json!([]), "invalid_json"),
        (json!({ "given_name": "Ada" }), "missing_email"),
        (json!({ "email": "" }), "missing_email"),
        (json!({ "email": 12 }), "invalid_field"),
        (json!({ "email": "ada@" }), "invalid_email"),
        (json!({ "email": "Ada <ada@example.com>" }), "invalid_email"),
        (json!({ "email": "ada@example.com", "opt_in": "yes" }), "invalid_field"),
        (
            json!({ "email": "ada@example.com", "tags": "Newsletter" }),
            "invalid_field",
        ),
        (
            json!({ "email": "ada@example.com", "tags": [{ "id": 1 }] }),
            "invalid_field",
        ),
        (json!({ "email": "ada@example.com", "given_name": 7 }), "invalid_field"),
        (
            json!({ "email": "ada@example.com", "given_name": "Ada\u{0000}" }),
            "invalid_field",
        ),
        (
            json!({ "email": "ada@example.com", "family_name": "Love\nlace" }),
            "invalid_field",
        ),
        (
            json!({ "email": "ada@example.com", "given_name": "\u{001b}[31mred" }),
            "invalid_field",
        ),
        (
            json!({ "email": "ada@example.com", "source": "x".repeat(101) }),
            "invalid_field",
        ),
    ];
    for (body, code) in body_cases {
        let answer = h.send(signed(&valid_with(body.clone()))).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, code),
            "{body}"
        );
    }
    assert_eq!(h.sandbox.stats().contacts_created, 0);
}

#[tokio::test]
async fn unicode_names_and_exotic_valid_addresses_are_accepted() {
    let h = Harness::start(Options::default()).await;
    for (email, given_name) in [
        ("first.last+signup@sub.example.co.uk", "Łukasz"),
        ("o'brien@example.ie", "Siobhán"),
        ("user_name-1@xn--bcher-kva.example", "由美"),
        ("x@example.museum", "Zoë 😀"),
    ] {
        let answer = h
            .send(signed(&valid_with(
                json!({ "email": email, "given_name": given_name, "unknown": [1, 2] }),
            )))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{email}: {}", answer.json);
        assert_eq!(h.sandbox.contact_by_email(email).unwrap().given_name, given_name);
    }
}

#[tokio::test]
async fn a_401_rereads_the_credential_and_retries_once() {
    let h = Harness::start(Options {
        credentials: TestCredentials::stale_then_valid("KeapAK-stale"),
        ..Options::default()
    })
    .await;
    let answer = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(h.credentials.reauth_calls(), 1);
    assert_eq!(h.sandbox.stats().unauthorized, 1);
}

#[tokio::test]
async fn a_credential_refused_after_a_reread_and_a_refresh_is_tried_again_later() {
    let h = Harness::start(Options {
        credentials: TestCredentials::revoked(),
        ..Options::default()
    })
    .await;
    let answer = h.send(signed_file("signup-valid.json")).await;

    // The token source found the grant alive (a dead one is `needs_reauth`), so this is a
    // passing refusal: try later, do not park the signup as "not connected".
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "keap_unavailable")
    );
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(h.credentials.reauth_calls(), 2, "a re-read, then a refresh; no loop");
}

#[tokio::test]
async fn throttling_with_retry_after_is_waited_out_within_the_budget() {
    let h = Harness::start(Options::default()).await;
    h.sandbox.faults().throttle_next(1, Some(1));
    let answer = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(h.sandbox.stats().throttled, 1);
    assert_eq!(h.sandbox.stats().contacts_created, 1);
}

#[tokio::test]
async fn throttling_without_retry_after_backs_off_and_succeeds() {
    let h = Harness::start(Options::default()).await;
    h.sandbox.faults().throttle_next(2, None);
    let answer = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(h.sandbox.stats().throttled, 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_budget_is_passed_on_without_waiting() {
    let h = Harness::start(Options::default()).await;
    h.sandbox.faults().throttle_next(1, Some(120));
    let answer = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "keap_unavailable")
    );
    assert_eq!(answer.headers["retry-after"], "120");
    assert_eq!(h.sandbox.stats().throttled, 1, "no retry that the budget cannot cover");
}

#[tokio::test]
async fn keap_down_without_a_queue_is_503_with_retry_after() {
    let h = Harness::start(Options {
        retry_budget: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    h.sandbox.faults().set_server_error_rate(1.0);
    let answer = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "keap_unavailable")
    );
    assert!(answer.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(h.sandbox.stats().server_errors >= 2, "5xx is retried within the budget");
}

#[tokio::test]
async fn keap_down_with_a_queue_is_202_and_the_signup_waits_in_the_queue() {
    let h = Harness::start(Options {
        queue: true,
        retry_budget: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    h.sandbox.faults().set_server_error_rate(1.0);
    let answer = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["queued"], true);
    let queued = h.queued();
    assert_eq!(queued.len(), 1);
    let message = QueuedSignup::from_message(&queued[0]).unwrap();
    assert_eq!(answer.json["id"], message.id.to_string());
    assert_eq!(message.signup.email, "ada.lovelace@example.com");
    assert_eq!(message.signup.given_name.as_deref(), Some("Ada"));
}

#[tokio::test]
async fn a_keap_slower_than_the_time_left_before_the_deadline_gets_the_signup_queued_not_lost() {
    use lambda_http::RequestExt;
    let h = Harness::start(Options {
        queue: true,
        ..Options::default()
    })
    .await;
    h.sandbox.faults().set_latency(Duration::from_secs(5));
    // Lambda would kill the invocation 3 s from now; 2.5 s are kept back to queue and answer.
    let mut context = lambda_http::Context::default();
    let deadline = std::time::SystemTime::now() + Duration::from_secs(3);
    context.deadline = deadline.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let answer = h
        .send(signed_file("signup-valid.json").with_lambda_context(context))
        .await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(h.queued().len(), 1);
}

#[tokio::test]
async fn not_connected_is_503_without_a_queue_and_queued_with_one() {
    let h = Harness::start(Options {
        credentials: TestCredentials::not_connected(),
        ..Options::default()
    })
    .await;
    let answer = h.send(signed_file("signup-valid.json")).await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "keap_not_connected")
    );
    assert_eq!(answer.headers["retry-after"], "300");

    let h = Harness::start(Options {
        credentials: TestCredentials::not_connected(),
        queue: true,
        ..Options::default()
    })
    .await;
    let answer = h.send(signed_file("signup-valid.json")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(h.queued().len(), 1, "nothing is lost while Keap is disconnected");
}

#[tokio::test]
async fn a_contact_keap_refuses_is_422_with_keaps_message_and_not_queued() {
    let h = Harness::start(Options {
        queue: true,
        ..Options::default()
    })
    .await;
    // A valid address (117 characters, within RFC 5321's 254) that Keap finds too long.
    let email = format!("{}@{}.example.com", "a".repeat(64), "b".repeat(40));
    let answer = h.send(signed(&valid_with(json!({ "email": email })))).await;

    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "keap_rejected"),
        "{}",
        answer.json
    );
    assert!(
        answer.json["error"]["message"].as_str().unwrap().contains("email"),
        "{}",
        answer.json
    );
    assert!(h.queued().is_empty(), "retrying cannot help, so nothing is queued");
}

#[tokio::test]
async fn a_welcome_tag_keap_does_not_know_sends_no_email_but_the_signup_succeeds() {
    let h = Harness::start(Options {
        welcome_tag: Some("999999"),
        ..Options::default()
    })
    .await;
    let answer = h.send(signed_file("signup-valid.json")).await;

    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["tags"]["999999"], "TAG_ID_NOT_FOUND");
    assert_eq!(answer.json["tags"]["Newsletter"], "SUCCESS");
    assert_eq!(answer.json["welcome_email"], "skipped");
    assert_eq!(h.sandbox.stats().emails_queued, 0);
}

#[tokio::test]
async fn without_a_welcome_tag_the_email_follows_contact_creation() {
    let h = Harness::start(Options {
        welcome_tag: None,
        ..Options::default()
    })
    .await;
    assert_eq!(
        h.send(signed_file("signup-valid.json")).await.json["welcome_email"],
        "sent"
    );
    assert_eq!(
        h.send(signed_file("signup-valid.json")).await.json["welcome_email"],
        "already_welcomed"
    );
    assert_eq!(h.sandbox.stats().emails_queued, 1);
}
