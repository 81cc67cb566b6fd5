//! Signed `POST /signup` events (API Gateway HTTP API, payload 2.0), built from the sample
//! event `events/signup-valid.json` with a unique email per signup and a fresh signature.

use std::path::Path;
use std::time::SystemTime;

use keap_relay::SecretString;
use keap_relay::signup::signature::unix_seconds;
use serde_json::{Value, json};
use signup::event_signing::resign_event;

use crate::{BenchError, Result};

/// The app secret's `signup_signing_key` in every bench setup.
pub const SIGNING_KEY: &str = "bench-signup-signing-key";
pub const WELCOME_TAG: &str = "Welcome";
/// Requested by every signup body besides the welcome tag (as in the sample event).
pub const EXTRA_TAG: &str = "Newsletter";

/// Makes signed signup events; keeps the sample event's headers and request context.
#[derive(Debug, Clone)]
pub struct SignupEvents {
    template: Value,
    key: SecretString,
    run: String,
}

impl SignupEvents {
    pub fn new(workspace: &Path) -> Result<SignupEvents> {
        let path = workspace.join("events/signup-valid.json");
        let text = std::fs::read_to_string(&path).map_err(BenchError::io_at("read", &path))?;
        let template = serde_json::from_str(&text).map_err(BenchError::json(format!("parse {}", path.display())))?;
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Ok(SignupEvents {
            template,
            key: SecretString::from(SIGNING_KEY),
            run,
        })
    }

    /// A unique address per `index` (and per run, so contacts never collide across runs).
    pub fn email(&self, label: &str, index: usize) -> String {
        format!("{label}-{}-{index}@example.com", self.run)
    }

    /// The JSON body of signup `email`.
    pub fn body(email: &str) -> String {
        json!({
            "email": email,
            "given_name": "Ada",
            "family_name": "Lovelace",
            "opt_in": true,
            "tags": [EXTRA_TAG],
            "source": "landing-page",
        })
        .to_string()
    }

    /// The event for `email`, signed now.
    pub fn event(&self, email: &str) -> Result<String> {
        let mut event = self.template.clone();
        let body = Self::body(email);
        event["headers"]["content-length"] = Value::String(body.len().to_string());
        event["body"] = Value::String(body);
        let text = event.to_string();
        resign_event(&text, &self.key, unix_seconds(SystemTime::now()))
            .map_err(|e| BenchError::Failed(format!("could not sign the sample event: {e}")))
    }

    /// The event as the function's handler receives it (through lambda_http's deserializer).
    pub fn request(&self, email: &str) -> Result<lambda_http::Request> {
        lambda_http::request::from_str(&self.event(email)?)
            .map_err(|e| BenchError::Failed(format!("lambda_http refused the event: {e}")))
    }
}
