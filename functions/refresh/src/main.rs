//! The `refresh` Lambda function (EventBridge schedule). See `handler.rs`.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use keap_relay::app::{App, init_tracing, invocation_deadline};
use keap_relay::token::invocation;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let app = App::from_env().await?;
    let deps = &refresh::Deps::from_app(&app);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<serde_json::Value>>| async move {
            // Invariant 9: see `keap_relay::token::invocation`.
            let deadline = invocation_deadline(event.context.deadline);
            invocation::run(deadline, refresh::handle(event.payload, deps)).await
        },
    ))
    .await
}
