//! The signup body parser and validator (`Signup::from_json`) and the queue message reader
//! (`QueuedSignup::from_message`), which re-validates with the same code.
//!
//! Checks: no input panics (deep nesting, huge numbers, lone surrogates, invalid UTF-8), and
//! whatever is accepted keeps the documented invariants and survives the trip through the
//! retry queue unchanged.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use keap_relay::signup::request::{MAX_EMAIL_CHARS, MAX_TAGS, MAX_TEXT_CHARS};
use keap_relay::signup::{QueuedSignup, Signup, TagRef};
use libfuzzer_sys::fuzz_target;

fn clean_text(text: &str, max: usize) -> bool {
    !text.is_empty() && text == text.trim() && text.chars().count() <= max && !text.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    let Ok(signup) = Signup::from_json(data) else {
        return;
    };
    assert!(
        clean_text(&signup.email, MAX_EMAIL_CHARS) && signup.email.contains('@'),
        "{signup:?}"
    );
    for text in [&signup.given_name, &signup.family_name, &signup.source]
        .into_iter()
        .flatten()
    {
        assert!(clean_text(text, MAX_TEXT_CHARS), "{signup:?}");
    }
    assert!(signup.tags.len() <= MAX_TAGS);
    for (i, tag) in signup.tags.iter().enumerate() {
        match tag {
            TagRef::Id(id) => assert!(*id > 0),
            TagRef::Name(name) => assert!(clean_text(name, MAX_TEXT_CHARS)),
        }
        assert!(!signup.tags[..i].contains(tag), "duplicate tag kept: {signup:?}");
    }

    // What signup queues, signup-retry reads back as the same signup.
    let queued = QueuedSignup::new(signup.clone(), UNIX_EPOCH + Duration::from_secs(1_750_000_000));
    let back = QueuedSignup::from_message(&queued.to_message()).expect("a queued signup reads back");
    assert_eq!(back, queued);
});
