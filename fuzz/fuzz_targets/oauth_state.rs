//! The OAuth `state` codec (`StateKey::issue` / `StateKey::verify`).
//!
//! Input: a candidate state (any bytes) for `verify`, plus a mutation of a freshly issued
//! state driven by the same bytes. Checks: no input panics; nothing but an issued state
//! verifies; any substitution of one character of an issued state is refused; a state from
//! another deployment (other secrets) or for another redirect URI is refused.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use keap_relay::oauth_state::{STATE_TTL, StateKey};
use keap_relay::{ExposeSecret, SecretString};
use libfuzzer_sys::fuzz_target;

const REDIRECT: &str = "https://relay.example.com/oauth/callback";

fuzz_target!(|data: &[u8]| {
    let key = StateKey::from_deployment_secrets(
        &SecretString::from("fuzz-signup-signing-key"),
        &SecretString::from("fuzz-admin-password"),
    );
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);

    // Arbitrary input: never accepted (it cannot carry our MAC), never a panic.
    let candidate = String::from_utf8_lossy(data);
    assert!(
        key.verify(Some(&candidate), &[candidate.as_ref()], REDIRECT, now)
            .is_err(),
        "an arbitrary state verified: {candidate:?}"
    );

    // A genuine state, then one character of it replaced.
    let switch = data.first().is_some_and(|b| b & 1 == 1);
    let issued = key.issue(REDIRECT, switch, now);
    let binding = SecretString::from(issued.browser_binding.expose_secret().to_owned());
    let browser = [binding.expose_secret()];
    let verified = key
        .verify(Some(&issued.value), &browser, REDIRECT, now + Duration::from_secs(1))
        .expect("an issued state verifies");
    assert_eq!((verified.nonce, verified.switch), (issued.nonce, switch));
    assert!(
        key.verify(Some(&issued.value), &browser, REDIRECT, now + STATE_TTL)
            .is_err(),
        "expired state accepted"
    );
    assert!(
        key.verify(
            Some(&issued.value),
            &browser,
            "https://other.example.com/oauth/callback",
            now
        )
        .is_err()
    );
    assert!(
        key.verify(Some(&issued.value), &["another-browser"], REDIRECT, now)
            .is_err(),
        "a state verified without its browser's cookie"
    );
    let foreign = StateKey::from_deployment_secrets(
        &SecretString::from("another-deployment-key"),
        &SecretString::from("fuzz-admin-password"),
    );
    assert!(foreign.verify(Some(&issued.value), &browser, REDIRECT, now).is_err());

    if let [position, replacement, ..] = data {
        let mut chars: Vec<char> = issued.value.chars().collect();
        let index = usize::from(*position) % chars.len();
        let replacement = char::from(*replacement);
        if chars[index] != replacement && !replacement.is_whitespace() {
            chars[index] = replacement;
            let tampered: String = chars.into_iter().collect();
            assert!(
                key.verify(Some(&tampered), &browser, REDIRECT, now).is_err(),
                "tampered state verified: {tampered:?}"
            );
        }
    }
});
