//! The demo's story, told through the relay's public routes like a person with curl and a
//! browser would, with the sandbox's view of Keap as the witness: connect Keap over OAuth,
//! three signups from `events/`, a forced token expiry and the rotation that follows, and the
//! status report. Every step prints as it happens and ends in [`Check`]s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::SystemTime;

use keap_relay::signup::{TagRef, signature};
use keap_relay::{ExposeSecret, SecretString};
use keap_sandbox::Sandbox;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;

use crate::progress;
use crate::secrets;
use crate::stack::{AppSecretState, Stack};

/// One thing the demo promises, and whether it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("the request failed: {0}")]
    Http(reqwest::Error),
    #[error("{path}: {reason}")]
    Event { path: PathBuf, reason: String },
    #[error("{0}")]
    Unexpected(String),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
}

impl From<reqwest::Error> for WalkError {
    /// URLs can carry an authorization code: keep them out of messages.
    fn from(error: reqwest::Error) -> Self {
        WalkError::Http(error.without_url())
    }
}

fn unexpected(message: impl Into<String>) -> WalkError {
    WalkError::Unexpected(message.into())
}

/// A response, read whole.
struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Result<Answer, WalkError> {
        Ok(Answer {
            status: response.status(),
            body: response.text().await?,
        })
    }

    fn summary(&self) -> String {
        format!("{} {}", self.status.as_u16(), progress::one_line(&self.body, 200))
    }
}

/// The signups the story sends.
struct SampleSignups {
    valid: Vec<u8>,
    invalid: Vec<u8>,
}

struct Story<'a> {
    stack: &'a Stack,
    sandbox: &'a Sandbox,
    client: reqwest::Client,
    admin_password: SecretString,
    signing_key: SecretString,
    /// The last signature's timestamp: each signup of the story is a new request, so each gets
    /// its own second (the same signed request again would be a replay, answered as before).
    last_signed_at: AtomicI64,
    checks: Vec<Check>,
}

/// Runs the whole story; the checks say what held.
pub async fn run(stack: &Stack, events_dir: &Path) -> Vec<Check> {
    let Some(sandbox) = stack.sandbox.as_ref() else {
        return vec![failure("sandbox", "the demo needs the built-in Keap sandbox")];
    };
    let (admin_password, signing_key) = match &stack.app_secret {
        AppSecretState::Ready { secret, .. } => (secret.admin_password.clone(), secret.signup_signing_key.clone()),
        AppSecretState::Unavailable(error) => return vec![failure("app secret", &error.to_string())],
    };
    let (Some(admin_password), Some(signing_key)) = (admin_password, signing_key) else {
        let message = "the app secret needs admin_password and signup_signing_key for the demo";
        return vec![failure("app secret", message)];
    };
    let signups = match SampleSignups::read(events_dir) {
        Ok(signups) => signups,
        Err(error) => return vec![failure("sample events", &error.to_string())],
    };
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60))
        .build()
    {
        Ok(client) => client,
        Err(error) => return vec![failure("http client", &error.to_string())],
    };
    let mut story = Story {
        stack,
        sandbox,
        client,
        admin_password,
        signing_key,
        last_signed_at: AtomicI64::new(i64::MIN),
        checks: Vec::new(),
    };
    story.connect().await;
    story.signups(&signups).await;
    story.rotation(&signups.valid).await;
    story.status().await;
    story.checks
}

fn failure(name: &'static str, detail: &str) -> Check {
    progress::failed(&format!("{name}: {detail}"));
    Check {
        name,
        passed: false,
        detail: detail.to_owned(),
    }
}

impl SampleSignups {
    fn read(events_dir: &Path) -> Result<SampleSignups, WalkError> {
        Ok(SampleSignups {
            valid: event_body(&events_dir.join("signup-valid.json"))?,
            invalid: event_body(&events_dir.join("signup-invalid-email.json"))?,
        })
    }
}

/// The raw body an API Gateway event file carries.
fn event_body(path: &Path) -> Result<Vec<u8>, WalkError> {
    let event_error = |reason: String| WalkError::Event {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| event_error(e.to_string()))?;
    let event: Value = serde_json::from_str(&text).map_err(|e| event_error(e.to_string()))?;
    signup::event_signing::event_body(&event).map_err(|e| event_error(e.to_string()))
}

/// The `email` a signup body names (as sent, valid or not).
fn email_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("email").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "(no email)".into())
}

/// The text of a page's `<h1>`.
fn page_title(html: &str) -> &str {
    html.split_once("<h1>")
        .and_then(|(_, rest)| rest.split_once("</h1>"))
        .map_or("", |(title, _)| title)
}

