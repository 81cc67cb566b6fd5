//! Website forms (`POST /form`, `POST /form/{form_name}`): their configuration, read once at
//! cold start with the rest of [`crate::config::Config`]. The README's "Website forms" section
//! documents every variable named here.
//!
//! - The default form (`/form`): `FORM_ALLOWED_ORIGINS`, `FORM_THANK_YOU_URL`, `FORM_ERROR_URL`,
//!   `FORM_TAGS`, `FORM_SOURCE`, `FORM_CUSTOM_FIELDS`.
//! - Named forms (`/form/{form_name}`): `FORMS_JSON`, a JSON object by form name; a setting a
//!   named form leaves out is the default form's.
//! - For every form: the human check (`FORM_CAPTCHA_PROVIDER`, `FORM_CAPTCHA_VERIFY_URL`,
//!   `FORM_CAPTCHA_REQUIRED`), the honeypot field (`FORM_HONEYPOT_FIELD`), whether the caller's
//!   address goes to Keap (`FORM_RECORD_IP`) and the per-address limit
//!   (`FORM_RATE_LIMIT_PER_MINUTE`).

use std::collections::BTreeMap;

use serde::Deserialize;
use url::Url;

use crate::config::ConfigError;
use crate::signup::TagRef;
use crate::signup::request::{MAX_TAGS, MAX_TEXT_CHARS};

/// The honeypot field's name unless `FORM_HONEYPOT_FIELD` says otherwise: a field people
/// never see (hidden by CSS) and form-filling bots fill in.
pub const DEFAULT_HONEYPOT_FIELD: &str = "_gotcha";
/// Form posts one client address may make per minute to one function instance.
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 10;
/// Longest form name (`/form/{form_name}`).
pub const MAX_FORM_NAME_CHARS: usize = 64;
/// Most named forms and most custom-field labels per form.
pub const MAX_FORMS: usize = 100;
pub const MAX_CUSTOM_FIELDS: usize = 50;

/// The human-check services the form route can verify tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptchaProvider {
    /// Cloudflare Turnstile.
    Turnstile,
    HCaptcha,
    /// Google reCAPTCHA (v2 checkbox or invisible).
    ReCaptcha,
}

impl CaptchaProvider {
    /// `FORM_CAPTCHA_PROVIDER`: `None` for `none`.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(None),
            "turnstile" => Ok(Some(Self::Turnstile)),
            "hcaptcha" => Ok(Some(Self::HCaptcha)),
            "recaptcha" => Ok(Some(Self::ReCaptcha)),
            other => Err(format!(
                "{other:?} is not one of \"turnstile\", \"hcaptcha\", \"recaptcha\" or \"none\""
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Turnstile => "turnstile",
            Self::HCaptcha => "hcaptcha",
            Self::ReCaptcha => "recaptcha",
        }
    }

    /// The form field the provider's widget puts its token in.
    pub fn token_field(self) -> &'static str {
        match self {
            Self::Turnstile => "cf-turnstile-response",
            Self::HCaptcha => "h-captcha-response",
            Self::ReCaptcha => "g-recaptcha-response",
        }
    }

    /// The provider's own siteverify endpoint.
    pub fn default_verify_url(self) -> &'static str {
        match self {
            Self::Turnstile => "https://challenges.cloudflare.com/turnstile/v0/siteverify",
            Self::HCaptcha => "https://api.hcaptcha.com/siteverify",
            Self::ReCaptcha => "https://www.google.com/recaptcha/api/siteverify",
        }
    }
}

/// The human check every form post goes through when a provider is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanCheck {
    pub provider: CaptchaProvider,
    /// `FORM_CAPTCHA_VERIFY_URL`, else the provider's own.
    pub verify_url: Url,
    /// `FORM_CAPTCHA_REQUIRED` (default true): a post without a token is refused. When false, a
    /// token that is present is still verified.
    pub required: bool,
}

