//! Keap's REST API (v1), the calls the signup and refresh paths need.
//!
//! Every call takes the [`Credential`] to use, so the caller decides what to do on a 401
//! (re-read the token store, retry once) and on 429/5xx (retry within a budget, or queue).
//! Errors never carry a credential: only statuses and Keap's own messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::pacing::{Paced, Pacer};
use super::retry_after;
use crate::config::Config;
use crate::token::Credential;

/// Keap's per-tag answer to an apply (v1 `POST /v1/contacts/{id}/tags`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagApplyStatus {
    /// The tag was newly applied.
    Success,
    /// The contact already had the tag.
    Duplicate,
    ContactNotFound,
    TagIdNotFound,
    Failure,
    NoPermission,
    /// A status this client does not know yet (kept, not fatal).
    #[serde(untagged)]
    Other(String),
}

impl TagApplyStatus {
    pub fn as_str(&self) -> &str {
        match self {
            TagApplyStatus::Success => "SUCCESS",
            TagApplyStatus::Duplicate => "DUPLICATE",
            TagApplyStatus::ContactNotFound => "CONTACT_NOT_FOUND",
            TagApplyStatus::TagIdNotFound => "TAG_ID_NOT_FOUND",
            TagApplyStatus::Failure => "FAILURE",
            TagApplyStatus::NoPermission => "NO_PERMISSION",
            TagApplyStatus::Other(other) => other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Keap's gateway refused the credential (HTTP 401).
    #[error("Keap refused the credential during {operation} (401)")]
    Unauthorized { operation: &'static str },
    /// HTTP 429; `retry_after` when Keap sent a usable `Retry-After` (at most
    /// [`super::MAX_RETRY_AFTER`]).
    #[error("Keap throttled {operation} (429)")]
    RateLimited {
        operation: &'static str,
        retry_after: Option<Duration>,
    },
    /// 5xx, a timeout or a connection failure (`status` is `None` when no answer came).
    #[error("Keap unavailable during {operation} (status {status:?}): {detail}")]
    Unavailable {
        operation: &'static str,
        status: Option<u16>,
        detail: String,
    },
    /// A 4xx other than 401/429: Keap refused the request itself. `message` is Keap's and safe to show.
    #[error("Keap refused {operation} ({status}): {message}")]
    Rejected {
        operation: &'static str,
        status: u16,
        message: String,
    },
    /// Keap answered something this client cannot read.
    #[error("unexpected answer from Keap to {operation}: {detail}")]
    Protocol { operation: &'static str, detail: String },
    /// Not sent: Keap's quota needs this process to wait first (see [`super::pacing`]).
    #[error("{operation} not sent: {paced}")]
    Paced { operation: &'static str, paced: Paced },
}

impl ApiError {
    /// 429 and 5xx/timeouts/connection errors: the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::RateLimited { .. } | ApiError::Unavailable { .. } | ApiError::Paced { .. }
        )
    }

    /// How long Keap asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. } => *retry_after,
            ApiError::Paced { paced, .. } => Some(paced.wait),
            _ => None,
        }
    }
}

/// What the signup path writes to a contact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactUpsert {
    pub email: String,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    /// When set, the address is made marketable (if its status allows) with this reason.
    pub opt_in_reason: Option<String>,
    pub phone: Option<String>,
    /// Written as `company_name` (v1 takes a company only by id; see docs/welcome-and-fields.md).
    pub company: Option<String>,
    pub job_title: Option<String>,
    pub website: Option<String>,
    pub lead_source_id: Option<i64>,
    /// The person's IP, as `origin.ip_address` (Keap's consent record).
    pub ip_address: Option<std::net::IpAddr>,
    /// `(custom field id, content)`.
    pub custom_fields: Vec<(i64, serde_json::Value)>,
}

/// A contact custom field (v1 `CustomFieldMetaData`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CustomFieldMeta {
    pub id: i64,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub field_type: String,
    /// Option labels (Dropdown, Radio, ListBox).
    #[serde(default, deserialize_with = "option_labels")]
    pub options: Vec<String>,
}

