//! Every comparison of a secret-derived value is constant time: the three places that compare
//! what a caller sent with what only the relay can compute (the signup signature, the OAuth
//! state's MAC, the admin password) go through `hmac`'s `verify_slice` (which uses `subtle`'s
//! constant-time equality) and never through `==`, `!=` or a byte-slice comparison of their own.
//!
//! This is a property of the code, so the test reads the code: it finds each function's body
//! and checks what it calls, rather than timing anything. Each check also runs the function
//! to make sure the audited body is the one in use.

use std::path::Path;
use std::time::{Duration, SystemTime};

use keap_relay::oauth_state::{StateError, StateKey};
use keap_relay::signup::signature::{self, SignatureError};
use keap_relay::{ExposeSecret, SecretString};

/// The body of `fn NAME(` in `file` (relative to the workspace), comments removed.
fn function_body(file: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let start = code
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name} in {file}"));
    let open = start + code[start..].find('{').expect("a body");
    let mut depth = 0usize;
    for (offset, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return code[open..=open + offset].to_owned();
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces in fn {name} of {file}")
}

/// Lines of `body` that compare with `==`/`!=` and mention one of `secret_names`.
fn plain_comparisons_of<'a>(body: &'a str, secret_names: &[&str]) -> Vec<&'a str> {
    body.lines()
        .filter(|line| line.contains("==") || line.contains("!="))
        .filter(|line| secret_names.iter().any(|name| line.contains(name)))
        .collect()
}

fn assert_constant_time(file: &str, function: &str, secret_names: &[&str]) {
    let body = function_body(file, function);
    assert!(
        body.contains(".verify_slice("),
        "{file}: fn {function} no longer compares with hmac's verify_slice:\n{body}"
    );
    let plain = plain_comparisons_of(&body, secret_names);
    assert!(
        plain.is_empty(),
        "{file}: fn {function} compares secret-derived bytes with ==/!=: {plain:?}"
    );
    for banned in [".starts_with(", ".ends_with(", "memcmp", ".cmp(", ".eq("] {
        let hits: Vec<&str> = body
            .lines()
            .filter(|l| l.contains(banned) && secret_names.iter().any(|n| l.contains(n)))
            .collect();
        assert!(
            hits.is_empty(),
            "{file}: fn {function} compares secret-derived bytes with {banned}: {hits:?}"
        );
    }
}

#[test]
fn the_signup_signature_is_compared_in_constant_time() {
    assert_constant_time(
        "shared/src/signup/signature.rs",
        "verify_request",
        &["signature", "expected", "bytes", "mac"],
    );
    // The audited function is the one in use: one flipped hex digit anywhere is a mismatch.
    let key = SecretString::from("k");
    let now = SystemTime::now();
    let t = signature::unix_seconds(now);
    let good = signature::sign(&key, t, b"{}");
    assert_eq!(signature::verify(&key, Some(&good), b"{}", now), Ok(()));
    let hex_start = good.find("v1=").unwrap() + 3;
    for position in [hex_start, hex_start + 31, good.len() - 1] {
        let mut bad = good.clone().into_bytes();
        bad[position] = if bad[position] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(
            signature::verify(&key, Some(&bad), b"{}", now),
            Err(SignatureError::Mismatch),
            "{bad}"
        );
    }
}

#[test]
fn the_oauth_state_mac_is_compared_in_constant_time() {
    assert_constant_time("shared/src/oauth_state.rs", "verify", &["signature", "verifier", "mac"]);
    // The browser binding (the cookie against the tag the state carries) as well.
    assert_constant_time(
        "shared/src/oauth_state.rs",
        "binding_matches",
        &["expected", "presented", "verifier", "tag"],
    );
    let key = StateKey::from_deployment_secrets(
        &SecretString::from("signup-signing-key"),
        &SecretString::from("admin-password-16+"),
    );
    let now = SystemTime::now();
    let redirect = "https://relay.example.com/oauth/callback";
    let issued = key.issue(redirect, false, now);
    let binding = issued.browser_binding.expose_secret();
    let (payload, _) = issued.value.split_once('.').unwrap();
    let other = key.issue(redirect, false, now);
    let (_, other_signature) = other.value.split_once('.').unwrap();
    // A genuine MAC of another state does not verify this payload.
    let spliced = format!("{payload}.{other_signature}");
    let later = now + Duration::from_secs(1);
    assert_eq!(
        key.verify(Some(&spliced), &[binding], redirect, later),
        Err(StateError::BadSignature)
    );
    // The audited binding check is the one in use: one changed character is a mismatch.
    let mut altered = binding.to_owned();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        key.verify(Some(&issued.value), &[&altered], redirect, later),
        Err(StateError::BrowserMismatch)
    );
    assert!(key.verify(Some(&issued.value), &[binding], redirect, later).is_ok());
}

#[test]
fn the_admin_password_is_compared_in_constant_time() {
    assert_constant_time(
        "functions/oauth/src/basic_auth.rs",
        "password_matches",
        &["presented", "expected", "password"],
    );
    let expected = SecretString::from("correct horse");
    assert!(oauth::basic_auth::password_matches(
        &SecretString::from("correct horse"),
        &expected
    ));
    // Same length, different last byte; a prefix; a longer string: all refused alike.
    for wrong in ["correct horsf", "correct hors", "correct horse battery"] {
        assert!(
            !oauth::basic_auth::password_matches(&SecretString::from(wrong), &expected),
            "{wrong}"
        );
    }
}
