//! The website form's body (`signup::form::fields`): a post in any of the three encodings,
//! decoded into fields, mapped onto the signup body and validated as `POST /signup` does.
//!
//! The first input byte picks the encoding (url-encoded, JSON, or multipart with the boundary
//! `b`); the rest is the body. Checks: no input panics, and whatever is accepted carries only
//! the form's own tags and source (a visitor cannot set either) and a clean email.
#![no_main]

use std::sync::OnceLock;

use keap_relay::forms::FormSettings;
use keap_relay::signup::{Signup, TagRef};
use libfuzzer_sys::fuzz_target;
use signup::form::fields::{Encoding, Fields, signup_body};

fn form() -> &'static FormSettings {
    static FORM: OnceLock<FormSettings> = OnceLock::new();
    FORM.get_or_init(|| FormSettings {
        tags: vec![TagRef::Name("Website".into()), TagRef::Id(7)],
        source: Some("the website form".into()),
        custom_fields: vec!["Plan".into()],
        ..FormSettings::default()
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let encoding = match selector % 3 {
        0 => Encoding::UrlEncoded,
        1 => Encoding::Json,
        _ => Encoding::Multipart("b".into()),
    };
    let Ok(fields) = runtime().block_on(Fields::decode(&encoding, body)) else {
        return;
    };
    let Ok(object) = signup_body(&fields, form(), Some("203.0.113.9")) else {
        return;
    };
    let Ok(signup) = Signup::from_object(&object) else {
        return;
    };
    assert_eq!(signup.tags, form().tags, "{signup:?}");
    assert_eq!(signup.source, form().source, "{signup:?}");
    assert!(signup.email.contains('@') && !signup.email.chars().any(char::is_control));
});
