//! Re-signing stored API Gateway events: an `X-Signature` expires after 300 s, so sample
//! events (and tests) put a fresh one over the event's exact body bytes before each use.

use base64::Engine;
use keap_relay::SecretString;
use keap_relay::signup::signature;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the event is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the event is not an API Gateway HTTP API (payload 2.0) event: {0}")]
    Shape(&'static str),
    #[error("the event says isBase64Encoded but its body is not Base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// The raw body bytes a Lambda handler will see for this event.
pub fn event_body(event: &Value) -> Result<Vec<u8>, EventError> {
    let body = match event.get("body") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(body)) => body,
        Some(_) => return Err(EventError::Shape("body is not a string")),
    };
    if event.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false) {
        Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
    } else {
        Ok(body.as_bytes().to_vec())
    }
}

/// Returns the event with its `x-signature` header (any case) replaced by a signature of
/// its body at `timestamp` (unix seconds) with `key`. Everything else is kept as it was.
pub fn resign_event(event: &str, key: &SecretString, timestamp: i64) -> Result<String, EventError> {
    let mut parsed: Value = serde_json::from_str(event)?;
    let header = signature::sign(key, timestamp, &event_body(&parsed)?);
    let headers = parsed
        .get_mut("headers")
        .and_then(Value::as_object_mut)
        .ok_or(EventError::Shape("no headers object"))?;
    headers.retain(|name, _| !name.eq_ignore_ascii_case(signature::HEADER));
    headers.insert(signature::HEADER.to_owned(), Value::String(header));
    let mut text = serde_json::to_string_pretty(&parsed)?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_header_signs_the_decoded_body() {
        let key = SecretString::from("k");
        let encoded = base64::engine::general_purpose::STANDARD.encode(br#"{"email":"a@example.com"}"#);
        let event = serde_json::json!({
            "version": "2.0",
            "headers": { "X-Signature": "t=1,v1=00", "content-type": "application/json" },
            "body": encoded,
            "isBase64Encoded": true,
        })
        .to_string();
        let signed: Value = serde_json::from_str(&resign_event(&event, &key, 1_700_000_000).unwrap()).unwrap();
        let headers = signed["headers"].as_object().unwrap();
        assert!(!headers.contains_key("X-Signature"));
        assert_eq!(
            headers["x-signature"],
            signature::sign(&key, 1_700_000_000, br#"{"email":"a@example.com"}"#)
        );
        assert_eq!(headers["content-type"], "application/json");
    }

    #[test]
    fn an_event_without_headers_is_refused() {
        let key = SecretString::from("k");
        assert!(matches!(
            resign_event(r#"{"body":"{}"}"#, &key, 1),
            Err(EventError::Shape(_))
        ));
        assert!(matches!(resign_event("nope", &key, 1), Err(EventError::Json(_))));
    }
}
