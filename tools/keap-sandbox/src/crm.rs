//! Contacts, tags and sent emails: the Keap account's data, shared by REST v1 and v2.
//! Validation messages are the sandbox's own; status codes and shapes follow Keap.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// What a test can see of a stored contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    pub id: i64,
    /// The contact's primary (first) email address.
    pub email: String,
    /// Empty when never set.
    pub given_name: String,
    pub family_name: String,
    /// In the order they were applied.
    pub tag_ids: Vec<i64>,
    /// Emails queued or sent to this contact through the API.
    pub emails_received: u32,
    /// The opt-in reason accepted for the primary address, if any.
    pub opt_in_reason: Option<String>,
    /// v1 name of the primary address's status: `NonMarketable`, `SingleOptIn` or
    /// `ListUnsubscribe`.
    pub email_status: String,
    /// Phone numbers, in slot order.
    #[serde(default)]
    pub phones: Vec<String>,
    /// Every other field the client wrote (`custom_fields`, `lead_source_id`, `origin`,
    /// `job_title`, `website`, `utm_parameters`, …), as last written.
    #[serde(default)]
    pub extra: Map<String, Value>,
    /// Times an API goal was achieved for this contact (each one starts its campaigns).
    #[serde(default)]
    pub goals_achieved: u32,
    /// Subjects of the emails sent to this contact, oldest first (listed or not yet).
    #[serde(default)]
    pub emails_sent: Vec<String>,
}

