//! Clients for Keap: [`oauth`] (authorize URL, code exchange, refresh) and [`api`] (REST).
pub mod api;
pub mod oauth;
pub mod pacing;

use std::time::Duration;

/// The longest wait a `Retry-After` from Keap is taken for. A larger number (up to
/// `18446744073709551615` or more digits) means "wait this long": added to an `Instant` as
/// sent, it would overflow and abort the process.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A `Retry-After` value in delay-seconds (the form Keap sends: ASCII digits, blanks around
/// them allowed), capped at [`MAX_RETRY_AFTER`]. An HTTP date, a sign, a fraction or anything
/// else counts as absent.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only a number beyond u64 fails to parse here: it is over the cap too.
    let seconds = digits.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The `Retry-After` header of a Keap answer, through [`parse_retry_after`].
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(http::header::RETRY_AFTER)?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_capped_at_an_hour() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("3600"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("3601"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("99999999999999999999999999"), Some(MAX_RETRY_AFTER));
        for junk in ["", " ", "-1", "+5", "1.5", "1e9", "Wed, 21 Oct 2015 07:28:00 GMT", "٣"] {
            assert_eq!(parse_retry_after(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn retry_after_reads_the_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, "18446744073709551615".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_bytes(b"\xff7").unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
