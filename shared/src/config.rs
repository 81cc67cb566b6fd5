//! Configuration read from the environment (names from `interface.md`) and the app secret.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub const DEFAULT_API_URL: &str = "https://api.infusionsoft.com/crm/rest";
pub const DEFAULT_TOKEN_URL: &str = "https://api.infusionsoft.com/token";
pub const DEFAULT_AUTHORIZE_URL: &str = "https://accounts.infusionsoft.com/app/oauth/authorize";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is required")]
    Missing { name: &'static str },
    #[error("environment variable {name} has an invalid value: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("the app secret is not valid JSON of the documented shape: {0}")]
    AppSecret(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    OAuth,
    ApiKey,
}

/// Which backend holds the secrets. Lambda uses Secrets Manager; the local run uses files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    SecretsManager,
    /// A directory of versioned secret files (`KEAP_STORE=file`, `KEAP_STORE_DIR`).
    File(std::path::PathBuf),
}

/// Everything a function reads from its environment. Secrets are not here: they live
/// in the app secret and the token secret, read through a [`crate::store::SecretStore`].
#[derive(Debug, Clone)]
pub struct Config {
    pub auth_mode: AuthMode,
    pub store: StoreKind,
    pub app_secret_id: String,
    pub token_secret_id: String,
    pub redirect_uri: Option<String>,
    pub api_url: String,
    pub token_url: String,
    pub authorize_url: String,
    /// Tag id or name applied to every signup.
    pub welcome_tag: Option<String>,
    pub signup_queue_url: Option<String>,
    /// Timeout of every HTTP call to Keap.
    pub http_timeout: Duration,
    /// An access token with less life than this is refreshed before use by request handlers.
    pub access_margin: Duration,
    /// The scheduled refresh rotates when the access token has less than this left.
    pub refresh_lead: Duration,
    /// The scheduled refresh rotates when the refresh token is older than this.
    pub refresh_max_age: Duration,
    /// How long a rotation lease lasts; must exceed `http_timeout` plus a store round trip.
    pub lease_duration: Duration,
    /// Shared backoff after a failed refresh: the first wait, doubling up to the second
    /// (`docs/token-rotation.md`, invariant 10).
    pub refresh_backoff_min: Duration,
    pub refresh_backoff_max: Duration,
    /// Total time a signup may spend retrying Keap 429/5xx before it is queued.
    pub signup_retry_budget: Duration,
    pub welcome_email: Option<WelcomeEmail>,
}

/// Optional direct welcome email, for accounts without a tag-triggered automation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeEmail {
    /// Keap user id that sends the email (required by Keap's email API).
    pub user_id: i64,
    pub subject: String,
    pub html_body: String,
}

/// The operator-written app secret (`KEAP_APP_SECRET_ID`).
///
/// An empty or blank field counts as absent: the template creates the secret with empty
/// placeholders, and an empty signing key or admin password must never be a usable one.
#[derive(Debug, Clone, Deserialize)]
pub struct AppSecret {
    #[serde(default, deserialize_with = "non_blank")]
    pub client_id: Option<String>,
    #[serde(default, deserialize_with = "non_blank")]
    pub client_secret: Option<SecretString>,
    #[serde(default, deserialize_with = "non_blank")]
    pub api_key: Option<SecretString>,
    #[serde(default, deserialize_with = "non_blank")]
    pub signup_signing_key: Option<SecretString>,
    #[serde(default, deserialize_with = "non_blank")]
    pub admin_password: Option<SecretString>,
}

fn non_blank<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    let value: Option<String> = Option::deserialize(deserializer)?;
    Ok(value.filter(|v| !v.trim().is_empty()).map(T::from))
}

impl AppSecret {
    /// Parses the secret. The error names the kind and position of the fault, never the
    /// value (serde's messages quote the offending value, which here is a secret).
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(json).map_err(|e| {
            ConfigError::AppSecret(format!("{:?} error at line {}, column {}", e.classify(), e.line(), e.column()))
        })
    }
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number(name: &'static str, default: u64) -> Result<u64, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|e| ConfigError::Invalid { name, reason: e.to_string() }),
    }
}