impl ContactView {
    /// The custom field values last written, as `(field id, content)`, by id.
    pub fn custom_field_values(&self) -> Vec<(i64, Value)> {
        let mut values: Vec<(i64, Value)> = self
            .extra
            .get("custom_fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| Some((f.get("id")?.as_i64()?, f.get("content")?.clone())))
            .collect();
        values.sort_by_key(|(id, _)| *id);
        values
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DuplicateOption {
    Email,
    EmailAndName,
    EmailAndNameAndCompany,
}

impl DuplicateOption {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        match text {
            "Email" => Ok(Self::Email),
            "EmailAndName" => Ok(Self::EmailAndName),
            "EmailAndNameAndCompany" => Ok(Self::EmailAndNameAndCompany),
            other => Err(format!(
                "Invalid duplicate_option {other:?}: must be one of Email, EmailAndName, EmailAndNameAndCompany"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmailStatus {
    NonMarketable,
    SingleOptIn,
    /// The person unsubscribed: no opt-in through the API changes that.
    Unsubscribed,
}

impl EmailStatus {
    fn v1_name(self) -> &'static str {
        match self {
            EmailStatus::NonMarketable => "NonMarketable",
            EmailStatus::SingleOptIn => "SingleOptIn",
            EmailStatus::Unsubscribed => "ListUnsubscribe",
        }
    }

    fn v2_name(self) -> &'static str {
        match self {
            EmailStatus::NonMarketable => "NON_MARKETABLE",
            EmailStatus::SingleOptIn => "SINGLE_OPT_IN",
            EmailStatus::Unsubscribed => "LIST_UNSUBSCRIBE",
        }
    }
}

#[derive(Debug, Clone)]
struct StoredEmail {
    email: String,
    /// 1..=3 for EMAIL1..EMAIL3.
    slot: u8,
    opt_in_reason: Option<String>,
    status: EmailStatus,
}

#[derive(Debug, Clone)]
struct StoredPhone {
    number: String,
    /// 1..=5 for PHONE1..PHONE5.
    slot: u8,
    kind: Option<String>,
    extension: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub id: i64,
    given_name: Option<String>,
    family_name: Option<String>,
    emails: Vec<StoredEmail>,
    phones: Vec<StoredPhone>,
    source_type: Option<String>,
    /// Other fields given by the client, echoed back as given.
    other: Map<String, Value>,
    tag_ids: Vec<i64>,
    emails_received: u32,
    created: SystemTime,
    updated: SystemTime,
}

impl Contact {
    fn primary_email(&self) -> Option<&StoredEmail> {
        self.emails.iter().min_by_key(|e| e.slot)
    }

    fn has_email(&self, email: &str) -> bool {
        self.emails.iter().any(|e| e.email.eq_ignore_ascii_case(email))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Tag {
    pub id: i64,
    name: String,
    description: Option<String>,
    category_id: Option<String>,
    created: SystemTime,
}

/// A validated create/update request, the same for v1 and v2. `None` = not given.
#[derive(Debug, Default)]
pub(crate) struct ContactInput {
    given_name: Option<String>,
    family_name: Option<String>,
    emails: Option<Vec<StoredEmail>>,
    phones: Option<Vec<StoredPhone>>,
    /// Whether `addresses` (a v2 alternative to email/phone) is non-empty.
    has_address: bool,
    source_type: Option<String>,
    other: Map<String, Value>,
}

impl ContactInput {
    /// The first email address given, which duplicate checks match on.
    fn match_email(&self) -> Option<&str> {
        self.emails
            .as_ref()?
            .iter()
            .min_by_key(|e| e.slot)
            .map(|e| e.email.as_str())
    }
}

/// Outcome of applying one tag to one contact, with Keap's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApplyOutcome {
    Success,
    Duplicate,
    ContactNotFound,
    TagNotFound,
}

impl ApplyOutcome {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ApplyOutcome::Success => "SUCCESS",
            ApplyOutcome::Duplicate => "DUPLICATE",
            ApplyOutcome::ContactNotFound => "CONTACT_NOT_FOUND",
            ApplyOutcome::TagNotFound => "TAG_ID_NOT_FOUND",
        }
    }
}

const V1_SOURCE_TYPES: &[&str] = &[
    "APPOINTMENT",
    "FORMAPIHOSTED",
    "FORMAPIINTERNAL",
    "WEBFORM",
    "INTERNALFORM",
    "LANDINGPAGE",
    "IMPORT",
    "MANUAL",
    "API",
    "OTHER",
    "UNKNOWN",
];

const V2_SOURCE_TYPES: &[&str] = &[
    "SOURCE_TYPE_UNSPECIFIED",
    "API",
    "APPOINTMENT",
    "FORM_API_HOSTED",
    "FORM_API_INTERNAL",
    "IMPORT",
    "INTERNAL_FORM",
    "LANDING_PAGE",
    "MANUAL",
    "OTHER",
    "UNKNOWN",
    "WEBFORM",
];

/// Fields the server owns; a client sending them is ignored, as Keap does.
const READ_ONLY: &[&str] = &[
    "id",
    "tag_ids",
    "date_created",
    "last_updated",
    "create_time",
    "update_time",
    "email_status",
    "email_opted_in",
    "duplicate_option",
    "links",
    "score_value",
    "created_by",
    "last_updated_by",
    "account_id",
    "groups",
];

/// Other v2 request fields that the v2 `Contact` schema also has (echoed back in v2).
const V2_ECHOED: &[&str] = &[
    "addresses",
    "company",
    "prefix",
    "suffix",
    "website",
    "anniversary_date",
    "birth_date",
    "contact_type",
    "custom_fields",
    "fax_numbers",
    "job_title",
    "leadsource_id",
    "middle_name",
    "owner_id",
    "preferred_locale",
    "preferred_name",
    "referral_code",
    "social_accounts",
    "spouse_name",
    "time_zone",
    "assistant_name",
    "assistant_phone",
    "billing_information",
];

fn optional_string(body: &Map<String, Value>, name: &str, max_len: usize) -> Result<Option<String>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() > max_len => {
            Err(format!("{name} must be at most {max_len} characters"))
        }
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

fn slot(field: Option<&str>, prefix: &str, max: u8, unspecified: &str, list: &str) -> Result<Option<u8>, String> {
    let Some(field) = field else { return Ok(None) };
    if field == unspecified {
        return Ok(None);
    }
    field
        .strip_prefix(prefix)
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|n| (1..=max).contains(n) && field.len() == prefix.len() + 1)
        .map(Some)
        .ok_or_else(|| format!("Invalid {list} field {field:?}: must be one of {prefix}1..{prefix}{max}"))
}

/// Give every entry without a slot the next free one; reject a slot given twice.
fn assign_slots(slots: Vec<Option<u8>>, max: u8, list: &str) -> Result<Vec<u8>, String> {
    let mut taken: Vec<u8> = slots.iter().flatten().copied().collect();
    taken.sort_unstable();
    if taken.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("{list}: the same field is given twice"));
    }
    slots
        .into_iter()
        .map(|given| match given {
            Some(slot) => Ok(slot),
            None => {
                let free = (1..=max)
                    .find(|s| !taken.contains(s))
                    .ok_or_else(|| format!("{list}: at most {max} entries"))?;
                taken.push(free);
                Ok(free)
            }
        })
        .collect()
}

fn entries<'a>(body: &'a Map<String, Value>, name: &str) -> Result<Option<Vec<&'a Map<String, Value>>>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_object()
                    .ok_or_else(|| format!("{name} entries must be objects"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("{name} must be an array")),
    }
}

