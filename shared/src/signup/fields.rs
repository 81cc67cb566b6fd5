//! Contact details beyond name and email: custom fields by label (resolved through Keap's
//! contact model, values checked against the field's type), lead sources by name, UTM
//! parameters as custom fields, and the allow-lists of fields and tags a signed request may
//! set (docs/welcome-and-fields.md).

use std::sync::Arc;

use serde_json::Value;

use super::request::{FieldValue, Signup, TagRef};
use super::{Attempt, CallError, Repeat, SignupError, SignupService};
use crate::keap::api::{ApiError, CustomFieldMeta};

/// Keap's 400 for a custom field id it does not know (deleted or re-created since the model
/// was read).
pub(super) fn mentions_unknown_field(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    mentions_custom_field(&message)
        && ["not found", "does not exist", "unknown", "invalid custom field id"]
            .iter()
            .any(|sign| message.contains(sign))
}

/// Keap's 400 about a custom field (a value it refuses): the caller's to fix.
pub(super) fn mentions_custom_field(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("custom field") || message.contains("customfield")
}

fn invalid(code: &'static str, message: String) -> SignupError {
    SignupError::Invalid { code, message }
}

/// The value Keap takes for `field`, or why `value` does not fit it (naming the field).
pub(super) fn check_value(field: &CustomFieldMeta, label: &str, value: &FieldValue) -> Result<Value, SignupError> {
    let text = match value {
        FieldValue::Text(text) => text.clone(),
        FieldValue::Number(number) => number.to_string(),
        FieldValue::Bool(flag) => flag.to_string(),
    };
    let bad = |what: String| invalid("invalid_custom_field", format!("`fields.{label}` {what}"));
    let option = |choice: &str| {
        field
            .options
            .iter()
            .find(|o| o.as_str() == choice)
            .or_else(|| field.options.iter().find(|o| o.eq_ignore_ascii_case(choice)))
            .cloned()
    };
    let options_list = || field.options.join(", ");
    match field.field_type.as_str() {
        "Dropdown" | "Radio" => option(text.trim())
            .map(Value::String)
            .ok_or_else(|| bad(format!("must be one of: {}", options_list()))),
        "ListBox" => {
            let chosen: Option<Vec<String>> = text.split(',').map(|part| option(part.trim())).collect();
            chosen
                .map(|list| Value::String(list.join(",")))
                .ok_or_else(|| bad(format!("must be one or more of (comma-separated): {}", options_list())))
        }
        "WholeNumber" | "Year" => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| bad("must be a whole number".into())),
        "DecimalNumber" | "Currency" | "Percent" => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| bad("must be a number".into())),
        "Date" => {
            let date = text.trim();
            let valid = date.len() == 10 && humantime::parse_rfc3339(&format!("{date}T00:00:00Z")).is_ok();
            if valid {
                Ok(Value::String(date.to_owned()))
            } else {
                Err(bad("must be a date (YYYY-MM-DD)".into()))
            }
        }
        "DateTime" => humantime::parse_rfc3339(text.trim())
            .map(|_| Value::String(text.trim().to_owned()))
            .map_err(|_| bad("must be a date and time (RFC 3339, e.g. 2026-03-01T09:30:00Z)".into())),
        "YesNo" => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(bad("must be yes or no (true or false)".into())),
        },
        "Email" => text
            .trim()
            .parse::<email_address::EmailAddress>()
            .map(|_| Value::String(text.trim().to_owned()))
            .map_err(|_| bad("must be an email address".into())),
        _ => Ok(Value::String(text)),
    }
}

/// The field with this label: exact first, then ignoring case.
fn find<'a>(model: &'a [CustomFieldMeta], label: &str) -> Option<&'a CustomFieldMeta> {
    model
        .iter()
        .find(|f| f.label == label)
        .or_else(|| model.iter().find(|f| f.label.eq_ignore_ascii_case(label)))
}

