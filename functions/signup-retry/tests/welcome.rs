//! Welcomes queued on their own (`{"welcome": …, "contact_id": …}`) through `signup-retry`:
//! a send that may have gone out is looked up in Keap's sent-email listing first, and sent
//! again only once it surely did not.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::SqsEvent;
use keap_relay::SecretString;
use keap_relay::config::{SignupOptions, WelcomeEmail, WelcomeGoal};
use keap_relay::keap::api::KeapApi;
use keap_relay::notices::{MemoryNotices, Notices};
use keap_relay::signup::{MemoryQueue, QueuedMessage, QueuedWelcome, SignupService, SignupSettings, WelcomePart};
use keap_relay::token::ApiKeySource;
use keap_sandbox::{DEFAULT_API_KEY, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use signup_retry::handler::handle_with_parking;

async fn setup(recheck: Duration) -> (Sandbox, SignupService, i64) {
    setup_with(recheck, true).await
}

/// `campaign`: whether a published campaign listens to the welcome goal.
async fn setup_with(recheck: Duration, campaign: bool) -> (Sandbox, SignupService, i64) {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    if campaign {
        sandbox.add_campaign("relay", "signup", Some("Welcome (campaign)"));
    }
    let api = KeapApi::new(reqwest::Client::new(), &sandbox.api_url(), Duration::from_secs(5));
    let settings = SignupSettings {
        welcome_tag: None,
        welcome_email: Some(WelcomeEmail {
            user_id: 1,
            subject: "Welcome!".into(),
            html_body: "<p>Hi</p>".into(),
        }),
        retry_budget: Duration::from_millis(300),
        options: SignupOptions {
            welcome_goal: Some(WelcomeGoal::Named {
                integration: "relay".into(),
                call_name: "signup".into(),
            }),
            welcome_recheck_after: recheck,
            ..SignupOptions::default()
        },
    };
    let service = SignupService::new(
        api,
        Arc::new(ApiKeySource::new(SecretString::from(DEFAULT_API_KEY))),
        settings,
    );
    let id = create_contact(&sandbox, "lin@example.com").await;
    (sandbox, service, id)
}

async fn create_contact(sandbox: &Sandbox, email: &str) -> i64 {
    let created = reqwest::Client::new()
        .put(format!("{}/v1/contacts", sandbox.api_url()))
        .header("X-Keap-API-Key", DEFAULT_API_KEY)
        .json(&json!({"duplicate_option": "Email", "email_addresses": [{"email": email, "field": "EMAIL1"}]}))
        .send()
        .await
        .unwrap();
    created.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

fn event(welcomes: &[&QueuedWelcome]) -> SqsEvent {
    let records: Vec<Value> = welcomes
        .iter()
        .enumerate()
        .map(|(index, welcome)| {
            json!({"messageId": format!("m-{index}"), "body": welcome.to_message(), "eventSource": "aws:sqs",
                   "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

fn lin(sandbox: &Sandbox) -> keap_sandbox::ContactView {
    sandbox.contact_by_email("lin@example.com").unwrap()
}

#[tokio::test]
async fn surely_unsent_welcomes_are_sent_and_unsure_ones_checked_first() {
    let (sandbox, service, id) = setup(Duration::from_secs(60)).await;
    let parking = MemoryQueue::new();
    // Nothing went out for these two, long ago: sent now (nobody could claim them: no welcome
    // tag here, and the recheck time has passed), acknowledged.
    let long_ago = Some(SystemTime::now() - Duration::from_secs(120));
    let email = QueuedWelcome::new(WelcomePart::Email, id, long_ago);
    let goal = QueuedWelcome::new(WelcomePart::Goal, id, long_ago);
    let response = handle_with_parking(event(&[&email, &goal]), &service, Some(&parking))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let contact = lin(&sandbox);
    assert_eq!(contact.emails_sent, ["Welcome!", "Welcome (campaign)"]);
    assert_eq!(contact.goals_achieved, 1);

    // The same two again, as if their earlier send had failed with a 5xx: both are listed,
    // so neither goes out again.
    let before = SystemTime::now() - Duration::from_secs(5);
    let email = QueuedWelcome::new(WelcomePart::Email, id, Some(before));
    let goal = QueuedWelcome::new(WelcomePart::Goal, id, Some(before));
    let response = handle_with_parking(event(&[&email, &goal]), &service, Some(&parking))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(lin(&sandbox).emails_received, 2);
    assert_eq!(lin(&sandbox).goals_achieved, 1);
    assert!(parking.messages().is_empty());
}

#[tokio::test]
async fn an_unsure_welcome_not_listed_yet_goes_back_to_the_queue_to_be_checked_later() {
    let (sandbox, service, id) = setup(Duration::from_secs(60)).await;
    let parking = MemoryQueue::new();
    let unsure = QueuedWelcome::new(WelcomePart::Email, id, Some(SystemTime::now()));
    let response = handle_with_parking(event(&[&unsure]), &service, Some(&parking))
        .await
        .unwrap();
    assert!(
        response.batch_item_failures.is_empty(),
        "acknowledged: a new message carries it"
    );
    let messages = parking.messages();
    assert_eq!(messages.len(), 1);
    let QueuedMessage::Welcome(again) = QueuedMessage::from_message(&messages[0]).unwrap() else {
        panic!("{}", messages[0])
    };
    assert_eq!(
        (again.part, again.contact_id, again.attempted_at),
        (unsure.part, id, unsure.attempted_at)
    );
    assert_eq!(lin(&sandbox).emails_received, 0, "not sent while it may still show up");

    // Without a queue to send it back to, SQS redelivers it.
    let response = handle_with_parking(event(&[&unsure]), &service, None).await.unwrap();
    assert_eq!(response.batch_item_failures.len(), 1);
}

#[tokio::test]
async fn a_welcome_keap_refuses_goes_toward_the_dead_letter_queue() {
    let (_sandbox, service, _) = setup(Duration::from_secs(1)).await;
    let unknown = QueuedWelcome::new(
        WelcomePart::Email,
        999_999,
        Some(SystemTime::now() - Duration::from_secs(5)),
    );
    let response = handle_with_parking(event(&[&unknown]), &service, None).await.unwrap();
    assert_eq!(response.batch_item_failures.len(), 1);
}

#[tokio::test]
async fn the_sample_welcome_batch_is_sent_once() {
    // events/sqs-welcome-batch.json: the email owed to contact 1001 (queued at 21:20:00, no
    // send time), and its goal, whose achievement may have gone through at 21:20:03; both long
    // past the recheck time and not listed, so both are sent.
    let (sandbox, service, id) = setup(Duration::from_secs(60)).await;
    assert_eq!(id, 1001, "the sandbox's first contact id, as the sample names it");
    let event: SqsEvent = serde_json::from_value(test_support::events::json("sqs-welcome-batch.json")).unwrap();
    let response = handle_with_parking(event.clone(), &service, None).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    let contact = lin(&sandbox);
    assert_eq!(contact.emails_sent, ["Welcome!", "Welcome (campaign)"]);
    // Redelivered (its answer lost): both find their email listed; nothing goes out twice.
    let response = handle_with_parking(event, &service, None).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    let contact = lin(&sandbox);
    assert_eq!((contact.emails_received, contact.goals_achieved), (2, 1));
}

#[tokio::test]
async fn the_deployed_wiring_writes_a_new_contacts_welcome_ahead_to_the_queue() {
    use keap_relay::app::App;
    use keap_relay::config::{AuthMode, local_config};
    use keap_relay::signup::{QueuedSignup, Signup, SignupQueue};
    use keap_relay::store::SecretStore;
    use keap_relay::store::memory::MemoryStore;

    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let secret = format!(r#"{{"api_key":"{DEFAULT_API_KEY}","signup_signing_key":"k"}}"#);
    store
        .put_version("app", "v1", &SecretString::from(secret))
        .await
        .unwrap();
    let mut config = local_config(AuthMode::ApiKey, &sandbox.base_url());
    config.welcome_email = Some(WelcomeEmail {
        user_id: 1,
        subject: "Welcome!".into(),
        html_body: "<p>Hi</p>".into(),
    });
    let queue = Arc::new(MemoryQueue::new());
    let app = App::with_parts(config, store, Some(queue.clone() as Arc<dyn SignupQueue>)).unwrap();
    let deps = signup_retry::Deps::from_app(&app);

    let signup = Signup::from_json(br#"{"email":"new.person@example.com","given_name":"New"}"#).unwrap();
    let queued = QueuedSignup::new(signup, SystemTime::now());
    let event: SqsEvent = serde_json::from_value(json!({"Records": [{
        "messageId": "m-1", "body": queued.to_message(), "eventSource": "aws:sqs",
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}}]}))
    .unwrap();
    let response = signup_retry::handle(event, &deps).await.unwrap();
    assert!(response.batch_item_failures.is_empty());

    // The welcome went out, and its record was written ahead first (it then finds the email
    // listed): a process killed between the two loses no welcome.
    let contact = sandbox.contact_by_email("new.person@example.com").expect("delivered");
    assert_eq!(contact.emails_received, 1);
    let records: Vec<QueuedWelcome> = queue
        .messages()
        .iter()
        .filter_map(|body| match QueuedMessage::from_message(body) {
            Ok(QueuedMessage::Welcome(welcome)) => Some(welcome),
            _ => None,
        })
        .collect();
    assert_eq!(records.len(), 1, "{:?}", queue.messages());
    assert_eq!(
        (records[0].part, records[0].contact_id),
        (WelcomePart::Email, contact.id)
    );
}

#[tokio::test]
async fn a_queued_welcome_goal_nobody_listens_to_is_noted_for_the_console_and_cleared_once_a_campaign_starts() {
    let (sandbox, service, id) = setup_with(Duration::from_secs(60), false).await;
    let notices = Arc::new(MemoryNotices::new());
    let service = service.with_notices(Some(notices.clone() as Arc<dyn Notices>));
    let long_ago = Some(SystemTime::now() - Duration::from_secs(120));
    let goal = QueuedWelcome::new(WelcomePart::Goal, id, long_ago);
    let response = handle_with_parking(event(&[&goal]), &service, None).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "achieved: nothing to retry");
    let notice = notices.goal_without_listener(SystemTime::now()).await.unwrap();
    assert_eq!(notice.map(|n| n.goal), Some("relay:signup".to_owned()));

    // the next contact's goal starts the campaign someone published meanwhile
    sandbox.add_campaign("relay", "signup", Some("Welcome (campaign)"));
    let ada = create_contact(&sandbox, "ada@example.com").await;
    let goal = QueuedWelcome::new(WelcomePart::Goal, ada, long_ago);
    let response = handle_with_parking(event(&[&goal]), &service, None).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    let ada = sandbox.contact_by_email("ada@example.com").unwrap();
    assert_eq!(ada.emails_sent, ["Welcome (campaign)"]);
    assert_eq!(notices.goal_without_listener(SystemTime::now()).await.unwrap(), None);
}

/// The two-records case load_e2e found (docs/load.md): one written ahead by an attempt that
/// failed before the welcome tag, one by the retry that applied it and was then throttled.
/// Both wait out the recheck, neither sees a send listed (Keap lists one only later), and
/// each would send. With one send slot between them one sends; the other waits until the
/// slot frees, then finds the send listed. Set `send_slots` to a fresh `MemorySendSlots`
/// per record and this fails with the goal achieved twice.
#[tokio::test]
async fn two_records_of_one_welcome_goal_send_it_once() {
    let recheck = Duration::from_secs(2);
    let (sandbox, service, id) = setup(recheck).await;
    sandbox.faults().set_sent_listing_delay(Duration::from_millis(1_500));
    let parking = MemoryQueue::new();
    let long_ago = Some(SystemTime::now() - Duration::from_secs(120));
    let first = QueuedWelcome::new(WelcomePart::Goal, id, long_ago);
    let second = QueuedWelcome::new(WelcomePart::Goal, id, long_ago);
    let response = handle_with_parking(event(&[&first]), &service, Some(&parking))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let response = handle_with_parking(event(&[&second]), &service, Some(&parking))
        .await
        .unwrap();
    assert!(
        response.batch_item_failures.is_empty(),
        "acknowledged: a new message waits"
    );
    assert_eq!(lin(&sandbox).goals_achieved, 1);
    let messages = parking.messages();
    assert_eq!(messages.len(), 1, "the second record waits for the slot: {messages:?}");
    let QueuedMessage::Welcome(again) = QueuedMessage::from_message(&messages[0]).unwrap() else {
        panic!("{}", messages[0])
    };
    assert_eq!((again.part, again.contact_id), (WelcomePart::Goal, id));

    // Once the slot frees, the send is listed: the waiting record ends without sending.
    tokio::time::sleep(recheck + Duration::from_millis(200)).await;
    let response = handle_with_parking(event(&[&again]), &service, Some(&parking))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(parking.messages().len(), 1, "nothing queued again");
    let contact = lin(&sandbox);
    assert_eq!(contact.goals_achieved, 1);
    assert_eq!(contact.emails_sent, ["Welcome (campaign)"]);
}
