//! CloudWatch Embedded Metric Format (EMF): one JSON object per line on stdout, which
//! CloudWatch Logs turns into metrics without any API call from the function.
//!
//! ```
//! use keap_relay::metrics::{EmfRecord, Unit};
//! let line = EmfRecord::new("KeapRelay")
//!     .dimension("FunctionName", "refresh")
//!     .metric("Refreshes", Unit::Count, 1.0)
//!     .property("action", "rotated")
//!     .to_line(std::time::SystemTime::UNIX_EPOCH);
//! assert!(line.contains("\"Namespace\":\"KeapRelay\""));
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::token::TokenError;

/// The namespace of every keap-relay metric.
pub const NAMESPACE: &str = "KeapRelay";

/// Count 1 whenever a function meets Secrets Manager's version quota (`StoreError::QuotaExceeded`):
/// no rotation or re-authorization can be stored until versions age out (up to 24 h). Alarmed by
/// `SecretVersionQuotaAlarm` in template.yaml, per `FunctionName`.
pub const SECRET_VERSION_QUOTA_EXCEEDED: &str = "SecretVersionQuotaExceeded";

/// The words `StoreError::QuotaExceeded` puts in its message, for errors that reach a function
/// only as text (`TokenError::Unavailable`, `SignupError`).
pub const QUOTA_EXCEEDED_TEXT: &str = "version quota is exhausted";

/// Whether a message carries a `StoreError::QuotaExceeded`.
pub fn mentions_quota_exceeded(message: &str) -> bool {
    message.contains(QUOTA_EXCEEDED_TEXT)
}

/// Whether a token error comes from the version quota, as the error itself or as its text.
pub fn is_quota_exceeded(error: &TokenError) -> bool {
    match error {
        TokenError::Store(store) => store.is_quota_exceeded(),
        other => mentions_quota_exceeded(&other.to_string()),
    }
}

/// The EMF record of one encounter with the version quota (`SecretVersionQuotaExceeded` = 1).
pub fn quota_exceeded_record(function_name: impl Into<String>) -> EmfRecord {
    EmfRecord::new(NAMESPACE)
        .dimension("FunctionName", function_name)
        .metric(SECRET_VERSION_QUOTA_EXCEEDED, Unit::Count, 1.0)
}

/// [`quota_exceeded_record`] as a line for stdout, stamped now.
pub fn quota_exceeded_line(function_name: impl Into<String>) -> String {
    quota_exceeded_record(function_name).to_line(SystemTime::now())
}

/// Count 1 per replay of a signed signup answered from its record, or refused while the first
/// arrival is still being processed (`signup::replay`). Not alarmed: a sender's retries after a
/// lost answer count here too; a sudden rise is worth a look.
pub const SIGNUP_REPLAYS: &str = "SignupReplays";

/// One `metric` = 1 for `function_name`, as a line for stdout, stamped now.
pub fn count_line(metric: &str, function_name: impl Into<String>) -> String {
    EmfRecord::new(NAMESPACE)
        .dimension("FunctionName", function_name)
        .metric(metric, Unit::Count, 1.0)
        .to_line(SystemTime::now())
}

/// Count 1 per achievement of `KEAP_WELCOME_GOAL` that no published campaign listens to (a
/// configuration mistake: nothing started), from signup and signup-retry. Alarmed by
/// `WelcomeGoalWithoutListenerAlarm` in template.yaml, dimension `FunctionName`.
pub const WELCOME_GOAL_WITHOUT_LISTENER: &str = "WelcomeGoalWithoutListener";

/// [`WELCOME_GOAL_WITHOUT_LISTENER`] = 1 as a line for stdout, stamped now, with the goal.
pub fn welcome_goal_without_listener_line(function_name: impl Into<String>, goal: &str) -> String {
    EmfRecord::new(NAMESPACE)
        .dimension("FunctionName", function_name)
        .metric(WELCOME_GOAL_WITHOUT_LISTENER, Unit::Count, 1.0)
        .property("goal", goal)
        .to_line(SystemTime::now())
}

/// Count 1 per failed administrator login (HTTP Basic credentials presented and refused on
/// `/oauth/start` or `/status`), from the oauth function. Alarmed by `AdminLoginFailuresAlarm` in
/// template.yaml, dimension `FunctionName`.
pub const ADMIN_LOGIN_FAILURES: &str = "AdminLoginFailures";

/// The EMF record of one failed administrator login (`AdminLoginFailures` = 1), with the route
/// and the caller's address as searchable properties (never the user name or the password).
pub fn admin_login_failure_record(function_name: impl Into<String>, route: &str, source_ip: &str) -> EmfRecord {
    EmfRecord::new(NAMESPACE)
        .dimension("FunctionName", function_name)
        .metric(ADMIN_LOGIN_FAILURES, Unit::Count, 1.0)
        .property("route", route)
        .property("source_ip", source_ip)
}

/// CloudWatch units used by keap-relay (days have no CloudWatch unit: `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
    None,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Seconds => "Seconds",
            Unit::None => "None",
        }
    }
}

/// Where EMF lines go: stdout on Lambda (CloudWatch Logs reads EMF there), a buffer in tests.
pub trait MetricsSink: Send + Sync {
    fn emit(&self, line: &str);
}

/// CloudWatch Logs reads EMF from the function's stdout.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdoutMetrics;

impl MetricsSink for StdoutMetrics {
    fn emit(&self, line: &str) {
        println!("{line}");
    }
}