impl SignupService {
    /// Refuses a signup that sets a field or asks for a tag off the deployment's allow-lists
    /// (`SIGNUP_ALLOWED_FIELDS`, `SIGNUP_ALLOWED_TAGS`).
    pub(super) fn check_allowed(&self, signup: &Signup) -> Result<(), SignupError> {
        let options = &self.settings.options;
        if let Some(allowed) = &options.allowed_fields {
            let mut set: Vec<String> = [
                ("given_name", signup.given_name.is_some()),
                ("family_name", signup.family_name.is_some()),
            ]
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| name.to_owned())
            .collect();
            set.extend(signup.details.names_set());
            let allows = |name: &str| {
                allowed.iter().any(|a| a == name)
                    || (name.starts_with("fields.") && allowed.iter().any(|a| a == "fields"))
            };
            if let Some(name) = set.iter().find(|name| !allows(name)) {
                return Err(invalid(
                    "field_not_allowed",
                    format!("`{name}` is not among the fields this deployment accepts (SIGNUP_ALLOWED_FIELDS)"),
                ));
            }
        }
        if let Some(allowed) = &options.allowed_tags {
            let allows = |tag: &TagRef| {
                allowed.iter().any(|a| match (tag, TagRef::parse(a)) {
                    (TagRef::Id(id), TagRef::Id(allowed)) => *id == allowed,
                    (TagRef::Name(name), TagRef::Name(allowed)) => name.eq_ignore_ascii_case(&allowed),
                    _ => false,
                })
            };
            if let Some(tag) = signup.tags.iter().find(|tag| !allows(tag)) {
                return Err(invalid(
                    "tag_not_allowed",
                    format!(
                        "tag `{}` is not among the tags this deployment accepts (SIGNUP_ALLOWED_TAGS)",
                        tag.label()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The contact's custom fields, cached for the process.
    async fn model(&self, attempt: &Attempt) -> Result<Arc<Vec<CustomFieldMeta>>, SignupError> {
        if let Some(model) = self.custom_fields.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(model);
        }
        let fields = self
            .call(attempt, Repeat::Idempotent, |credential| async move {
                self.api.contact_model(&credential).await
            })
            .await?;
        let model = Arc::new(fields);
        *self.custom_fields.lock().unwrap_or_else(|e| e.into_inner()) = Some(model.clone());
        Ok(model)
    }

    pub(super) fn forget_custom_fields(&self) {
        *self.custom_fields.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `(id, content)` for every custom field the signup sets: its `fields`, and its UTM
    /// parameters when they go to custom fields (`KEAP_UTM_FIELDS`).
    pub(super) async fn resolve_custom_fields(
        &self,
        attempt: &Attempt,
        signup: &Signup,
    ) -> Result<Vec<(i64, Value)>, SignupError> {
        let options = &self.settings.options;
        let mut wanted: Vec<(String, FieldValue)> = signup
            .details
            .fields
            .iter()
            .map(|(label, value)| (label.clone(), value.clone()))
            .collect();
        if let Some(utm) = &signup.details.utm
            && options.utm_v2_source_id.is_none()
        {
            if options.utm_fields.is_empty() {
                tracing::info!(
                    "UTM parameters given, but neither KEAP_UTM_V2_SOURCE_ID nor KEAP_UTM_FIELDS is set: not written"
                );
            }
            for (name, value) in utm.entries() {
                if let Some((_, label)) = options.utm_fields.iter().find(|(n, _)| n == name)
                    && !wanted.iter().any(|(l, _)| l.eq_ignore_ascii_case(label))
                {
                    wanted.push((label.clone(), FieldValue::Text(value.to_owned())));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut model = self.model(attempt).await?;
        let mut resolved = Vec::with_capacity(wanted.len());
        for (label, value) in &wanted {
            let field = match find(&model, label) {
                Some(field) => field.clone(),
                None if options.create_custom_fields => {
                    let field = self.create_field(attempt, label).await?;
                    model = self.model(attempt).await?;
                    field
                }
                None => {
                    return Err(invalid(
                        "unknown_custom_field",
                        format!("`fields.{label}`: Keap has no contact custom field with this label"),
                    ));
                }
            };
            resolved.push((field.id, check_value(&field, label, value)?));
        }
        Ok(resolved)
    }

    /// Creates a text field for `label` and adds it to the cached model. If Keap refuses
    /// (another process created it first), the model is read again and the field looked up.
    async fn create_field(&self, attempt: &Attempt, label: &str) -> Result<CustomFieldMeta, SignupError> {
        let created = self
            .call(attempt, Repeat::OnlyIfThrottled, |credential| async move {
                self.api.create_custom_field(&credential, label).await
            })
            .await;
        match created {
            Ok(field) => {
                tracing::info!(
                    label,
                    id = field.id,
                    "created a text custom field (KEAP_CREATE_CUSTOM_FIELDS)"
                );
                let mut cache = self.custom_fields.lock().unwrap_or_else(|e| e.into_inner());
                let mut fields: Vec<CustomFieldMeta> = cache.as_deref().cloned().unwrap_or_default();
                fields.push(field.clone());
                *cache = Some(Arc::new(fields));
                Ok(field)
            }
            Err(CallError::Api(ApiError::Rejected { message, .. })) => {
                self.forget_custom_fields();
                let model = self.model(attempt).await?;
                find(&model, label).cloned().ok_or_else(|| {
                    invalid(
                        "unknown_custom_field",
                        format!("`fields.{label}`: Keap refused to create this custom field: {message}"),
                    )
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// A lead source id: given, cached, looked up by name, or created (`KEAP_CREATE_LEAD_SOURCES`).
    pub(super) async fn resolve_lead_source(&self, attempt: &Attempt, source: &TagRef) -> Result<i64, SignupError> {
        let name = match source {
            TagRef::Id(id) => return Ok(*id),
            TagRef::Name(name) => name,
        };
        if let Some(id) = self.lead_source_ids.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(*id);
        }
        let found = self
            .call(attempt, Repeat::Idempotent, |credential| async move {
                self.api.find_lead_source(&credential, name).await
            })
            .await?;
        let id = match found {
            Some(id) => id,
            None if self.settings.options.create_lead_sources => self
                .call(attempt, Repeat::OnlyIfThrottled, |credential| async move {
                    self.api.create_lead_source(&credential, name).await
                })
                .await
                .map_err(|error| match error {
                    CallError::Api(ApiError::Rejected { message, .. }) => invalid(
                        "unknown_lead_source",
                        format!("`lead_source`: Keap refused to create {name:?}: {message}"),
                    ),
                    other => other.into(),
                })?,
            None => {
                return Err(invalid(
                    "unknown_lead_source",
                    format!("`lead_source`: Keap has no lead source named {name:?}"),
                ));
            }
        };
        self.lead_source_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(field_type: &str, options: &[&str]) -> CustomFieldMeta {
        CustomFieldMeta {
            id: 1,
            label: "F".into(),
            field_type: field_type.into(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    fn text(value: &str) -> FieldValue {
        FieldValue::Text(value.into())
    }

    #[test]
    fn values_are_converted_to_what_the_field_takes_or_refused_naming_it() {
        let plan = field("Dropdown", &["Free", "Pro"]);
        assert_eq!(check_value(&plan, "Plan", &text("pro")).unwrap(), "Pro");
        let error = check_value(&plan, "Plan", &text("Gold")).unwrap_err();
        assert_eq!(error.code(), "invalid_custom_field");
        assert!(error.to_string().contains("`fields.Plan`") && error.to_string().contains("Free, Pro"));
        let seats = field("WholeNumber", &[]);
        assert_eq!(check_value(&seats, "Seats", &FieldValue::Number(3.into())).unwrap(), 3);
        assert_eq!(check_value(&seats, "Seats", &text(" 12 ")).unwrap(), 12);
        assert!(check_value(&seats, "Seats", &text("1.5")).is_err());
        let price = field("Currency", &[]);
        assert_eq!(check_value(&price, "Price", &text("9.5")).unwrap(), 9.5);
        assert!(check_value(&price, "Price", &text("NaN")).is_err());
        let date = field("Date", &[]);
        assert_eq!(check_value(&date, "Start", &text("2026-02-28")).unwrap(), "2026-02-28");
        for bad in ["2026-02-30", "28/02/2026", "2026-2-28", "tomorrow"] {
            assert!(check_value(&date, "Start", &text(bad)).is_err(), "{bad}");
        }
        let yes = field("YesNo", &[]);
        assert_eq!(check_value(&yes, "VIP", &FieldValue::Bool(true)).unwrap(), true);
        assert_eq!(check_value(&yes, "VIP", &text("No")).unwrap(), false);
        assert!(check_value(&yes, "VIP", &text("maybe")).is_err());
        let list = field("ListBox", &["a", "b", "c"]);
        assert_eq!(check_value(&list, "L", &text("a, C")).unwrap(), "a,c");
        assert!(check_value(&list, "L", &text("a,d")).is_err());
        let email = field("Email", &[]);
        assert!(check_value(&email, "E", &text("not-an-address")).is_err());
        let plain = field("Text", &[]);
        assert_eq!(check_value(&plain, "T", &FieldValue::Number(7.into())).unwrap(), "7");
    }

    #[test]
    fn keap_messages_about_unknown_fields_are_recognised() {
        assert!(mentions_unknown_field("Custom field with id 12 not found"));
        assert!(mentions_unknown_field("Invalid custom field id: 12"));
        assert!(!mentions_unknown_field(
            "Invalid value for custom field 'Plan' (Dropdown)"
        ));
        assert!(mentions_custom_field(
            "Invalid value for custom field 'Plan' (Dropdown)"
        ));
        assert!(!mentions_custom_field("Invalid email address"));
    }
}
