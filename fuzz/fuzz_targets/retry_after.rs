//! Keap's `Retry-After` parser (`keap_relay::keap::parse_retry_after` and `retry_after`, used by
//! the REST client and the token endpoint client), and what the relay does with the result.
//!
//! Input: the header value, any bytes. Checks:
//! - no input panics, whatever the header holds (2^64 - 1 and longer digit runs, signs,
//!   fractions, dates, non-ASCII, blanks);
//! - a value is accepted only as ASCII digits (blanks around them allowed), and is then the
//!   number of seconds exactly, or `MAX_RETRY_AFTER` when larger;
//! - the header map path agrees with the string parser;
//! - every use the relay makes of it stays in range: added to an `Instant` and a `SystemTime`,
//!   and echoed back as the signup's own `Retry-After` (1..=3600 seconds).
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use keap_relay::http_edge::with_retry_after;
use keap_relay::keap::{MAX_RETRY_AFTER, parse_retry_after, retry_after};
use lambda_http::http::header::RETRY_AFTER;
use lambda_http::http::{HeaderMap, HeaderValue, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_retry_after(&text);

    let digits = text.trim();
    let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    assert_eq!(parsed.is_some(), all_digits, "{text:?} -> {parsed:?}");
    if let Some(wait) = parsed {
        assert!(wait <= MAX_RETRY_AFTER, "{text:?} -> {wait:?}");
        let expected = match digits.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds).min(MAX_RETRY_AFTER),
            Err(_) => MAX_RETRY_AFTER,
        };
        assert_eq!(wait, expected, "{text:?}");

        // What the signup's retry loop, the token protocol and the signup's answer do with it.
        let _ = Instant::now() + wait;
        let _ = SystemTime::now() + wait;
        let answer = with_retry_after(Response::new(()), wait);
        let echoed: u64 = answer.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!(
            (1..=MAX_RETRY_AFTER.as_secs()).contains(&echoed),
            "{text:?} -> {echoed}"
        );
    }

    // As the HTTP client hands the header over.
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let as_text = value.to_str().ok().map(str::to_owned);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, value);
        assert_eq!(retry_after(&headers), as_text.as_deref().and_then(parse_retry_after));
    }
});
