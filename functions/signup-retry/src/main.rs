//! Lambda entry point of `signup-retry` (SQS, partial batch failures): wiring only.

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use keap_relay::app::{App, init_tracing};
use keap_relay::token::invocation;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let app = App::from_env().await?;
    let service = Arc::new(app.signup_service());
    // Signups waiting for Keap to be reconnected go back to their own queue.
    let parking = app.queue.clone();
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (service, parking) = (service.clone(), parking.clone());
        // Invariant 9: see `keap_relay::token::invocation`.
        let deadline = invocation::deadline_from_millis(event.context.deadline, std::time::SystemTime::now());
        async move {
            invocation::run(deadline, signup_retry::handler::handle_with_parking(event.payload, &service, parking.as_deref()))
                .await
                .map_err(Error::from)
        }
    }))
    .await
}
