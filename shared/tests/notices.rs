//! The notices' contract (`notices`), held by the memory notices and by the DynamoDB notices
//! through the real SDK against moto's server (in the replay records' table, next to replay
//! records): a notice keeps its first sighting, the same write waits a minute per process, a
//! success clears only its own goal's notice, an expired notice is gone, and an unreachable
//! table fails, bounded.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keap_relay::notices::{DynamoNotices, GoalNotice, MemoryNotices, NOTICE_TTL, Notices};
use keap_relay::signup::{Claim, DynamoReplayRecords, ReplayKey, ReplayRecords};
use test_support::moto::{MotoServer, create_replay_table, dynamodb_client};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
}

fn notice(goal: &str, first: u64, last: u64) -> Option<GoalNotice> {
    Some(GoalNotice {
        goal: goal.into(),
        first_seen_at: at(first),
        last_seen_at: at(last),
    })
}

/// Each adapter is new (its rate limit has seen nothing).
async fn contract(notices: Arc<dyn Notices>) {
    let notices = notices.as_ref();
    assert_eq!(notices.goal_without_listener(at(0)).await.unwrap(), None);
    notices
        .record_goal_without_listener("relay:signup", at(100))
        .await
        .unwrap();
    assert_eq!(
        notices.goal_without_listener(at(101)).await.unwrap(),
        notice("relay:signup", 100, 100)
    );
    // within the minute the same notice is not written again
    notices
        .record_goal_without_listener("relay:signup", at(130))
        .await
        .unwrap();
    assert_eq!(
        notices.goal_without_listener(at(131)).await.unwrap(),
        notice("relay:signup", 100, 100)
    );
    // after it, it is: seen again, first sighting kept
    notices
        .record_goal_without_listener("relay:signup", at(160))
        .await
        .unwrap();
    assert_eq!(
        notices.goal_without_listener(at(161)).await.unwrap(),
        notice("relay:signup", 100, 160)
    );
    // another goal's success leaves it; its own clears it
    notices
        .clear_goal_without_listener("relay:other", at(170))
        .await
        .unwrap();
    assert_eq!(
        notices.goal_without_listener(at(171)).await.unwrap(),
        notice("relay:signup", 100, 160)
    );
    notices
        .clear_goal_without_listener("relay:signup", at(180))
        .await
        .unwrap();
    assert_eq!(notices.goal_without_listener(at(181)).await.unwrap(), None);
    // seen again after the clear: a new notice, at once
    notices
        .record_goal_without_listener("relay:signup", at(190))
        .await
        .unwrap();
    assert_eq!(
        notices.goal_without_listener(at(191)).await.unwrap(),
        notice("relay:signup", 190, 190)
    );
    // another goal replaces it (a changed configuration), with its own first sighting
    notices
        .record_goal_without_listener("relay:new", at(200))
        .await
        .unwrap();
    assert_eq!(
        notices.goal_without_listener(at(201)).await.unwrap(),
        notice("relay:new", 200, 200)
    );
    // not seen for NOTICE_TTL: gone, and a later sighting starts afresh
    let ttl = NOTICE_TTL.as_secs();
    assert_eq!(
        notices.goal_without_listener(at(200 + ttl)).await.unwrap(),
        notice("relay:new", 200, 200)
    );
    assert_eq!(notices.goal_without_listener(at(201 + ttl)).await.unwrap(), None);
    notices
        .record_goal_without_listener("relay:new", at(300 + ttl))
        .await
        .unwrap();
    assert_eq!(
        notices.goal_without_listener(at(301 + ttl)).await.unwrap(),
        notice("relay:new", 300 + ttl, 300 + ttl)
    );
}

#[tokio::test]
async fn memory_notices_keep_the_contract() {
    contract(Arc::new(MemoryNotices::new())).await;
}

#[tokio::test]
async fn memory_notices_write_once_a_minute_for_a_stream_of_the_same_sighting() {
    let notices = MemoryNotices::new();
    for second in 0..60 {
        notices
            .record_goal_without_listener("relay:signup", at(second))
            .await
            .unwrap();
    }
    assert_eq!(notices.writes(), 1);
    notices
        .record_goal_without_listener("relay:signup", at(60))
        .await
        .unwrap();
    assert_eq!(notices.writes(), 2);
}

#[tokio::test]
async fn dynamodb_notices_keep_the_contract_on_moto_next_to_replay_records() {
    let moto = MotoServer::start().await;
    create_replay_table(&moto.endpoint, "relay-state").await;
    let client = dynamodb_client(&moto.endpoint, false);
    // a replay record in the same table is neither read as a notice nor touched by one
    let replays = DynamoReplayRecords::new(client.clone(), "relay-state");
    let key = ReplayKey::of_mac(&[1; 32]);
    let now = SystemTime::now();
    assert!(matches!(
        replays
            .claim(&key, now, now + Duration::from_secs(30), now + Duration::from_secs(600))
            .await
            .unwrap(),
        Claim::Claimed { .. }
    ));
    contract(Arc::new(DynamoNotices::new(client.clone(), "relay-state"))).await;
    assert_eq!(
        replays
            .claim(&key, now, now + Duration::from_secs(30), now + Duration::from_secs(600))
            .await
            .unwrap(),
        Claim::InProgress
    );
    // another process (the console's) reads what this one wrote
    let writer = DynamoNotices::new(client.clone(), "relay-state");
    writer
        .record_goal_without_listener("relay:signup", SystemTime::now())
        .await
        .unwrap();
    let reader = DynamoNotices::new(client, "relay-state");
    let seen = reader.goal_without_listener(SystemTime::now()).await.unwrap();
    assert_eq!(seen.map(|n| n.goal), Some("relay:signup".to_owned()));
}

#[tokio::test]
async fn dynamodb_notices_fail_bounded_when_the_table_is_missing_or_unreachable() {
    let moto = MotoServer::start().await;
    let missing = DynamoNotices::new(dynamodb_client(&moto.endpoint, true), "no-such-table");
    let error = missing.goal_without_listener(at(0)).await.unwrap_err();
    assert!(error.to_string().contains("unavailable"), "{error}");
    assert!(
        missing
            .record_goal_without_listener("relay:signup", at(0))
            .await
            .is_err()
    );

    let port = test_support::moto::free_port();
    let unreachable = DynamoNotices::new(dynamodb_client(&format!("http://127.0.0.1:{port}"), true), "t");
    let started = std::time::Instant::now();
    assert!(
        unreachable
            .record_goal_without_listener("relay:signup", at(0))
            .await
            .is_err()
    );
    // the failed attempt counts: within the minute no second call is made
    assert!(
        unreachable
            .record_goal_without_listener("relay:signup", at(30))
            .await
            .is_ok()
    );
    assert!(started.elapsed() < 2 * keap_relay::signup::replay::DYNAMO_CALL_TIMEOUT + Duration::from_secs(1));
}
