//! The `X-Signature` header of `POST /signup`:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(signup_signing_key, "<t>.<raw body>")>`.
//!
//! Several `v1=` entries may be present (a sender rolling its key signs with both); one
//! match is enough. The timestamp must lie within [`TOLERANCE`] of now, either way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::replay::ReplayKey;

/// The header name (HTTP header names are case-insensitive; API Gateway lower-cases them).
pub const HEADER: &str = "x-signature";

/// How far the signed timestamp may be from now, in the past or the future.
pub const TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Signature header is missing")]
    Missing,
    #[error("the X-Signature header is not of the form t=<unix seconds>,v1=<hex>")]
    Malformed,
    #[error("the X-Signature timestamp is more than 300 seconds away from now")]
    Expired,
    #[error("the X-Signature does not match the body")]
    Mismatch,
}

impl SignatureError {
    /// The error code answered to the caller.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing_signature",
            SignatureError::Malformed | SignatureError::Mismatch => "invalid_signature",
            SignatureError::Expired => "expired_signature",
        }
    }
}

fn mac(key: &SecretString, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value that signs `body` at `timestamp` (unix seconds) with `key`.
pub fn sign(key: &SecretString, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(key, timestamp, body).finalize().into_bytes())
    )
}

/// Unix seconds of `time` (negative before 1970).
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

struct Parsed<'a> {
    timestamp: i64,
    signatures: Vec<&'a str>,
}

fn parse(header: &str) -> Result<Parsed<'_>, SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (name, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match name.trim() {
            "t" if timestamp.is_none() => {
                timestamp = Some(value.trim().parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            "t" => return Err(SignatureError::Malformed),
            "v1" => signatures.push(value.trim()),
            // Other schemes (a future v2) are skipped, as Stripe-style headers do.
            _ => {}
        }
    }
    match timestamp {
        Some(timestamp) if !signatures.is_empty() => Ok(Parsed { timestamp, signatures }),
        _ => Err(SignatureError::Malformed),
    }
}

/// A request whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed timestamp (unix seconds).
    pub timestamp: i64,
    /// Names this signed message, whatever `v1=` entries carried it (see [`ReplayKey`]).
    pub replay_key: ReplayKey,
}

impl Verified {
    /// After this the signature is refused as expired, so no replay can arrive.
    pub fn replayable_until(&self) -> SystemTime {
        let end = self.timestamp.saturating_add(TOLERANCE.as_secs() as i64);
        match u64::try_from(end) {
            Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds.min(i64::MAX as u64 / 2)),
            Err(_) => UNIX_EPOCH,
        }
    }
}

/// Checks `header` against `body`, with `now` as the reference time.
pub fn verify(key: &SecretString, header: Option<&str>, body: &[u8], now: SystemTime) -> Result<(), SignatureError> {
    verify_request(key, header, body, now).map(|_| ())
}

/// [`verify`], also naming the message for replay detection.
pub fn verify_request(
    key: &SecretString,
    header: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<Verified, SignatureError> {
    let header = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing)?;
    let parsed = parse(header)?;
    let age = unix_seconds(now).saturating_sub(parsed.timestamp).unsigned_abs();
    if age > TOLERANCE.as_secs() {
        return Err(SignatureError::Expired);
    }
    let expected = mac(key, parsed.timestamp, body);
    let matches = parsed.signatures.iter().any(|signature| {
        // Non-hex entries simply do not match; `verify_slice` compares in constant time.
        hex::decode(signature).is_ok_and(|bytes| expected.clone().verify_slice(&bytes).is_ok())
    });
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    Ok(Verified {
        timestamp: parsed.timestamp,
        // The MAC computed here, not a header entry: reordered, re-cased or extra `v1=`
        // entries name the same message.
        replay_key: ReplayKey::of_mac(&expected.finalize().into_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretString {
        SecretString::from("test-signing-key")
    }

    fn at(seconds: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    }

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"email":"a@example.com"}"#;

    #[test]
    fn a_fresh_signature_verifies() {
        let header = sign(&key(), NOW, BODY);
        assert_eq!(verify(&key(), Some(&header), BODY, at(NOW)), Ok(()));
    }

    #[test]
    fn signature_matches_the_documented_construction() {
        // HMAC-SHA256("test-signing-key", "1700000000.{body}") computed independently.
        let header = sign(&key(), NOW, BODY);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"test-signing-key").unwrap();
        mac.update(format!("{NOW}.").as_bytes());
        mac.update(BODY);
        assert_eq!(
            header,
            format!("t={NOW},v1={}", hex::encode(mac.finalize().into_bytes()))
        );
    }

    #[test]
    fn tolerance_holds_both_ways_and_no_further() {
        let header = sign(&key(), NOW, BODY);
        assert_eq!(verify(&key(), Some(&header), BODY, at(NOW + 300)), Ok(()));
        assert_eq!(verify(&key(), Some(&header), BODY, at(NOW - 300)), Ok(()));
        assert_eq!(
            verify(&key(), Some(&header), BODY, at(NOW + 301)),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(&key(), Some(&header), BODY, at(NOW - 301)),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn another_body_or_key_does_not_verify() {
        let header = sign(&key(), NOW, BODY);
        assert_eq!(
            verify(&key(), Some(&header), b"{}", at(NOW)),
            Err(SignatureError::Mismatch)
        );
        let other = SecretString::from("other-key");
        assert_eq!(
            verify(&other, Some(&header), BODY, at(NOW)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_v1_entries_may_match() {
        let good = sign(&key(), NOW, BODY);
        let good_hex = good.split_once("v1=").unwrap().1;
        let header = format!("t={NOW}, v1=deadbeef, v1=zz, v2=whatever, v1={good_hex}");
        assert_eq!(verify(&key(), Some(&header), BODY, at(NOW)), Ok(()));
    }

    #[test]
    fn malformed_headers_are_told_apart_from_missing_ones() {
        assert_eq!(verify(&key(), None, BODY, at(NOW)), Err(SignatureError::Missing));
        assert_eq!(verify(&key(), Some("  "), BODY, at(NOW)), Err(SignatureError::Missing));
        for header in [
            "garbage",
            "t=abc,v1=00",
            "v1=00",
            &format!("t={NOW}"),
            &format!("t={NOW},t={NOW},v1=00"),
        ] {
            assert_eq!(
                verify(&key(), Some(header), BODY, at(NOW)),
                Err(SignatureError::Malformed),
                "{header}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Arbitrary headers are refused (or, by astronomically bad luck, accepted) without panicking.
        #[test]
        fn any_header_gets_an_answer(header in ".{0,200}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let key = SecretString::from("k");
            let _ = verify(&key, Some(&header), &body, SystemTime::now());
        }

        /// What `sign` makes, `verify` accepts, for any body and key.
        #[test]
        fn sign_and_verify_agree(key in ".{1,40}", body in proptest::collection::vec(any::<u8>(), 0..256), t in 0i64..4_000_000_000) {
            let key = SecretString::from(key);
            let now = UNIX_EPOCH + Duration::from_secs(t as u64);
            prop_assert_eq!(verify(&key, Some(&sign(&key, t, &body)), &body, now), Ok(()));
        }
    }
}
