//! Contacts, tags and sent emails: the Keap account's data.

use serde::{Deserialize, Serialize};

/// What a test can see of a stored contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    pub id: i64,
    /// The contact's first email address.
    pub email: String,
    /// Empty when never set.
    pub given_name: String,
    pub family_name: String,
    pub tag_ids: Vec<i64>,
    pub emails_received: u32,
    /// The last opt-in reason that was accepted for the address.
    pub opt_in_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub id: i64,
    pub emails: Vec<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub tag_ids: Vec<i64>,
    pub emails_received: u32,
    pub opt_in_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Tag {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Default)]
pub(crate) struct Crm {
    pub contacts: Vec<Contact>,
    pub tags: Vec<Tag>,
}

impl Crm {
    pub(crate) fn contact_by_email(&self, email: &str) -> Option<ContactView> {
        self.contacts
            .iter()
            .find(|c| c.emails.iter().any(|e| e.eq_ignore_ascii_case(email)))
            .map(|c| ContactView {
                id: c.id,
                email: c.emails.first().cloned().unwrap_or_default(),
                given_name: c.given_name.clone().unwrap_or_default(),
                family_name: c.family_name.clone().unwrap_or_default(),
                tag_ids: c.tag_ids.clone(),
                emails_received: c.emails_received,
                opt_in_reason: c.opt_in_reason.clone(),
            })
    }

    pub(crate) fn tag_by_name(&self, name: &str) -> Option<i64> {
        self.tags.iter().find(|t| t.name == name).map(|t| t.id)
    }
}
