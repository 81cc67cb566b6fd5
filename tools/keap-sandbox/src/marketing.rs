//! The marketing side of the Keap account: contact custom fields (`/v1/contacts/model`), lead
//! sources, campaigns with API goals (v1 `campaigns/goals`, v2 `automations/goals/achieve`),
//! email templates, and the record of sent emails (`GET /v1/emails`).
//!
//! Sent emails become visible in the listing only `listing_delay` after they were sent, as
//! Keap's own listing shows an email once it went out, not when it was queued.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::crm::iso8601;

/// v1 `CustomFieldMetaData.field_type` values (Keap's enum).
pub(crate) const FIELD_TYPES: &[&str] = &[
    "Currency",
    "Date",
    "DateTime",
    "DayOfWeek",
    "Drilldown",
    "Email",
    "Month",
    "ListBox",
    "Name",
    "WholeNumber",
    "DecimalNumber",
    "Percent",
    "PhoneNumber",
    "Radio",
    "Dropdown",
    "SocialSecurityNumber",
    "State",
    "Text",
    "TextArea",
    "User",
    "UserListBox",
    "Website",
    "Year",
    "YesNo",
];

/// A contact custom field as the account defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomFieldDef {
    pub id: i64,
    pub label: String,
    pub field_type: String,
    /// Option labels (Dropdown, Radio, ListBox); empty for other types.
    #[serde(default)]
    pub options: Vec<String>,
}

impl CustomFieldDef {
    fn v1_json(&self) -> Value {
        let mut body = json!({
            "id": self.id,
            "label": self.label,
            "field_name": format!("_{}", self.label.replace(|c: char| !c.is_ascii_alphanumeric(), "")),
            "field_type": self.field_type,
            "record_type": "CONTACT",
        });
        if !self.options.is_empty()
            && let Some(map) = body.as_object_mut()
        {
            let options: Vec<Value> = self
                .options
                .iter()
                .enumerate()
                .map(|(index, label)| json!({"id": (index + 1).to_string(), "label": label}))
                .collect();
            map.insert("options".into(), Value::Array(options));
        }
        body
    }

    /// Keap's check of one value for this field; the message names the field.
    fn check(&self, content: &Value) -> Result<(), String> {
        let bad = |why: &str| {
            Err(format!(
                "Invalid value for custom field '{}' ({}): {why}",
                self.label, self.field_type
            ))
        };
        let text = content.as_str();
        match self.field_type.as_str() {
            "Dropdown" | "Radio" => match text {
                Some(choice) if self.options.iter().any(|o| o == choice) => Ok(()),
                _ => bad("must be one of its options"),
            },
            "ListBox" => match text {
                Some(list)
                    if list
                        .split(',')
                        .all(|part| self.options.iter().any(|o| o == part.trim())) =>
                {
                    Ok(())
                }
                _ => bad("must be a comma-separated list of its options"),
            },
            "WholeNumber" | "Year" => {
                let ok = content.as_i64().is_some() || text.is_some_and(|t| t.trim().parse::<i64>().is_ok());
                if ok { Ok(()) } else { bad("must be a whole number") }
            }
            "DecimalNumber" | "Currency" | "Percent" => {
                let ok = content.is_number() || text.is_some_and(|t| t.trim().parse::<f64>().is_ok_and(f64::is_finite));
                if ok { Ok(()) } else { bad("must be a number") }
            }
            "Date" => match text {
                Some(date) if is_date(date) => Ok(()),
                _ => bad("must be a date (YYYY-MM-DD)"),
            },
            "DateTime" => match text {
                Some(at) if humantime::parse_rfc3339_weak(at).is_ok() || humantime::parse_rfc3339(at).is_ok() => Ok(()),
                _ => bad("must be a date-time (RFC 3339)"),
            },
            "YesNo" => match content {
                Value::Bool(_) => Ok(()),
                Value::String(answer) if matches!(answer.as_str(), "Yes" | "No") => Ok(()),
                _ => bad("must be true or false"),
            },
            "Email" => match text {
                Some(address) if address.parse::<email_address::EmailAddress>().is_ok() => Ok(()),
                _ => bad("must be an email address"),
            },
            _ => match content {
                Value::String(text) if text.chars().count() <= 65_535 => Ok(()),
                Value::String(_) => bad("is too long"),
                _ => bad("must be a string"),
            },
        }
    }
}

