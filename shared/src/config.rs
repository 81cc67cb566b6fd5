//! Configuration read from the environment (names from `docs/interface.md`) and the app secret.

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
    /// `KEAP_START_URL`: the page an administrator opens to (re)connect Keap, for operators'
    /// messages (the refresh function derives it from `redirect_uri` when unset).
    pub start_url: Option<String>,
    /// `AWS_LAMBDA_FUNCTION_NAME`, set by Lambda itself (the metrics' `FunctionName`).
    pub function_name: Option<String>,
    pub api_url: String,
    pub token_url: String,
    pub authorize_url: String,
    /// Tag id or name applied to every signup.
    pub welcome_tag: Option<String>,
    pub signup_queue_url: Option<String>,
    /// `SIGNUP_REPLAY_TABLE`: the relay's small state table (DynamoDB). The answers to signed
    /// signups are kept there until their signature expires, so a replay is answered like the
    /// original (see `signup::replay`); and the notices the console shows (`notices`: a welcome
    /// goal no campaign listens to). Unset: both are only seen within one process.
    pub signup_replay_table: Option<String>,
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
    /// The welcome goal and template, contact fields and allow-lists (see [`SignupOptions`]).
    pub signup_options: SignupOptions,
    /// The website forms (`POST /form`, `POST /form/{form_name}`): see [`crate::forms`].
    pub forms: crate::forms::FormsConfig,
    /// Signed events to the product and the queues the console looks into (issue 15).
    pub events: EventsConfig,
    /// Quota-aware pacing of Keap calls (`KEAP_QUOTA_*`, `KEAP_PACING_*`, see
    /// `keap::pacing`); the limits default to the auth mode's.
    pub pacing: crate::keap::pacing::PacingSettings,
}

/// The API goal achieved once per new contact (`KEAP_WELCOME_GOAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WelcomeGoal {
    /// `integration:call_name`: v1 `POST /v1/campaigns/goals/{integration}/{callName}`.
    Named { integration: String, call_name: String },
    /// `automation:<automation_id>:<goal_id>`: v2 `POST /v2/automations/goals/achieve`.
    Automation { automation_id: i64, goal_id: i64 },
}

impl WelcomeGoal {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(ids) = text.strip_prefix("automation:") {
            let (automation, goal) = ids
                .split_once(':')
                .ok_or("expected automation:<automation_id>:<goal_id>")?;
            let id = |part: &str| part.trim().parse::<i64>().ok().filter(|id| *id > 0);
            return match (id(automation), id(goal)) {
                (Some(automation_id), Some(goal_id)) => Ok(Self::Automation { automation_id, goal_id }),
                _ => Err("automation and goal ids must be positive integers".into()),
            };
        }
        let (integration, call_name) = text
            .split_once(':')
            .ok_or("expected integration:call_name (or automation:<automation_id>:<goal_id>)")?;
        let part = |p: &str| {
            let p = p.trim();
            (!p.is_empty()
                && p.len() <= 100
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'))
            .then(|| p.to_owned())
        };
        match (part(integration), part(call_name)) {
            (Some(integration), Some(call_name)) => Ok(Self::Named { integration, call_name }),
            _ => Err("integration and call name must be 1 to 100 letters, digits, '_', '-' or '.'".into()),
        }
    }

    /// How logs and answers name it.
    pub fn label(&self) -> String {
        match self {
            Self::Named { integration, call_name } => format!("{integration}:{call_name}"),
            Self::Automation { automation_id, goal_id } => format!("automation:{automation_id}:{goal_id}"),
        }
    }
}

/// A Keap email template sent once per new contact (`KEAP_WELCOME_TEMPLATE_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeTemplate {
    pub template_id: i64,
    /// Keap user the email is sent on behalf of (`KEAP_WELCOME_TEMPLATE_USER_ID`, else
    /// `KEAP_WELCOME_EMAIL_USER_ID`).
    pub user_id: i64,
}

