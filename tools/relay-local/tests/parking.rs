//! The local signup queue takes the path `signup-retry` takes on Lambda: a signup that waits
//! for Keap to be connected is parked (sent back with a delay), not dead-lettered after the
//! queue's `maxReceiveCount` receives.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keap_relay::SecretString;
use keap_relay::app::App;
use keap_relay::config::Config;
use keap_relay::signup::{QueuedSignup, Signup, SignupQueue};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use relay_local::queue::{DrainReport, LocalQueue};

/// The template's `maxReceiveCount`.
const MAX_RECEIVES: u32 = 5;

#[tokio::test]
async fn a_signup_waiting_for_keap_to_be_connected_is_parked_not_dead_lettered() {
    let store = Arc::new(MemoryStore::new());
    let app_secret = r#"{"client_id":"c","client_secret":"s","signup_signing_key":"k"}"#;
    store
        .put_version("app", "operator-1", &SecretString::from(app_secret))
        .await
        .unwrap();
    // Nobody connected Keap: the token secret has no value (and Keap is never called).
    let config = Config {
        app_secret_id: "app".into(),
        token_secret_id: "token".into(),
        api_url: "http://127.0.0.1:9/crm/rest".into(),
        ..Config::defaults()
    };
    // Failed records are visible again at once, so every drain is one more receive.
    let queue = Arc::new(LocalQueue::new(MAX_RECEIVES, Duration::ZERO));
    // signup-retry's dependencies as the local run builds them: its queue is the local one.
    let retry = signup_retry::Deps::from_app(&App::with_parts(config, store, Some(queue.clone())).unwrap());
    let signup = Signup::from_json(br#"{"email":"grace@example.com"}"#).unwrap();
    queue
        .enqueue(&QueuedSignup::new(signup, SystemTime::now()), Duration::ZERO)
        .await
        .unwrap();

    assert_eq!(
        queue.drain(&retry).await.unwrap(),
        DrainReport {
            parked: 1,
            ..DrainReport::default()
        }
    );
    for _ in 1..MAX_RECEIVES {
        queue.drain(&retry).await.unwrap();
    }
    assert_eq!(
        queue.dead_letters(),
        0,
        "dead-lettered while Keap waits for an administrator"
    );
    assert_eq!(queue.pending(), 1, "parked in the queue until Keap is connected");
}
