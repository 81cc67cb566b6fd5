//! Issue 12 end to end through the handler: contact details and custom fields by label, the
//! allow-lists, and the welcome in every mode (direct email, Keap template, API goal v1 and v2,
//! tag), each once per contact, with repeats, bad values and sends whose outcome is unknown.

mod common;

use std::time::Duration;

use common::*;
use keap_relay::config::{SignupOptions, WelcomeGoal, WelcomeTemplate};
use keap_relay::signup::{QueuedMessage, QueuedWelcome, WelcomePart, WelcomeRetry};
use lambda_http::http::StatusCode;
use serde_json::{Value, json};
use test_support::logs::LogCapture;

fn with(options: SignupOptions) -> Options {
    Options {
        signup_options: options,
        queue: true,
        ..Options::default()
    }
}

async fn signup(h: &Harness, body: Value) -> Answer {
    h.send(signed(&valid_with(body))).await
}

fn ada(extra: Value) -> Value {
    let mut body = json!({"email": "ada@example.com", "given_name": "Ada"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn contact_details_and_custom_fields_by_label_reach_keap() {
    let h = Harness::start(with(SignupOptions {
        utm_fields: vec![
            ("source".into(), "UTM Source".into()),
            ("campaign".into(), "UTM Campaign".into()),
        ],
        ..SignupOptions::default()
    }))
    .await;
    let plan = h.sandbox.add_custom_field("Plan", "Dropdown", &["Free", "Pro"]);
    let seats = h.sandbox.add_custom_field("Seats", "WholeNumber", &[]);
    let trial = h.sandbox.add_custom_field("Trial ends", "Date", &[]);
    let vip = h.sandbox.add_custom_field("VIP", "YesNo", &[]);
    let source = h.sandbox.add_custom_field("UTM Source", "Text", &[]);
    let campaign = h.sandbox.add_custom_field("UTM Campaign", "Text", &[]);
    let webinar = h.sandbox.add_lead_source("Webinar");

    let answer = signup(
        &h,
        ada(json!({
            "phone": "+1 (555) 010-2030", "company": "Analytical Engines", "job_title": "Programmer",
            "website": "ada.example.com", "lead_source": "Webinar", "ip_address": "203.0.113.5",
            "utm": {"source": "newsletter", "utm_campaign": "spring", "medium": "email"},
            "fields": {"plan": "pro", "Seats": 3, "Trial ends": "2026-04-01", "VIP": true},
        })),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let contact = h.sandbox.contact_by_email("ada@example.com").unwrap();
    assert_eq!(contact.phones, ["+1 (555) 010-2030"]);
    assert_eq!(contact.extra["company_name"], "Analytical Engines");
    assert_eq!(contact.extra["job_title"], "Programmer");
    assert_eq!(contact.extra["website"], "https://ada.example.com");
    assert_eq!(contact.extra["lead_source_id"], webinar.id);
    assert_eq!(contact.extra["origin"]["ip_address"], "203.0.113.5");
    let fields = contact.custom_field_values();
    assert_eq!(
        fields,
        [
            (plan.id, json!("Pro")),
            (seats.id, json!(3)),
            (trial.id, json!("2026-04-01")),
            (vip.id, json!(true)),
            (source.id, json!("newsletter")),
            (campaign.id, json!("spring")),
        ]
    );

    // The model and the lead source were read once for the process.
    let again = signup(&h, ada(json!({"lead_source": "Webinar", "fields": {"Seats": "4"}}))).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
    let stats = h.sandbox.stats();
    assert_eq!(stats.calls_to("GET", "/crm/rest/v1/contacts/model"), 1);
    assert_eq!(stats.calls_to("GET", "/crm/rest/v2/leadSources"), 1);
    // A lead source by id needs no lookup.
    let by_id = signup(&h, ada(json!({"lead_source": webinar.id}))).await;
    assert_eq!(by_id.status, StatusCode::OK, "{}", by_id.json);
}

#[tokio::test]
async fn bad_fields_are_precise_400s_naming_the_field() {
    let h = Harness::start(with(SignupOptions::default())).await;
    h.sandbox.add_custom_field("Plan", "Dropdown", &["Free", "Pro"]);
    h.sandbox.add_custom_field("Seats", "WholeNumber", &[]);
    h.sandbox.add_custom_field("Trial ends", "Date", &[]);
    h.sandbox.add_custom_field("VIP", "YesNo", &[]);
    for (extra, code, names) in [
        (json!({"fields": {"Nope": "x"}}), "unknown_custom_field", "fields.Nope"),
        (
            json!({"fields": {"Plan": "Gold"}}),
            "invalid_custom_field",
            "fields.Plan",
        ),
        (
            json!({"fields": {"Seats": "many"}}),
            "invalid_custom_field",
            "fields.Seats",
        ),
        (
            json!({"fields": {"Trial ends": "01/04/2026"}}),
            "invalid_custom_field",
            "fields.Trial ends",
        ),
        (
            json!({"fields": {"VIP": "perhaps"}}),
            "invalid_custom_field",
            "fields.VIP",
        ),
        (json!({"fields": {"Plan": ["Pro"]}}), "invalid_field", "fields.Plan"),
        (json!({"fields": "Plan=Pro"}), "invalid_field", "fields"),
        (json!({"lead_source": "Nowhere"}), "unknown_lead_source", "lead_source"),
        (json!({"lead_source": -4}), "invalid_field", "lead_source"),
        (json!({"ip_address": "999.1.1.1"}), "invalid_field", "ip_address"),
        (json!({"website": "javascript:alert(1)"}), "invalid_field", "website"),
        (json!({"phone": "call me"}), "invalid_field", "phone"),
        (json!({"utm": "spring"}), "invalid_field", "utm"),
        (json!({"utm": {"source": 7}}), "invalid_field", "utm"),
    ] {
        let answer = signup(&h, ada(extra.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{extra}: {}", answer.json);
        assert_eq!(answer.code(), code, "{extra}: {}", answer.json);
        let message = answer.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{extra}: {message}");
    }
    assert!(
        h.sandbox.contact_by_email("ada@example.com").is_none(),
        "nothing refused reached Keap"
    );
    assert!(h.queued().is_empty(), "a 400 is not queued");
}

#[tokio::test]
async fn unknown_labels_and_lead_sources_are_created_when_configured() {
    let h = Harness::start(with(SignupOptions {
        create_custom_fields: true,
        create_lead_sources: true,
        ..SignupOptions::default()
    }))
    .await;
    let answer = signup(
        &h,
        ada(json!({"fields": {"Referrer": "Grace"}, "lead_source": "Podcast"})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let contact = h.sandbox.contact_by_email("ada@example.com").unwrap();
    assert_eq!(contact.extra["custom_fields"][0]["content"], "Grace");
    assert!(contact.extra["lead_source_id"].as_i64().is_some());
    // Known from now on: no second creation.
    let again = signup(
        &h,
        ada(json!({"fields": {"Referrer": "Alan"}, "lead_source": "Podcast"})),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json);
    let stats = h.sandbox.stats();
    assert_eq!(stats.calls_to("POST", "/crm/rest/v1/contacts/model/customFields"), 1);
    assert_eq!(stats.calls_to("POST", "/crm/rest/v2/leadSources"), 1);
}

#[tokio::test]
async fn a_field_recreated_in_keap_is_found_again_after_keap_refuses_the_cached_id() {
    let h = Harness::start(with(SignupOptions::default())).await;
    h.sandbox.add_custom_field("Plan", "Text", &[]);
    assert_eq!(
        signup(&h, ada(json!({"fields": {"Plan": "a"}}))).await.status,
        StatusCode::CREATED
    );
    h.sandbox.remove_custom_field("Plan");
    let recreated = h.sandbox.add_custom_field("Plan", "Text", &[]);
    let answer = signup(&h, ada(json!({"fields": {"Plan": "b"}}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let contact = h.sandbox.contact_by_email("ada@example.com").unwrap();
    assert!(
        contact.extra["custom_fields"]
            .as_array()
            .unwrap()
            .contains(&json!({"id": recreated.id, "content": "b"}))
    );
    assert_eq!(h.sandbox.stats().calls_to("GET", "/crm/rest/v1/contacts/model"), 2);
}

#[tokio::test]
async fn the_allow_lists_refuse_what_a_signed_request_may_not_set() {
    let h = Harness::start(with(SignupOptions {
        allowed_fields: Some(vec!["given_name".into(), "phone".into(), "fields.Plan".into()]),
        allowed_tags: Some(vec!["Newsletter".into()]),
        ..SignupOptions::default()
    }))
    .await;
    h.sandbox.add_custom_field("Plan", "Text", &[]);
    h.sandbox.add_custom_field("Role", "Text", &[]);
    for (extra, code) in [
        (json!({"family_name": "Lovelace"}), "field_not_allowed"),
        (json!({"fields": {"Role": "admin"}}), "field_not_allowed"),
        (json!({"tags": ["Customer"]}), "tag_not_allowed"),
    ] {
        let answer = signup(&h, ada(extra.clone())).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, code),
            "{extra}"
        );
    }
    let fine = signup(
        &h,
        ada(json!({"phone": "555 0100", "fields": {"Plan": "x"}, "tags": ["newsletter"]})),
    )
    .await;
    assert_eq!(fine.status, StatusCode::CREATED, "{}", fine.json);
}

fn goal_v1() -> Option<WelcomeGoal> {
    Some(WelcomeGoal::Named {
        integration: "relay".into(),
        call_name: "signup".into(),
    })
}

#[tokio::test]
async fn the_welcome_goal_starts_the_campaign_once_per_contact() {
    let h = Harness::start(Options {
        welcome_email: false,
        ..with(SignupOptions {
            welcome_goal: goal_v1(),
            ..SignupOptions::default()
        })
    })
    .await;
    let campaign = h
        .sandbox
        .add_campaign("relay", "signup", Some("Welcome from the campaign"));
    let answer = signup(&h, ada(json!({}))).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["welcome_goal"]["status"], "achieved");
    assert_eq!(answer.json["welcome_goal"]["goal"], "relay:signup");
    assert_eq!(
        answer.json["welcome_goal"]["started"][0]["campaign_id"],
        campaign.campaign_id
    );
    assert!(answer.json.get("welcome_email").is_none());
    let again = signup(&h, ada(json!({}))).await;
    assert_eq!(again.json["welcome_goal"]["status"], "already_welcomed");
    let contact = h.sandbox.contact_by_email("ada@example.com").unwrap();
    assert_eq!((contact.goals_achieved, contact.emails_received), (1, 1));
}

#[tokio::test]
async fn a_goal_nobody_listens_to_is_reported_and_warned_about() {
    let h = Harness::start(with(SignupOptions {
        welcome_goal: goal_v1(),
        ..SignupOptions::default()
    }))
    .await;
    let logs = LogCapture::default();
    let answer = {
        let _guard = logs.json_on_this_thread(tracing::Level::WARN);
        signup(&h, ada(json!({}))).await
    };
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["welcome_goal"]["status"], "no_listener");
    assert_eq!(answer.json["welcome_email"], "sent", "the other welcomes go on");
    let warned = logs
        .json_lines()
        .iter()
        .any(|line| line["fields"]["welcome_goal_without_listener"] == true);
    assert!(warned, "{}", logs.text());
}

#[tokio::test]
async fn the_v2_automation_goal_and_the_template_with_the_email_each_go_once() {
    let h = Harness::start(Options {
        configure: Some(Box::new(|sandbox| {
            let campaign = sandbox.add_campaign("relay", "signup", None);
            let template = sandbox.add_email_template("Welcome (template)");
            SignupOptions {
                welcome_goal: Some(WelcomeGoal::Automation {
                    automation_id: campaign.campaign_id,
                    goal_id: campaign.goal_id,
                }),
                welcome_template: Some(WelcomeTemplate {
                    template_id: template.id,
                    user_id: 1,
                }),
                ..SignupOptions::default()
            }
        })),
        ..with(SignupOptions::default())
    })
    .await;
    let answer = signup(&h, ada(json!({}))).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["welcome_email"], "sent");
    assert_eq!(answer.json["welcome_template"], "sent");
    assert_eq!(answer.json["welcome_goal"]["status"], "achieved");
    assert_eq!(answer.json["tags"]["Welcome"], "SUCCESS");
    for _ in 0..2 {
        let again = signup(&h, ada(json!({}))).await;
        assert_eq!(again.json["welcome_email"], "already_welcomed");
        assert_eq!(again.json["welcome_template"], "already_welcomed");
        assert_eq!(again.json["welcome_goal"]["status"], "already_welcomed");
    }
    let contact = h.sandbox.contact_by_email("ada@example.com").unwrap();
    assert_eq!(contact.emails_sent, ["Welcome!", "Welcome (template)"]);
    assert_eq!(contact.goals_achieved, 1);
}

/// The live signup's send fails with a 5xx; `went_out` says whether it went out all the same.
async fn unsure_send(went_out: bool, listing_delay: Duration) -> (Harness, QueuedWelcome) {
    let h = Harness::start(with(SignupOptions {
        welcome_recheck_after: Duration::from_millis(1500),
        ..SignupOptions::default()
    }))
    .await;
    h.sandbox.faults().set_sent_listing_delay(listing_delay);
    h.sandbox
        .faults()
        .set_sent_despite_5xx_rate(if went_out { 1.0 } else { 0.0 });
    h.sandbox.faults().fail_next_sends(1);
    let answer = signup(&h, ada(json!({}))).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    assert_eq!(answer.json["welcome_email"], "queued");
    let queued = h.queued();
    assert_eq!(
        queued.len(),
        1,
        "only the welcome is queued, not the signup: {queued:?}"
    );
    let QueuedMessage::Welcome(welcome) = QueuedMessage::from_message(&queued[0]).unwrap() else {
        panic!("a welcome record: {}", queued[0])
    };
    assert_eq!(welcome.part, WelcomePart::Email);
    assert!(welcome.attempted_at.is_some(), "the send may have gone out");
    (h, welcome)
}

fn received(h: &Harness) -> u32 {
    h.sandbox.contact_by_email("ada@example.com").unwrap().emails_received
}

#[tokio::test]
async fn an_email_that_went_out_despite_a_5xx_is_found_in_keaps_listing_and_not_sent_again() {
    let (h, welcome) = unsure_send(true, Duration::ZERO).await;
    assert_eq!(received(&h), 1);
    let retried = h.deps.service.retry_welcome(&welcome).await.unwrap();
    assert_eq!(retried, WelcomeRetry::AlreadySent);
    assert_eq!(received(&h), 1);
    assert_eq!(h.sandbox.stats().calls_to("GET", "/crm/rest/v1/emails"), 1);
}

#[tokio::test]
async fn an_email_not_listed_yet_is_looked_at_again_before_it_is_sent_again() {
    // It went out, but Keap lists it only after 700 ms.
    let (h, welcome) = unsure_send(true, Duration::from_millis(700)).await;
    let WelcomeRetry::Later { welcome, delay } = h.deps.service.retry_welcome(&welcome).await.unwrap() else {
        panic!("too early to tell")
    };
    assert!(delay <= Duration::from_millis(2500), "{delay:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        h.deps.service.retry_welcome(&welcome).await.unwrap(),
        WelcomeRetry::AlreadySent
    );
    assert_eq!(received(&h), 1);
}

#[tokio::test]
async fn an_email_that_did_not_go_out_is_sent_once_the_listing_has_had_time() {
    let (h, welcome) = unsure_send(false, Duration::ZERO).await;
    assert_eq!(received(&h), 0);
    let first = h.deps.service.retry_welcome(&welcome).await.unwrap();
    let WelcomeRetry::Later { welcome, .. } = first else {
        panic!("not listed, but too early to send again: {first:?}")
    };
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        h.deps.service.retry_welcome(&welcome).await.unwrap(),
        WelcomeRetry::Sent { started: vec![] }
    );
    assert_eq!(received(&h), 1);
    // A redelivered record finds it listed.
    let redelivered = QueuedWelcome::new(
        WelcomePart::Email,
        welcome.contact_id,
        Some(std::time::SystemTime::now()),
    );
    assert_eq!(
        h.deps.service.retry_welcome(&redelivered).await.unwrap(),
        WelcomeRetry::AlreadySent
    );
    assert_eq!(received(&h), 1);
}

#[tokio::test]
async fn a_new_contacts_welcome_is_written_ahead_and_survives_a_process_that_died_before_sending() {
    let h = Harness::start(with(SignupOptions {
        welcome_recheck_after: Duration::from_secs(60),
        ..SignupOptions::default()
    }))
    .await;
    // A new contact's welcome is written to the queue before it is sent.
    let answer = signup(&h, json!({"email": "bo@example.com"})).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let queued = h.queued();
    let QueuedMessage::Welcome(record) = QueuedMessage::from_message(&queued[0]).unwrap() else {
        panic!("the welcome is written ahead: {queued:?}")
    };
    assert_eq!((record.part, record.attempted_at.is_some()), (WelcomePart::Email, true));
    assert_eq!(answer.json["welcome_email"], "sent");
    // Processed later, the record finds the email listed.
    assert_eq!(
        h.deps.service.retry_welcome(&record).await.unwrap(),
        WelcomeRetry::AlreadySent
    );

    // A first signup whose process died right after the upsert: the contact exists, no tag,
    // no email; only the record written ahead. Processed, it claims the welcome tag and sends.
    let created = reqwest::Client::new()
        .put(format!("{}/v1/contacts", h.sandbox.api_url()))
        .header("X-Keap-API-Key", keap_sandbox::DEFAULT_API_KEY)
        .json(
            &json!({"duplicate_option": "Email", "email_addresses": [{"email": "ada@example.com", "field": "EMAIL1"}]}),
        )
        .send()
        .await
        .unwrap();
    let id = created.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let orphan = QueuedWelcome::new(WelcomePart::Email, id, Some(std::time::SystemTime::now()));
    assert_eq!(
        h.deps.service.retry_welcome(&orphan).await.unwrap(),
        WelcomeRetry::Sent { started: vec![] }
    );
    // The sender's retry of that signup finds the tag claimed: no second email.
    let retried = signup(&h, ada(json!({}))).await;
    assert_eq!(retried.json["welcome_email"], "already_welcomed", "{}", retried.json);
    assert_eq!(received(&h), 1);
    // And the record, redelivered, finds it listed.
    assert_eq!(
        h.deps.service.retry_welcome(&orphan).await.unwrap(),
        WelcomeRetry::AlreadySent
    );
}

#[tokio::test]
async fn the_sample_event_with_every_field_lands_in_keap() {
    let h = Harness::start(with(SignupOptions {
        utm_fields: vec![("source".into(), "UTM Source".into())],
        ..SignupOptions::default()
    }))
    .await;
    h.sandbox.add_custom_field("Plan", "Dropdown", &["Free", "Pro"]);
    h.sandbox.add_custom_field("Seats", "WholeNumber", &[]);
    h.sandbox.add_custom_field("Trial ends", "Date", &[]);
    h.sandbox.add_custom_field("VIP", "YesNo", &[]);
    h.sandbox.add_custom_field("UTM Source", "Text", &[]);
    let webinar = h.sandbox.add_lead_source("Webinar");
    let answer = h.send(signed_file("signup-fields.json")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let contact = h.sandbox.contact_by_email("grace.hopper@example.com").unwrap();
    assert_eq!(contact.extra["lead_source_id"], webinar.id);
    assert_eq!(contact.extra["origin"]["ip_address"], "203.0.113.10");
    assert_eq!(contact.extra["custom_fields"].as_array().unwrap().len(), 5);
    assert_eq!(contact.emails_received, 1);
}

#[tokio::test]
async fn utm_goes_to_the_v2_utm_parameters_when_a_source_id_is_configured() {
    let h = Harness::start(with(SignupOptions {
        utm_v2_source_id: Some("6088383224687662".into()),
        utm_fields: vec![("source".into(), "UTM Source".into())],
        ..SignupOptions::default()
    }))
    .await;
    let answer = signup(
        &h,
        ada(json!({"utm": {"utm_source": "google", "medium": "cpc", "campaign": "spring"}})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
    let contact = h.sandbox.contact_by_email("ada@example.com").unwrap();
    assert_eq!(
        contact.extra["utm_parameters"],
        json!({"keap_source_id": "6088383224687662", "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring"})
    );
    assert!(
        contact.extra.get("custom_fields").is_none(),
        "not also to custom fields"
    );
}