fn is_date(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts.as_slice() else {
        return false;
    };
    let number = |part: &str, len: usize| {
        (part.len() == len && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u32>().ok())
            .flatten()
    };
    matches!(
        (number(year, 4), number(month, 2), number(day, 2)),
        (Some(_), Some(1..=12), Some(1..=31))
    )
}

/// A lead source (v2 `LeadSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadSourceDef {
    pub id: i64,
    pub name: String,
}

impl LeadSourceDef {
    fn v2_json(&self) -> Value {
        json!({"id": self.id.to_string(), "name": self.name, "status": "ACTIVE"})
    }
}

/// A published campaign that starts on an API goal. `automation_id`/`goal_id` are its ids in
/// v2 (the v1 answer calls the first `campaign_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignDef {
    pub campaign_id: i64,
    pub goal_id: i64,
    pub integration: String,
    pub call_name: String,
    /// The email the campaign's sequence sends when it starts (counted and listed like any
    /// other email); `None`: a sequence without an email.
    #[serde(default)]
    pub email_subject: Option<String>,
}

/// A Keap email template (v2 `emails/templates`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailTemplateDef {
    pub id: i64,
    pub subject: String,
}

/// One email sent to one contact.
#[derive(Debug, Clone)]
pub(crate) struct SentEmail {
    pub id: i64,
    pub contact_id: i64,
    pub subject: String,
    pub sent_to: String,
    pub sent_at: SystemTime,
}

impl SentEmail {
    fn v1_json(&self) -> Value {
        json!({
            "id": self.id,
            "contact_id": self.contact_id,
            "subject": self.subject,
            "sent_to_address": self.sent_to,
            "sent_from_address": "welcome@sandbox.example.com",
            "sent_date": iso8601(self.sent_at),
            "original_provider": "INFUSIONSOFT",
        })
    }
}

#[derive(Debug)]
pub(crate) struct Marketing {
    custom_fields: Vec<CustomFieldDef>,
    lead_sources: Vec<LeadSourceDef>,
    campaigns: Vec<CampaignDef>,
    templates: Vec<EmailTemplateDef>,
    sent: Vec<SentEmail>,
    /// Goal achievements per contact id (every one starts the campaign again).
    pub goals_achieved: BTreeMap<i64, u32>,
    next_field_id: i64,
    next_lead_source_id: i64,
    next_campaign_id: i64,
    next_template_id: i64,
    next_email_id: i64,
}

impl Default for Marketing {
    fn default() -> Self {
        // Own id ranges, so an id of one kind passed as another fails loudly.
        Self {
            custom_fields: Vec::new(),
            lead_sources: Vec::new(),
            campaigns: Vec::new(),
            templates: Vec::new(),
            sent: Vec::new(),
            goals_achieved: BTreeMap::new(),
            next_field_id: 11,
            next_lead_source_id: 501,
            next_campaign_id: 71,
            next_template_id: 301,
            next_email_id: 90_001,
        }
    }
}

impl Marketing {
    pub(crate) fn add_custom_field(
        &mut self,
        label: &str,
        field_type: &str,
        options: Vec<String>,
    ) -> Result<&CustomFieldDef, String> {
        if label.trim().is_empty() || label.chars().count() > 255 {
            return Err("label must be 1 to 255 characters".into());
        }
        if !FIELD_TYPES.contains(&field_type) {
            return Err(format!(
                "Invalid field_type {field_type:?}: must be one of {}",
                FIELD_TYPES.join(", ")
            ));
        }
        if self.custom_fields.iter().any(|f| f.label.eq_ignore_ascii_case(label)) {
            return Err(format!("A custom field labelled {label:?} already exists"));
        }
        let id = self.next_field_id;
        self.next_field_id += 1;
        self.custom_fields.push(CustomFieldDef {
            id,
            label: label.to_owned(),
            field_type: field_type.to_owned(),
            options,
        });
        Ok(&self.custom_fields[self.custom_fields.len() - 1])
    }

