//! The OAuth `state` parameter: signed, expiring, bound to this deployment and to the
//! administrator's browser.
//!
//! Wire form: `base64url(payload JSON) "." base64url(HMAC-SHA256(key, payload part))`, where the
//! payload carries a version, a key id, a random nonce, the expiry, a hash of the redirect URI,
//! the `switch` flag and the browser binding.
//!
//! **The key** is this deployment's own: [`StateKey::for_app_secret`] derives it from the app
//! secret's `signup_signing_key` and `admin_password` (length-prefixed, under a label of its own,
//! so no other use of either secret produces the same bytes). It is never derived from the OAuth
//! client secret: that one is shown in Keap's developer portal to whoever manages the Keap app,
//! and several deployments (staging and production) may share one Keap client, so anyone holding
//! it could otherwise mint states this deployment accepts. Whoever holds the admin password can
//! already get a state from `/oauth/start`, so it adds no minting power; the signing key, random
//! and long, keeps a state seen in a URL from being an offline guessing oracle for the password.
//! Changing either secret invalidates the states in flight (at most [`STATE_TTL`] old): start again.
//!
//! **The lifetime** is [`STATE_TTL`]; a state whose signed expiry lies further ahead than
//! [`MAX_STATE_LIFETIME`] (plus [`CLOCK_SKEW`]) is refused, whatever signed it.
//!
//! **The browser binding**: [`StateKey::issue`] also returns a random secret for a cookie
//! (`/oauth/start` sets it, `HttpOnly`, scoped to the callback), and the payload carries
//! `HMAC(key, label ‖ secret)`. [`StateKey::verify`] requires one of the request's cookie values
//! to match, so a state that leaked (browser history, a log, a screenshot of the URL) is useless
//! to anyone but the browser that started the sign-in.
//!
//! Nothing is stored at `/oauth/start`: every copy of the function can verify any state.
//! Single use ([`VerifiedState::ensure_unused`]) leans on the stored pair instead of a list of
//! used nonces; on top of that Keap consumes the authorization code on the first exchange,
//! and the expiry bounds the window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::AppSecret;

type HmacSha256 = Hmac<Sha256>;

/// How long a state issued by `/oauth/start` stays valid.
pub const STATE_TTL: Duration = Duration::from_secs(10 * 60);

/// The longest life any state may claim: a state signed with a later expiry is refused.
pub const MAX_STATE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// How far the clocks of two copies of the function may disagree (issued by one, verified by
/// another) before a fresh state counts as claiming too long a life.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

const FORMAT_VERSION: u8 = 2;
const KEY_DERIVATION_LABEL: &[u8] = b"keap-relay oauth state v2: signup_signing_key, admin_password";
const KEY_ID_LABEL: &[u8] = b"keap-relay oauth state key id";
const BINDING_LABEL: &[u8] = b"keap-relay oauth state browser binding";
/// A state longer than this is not one of ours; refuse before decoding anything.
const MAX_STATE_LEN: usize = 1024;
/// A cookie value longer than this is not one of ours.
const MAX_BINDING_LEN: usize = 128;

/// Why a `state` was refused. Messages are safe to show to the person in the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the sign-in response carries no state parameter")]
    Missing,
    #[error("the state parameter is not one this service issues")]
    Malformed,
    #[error("the state parameter's signature is not valid (it was altered or forged)")]
    BadSignature,
    #[error("the sign-in link expired; start again")]
    Expired,
    #[error("the state parameter claims a longer life than this service ever gives one, so it was not issued here")]
    LifetimeTooLong,
    #[error(
        "the state parameter was issued by another deployment of keap-relay (or before its signup_signing_key or admin_password changed)"
    )]
    WrongDeployment,
    #[error(
        "this browser did not start the sign-in (its sign-in cookie is missing): start again in the browser you finish in, with cookies allowed for this site"
    )]
    BrowserMissing,
    #[error(
        "this browser's sign-in cookie belongs to another sign-in (started since, in another tab or browser); start again"
    )]
    BrowserMismatch,
    /// Refused by [`VerifiedState::ensure_unused`], never by [`StateKey::verify`].
    #[error("the sign-in link was already used, or the connection changed after it was issued")]
    Reused,
}

