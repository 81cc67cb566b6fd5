//! `X-Signature` header parser and verifier (`keap_relay::signup::signature::verify`).
//!
//! Input: the header value, a newline, then the raw body. Checks:
//! - no input panics, whatever the header holds (overflowing or negative timestamps,
//!   thousands of `v1=` entries, non-hex, odd-length hex, stray separators);
//! - nothing verifies unless it carries the real MAC of this body at its timestamp;
//! - a header made by `sign` over the same bytes always verifies (the round trip), and the
//!   same header over any other body never does.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use keap_relay::SecretString;
use keap_relay::signup::signature::{self, SignatureError};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    let key = SecretString::from("fuzz-signing-key");
    let now = UNIX_EPOCH + Duration::from_secs(NOW as u64);
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let header = String::from_utf8_lossy(header);

    if signature::verify(&key, Some(&header), body, now).is_ok() {
        // Only possible if the header carries the genuine MAC for some timestamp in range
        // (hex digits in either case: the bytes are what is compared).
        let lower = header.to_ascii_lowercase();
        let genuine = (NOW - 300..=NOW + 300)
            .any(|t| lower.contains(signature::sign(&key, t, body).split_once("v1=").unwrap().1));
        assert!(genuine, "a header without the real MAC verified: {header:?}");
    }

    // Round trip at a timestamp derived from the input, within the tolerance.
    let offset = i64::from(body.first().copied().unwrap_or(0)) - 128;
    let signed = signature::sign(&key, NOW + offset, body);
    assert_eq!(signature::verify(&key, Some(&signed), body, now), Ok(()));
    let mut other = body.to_vec();
    other.push(b'x');
    assert_eq!(
        signature::verify(&key, Some(&signed), &other, now),
        Err(SignatureError::Mismatch)
    );
    let later = now + Duration::from_secs(301 + offset.unsigned_abs() * 2);
    assert_eq!(
        signature::verify(&key, Some(&signed), body, later),
        Err(SignatureError::Expired)
    );
});