    pub(crate) fn remove_custom_field(&mut self, label: &str) -> bool {
        let before = self.custom_fields.len();
        self.custom_fields.retain(|f| f.label != label);
        before != self.custom_fields.len()
    }

    pub(crate) fn custom_field(&self, id: i64) -> Option<&CustomFieldDef> {
        self.custom_fields.iter().find(|f| f.id == id)
    }

    pub(crate) fn model_json(&self) -> Value {
        json!({
            "custom_fields": self.custom_fields.iter().map(CustomFieldDef::v1_json).collect::<Vec<_>>(),
            "optional_properties": ["custom_fields", "job_title", "lead_source_id", "origin", "website", "utm_parameters"],
        })
    }

    pub(crate) fn field_json(field: &CustomFieldDef) -> Value {
        field.v1_json()
    }

    /// Keap's checks of the marketing parts of a contact body: `custom_fields` (known ids,
    /// values of the field's type), `lead_source_id` / `leadsource_id` (an id),
    /// `origin.ip_address` (an IP address).
    pub(crate) fn check_contact(&self, body: &Map<String, Value>) -> Result<(), String> {
        match body.get("custom_fields") {
            None | Some(Value::Null) => {}
            Some(Value::Array(values)) => {
                for value in values {
                    let id = value
                        .get("id")
                        .and_then(|id| id.as_i64().or_else(|| id.as_str().and_then(|s| s.parse().ok())))
                        .ok_or("custom_fields entries need a numeric id")?;
                    let field = self
                        .custom_field(id)
                        .ok_or_else(|| format!("Custom field with id {id} not found"))?;
                    match value.get("content") {
                        None | Some(Value::Null) => {}
                        Some(content) => field.check(content)?,
                    }
                }
            }
            Some(_) => return Err("custom_fields must be an array".into()),
        }
        // Keap is not known to check that a lead source id exists: only its shape is checked.
        for name in ["lead_source_id", "leadsource_id"] {
            match body.get(name) {
                None | Some(Value::Null) => {}
                Some(id)
                    if id
                        .as_i64()
                        .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
                        .is_some() => {}
                Some(_) => return Err(format!("{name} must be a lead source id")),
            }
        }
        match body.get("origin") {
            None | Some(Value::Null) => {}
            Some(Value::Object(origin)) => match origin.get("ip_address") {
                Some(Value::String(ip)) if ip.parse::<std::net::IpAddr>().is_ok() => {}
                _ => return Err("origin.ip_address must be an IP address".into()),
            },
            Some(_) => return Err("origin must be an object".into()),
        }
        Ok(())
    }

    pub(crate) fn add_lead_source(&mut self, name: &str) -> &LeadSourceDef {
        let id = self.next_lead_source_id;
        self.next_lead_source_id += 1;
        self.lead_sources.push(LeadSourceDef {
            id,
            name: name.to_owned(),
        });
        &self.lead_sources[self.lead_sources.len() - 1]
    }

    /// `name==X` (a trailing `*`: case-insensitive prefix), as v2 filters match.
    pub(crate) fn lead_sources_json(&self, name: Option<&str>, limit: usize) -> Vec<Value> {
        self.lead_sources
            .iter()
            .filter(|l| match name {
                None => true,
                Some(pattern) => match pattern.strip_suffix('*') {
                    Some(prefix) => l.name.to_lowercase().starts_with(&prefix.to_lowercase()),
                    None => l.name == pattern,
                },
            })
            .take(limit)
            .map(LeadSourceDef::v2_json)
            .collect()
    }

    pub(crate) fn lead_source_json(source: &LeadSourceDef) -> Value {
        source.v2_json()
    }

    pub(crate) fn add_campaign(
        &mut self,
        integration: &str,
        call_name: &str,
        email_subject: Option<String>,
    ) -> &CampaignDef {
        let campaign_id = self.next_campaign_id;
        self.next_campaign_id += 1;
        self.campaigns.push(CampaignDef {
            campaign_id,
            goal_id: campaign_id * 10 + 1,
            integration: integration.to_owned(),
            call_name: call_name.to_owned(),
            email_subject,
        });
        &self.campaigns[self.campaigns.len() - 1]
    }

