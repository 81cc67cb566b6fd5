//! The sample events in the repository's `events/` (the payloads API Gateway, EventBridge and
//! SQS send), read as stored or adjusted first.

use std::path::{Path, PathBuf};

use lambda_http::Request;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The repository's `events/` directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

/// An event file as stored.
pub fn text(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("events/{name}: {e}"))
}

/// An event file as JSON, to be adjusted before it is parsed.
pub fn json(name: &str) -> Value {
    serde_json::from_str(&text(name)).unwrap_or_else(|e| panic!("events/{name} is not JSON: {e}"))
}

/// An event file parsed as the payload type its function takes (`EventBridgeEvent`, `SqsEvent`, …).
pub fn parse<T: DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(&text(name)).unwrap_or_else(|e| panic!("events/{name} does not parse: {e}"))
}

/// An API Gateway v2 event file as the handler receives it, through `lambda_http`'s own deserializer.
pub fn request(name: &str) -> Request {
    lambda_http::request::from_str(&text(name))
        .unwrap_or_else(|e| panic!("events/{name} is not an API Gateway v2 event: {e}"))
}

/// An (adjusted) API Gateway v2 event as the handler receives it.
pub fn to_request(event: &Value) -> Request {
    lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway v2 event")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sample_event_is_json() {
        let mut names = 0;
        for entry in std::fs::read_dir(super::dir()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".json") {
                super::json(&name);
                names += 1;
            }
        }
        assert!(names > 0, "no sample events in {}", super::dir().display());
    }
}