fn parse_emails(
    body: &Map<String, Value>,
    version: ApiVersion,
    v1_reason: Option<&str>,
) -> Result<Option<Vec<StoredEmail>>, String> {
    let Some(items) = entries(body, "email_addresses")? else {
        return Ok(None);
    };
    let mut parsed = Vec::with_capacity(items.len());
    let mut slots = Vec::with_capacity(items.len());
    for item in items {
        let email = optional_string(item, "email", 100)?.ok_or("email_addresses entries need an email")?;
        let email = email.trim().to_owned();
        if email.parse::<email_address::EmailAddress>().is_err() {
            return Err(format!("Invalid email address {email:?}"));
        }
        let field = optional_string(item, "field", 32)?;
        if version == ApiVersion::V1 && field.is_none() {
            return Err("email_addresses entries need a field (EMAIL1, EMAIL2 or EMAIL3)".to_owned());
        }
        slots.push(slot(
            field.as_deref(),
            "EMAIL",
            3,
            "EMAIL_FIELD_UNSPECIFIED",
            "email_addresses",
        )?);
        let reason = match version {
            ApiVersion::V1 => v1_reason.map(str::to_owned),
            ApiVersion::V2 => optional_string(item, "opt_in_reason", 4096)?,
        };
        parsed.push((email, reason));
    }
    let slots = assign_slots(slots, 3, "email_addresses")?;
    Ok(Some(
        parsed
            .into_iter()
            .zip(slots)
            .map(|((email, opt_in_reason), slot)| StoredEmail {
                email,
                slot,
                opt_in_reason,
                status: EmailStatus::NonMarketable,
            })
            .collect(),
    ))
}

fn parse_phones(body: &Map<String, Value>, version: ApiVersion) -> Result<Option<Vec<StoredPhone>>, String> {
    let Some(items) = entries(body, "phone_numbers")? else {
        return Ok(None);
    };
    let mut parsed = Vec::with_capacity(items.len());
    let mut slots = Vec::with_capacity(items.len());
    for item in items {
        let number = optional_string(item, "number", 40)?
            .filter(|n| !n.trim().is_empty())
            .ok_or("phone_numbers entries need a number")?;
        let field = optional_string(item, "field", 32)?;
        if version == ApiVersion::V1 && field.is_none() {
            return Err("phone_numbers entries need a field (PHONE1..PHONE5)".to_owned());
        }
        slots.push(slot(
            field.as_deref(),
            "PHONE",
            5,
            "PHONE_NUMBER_FIELD_UNSPECIFIED",
            "phone_numbers",
        )?);
        parsed.push((
            number,
            optional_string(item, "type", 255)?,
            optional_string(item, "extension", 255)?,
        ));
    }
    let slots = assign_slots(slots, 5, "phone_numbers")?;
    Ok(Some(
        parsed
            .into_iter()
            .zip(slots)
            .map(|((number, kind, extension), slot)| StoredPhone {
                number,
                slot,
                kind,
                extension,
            })
            .collect(),
    ))
}