fn seconds(name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    number(name, default).map(Duration::from_secs)
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let auth_mode = match var("KEAP_AUTH_MODE").as_deref() {
            None | Some("oauth") => AuthMode::OAuth,
            Some("api-key") => AuthMode::ApiKey,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "KEAP_AUTH_MODE",
                    reason: format!("{other:?} is neither \"oauth\" nor \"api-key\""),
                });
            }
        };
        let store = match var("KEAP_STORE").as_deref() {
            None | Some("secretsmanager") => StoreKind::SecretsManager,
            Some("file") => StoreKind::File(
                var("KEAP_STORE_DIR").unwrap_or_else(|| ".local/secrets".into()).into(),
            ),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "KEAP_STORE",
                    reason: format!("{other:?} is neither \"secretsmanager\" nor \"file\""),
                });
            }
        };
        let app_secret_id = var("KEAP_APP_SECRET_ID").ok_or(ConfigError::Missing { name: "KEAP_APP_SECRET_ID" })?;
        let token_secret_id = match (auth_mode, var("KEAP_TOKEN_SECRET_ID")) {
            (_, Some(id)) => id,
            (AuthMode::ApiKey, None) => String::new(),
            (AuthMode::OAuth, None) => return Err(ConfigError::Missing { name: "KEAP_TOKEN_SECRET_ID" }),
        };
        let welcome_email = match var("KEAP_WELCOME_EMAIL_SUBJECT") {
            None => None,
            Some(subject) => Some(WelcomeEmail {
                user_id: var("KEAP_WELCOME_EMAIL_USER_ID")
                    .ok_or(ConfigError::Missing { name: "KEAP_WELCOME_EMAIL_USER_ID" })?
                    .parse()
                    .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                        name: "KEAP_WELCOME_EMAIL_USER_ID",
                        reason: e.to_string(),
                    })?,
                subject,
                html_body: var("KEAP_WELCOME_EMAIL_HTML")
                    .ok_or(ConfigError::Missing { name: "KEAP_WELCOME_EMAIL_HTML" })?,
            }),
        };
        let config = Self {
            auth_mode,
            store,
            app_secret_id,
            token_secret_id,
            redirect_uri: var("KEAP_REDIRECT_URI"),
            api_url: var("KEAP_API_URL").unwrap_or_else(|| DEFAULT_API_URL.into()),
            token_url: var("KEAP_TOKEN_URL").unwrap_or_else(|| DEFAULT_TOKEN_URL.into()),
            authorize_url: var("KEAP_AUTHORIZE_URL").unwrap_or_else(|| DEFAULT_AUTHORIZE_URL.into()),
            welcome_tag: var("KEAP_WELCOME_TAG"),
            signup_queue_url: var("SIGNUP_QUEUE_URL"),
            http_timeout: seconds("KEAP_HTTP_TIMEOUT_SECONDS", 10)?,
            access_margin: seconds("KEAP_ACCESS_MARGIN_SECONDS", 300)?,
            refresh_lead: seconds("KEAP_REFRESH_LEAD_SECONDS", 6 * 3600)?,
            refresh_max_age: seconds("KEAP_REFRESH_MAX_AGE_SECONDS", 30 * 86400)?,
            lease_duration: seconds("KEAP_LEASE_SECONDS", 30)?,
            refresh_backoff_min: seconds("KEAP_REFRESH_BACKOFF_MIN_SECONDS", 30)?,
            refresh_backoff_max: seconds("KEAP_REFRESH_BACKOFF_MAX_SECONDS", 7200)?,
            signup_retry_budget: Duration::from_millis(number("KEAP_SIGNUP_RETRY_BUDGET_MS", 2000)?),
            welcome_email,
        };
        config.validate()?;
        Ok(config)
    }

    /// The connect timeout of Keap calls: well under the whole call's timeout, so a connection
    /// that never opens is told apart from a request whose answer was lost (the first is safe
    /// to retry, the second may have spent a refresh token).
    pub fn connect_timeout(&self) -> Duration {
        (self.http_timeout / 2).min(Duration::from_secs(5))
    }

    /// Refuses settings that cannot work, naming the variables to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.http_timeout < Duration::from_secs(2) {
            return Err(ConfigError::Invalid {
                name: "KEAP_HTTP_TIMEOUT_SECONDS",
                reason: "must be at least 2 seconds: a shorter timeout cannot tell a slow connection from a lost answer, and a lost answer to a refresh may cost the connection".into(),
            });
        }
        if self.auth_mode == AuthMode::OAuth
            && let Err(error) = crate::token::TokenSettings::from_config(self).check()
        {
            let reason = match error {
                crate::token::TokenError::Misconfigured(reason) => reason,
                other => other.to_string(),
            };
            return Err(ConfigError::Invalid { name: "KEAP_LEASE_SECONDS", reason });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_with_the_variables_to_change() {
        let base = crate::app::local_config(AuthMode::OAuth, "http://127.0.0.1:9");
        base.validate().unwrap();
        let tight = Config { lease_duration: base.http_timeout + Duration::from_secs(5), ..base.clone() };
        let error = tight.validate().unwrap_err().to_string();
        assert!(error.contains("KEAP_LEASE_SECONDS") && error.contains("KEAP_HTTP_TIMEOUT_SECONDS"), "{error}");
        let short = Config { http_timeout: Duration::from_secs(1), ..base.clone() };
        assert!(short.validate().unwrap_err().to_string().contains("KEAP_HTTP_TIMEOUT_SECONDS"));
        assert!(base.connect_timeout() < base.http_timeout);
        let api_key = Config { auth_mode: AuthMode::ApiKey, ..tight };
        api_key.validate().unwrap();
    }

    #[test]
    fn blank_app_secret_fields_count_as_absent() {
        let secret = AppSecret::from_json(
            r#"{"client_id":"","client_secret":null,"api_key":"  ","signup_signing_key":"k","admin_password":""}"#,
        )
        .unwrap();
        assert!(secret.client_id.is_none());
        assert!(secret.client_secret.is_none());
        assert!(secret.api_key.is_none());
        assert!(secret.admin_password.is_none());
        assert_eq!(secret.signup_signing_key.unwrap().expose_secret(), "k");
    }

    #[test]
    fn an_app_secret_error_never_echoes_the_value() {
        let error = AppSecret::from_json(r#"{"client_secret": 12345678}"#).unwrap_err().to_string();
        assert!(!error.contains("12345678"), "{error}");
    }
}
