//! A form post's body: decoded into name/value pairs (`application/x-www-form-urlencoded`,
//! `multipart/form-data` text fields, or a JSON object), then mapped onto the signup body
//! `POST /signup` takes, so both go through the same validation (`Signup::from_object`).

use keap_relay::forms::FormSettings;
use lambda_http::http::{HeaderMap, header};
use serde_json::{Map, Value};

/// Most fields one post may carry, and the longest field name.
pub const MAX_FIELDS: usize = 100;
pub const MAX_FIELD_NAME_BYTES: usize = 200;

/// The body encodings the form route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    UrlEncoded,
    /// With its boundary.
    Multipart(String),
    Json,
}

impl Encoding {
    /// From `Content-Type`; `None`: not a form encoding (415).
    pub fn of(headers: &HeaderMap) -> Option<Encoding> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-www-form-urlencoded" => Some(Encoding::UrlEncoded),
            // A multipart type without a boundary cannot be read: also 415, with the same words.
            "multipart/form-data" => multer::parse_boundary(value).ok().map(Encoding::Multipart),
            "application/json" => Some(Encoding::Json),
            other if other.starts_with("application/") && other.ends_with("+json") => Some(Encoding::Json),
            _ => None,
        }
    }
}

/// Why a body could not be read as form fields; `code` goes to the caller (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadForm {
    #[error("the form has a file field; this form takes text fields only")]
    FileNotAccepted,
    #[error("the body is not valid {0}")]
    Malformed(&'static str),
    #[error("the form has more than {MAX_FIELDS} fields or a field name longer than {MAX_FIELD_NAME_BYTES} bytes")]
    TooManyFields,
    #[error("form field values must be text (contact and campaign fields: strings)")]
    NotText,
    #[error("a form field name holds a control character, a quote or a backslash")]
    FieldName,
}

impl BadForm {
    pub fn code(&self) -> &'static str {
        match self {
            BadForm::FileNotAccepted => "file_not_accepted",
            BadForm::Malformed("JSON") => "invalid_json",
            BadForm::Malformed(_) => "invalid_form",
            BadForm::TooManyFields => "too_many_fields",
            BadForm::FieldName => "invalid_form",
            BadForm::NotText => "invalid_field",
        }
    }
}

/// The posted fields in order; a name may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Fields(pairs)
    }

    /// The first non-blank value of `name`, trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .find(|v| !v.is_empty())
    }

    fn push(&mut self, name: String, value: String) -> Result<(), BadForm> {
        if self.0.len() >= MAX_FIELDS || name.len() > MAX_FIELD_NAME_BYTES {
            return Err(BadForm::TooManyFields);
        }
        // No form field is named so, and a multipart header could not carry it: the same
        // refusal whatever the encoding.
        if name.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
            return Err(BadForm::FieldName);
        }
        self.0.push((name, value));
        Ok(())
    }

    /// Decodes a body of `encoding` (at most the route's size limit, checked before).
    pub async fn decode(encoding: &Encoding, body: &[u8]) -> Result<Fields, BadForm> {
        let mut fields = Fields::default();
        match encoding {
            Encoding::UrlEncoded => {
                if std::str::from_utf8(body).is_err() {
                    return Err(BadForm::Malformed("form data (UTF-8)"));
                }
                for (name, value) in form_urlencoded::parse(body) {
                    fields.push(name.into_owned(), value.into_owned())?;
                }
            }
            Encoding::Multipart(boundary) => {
                let chunk: Result<Vec<u8>, std::io::Error> = Ok(body.to_vec());
                let mut multipart = multer::Multipart::new(futures::stream::iter([chunk]), boundary.as_str());
                let malformed = |_| BadForm::Malformed("multipart/form-data");
                while let Some(field) = multipart.next_field().await.map_err(malformed)? {
                    let name = field.name().unwrap_or_default().to_owned();
                    // An empty file input still sends a part with `filename=""` and no content.
                    let file = field.file_name().is_some_and(|f| !f.is_empty());
                    let bytes = field.bytes().await.map_err(malformed)?;
                    if file {
                        return Err(BadForm::FileNotAccepted);
                    }
                    let Ok(value) = String::from_utf8(bytes.to_vec()) else {
                        return Err(BadForm::Malformed("multipart/form-data (UTF-8 text fields)"));
                    };
                    fields.push(name, value)?;
                }
            }
            Encoding::Json => {
                let value: Value = serde_json::from_slice(body).map_err(|_| BadForm::Malformed("JSON"))?;
                let Value::Object(object) = value else {
                    return Err(BadForm::Malformed("JSON"));
                };
                for (name, value) in object {
                    let text = match value {
                        Value::Null => continue,
                        Value::String(text) => text,
                        // A name, an address or a campaign is text, never `false` or `12`.
                        _ if is_contact_field(&name) => return Err(BadForm::NotText),
                        Value::Bool(flag) => flag.to_string(),
                        Value::Number(number) => number.to_string(),
                        Value::Array(_) | Value::Object(_) => return Err(BadForm::NotText),
                    };
                    fields.push(name, text)?;
                }
            }
        }
        Ok(fields)
    }
}

