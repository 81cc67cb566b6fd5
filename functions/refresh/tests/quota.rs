//! Secrets Manager's version quota seen by the scheduled refresh: the run fails as any store
//! failure does, and its one EMF line carries `SecretVersionQuotaExceeded = 1` for the alarm.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use keap_relay::config::AuthMode;
use keap_relay::keap::api::KeapApi;
use keap_relay::store::StoreError;
use keap_relay::token::{
    ConnectError, ConnectOutcome, Connection, ConnectionStatus, Credential, CredentialSource, RotationPolicy,
    RotationReport, TokenError, TokenGrant,
};
use refresh::{MetricsSink, RefreshDeps, handle};
use serde_json::Value;

#[derive(Default)]
struct CollectedMetrics(Mutex<Vec<String>>);

impl MetricsSink for CollectedMetrics {
    fn emit(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

/// A connection whose rotation (and credential) fails with a given error.
struct Failing(fn() -> TokenError);

#[async_trait]
impl CredentialSource for Failing {
    async fn credential(&self) -> Result<Credential, TokenError> {
        Err((self.0)())
    }

    async fn after_unauthorized(&self, _rejected: &Credential) -> Result<Credential, TokenError> {
        Err((self.0)())
    }
}

#[async_trait]
impl Connection for Failing {
    async fn connect(&self, _grant: TokenGrant, _allow_switch: bool) -> Result<ConnectOutcome, ConnectError> {
        unreachable!("the refresh never connects")
    }

    async fn status(&self) -> Result<ConnectionStatus, TokenError> {
        Err((self.0)())
    }

    async fn rotate_if_due(&self, _policy: RotationPolicy) -> Result<RotationReport, TokenError> {
        Err((self.0)())
    }
}

fn quota() -> StoreError {
    StoreError::QuotaExceeded {
        operation: "put_version",
        detail: "LimitExceededException: too many versions".into(),
    }
}

/// Runs the handler once over `error` and returns the run's only EMF line.
async fn run(mode: AuthMode, error: fn() -> TokenError) -> Value {
    let metrics = Arc::new(CollectedMetrics::default());
    let deps = RefreshDeps {
        mode,
        policy: RotationPolicy {
            lead: Duration::from_secs(6 * 3600),
            max_refresh_age: Duration::from_secs(30 * 86_400),
        },
        connection: Arc::new(Failing(error)),
        // Never called: the credential fails first.
        key_check: Arc::new(KeapApi::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9",
            Duration::from_secs(1),
        )),
        start_url: None,
        function_name: "keap-relay-RefreshFunction-abc".into(),
        metrics: metrics.clone(),
        events: None,
    };
    let event: EventBridgeEvent<Value> = serde_json::from_value(
        serde_json::json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}),
    )
    .unwrap();
    let failed = handle(event, &deps).await.unwrap_err();
    assert!(matches!(failed, refresh::RefreshError::Token(_)), "{failed}");
    let lines = metrics.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 1, "one EMF line per run");
    serde_json::from_str(&lines[0]).unwrap()
}

fn metric_names(doc: &Value) -> Vec<String> {
    doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_quota_as_a_store_error_is_counted() {
    let doc = run(AuthMode::OAuth, || TokenError::Store(quota())).await;
    assert_eq!(doc["SecretVersionQuotaExceeded"], 1.0);
    assert_eq!(doc["RefreshFailures"], 1.0);
    assert!(metric_names(&doc).contains(&"SecretVersionQuotaExceeded".to_owned()));
    assert_eq!(
        doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([["FunctionName"]])
    );
    assert_eq!(doc["FunctionName"], "keap-relay-RefreshFunction-abc");
}

#[tokio::test]
async fn the_quota_inside_an_unavailable_error_is_counted() {
    let doc = run(AuthMode::OAuth, || TokenError::Unavailable {
        detail: quota().to_string(),
        retry_after: None,
    })
    .await;
    assert_eq!(doc["SecretVersionQuotaExceeded"], 1.0);
    assert_eq!(doc["RefreshFailures"], 1.0);
}

#[tokio::test]
async fn other_store_failures_are_not_the_quota() {
    let doc = run(AuthMode::OAuth, || {
        TokenError::Store(StoreError::Permanent {
            operation: "put_version",
            detail: "AccessDeniedException".into(),
        })
    })
    .await;
    assert_eq!(doc["RefreshFailures"], 1.0);
    assert!(doc.get("SecretVersionQuotaExceeded").is_none());
    assert!(!metric_names(&doc).contains(&"SecretVersionQuotaExceeded".to_owned()));
}

#[tokio::test]
async fn api_key_mode_counts_the_quota_too() {
    let doc = run(AuthMode::ApiKey, || TokenError::Store(quota())).await;
    assert_eq!(doc["SecretVersionQuotaExceeded"], 1.0);
}
