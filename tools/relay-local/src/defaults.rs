//! The embedded local defaults: values that make a fresh checkout run with no AWS account and
//! no Keap account. They are demo values for the built-in Keap sandbox, never real secrets.
//!
//! Every default is an environment variable the functions read on Lambda, filled in only when
//! it is unset, so the same variables switch each part to the real thing.

use keap_relay::SecretString;
use serde_json::json;

/// `signup_signing_key` of the seeded app secret (also what `sign` and `curl` use by default).
pub const SIGNING_KEY: &str = "local-signup-signing-key";
/// `admin_password` of the seeded app secret; the sample events use it too.
pub const ADMIN_PASSWORD: &str = "local-admin-password";
/// Signs the events sent to `EVENTS_WEBHOOK_URL` in the local run.
pub const EVENTS_SIGNING_KEY: &str = "local-events-signing-key";
/// The event receiver's on/off switch in the local store.
pub const EVENTS_STATE_SECRET_ID: &str = "keap-relay/local/events-state";
/// Any user name works with Basic auth; this one reads well in curl lines.
pub const ADMIN_USER: &str = "admin";

pub const RELAY_PORT: u16 = 9000;
pub const SANDBOX_PORT: u16 = 9400;

pub const STORE_DIR: &str = ".local/secrets";
pub const APP_SECRET_ID: &str = "keap-relay/local/app";
pub const TOKEN_SECRET_ID: &str = "keap-relay/local/token";

pub const WELCOME_TAG: &str = "Welcome";
/// The sandbox accepts any positive Keap user id as the sender.
pub const WELCOME_EMAIL_USER_ID: &str = "1";
pub const WELCOME_EMAIL_SUBJECT: &str = "Welcome aboard";
pub const WELCOME_EMAIL_HTML: &str = "<p>Thanks for signing up! (sent by keap-relay's local run)</p>";

/// The app secret the local run seeds when the store has none: the sandbox's default OAuth
/// client and API key, and the local signing key and admin password.
pub fn app_secret() -> SecretString {
    let value = json!({
        "client_id": keap_sandbox::DEFAULT_CLIENT_ID,
        "client_secret": keap_sandbox::DEFAULT_CLIENT_SECRET,
        "api_key": keap_sandbox::DEFAULT_API_KEY,
        "signup_signing_key": SIGNING_KEY,
        "events_signing_key": EVENTS_SIGNING_KEY,
        "admin_password": ADMIN_PASSWORD,
        // Known to the local fake siteverify (keap_sandbox::siteverify), used when
        // FORM_CAPTCHA_PROVIDER is set and FORM_CAPTCHA_VERIFY_URL is not.
        "captcha_secret": keap_sandbox::siteverify::DEFAULT_SECRET,
    });
    SecretString::from(value.to_string())
}

/// What the local run fills in when unset, in the order applied.
pub fn env_defaults(relay_base: &str, with_sandbox: bool) -> Vec<(&'static str, String)> {
    let mut defaults = vec![
        ("KEAP_STORE", "file".to_owned()),
        ("KEAP_STORE_DIR", STORE_DIR.to_owned()),
        ("KEAP_APP_SECRET_ID", APP_SECRET_ID.to_owned()),
        ("KEAP_TOKEN_SECRET_ID", TOKEN_SECRET_ID.to_owned()),
        ("EVENTS_STATE_SECRET_ID", EVENTS_STATE_SECRET_ID.to_owned()),
        ("KEAP_REDIRECT_URI", format!("{relay_base}/oauth/callback")),
        ("KEAP_START_URL", format!("{relay_base}/oauth/start")),
    ];
    // A welcome tag and email only make sense by default against the sandbox: against a real
    // account they would create a tag and send mail nobody asked for.
    if with_sandbox {
        defaults.extend([
            ("KEAP_WELCOME_TAG", WELCOME_TAG.to_owned()),
            ("KEAP_WELCOME_EMAIL_SUBJECT", WELCOME_EMAIL_SUBJECT.to_owned()),
            ("KEAP_WELCOME_EMAIL_USER_ID", WELCOME_EMAIL_USER_ID.to_owned()),
            ("KEAP_WELCOME_EMAIL_HTML", WELCOME_EMAIL_HTML.to_owned()),
            // The embedded sandbox has no quota (docs/pacing.md): nothing to pace to.
            ("KEAP_PACING", "off".to_owned()),
        ]);
    }
    defaults
}

/// The website form's defaults: the example website (at `site_base`) may post, and plain
/// forms are sent on to its thank-you and error pages.
pub fn form_env_defaults(site_base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FORM_ALLOWED_ORIGINS", site_base.to_owned()),
        ("FORM_THANK_YOU_URL", format!("{site_base}/thanks.html")),
        ("FORM_ERROR_URL", format!("{site_base}/error.html")),
    ]
}

/// The Keap endpoints that point at the sandbox unless set.
pub const KEAP_URL_VARS: [&str; 3] = ["KEAP_API_URL", "KEAP_TOKEN_URL", "KEAP_AUTHORIZE_URL"];

/// True when the variable holds a non-blank value (the rule `Config::from_env` applies).
pub fn is_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| !value.trim().is_empty())
}

/// Sets each default whose variable is unset; returns the names it set.
///
/// # Safety
///
/// Changes the process environment: call it before any other thread exists (in `main`,
/// before the Tokio runtime starts).
#[allow(unsafe_code)] // `std::env::set_var` is unsafe since edition 2024; see # Safety.
pub unsafe fn apply_env_defaults(defaults: &[(&'static str, String)]) -> Vec<&'static str> {
    let mut applied = Vec::new();
    for (name, value) in defaults {
        if !is_set(name) {
            // SAFETY: the caller guarantees no other thread reads or writes the environment.
            unsafe { std::env::set_var(name, value) };
            applied.push(*name);
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use keap_relay::ExposeSecret;
    use keap_relay::config::AppSecret;

    #[test]
    fn the_seeded_app_secret_matches_the_sandbox_and_the_sample_events() {
        let secret = AppSecret::from_json(app_secret().expose_secret()).unwrap();
        assert_eq!(secret.client_id.as_deref(), Some(keap_sandbox::DEFAULT_CLIENT_ID));
        assert_eq!(
            secret.client_secret.unwrap().expose_secret(),
            keap_sandbox::DEFAULT_CLIENT_SECRET
        );
        assert_eq!(secret.api_key.unwrap().expose_secret(), keap_sandbox::DEFAULT_API_KEY);
        assert_eq!(secret.signup_signing_key.unwrap().expose_secret(), SIGNING_KEY);
        // events/oauth-start.json and events/status.json carry Basic admin:local-admin-password.
        assert_eq!(secret.admin_password.unwrap().expose_secret(), "local-admin-password");
    }

    #[test]
    fn welcome_defaults_apply_only_with_the_sandbox() {
        let names = |with_sandbox| {
            env_defaults("http://127.0.0.1:1", with_sandbox)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert!(names(true).contains(&"KEAP_WELCOME_TAG"));
        assert!(!names(false).iter().any(|n| n.starts_with("KEAP_WELCOME")));
        let redirect = env_defaults("http://127.0.0.1:1", false)
            .into_iter()
            .find(|(n, _)| *n == "KEAP_REDIRECT_URI");
        assert_eq!(redirect.unwrap().1, "http://127.0.0.1:1/oauth/callback");
    }
}
