//! The signup body: parsing and validation with precise error codes.
//!
//! `{"email": "…", "given_name": "…", "family_name": "…", "opt_in": true, "tags": ["…", 12], "source": "…"}`:
//! only `email` is required, `null` counts as absent, unknown fields are ignored.
//!
//! Optional contact details (see [`ContactDetails`]): `phone`, `company`, `job_title`, `website`,
//! `lead_source` (id or name), `utm` (`source`, `medium`, `campaign`, `term`, `content`),
//! `ip_address`, and `fields` (custom fields by their Keap label). This is the one parser of
//! signup bodies: the public form route converts its posts to this JSON and parses them here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use email_address::{EmailAddress, Options};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest accepted email address (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest accepted given or family name: Keap's own limit (`maxLength: 40` in its v2 spec), so
/// a longer name gets a precise 400 here instead of a refusal from Keap.
pub const MAX_NAME_CHARS: usize = 40;
/// Longest accepted tag name or source.
pub const MAX_TEXT_CHARS: usize = 100;
/// Most tags one signup may ask for.
pub const MAX_TAGS: usize = 20;
/// Longest phone number (Keap's v1 `phone_numbers[].number` is at most 40 in practice).
pub const MAX_PHONE_CHARS: usize = 40;
/// Longest website, UTM value or lead source name.
pub const MAX_LONG_TEXT_CHARS: usize = 255;
/// Most custom fields one signup may set.
pub const MAX_CUSTOM_FIELDS: usize = 50;
/// Longest custom field value given as text (Keap's text area fields take more; a signup
/// has no business sending more).
pub const MAX_FIELD_VALUE_CHARS: usize = 2000;

/// A tag named by the caller: a Keap tag id, or a name to look up (created when missing).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TagRef {
    Id(i64),
    Name(String),
}

impl TagRef {
    /// A string of digits is an id; anything else is a name.
    pub fn parse(text: &str) -> TagRef {
        let text = text.trim();
        match text.parse::<i64>() {
            Ok(id) if id > 0 && text.bytes().all(|b| b.is_ascii_digit()) => TagRef::Id(id),
            _ => TagRef::Name(text.to_owned()),
        }
    }

    /// How the tag is named in responses and logs.
    pub fn label(&self) -> String {
        match self {
            TagRef::Id(id) => id.to_string(),
            TagRef::Name(name) => name.clone(),
        }
    }
}

/// A lead source named by the caller: an id, or a name to look up.
pub type LeadSourceRef = TagRef;

/// UTM parameters of the visit that led to the signup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Utm {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl Utm {
    /// The parameters that are set, by their short name (`source`, …).
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            ("source", &self.source),
            ("medium", &self.medium),
            ("campaign", &self.campaign),
            ("term", &self.term),
            ("content", &self.content),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
        .collect()
    }
}

/// A custom field value as the caller gave it; checked against the field's type once the
/// field is known (see `SignupService`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum FieldValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

/// Contact details beyond name and email; every one optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContactDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_source: Option<LeadSourceRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm: Option<Utm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddr>,
    /// Custom fields by their Keap label.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldValue>,
}

impl ContactDetails {
    /// The body field names that are set (for the allow-list); custom fields as `fields.<label>`.
    pub fn names_set(&self) -> Vec<String> {
        let mut names: Vec<String> = [
            ("phone", self.phone.is_some()),
            ("company", self.company.is_some()),
            ("job_title", self.job_title.is_some()),
            ("website", self.website.is_some()),
            ("lead_source", self.lead_source.is_some()),
            ("utm", self.utm.is_some()),
            ("ip_address", self.ip_address.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name.to_owned())
        .collect();
        names.extend(self.fields.keys().map(|label| format!("fields.{label}")));
        names
    }
}

/// A validated signup. Serializes to the same JSON shape it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signup {
    pub email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    pub opt_in: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TagRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(flatten)]
    pub details: ContactDetails,
}

/// Why a body is not a valid signup. `message` is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSignup {
    #[error("the body is not a JSON object: {0}")]
    InvalidJson(String),
    #[error("`email` is required")]
    MissingEmail,
    #[error("`email` is not a valid email address")]
    InvalidEmail,
    #[error("`{field}` {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// A custom field (`fields.<label>`) with a value of the wrong shape.
    #[error("`fields.{label}` {reason}")]
    InvalidCustomField { label: String, reason: String },
}