/// Settings of the welcome goal and template, contact fields and allow-lists. Every one is
/// optional; the defaults change nothing for an existing deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignupOptions {
    pub welcome_goal: Option<WelcomeGoal>,
    pub welcome_template: Option<WelcomeTemplate>,
    /// `KEAP_CREATE_CUSTOM_FIELDS=true`: an unknown custom field label is created as text.
    pub create_custom_fields: bool,
    /// `KEAP_CREATE_LEAD_SOURCES=true`: an unknown lead source name is created.
    pub create_lead_sources: bool,
    /// `KEAP_UTM_FIELDS=source=UTM Source,medium=UTM Medium,…`: custom field labels that take
    /// the UTM parameters (v1 contacts have no UTM fields).
    pub utm_fields: Vec<(String, String)>,
    /// `KEAP_UTM_V2_SOURCE_ID`: the Keap form id (`keap_source_id`) that v2 `utm_parameters`
    /// require; when set, UTM goes to the contact's v2 `utm_parameters`.
    pub utm_v2_source_id: Option<String>,
    /// `SIGNUP_ALLOWED_FIELDS`: body fields a signed request may set (custom fields as
    /// `fields.<label>`, or `fields` for all); unset: all.
    pub allowed_fields: Option<Vec<String>>,
    /// `SIGNUP_ALLOWED_TAGS`: tag ids or names a signed request may ask for; unset: all.
    pub allowed_tags: Option<Vec<String>>,
    /// `KEAP_WELCOME_RECHECK_SECONDS`: after a send whose outcome is unknown (5xx, timeout),
    /// how long until an email missing from Keap's sent-email listing counts as not sent.
    pub welcome_recheck_after: Duration,
    /// `KEAP_WELCOME_GOAL_SENDS_EMAIL` (default true): the goal's campaign sends an email when
    /// it starts, so Keap's sent-email listing tells whether an uncertain achievement went
    /// through. `false`: such an achievement is never repeated (at most once).
    pub welcome_goal_sends_email: bool,
}

impl Default for SignupOptions {
    fn default() -> Self {
        Self {
            welcome_goal: None,
            welcome_template: None,
            create_custom_fields: false,
            create_lead_sources: false,
            utm_fields: Vec::new(),
            utm_v2_source_id: None,
            allowed_fields: None,
            allowed_tags: None,
            welcome_recheck_after: Duration::from_secs(900),
            welcome_goal_sends_email: true,
        }
    }
}

fn flag(name: &'static str) -> Result<bool, ConfigError> {
    match var(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(other) => Err(ConfigError::Invalid {
            name,
            reason: format!("{other:?} is neither true nor false"),
        }),
    }
}

