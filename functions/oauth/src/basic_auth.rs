//! HTTP Basic authentication of the administrator routes (`/oauth/start`, `/status`):
//! any user name, the password is the app secret's `admin_password`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use keap_relay::{ExposeSecret, SecretString};
use lambda_http::http::HeaderMap;
use lambda_http::http::header::AUTHORIZATION;
use sha2::Sha256;

/// The challenge sent with every 401.
pub const CHALLENGE: &str = "Basic realm=\"keap-relay\", charset=\"UTF-8\"";

/// The shortest `admin_password` the routes accept (characters). A shorter one closes them:
/// the password is all that stands between the internet and `/oauth/start`, and
/// `openssl rand -hex 16` (the README's) gives 32.
pub const MIN_ADMIN_PASSWORD_CHARS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAuth {
    Granted,
    /// No `Authorization` header: a browser's first request, before it asks for the password.
    /// Answer 401 with [`CHALLENGE`]; not a failed login.
    NoCredentials,
    /// Credentials presented and refused (wrong password, garbled header, another scheme):
    /// answer 401 with [`CHALLENGE`], and count it as a failed login.
    Denied,
    /// No admin password in the app secret: the routes stay closed (503), never open.
    NotConfigured,
    /// The admin password is shorter than [`MIN_ADMIN_PASSWORD_CHARS`]: closed as well (503),
    /// whatever is presented.
    TooShort,
}

pub fn check(headers: &HeaderMap, admin_password: Option<&SecretString>) -> AdminAuth {
    let Some(expected) = admin_password.filter(|p| !p.expose_secret().is_empty()) else {
        return AdminAuth::NotConfigured;
    };
    if expected.expose_secret().chars().count() < MIN_ADMIN_PASSWORD_CHARS {
        return AdminAuth::TooShort;
    }
    if !headers.contains_key(AUTHORIZATION) {
        return AdminAuth::NoCredentials;
    }
    match presented_password(headers) {
        Some(presented) if password_matches(&presented, expected) => AdminAuth::Granted,
        _ => AdminAuth::Denied,
    }
}

/// The user name of a Basic `Authorization` header (the console's "who"; any name is
/// accepted, so it is what the operator typed, bounded to 64 characters).
pub fn user_name(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, _password) = decoded.split_once(':')?;
    Some(user.chars().filter(|c| !c.is_control()).take(64).collect())
}

/// The password of an `Authorization: Basic base64(user:password)` header.
fn presented_password(headers: &HeaderMap) -> Option<SecretString> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    Some(SecretString::from(password))
}

/// Constant-time comparison whatever the lengths: both sides are MACed under a random
/// per-call key and the MACs compared with `verify_slice` (constant time), so neither the
/// content nor the length of the configured password leaks through timing.
pub fn password_matches(presented: &SecretString, expected: &SecretString) -> bool {
    let key = uuid::Uuid::new_v4();
    let mac = |message: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(message.as_bytes());
        mac
    };
    let expected_mac = mac(expected.expose_secret()).finalize().into_bytes();
    mac(presented.expose_secret()).verify_slice(&expected_mac).is_ok()
}

#[cfg(test)]
mod tests {
    use lambda_http::http::HeaderValue;

    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    fn basic(user_and_password: &str) -> String {
        format!("Basic {}", STANDARD.encode(user_and_password))
    }

    #[test]
    fn any_user_with_the_password_is_granted() {
        let password = SecretString::from("local-admin-password");
        for user in ["admin", "", "someone:else"] {
            let header = basic(&format!("{user}:local-admin-password"));
            let expected = if user.contains(':') {
                AdminAuth::Denied
            } else {
                AdminAuth::Granted
            };
            assert_eq!(check(&headers(&header), Some(&password)), expected, "{user}");
        }
        assert_eq!(
            check(
                &headers(&basic("admin:local-admin-password").replace("Basic", "bAsIc")),
                Some(&password)
            ),
            AdminAuth::Granted
        );
    }

    #[test]
    fn wrong_missing_or_garbled_credentials_are_denied() {
        let password = SecretString::from("local-admin-password");
        assert_eq!(check(&HeaderMap::new(), Some(&password)), AdminAuth::NoCredentials);
        for header in [
            basic("admin:wrong"),
            basic("admin:local-admin-password "),
            basic("local-admin-password"),
            "Bearer local-admin-password".into(),
            "Basic !!!".into(),
            "Basic".into(),
            String::new(),
        ] {
            assert_eq!(check(&headers(&header), Some(&password)), AdminAuth::Denied, "{header}");
        }
    }

    #[test]
    fn no_or_empty_admin_password_never_grants() {
        let header = headers(&basic("admin:"));
        assert_eq!(check(&header, None), AdminAuth::NotConfigured);
        assert_eq!(check(&header, Some(&SecretString::from(""))), AdminAuth::NotConfigured);
    }

    #[test]
    fn a_short_admin_password_closes_the_routes_even_to_the_right_password() {
        let short = SecretString::from("fifteen-chars!!");
        assert_eq!(short.expose_secret().chars().count(), 15);
        for header in [Some(headers(&basic("admin:fifteen-chars!!"))), None] {
            let header = header.unwrap_or_default();
            assert_eq!(check(&header, Some(&short)), AdminAuth::TooShort);
        }
        // Sixteen characters (counted as characters, not bytes) are enough.
        let sixteen = SecretString::from("ééééééééééééééé1");
        assert_eq!(
            check(&headers(&basic("admin:ééééééééééééééé1")), Some(&sixteen)),
            AdminAuth::Granted
        );
    }

    #[test]
    fn comparison_is_exact() {
        let expected = SecretString::from("local-admin-password");
        assert!(password_matches(&SecretString::from("local-admin-password"), &expected));
        assert!(!password_matches(
            &SecretString::from("local-admin-passworD"),
            &expected
        ));
        assert!(!password_matches(&SecretString::from(""), &expected));
    }
}