/// The origins a form accepts posts from (`Origin`, else `Referer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `*`: any origin, and posts with neither header (not recommended: see the README).
    Any,
    /// Serialized origins (`https://www.example.com`, `http://localhost:8080`); empty: none.
    List(Vec<String>),
}

impl Default for Origins {
    fn default() -> Self {
        Origins::List(Vec::new())
    }
}

impl Origins {
    /// Parses a comma-separated list (or a JSON array's items); each item must be an origin
    /// alone: scheme, host and port, no path, query or credentials.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut origins = Vec::new();
        for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(Origins::Any);
            }
            origins.push(origin_of_configured(item)?);
        }
        Ok(Origins::List(origins))
    }

    /// Whether a post whose origin is `origin` (serialized, as [`request_origin`] gives it) is
    /// accepted; `None`: the request named no origin.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (Origins::Any, _) => true,
            (Origins::List(list), Some(origin)) => list.iter().any(|o| o == origin),
            (Origins::List(_), None) => false,
        }
    }
}

fn origin_of_configured(item: &str) -> Result<String, String> {
    let url = Url::parse(item).map_err(|e| format!("{item:?} is not an origin ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{item:?} is not an http or https origin"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{item:?} is more than an origin: write scheme, host and port only (https://www.example.com)"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// The serialized origin of a request: its `Origin` header, else its `Referer`'s origin.
/// `null` (sandboxed frames, `file:` pages) and anything unparsable count as no origin.
pub fn request_origin(origin: Option<&str>, referer: Option<&str>) -> Option<String> {
    let serialize = |text: &str| -> Option<String> {
        let url = Url::parse(text.trim()).ok()?;
        matches!(url.scheme(), "http" | "https").then(|| url.origin().ascii_serialization())
    };
    match origin.map(str::trim) {
        Some(origin) if !origin.is_empty() => serialize(origin),
        _ => referer.and_then(serialize),
    }
}

/// The settings of one form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormSettings {
    pub allowed_origins: Origins,
    /// Where a plain HTML form is sent (`303`) after a post that succeeded; without it, a
    /// small thank-you page.
    pub thank_you_url: Option<Url>,
    /// Where a plain HTML form is sent (`303`, with `?error=<code>`) after a refused post;
    /// without it, a small error page.
    pub error_url: Option<Url>,
    /// Tags applied to every contact from this form (besides `KEAP_WELCOME_TAG`). Visitors
    /// cannot add tags: a public form must not apply what it likes.
    pub tags: Vec<TagRef>,
    /// The signup's `source` (the opt-in reason names it).
    pub source: Option<String>,
    /// Keap custom-field labels a form field of the same name (or `fields[Label]`) fills.
    /// Other unknown fields are ignored.
    pub custom_fields: Vec<String>,
}

/// Every form's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormsConfig {
    pub default: FormSettings,
    pub named: BTreeMap<String, FormSettings>,
    pub human_check: Option<HumanCheck>,
    pub honeypot_field: String,
    /// `FORM_RECORD_IP`: the caller's address (API Gateway's `sourceIp`) goes to Keap as the
    /// signup's `ip_address`.
    pub record_ip: bool,
    /// Posts per client address per minute, per function instance; 0 turns the limit off.
    pub rate_limit_per_minute: u32,
}

impl Default for FormsConfig {
    fn default() -> Self {
        Self {
            default: FormSettings {
                source: Some("the website form".into()),
                ..FormSettings::default()
            },
            named: BTreeMap::new(),
            human_check: None,
            honeypot_field: DEFAULT_HONEYPOT_FIELD.into(),
            record_ip: false,
            rate_limit_per_minute: DEFAULT_RATE_LIMIT_PER_MINUTE,
        }
    }
}

/// One named form in `FORMS_JSON`; what it leaves out is the default form's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedForm {
    allowed_origins: Option<Vec<String>>,
    thank_you_url: Option<String>,
    error_url: Option<String>,
    tags: Option<Vec<serde_json::Value>>,
    source: Option<String>,
    custom_fields: Option<Vec<String>>,
}

/// A form name: letters, digits, `-` and `_`, at most [`MAX_FORM_NAME_CHARS`].
pub fn is_form_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FORM_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

/// An absolute http(s) page URL (thank-you and error pages).
fn page_url(name: &'static str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim()).map_err(|e| invalid(name, format!("{text:?} is not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(name, format!("{text:?} is not an http or https URL")));
    }
    Ok(url)
}

