//! The OAuth `state` parameter: signed, expiring, bound to this deployment.
//!
//! Wire form: `base64url(payload JSON) "." base64url(HMAC-SHA256(key, payload part))`, where the
//! payload carries a version, a random nonce, the expiry, a hash of the redirect URI, the
//! `switch` flag and a key id. The key is derived from the OAuth client secret with a
//! domain-separated HMAC, so only this deployment (this client secret) can mint a state it
//! accepts, and no other use of the client secret produces the same MAC.
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

type HmacSha256 = Hmac<Sha256>;

/// How long a state issued by `/oauth/start` stays valid.
pub const STATE_TTL: Duration = Duration::from_secs(10 * 60);

const FORMAT_VERSION: u8 = 1;
const KEY_DERIVATION_LABEL: &[u8] = b"keap-relay oauth state v1";
const KEY_ID_LABEL: &[u8] = b"keap-relay oauth state key id";
/// A state longer than this is not one of ours; refuse before decoding anything.
const MAX_STATE_LEN: usize = 1024;

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
    #[error("the state parameter was issued by another deployment of keap-relay (or before its client secret changed)")]
    WrongDeployment,
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
            StateError::WrongDeployment => "state_wrong_deployment",
            StateError::Reused => "state_reused",
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

/// A freshly issued state, ready for the authorize URL.
#[derive(Debug, Clone)]
pub struct IssuedState {
    /// The value of the `state` query parameter (not secret: it travels through the browser).
    pub value: String,
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
    /// Derives the key from the OAuth client secret: `HMAC-SHA256(client_secret, label)`.
    pub fn derive(client_secret: &SecretString) -> Self {
        let key = mac(client_secret.expose_secret().as_bytes(), KEY_DERIVATION_LABEL);
        let key_id = URL_SAFE_NO_PAD.encode(&mac(&key, KEY_ID_LABEL)[..9]);
        Self { key, key_id }
    }

    /// A public fingerprint of the key (safe to log; reveals nothing about the secret).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Issues a state for one authorization attempt that ends at `redirect_uri`.
    pub fn issue(&self, redirect_uri: &str, switch: bool, now: SystemTime) -> IssuedState {
        let nonce = Uuid::new_v4();
        let expires_at = now + STATE_TTL;
        let payload = Payload {
            v: FORMAT_VERSION,
            k: self.key_id.clone(),
            n: nonce,
            e: unix_millis(expires_at),
            r: redirect_hash(redirect_uri),
            s: switch,
        };
        let json = serde_json::to_vec(&payload).expect("a struct of strings, numbers and bools always serializes");
        let payload_part = URL_SAFE_NO_PAD.encode(json);
        let signature = URL_SAFE_NO_PAD.encode(mac(&self.key, payload_part.as_bytes()));
        IssuedState {
            value: format!("{payload_part}.{signature}"),
            nonce,
            expires_at,
        }
    }

    /// Checks a state received by the callback: signature (constant time), deployment,
    /// redirect URI binding and expiry.
    pub fn verify(
        &self,
        state: Option<&str>,
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
        // Same client secret, other callback URL: another deployment sharing a Keap client.
        if payload.r != redirect_hash(redirect_uri) {
            return Err(StateError::WrongDeployment);
        }
        let expires_at = UNIX_EPOCH + Duration::from_millis(payload.e);
        if now >= expires_at {
            return Err(StateError::Expired);
        }
        Ok(VerifiedState {
            nonce: payload.n,
            switch: payload.s,
            issued_at: expires_at.checked_sub(STATE_TTL).unwrap_or(UNIX_EPOCH),
            expires_at,
        })
    }
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

