//! Lambda entry point of `signup-retry` (SQS, partial batch failures): wiring only.

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use keap_relay::app::{App, init_tracing};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let service = Arc::new(App::from_env().await?.signup_service());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let service = service.clone();
        async move { signup_retry::handler::handle(event.payload, &service).await.map_err(Error::from) }
    }))
    .await
}