/// Validate a contact body. `require_contact_point`: creating needs an email or phone
/// (v2 also accepts an address).
pub(crate) fn parse_contact(body: &Value, version: ApiVersion) -> Result<ContactInput, String> {
    let body = body.as_object().ok_or("The request body must be a JSON object")?;
    let v1_reason = match version {
        ApiVersion::V1 => optional_string(body, "opt_in_reason", 4096)?,
        ApiVersion::V2 => None,
    };
    let source_type = optional_string(body, "source_type", 64)?;
    if let Some(source_type) = &source_type {
        let allowed = match version {
            ApiVersion::V1 => V1_SOURCE_TYPES,
            ApiVersion::V2 => V2_SOURCE_TYPES,
        };
        if !allowed.contains(&source_type.as_str()) {
            return Err(format!(
                "Invalid source_type {source_type:?}: must be one of {}",
                allowed.join(", ")
            ));
        }
    }
    let has_address = match body.get("addresses") {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => return Err("addresses must be an array".to_owned()),
    };
    let handled = [
        "given_name",
        "family_name",
        "email_addresses",
        "phone_numbers",
        "opt_in_reason",
        "source_type",
    ];
    let other = body
        .iter()
        .filter(|(name, _)| !handled.contains(&name.as_str()) && !READ_ONLY.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Ok(ContactInput {
        given_name: optional_string(body, "given_name", 40)?,
        family_name: optional_string(body, "family_name", 40)?,
        emails: parse_emails(body, version, v1_reason.as_deref())?,
        phones: parse_phones(body, version)?,
        has_address,
        source_type,
        other,
    })
}

/// RFC 3339 UTC with milliseconds, without a date library.
pub(crate) fn iso8601(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[derive(Debug)]
pub(crate) struct Crm {
    contacts: Vec<Contact>,
    tags: Vec<Tag>,
    next_contact_id: i64,
    next_tag_id: i64,
}

impl Default for Crm {
    fn default() -> Self {
        // Distinct ranges make a contact id passed as a tag id (or back) fail loudly.
        Self {
            contacts: Vec::new(),
            tags: Vec::new(),
            next_contact_id: 1001,
            next_tag_id: 101,
        }
    }
}

/// Apply the opt-in carried by newly given addresses; unsubscribed stays unsubscribed, and
/// an address given again without a reason keeps what it had.
fn carry_statuses(old: &[StoredEmail], new: &mut [StoredEmail]) {
    for email in new.iter_mut() {
        let previous = old.iter().find(|e| e.email.eq_ignore_ascii_case(&email.email));
        let reason = email.opt_in_reason.take().filter(|r| !r.trim().is_empty());
        (email.status, email.opt_in_reason) = match (previous, reason) {
            (Some(p), _) if p.status == EmailStatus::Unsubscribed => (EmailStatus::Unsubscribed, None),
            (_, Some(reason)) => (EmailStatus::SingleOptIn, Some(reason)),
            (Some(p), None) => (p.status, p.opt_in_reason.clone()),
            (None, None) => (EmailStatus::NonMarketable, None),
        };
    }
}

impl Crm {
    pub(crate) fn contact(&self, id: i64) -> Option<&Contact> {
        self.contacts.iter().find(|c| c.id == id)
    }

    fn contact_index_by_email(&self, email: &str) -> Option<usize> {
        self.contacts.iter().position(|c| c.has_email(email))
    }

    pub(crate) fn contact_by_email(&self, email: &str) -> Option<ContactView> {
        let contact = &self.contacts[self.contact_index_by_email(email)?];
        let primary = contact.primary_email();
        Some(ContactView {
            id: contact.id,
            email: primary.map(|e| e.email.clone()).unwrap_or_default(),
            given_name: contact.given_name.clone().unwrap_or_default(),
            family_name: contact.family_name.clone().unwrap_or_default(),
            tag_ids: contact.tag_ids.clone(),
            emails_received: contact.emails_received,
            opt_in_reason: primary.and_then(|e| e.opt_in_reason.clone()),
            email_status: primary
                .map_or(EmailStatus::NonMarketable, |e| e.status)
                .v1_name()
                .to_owned(),
            phones: contact.phones.iter().map(|p| p.number.clone()).collect(),
            extra: contact.other.clone(),
            goals_achieved: 0,
            emails_sent: Vec::new(),
        })
    }

    /// Writes fields the sandbox keeps as given (a v2 PATCH of `utm_parameters`, say).
    pub(crate) fn set_fields(&mut self, id: i64, fields: Map<String, Value>) -> bool {
        let Some(contact) = self.contacts.iter_mut().find(|c| c.id == id) else {
            return false;
        };
        contact.other.extend(fields);
        contact.updated = SystemTime::now();
        true
    }

    /// The primary email address of a contact.
    pub(crate) fn address(&self, id: i64) -> Option<String> {
        self.contact(id)?.primary_email().map(|e| e.email.clone())
    }

    /// The person unsubscribed (in Keap's UI, say): every address of theirs.
    pub(crate) fn unsubscribe(&mut self, email: &str) -> bool {
        let mut found = false;
        for contact in &mut self.contacts {
            for stored in &mut contact.emails {
                if stored.email.eq_ignore_ascii_case(email) {
                    stored.status = EmailStatus::Unsubscribed;
                    stored.opt_in_reason = None;
                    found = true;
                }
            }
        }
        found
    }

    fn find_duplicate(&self, input: &ContactInput, option: DuplicateOption) -> Option<usize> {
        let email = input.match_email()?;
        let same = |a: &Option<String>, b: &Option<String>| {
            a.as_deref()
                .unwrap_or("")
                .eq_ignore_ascii_case(b.as_deref().unwrap_or(""))
        };
        self.contacts.iter().position(|c| {
            c.has_email(email)
                && match option {
                    DuplicateOption::Email => true,
                    DuplicateOption::EmailAndName => {
                        same(&c.given_name, &input.given_name) && same(&c.family_name, &input.family_name)
                    }
                    DuplicateOption::EmailAndNameAndCompany => {
                        same(&c.given_name, &input.given_name)
                            && same(&c.family_name, &input.family_name)
                            && c.other.get("company") == input.other.get("company")
                    }
                }
        })
    }

    /// Create, or with a duplicate option update the first match. `(created, id)`.
    /// A v1 update merges lists per field slot; a v2 update replaces given lists (the
    /// v2 spec: "Any item not listed here will be removed").
    pub(crate) fn upsert(
        &mut self,
        input: ContactInput,
        duplicate: Option<DuplicateOption>,
        version: ApiVersion,
    ) -> Result<(bool, i64), String> {
        let existing = duplicate.and_then(|option| self.find_duplicate(&input, option));
        match existing {
            Some(index) => {
                let contact = &mut self.contacts[index];
                update(contact, input, version);
                Ok((false, contact.id))
            }
            None => self.create(input).map(|id| (true, id)),
        }
    }

    pub(crate) fn create(&mut self, input: ContactInput) -> Result<i64, String> {
        let has_email = input.emails.as_ref().is_some_and(|e| !e.is_empty());
        let has_phone = input.phones.as_ref().is_some_and(|p| !p.is_empty());
        if !has_email && !has_phone && !input.has_address {
            return Err("A contact needs at least one email address or phone number".to_owned());
        }
        let now = SystemTime::now();
        let id = self.next_contact_id;
        self.next_contact_id += 1;
        let mut contact = Contact {
            id,
            given_name: None,
            family_name: None,
            emails: Vec::new(),
            phones: Vec::new(),
            source_type: None,
            other: Map::new(),
            tag_ids: Vec::new(),
            emails_received: 0,
            created: now,
            updated: now,
        };
        update(&mut contact, input, ApiVersion::V2);
        self.contacts.push(contact);
        Ok(id)
    }

    pub(crate) fn tag(&self, id: i64) -> Option<&Tag> {
        self.tags.iter().find(|t| t.id == id)
    }

    pub(crate) fn tag_by_name(&self, name: &str) -> Option<i64> {
        self.tags.iter().find(|t| t.name == name).map(|t| t.id)
    }

    /// Tags named exactly `name` (Keap allows several tags with one name).
    pub(crate) fn tags_named<'a>(&'a self, name: Option<&'a str>) -> impl Iterator<Item = &'a Tag> + 'a {
        self.tags.iter().filter(move |t| name.is_none_or(|n| t.name == n))
    }

    pub(crate) fn tags(&self) -> &[Tag] {
        &self.tags
    }

    pub(crate) fn create_tag(
        &mut self,
        name: String,
        description: Option<String>,
        category_id: Option<String>,
    ) -> &Tag {
        let id = self.next_tag_id;
        self.next_tag_id += 1;
        self.tags.push(Tag {
            id,
            name,
            description,
            category_id,
            created: SystemTime::now(),
        });
        &self.tags[self.tags.len() - 1]
    }

    pub(crate) fn apply_tag(&mut self, contact_id: i64, tag_id: i64) -> ApplyOutcome {
        if self.tag(tag_id).is_none() {
            return ApplyOutcome::TagNotFound;
        }
        let Some(contact) = self.contacts.iter_mut().find(|c| c.id == contact_id) else {
            return ApplyOutcome::ContactNotFound;
        };
        if contact.tag_ids.contains(&tag_id) {
            return ApplyOutcome::Duplicate;
        }
        contact.tag_ids.push(tag_id);
        contact.updated = SystemTime::now();
        ApplyOutcome::Success
    }

    /// Count one email for each recipient; all must exist. Err: the first unknown id.
    pub(crate) fn deliver_email(&mut self, contact_ids: &[i64]) -> Result<(), i64> {
        if let Some(unknown) = contact_ids.iter().find(|id| self.contact(**id).is_none()) {
            return Err(*unknown);
        }
        for contact in &mut self.contacts {
            let copies = contact_ids.iter().filter(|id| **id == contact.id).count();
            contact.emails_received += u32::try_from(copies).unwrap_or(u32::MAX);
        }
        Ok(())
    }

    pub(crate) fn contacts_matching<'a>(
        &'a self,
        keep: impl Fn(&Contact) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Contact> + 'a {
        self.contacts.iter().filter(move |c| keep(c))
    }
}