/// Field names taken as they are in the signup body, with their aliases.
const CONTACT_FIELDS: &[(&str, &[&str])] = &[
    ("email", &["email"]),
    ("given_name", &["given_name", "first_name"]),
    ("family_name", &["family_name", "last_name"]),
    ("phone", &["phone"]),
    ("company", &["company"]),
    ("job_title", &["job_title"]),
    ("website", &["website"]),
];

/// `utm_source` and the others become `utm.source` and so on.
const UTM_FIELDS: &[&str] = &["source", "medium", "campaign", "term", "content"];

/// A contact or campaign field, which a JSON post must send as a string (or `null`).
fn is_contact_field(name: &str) -> bool {
    CONTACT_FIELDS.iter().any(|(_, names)| names.contains(&name))
        || name.strip_prefix("utm_").is_some_and(|part| UTM_FIELDS.contains(&part))
}

/// What a checkbox or a JSON flag may say.
fn opt_in(value: &str) -> Result<bool, BadForm> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(BadForm::NotText),
    }
}

/// The signup body for these fields: contact fields by their names (and aliases), UTM fields,
/// `opt_in`, custom fields the form lists by label; the form's own tags and source; the
/// caller's address when recorded. Visitors cannot set tags or the source, and every other
/// field is ignored.
pub fn signup_body(
    fields: &Fields,
    form: &FormSettings,
    ip_address: Option<&str>,
) -> Result<Map<String, Value>, BadForm> {
    let mut body = Map::new();
    for (target, names) in CONTACT_FIELDS {
        if let Some(value) = names.iter().find_map(|name| fields.get(name)) {
            body.insert((*target).to_owned(), Value::String(value.to_owned()));
        }
    }
    let mut utm = Map::new();
    for part in UTM_FIELDS {
        if let Some(value) = fields.get(&format!("utm_{part}")) {
            utm.insert((*part).to_owned(), Value::String(value.to_owned()));
        }
    }
    if !utm.is_empty() {
        body.insert("utm".into(), Value::Object(utm));
    }
    if let Some(value) = fields.get("opt_in") {
        body.insert("opt_in".into(), Value::Bool(opt_in(value)?));
    }
    let mut custom = Map::new();
    for label in &form.custom_fields {
        if let Some(value) = fields.get(label).or_else(|| fields.get(&format!("fields[{label}]"))) {
            custom.insert(label.clone(), Value::String(value.to_owned()));
        }
    }
    if !custom.is_empty() {
        body.insert("fields".into(), Value::Object(custom));
    }
    if !form.tags.is_empty() {
        let tags = form
            .tags
            .iter()
            .map(|tag| serde_json::to_value(tag).unwrap_or(Value::Null))
            .collect();
        body.insert("tags".into(), Value::Array(tags));
    }
    if let Some(source) = &form.source {
        body.insert("source".into(), Value::String(source.clone()));
    }
    if let Some(ip) = ip_address {
        body.insert("ip_address".into(), Value::String(ip.to_owned()));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use keap_relay::signup::{Signup, TagRef};
    use lambda_http::http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn encoding(content_type: &str) -> Option<Encoding> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        Encoding::of(&headers)
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        Fields::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    #[test]
    fn content_types() {
        assert_eq!(
            encoding("application/x-www-form-urlencoded"),
            Some(Encoding::UrlEncoded)
        );
        assert_eq!(encoding("application/json; charset=utf-8"), Some(Encoding::Json));
        assert_eq!(
            encoding("multipart/form-data; boundary=----x"),
            Some(Encoding::Multipart("----x".into()))
        );
        assert_eq!(encoding("multipart/form-data"), None);
        assert_eq!(encoding("text/plain"), None);
        assert_eq!(Encoding::of(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn the_three_encodings_give_the_same_fields() {
        let expected = fields(&[
            ("email", "ann@example.com"),
            ("first_name", "Ann Lee"),
            ("opt_in", "on"),
        ]);
        let url = Fields::decode(
            &Encoding::UrlEncoded,
            b"email=ann%40example.com&first_name=Ann+Lee&opt_in=on",
        )
        .await
        .unwrap();
        assert_eq!(url, expected);
        let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nann@example.com\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"first_name\"\r\n\r\nAnn Lee\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"opt_in\"\r\n\r\non\r\n--XyZ--\r\n";
        let decoded = Fields::decode(&Encoding::Multipart("XyZ".into()), multipart.as_bytes())
            .await
            .unwrap();
        assert_eq!(decoded, expected);
        let json = Fields::decode(
            &Encoding::Json,
            br#"{"email":"ann@example.com","first_name":"Ann Lee","opt_in":"on","nothing":null}"#,
        )
        .await
        .unwrap();
        assert_eq!(json, expected);
    }

    #[tokio::test]
    async fn files_and_malformed_bodies_are_refused_with_codes() {
        let file = "--b\r\nContent-Disposition: form-data; name=\"cv\"; filename=\"cv.pdf\"\r\n\
             Content-Type: application/pdf\r\n\r\n%PDF\r\n--b--\r\n";
        let error = Fields::decode(&Encoding::Multipart("b".into()), file.as_bytes())
            .await
            .unwrap_err();
        assert_eq!(error.code(), "file_not_accepted");
        let empty_file_input = "--b\r\nContent-Disposition: form-data; name=\"cv\"; filename=\"\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@example.com\r\n--b--\r\n";
        let decoded = Fields::decode(&Encoding::Multipart("b".into()), empty_file_input.as_bytes())
            .await
            .unwrap();
        assert_eq!(decoded.get("email"), Some("a@example.com"));
        for (encoding, body, code) in [
            (Encoding::Multipart("b".into()), &b"not multipart"[..], "invalid_form"),
            (Encoding::Json, &b"[1]"[..], "invalid_json"),
            (Encoding::Json, &b"{"[..], "invalid_json"),
            (Encoding::Json, &br#"{"email":["a@example.com"]}"#[..], "invalid_field"),
            (
                Encoding::Json,
                &br#"{"email":"a@example.com","family_name":false}"#[..],
                "invalid_field",
            ),
            (
                Encoding::Json,
                &br#"{"email":"a@example.com","utm_term":7}"#[..],
                "invalid_field",
            ),
            (Encoding::UrlEncoded, &b"email=\xff"[..], "invalid_form"),
            (
                Encoding::UrlEncoded,
                &b"email=a%40example.com&a%0Fb=1"[..],
                "invalid_form",
            ),
            (
                Encoding::Json,
                &br#"{"email":"a@example.com","a\"b":"1"}"#[..],
                "invalid_form",
            ),
        ] {
            let error = Fields::decode(&encoding, body).await.unwrap_err();
            assert_eq!(error.code(), code, "{body:?}");
        }
        let many = (0..=MAX_FIELDS)
            .map(|i| format!("f{i}=x"))
            .collect::<Vec<_>>()
            .join("&");
        let error = Fields::decode(&Encoding::UrlEncoded, many.as_bytes())
            .await
            .unwrap_err();
        assert_eq!(error.code(), "too_many_fields");
    }

    #[test]
    fn fields_map_onto_the_signup_body() {
        let form = FormSettings {
            tags: vec![TagRef::Name("Website".into()), TagRef::Id(7)],
            source: Some("the website form".into()),
            custom_fields: vec!["Plan".into(), "Team size".into()],
            ..FormSettings::default()
        };
        let posted = fields(&[
            ("email", " ann@example.com "),
            ("first_name", "Ann"),
            ("given_name", ""),
            ("last_name", "Lee"),
            ("family_name", "Li"),
            ("phone", "+1 555 0100"),
            ("utm_source", "newsletter"),
            ("utm_campaign", "spring"),
            ("opt_in", "on"),
            ("Plan", "pro"),
            ("fields[Team size]", "12"),
            ("fields[Secret]", "x"),
            ("tags", "Admin"),
            ("source", "spoofed"),
            ("ip_address", "10.0.0.1"),
            ("anything", "else"),
        ]);
        let body = signup_body(&posted, &form, Some("203.0.113.9")).unwrap();
        assert_eq!(
            Value::Object(body.clone()),
            json!({
                "email": "ann@example.com",
                "given_name": "Ann",
                "family_name": "Li",
                "phone": "+1 555 0100",
                "utm": {"source": "newsletter", "campaign": "spring"},
                "opt_in": true,
                "fields": {"Plan": "pro", "Team size": "12"},
                "tags": ["Website", 7],
                "source": "the website form",
                "ip_address": "203.0.113.9",
            })
        );
        // The same validation as a signed signup.
        let signup = Signup::from_object(&body).unwrap();
        assert_eq!(signup.email, "ann@example.com");
        assert_eq!(signup.tags, form.tags);
        assert!(signup.opt_in);
        let body = signup_body(&fields(&[("email", "a@example.com")]), &FormSettings::default(), None).unwrap();
        assert_eq!(Value::Object(body), json!({"email": "a@example.com"}));
        assert_eq!(
            signup_body(&fields(&[("opt_in", "perhaps")]), &form, None)
                .unwrap_err()
                .code(),
            "invalid_field"
        );
    }
}
