//! Lambda entry point of `POST /signup`: wiring only (see `handler.rs`).

use std::sync::Arc;

use keap_relay::app::{App, init_tracing};
use lambda_http::{Error, Request, service_fn};
use signup::AppDeps;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let deps = Arc::new(AppDeps::new(App::from_env().await?));
    lambda_http::run(service_fn(move |request: Request| {
        let deps = deps.clone();
        async move { Ok::<_, Error>(signup::handler::handle(&request, deps.as_ref()).await) }
    }))
    .await
}
