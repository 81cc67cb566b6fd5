//! Lambda entry point of `events` (SQS, partial batch failures): wiring only.

use aws_lambda_events::event::sqs::SqsEvent;
use keap_relay::app::{App, init_tracing, invocation_deadline};
use keap_relay::token::invocation;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let app = App::from_env().await?;
    let deps = &events::Deps::from_app(&app).await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        // Invariant 9: see `keap_relay::token::invocation`.
        let deadline = invocation_deadline(event.context.deadline);
        invocation::run(deadline, events::handle(event.payload, deps))
            .await
            .map_err(Error::from)
    }))
    .await
}