fn list(name: &'static str) -> Option<Vec<String>> {
    var(name).map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

impl SignupOptions {
    fn from_env(welcome_email: Option<&WelcomeEmail>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let welcome_goal = var("KEAP_WELCOME_GOAL")
            .map(|text| {
                WelcomeGoal::parse(&text).map_err(|reason| ConfigError::Invalid {
                    name: "KEAP_WELCOME_GOAL",
                    reason,
                })
            })
            .transpose()?;
        let positive = |name: &'static str, text: String| {
            text.trim()
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or(ConfigError::Invalid {
                    name,
                    reason: format!("{text:?} is not a positive integer"),
                })
        };
        let welcome_template = match var("KEAP_WELCOME_TEMPLATE_ID") {
            None => None,
            Some(id) => {
                let template_id = positive("KEAP_WELCOME_TEMPLATE_ID", id)?;
                let user_id = match var("KEAP_WELCOME_TEMPLATE_USER_ID") {
                    Some(user) => positive("KEAP_WELCOME_TEMPLATE_USER_ID", user)?,
                    None => welcome_email.map(|e| e.user_id).ok_or(ConfigError::Missing {
                        name: "KEAP_WELCOME_TEMPLATE_USER_ID",
                    })?,
                };
                Some(WelcomeTemplate { template_id, user_id })
            }
        };
        let mut utm_fields = Vec::new();
        for entry in list("KEAP_UTM_FIELDS").unwrap_or_default() {
            let (name, label) = entry.split_once('=').ok_or(ConfigError::Invalid {
                name: "KEAP_UTM_FIELDS",
                reason: format!("{entry:?} is not <parameter>=<custom field label>"),
            })?;
            let name = name.trim().trim_start_matches("utm_").to_owned();
            if !["source", "medium", "campaign", "term", "content"].contains(&name.as_str()) {
                return Err(ConfigError::Invalid {
                    name: "KEAP_UTM_FIELDS",
                    reason: format!("{name:?} is not one of source, medium, campaign, term, content"),
                });
            }
            utm_fields.push((name, label.trim().to_owned()));
        }
        Ok(Self {
            welcome_goal,
            welcome_template,
            create_custom_fields: flag("KEAP_CREATE_CUSTOM_FIELDS")?,
            create_lead_sources: flag("KEAP_CREATE_LEAD_SOURCES")?,
            utm_fields,
            utm_v2_source_id: var("KEAP_UTM_V2_SOURCE_ID"),
            allowed_fields: list("SIGNUP_ALLOWED_FIELDS"),
            allowed_tags: list("SIGNUP_ALLOWED_TAGS"),
            welcome_recheck_after: seconds("KEAP_WELCOME_RECHECK_SECONDS", defaults.welcome_recheck_after)?,
            welcome_goal_sends_email: match var("KEAP_WELCOME_GOAL_SENDS_EMAIL") {
                None => defaults.welcome_goal_sends_email,
                Some(_) => flag("KEAP_WELCOME_GOAL_SENDS_EMAIL")?,
            },
        })
    }
}

/// Events to the product (`EVENTS_WEBHOOK_URL`) and the queues the operator console inspects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsConfig {
    /// `EVENTS_WEBHOOK_URL`: where the `events` function delivers signed events.
    pub webhook_url: Option<String>,
    /// `EVENTS_QUEUE_URL`: where the functions put events for delivery; none: no events.
    pub queue_url: Option<String>,
    /// `EVENTS_DEAD_LETTER_QUEUE_URL`: events that were never delivered (the console).
    pub dead_letter_queue_url: Option<String>,
    /// `EVENTS_STATE_SECRET_ID`: the receiver's on/off switch (off after a 410).
    pub state_secret_id: Option<String>,
    /// `SIGNUP_DEAD_LETTER_QUEUE_URL`: signups that never reached Keap (the console).
    pub signup_dead_letter_queue_url: Option<String>,
}

