//! The `refresh` Lambda function (EventBridge schedule). See `handler.rs`.

use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use keap_relay::app::{App, init_tracing};
use keap_relay::token::invocation;
use keap_relay::token::RotationPolicy;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use refresh::handler::start_url_from_redirect;
use refresh::{RefreshDeps, StdoutMetrics};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let app = App::from_env().await?;
    let start_url = std::env::var("KEAP_START_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .or_else(|| app.config.redirect_uri.as_deref().and_then(start_url_from_redirect));
    let deps = RefreshDeps {
        mode: app.config.auth_mode,
        policy: RotationPolicy { lead: app.config.refresh_lead, max_refresh_age: app.config.refresh_max_age },
        connection: app.connection.clone(),
        key_check: Arc::new(app.api.clone()),
        start_url,
        function_name: std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "refresh".into()),
        metrics: Arc::new(StdoutMetrics),
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<EventBridgeEvent<serde_json::Value>>| async move {
        // Invariant 9: see `keap_relay::token::invocation`.
        let deadline = invocation::deadline_from_millis(event.context.deadline, std::time::SystemTime::now());
        invocation::run(deadline, refresh::handle(event.payload, deps)).await
    }))
    .await
}
