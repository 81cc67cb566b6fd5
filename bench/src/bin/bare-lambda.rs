//! The floor of the cold-start table: `lambda_runtime` with an echo handler and no init work
//! of its own, started exactly like the functions. What a function adds above this is its init.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<_, Error>(event.payload)
    }))
    .await
}
