//! The replay records' contract (`signup::replay`), held by the memory records and by the
//! DynamoDB records through the real SDK against moto's server: first claim wins, later
//! arrivals get the answer or wait, a released or lapsed claim is free again, an expired
//! record no longer counts, and of many simultaneous arrivals exactly one claims.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keap_relay::signup::{Claim, DynamoReplayRecords, MemoryReplayRecords, RecordedAnswer, ReplayKey, ReplayRecords};
use test_support::moto::{MotoServer, create_replay_table, dynamodb_client};

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
}

fn key(n: u8) -> ReplayKey {
    ReplayKey::of_mac(&[n; 32])
}

fn answer(status: u16) -> RecordedAnswer {
    RecordedAnswer {
        status,
        body: format!(r#"{{"status":{status}}}"#),
        retry_after_seconds: (status == 202).then_some(30),
    }
}

async fn claimed(records: &dyn ReplayRecords, key: &ReplayKey, now: u64) -> uuid::Uuid {
    match records.claim(key, at(now), at(now + 30), at(400)).await.unwrap() {
        Claim::Claimed { owner } => owner,
        other => panic!("expected a claim at {now}, got {other:?}"),
    }
}

async fn contract(records: Arc<dyn ReplayRecords>) {
    let records = records.as_ref();
    // first arrival claims; a second one during processing waits; after completion it gets the answer
    let owner = claimed(records, &key(1), 100).await;
    assert_eq!(
        records.claim(&key(1), at(101), at(131), at(400)).await.unwrap(),
        Claim::InProgress
    );
    records.complete(&key(1), owner, &answer(202)).await.unwrap();
    assert_eq!(
        records.claim(&key(1), at(102), at(132), at(400)).await.unwrap(),
        Claim::Answered(answer(202))
    );
    // a released claim is free again; releasing twice or by someone else changes nothing
    let owner = claimed(records, &key(2), 100).await;
    records.release(&key(2), uuid::Uuid::new_v4()).await.unwrap();
    assert_eq!(
        records.claim(&key(2), at(101), at(131), at(400)).await.unwrap(),
        Claim::InProgress
    );
    records.release(&key(2), owner).await.unwrap();
    records.release(&key(2), owner).await.unwrap();
    let second = claimed(records, &key(2), 102).await;
    // its holder dies: after the lease the next arrival takes over, and the late holder's
    // answer does not replace the new claim
    let third = claimed(records, &key(2), 140).await;
    records.complete(&key(2), second, &answer(201)).await.unwrap();
    assert_eq!(
        records.claim(&key(2), at(141), at(171), at(400)).await.unwrap(),
        Claim::InProgress
    );
    records.complete(&key(2), third, &answer(200)).await.unwrap();
    assert_eq!(
        records.claim(&key(2), at(142), at(172), at(400)).await.unwrap(),
        Claim::Answered(answer(200))
    );
    // a completed answer cannot be released away
    records.release(&key(2), third).await.unwrap();
    assert_eq!(
        records.claim(&key(2), at(143), at(173), at(400)).await.unwrap(),
        Claim::Answered(answer(200))
    );
    // once the signature has expired, the record no longer counts
    assert!(matches!(
        records.claim(&key(1), at(401), at(431), at(701)).await.unwrap(),
        Claim::Claimed { .. }
    ));

    // many simultaneous arrivals of one message: exactly one claims
    let contended = key(3);
    let contenders = (0..24).map(|_| records.claim(&contended, at(200), at(230), at(500)));
    let claims = futures::future::join_all(contenders).await;
    let won = claims.iter().filter(|c| matches!(c, Ok(Claim::Claimed { .. }))).count();
    let waiting = claims.iter().filter(|c| matches!(c, Ok(Claim::InProgress))).count();
    assert_eq!((won, waiting), (1, 23), "{claims:?}");
}

#[tokio::test]
async fn memory_records_keep_the_contract() {
    contract(Arc::new(MemoryReplayRecords::new())).await;
}

#[tokio::test]
async fn dynamodb_records_keep_the_contract_on_moto() {
    let moto = MotoServer::start().await;
    create_replay_table(&moto.endpoint, "signup-replays").await;
    let client = dynamodb_client(&moto.endpoint, false);
    contract(Arc::new(DynamoReplayRecords::new(client, "signup-replays"))).await;
}

#[tokio::test]
async fn dynamodb_records_fail_open_when_the_table_is_missing_or_unreachable() {
    let moto = MotoServer::start().await;
    let missing = DynamoReplayRecords::new(dynamodb_client(&moto.endpoint, true), "no-such-table");
    let error = missing.claim(&key(1), at(100), at(130), at(400)).await.unwrap_err();
    assert!(error.to_string().contains("unavailable"), "{error}");

    // nothing listens here: the call is bounded and fails, it does not hang
    let port = test_support::moto::free_port();
    let unreachable = DynamoReplayRecords::new(dynamodb_client(&format!("http://127.0.0.1:{port}"), true), "t");
    let started = std::time::Instant::now();
    assert!(unreachable.claim(&key(1), at(100), at(130), at(400)).await.is_err());
    assert!(started.elapsed() < keap_relay::signup::replay::DYNAMO_CALL_TIMEOUT + Duration::from_secs(1));
}