impl EventsConfig {
    fn from_env() -> Self {
        Self {
            webhook_url: var("EVENTS_WEBHOOK_URL"),
            queue_url: var("EVENTS_QUEUE_URL"),
            dead_letter_queue_url: var("EVENTS_DEAD_LETTER_QUEUE_URL"),
            state_secret_id: var("EVENTS_STATE_SECRET_ID"),
            signup_dead_letter_queue_url: var("SIGNUP_DEAD_LETTER_QUEUE_URL"),
        }
    }
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
    /// The human-check provider's secret key (`FORM_CAPTCHA_PROVIDER`), for siteverify.
    #[serde(default, deserialize_with = "non_blank")]
    pub captcha_secret: Option<SecretString>,
    /// Signs the events sent to `EVENTS_WEBHOOK_URL` (only needed when that is set).
    #[serde(default, deserialize_with = "non_blank")]
    pub events_signing_key: Option<SecretString>,
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
            ConfigError::AppSecret(format!(
                "{:?} error at line {}, column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    }
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number(name: &'static str, default: u64) -> Result<u64, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse::<u64>().map_err(|e| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }),
    }
}

/// The longest duration any setting may have. Beyond it a value is a typo (or hostile), and
/// it would reach `Instant + Duration` arithmetic that panics on overflow.
pub const MAX_SETTING: Duration = Duration::from_secs(365 * 86_400);

fn bounded(name: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value > MAX_SETTING {
        return Err(ConfigError::Invalid {
            name,
            reason: format!(
                "{} seconds is more than the largest accepted value, {} seconds (one year)",
                value.as_secs(),
                MAX_SETTING.as_secs()
            ),
        });
    }
    Ok(value)
}

fn seconds(name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    bounded(name, Duration::from_secs(number(name, default.as_secs())?))
}

fn millis(name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    bounded(name, Duration::from_millis(number(name, default)?))
}

/// Keap's URLs must be `https`: plain `http` only to this machine (`localhost`, 127.0.0.0/8,
/// `::1`), where the local sandbox runs. Anything else would send the client secret, the
/// tokens and the API key in clear text.
pub fn check_keap_url(name: &'static str, value: &str) -> Result<url::Url, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { name, reason };
    let url = url::Url::parse(value).map_err(|e| invalid(format!("{value:?} is not a URL ({e})")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(invalid(format!("{value:?} has no host"))),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(invalid(format!(
            "{value:?} is plain http to another machine; Keap's URLs must be https (http only to \
             localhost, 127.0.0.0/8 or ::1, for a local sandbox)"
        ))),
        other => Err(invalid(format!(
            "{value:?} has scheme {other:?}; Keap's URLs must be https"
        ))),
    }
}

impl Config {
    /// The documented defaults (`docs/interface.md`), the one place they are written down.
    /// The secret ids have no default: [`Config::from_env`] requires them, local and test
    /// configurations set them.
    pub fn defaults() -> Self {
        Self {
            auth_mode: AuthMode::OAuth,
            store: StoreKind::SecretsManager,
            app_secret_id: String::new(),
            token_secret_id: String::new(),
            redirect_uri: None,
            start_url: None,
            function_name: None,
            api_url: DEFAULT_API_URL.into(),
            token_url: DEFAULT_TOKEN_URL.into(),
            authorize_url: DEFAULT_AUTHORIZE_URL.into(),
            welcome_tag: None,
            signup_queue_url: None,
            signup_replay_table: None,
            http_timeout: Duration::from_secs(10),
            access_margin: Duration::from_secs(300),
            refresh_lead: Duration::from_secs(6 * 3600),
            refresh_max_age: Duration::from_secs(30 * 86400),
            lease_duration: Duration::from_secs(30),
            refresh_backoff_min: Duration::from_secs(30),
            refresh_backoff_max: Duration::from_secs(7200),
            signup_retry_budget: Duration::from_millis(2000),
            welcome_email: None,
            signup_options: SignupOptions::default(),
            forms: crate::forms::FormsConfig::default(),
            events: EventsConfig::default(),
            pacing: crate::keap::pacing::PacingSettings::defaults(AuthMode::OAuth),
        }
    }

    /// Reads the configuration from the process environment: [`Config::defaults`] with every
    /// variable that is set (and not blank) in its place, then [`Config::validate`].
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::defaults();
        let auth_mode = match var("KEAP_AUTH_MODE").as_deref() {
            None => defaults.auth_mode,
            Some("oauth") => AuthMode::OAuth,
            Some("api-key") => AuthMode::ApiKey,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "KEAP_AUTH_MODE",
                    reason: format!("{other:?} is neither \"oauth\" nor \"api-key\""),
                });
            }
        };
        let store = match var("KEAP_STORE").as_deref() {
            None => defaults.store,
            Some("secretsmanager") => StoreKind::SecretsManager,
            Some("file") => StoreKind::File(var("KEAP_STORE_DIR").unwrap_or_else(|| ".local/secrets".into()).into()),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "KEAP_STORE",
                    reason: format!("{other:?} is neither \"secretsmanager\" nor \"file\""),
                });
            }
        };
        let app_secret_id = var("KEAP_APP_SECRET_ID").ok_or(ConfigError::Missing {
            name: "KEAP_APP_SECRET_ID",
        })?;
        let token_secret_id = match (auth_mode, var("KEAP_TOKEN_SECRET_ID")) {
            (_, Some(id)) => id,
            (AuthMode::ApiKey, None) => defaults.token_secret_id,
            (AuthMode::OAuth, None) => {
                return Err(ConfigError::Missing {
                    name: "KEAP_TOKEN_SECRET_ID",
                });
            }
        };
        let welcome_email = match var("KEAP_WELCOME_EMAIL_SUBJECT") {
            None => defaults.welcome_email,
            Some(subject) => Some(WelcomeEmail {
                user_id: var("KEAP_WELCOME_EMAIL_USER_ID")
                    .ok_or(ConfigError::Missing {
                        name: "KEAP_WELCOME_EMAIL_USER_ID",
                    })?
                    .parse()
                    .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                        name: "KEAP_WELCOME_EMAIL_USER_ID",
                        reason: e.to_string(),
                    })?,
                subject,
                html_body: var("KEAP_WELCOME_EMAIL_HTML").ok_or(ConfigError::Missing {
                    name: "KEAP_WELCOME_EMAIL_HTML",
                })?,
            }),
        };
        let config = Self {
            auth_mode,
            store,
            app_secret_id,
            token_secret_id,
            redirect_uri: var("KEAP_REDIRECT_URI").or(defaults.redirect_uri),
            start_url: var("KEAP_START_URL").or(defaults.start_url),
            function_name: var("AWS_LAMBDA_FUNCTION_NAME").or(defaults.function_name),
            api_url: var("KEAP_API_URL").unwrap_or(defaults.api_url),
            token_url: var("KEAP_TOKEN_URL").unwrap_or(defaults.token_url),
            authorize_url: var("KEAP_AUTHORIZE_URL").unwrap_or(defaults.authorize_url),
            welcome_tag: var("KEAP_WELCOME_TAG").or(defaults.welcome_tag),
            signup_queue_url: var("SIGNUP_QUEUE_URL").or(defaults.signup_queue_url),
            signup_replay_table: var("SIGNUP_REPLAY_TABLE").or(defaults.signup_replay_table),
            http_timeout: seconds("KEAP_HTTP_TIMEOUT_SECONDS", defaults.http_timeout)?,
            access_margin: seconds("KEAP_ACCESS_MARGIN_SECONDS", defaults.access_margin)?,
            refresh_lead: seconds("KEAP_REFRESH_LEAD_SECONDS", defaults.refresh_lead)?,
            refresh_max_age: seconds("KEAP_REFRESH_MAX_AGE_SECONDS", defaults.refresh_max_age)?,
            lease_duration: seconds("KEAP_LEASE_SECONDS", defaults.lease_duration)?,
            refresh_backoff_min: seconds("KEAP_REFRESH_BACKOFF_MIN_SECONDS", defaults.refresh_backoff_min)?,
            refresh_backoff_max: seconds("KEAP_REFRESH_BACKOFF_MAX_SECONDS", defaults.refresh_backoff_max)?,
            signup_retry_budget: millis("KEAP_SIGNUP_RETRY_BUDGET_MS", defaults.signup_retry_budget)?,
            signup_options: SignupOptions::from_env(welcome_email.as_ref())?,
            welcome_email,
            forms: crate::forms::FormsConfig::from_env()?,
            events: EventsConfig::from_env(),
            pacing: crate::keap::pacing::PacingSettings::from_env_with(auth_mode, var)?,
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
        // First: the checks below add these durations up.
        for (name, value) in [
            ("KEAP_HTTP_TIMEOUT_SECONDS", self.http_timeout),
            ("KEAP_ACCESS_MARGIN_SECONDS", self.access_margin),
            ("KEAP_REFRESH_LEAD_SECONDS", self.refresh_lead),
            ("KEAP_REFRESH_MAX_AGE_SECONDS", self.refresh_max_age),
            ("KEAP_LEASE_SECONDS", self.lease_duration),
            ("KEAP_REFRESH_BACKOFF_MIN_SECONDS", self.refresh_backoff_min),
            ("KEAP_REFRESH_BACKOFF_MAX_SECONDS", self.refresh_backoff_max),
            ("KEAP_SIGNUP_RETRY_BUDGET_MS", self.signup_retry_budget),
            (
                "KEAP_WELCOME_RECHECK_SECONDS",
                self.signup_options.welcome_recheck_after,
            ),
        ] {
            bounded(name, value)?;
        }
        for (name, value) in [
            ("KEAP_API_URL", &self.api_url),
            ("KEAP_TOKEN_URL", &self.token_url),
            ("KEAP_AUTHORIZE_URL", &self.authorize_url),
        ] {
            check_keap_url(name, value)?;
        }
        if let Some(table) = &self.signup_replay_table {
            check_table_name(table)?;
        }
        if let Some(url) = &self.events.webhook_url {
            crate::events::webhook::check_url(url).map_err(|e| ConfigError::Invalid {
                name: "EVENTS_WEBHOOK_URL",
                reason: e.to_string(),
            })?;
        }
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
            return Err(ConfigError::Invalid {
                name: "KEAP_LEASE_SECONDS",
                reason,
            });
        }
        Ok(())
    }
}

