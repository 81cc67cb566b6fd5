//! The `oauth` Lambda function (API Gateway HTTP API, payload v2): `/oauth/start`,
//! `/oauth/callback`, `/status`. See `handler.rs`.

use std::convert::Infallible;

use keap_relay::app::{App, init_tracing, invocation_deadline};
use keap_relay::token::invocation;
use lambda_http::{Error, Request, RequestExt, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let app = App::from_env().await?;
    let deps = &oauth::Deps::from_app_with_queues(&app).await;
    lambda_http::run(service_fn(move |request: Request| async move {
        // Invariant 9: see `keap_relay::token::invocation`.
        let deadline = request
            .lambda_context_ref()
            .and_then(|c| invocation_deadline(c.deadline));
        Ok::<_, Infallible>(invocation::run(deadline, oauth::handle(request, deps)).await)
    }))
    .await
}
