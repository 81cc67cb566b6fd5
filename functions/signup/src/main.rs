//! Lambda entry point of `POST /signup` and the form routes: wiring only (see `handler.rs`, `form/`).

use std::convert::Infallible;

use keap_relay::app::{App, init_tracing, invocation_deadline};
use keap_relay::token::invocation;
use lambda_http::{Error, Request, RequestExt, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let app = App::from_env().await?;
    let deps = &signup::Deps::from_app(&app);
    lambda_http::run(service_fn(move |request: Request| async move {
        // Invariant 9: see `keap_relay::token::invocation`.
        let deadline = request
            .lambda_context_ref()
            .and_then(|c| invocation_deadline(c.deadline));
        Ok::<_, Infallible>(invocation::run(deadline, signup::route(&request, deps)).await)
    }))
    .await
}