    fn key(secret: &str) -> StateKey {
        StateKey::derive(&SecretString::from(secret))
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    #[test]
    fn round_trip_keeps_nonce_switch_and_expiry() {
        let key = key("client-secret");
        for switch in [false, true] {
            let issued = key.issue(REDIRECT, switch, now());
            let verified = key
                .verify(Some(&issued.value), REDIRECT, now() + Duration::from_secs(60))
                .unwrap();
            assert_eq!(verified.nonce, issued.nonce);
            assert_eq!(verified.switch, switch);
            assert_eq!(verified.expires_at, now() + STATE_TTL);
            assert_eq!(verified.issued_at, now());
        }
    }

    #[test]
    fn every_state_is_unique_and_url_safe() {
        let key = key("client-secret");
        let a = key.issue(REDIRECT, false, now());
        let b = key.issue(REDIRECT, false, now());
        assert_ne!(a.value, b.value);
        assert_ne!(a.nonce, b.nonce);
        assert!(
            a.value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{}",
            a.value
        );
    }

    #[test]
    fn expires_after_ten_minutes() {
        let key = key("client-secret");
        let issued = key.issue(REDIRECT, false, now());
        assert!(
            key.verify(
                Some(&issued.value),
                REDIRECT,
                now() + STATE_TTL - Duration::from_secs(1)
            )
            .is_ok()
        );
        assert_eq!(
            key.verify(Some(&issued.value), REDIRECT, now() + STATE_TTL),
            Err(StateError::Expired)
        );
    }

    #[test]
    fn missing_or_blank_state_is_missing() {
        let key = key("client-secret");
        assert_eq!(key.verify(None, REDIRECT, now()), Err(StateError::Missing));
        assert_eq!(key.verify(Some("  "), REDIRECT, now()), Err(StateError::Missing));
    }

    #[test]
    fn garbage_is_malformed() {
        let key = key("client-secret");
        for bad in ["abc", "a.b.c", "!!!.###", "e30.", &"A".repeat(5000)] {
            assert_eq!(
                key.verify(Some(bad), REDIRECT, now()),
                Err(StateError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn altered_payload_fails_the_signature() {
        let key = key("client-secret");
        let issued = key.issue(REDIRECT, false, now());
        let (payload, signature) = issued.value.split_once('.').unwrap();
        let mut fields: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        fields["s"] = true.into();
        let forged = format!("{}.{signature}", URL_SAFE_NO_PAD.encode(fields.to_string()));
        assert_eq!(
            key.verify(Some(&forged), REDIRECT, now()),
            Err(StateError::BadSignature)
        );

        let mut flipped = issued.value.clone();
        let last = flipped.pop().unwrap();
        // The last character of a 32-byte MAC carries 4 bits plus 2 zero bits; swap it for
        // another canonical one ('A' and 'E' differ in a data bit), so it still decodes.
        flipped.push(if last == 'A' { 'E' } else { 'A' });
        assert_eq!(
            key.verify(Some(&flipped), REDIRECT, now()),
            Err(StateError::BadSignature)
        );
    }

    #[test]
    fn state_from_another_client_secret_is_wrong_deployment() {
        let issued = key("other-deployment-secret").issue(REDIRECT, true, now());
        assert_eq!(
            key("client-secret").verify(Some(&issued.value), REDIRECT, now()),
            Err(StateError::WrongDeployment)
        );
    }

    #[test]
    fn state_for_another_redirect_uri_is_wrong_deployment() {
        let key = key("client-secret");
        let issued = key.issue("https://staging.example.com/oauth/callback", false, now());
        assert_eq!(
            key.verify(Some(&issued.value), REDIRECT, now()),
            Err(StateError::WrongDeployment)
        );
    }

    #[test]
    fn a_state_is_used_once_a_newer_pair_is_stored() {
        let key = key("client-secret");
        let issued = key.issue(REDIRECT, false, now());
        let state = key.verify(Some(&issued.value), REDIRECT, now()).unwrap();
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
    fn debug_never_shows_the_key() {
        let key = key("client-secret");
        let shown = format!("{key:?}");
        assert!(shown.contains(key.key_id()));
        assert!(!shown.contains("client-secret"));
        assert!(!shown.contains(&format!("{:?}", key.key)));
    }
}