fn option_labels<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Option_ {
        #[serde(default)]
        label: Option<String>,
    }
    let options: Option<Vec<Option_>> = Option::deserialize(deserializer)?;
    Ok(options
        .unwrap_or_default()
        .into_iter()
        .filter_map(|o| o.label)
        .collect())
}

/// One campaign (v1) or automation (v2) that an achieved goal started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoalStart {
    /// v1 `campaign_id`, v2 `automation_id`.
    pub campaign_id: i64,
    pub goal_id: i64,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An email Keap lists as sent (v1 `EmailSentQueryResult`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SentEmail {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub sent_date: Option<String>,
}

/// How a goal is achieved (see `config::WelcomeGoal`).
pub use crate::config::WelcomeGoal as GoalRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpsertedContact {
    pub id: i64,
    /// 201 (new contact) rather than 200 (existing contact updated).
    pub created: bool,
}

/// A direct email through `POST /v1/emails/queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEmail {
    pub contact_ids: Vec<i64>,
    /// Keap user id of the sender (Keap requires one).
    pub user_id: i64,
    pub subject: String,
    pub html_body: String,
}

/// Client for Keap's REST API. Cheap to clone (reqwest's client is reference counted).
#[derive(Debug, Clone)]
pub struct KeapApi {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    /// Paces every call to Keap's quota and learns from every answer; none: unpaced.
    pacer: Option<Arc<Pacer>>,
}

#[derive(Serialize)]
struct EmailAddressBody<'a> {
    email: &'a str,
    field: &'static str,
}