impl InvalidSignup {
    pub fn code(&self) -> &'static str {
        match self {
            InvalidSignup::InvalidJson(_) => "invalid_json",
            InvalidSignup::MissingEmail => "missing_email",
            InvalidSignup::InvalidEmail => "invalid_email",
            InvalidSignup::InvalidField { .. } | InvalidSignup::InvalidCustomField { .. } => "invalid_field",
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidSignup {
    InvalidSignup::InvalidField {
        field,
        reason: reason.into(),
    }
}

impl Signup {
    /// Parses and validates a raw body.
    pub fn from_json(body: &[u8]) -> Result<Signup, InvalidSignup> {
        let value: Value = serde_json::from_slice(body).map_err(|e| InvalidSignup::InvalidJson(e.to_string()))?;
        match value {
            Value::Object(object) => Signup::from_object(&object),
            other => Err(InvalidSignup::InvalidJson(format!(
                "expected an object, found {}",
                kind(&other)
            ))),
        }
    }

    /// Validates an already parsed JSON object (also used for queued messages).
    pub fn from_object(object: &Map<String, Value>) -> Result<Signup, InvalidSignup> {
        Ok(Signup {
            email: email(present(object, "email").ok_or(InvalidSignup::MissingEmail)?)?,
            given_name: optional_text(object, "given_name", MAX_NAME_CHARS)?,
            family_name: optional_text(object, "family_name", MAX_NAME_CHARS)?,
            opt_in: match present(object, "opt_in") {
                None => false,
                Some(Value::Bool(flag)) => *flag,
                Some(other) => {
                    return Err(invalid(
                        "opt_in",
                        format!("must be true or false, found {}", kind(other)),
                    ));
                }
            },
            tags: tags(present(object, "tags"))?,
            source: optional_text(object, "source", MAX_TEXT_CHARS)?,
            details: details(object)?,
        })
    }
}

fn details(object: &Map<String, Value>) -> Result<ContactDetails, InvalidSignup> {
    Ok(ContactDetails {
        phone: match optional_text(object, "phone", MAX_PHONE_CHARS)? {
            Some(phone) if !is_phone(&phone) => {
                return Err(invalid(
                    "phone",
                    "must be a phone number (digits, spaces and + - ( ) . only)",
                ));
            }
            phone => phone,
        },
        company: optional_text(object, "company", MAX_TEXT_CHARS)?,
        job_title: optional_text(object, "job_title", MAX_TEXT_CHARS)?,
        website: match optional_text(object, "website", MAX_LONG_TEXT_CHARS)? {
            Some(website) => Some(web_address(&website)?),
            None => None,
        },
        lead_source: match present(object, "lead_source") {
            None => None,
            Some(Value::Number(number)) => match number.as_i64() {
                Some(id) if id > 0 => Some(TagRef::Id(id)),
                _ => {
                    return Err(invalid(
                        "lead_source",
                        format!("holds {number}, which is not a lead source id (a positive integer)"),
                    ));
                }
            },
            Some(value) => text("lead_source", value, MAX_LONG_TEXT_CHARS)?.map(|name| TagRef::parse(&name)),
        },
        utm: utm(present(object, "utm"))?,
        ip_address: match present(object, "ip_address") {
            None => None,
            Some(Value::String(ip)) => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| invalid("ip_address", "must be an IPv4 or IPv6 address"))?,
            ),
            Some(other) => {
                return Err(invalid(
                    "ip_address",
                    format!("must be a string, found {}", kind(other)),
                ));
            }
        },
        fields: custom_fields(present(object, "fields"))?,
    })
}

/// Digits with the usual separators; at least three digits.
fn is_phone(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.'))
        && text.chars().filter(char::is_ascii_digit).count() >= 3
}

/// An `http`/`https` address with a dotted host name, as openapi.yaml's pattern describes it:
/// `[http[s]://]label.label[/path]`, host labels of letters, digits and `-` (the last one not
/// all digits), the path printable ASCII. A bare `example.com` is taken as `https://example.com`.
fn web_address(text: &str) -> Result<String, InvalidSignup> {
    let bad = || invalid("website", "must be a web address (https://…)");
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &&str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let named = labels
        .last()
        .is_some_and(|l| l.bytes().any(|b| b.is_ascii_alphabetic() || b == b'-'));
    let path_ok = path.bytes().all(|b| (b'!'..=b'~').contains(&b));
    if labels.len() < 2 || !labels.iter().all(label_ok) || !named || !path_ok {
        return Err(bad());
    }
    let full = if rest.len() == text.len() {
        format!("https://{text}")
    } else {
        text.to_owned()
    };
    url::Url::parse(&full).map(|_| full).map_err(|_| bad())
}

