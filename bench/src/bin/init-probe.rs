//! Where a function's init time goes: the steps of `signup`'s `main` before `lambda_runtime`
//! takes over, as `shared/src/app.rs` does them, each timed on first use in a fresh process.
//! Started like a function (same environment); prints one JSON object of step -> ms.

use std::sync::Arc;
use std::time::Instant;

use keap_relay::app::{App, init_tracing};
use keap_relay::config::Config;
use keap_relay::signup::{SignupQueue, SqsQueue};
use keap_relay::store::secrets_manager::SecretsManagerStore;
use serde_json::{Map, Value};

#[tokio::main]
async fn main() {
    let mut steps = Map::new();
    let mut lap = Instant::now();
    let mut record = |name: &str| {
        steps.insert(name.to_owned(), Value::from(lap.elapsed().as_secs_f64() * 1e3));
        lap = Instant::now();
    };
    init_tracing();
    record("init_tracing");
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("init-probe: {error}");
            std::process::exit(2);
        }
    };
    record("config_from_env");
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    record("aws_config_load");
    let store = Arc::new(SecretsManagerStore::new(aws_sdk_secretsmanager::Client::new(&aws)));
    record("secrets_manager_client");
    let queue = match &config.signup_queue_url {
        Some(url) => {
            let aws = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
            record("second_aws_config_load");
            let queue = Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&aws), url.clone())) as Arc<dyn SignupQueue>;
            record("sqs_client");
            Some(queue)
        }
        None => None,
    };
    let app = App::with_parts(config, store, queue).unwrap_or_else(|error| {
        eprintln!("init-probe: {error}");
        std::process::exit(2)
    });
    record("app_with_parts_http_client");
    let deps = signup::AppDeps::from_app(&app);
    record("signup_app_deps");
    drop(deps);
    println!("{}", Value::Object(steps));
}
