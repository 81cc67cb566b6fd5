//! One delivery of one event to `EVENTS_WEBHOOK_URL`, and how long to wait before the next.
//!
//! The request: `POST`, the event's JSON as the body, `Content-Type: application/json`,
//! `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(events_signing_key, "<t>.<body>")>`
//! (the scheme of inbound signups, [`crate::signup::signature`]), `X-Event-Id` and
//! `X-Event-Type`. Any 2xx is delivered; 410 says the receiver is gone for good; everything
//! else (other statuses, a redirect, a timeout, no connection) is tried again later.

use std::time::{Duration, SystemTime};

use secrecy::SecretString;

use super::Event;
use crate::signup::signature;

/// How long one delivery may take before it counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// SQS's longest visibility timeout: the longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(12 * 3600);

/// The wait before attempt `attempt + 1` after `attempt` failed (1-based): one minute, then
/// five times longer each time, capped at [`MAX_BACKOFF`]: 1 min, 5 min, 25 min, ~2 h, ~10 h,
/// 12 h… so the template's receive count of 8 spreads the attempts over about two days.
pub fn backoff(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(10);
    Duration::from_secs(60)
        .saturating_mul(5u32.saturating_pow(exponent))
        .min(MAX_BACKOFF)
}

/// The receiver's answer to one delivery, classified by what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx: done.
    Delivered { status: u16 },
    /// 410 Gone: the receiver asked not to be called again (until the operator re-enables it).
    Gone,
    /// Try again after a backoff (`Retry-After` of a 429/503, when given and sane).
    Retry {
        detail: String,
        retry_after: Option<Duration>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("EVENTS_WEBHOOK_URL {0}")]
pub struct BadWebhookUrl(String);

/// The webhook URL must be `https` (plain `http` only to this machine, for tests and the local
/// run): the body carries contact emails.
pub fn check_url(value: &str) -> Result<url::Url, BadWebhookUrl> {
    let url = url::Url::parse(value).map_err(|e| BadWebhookUrl(format!("is not a URL ({e})")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(BadWebhookUrl("has no host".into())),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        other => Err(BadWebhookUrl(format!(
            "has scheme {other}; it must be https (http only to this machine)"
        ))),
    }
}

/// The receiver at `EVENTS_WEBHOOK_URL`.
#[derive(Debug, Clone)]
pub struct Webhook {
    http: reqwest::Client,
    url: url::Url,
}

impl Webhook {
    /// A client that follows no redirect (a signed body goes where it was configured to, or
    /// nowhere) and gives up after [`TIMEOUT`].
    pub fn new(url: &str) -> Result<Self, BadWebhookUrl> {
        let url = check_url(url)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .user_agent(concat!("keap-relay-events/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BadWebhookUrl(format!("cannot get an HTTP client: {e}")))?;
        Ok(Self { http, url })
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// POSTs `event` signed with `key` at `now`.
    pub async fn deliver(&self, event: &Event, key: &SecretString, now: SystemTime) -> Delivery {
        let body = event.to_json();
        let signed = signature::sign(key, signature::unix_seconds(now), body.as_bytes());
        let sent = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::HEADER, signed)
            .header("x-event-id", event.id.to_string())
            .header("x-event-type", event.kind.as_str())
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Delivery::Retry {
                    detail: format!("no answer from the receiver: {}", without_url(&error)),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Delivery::Delivered {
                status: status.as_u16(),
            };
        }
        if status == reqwest::StatusCode::GONE {
            return Delivery::Gone;
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .map(|d| d.min(MAX_BACKOFF));
        Delivery::Retry {
            detail: format!("the receiver answered {status}"),
            retry_after,
        }
    }
}

/// reqwest's error text names the URL, which may carry a token in its query: keep it out.
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_hours_and_stops_at_twelve() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(300));
        assert_eq!(backoff(4), Duration::from_secs(7500));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff(0), Duration::from_secs(60));
        let total: Duration = (1..8).map(backoff).sum();
        assert!(total > Duration::from_secs(24 * 3600), "{total:?}");
    }

    #[test]
    fn the_url_must_be_https_except_to_this_machine() {
        assert!(check_url("https://product.example.com/hooks/keap").is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_url("http://localhost/hook").is_ok());
        assert!(check_url("http://product.example.com/hook").is_err());
        assert!(check_url("ftp://product.example.com/hook").is_err());
        assert!(check_url("not a url").is_err());
    }
}