fn utm(value: Option<&Value>) -> Result<Option<Utm>, InvalidSignup> {
    let object = match value {
        None => return Ok(None),
        Some(Value::Object(object)) => object,
        Some(other) => return Err(invalid("utm", format!("must be an object, found {}", kind(other)))),
    };
    // `utm_source` and friends are accepted too: they are what the page's URL carries. Both
    // names are checked when given; the short one wins when both hold a value.
    let one = |name: &str| -> Result<Option<String>, InvalidSignup> {
        match object.get(name).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(value @ Value::String(_)) => text("utm", value, MAX_LONG_TEXT_CHARS),
            Some(other) => Err(invalid(
                "utm",
                format!("`{name}` must be a string, found {}", kind(other)),
            )),
        }
    };
    let get = |name: &'static str| -> Result<Option<String>, InvalidSignup> {
        let short = one(name)?;
        let long = one(&format!("utm_{name}"))?;
        Ok(short.or(long))
    };
    let utm = Utm {
        source: get("source")?,
        medium: get("medium")?,
        campaign: get("campaign")?,
        term: get("term")?,
        content: get("content")?,
    };
    Ok((utm != Utm::default()).then_some(utm))
}

fn custom_fields(value: Option<&Value>) -> Result<BTreeMap<String, FieldValue>, InvalidSignup> {
    let object = match value {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(object)) => object,
        Some(other) => {
            return Err(invalid(
                "fields",
                format!(
                    "must be an object of custom field values by label, found {}",
                    kind(other)
                ),
            ));
        }
    };
    if object.len() > MAX_CUSTOM_FIELDS {
        return Err(invalid(
            "fields",
            format!("must hold at most {MAX_CUSTOM_FIELDS} fields"),
        ));
    }
    let mut fields = BTreeMap::new();
    for (label, value) in object {
        let label = label.trim();
        if label.is_empty() || label.chars().count() > MAX_TEXT_CHARS || label.chars().any(char::is_control) {
            return Err(invalid(
                "fields",
                format!("labels must be 1 to {MAX_TEXT_CHARS} characters without control characters"),
            ));
        }
        let bad = |reason: String| InvalidSignup::InvalidCustomField {
            label: label.to_owned(),
            reason,
        };
        let value = match value {
            Value::Null => continue,
            Value::Bool(flag) => FieldValue::Bool(*flag),
            Value::Number(number) => FieldValue::Number(number.clone()),
            Value::String(text) => {
                let text = text.trim();
                if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    return Err(bad("must not contain control characters".into()));
                }
                if text.chars().count() > MAX_FIELD_VALUE_CHARS {
                    return Err(bad(format!("must be at most {MAX_FIELD_VALUE_CHARS} characters")));
                }
                if text.is_empty() {
                    continue;
                }
                FieldValue::Text(text.to_owned())
            }
            other => {
                return Err(bad(format!(
                    "must be a string, a number or true/false, found {}",
                    kind(other)
                )));
            }
        };
        // Two keys that trim to one label: the last one wins, as in a JSON object.
        fields.insert(label.to_owned(), value);
    }
    Ok(fields)
}

/// The field's value unless it is absent or `null`.
fn present<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|value| !value.is_null())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn email(value: &Value) -> Result<String, InvalidSignup> {
    let Value::String(text) = value else {
        return Err(invalid("email", format!("must be a string, found {}", kind(value))));
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(InvalidSignup::MissingEmail);
    }
    if text.chars().count() > MAX_EMAIL_CHARS || text.chars().any(char::is_control) {
        return Err(InvalidSignup::InvalidEmail);
    }
    // A bare address with a dotted domain: no display name, no `user@localhost`, no `[1.2.3.4]`.
    let options = Options::default()
        .without_display_text()
        .with_required_tld()
        .without_domain_literal();
    EmailAddress::parse_with_options(text, options).map_err(|_| InvalidSignup::InvalidEmail)?;
    Ok(text.to_owned())
}