/// The siteverify URL: https, or plain http to this machine only (a local fake), as Keap's
/// URLs (see [`crate::config::check_keap_url`]): the request carries `captcha_secret`.
fn verify_url(text: &str) -> Result<Url, ConfigError> {
    const NAME: &str = "FORM_CAPTCHA_VERIFY_URL";
    crate::config::check_keap_url(NAME, text).map_err(|error| match error {
        ConfigError::Invalid { reason, .. } => invalid(
            NAME,
            reason
                .replace("Keap's URLs", "the siteverify URL")
                .replace("a local sandbox", "a local fake"),
        ),
        other => other,
    })
}

fn tags<'a>(
    name: &'static str,
    items: impl IntoIterator<Item = &'a serde_json::Value>,
) -> Result<Vec<TagRef>, ConfigError> {
    let mut tags = Vec::new();
    for item in items {
        let tag = match item {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(id) if id > 0 => TagRef::Id(id),
                _ => return Err(invalid(name, format!("{n} is not a tag id (a positive integer)"))),
            },
            serde_json::Value::String(text)
                if !text.trim().is_empty() && text.trim().chars().count() <= MAX_TEXT_CHARS =>
            {
                TagRef::parse(text)
            }
            other => {
                return Err(invalid(
                    name,
                    format!("{other} is not a tag id or a tag name of at most {MAX_TEXT_CHARS} characters"),
                ));
            }
        };
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(invalid(name, format!("names more than {MAX_TAGS} tags")));
    }
    Ok(tags)
}

