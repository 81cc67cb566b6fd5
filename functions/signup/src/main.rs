//! Lambda entry point of `POST /signup`: wiring only (see `handler.rs`).

use std::sync::Arc;

use keap_relay::app::{App, init_tracing};
use keap_relay::token::invocation;
use lambda_http::{Error, Request, RequestExt, service_fn};
use signup::AppDeps;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let deps = Arc::new(AppDeps::new(App::from_env().await?));
    lambda_http::run(service_fn(move |request: Request| {
        let deps = deps.clone();
        // Invariant 9: the invocation's deadline reaches the token source, and the handler does
        // not return while a refresh token it spent is not stored yet.
        let deadline = request.lambda_context_ref().and_then(|c| invocation::deadline_from_millis(c.deadline, std::time::SystemTime::now()));
        async move { Ok::<_, Error>(invocation::run(deadline, signup::handler::handle(&request, deps.as_ref())).await) }
    }))
    .await
}