/// Trimmed single-line text of bounded length; an empty string counts as absent.
fn text(field: &'static str, value: &Value, max_chars: usize) -> Result<Option<String>, InvalidSignup> {
    let Value::String(text) = value else {
        return Err(invalid(field, format!("must be a string, found {}", kind(value))));
    };
    let text = text.trim();
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    if text.chars().count() > max_chars {
        return Err(invalid(field, format!("must be at most {max_chars} characters")));
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

fn optional_text(
    object: &Map<String, Value>,
    field: &'static str,
    max_chars: usize,
) -> Result<Option<String>, InvalidSignup> {
    present(object, field).map_or(Ok(None), |value| text(field, value, max_chars))
}

fn tags(value: Option<&Value>) -> Result<Vec<TagRef>, InvalidSignup> {
    let items = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(invalid("tags", format!("must be an array, found {}", kind(other)))),
    };
    if items.len() > MAX_TAGS {
        return Err(invalid("tags", format!("must hold at most {MAX_TAGS} tags")));
    }
    let mut tags: Vec<TagRef> = Vec::with_capacity(items.len());
    for item in items {
        let tag = match item {
            Value::Number(number) => match number.as_i64() {
                Some(id) if id > 0 => TagRef::Id(id),
                _ => {
                    return Err(invalid(
                        "tags",
                        format!("holds {number}, which is not a tag id (a positive integer)"),
                    ));
                }
            },
            Value::String(_) => match text("tags", item, MAX_TEXT_CHARS)? {
                Some(name) => TagRef::parse(&name),
                None => return Err(invalid("tags", "holds an empty tag name")),
            },
            other => {
                return Err(invalid(
                    "tags",
                    format!("must hold tag ids or names, found {}", kind(other)),
                ));
            }
        };
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Signup, InvalidSignup> {
        Signup::from_json(json.as_bytes())
    }

    fn code(json: &str) -> &'static str {
        parse(json).expect_err(json).code()
    }

    #[test]
    fn a_full_body_parses_and_unknown_fields_are_ignored() {
        let signup = parse(
            r#"{"email":" Ann@Example.com ","given_name":"Ann","family_name":"Lee","opt_in":true,
                "tags":["Newsletter", 12, "34", "Newsletter"],"source":"landing","extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(
            signup,
            Signup {
                email: "Ann@Example.com".into(),
                given_name: Some("Ann".into()),
                family_name: Some("Lee".into()),
                opt_in: true,
                tags: vec![TagRef::Name("Newsletter".into()), TagRef::Id(12), TagRef::Id(34)],
                source: Some("landing".into()),
                details: ContactDetails::default(),
            }
        );
    }

    #[test]
    fn only_email_is_required_and_null_is_absent() {
        let signup = parse(r#"{"email":"a@example.com","given_name":null,"tags":null,"opt_in":null}"#).unwrap();
        assert_eq!(signup.given_name, None);
        assert!(signup.tags.is_empty());
        assert!(!signup.opt_in);
    }

    #[test]
    fn not_json_or_not_an_object_is_invalid_json() {
        for body in ["", "{", "not json", "[1,2]", "\"a@example.com\"", "null"] {
            assert_eq!(code(body), "invalid_json", "{body}");
        }
    }

    #[test]
    fn email_problems_have_their_own_codes() {
        assert_eq!(code(r#"{}"#), "missing_email");
        assert_eq!(code(r#"{"email":null}"#), "missing_email");
        assert_eq!(code(r#"{"email":"   "}"#), "missing_email");
        assert_eq!(code(r#"{"email":42}"#), "invalid_field");
        for email in [
            "plainaddress",
            "a@",
            "@example.com",
            "a@localhost",
            "Ann <a@example.com>",
            "a@[127.0.0.1]",
            "a b@example.com",
            "a@example.com\\n",
        ] {
            let body = serde_json::json!({ "email": email }).to_string();
            assert_eq!(code(&body), "invalid_email", "{email}");
        }
        let body = serde_json::json!({ "email": "a@example.com\u{0007}" }).to_string();
        assert_eq!(code(&body), "invalid_email");
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(code(&serde_json::json!({ "email": long }).to_string()), "invalid_email");
    }

    #[test]
    fn exotic_but_valid_addresses_pass() {
        for email in [
            "first.last+tag@sub.example.co.uk",
            "o'brien@example.ie",
            "user_name-1@xn--bcher-kva.example",
            "\"quoted local\"@example.com",
        ] {
            let body = serde_json::json!({ "email": email }).to_string();
            assert_eq!(parse(&body).unwrap().email, email);
        }
    }

    #[test]
    fn names_allow_unicode_but_not_control_characters_or_excess() {
        let signup = parse(r#"{"email":"a@example.com","given_name":"Zoë 😀 Ōtani","family_name":"  "}"#).unwrap();
        assert_eq!(signup.given_name.as_deref(), Some("Zoë 😀 Ōtani"));
        assert_eq!(signup.family_name, None);
        assert_eq!(
            code(r#"{"email":"a@example.com","given_name":"Ann\nLee"}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"email":"a@example.com","family_name":"x\u0000"}"#),
            "invalid_field"
        );
        let at_limit = serde_json::json!({ "email": "a@example.com", "given_name": "é".repeat(40) }).to_string();
        assert_eq!(
            parse(&at_limit).unwrap().given_name.map(|n| n.chars().count()),
            Some(40)
        );
        let long = serde_json::json!({ "email": "a@example.com", "given_name": "é".repeat(41) }).to_string();
        assert_eq!(code(&long), "invalid_field");
        assert_eq!(
            code(r#"{"email":"a@example.com","given_name":["Ann"]}"#),
            "invalid_field"
        );
    }

    #[test]
    fn wrong_types_are_invalid_fields() {
        for body in [
            r#"{"email":"a@example.com","opt_in":"yes"}"#,
            r#"{"email":"a@example.com","tags":"vip"}"#,
            r#"{"email":"a@example.com","tags":[true]}"#,
            r#"{"email":"a@example.com","tags":[1.5]}"#,
            r#"{"email":"a@example.com","tags":[-3]}"#,
            r#"{"email":"a@example.com","tags":[""]}"#,
            r#"{"email":"a@example.com","source":7}"#,
        ] {
            assert_eq!(code(body), "invalid_field", "{body}");
        }
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert_eq!(
            code(&serde_json::json!({ "email": "a@example.com", "tags": many }).to_string()),
            "invalid_field"
        );
    }

    #[test]
    fn contact_details_parse_and_bad_ones_name_their_field() {
        let signup = parse(
            r#"{"email":"a@example.com","phone":" +1 (555) 010-2030 ","website":"example.com","lead_source":"12",
                "utm":{"source":"news","utm_medium":"email","utm_source":"ignored"},"ip_address":"2001:db8::1",
                "fields":{" Plan ":"Pro","Seats":3,"VIP":true,"Empty":"","Gone":null}}"#,
        )
        .unwrap();
        let details = &signup.details;
        assert_eq!(details.phone.as_deref(), Some("+1 (555) 010-2030"));
        assert_eq!(details.website.as_deref(), Some("https://example.com"));
        assert_eq!(details.lead_source, Some(TagRef::Id(12)));
        let utm = details.utm.as_ref().unwrap();
        assert_eq!(
            (utm.source.as_deref(), utm.medium.as_deref()),
            (Some("news"), Some("email"))
        );
        assert_eq!(details.fields.len(), 3);
        assert_eq!(details.fields["Plan"], FieldValue::Text("Pro".into()));
        let again = Signup::from_json(serde_json::to_string(&signup).unwrap().as_bytes()).unwrap();
        assert_eq!(again, signup, "a queued signup keeps its details");
        for (body, field) in [
            (
                r#"{"email":"a@example.com","utm":{"source":"","utm_content":"\u0084"}}"#,
                "utm",
            ),
            (r#"{"email":"a@example.com","utm":{"utm_term":5}}"#, "utm"),
            (
                r#"{"email":"a@example.com","fields":{"Plan":"a\u0001"}}"#,
                "fields.Plan",
            ),
            (r#"{"email":"a@example.com","ip_address":"1.2.3"}"#, "ip_address"),
            (r#"{"email":"a@example.com","website":"https://localhost"}"#, "website"),
            (r#"{"email":"a@example.com","website":"https://1.2.3.4"}"#, "website"),
            (r#"{"email":"a@example.com","website":"ftp://example.com"}"#, "website"),
            (
                r#"{"email":"a@example.com","website":"https://exa mple.com"}"#,
                "website",
            ),
            (r#"{"email":"a@example.com","phone":"12"}"#, "phone"),
        ] {
            let error = parse(body).expect_err(body);
            assert_eq!(error.code(), "invalid_field", "{body}");
            assert!(error.to_string().contains(field), "{body}: {error}");
        }
    }

    #[test]
    fn a_validated_signup_round_trips_through_json() {
        let signup =
            parse(r#"{"email":"a@example.com","given_name":"Ann","opt_in":true,"tags":["vip",7,"8"]}"#).unwrap();
        let again = Signup::from_json(serde_json::to_string(&signup).unwrap().as_bytes()).unwrap();
        assert_eq!(again, signup);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes get an answer, never a panic.
        #[test]
        fn any_body_is_accepted_or_refused_with_a_code(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(invalid) = Signup::from_json(&body) {
                prop_assert!(!invalid.code().is_empty());
            }
        }

        /// Any string values in the known fields are validated without panicking, and what
        /// passes holds no control character.
        #[test]
        fn any_field_values_validate_cleanly(email in ".{0,300}", name in ".{0,150}", tag in ".{0,120}") {
            let body = serde_json::json!({ "email": email, "given_name": name, "tags": [tag] }).to_string();
            if let Ok(signup) = Signup::from_json(body.as_bytes()) {
                prop_assert!(!signup.email.chars().any(char::is_control));
                prop_assert!(signup.given_name.iter().all(|n| !n.chars().any(char::is_control)));
            }
        }
    }
}