/// A URL without its query (which carries the state or the authorization code).
fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(path, _)| path)
}

impl Story<'_> {
    fn check(&mut self, name: &'static str, passed: bool, detail: String) {
        if passed {
            progress::ok(&detail);
        } else {
            progress::failed(&detail);
        }
        self.checks.push(Check { name, passed, detail });
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.stack.relay_url)
    }

    fn oauth_mode(&self) -> bool {
        self.stack.config.auth_mode == keap_relay::config::AuthMode::OAuth
    }

    /// `GET path` with the administrator's Basic credentials.
    async fn admin_get(&self, path: &str) -> Result<reqwest::Response, WalkError> {
        let request = self.client.get(self.url(path));
        Ok(request
            .basic_auth(crate::defaults::ADMIN_USER, Some(self.admin_password.expose_secret()))
            .send()
            .await?)
    }

    async fn get_status(&self) -> Result<Value, WalkError> {
        let answer = Answer::read(self.admin_get("/status").await?).await?;
        if answer.status != StatusCode::OK {
            return Err(unexpected(format!("GET /status answered {}", answer.summary())));
        }
        serde_json::from_str(&answer.body).map_err(|e| unexpected(format!("GET /status is not JSON: {e}")))
    }

    fn sign(&self, body: &[u8]) -> String {
        let now = signature::unix_seconds(SystemTime::now());
        let next = |last: i64| now.max(last.saturating_add(1));
        let previous = self
            .last_signed_at
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(next(last)))
            .unwrap_or_else(|last| last);
        signature::sign(&self.signing_key, next(previous), body)
    }

    async fn post_signup(&self, body: &[u8]) -> Result<Answer, WalkError> {
        let response = self
            .client
            .post(self.url("/signup"))
            .header("content-type", "application/json")
            .header("x-signature", self.sign(body))
            .body(body.to_vec())
            .send()
            .await?;
        Answer::read(response).await
    }

    async fn connect(&mut self) {
        if !self.oauth_mode() {
            progress::section("1. Connect Keap");
            progress::ok("api-key mode: nothing to connect; every Keap call carries the app secret's api_key");
            return;
        }
        progress::section("1. Connect Keap (OAuth, as an administrator in a browser would)");
        self.sandbox.set_auto_approve(true);
        let connected = self.oauth_round_trip().await;
        // A person opening /oauth/start later sees the sandbox's consent page.
        self.sandbox.set_auto_approve(false);
        let result = match connected {
            Ok(()) => self.get_status().await,
            Err(error) => Err(error),
        };
        match result {
            Ok(status) => {
                let account = status["account"].as_str().unwrap_or("(unknown)").to_owned();
                let passed = status["connected"] == Value::Bool(true);
                self.check(
                    "connected",
                    passed,
                    format!(
                        "connected Keap account {account} (token generation {})",
                        status["generation"]
                    ),
                );
            }
            Err(error) => self.check("connected", false, format!("could not connect Keap: {error}")),
        }
    }

    async fn oauth_round_trip(&self) -> Result<(), WalkError> {
        let start = self.admin_get("/oauth/start").await?;
        let authorize_url = redirect_target(&start, "GET /oauth/start")?;
        // What a browser keeps from /oauth/start and sends to the callback: the cookie that
        // binds the state to it (the callback refuses a state without it).
        let cookie = cookie_pairs(&start);
        if cookie.is_empty() {
            return Err(unexpected("GET /oauth/start set no cookie for the callback"));
        }
        progress::action(&format!(
            "GET /oauth/start as the administrator → 302 to {} (and a sign-in cookie for the callback)",
            without_query(&authorize_url)
        ));
        let authorize = self.client.get(&authorize_url).send().await?;
        let callback_url = redirect_target(&authorize, "the sandbox's authorize page")?;
        progress::action(&format!(
            "the sandbox approves (auto-approve) → 302 to {}?code=…&state=…",
            without_query(&callback_url)
        ));
        let callback = self.client.get(&callback_url).header(COOKIE, cookie).send().await?;
        let callback = Answer::read(callback).await?;
        progress::action(&format!(
            "GET /oauth/callback → {} \"{}\"",
            callback.status.as_u16(),
            page_title(&callback.body)
        ));
        if callback.status != StatusCode::OK {
            return Err(unexpected(format!("the callback answered {}", callback.summary())));
        }
        Ok(())
    }

    async fn signups(&mut self, signups: &SampleSignups) {
        progress::section(
            "2. Three signups (bodies of events/signup-valid.json and signup-invalid-email.json, signed now)",
        );
        let sends = [
            ("new", &signups.valid, StatusCode::CREATED),
            ("repeat", &signups.valid, StatusCode::OK),
            ("invalid", &signups.invalid, StatusCode::BAD_REQUEST),
        ];
        let mut as_expected = Vec::new();
        for (label, body, expected) in sends {
            match self.post_signup(body).await {
                Ok(answer) => {
                    progress::action(&format!(
                        "POST /signup {} ({label}) → {}",
                        email_of(body),
                        answer.summary()
                    ));
                    as_expected.push(answer.status == expected);
                }
                Err(error) => {
                    progress::failed(&format!("POST /signup ({label}): {error}"));
                    as_expected.push(false);
                }
            }
        }
        let answers_ok = as_expected.iter().all(|ok| *ok);
        if !answers_ok {
            progress::failed("expected 201 (created), 200 (updated), 400 (invalid email)");
        }
        self.check_keap_contact(&email_of(&signups.valid), &signups.valid, answers_ok);
    }

    /// What the sandbox (Keap) now holds for the signup.
    fn check_keap_contact(&mut self, email: &str, body: &[u8], answers_ok: bool) {
        let Some(contact) = self.sandbox.contact_by_email(email) else {
            self.check("contact created", false, format!("Keap has no contact {email}"));
            self.check("tag applied", false, "no contact, so no tag".into());
            self.check("welcome email queued", false, "no contact, so no email".into());
            return;
        };
        self.check(
            "contact created",
            answers_ok,
            format!(
                "Keap contact #{} {} {} <{}>, created once",
                contact.id, contact.given_name, contact.family_name, contact.email
            ),
        );

        let welcome = self.stack.config.welcome_tag.as_deref().map(TagRef::parse);
        let welcome_id = match &welcome {
            Some(TagRef::Id(id)) => Some(*id),
            Some(TagRef::Name(name)) => self.sandbox.tag_by_name(name),
            None => None,
        };
        let requested: Vec<String> = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v["tags"]
                    .as_array()
                    .map(|tags| tags.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
            })
            .unwrap_or_default();
        let named: Vec<String> = requested
            .iter()
            .filter_map(|name| {
                self.sandbox
                    .tag_by_name(name)
                    .filter(|id| contact.tag_ids.contains(id))
                    .map(|id| format!("{name} (#{id})"))
            })
            .collect();
        let tag_detail = match (&self.stack.config.welcome_tag, welcome_id) {
            (None, _) => "no welcome tag configured (KEAP_WELCOME_TAG is empty)".to_owned(),
            (Some(tag), Some(id)) if contact.tag_ids.contains(&id) => {
                format!(
                    "welcome tag {tag} (#{id}) applied; requested tags applied: {}",
                    list_or_none(&named)
                )
            }
            (Some(tag), _) => format!(
                "welcome tag {tag} is not on the contact (its tags: {:?})",
                contact.tag_ids
            ),
        };
        let tagged = welcome_id.is_some_and(|id| contact.tag_ids.contains(&id));
        self.check("tag applied", tagged, tag_detail);

        let emails = contact.emails_received;
        let email_detail = match (&self.stack.config.welcome_email, emails) {
            (None, _) => "no welcome email configured (KEAP_WELCOME_EMAIL_SUBJECT is empty)".to_owned(),
            (Some(_), 1) => "welcome email queued once (the repeat did not send another)".to_owned(),
            (Some(_), n) => format!("expected exactly one welcome email, Keap queued {n}"),
        };
        self.check("welcome email queued", emails == 1, email_detail);
    }

    async fn rotation(&mut self, valid_signup: &[u8]) {
        if !self.oauth_mode() {
            progress::section("3. The scheduled refresh");
            let result = self.stack.run_scheduled_refresh().await;
            let (passed, detail) = match result {
                Ok(summary) => (
                    summary.action == "api_key_checked",
                    format!(
                        "api-key mode: nothing to rotate; scheduled refresh → {}",
                        summary.action
                    ),
                ),
                Err(error) => (false, format!("scheduled refresh failed: {error}")),
            };
            self.check("api key checked", passed, detail);
            return;
        }
        progress::section("3. Forced token expiry, and the rotation that follows");
        match self.rotate_and_signup(valid_signup).await {
            Ok((passed, detail)) => self.check("exactly one rotation", passed, detail),
            Err(error) => self.check(
                "exactly one rotation",
                false,
                format!("the rotation step failed: {error}"),
            ),
        }
    }

    async fn rotate_and_signup(&self, valid_signup: &[u8]) -> Result<(bool, String), WalkError> {
        let generation = |status: &Value| status["generation"].as_u64().unwrap_or_default();
        let refreshes = || self.sandbox.stats().refreshes_served;
        let (generation_before, refreshes_before) = (generation(&self.get_status().await?), refreshes());
        progress::detail(&format!(
            "before: token generation {generation_before}; refreshes served by Keap (the sandbox): {refreshes_before}"
        ));

        self.sandbox.expire_access_tokens();
        secrets::make_access_token_due(self.stack.store.as_ref(), &self.stack.config.token_secret_id).await?;
        progress::action(
            "the sandbox expires every access token it issued; the stored one is recorded as expiring now",
        );

        let summary = self
            .stack
            .run_scheduled_refresh()
            .await
            .map_err(|e| unexpected(e.to_string()))?;
        progress::action(&format!(
            "scheduled refresh (the refresh function's handler) → {}",
            summary.action
        ));
        let (generation_after, refreshes_after) = (generation(&self.get_status().await?), refreshes());
        progress::detail(&format!(
            "after: token generation {generation_after}; refreshes served by Keap (the sandbox): {refreshes_after}"
        ));

        // The signup function still caches the expired token: Keap answers 401, the function
        // re-reads the store and finds the new pair, without refreshing again.
        let again = self.post_signup(valid_signup).await?;
        progress::action(&format!(
            "POST /signup {} again, the signup function holding the old token → {}",
            email_of(valid_signup),
            again.summary()
        ));
        let refreshes_end = refreshes();
        let one_rotation = summary.action == "rotated"
            && generation_after == generation_before + 1
            && refreshes_end == refreshes_before + 1
            && again.status == StatusCode::OK;
        let detail = if one_rotation {
            format!(
                "exactly one rotation: generation {generation_before} → {generation_after}, one refresh at Keap; the signup function picked the new token up from the store"
            )
        } else {
            format!(
                "expected one rotation: action {}, generation {generation_before} → {generation_after}, Keap refreshes {refreshes_before} → {refreshes_end}, signup after it {}",
                summary.action,
                again.status.as_u16()
            )
        };
        Ok((one_rotation, detail))
    }

    async fn status(&mut self) {
        progress::section("4. Status report (GET /status as the administrator)");
        match self.get_status().await {
            Ok(status) => {
                progress::block(&serde_json::to_string_pretty(&status).unwrap_or_default());
                let connected =
                    status["connected"] == Value::Bool(true) && status["needs_reauth"] == Value::Bool(false);
                let account = status["account"]
                    .as_str()
                    .map(|a| format!(" to {a}"))
                    .unwrap_or_default();
                let detail = if connected {
                    format!(
                        "status: connected ({}){account}, needs_reauth false",
                        status["mode"].as_str().unwrap_or("?")
                    )
                } else {
                    format!(
                        "status is not connected: {}",
                        progress::one_line(&status.to_string(), 300)
                    )
                };
                self.check("status connected", connected, detail);
            }
            Err(error) => self.check("status connected", false, format!("could not read the status: {error}")),
        }
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// The `name=value` pairs of a response's `Set-Cookie` headers, as a browser sends them back
/// (`; `-separated; attributes dropped: the relay scopes its one cookie to the callback).
fn cookie_pairs(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next())
        .map(str::trim)
        .filter(|pair| pair.contains('='))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `Location` of a 302, or why there is none.
fn redirect_target(response: &reqwest::Response, what: &str) -> Result<String, WalkError> {
    if response.status() != StatusCode::FOUND {
        return Err(unexpected(format!(
            "{what} answered {} instead of 302",
            response.status().as_u16()
        )));
    }
    response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| unexpected(format!("{what} answered 302 without a Location")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_urls_are_shown_without_secrets_or_noise() {
        assert_eq!(
            page_title("<html><h1>Connected to Keap</h1><p>…</p>"),
            "Connected to Keap"
        );
        assert_eq!(page_title("no heading"), "");
        assert_eq!(
            without_query("http://h/oauth/callback?code=abc&state=x"),
            "http://h/oauth/callback"
        );
        assert_eq!(email_of(br#"{"email":"a@example.com"}"#), "a@example.com");
        assert_eq!(email_of(b"nope"), "(no email)");
    }

    #[test]
    fn the_sample_events_are_read_from_the_repository() {
        let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events");
        let signups = SampleSignups::read(&events).unwrap();
        assert_eq!(email_of(&signups.valid), "ada.lovelace@example.com");
        assert!(email_of(&signups.invalid).contains("(at)"));
    }
}
