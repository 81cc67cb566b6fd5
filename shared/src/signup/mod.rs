//! The signup flow: signature check, body validation, upsert, tags, welcome email.