    /// The campaigns listening to a goal named by integration and call name (Keap matches
    /// them case-insensitively), or by automation and goal id.
    pub(crate) fn listeners(&self, goal: GoalRef<'_>) -> Vec<CampaignDef> {
        self.campaigns
            .iter()
            .filter(|c| match goal {
                GoalRef::Named { integration, call_name } => {
                    c.integration.eq_ignore_ascii_case(integration) && c.call_name.eq_ignore_ascii_case(call_name)
                }
                GoalRef::Ids { automation_id, goal_id } => c.campaign_id == automation_id && c.goal_id == goal_id,
            })
            .cloned()
            .collect()
    }

    pub(crate) fn add_template(&mut self, subject: &str) -> &EmailTemplateDef {
        let id = self.next_template_id;
        self.next_template_id += 1;
        self.templates.push(EmailTemplateDef {
            id,
            subject: subject.to_owned(),
        });
        &self.templates[self.templates.len() - 1]
    }

    pub(crate) fn template(&self, id: i64) -> Option<&EmailTemplateDef> {
        self.templates.iter().find(|t| t.id == id)
    }

    pub(crate) fn record_sent(&mut self, contact_id: i64, subject: &str, sent_to: &str) {
        let id = self.next_email_id;
        self.next_email_id += 1;
        self.sent.push(SentEmail {
            id,
            contact_id,
            subject: subject.to_owned(),
            sent_to: sent_to.to_owned(),
            sent_at: SystemTime::now(),
        });
    }

    /// `GET /v1/emails`: emails sent at least `delay` ago, newest last.
    pub(crate) fn sent_json(
        &self,
        contact_id: Option<i64>,
        since: Option<SystemTime>,
        delay: Duration,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<Value>) {
        let now = SystemTime::now();
        let matching: Vec<&SentEmail> = self
            .sent
            .iter()
            .filter(|e| e.sent_at + delay <= now)
            .filter(|e| contact_id.is_none_or(|id| e.contact_id == id))
            .filter(|e| since.is_none_or(|since| e.sent_at >= since))
            .collect();
        let count = matching.len();
        (
            count,
            matching
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(SentEmail::v1_json)
                .collect(),
        )
    }

    /// Emails sent to a contact, whatever the listing delay (for tests).
    pub(crate) fn subjects_sent_to(&self, contact_id: i64) -> Vec<String> {
        self.sent
            .iter()
            .filter(|e| e.contact_id == contact_id)
            .map(|e| e.subject.clone())
            .collect()
    }
}

/// How a goal is named in an achieve request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GoalRef<'a> {
    Named { integration: &'a str, call_name: &'a str },
    Ids { automation_id: i64, goal_id: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_against_the_field_type() {
        let mut marketing = Marketing::default();
        let plan = marketing
            .add_custom_field("Plan", "Dropdown", vec!["free".into(), "pro".into()])
            .unwrap()
            .clone();
        assert!(plan.check(&json!("pro")).is_ok());
        assert!(plan.check(&json!("gold")).unwrap_err().contains("'Plan'"));
        let seats = marketing
            .add_custom_field("Seats", "WholeNumber", vec![])
            .unwrap()
            .clone();
        assert!(seats.check(&json!(3)).is_ok());
        assert!(seats.check(&json!("3")).is_ok());
        assert!(seats.check(&json!("three")).is_err());
        let start = marketing.add_custom_field("Start", "Date", vec![]).unwrap().clone();
        assert!(start.check(&json!("2026-02-28")).is_ok());
        assert!(start.check(&json!("2026-13-01")).is_err());
        let vip = marketing.add_custom_field("VIP", "YesNo", vec![]).unwrap().clone();
        assert!(vip.check(&json!(true)).is_ok());
        assert!(vip.check(&json!("maybe")).is_err());
        assert!(marketing.add_custom_field("plan", "Text", vec![]).is_err());
        assert!(marketing.add_custom_field("Other", "Nonsense", vec![]).is_err());
    }
}
