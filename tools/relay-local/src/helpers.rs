//! The signing helpers: `relay-local sign` (an `X-Signature` value for a body) and
//! `relay-local curl` (a complete, signed curl command for a test signup).

use std::time::SystemTime;

use keap_relay::SecretString;
use keap_relay::signup::signature;

/// The key the helpers sign with: `--key`, else `SIGNUP_SIGNING_KEY`, else the local default.
pub fn signing_key(explicit: Option<String>) -> SecretString {
    let from_env = std::env::var("SIGNUP_SIGNING_KEY").ok().filter(|key| !key.is_empty());
    SecretString::from(
        explicit
            .or(from_env)
            .unwrap_or_else(|| crate::defaults::SIGNING_KEY.to_owned()),
    )
}

/// The `X-Signature` header value for `body`, made now.
pub fn sign_now(key: &SecretString, body: &[u8]) -> String {
    signature::sign(key, signature::unix_seconds(SystemTime::now()), body)
}

/// The body `curl EMAIL` sends: an opted-in signup from the local run.
pub fn signup_body(email: &str) -> String {
    serde_json::json!({ "email": email, "opt_in": true, "source": "relay-local" }).to_string()
}

/// Quotes `text` for a POSIX shell (single quotes; a quote inside becomes `'\''`).
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A complete curl command posting `body` to `url`, signed now with `key`.
pub fn curl_command(url: &str, key: &SecretString, body: &str) -> String {
    let header = format!("x-signature: {}", sign_now(key, body.as_bytes()));
    format!(
        "curl -si {} -H 'content-type: application/json' -H {} --data {}",
        shell_quote(url),
        shell_quote(&header),
        shell_quote(body)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curl_command_carries_a_signature_the_handler_accepts() {
        let key = SecretString::from("k");
        let body = signup_body("o'brien@example.com");
        let command = curl_command("http://127.0.0.1:9000/signup", &key, &body);
        assert!(command.starts_with("curl -si 'http://127.0.0.1:9000/signup' -H 'content-type: application/json'"));
        assert!(command.contains(r#"'{"email":"o'\''brien@example.com""#), "{command}");
        let header = command
            .split("x-signature: ")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        assert_eq!(
            signature::verify(&key, Some(header), body.as_bytes(), SystemTime::now()),
            Ok(())
        );
    }

    #[test]
    fn an_explicit_key_wins() {
        use keap_relay::ExposeSecret;
        assert_eq!(signing_key(Some("mine".into())).expose_secret(), "mine");
    }
}