/// v1 replaces only the slots given (EMAIL2 stays when EMAIL1 is sent); v2 replaces the
/// whole list (the spec: "Any item not listed here will be removed").
fn merge_slots<T>(stored: &mut Vec<T>, given: Vec<T>, version: ApiVersion, slot: impl Fn(&T) -> u8) {
    match version {
        ApiVersion::V1 => {
            for item in given {
                stored.retain(|s| slot(s) != slot(&item));
                stored.push(item);
            }
        }
        ApiVersion::V2 => *stored = given,
    }
    stored.sort_by_key(|s| slot(s));
}

fn update(contact: &mut Contact, input: ContactInput, version: ApiVersion) {
    if let Some(name) = input.given_name {
        contact.given_name = Some(name);
    }
    if let Some(name) = input.family_name {
        contact.family_name = Some(name);
    }
    if let Some(mut emails) = input.emails {
        carry_statuses(&contact.emails, &mut emails);
        merge_slots(&mut contact.emails, emails, version, |e| e.slot);
    }
    if let Some(phones) = input.phones {
        merge_slots(&mut contact.phones, phones, version, |p| p.slot);
    }
    if input.source_type.is_some() {
        contact.source_type = input.source_type;
    }
    let mut other = input.other;
    // Keap writes custom field values one by one: a value given replaces that field's only.
    if let (Some(Value::Array(given)), Some(Value::Array(stored))) =
        (other.get("custom_fields"), contact.other.get("custom_fields"))
    {
        let id = |v: &Value| v.get("id").map(ToString::to_string);
        let mut merged: Vec<Value> = stored
            .iter()
            .filter(|s| !given.iter().any(|g| id(g) == id(s)))
            .cloned()
            .collect();
        merged.extend(given.iter().cloned());
        other.insert("custom_fields".into(), Value::Array(merged));
    }
    contact.other.extend(other);
    contact.updated = SystemTime::now();
}