impl StateError {
    /// A stable machine-readable code (`state_missing`, `state_expired`, …).
    pub fn code(&self) -> &'static str {
        match self {
            StateError::Missing => "state_missing",
            StateError::Malformed => "state_malformed",
            StateError::BadSignature => "state_bad_signature",
            StateError::Expired => "state_expired",
            StateError::LifetimeTooLong => "state_lifetime_too_long",
            StateError::WrongDeployment => "state_wrong_deployment",
            StateError::BrowserMissing => "state_cookie_missing",
            StateError::BrowserMismatch => "state_cookie_mismatch",
            StateError::Reused => "state_reused",
        }
    }
}

/// What the app secret lacks for a state key (see [`StateKey::for_app_secret`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateKeyError {
    #[error(
        "the app secret has no signup_signing_key, from which (with admin_password) the OAuth state key is derived"
    )]
    NoSigningKey,
    #[error(
        "the app secret has no admin_password, from which (with signup_signing_key) the OAuth state key is derived"
    )]
    NoAdminPassword,
}

impl StateKeyError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            StateKeyError::NoSigningKey => "signup_signing_key_missing",
            StateKeyError::NoAdminPassword => "admin_password_missing",
        }
    }
}

/// What a verified state tells the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedState {
    /// Random per `/oauth/start`; identifies this authorization attempt.
    pub nonce: Uuid,
    /// When `/oauth/start` issued it (millisecond precision).
    pub issued_at: SystemTime,
    /// The administrator asked to replace a connection to another Keap account.
    pub switch: bool,
    pub expires_at: SystemTime,
}

impl VerifiedState {
    /// A state is single use. Lambda copies share no memory and `/oauth/start` stores nothing,
    /// so instead of a list of used nonces this leans on the stored pair: completing a state
    /// stores a pair whose issue time (`last_refresh_at`, set by every connect and refresh) is
    /// after the state's, so any later use of the same state finds a newer pair and is
    /// refused. A rotation during the minutes of a sign-in refuses the state as well; starting
    /// again fixes that. `pair_issued_at` is `None` when no pair is stored.
    ///
    /// Both times have millisecond precision; a state issued in the same millisecond as the
    /// pair counts as newer (a real sign-in takes seconds between `/oauth/start` and the callback).
    pub fn ensure_unused(&self, pair_issued_at: Option<SystemTime>) -> Result<(), StateError> {
        match pair_issued_at {
            Some(pair_issued_at) if self.issued_at < pair_issued_at => Err(StateError::Reused),
            _ => Ok(()),
        }
    }
}

/// A freshly issued state, ready for the authorize URL, and its browser binding.
#[derive(Debug, Clone)]
pub struct IssuedState {
    /// The value of the `state` query parameter (not secret: it travels through the browser).
    pub value: String,
    /// The value of the cookie that binds the state to the browser that started the sign-in
    /// (secret: only ever in that cookie). URL-safe Base64, 43 characters.
    pub browser_binding: SecretString,
    pub nonce: Uuid,
    pub expires_at: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    /// Format version.
    v: u8,
    /// Key id: tells a state from another deployment apart from a forged one.
    k: String,
    /// Nonce.
    n: Uuid,
    /// Expiry, unix milliseconds (the callback compares it with the stored pair's age).
    e: u64,
    /// base64url(SHA-256(redirect URI)).
    r: String,
    /// Switch accounts.
    s: bool,
    /// Browser binding: base64url(HMAC(key, label ‖ cookie value)).
    b: String,
}

