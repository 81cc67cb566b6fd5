//! Rotation bench: store calls per request at steady state; Keap token calls, new secret
//! versions and time from expiry until the last contender holds the new token, for 1, 8 and
//! 64 contenders in separate processes, over the file store and (when moto_server is found)
//! moto's Secrets Manager. Run with `cargo run --release -p relay-tests --bin rotation-bench`
//! (or `bench/rotation/run.sh`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keap_relay::store::counting::CountingStore;
use keap_relay::token::CredentialSource;
use keap_sandbox::ReusePolicy;
use relay_tests::rotation::{StoreSpec, StormSetup, spawn_contenders, unleash};
use test_support::moto::{MotoServer, find_moto_server};
use test_support::temp::TempDir;

const ROUNDS: usize = 3;

fn contender_program() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.with_file_name("rotation-contender")
}

async fn steady_state(store: &StoreSpec) -> (u64, f64) {
    let setup = StormSetup::new(store.clone(), ReusePolicy::Reject, false).await;
    let counting = Arc::new(CountingStore::new(store.open()));
    let source = setup.args.token_source(counting.clone());
    source.credential().await.expect("cold credential");
    let cold = counting.counts().total();
    counting.reset();
    let requests = 10_000;
    for _ in 0..requests {
        source.credential().await.expect("warm credential");
    }
    (cold, counting.counts().total() as f64 / requests as f64)
}

struct Row {
    contenders: usize,
    keap_calls: Vec<u64>,
    versions: Vec<usize>,
    store_calls: Vec<u64>,
    elapsed: Vec<Duration>,
}

async fn rotation(store: &StoreSpec, processes: usize, callers: usize) -> Row {
    let mut row = Row {
        contenders: processes * callers,
        keap_calls: vec![],
        versions: vec![],
        store_calls: vec![],
        elapsed: vec![],
    };
    for _ in 0..ROUNDS {
        let mut setup = StormSetup::new(store.clone(), ReusePolicy::RevokeFamily, true).await;
        setup.args.callers = callers;
        let outcome = unleash(spawn_contenders(&contender_program(), &setup.args, processes)).await;
        assert!(outcome.errors().is_empty(), "{:?}", outcome.errors());
        row.keap_calls
            .push(setup.sandbox.stats().refreshes_served + setup.sandbox.stats().refresh_failures_total());
        row.versions.push(setup.new_versions().await);
        row.store_calls.push(outcome.store_calls);
        row.elapsed.push(outcome.elapsed);
    }
    row
}

fn median<T: Ord + Copy>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

async fn bench(name: &str, store: StoreSpec) {
    let (cold, per_request) = steady_state(&store).await;
    println!("\n## {name}\n");
    println!(
        "steady state: {cold} store call(s) on a cold start, then {per_request:.4} store calls per request (10,000 requests)\n"
    );
    println!(
        "| contenders (processes x callers) | Keap token calls per rotation | new secret versions | store calls, all contenders | expiry -> last contender served (median of {ROUNDS}) |"
    );
    println!("|---|---|---|---|---|");
    for (processes, callers) in [(1, 1), (8, 1), (8, 8)] {
        let row = rotation(&store, processes, callers).await;
        println!(
            "| {} ({processes} x {callers}) | {} | {} | {} | {:.0} ms |",
            row.contenders,
            row.keap_calls.iter().max().unwrap(),
            row.versions.iter().max().unwrap(),
            median(&row.store_calls),
            median(&row.elapsed).as_secs_f64() * 1000.0
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = TempDir::new("bench-file");
    bench("file store", StoreSpec::File(dir.path().to_owned())).await;
    match find_moto_server() {
        Ok(_) => {
            let moto = MotoServer::start().await;
            bench(
                "Secrets Manager (moto)",
                StoreSpec::SecretsManager {
                    endpoint: moto.endpoint.clone(),
                },
            )
            .await;
        }
        Err(reason) => println!("\n(skipping Secrets Manager: {reason})"),
    }
}