fn source(name: &'static str, text: &str) -> Result<Option<String>, ConfigError> {
    let text = text.trim();
    if text.chars().count() > MAX_TEXT_CHARS || text.chars().any(char::is_control) {
        return Err(invalid(
            name,
            format!("must be one line of at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

fn custom_fields(name: &'static str, labels: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let labels: Vec<String> = labels
        .into_iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    if labels.len() > MAX_CUSTOM_FIELDS {
        return Err(invalid(
            name,
            format!("names more than {MAX_CUSTOM_FIELDS} custom fields"),
        ));
    }
    if let Some(bad) = labels
        .iter()
        .find(|l| l.chars().count() > MAX_TEXT_CHARS || l.chars().any(char::is_control))
    {
        return Err(invalid(
            name,
            format!("the label {bad:?} is longer than {MAX_TEXT_CHARS} characters or holds control characters"),
        ));
    }
    Ok(labels)
}

fn flag(name: &'static str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(invalid(name, format!("{other:?} is neither true nor false"))),
    }
}

impl FormsConfig {
    /// Reads the `FORM_*` variables and `FORMS_JSON` from the process environment (blank
    /// counts as unset).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// As [`FormsConfig::from_env`], with the variables from `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let comma_list = |text: &str| -> Vec<String> { text.split(',').map(|s| s.trim().to_owned()).collect() };

        let mut default = defaults.default.clone();
        if let Some(text) = get("FORM_ALLOWED_ORIGINS") {
            default.allowed_origins =
                Origins::parse(text.split(',')).map_err(|r| invalid("FORM_ALLOWED_ORIGINS", r))?;
        }
        if let Some(text) = get("FORM_THANK_YOU_URL") {
            default.thank_you_url = Some(page_url("FORM_THANK_YOU_URL", &text)?);
        }
        if let Some(text) = get("FORM_ERROR_URL") {
            default.error_url = Some(page_url("FORM_ERROR_URL", &text)?);
        }
        if let Some(text) = get("FORM_TAGS") {
            let items: Vec<serde_json::Value> = comma_list(&text)
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(serde_json::Value::String)
                .collect();
            default.tags = tags("FORM_TAGS", &items)?;
        }
        if let Some(text) = get("FORM_SOURCE") {
            default.source = source("FORM_SOURCE", &text)?;
        }
        if let Some(text) = get("FORM_CUSTOM_FIELDS") {
            default.custom_fields = custom_fields("FORM_CUSTOM_FIELDS", comma_list(&text))?;
        }

        let mut named = BTreeMap::new();
        if let Some(text) = get("FORMS_JSON") {
            const NAME: &str = "FORMS_JSON";
            // serde's message may quote a value; the variable holds no secret, but keep to
            // position and kind as for the app secret.
            let forms: BTreeMap<String, NamedForm> = serde_json::from_str(&text).map_err(|e| {
                invalid(
                    NAME,
                    format!(
                        "not a JSON object of forms ({:?} error at line {}, column {}: {e})",
                        e.classify(),
                        e.line(),
                        e.column()
                    ),
                )
            })?;
            if forms.len() > MAX_FORMS {
                return Err(invalid(NAME, format!("names more than {MAX_FORMS} forms")));
            }
            for (name, form) in forms {
                if !is_form_name(&name) {
                    return Err(invalid(
                        NAME,
                        format!(
                            "{name:?} is not a form name (letters, digits, - and _, at most {MAX_FORM_NAME_CHARS})"
                        ),
                    ));
                }
                let mut settings = FormSettings {
                    source: Some(format!("the website form {name}")),
                    ..default.clone()
                };
                if let Some(list) = form.allowed_origins {
                    settings.allowed_origins = Origins::parse(list.iter().map(String::as_str))
                        .map_err(|r| invalid(NAME, format!("{name}: {r}")))?;
                }
                if let Some(text) = form.thank_you_url {
                    settings.thank_you_url = Some(page_url(NAME, &text)?);
                }
                if let Some(text) = form.error_url {
                    settings.error_url = Some(page_url(NAME, &text)?);
                }
                if let Some(items) = form.tags {
                    settings.tags = tags(NAME, &items)?;
                }
                if let Some(text) = form.source {
                    settings.source = source(NAME, &text)?;
                }
                if let Some(labels) = form.custom_fields {
                    settings.custom_fields = custom_fields(NAME, labels)?;
                }
                named.insert(name, settings);
            }
        }

        let human_check = match get("FORM_CAPTCHA_PROVIDER") {
            None => None,
            Some(text) => CaptchaProvider::parse(&text)
                .map_err(|r| invalid("FORM_CAPTCHA_PROVIDER", r))?
                .map(|provider| -> Result<HumanCheck, ConfigError> {
                    let url =
                        get("FORM_CAPTCHA_VERIFY_URL").unwrap_or_else(|| provider.default_verify_url().to_owned());
                    Ok(HumanCheck {
                        provider,
                        verify_url: verify_url(&url)?,
                        required: get("FORM_CAPTCHA_REQUIRED")
                            .map(|t| flag("FORM_CAPTCHA_REQUIRED", &t))
                            .transpose()?
                            .unwrap_or(true),
                    })
                })
                .transpose()?,
        };

        let honeypot_field = match get("FORM_HONEYPOT_FIELD") {
            None => defaults.honeypot_field,
            Some(text) => {
                let text = text.trim().to_owned();
                if text.len() > MAX_TEXT_CHARS || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(invalid("FORM_HONEYPOT_FIELD", "must be a field name without spaces"));
                }
                text
            }
        };
        let record_ip = get("FORM_RECORD_IP")
            .map(|t| flag("FORM_RECORD_IP", &t))
            .transpose()?
            .unwrap_or(defaults.record_ip);
        let rate_limit_per_minute = match get("FORM_RATE_LIMIT_PER_MINUTE") {
            None => defaults.rate_limit_per_minute,
            Some(text) => text
                .trim()
                .parse::<u32>()
                .map_err(|e| invalid("FORM_RATE_LIMIT_PER_MINUTE", e.to_string()))?,
        };
        Ok(Self {
            default,
            named,
            human_check,
            honeypot_field,
            record_ip,
            rate_limit_per_minute,
        })
    }

    /// The settings of `/form` (`None`) or `/form/{name}`; `None` when no such form exists.
    pub fn form(&self, name: Option<&str>) -> Option<&FormSettings> {
        match name {
            None => Some(&self.default),
            Some(name) => self.named.get(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<FormsConfig, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        FormsConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_set_allows_no_origin_and_checks_nothing_more() {
        let config = read(&[]).unwrap();
        assert_eq!(config, FormsConfig::default());
        assert!(!config.default.allowed_origins.allows(Some("https://www.example.com")));
        assert!(!config.default.allowed_origins.allows(None));
        assert!(config.human_check.is_none());
        assert!(config.form(Some("contact")).is_none());
    }

    #[test]
    fn origins_are_normalized_and_compared_exactly() {
        let config = read(&[(
            "FORM_ALLOWED_ORIGINS",
            " https://WWW.Example.com , http://localhost:8080/ ",
        )])
        .unwrap();
        let origins = &config.default.allowed_origins;
        assert_eq!(
            origins,
            &Origins::List(vec!["https://www.example.com".into(), "http://localhost:8080".into()])
        );
        let from = |o: Option<&str>, r: Option<&str>| origins.allows(request_origin(o, r).as_deref());
        assert!(from(Some("https://www.example.com"), None));
        assert!(from(None, Some("https://www.example.com/contact?x=1")));
        assert!(from(Some("http://localhost:8080"), Some("https://evil.example")));
        assert!(!from(Some("https://evil.example"), Some("https://www.example.com/")));
        assert!(!from(Some("https://www.example.com.evil.example"), None));
        assert!(!from(Some("http://www.example.com"), None));
        assert!(!from(Some("null"), Some("https://www.example.com/")));
        assert!(!from(None, None));
        for bad in [
            "www.example.com",
            "https://www.example.com/path",
            "ftp://x.example",
            "https://u:p@x.example",
        ] {
            let error = read(&[("FORM_ALLOWED_ORIGINS", bad)]).unwrap_err().to_string();
            assert!(error.contains("FORM_ALLOWED_ORIGINS"), "{bad}: {error}");
        }
        assert_eq!(
            read(&[("FORM_ALLOWED_ORIGINS", "*")]).unwrap().default.allowed_origins,
            Origins::Any
        );
    }

    #[test]
    fn named_forms_inherit_what_they_leave_out() {
        let config = read(&[
            ("FORM_ALLOWED_ORIGINS", "https://www.example.com"),
            ("FORM_THANK_YOU_URL", "https://www.example.com/thanks"),
            ("FORM_TAGS", "Website, 12"),
            (
                "FORMS_JSON",
                r#"{"contact": {"tags": ["Contact form"], "error_url": "https://www.example.com/oops", "custom_fields": ["Plan"]},
                    "beta": {"allowed_origins": ["https://beta.example.com"], "source": "beta page"}}"#,
            ),
        ])
        .unwrap();
        let contact = config.form(Some("contact")).unwrap();
        assert_eq!(contact.allowed_origins, config.default.allowed_origins);
        assert_eq!(
            contact.thank_you_url.as_ref().unwrap().as_str(),
            "https://www.example.com/thanks"
        );
        assert_eq!(
            contact.error_url.as_ref().unwrap().as_str(),
            "https://www.example.com/oops"
        );
        assert_eq!(contact.tags, vec![TagRef::Name("Contact form".into())]);
        assert_eq!(contact.source.as_deref(), Some("the website form contact"));
        assert_eq!(contact.custom_fields, vec!["Plan".to_owned()]);
        assert_eq!(
            config.default.tags,
            vec![TagRef::Name("Website".into()), TagRef::Id(12)]
        );
        let beta = config.form(Some("beta")).unwrap();
        assert!(beta.allowed_origins.allows(Some("https://beta.example.com")));
        assert!(!beta.allowed_origins.allows(Some("https://www.example.com")));
        assert_eq!(beta.source.as_deref(), Some("beta page"));
        assert_eq!(beta.tags, config.default.tags);
    }

    #[test]
    fn bad_named_forms_are_refused_naming_the_variable() {
        for bad in [
            "[]",
            "{",
            r#"{"bad name": {}}"#,
            r#"{"x": {"allowed_orgins": []}}"#,
            r#"{"x": {"thank_you_url": "/thanks"}}"#,
            r#"{"x": {"tags": [0]}}"#,
            r#"{"x": {"tags": [""]}}"#,
        ] {
            let error = read(&[("FORMS_JSON", bad)]).unwrap_err().to_string();
            assert!(error.contains("FORMS_JSON"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_human_check_takes_the_providers_field_and_url() {
        let config = read(&[("FORM_CAPTCHA_PROVIDER", "Turnstile")]).unwrap();
        let check = config.human_check.unwrap();
        assert_eq!(check.provider.token_field(), "cf-turnstile-response");
        assert_eq!(
            check.verify_url.as_str(),
            CaptchaProvider::Turnstile.default_verify_url()
        );
        assert!(check.required);
        let config = read(&[
            ("FORM_CAPTCHA_PROVIDER", "hcaptcha"),
            ("FORM_CAPTCHA_VERIFY_URL", "http://127.0.0.1:9/siteverify"),
            ("FORM_CAPTCHA_REQUIRED", "false"),
        ])
        .unwrap();
        let check = config.human_check.unwrap();
        assert_eq!(check.provider.token_field(), "h-captcha-response");
        assert!(!check.required);
        assert_eq!(
            read(&[("FORM_CAPTCHA_PROVIDER", "recaptcha")])
                .unwrap()
                .human_check
                .unwrap()
                .provider
                .token_field(),
            "g-recaptcha-response"
        );
        assert!(
            read(&[("FORM_CAPTCHA_PROVIDER", "none")])
                .unwrap()
                .human_check
                .is_none()
        );
        for (name, value) in [
            ("FORM_CAPTCHA_PROVIDER", "friendlycaptcha"),
            ("FORM_CAPTCHA_VERIFY_URL", "http://captcha.example/siteverify"),
        ] {
            let error = read(&[("FORM_CAPTCHA_PROVIDER", "turnstile"), (name, value)])
                .unwrap_err()
                .to_string();
            assert!(error.contains(name), "{error}");
        }
    }

    #[test]
    fn the_other_knobs() {
        let config = read(&[
            ("FORM_HONEYPOT_FIELD", "fax"),
            ("FORM_RECORD_IP", "true"),
            ("FORM_RATE_LIMIT_PER_MINUTE", "0"),
        ])
        .unwrap();
        assert_eq!(config.honeypot_field, "fax");
        assert!(config.record_ip);
        assert_eq!(config.rate_limit_per_minute, 0);
        for (name, value) in [
            ("FORM_HONEYPOT_FIELD", "a b"),
            ("FORM_RECORD_IP", "maybe"),
            ("FORM_RATE_LIMIT_PER_MINUTE", "-1"),
            ("FORM_THANK_YOU_URL", "thanks.html"),
            ("FORM_SOURCE", "a\nb"),
        ] {
            let error = read(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name), "{name}: {error}");
        }
    }
}