impl Contact {
    pub(crate) fn has_email_matching(&self, pattern: &str) -> bool {
        self.emails.iter().any(|e| wildcard_match(pattern, &e.email))
    }

    pub(crate) fn given_name_matches(&self, pattern: &str) -> bool {
        wildcard_match(pattern, self.given_name.as_deref().unwrap_or(""))
    }

    pub(crate) fn family_name_matches(&self, pattern: &str) -> bool {
        wildcard_match(pattern, self.family_name.as_deref().unwrap_or(""))
    }

    pub(crate) fn v1_json(&self) -> Value {
        let mut body = self.other.clone();
        let primary = self.primary_email();
        let fields = json!({
            "id": self.id,
            "given_name": self.given_name,
            "family_name": self.family_name,
            "email_addresses": self.emails.iter().map(|e| json!({"email": e.email, "field": format!("EMAIL{}", e.slot)})).collect::<Vec<_>>(),
            "phone_numbers": self.phones.iter().map(|p| json!({"number": p.number, "field": format!("PHONE{}", p.slot), "type": p.kind, "extension": p.extension})).collect::<Vec<_>>(),
            "tag_ids": self.tag_ids,
            "email_opted_in": primary.is_some_and(|e| e.status == EmailStatus::SingleOptIn),
            "email_status": primary.map_or(EmailStatus::NonMarketable, |e| e.status).v1_name(),
            "source_type": self.source_type,
            "date_created": iso8601(self.created),
            "last_updated": iso8601(self.updated),
        });
        // Unset fields are left out, as Keap's v1 answers do (the spec types them as strings).
        if let Value::Object(fields) = without_nulls(fields) {
            body.extend(fields);
        }
        Value::Object(body)
    }