#[derive(Serialize)]
struct UpsertBody<'a> {
    duplicate_option: &'static str,
    email_addresses: [EmailAddressBody<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    given_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    family_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opt_in_reason: Option<&'a str>,
    source_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_numbers: Option<[PhoneBody<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    website: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lead_source_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    custom_fields: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct PhoneBody<'a> {
    number: &'a str,
    field: &'static str,
}

#[derive(Deserialize)]
struct IdOnly {
    id: i64,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Vec<TagEntry>,
}

#[derive(Deserialize)]
struct TagEntry {
    id: i64,
    #[serde(default)]
    name: Option<String>,
}

impl KeapApi {
    /// `api_url` is the REST base (e.g. `https://api.infusionsoft.com/crm/rest`); `timeout`
    /// bounds every call.
    pub fn new(http: reqwest::Client, api_url: &str, timeout: Duration) -> Self {
        Self {
            http,
            base: api_url.trim_end_matches('/').to_owned(),
            timeout,
            pacer: None,
        }
    }

    /// Paced by a pacer of `config.pacing` (live calls unless the settings say otherwise),
    /// unless pacing is off.
    pub fn from_config(http: reqwest::Client, config: &Config) -> Self {
        let api = Self::new(http, &config.api_url, config.http_timeout);
        if config.pacing.enabled {
            api.with_pacer(Arc::new(Pacer::new(config.pacing.clone())))
        } else {
            api
        }
    }

    /// The same client with its calls paced by `pacer` (one per process and call class).
    pub fn with_pacer(mut self, pacer: Arc<Pacer>) -> Self {
        self.pacer = Some(pacer);
        self
    }

    /// The pacer, for quota reports.
    pub fn pacer(&self) -> Option<&Arc<Pacer>> {
        self.pacer.as_ref()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Creates the contact or updates the one with the same email (v1 `PUT /v1/contacts`,
    /// `duplicate_option: Email`). Only the given fields are written.
    pub async fn upsert_contact(
        &self,
        credential: &Credential,
        contact: &ContactUpsert,
    ) -> Result<UpsertedContact, ApiError> {
        const OP: &str = "contact upsert";
        let body = UpsertBody {
            duplicate_option: "Email",
            email_addresses: [EmailAddressBody {
                email: &contact.email,
                field: "EMAIL1",
            }],
            given_name: contact.given_name.as_deref(),
            family_name: contact.family_name.as_deref(),
            opt_in_reason: contact.opt_in_reason.as_deref(),
            source_type: "API",
            phone_numbers: contact.phone.as_deref().map(|number| {
                [PhoneBody {
                    number,
                    field: "PHONE1",
                }]
            }),
            company_name: contact.company.as_deref(),
            job_title: contact.job_title.as_deref(),
            website: contact.website.as_deref(),
            lead_source_id: contact.lead_source_id,
            origin: contact.ip_address.map(|ip| {
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                serde_json::json!({ "ip_address": ip.to_string(), "date": now })
            }),
            custom_fields: contact
                .custom_fields
                .iter()
                .map(|(id, content)| serde_json::json!({ "id": id, "content": content }))
                .collect(),
        };
        let request = self.http.put(self.url("/v1/contacts")).json(&body);
        let response = self.send(OP, credential, request).await?;
        let created = response.status() == reqwest::StatusCode::CREATED;
        let IdOnly { id } = read_json(OP, response).await?;
        Ok(UpsertedContact { id, created })
    }

    /// The id of the tag with exactly this name (v1 `GET /v1/tags?name=`), if there is one.
    pub async fn find_tag_by_name(&self, credential: &Credential, name: &str) -> Result<Option<i64>, ApiError> {
        const OP: &str = "tag lookup";
        let request = self.http.get(self.url("/v1/tags")).query(&[("name", name)]);
        let response = self.send(OP, credential, request).await?;
        let list: TagList = read_json(OP, response).await?;
        // Keap's name filter is not documented as exact: prefer an exact match, then one that
        // differs only in case.
        let exact = list.tags.iter().find(|tag| tag.name.as_deref() == Some(name));
        let folded = || {
            list.tags
                .iter()
                .find(|tag| tag.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        };
        Ok(exact.or_else(folded).map(|tag| tag.id))
    }

    /// Creates a tag (v1 `POST /v1/tags`) and returns its id.
    pub async fn create_tag(&self, credential: &Credential, name: &str) -> Result<i64, ApiError> {
        const OP: &str = "tag creation";
        let request = self
            .http
            .post(self.url("/v1/tags"))
            .json(&serde_json::json!({ "name": name }));
        let response = self.send(OP, credential, request).await?;
        let IdOnly { id } = read_json(OP, response).await?;
        Ok(id)
    }

    /// Applies tags to a contact (v1 `POST /v1/contacts/{id}/tags`); Keap answers per tag.
    /// A tag missing from Keap's answer is reported as [`TagApplyStatus::Failure`].
    pub async fn apply_tags(
        &self,
        credential: &Credential,
        contact_id: i64,
        tag_ids: &[i64],
    ) -> Result<BTreeMap<i64, TagApplyStatus>, ApiError> {
        const OP: &str = "tag application";
        if tag_ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let request = self
            .http
            .post(self.url(&format!("/v1/contacts/{contact_id}/tags")))
            .json(&serde_json::json!({ "tagIds": tag_ids }));
        let response = self.send(OP, credential, request).await?;
        let answer: BTreeMap<String, TagApplyStatus> = read_json(OP, response).await?;
        let mut statuses = BTreeMap::new();
        for (id, status) in answer {
            let id = id.trim().parse::<i64>().map_err(|_| ApiError::Protocol {
                operation: OP,
                detail: format!("tag id {id:?} in the answer is not a number"),
            })?;
            statuses.insert(id, status);
        }
        for id in tag_ids {
            statuses.entry(*id).or_insert(TagApplyStatus::Failure);
        }
        Ok(statuses)
    }

    /// Queues an email to contacts (v1 `POST /v1/emails/queue`, contents Base64-encoded).
    pub async fn queue_email(&self, credential: &Credential, email: &QueuedEmail) -> Result<(), ApiError> {
        const OP: &str = "welcome email";
        let body = serde_json::json!({
            "contacts": email.contact_ids,
            "user_id": email.user_id,
            "subject": email.subject,
            "html_content": base64::engine::general_purpose::STANDARD.encode(&email.html_body),
        });
        let request = self.http.post(self.url("/v1/emails/queue")).json(&body);
        self.send(OP, credential, request).await.map(drop)
    }

    /// The contact custom fields of the account (v1 `GET /v1/contacts/model`).
    pub async fn contact_model(&self, credential: &Credential) -> Result<Vec<CustomFieldMeta>, ApiError> {
        const OP: &str = "contact model";
        #[derive(Deserialize)]
        struct Model {
            #[serde(default)]
            custom_fields: Vec<CustomFieldMeta>,
        }
        let request = self.http.get(self.url("/v1/contacts/model"));
        let response = self.send(OP, credential, request).await?;
        let model: Model = read_json(OP, response).await?;
        Ok(model.custom_fields)
    }

    /// Creates a text custom field on contacts (v1 `POST /v1/contacts/model/customFields`).
    pub async fn create_custom_field(&self, credential: &Credential, label: &str) -> Result<CustomFieldMeta, ApiError> {
        const OP: &str = "custom field creation";
        let request = self
            .http
            .post(self.url("/v1/contacts/model/customFields"))
            .json(&serde_json::json!({ "label": label, "field_type": "Text" }));
        let response = self.send(OP, credential, request).await?;
        read_json(OP, response).await
    }

    /// The id of the lead source with this name (v2 `GET /v2/leadSources?filter=name==…`).
    pub async fn find_lead_source(&self, credential: &Credential, name: &str) -> Result<Option<i64>, ApiError> {
        const OP: &str = "lead source lookup";
        #[derive(Deserialize)]
        struct Entry {
            id: serde_json::Value,
            #[serde(default)]
            name: Option<String>,
        }
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            lead_sources: Vec<Entry>,
        }
        // A name holding the filter language's own characters cannot be put in a filter: then
        // the first page of all lead sources is read and matched here.
        let request = if name.contains([';', '*', '=', ',']) {
            self.http
                .get(self.url("/v2/leadSources"))
                .query(&[("page_size", "1000")])
        } else {
            let filter = format!("name=={name}");
            self.http
                .get(self.url("/v2/leadSources"))
                .query(&[("filter", filter.as_str())])
        };
        let response = self.send(OP, credential, request).await?;
        let list: List = read_json(OP, response).await?;
        let exact = list.lead_sources.iter().find(|l| l.name.as_deref() == Some(name));
        let folded = || {
            list.lead_sources
                .iter()
                .find(|l| l.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        };
        exact.or_else(folded).map(|l| v2_id(OP, &l.id)).transpose()
    }

    /// Creates a lead source (v2 `POST /v2/leadSources`) and returns its id.
    pub async fn create_lead_source(&self, credential: &Credential, name: &str) -> Result<i64, ApiError> {
        const OP: &str = "lead source creation";
        let request = self
            .http
            .post(self.url("/v2/leadSources"))
            .json(&serde_json::json!({ "name": name, "status": "ACTIVE" }));
        let response = self.send(OP, credential, request).await?;
        let created: serde_json::Value = read_json(OP, response).await?;
        v2_id(OP, created.get("id").unwrap_or(&serde_json::Value::Null))
    }

    /// Achieves an API goal for a contact: v1 `POST /v1/campaigns/goals/{integration}/{callName}`
    /// or v2 `POST /v2/automations/goals/achieve`. One entry per campaign (automation) that
    /// listens to the goal; none when no published one does.
    pub async fn achieve_goal(
        &self,
        credential: &Credential,
        goal: &GoalRef,
        contact_id: i64,
    ) -> Result<Vec<GoalStart>, ApiError> {
        const OP: &str = "welcome goal";
        #[derive(Deserialize)]
        struct Result_ {
            #[serde(default, alias = "automation_id")]
            campaign_id: Option<i64>,
            #[serde(default)]
            goal_id: Option<i64>,
            #[serde(default)]
            success: Option<bool>,
            #[serde(default)]
            message: Option<String>,
        }
        #[derive(Deserialize)]
        struct V2 {
            #[serde(default)]
            results: Vec<Result_>,
        }
        let results: Vec<Result_> = match goal {
            GoalRef::Named { integration, call_name } => {
                let path = format!(
                    "/v1/campaigns/goals/{}/{}",
                    url_segment(integration),
                    url_segment(call_name)
                );
                let request = self
                    .http
                    .post(self.url(&path))
                    .json(&serde_json::json!({ "contact_id": contact_id }));
                let response = self.send(OP, credential, request).await?;
                read_json(OP, response).await?
            }
            GoalRef::Automation { automation_id, goal_id } => {
                let body = serde_json::json!({
                    "contact_id": contact_id, "automation_id": automation_id, "goal_id": goal_id,
                });
                let request = self.http.post(self.url("/v2/automations/goals/achieve")).json(&body);
                let response = self.send(OP, credential, request).await?;
                read_json::<V2>(OP, response).await?.results
            }
        };
        Ok(results
            .into_iter()
            .map(|r| GoalStart {
                campaign_id: r.campaign_id.unwrap_or_default(),
                goal_id: r.goal_id.unwrap_or_default(),
                success: r.success.unwrap_or(false),
                message: r
                    .message
                    .map(|m| m.chars().filter(|c| !c.is_control()).take(300).collect()),
            })
            .collect())
    }

    /// Sends a Keap email template to a contact (v2 `POST /v2/emails/templates:send`).
    pub async fn send_template(
        &self,
        credential: &Credential,
        template_id: i64,
        user_id: i64,
        contact_id: i64,
    ) -> Result<(), ApiError> {
        const OP: &str = "welcome template";
        let body = serde_json::json!({
            "template_id": template_id.to_string(),
            "contact_ids": [contact_id.to_string()],
            "user_id": user_id.to_string(),
        });
        let request = self.http.post(self.url("/v2/emails/templates:send")).json(&body);
        self.send(OP, credential, request).await.map(drop)
    }

    /// Emails Keap lists as sent to a contact since `since` (v1 `GET /v1/emails`; Keap lists an
    /// email once it went out, not when it was queued). At most 100, which is plenty to find a
    /// welcome.
    pub async fn sent_emails(
        &self,
        credential: &Credential,
        contact_id: i64,
        since: std::time::SystemTime,
    ) -> Result<Vec<SentEmail>, ApiError> {
        const OP: &str = "sent email listing";
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            emails: Vec<SentEmail>,
        }
        let since = humantime::format_rfc3339_seconds(since).to_string();
        let contact = contact_id.to_string();
        let request = self.http.get(self.url("/v1/emails")).query(&[
            ("contact_id", contact.as_str()),
            ("since_sent_date", since.as_str()),
            ("limit", "100"),
        ]);
        let response = self.send(OP, credential, request).await?;
        Ok(read_json::<List>(OP, response).await?.emails)
    }

    /// Writes the contact's v2 `utm_parameters` (`PATCH /v2/contacts/{id}?update_mask=utm_parameters`).
    pub async fn set_utm(
        &self,
        credential: &Credential,
        contact_id: i64,
        keap_source_id: &str,
        utm: &[(&'static str, &str)],
    ) -> Result<(), ApiError> {
        const OP: &str = "utm parameters";
        let mut parameters = serde_json::Map::new();
        parameters.insert("keap_source_id".into(), keap_source_id.into());
        for (name, value) in utm {
            parameters.insert(format!("utm_{name}"), (*value).into());
        }
        let request = self
            .http
            .patch(self.url(&format!("/v2/contacts/{contact_id}")))
            .query(&[("update_mask", "utm_parameters")])
            .json(&serde_json::json!({ "utm_parameters": parameters }));
        self.send(OP, credential, request).await.map(drop)
    }

    /// One cheap authenticated call (`GET /v1/tags?limit=1`) that tells whether Keap accepts
    /// the credential; used by the scheduled function in api-key mode.
    pub async fn check_credential(&self, credential: &Credential) -> Result<(), ApiError> {
        const OP: &str = "credential check";
        let request = self.http.get(self.url("/v1/tags")).query(&[("limit", "1")]);
        self.send(OP, credential, request).await.map(drop)
    }

    /// Sends with the credential and timeout, and maps every non-2xx status to an [`ApiError`].
    async fn send(
        &self,
        operation: &'static str,
        credential: &Credential,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let request = credential.apply(
            request
                .timeout(self.timeout)
                .header(reqwest::header::ACCEPT, "application/json"),
        );
        if let Some(pacer) = &self.pacer {
            pacer
                .acquire()
                .await
                .map_err(|paced| ApiError::Paced { operation, paced })?;
        }
        let response = request.send().await.map_err(|e| transport_error(operation, e))?;
        if let Some(pacer) = &self.pacer {
            pacer.observe(response.status().as_u16(), response.headers());
        }
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let code = status.as_u16();
        Err(match code {
            401 => ApiError::Unauthorized { operation },
            429 => ApiError::RateLimited {
                operation,
                retry_after: retry_after(response.headers()),
            },
            // The client follows no redirect (it would carry the credential to another host):
            // not Keap's answer to the request, and not the contact's fault.
            300..=399 => ApiError::Protocol {
                operation,
                detail: format!("HTTP {code}: a redirect, not followed (check KEAP_API_URL)"),
            },
            500..=599 => ApiError::Unavailable {
                operation,
                status: Some(code),
                detail: error_message(response).await.unwrap_or_else(|| status.to_string()),
            },
            _ => ApiError::Rejected {
                operation,
                status: code,
                message: error_message(response).await.unwrap_or_else(|| status.to_string()),
            },
        })
    }
}

/// A v2 id: a string holding a number (or a number).
fn v2_id(operation: &'static str, value: &serde_json::Value) -> Result<i64, ApiError> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| ApiError::Protocol {
            operation,
            detail: format!("id {value} is not a number"),
        })
}

/// A path segment, percent-encoded.
fn url_segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn transport_error(operation: &'static str, error: reqwest::Error) -> ApiError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // Without the URL: the detail is for logs and must stay short; no header is ever in it.
    ApiError::Unavailable {
        operation,
        status: None,
        detail: format!("{what}: {}", error.without_url()),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    response: reqwest::Response,
) -> Result<T, ApiError> {
    let bytes = response.bytes().await.map_err(|e| transport_error(operation, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Protocol {
        operation,
        detail: e.to_string(),
    })
}

/// The human part of a Keap error body, whatever its shape: v1 `{"message"}`, v2
/// `{"code","message",..}`, or the gateway's `{"fault":{"faultstring"}}`. Capped in length.
async fn error_message(response: reqwest::Response) -> Option<String> {
    const MAX_CHARS: usize = 300;
    let bytes = response.bytes().await.ok()?;
    let message = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(value) => value
            .get("message")
            .or_else(|| value.pointer("/fault/faultstring"))
            .or_else(|| value.get("error_description"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)?,
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_owned(),
    };
    let message: String = message.chars().filter(|c| !c.is_control()).take(MAX_CHARS).collect();
    (!message.is_empty()).then_some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_statuses_read_known_and_unknown_values() {
        let answer: BTreeMap<String, TagApplyStatus> =
            serde_json::from_str(r#"{"1":"SUCCESS","2":"DUPLICATE","3":"TAG_ID_NOT_FOUND","4":"SOMETHING_NEW"}"#)
                .unwrap();
        assert_eq!(answer["1"], TagApplyStatus::Success);
        assert_eq!(answer["2"], TagApplyStatus::Duplicate);
        assert_eq!(answer["3"], TagApplyStatus::TagIdNotFound);
        assert_eq!(answer["4"], TagApplyStatus::Other("SOMETHING_NEW".into()));
        assert_eq!(answer["4"].as_str(), "SOMETHING_NEW");
    }

    #[test]
    fn retry_after_reads_seconds_and_ignores_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
