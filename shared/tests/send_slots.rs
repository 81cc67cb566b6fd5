//! The welcome send slots' contract (`signup::send_slots`), held by the memory slots and by the
//! DynamoDB slots through the real SDK against moto's server (in the state table, next to a
//! replay record): one taker per contact and part while the hold lasts, whoever asks next is
//! told until when, a slot expired or released by its holder is taken again, many processes
//! racing for one slot get one winner, and an unreachable table fails, bounded (closed:
//! nobody sends).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keap_relay::signup::queue::WelcomePart;
use keap_relay::signup::{
    Claim, DynamoReplayRecords, DynamoSendSlots, MemorySendSlots, ReplayKey, ReplayRecords, SendSlot, SlotHold,
    WelcomeSendSlots,
};
use test_support::moto::{MotoServer, create_replay_table, dynamodb_client};

const HOLD: Duration = Duration::from_secs(20);

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + millis)
}

fn held(contact_id: i64, part: WelcomePart, from: SystemTime) -> SlotHold {
    SlotHold {
        contact_id,
        part,
        from,
        hold: HOLD,
    }
}

async fn contract(slots: Arc<dyn WelcomeSendSlots>) {
    let slots = slots.as_ref();
    assert_eq!(
        slots.take(&held(1, WelcomePart::Goal, at(0))).await.unwrap(),
        SendSlot::Taken
    );
    // held: the second record is told when the hold ends
    assert_eq!(
        slots.take(&held(1, WelcomePart::Goal, at(5_000))).await.unwrap(),
        SendSlot::HeldUntil(at(20_000))
    );
    // another part and another contact are their own slots
    assert_eq!(
        slots.take(&held(1, WelcomePart::Email, at(5_000))).await.unwrap(),
        SendSlot::Taken
    );
    assert_eq!(
        slots.take(&held(2, WelcomePart::Goal, at(5_000))).await.unwrap(),
        SendSlot::Taken
    );
    // still held at its last millisecond, free after it
    assert_eq!(
        slots.take(&held(1, WelcomePart::Goal, at(19_999))).await.unwrap(),
        SendSlot::HeldUntil(at(20_000))
    );
    assert_eq!(
        slots.take(&held(1, WelcomePart::Goal, at(20_001))).await.unwrap(),
        SendSlot::Taken
    );
    assert_eq!(
        slots.take(&held(1, WelcomePart::Goal, at(20_002))).await.unwrap(),
        SendSlot::HeldUntil(at(40_001))
    );
    // a release by an older holder leaves the newer hold alone; the holder's own frees it
    slots.release(&held(1, WelcomePart::Goal, at(0))).await.unwrap();
    assert_eq!(
        slots.take(&held(1, WelcomePart::Goal, at(20_003))).await.unwrap(),
        SendSlot::HeldUntil(at(40_001))
    );
    slots.release(&held(1, WelcomePart::Goal, at(20_001))).await.unwrap();
    assert_eq!(
        slots.take(&held(1, WelcomePart::Goal, at(20_004))).await.unwrap(),
        SendSlot::Taken
    );
    // releasing a slot nobody holds is no error
    slots.release(&held(3, WelcomePart::Template, at(0))).await.unwrap();
}

/// `contenders` takers at once, each with its own adapter (as processes would be): one wins.
async fn race(contenders: Vec<Arc<dyn WelcomeSendSlots>>, contact_id: i64) {
    let now = SystemTime::now();
    let tasks: Vec<_> = contenders
        .into_iter()
        .map(|slots| tokio::spawn(async move { slots.take(&held(contact_id, WelcomePart::Goal, now)).await }))
        .collect();
    let mut taken = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            SendSlot::Taken => taken += 1,
            // the table keeps milliseconds
            SendSlot::HeldUntil(until) => {
                assert!(until <= now + HOLD && until + Duration::from_millis(1) > now + HOLD);
            }
        }
    }
    assert_eq!(taken, 1, "exactly one contender sends");
}

#[tokio::test]
async fn memory_slots_keep_the_contract() {
    contract(Arc::new(MemorySendSlots::new())).await;
    let one: Arc<dyn WelcomeSendSlots> = Arc::new(MemorySendSlots::new());
    race((0..16).map(|_| one.clone()).collect(), 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_slots_keep_the_contract_beside_replay_records_and_one_of_many_processes_wins() {
    let moto = MotoServer::start().await;
    create_replay_table(&moto.endpoint, "relay-state").await;
    let client = dynamodb_client(&moto.endpoint, true);
    // a replay record in the same table is neither read as a slot nor touched by one
    let replays = DynamoReplayRecords::new(client.clone(), "relay-state");
    let key = ReplayKey::of_mac(&[2; 32]);
    let now = SystemTime::now();
    let window = (now + Duration::from_secs(30), now + Duration::from_secs(600));
    assert!(matches!(
        replays.claim(&key, now, window.0, window.1).await.unwrap(),
        Claim::Claimed { .. }
    ));
    contract(Arc::new(DynamoSendSlots::new(client.clone(), "relay-state"))).await;
    assert_eq!(
        replays.claim(&key, now, window.0, window.1).await.unwrap(),
        Claim::InProgress
    );
    let processes: Vec<Arc<dyn WelcomeSendSlots>> = (0..12)
        .map(|_| {
            Arc::new(DynamoSendSlots::new(
                dynamodb_client(&moto.endpoint, true),
                "relay-state",
            )) as Arc<dyn WelcomeSendSlots>
        })
        .collect();
    race(processes, 9).await;
}

#[tokio::test]
async fn dynamodb_slots_fail_closed_and_bounded_when_the_table_is_missing_or_unreachable() {
    let moto = MotoServer::start().await;
    let missing = DynamoSendSlots::new(dynamodb_client(&moto.endpoint, true), "no-such-table");
    let error = missing.take(&held(1, WelcomePart::Goal, at(0))).await.unwrap_err();
    assert!(error.to_string().contains("unavailable"), "{error}");

    let port = test_support::moto::free_port();
    let unreachable = DynamoSendSlots::new(dynamodb_client(&format!("http://127.0.0.1:{port}"), true), "t");
    let started = std::time::Instant::now();
    assert!(unreachable.take(&held(1, WelcomePart::Goal, at(0))).await.is_err());
    assert!(started.elapsed() < keap_relay::signup::replay::DYNAMO_CALL_TIMEOUT + Duration::from_secs(1));
}