    pub(crate) fn v2_json(&self) -> Value {
        let mut body: Map<String, Value> = self
            .other
            .iter()
            .filter(|(name, _)| V2_ECHOED.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let fields = json!({
            "id": self.id.to_string(),
            "given_name": self.given_name,
            "family_name": self.family_name,
            "email_addresses": self.emails.iter().map(|e| {
                let mut entry = json!({
                    "email": e.email,
                    "field": format!("EMAIL{}", e.slot),
                    "is_opt_in": e.status == EmailStatus::SingleOptIn,
                    "email_opt_status": e.status.v2_name(),
                });
                if let (Some(reason), Some(map)) = (&e.opt_in_reason, entry.as_object_mut()) {
                    map.insert("opt_in_reason".to_owned(), json!(reason));
                }
                entry
            }).collect::<Vec<_>>(),
            "phone_numbers": self.phones.iter().map(|p| without_nulls(json!({"number": p.number, "field": format!("PHONE{}", p.slot), "type": p.kind, "extension": p.extension}))).collect::<Vec<_>>(),
            "tag_ids": self.tag_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "source_type": self.source_type,
            "create_time": iso8601(self.created),
            "update_time": iso8601(self.updated),
        });
        if let Value::Object(fields) = without_nulls(fields) {
            body.extend(fields);
        }
        Value::Object(body)
    }
}

impl Tag {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    pub(crate) fn category_id(&self) -> Option<&str> {
        self.category_id.as_deref()
    }

    pub(crate) fn v1_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "category": self.category_id.as_ref().map(|id| json!({"id": id.parse::<i64>().map_or_else(|_| json!(id), |n| json!(n))})),
        })
    }

    pub(crate) fn v2_json(&self) -> Value {
        let mut body = json!({
            "id": self.id.to_string(),
            "name": self.name,
            "create_time": iso8601(self.created),
            "update_time": iso8601(self.created),
        });
        if let Some(map) = body.as_object_mut() {
            if let Some(description) = &self.description {
                map.insert("description".to_owned(), json!(description));
            }
            if let Some(category) = &self.category_id {
                map.insert("category".to_owned(), json!({"id": category}));
            }
        }
        body
    }
}

/// v2 leaves unset fields out instead of sending null.
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

/// `==` value with an optional trailing `*` wildcard, case-insensitive.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.to_lowercase().starts_with(&prefix.to_lowercase()),
        None => text.eq_ignore_ascii_case(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats_known_instants() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_709_251_200_123);
        assert_eq!(iso8601(at), "2024-03-01T00:00:00.123Z");
        assert_eq!(iso8601(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn slots_are_assigned_and_duplicates_refused() {
        assert_eq!(assign_slots(vec![None, Some(1), None], 3, "x"), Ok(vec![2, 1, 3]));
        assert!(assign_slots(vec![Some(2), Some(2)], 3, "x").is_err());
        assert!(assign_slots(vec![None, None, None, None], 3, "x").is_err());
    }
}