/// The signing key. Its `Debug` shows only the public key id.
#[derive(Clone)]
pub struct StateKey {
    key: [u8; 32],
    key_id: String,
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl StateKey {
    /// This deployment's key, from the app secret's `signup_signing_key` and `admin_password`
    /// (see the module documentation). Never from the client secret.
    pub fn for_app_secret(secret: &AppSecret) -> Result<Self, StateKeyError> {
        let present = |s: &Option<SecretString>| s.clone().filter(|s| !s.expose_secret().is_empty());
        let signing_key = present(&secret.signup_signing_key).ok_or(StateKeyError::NoSigningKey)?;
        let admin_password = present(&secret.admin_password).ok_or(StateKeyError::NoAdminPassword)?;
        Ok(Self::from_deployment_secrets(&signing_key, &admin_password))
    }

    /// `HMAC-SHA256(label, len ‖ signup_signing_key ‖ len ‖ admin_password)` (an HKDF-Extract
    /// with the label as salt; each length a big-endian u64, so no two pairs give the same input).
    pub fn from_deployment_secrets(signup_signing_key: &SecretString, admin_password: &SecretString) -> Self {
        let mut mac = HmacSha256::new_from_slice(KEY_DERIVATION_LABEL).expect("HMAC takes keys of any length");
        for part in [signup_signing_key, admin_password] {
            let bytes = part.expose_secret().as_bytes();
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        }
        Self::from_raw(mac.finalize().into_bytes().into())
    }

    /// A key from 32 bytes derived elsewhere (tests: a key an attacker could compute).
    pub fn from_raw(key: [u8; 32]) -> Self {
        let key_id = URL_SAFE_NO_PAD.encode(&mac(&key, KEY_ID_LABEL)[..9]);
        Self { key, key_id }
    }

    /// A public fingerprint of the key (safe to log; reveals nothing about the secret).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Issues a state for one authorization attempt that ends at `redirect_uri`, and the
    /// browser binding `/oauth/start` puts in a cookie.
    pub fn issue(&self, redirect_uri: &str, switch: bool, now: SystemTime) -> IssuedState {
        let nonce = Uuid::new_v4();
        let binding = random_binding();
        let expires_at = now + STATE_TTL.min(MAX_STATE_LIFETIME);
        let payload = Payload {
            v: FORMAT_VERSION,
            k: self.key_id.clone(),
            n: nonce,
            e: unix_millis(expires_at),
            r: redirect_hash(redirect_uri),
            s: switch,
            b: URL_SAFE_NO_PAD.encode(self.binding_tag(&binding)),
        };
        IssuedState {
            value: self.sign(&payload),
            browser_binding: SecretString::from(binding),
            nonce,
            expires_at,
        }
    }

    fn sign(&self, payload: &Payload) -> String {
        let json = serde_json::to_vec(payload).expect("a struct of strings, numbers and bools always serializes");
        let payload_part = URL_SAFE_NO_PAD.encode(json);
        let signature = URL_SAFE_NO_PAD.encode(mac(&self.key, payload_part.as_bytes()));
        format!("{payload_part}.{signature}")
    }

    fn binding_tag(&self, binding: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(BINDING_LABEL);
        mac.update(binding.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks a state received by the callback: signature (constant time), deployment,
    /// redirect URI binding, expiry, lifetime, and that one of `browser_bindings` (the values
    /// of the request's binding cookie) is the one issued with it.
    pub fn verify(
        &self,
        state: Option<&str>,
        browser_bindings: &[&str],
        redirect_uri: &str,
        now: SystemTime,
    ) -> Result<VerifiedState, StateError> {
        let state = state
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(StateError::Missing)?;
        if state.len() > MAX_STATE_LEN {
            return Err(StateError::Malformed);
        }
        let (payload_part, signature_part) = state.split_once('.').ok_or(StateError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_part)
            .map_err(|_| StateError::Malformed)?;
        let payload_bytes = URL_SAFE_NO_PAD
            .decode(payload_part)
            .map_err(|_| StateError::Malformed)?;
        let payload: Option<Payload> = serde_json::from_slice(&payload_bytes).ok();

        let mut verifier = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        verifier.update(payload_part.as_bytes());
        if verifier.verify_slice(&signature).is_err() {
            // The key id is not authenticated; it only picks the more helpful message.
            return Err(match payload {
                Some(p) if p.k != self.key_id => StateError::WrongDeployment,
                Some(_) => StateError::BadSignature,
                None => StateError::Malformed,
            });
        }
        let payload = payload.ok_or(StateError::Malformed)?;
        if payload.v != FORMAT_VERSION {
            return Err(StateError::Malformed);
        }
        // Same keys, other callback URL: another deployment sharing the app secret.
        if payload.r != redirect_hash(redirect_uri) {
            return Err(StateError::WrongDeployment);
        }
        let expires_at = UNIX_EPOCH + Duration::from_millis(payload.e);
        if now >= expires_at {
            return Err(StateError::Expired);
        }
        if expires_at > now + MAX_STATE_LIFETIME + CLOCK_SKEW {
            return Err(StateError::LifetimeTooLong);
        }
        if browser_bindings.is_empty() {
            return Err(StateError::BrowserMissing);
        }
        if !browser_bindings
            .iter()
            .any(|presented| self.binding_matches(&payload.b, presented))
        {
            return Err(StateError::BrowserMismatch);
        }
        Ok(VerifiedState {
            nonce: payload.n,
            switch: payload.s,
            issued_at: expires_at.checked_sub(STATE_TTL).unwrap_or(UNIX_EPOCH),
            expires_at,
        })
    }

    /// Whether a cookie value is the binding whose tag the state carries (constant time).
    fn binding_matches(&self, tag: &str, presented: &str) -> bool {
        let Ok(expected) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        if presented.len() > MAX_BINDING_LEN {
            return false;
        }
        let mut verifier = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        verifier.update(BINDING_LABEL);
        verifier.update(presented.as_bytes());
        verifier.verify_slice(&expected).is_ok()
    }
}

/// 32 random bytes (two v4 UUIDs: 244 bits from the OS generator), URL-safe Base64.
fn random_binding() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn mac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn redirect_hash(redirect_uri: &str) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(redirect_uri.as_bytes())[..16])
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIRECT: &str = "https://relay.example.com/oauth/callback";

    fn key(signing_key: &str) -> StateKey {
        StateKey::from_deployment_secrets(
            &SecretString::from(signing_key),
            &SecretString::from("admin-password-of-16+"),
        )
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    /// Verifies as the callback does, with the issued binding as the browser's cookie.
    fn verify_issued(key: &StateKey, issued: &IssuedState, at: SystemTime) -> Result<VerifiedState, StateError> {
        key.verify(
            Some(&issued.value),
            &[issued.browser_binding.expose_secret()],
            REDIRECT,
            at,
        )
    }

    fn app_secret(client_secret: &str, signing_key: Option<&str>, admin_password: Option<&str>) -> AppSecret {
        AppSecret {
            client_id: Some("client".into()),
            client_secret: Some(SecretString::from(client_secret)),
            api_key: None,
            signup_signing_key: signing_key.map(SecretString::from),
            admin_password: admin_password.map(SecretString::from),
            captcha_secret: None,
            events_signing_key: None,
        }
    }

    #[test]
    fn round_trip_keeps_nonce_switch_and_expiry() {
        let key = key("signing-key");
        for switch in [false, true] {
            let issued = key.issue(REDIRECT, switch, now());
            let verified = verify_issued(&key, &issued, now() + Duration::from_secs(60)).unwrap();
            assert_eq!(verified.nonce, issued.nonce);
            assert_eq!(verified.switch, switch);
            assert_eq!(verified.expires_at, now() + STATE_TTL);
            assert_eq!(verified.issued_at, now());
        }
    }

    #[test]
    fn every_state_and_binding_is_unique_and_url_safe() {
        let key = key("signing-key");
        let a = key.issue(REDIRECT, false, now());
        let b = key.issue(REDIRECT, false, now());
        assert_ne!(a.value, b.value);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.browser_binding.expose_secret(), b.browser_binding.expose_secret());
        for value in [a.value.as_str(), a.browser_binding.expose_secret()] {
            assert!(
                value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "{value}"
            );
        }
        assert_eq!(a.browser_binding.expose_secret().len(), 43);
        assert!(
            !a.value.contains(a.browser_binding.expose_secret()),
            "the state never carries the binding itself"
        );
    }

    #[test]
    fn expires_after_ten_minutes() {
        let key = key("signing-key");
        let issued = key.issue(REDIRECT, false, now());
        assert!(verify_issued(&key, &issued, now() + STATE_TTL - Duration::from_secs(1)).is_ok());
        assert_eq!(
            verify_issued(&key, &issued, now() + STATE_TTL),
            Err(StateError::Expired)
        );
    }

    #[test]
    fn a_signed_expiry_beyond_the_maximum_lifetime_is_refused() {
        // Signed with the right key (a bug, an older release, or a key that leaked) but claiming
        // an hour: refused, whatever signed it.
        let key = key("signing-key");
        let issued = key.issue(REDIRECT, false, now());
        let (payload, _) = issued.value.split_once('.').unwrap();
        let mut fields: Payload = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        fields.e = unix_millis(now() + Duration::from_secs(3600));
        let long_lived = key.sign(&fields);
        let verify = |at| {
            key.verify(
                Some(&long_lived),
                &[issued.browser_binding.expose_secret()],
                REDIRECT,
                at,
            )
        };
        assert_eq!(verify(now()), Err(StateError::LifetimeTooLong));
        assert_eq!(
            verify(now() + Duration::from_secs(2 * 60)),
            Err(StateError::LifetimeTooLong)
        );
        assert_eq!(StateError::LifetimeTooLong.code(), "state_lifetime_too_long");
        // Within the skew allowance: a copy whose clock is 30 s behind the issuer's still accepts.
        assert!(verify_issued(&key, &issued, now() - Duration::from_secs(30)).is_ok());
        assert_eq!(
            verify_issued(&key, &issued, now() - CLOCK_SKEW - Duration::from_secs(1)),
            Err(StateError::LifetimeTooLong)
        );
    }

    #[test]
    fn missing_or_blank_state_is_missing() {
        let key = key("signing-key");
        assert_eq!(key.verify(None, &["x"], REDIRECT, now()), Err(StateError::Missing));
        assert_eq!(
            key.verify(Some("  "), &["x"], REDIRECT, now()),
            Err(StateError::Missing)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let key = key("signing-key");
        for bad in ["abc", "a.b.c", "!!!.###", "e30.", &"A".repeat(5000)] {
            assert_eq!(
                key.verify(Some(bad), &["x"], REDIRECT, now()),
                Err(StateError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn altered_payload_fails_the_signature() {
        let key = key("signing-key");
        let issued = key.issue(REDIRECT, false, now());
        let binding = [issued.browser_binding.expose_secret()];
        let (payload, signature) = issued.value.split_once('.').unwrap();
        let mut fields: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        fields["s"] = true.into();
        let forged = format!("{}.{signature}", URL_SAFE_NO_PAD.encode(fields.to_string()));
        assert_eq!(
            key.verify(Some(&forged), &binding, REDIRECT, now()),
            Err(StateError::BadSignature)
        );

        let mut flipped = issued.value.clone();
        let last = flipped.pop().unwrap();
        // The last character of a 32-byte MAC carries 4 bits plus 2 zero bits; swap it for
        // another canonical one ('A' and 'E' differ in a data bit), so it still decodes.
        flipped.push(if last == 'A' { 'E' } else { 'A' });
        assert_eq!(
            key.verify(Some(&flipped), &binding, REDIRECT, now()),
            Err(StateError::BadSignature)
        );
    }

    #[test]
    fn state_from_another_deployment_is_wrong_deployment() {
        let issued = key("other-deployment-key").issue(REDIRECT, true, now());
        assert_eq!(
            verify_issued(&key("signing-key"), &issued, now()),
            Err(StateError::WrongDeployment)
        );
    }

    #[test]
    fn state_for_another_redirect_uri_is_wrong_deployment() {
        let key = key("signing-key");
        let issued = key.issue("https://staging.example.com/oauth/callback", false, now());
        assert_eq!(verify_issued(&key, &issued, now()), Err(StateError::WrongDeployment));
    }

    #[test]
    fn the_key_comes_from_the_deployment_secrets_never_from_the_client_secret() {
        let ours = StateKey::for_app_secret(&app_secret(
            "client-secret",
            Some("signing-key"),
            Some("admin-password-of-16+"),
        ))
        .unwrap();
        // Another deployment on the same Keap client (same client secret): another key.
        let sibling = StateKey::for_app_secret(&app_secret(
            "client-secret",
            Some("other-signing-key"),
            Some("admin-password-of-16+"),
        ))
        .unwrap();
        assert_ne!(ours.key_id(), sibling.key_id());
        // A new client secret (rotated in Keap's portal): the same key.
        let rotated = StateKey::for_app_secret(&app_secret(
            "new-client-secret",
            Some("signing-key"),
            Some("admin-password-of-16+"),
        ))
        .unwrap();
        assert_eq!(ours.key_id(), rotated.key_id());
        assert_eq!(ours.key_id(), key("signing-key").key_id());

        // Whoever holds the client secret and mints a state with it (as the key was derived
        // before) is refused.
        let from_client_secret = StateKey::from_raw(mac(b"client-secret", b"keap-relay oauth state v1"));
        let forged = from_client_secret.issue(REDIRECT, true, now());
        assert_eq!(verify_issued(&ours, &forged, now()), Err(StateError::WrongDeployment));
    }

    #[test]
    fn length_prefixes_keep_the_two_secrets_apart() {
        let a = StateKey::from_deployment_secrets(&SecretString::from("ab"), &SecretString::from("c"));
        let b = StateKey::from_deployment_secrets(&SecretString::from("a"), &SecretString::from("bc"));
        assert_ne!(a.key_id(), b.key_id());
    }

    #[test]
    fn missing_key_material_is_named() {
        assert_eq!(
            StateKey::for_app_secret(&app_secret("c", None, Some("admin-password-of-16+"))).unwrap_err(),
            StateKeyError::NoSigningKey
        );
        assert_eq!(
            StateKey::for_app_secret(&app_secret("c", Some("k"), None)).unwrap_err(),
            StateKeyError::NoAdminPassword
        );
        assert_eq!(
            StateKey::for_app_secret(&app_secret("c", Some(""), Some("p"))).unwrap_err(),
            StateKeyError::NoSigningKey
        );
        assert_eq!(StateKeyError::NoSigningKey.code(), "signup_signing_key_missing");
    }

    #[test]
    fn the_state_is_bound_to_the_browser_that_started_it() {
        let key = key("signing-key");
        let issued = key.issue(REDIRECT, false, now());
        let other = key.issue(REDIRECT, false, now());
        let ours = issued.browser_binding.expose_secret();
        let theirs = other.browser_binding.expose_secret();
        let verify = |cookies: &[&str]| key.verify(Some(&issued.value), cookies, REDIRECT, now());
        assert_eq!(verify(&[]), Err(StateError::BrowserMissing));
        assert_eq!(verify(&[theirs]), Err(StateError::BrowserMismatch));
        assert_eq!(verify(&[""]), Err(StateError::BrowserMismatch));
        assert_eq!(verify(&[&ours[..42]]), Err(StateError::BrowserMismatch));
        assert_eq!(verify(&[&"A".repeat(4096)]), Err(StateError::BrowserMismatch));
        assert!(verify(&[ours]).is_ok());
        assert!(verify(&[theirs, ours]).is_ok(), "any value of the cookie may match");
        // The binding is checked last: a forged or expired state says so, not "wrong browser".
        assert_eq!(
            key.verify(Some(&issued.value), &[], REDIRECT, now() + STATE_TTL),
            Err(StateError::Expired)
        );
        assert_eq!(
            (StateError::BrowserMissing.code(), StateError::BrowserMismatch.code()),
            ("state_cookie_missing", "state_cookie_mismatch")
        );
    }

    #[test]
    fn a_state_is_used_once_a_newer_pair_is_stored() {
        let key = key("signing-key");
        let issued = key.issue(REDIRECT, false, now());
        let state = verify_issued(&key, &issued, now()).unwrap();
        assert_eq!(state.ensure_unused(None), Ok(()), "nothing stored yet");
        assert_eq!(
            state.ensure_unused(Some(now() - Duration::from_secs(60))),
            Ok(()),
            "an older pair"
        );
        assert_eq!(
            state.ensure_unused(Some(now())),
            Ok(()),
            "the same millisecond counts as newer"
        );
        assert_eq!(
            state.ensure_unused(Some(now() + Duration::from_millis(1))),
            Err(StateError::Reused)
        );
        assert_eq!(StateError::Reused.code(), "state_reused");
    }

    #[test]
    fn debug_never_shows_the_key_or_the_binding() {
        let key = key("signing-key");
        let shown = format!("{key:?}");
        assert!(shown.contains(key.key_id()));
        assert!(!shown.contains("signing-key"));
        assert!(!shown.contains(&format!("{:?}", key.key)));
        let issued = key.issue(REDIRECT, false, now());
        assert!(!format!("{issued:?}").contains(issued.browser_binding.expose_secret()));
    }
}
