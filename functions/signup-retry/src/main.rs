//! Lambda entry point of `signup-retry` (SQS, partial batch failures): wiring only.

use aws_lambda_events::event::sqs::SqsEvent;
use keap_relay::app::{App, init_tracing, invocation_deadline};
use keap_relay::token::invocation;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let app = App::from_env().await?;
    let deps = &signup_retry::Deps::from_app(&app);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        // Invariant 9: see `keap_relay::token::invocation`.
        let deadline = invocation_deadline(event.context.deadline);
        invocation::run(deadline, signup_retry::handle(event.payload, deps))
            .await
            .map_err(Error::from)
    }))
    .await
}