/// One EMF document: a namespace, one dimension set, metrics and free-form properties.
/// Never put a secret in it: it is a log line.
#[derive(Debug, Clone)]
pub struct EmfRecord {
    namespace: String,
    dimensions: Vec<(String, String)>,
    metrics: Vec<(String, Unit, f64)>,
    properties: Map<String, Value>,
}

impl EmfRecord {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            dimensions: Vec::new(),
            metrics: Vec::new(),
            properties: Map::new(),
        }
    }

    pub fn dimension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.dimensions.push((name.into(), value.into()));
        self
    }

    /// Adds a metric; non-finite values are dropped (CloudWatch rejects them).
    pub fn metric(mut self, name: impl Into<String>, unit: Unit, value: f64) -> Self {
        if value.is_finite() {
            self.metrics.push((name.into(), unit, value));
        }
        self
    }

    /// Adds a value that is searchable in Logs Insights but is not a metric.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The names of the metrics in this record, in order.
    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.metrics.iter().map(|(name, _, _)| name.as_str())
    }

    pub fn to_json(&self, timestamp: SystemTime) -> Value {
        let millis = timestamp
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut root = self.properties.clone();
        for (name, value) in &self.dimensions {
            root.insert(name.clone(), Value::String(value.clone()));
        }
        for (name, _, value) in &self.metrics {
            root.insert(name.clone(), json!(value));
        }
        let dimension_names: Vec<&str> = self.dimensions.iter().map(|(name, _)| name.as_str()).collect();
        let definitions: Vec<Value> = self
            .metrics
            .iter()
            .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": millis,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [dimension_names],
                    "Metrics": definitions,
                }],
            }),
        );
        Value::Object(root)
    }

    /// The record as one line of JSON (no newline), ready for stdout.
    pub fn to_line(&self, timestamp: SystemTime) -> String {
        self.to_json(timestamp).to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::StoreError;

    use super::*;

    #[test]
    fn the_quota_is_told_apart_as_an_error_and_as_text() {
        let quota = StoreError::QuotaExceeded {
            operation: "put_version",
            detail: "LimitExceededException".into(),
        };
        assert!(
            mentions_quota_exceeded(&quota.to_string()),
            "the marker text follows StoreError's message: {quota}"
        );
        assert!(is_quota_exceeded(&TokenError::Store(quota.clone())));
        assert!(is_quota_exceeded(&TokenError::Unavailable {
            detail: quota.to_string(),
            retry_after: None
        }));
        let transient = StoreError::Transient {
            operation: "put_version",
            detail: "throttled".into(),
        };
        assert!(!is_quota_exceeded(&TokenError::Store(transient.clone())));
        assert!(!is_quota_exceeded(&TokenError::Unavailable {
            detail: transient.to_string(),
            retry_after: None
        }));
        assert!(!is_quota_exceeded(&TokenError::NotConnected));
    }

    #[test]
    fn the_quota_line_is_one_count_per_function() {
        let doc: Value = serde_json::from_str(&quota_exceeded_line("keap-relay-SignupFunction-abc")).unwrap();
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "KeapRelay");
        assert_eq!(directive["Dimensions"], json!([["FunctionName"]]));
        assert_eq!(
            directive["Metrics"],
            json!([{"Name": "SecretVersionQuotaExceeded", "Unit": "Count"}])
        );
        assert_eq!(doc["FunctionName"], "keap-relay-SignupFunction-abc");
        assert_eq!(doc["SecretVersionQuotaExceeded"], 1.0);
    }

    #[test]
    fn a_failed_login_is_one_count_per_function_with_route_and_address() {
        let line = admin_login_failure_record("keap-relay-OAuthFunction-abc", "/status", "203.0.113.7")
            .to_line(UNIX_EPOCH + Duration::from_secs(1));
        let doc: Value = serde_json::from_str(&line).unwrap();
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "KeapRelay");
        assert_eq!(directive["Dimensions"], json!([["FunctionName"]]));
        assert_eq!(
            directive["Metrics"],
            json!([{"Name": "AdminLoginFailures", "Unit": "Count"}])
        );
        assert_eq!(doc["FunctionName"], "keap-relay-OAuthFunction-abc");
        assert_eq!(doc["AdminLoginFailures"], 1.0);
        assert_eq!(
            (doc["route"].as_str(), doc["source_ip"].as_str()),
            (Some("/status"), Some("203.0.113.7"))
        );
    }

    #[test]
    fn document_follows_the_emf_specification() {
        let record = EmfRecord::new(NAMESPACE)
            .dimension("FunctionName", "keap-relay-refresh")
            .metric("Refreshes", Unit::Count, 1.0)
            .metric("AccessTokenSecondsToExpiry", Unit::Seconds, 86_000.0)
            .metric("Broken", Unit::None, f64::NAN)
            .property("action", "rotated");
        let line = record.to_line(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert!(!line.contains('\n'));
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_123u64);
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "KeapRelay");
        assert_eq!(directive["Dimensions"], json!([["FunctionName"]]));
        assert_eq!(
            directive["Metrics"],
            json!([{"Name": "Refreshes", "Unit": "Count"}, {"Name": "AccessTokenSecondsToExpiry", "Unit": "Seconds"}])
        );
        assert_eq!(doc["FunctionName"], "keap-relay-refresh");
        assert_eq!(doc["Refreshes"], 1.0);
        assert_eq!(doc["AccessTokenSecondsToExpiry"], 86_000.0);
        assert!(doc.get("Broken").is_none());
        assert_eq!(doc["action"], "rotated");
        assert_eq!(
            record.metric_names().collect::<Vec<_>>(),
            ["Refreshes", "AccessTokenSecondsToExpiry"]
        );
    }
}