/// DynamoDB's rule for table names: 3 to 255 of `a-z A-Z 0-9 _ - .`.
fn check_table_name(table: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if (3..=255).contains(&table.len()) && table.chars().all(allowed) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            name: "SIGNUP_REPLAY_TABLE",
            reason: "must be a DynamoDB table name: 3 to 255 letters, digits, '_', '-' or '.'".into(),
        })
    }
}

/// Configuration for a Keap at `keap_base` (the sandbox, in tests, benches and local runs):
/// REST at `{keap_base}/crm/rest`, token endpoint `{keap_base}/token`, app secret `app`,
/// token secret `token`, and [`Config::defaults`] for everything else.
#[cfg(any(test, feature = "test-support"))]
pub fn local_config(auth_mode: AuthMode, keap_base: &str) -> Config {
    let base = keap_base.trim_end_matches('/');
    Config {
        auth_mode,
        app_secret_id: "app".into(),
        token_secret_id: "token".into(),
        api_url: format!("{base}/crm/rest"),
        token_url: format!("{base}/token"),
        authorize_url: format!("{base}/app/oauth/authorize"),
        // Tests that measure pacing turn it on; the others run against an unlimited sandbox.
        pacing: crate::keap::pacing::PacingSettings::off(auth_mode),
        ..Config::defaults()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_with_the_variables_to_change() {
        let base = local_config(AuthMode::OAuth, "http://127.0.0.1:9");
        base.validate().unwrap();
        let tight = Config {
            lease_duration: base.http_timeout + Duration::from_secs(5),
            ..base.clone()
        };
        let error = tight.validate().unwrap_err().to_string();
        assert!(
            error.contains("KEAP_LEASE_SECONDS") && error.contains("KEAP_HTTP_TIMEOUT_SECONDS"),
            "{error}"
        );
        let short = Config {
            http_timeout: Duration::from_secs(1),
            ..base.clone()
        };
        assert!(
            short
                .validate()
                .unwrap_err()
                .to_string()
                .contains("KEAP_HTTP_TIMEOUT_SECONDS")
        );
        assert!(base.connect_timeout() < base.http_timeout);
        let api_key = Config {
            auth_mode: AuthMode::ApiKey,
            ..tight
        };
        api_key.validate().unwrap();
    }

    #[test]
    fn keap_urls_are_https_or_plain_http_to_this_machine_only() {
        for good in [
            DEFAULT_API_URL,
            DEFAULT_TOKEN_URL,
            DEFAULT_AUTHORIZE_URL,
            "https://keap.example.com:8443/crm/rest",
            "http://127.0.0.1:9/token",
            "http://127.8.9.10/token",
            "http://localhost:8080/token",
            "http://LOCALHOST/token",
            "http://[::1]:8080/token",
        ] {
            check_keap_url("KEAP_TOKEN_URL", good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "http://api.infusionsoft.com/token",
            "http://10.0.0.5/token",
            "http://0.0.0.0:8080/token",
            "http://[::ffff:127.0.0.1]/token",
            "http://localhost.evil.example/token",
            "http://127.0.0.1.nip.io/token",
            "ftp://127.0.0.1/token",
            "file:///etc/passwd",
            "api.infusionsoft.com/token",
            "",
        ] {
            let error = check_keap_url("KEAP_TOKEN_URL", bad).unwrap_err().to_string();
            assert!(error.contains("KEAP_TOKEN_URL"), "{bad}: {error}");
        }
        let base = local_config(AuthMode::OAuth, "http://127.0.0.1:9");
        for (name, config) in [
            (
                "KEAP_API_URL",
                Config {
                    api_url: "http://api.infusionsoft.com/crm/rest".into(),
                    ..base.clone()
                },
            ),
            (
                "KEAP_TOKEN_URL",
                Config {
                    token_url: "http://api.infusionsoft.com/token".into(),
                    ..base.clone()
                },
            ),
            (
                "KEAP_AUTHORIZE_URL",
                Config {
                    authorize_url: "http://accounts.infusionsoft.com/app/oauth/authorize".into(),
                    ..base.clone()
                },
            ),
        ] {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(name) && error.contains("https"), "{error}");
        }
    }

    #[test]
    fn absurd_durations_are_refused_naming_the_variable_before_any_arithmetic() {
        let base = local_config(AuthMode::OAuth, "http://127.0.0.1:9");
        let year_and_a_second = MAX_SETTING + Duration::from_secs(1);
        type Set = fn(&mut Config, Duration);
        let cases: [(&str, Set); 8] = [
            ("KEAP_HTTP_TIMEOUT_SECONDS", |c, d| c.http_timeout = d),
            ("KEAP_ACCESS_MARGIN_SECONDS", |c, d| c.access_margin = d),
            ("KEAP_REFRESH_LEAD_SECONDS", |c, d| c.refresh_lead = d),
            ("KEAP_REFRESH_MAX_AGE_SECONDS", |c, d| c.refresh_max_age = d),
            ("KEAP_LEASE_SECONDS", |c, d| c.lease_duration = d),
            ("KEAP_REFRESH_BACKOFF_MIN_SECONDS", |c, d| c.refresh_backoff_min = d),
            ("KEAP_REFRESH_BACKOFF_MAX_SECONDS", |c, d| c.refresh_backoff_max = d),
            ("KEAP_SIGNUP_RETRY_BUDGET_MS", |c, d| c.signup_retry_budget = d),
        ];
        for (name, set) in cases {
            for absurd in [year_and_a_second, Duration::from_secs(u64::MAX), Duration::MAX] {
                let mut config = base.clone();
                set(&mut config, absurd);
                let error = config.validate().unwrap_err().to_string();
                assert!(error.contains(name) && error.contains("one year"), "{error}");
            }
            let mut config = base.clone();
            set(&mut config, MAX_SETTING);
            if let Err(error) = config.validate() {
                // A year is accepted by the bound; only the settings' own rules may refuse it.
                assert!(!error.to_string().contains("one year"), "{error}");
            }
        }
        assert!(bounded("KEAP_LEASE_SECONDS", MAX_SETTING).is_ok());
    }

    #[test]
    fn welcome_goals_parse_both_forms_and_refuse_the_rest() {
        assert_eq!(
            WelcomeGoal::parse("relay:signup").unwrap(),
            WelcomeGoal::Named {
                integration: "relay".into(),
                call_name: "signup".into()
            }
        );
        assert_eq!(
            WelcomeGoal::parse("automation:12:34").unwrap(),
            WelcomeGoal::Automation {
                automation_id: 12,
                goal_id: 34
            }
        );
        assert_eq!(WelcomeGoal::parse(" relay:signup ").unwrap().label(), "relay:signup");
        for bad in [
            "",
            "relay",
            ":signup",
            "relay:",
            "automation:12",
            "automation:x:1",
            "automation:0:1",
            "a b:c",
            "a/b:c",
        ] {
            assert!(WelcomeGoal::parse(bad).is_err(), "{bad}");
        }
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
        let error = AppSecret::from_json(r#"{"client_secret": 12345678}"#)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("12345678"), "{error}");
    }
}
