//! A local stand-in for API Gateway's HTTP API (payload format 2.0), used by `relay-local` and
//! by the hostile-input tests' relay server (`tests/src/relay_server.rs`).
//!
//! [`router`] routes each request to its function ([`Routing`]); the request is turned into the
//! JSON event API Gateway would send and parsed with `lambda_http::request::from_str`, so the
//! handlers run exactly the code path they run on Lambda, and the answer goes back as plain HTTP.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// API Gateway's own payload limit for HTTP APIs is 10 MB; locally 1 MiB is plenty and keeps
/// a misbehaving client from filling memory. The handlers enforce their own, smaller limits.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the request could not be represented as an API Gateway event: {0}")]
    Event(#[from] serde_json::Error),
}

/// The HTTP API's functions, with their dependencies as each Lambda function's `main.rs` builds them.
pub struct Functions {
    pub oauth: oauth::Deps,
    pub signup: signup::Deps,
}

/// Which function of the HTTP API a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    OAuth,
    Signup,
}

/// How requests are routed to the functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// As API Gateway routes `template.yaml`'s HTTP API (`relay-local`): `GET /oauth/start`,
    /// `GET /oauth/callback`, `GET /status`, `GET /admin` and the console's three POSTs to
    /// `oauth`; `POST /signup`, and `POST` and `OPTIONS` on `/form` and `/form/{form_name}`, to
    /// `signup`. Anything else (another path, or another method on a known path) is
    /// `404 {"message":"Not Found"}`.
    Template,
    /// Every request reaches a handler, so that the handlers' own answers to other methods (405
    /// with `Allow`) and paths (404) are what the client sees (hostile-input tests): `/signup`
    /// and the form paths (with any method, trailing slashes ignored) to `signup`, everything
    /// else to `oauth`.
    Handlers,
}

impl Routing {
    /// The function that answers `method` on `path`; `None`: the gateway answers 404.
    pub fn function(self, method: &http::Method, path: &str) -> Option<Function> {
        match self {
            Routing::Template => match (method, path) {
                (&http::Method::GET, "/oauth/start" | "/oauth/callback" | "/status" | "/admin") => {
                    Some(Function::OAuth)
                }
                (&http::Method::POST, "/admin/redrive" | "/admin/discard" | "/admin/enable-events") => {
                    Some(Function::OAuth)
                }
                (&http::Method::POST, "/signup") => Some(Function::Signup),
                (&http::Method::POST | &http::Method::OPTIONS, _) if is_form_route(path) => Some(Function::Signup),
                _ => None,
            },
            Routing::Handlers if path.trim_end_matches('/') == "/signup" || signup::form::is_form_path(path) => {
                Some(Function::Signup)
            }
            Routing::Handlers => Some(Function::OAuth),
        }
    }
}

/// `/form` or `/form/{form_name}` as API Gateway matches them (one non-empty segment, no
/// trailing slash).
fn is_form_route(path: &str) -> bool {
    match path.strip_prefix("/form") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('/')
            .is_some_and(|name| !name.is_empty() && !name.contains('/')),
        None => false,
    }
}

/// The HTTP server's routes: each request to its function's handler, as [`Routing`] says.
pub fn router(functions: Arc<Functions>, routing: Routing) -> Router {
    Router::new().fallback(route).with_state((functions, routing))
}

async fn route(
    State((functions, routing)): State<(Arc<Functions>, Routing)>,
    request: axum::extract::Request,
) -> Response {
    let Some(function) = routing.function(request.method(), request.uri().path()) else {
        return (
            http::StatusCode::NOT_FOUND,
            axum::Json(json!({ "message": "Not Found" })),
        )
            .into_response();
    };
    let request = match lambda_request_of(request).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    match function {
        Function::OAuth => http_response(oauth::handle(request, &functions.oauth).await),
        Function::Signup => http_response(signup::route(&request, &functions.signup).await),
    }
}

/// The request as the function would receive it from API Gateway; a body over
/// [`MAX_BODY_BYTES`] is refused as API Gateway refuses one over its limit.
async fn lambda_request_of(request: axum::extract::Request) -> Result<lambda_http::Request, Response> {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return Err((
            http::StatusCode::PAYLOAD_TOO_LARGE,
            axum::Json(json!({ "message": "Request Entity Too Large" })),
        )
            .into_response());
    };
    lambda_request(&parts, &body).map_err(|error| {
        tracing::warn!(%error, "could not build the API Gateway event");
        (
            http::StatusCode::BAD_REQUEST,
            axum::Json(json!({ "message": "Bad Request" })),
        )
            .into_response()
    })
}

/// Builds the API Gateway HTTP API v2 event for one request.
pub fn event_json(parts: &http::request::Parts, body: &Bytes) -> Value {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == http::header::COOKIE {
            cookies.extend(value.split(';').map(|c| Value::String(c.trim().to_owned())));
            continue;
        }
        // API Gateway joins repeated headers with commas and lower-cases names.
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let mut query = Map::new();
    for (key, value) in form_urlencoded::parse(raw_query.as_bytes()) {
        match query.get_mut(key.as_ref()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                query.insert(key.into_owned(), Value::String(value.into_owned()));
            }
        }
    }
    let (body, is_base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (STANDARD.encode(body), true),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let method = parts.method.as_str();
    let path = parts.uri.path();
    let host = headers
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1")
        .to_owned();
    let user_agent = headers
        .get("user-agent")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "local",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": user_agent,
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "timeEpoch": now.as_millis() as u64,
        },
        "isBase64Encoded": is_base64,
    });
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    if !cookies.is_empty() {
        event["cookies"] = Value::Array(cookies);
    }
    if !body.is_empty() {
        event["body"] = Value::String(body);
    }
    event
}

/// The request a Lambda handler would receive for this HTTP request.
pub fn lambda_request(parts: &http::request::Parts, body: &Bytes) -> Result<lambda_http::Request, GatewayError> {
    let event = event_json(parts, body);
    Ok(lambda_http::request::from_str(&event.to_string())?)
}

/// Converts a handler's response back into a plain HTTP response.
pub fn http_response(response: lambda_http::Response<lambda_http::Body>) -> axum::response::Response {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Bytes::new(),
        lambda_http::Body::Text(text) => Bytes::from(text),
        lambda_http::Body::Binary(data) => Bytes::from(data),
        // Body is non-exhaustive in newer releases; anything else is streamed content we don't use.
        #[allow(unreachable_patterns)]
        _ => Bytes::new(),
    };
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("valid request").into_parts().0
    }

    #[test]
    fn query_headers_and_body_reach_the_handler_as_on_api_gateway() {
        use lambda_http::RequestExt;
        let parts = parts(
            "POST",
            "/signup?source=web&x=1",
            &[
                ("host", "127.0.0.1:9000"),
                ("content-type", "application/json"),
                ("x-signature", "t=1,v1=ab"),
            ],
        );
        let request = lambda_request(&parts, &Bytes::from_static(b"{\"email\":\"a@b.co\"}")).expect("parses");
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri().path(), "/signup");
        assert_eq!(request.headers()["x-signature"], "t=1,v1=ab");
        assert_eq!(request.query_string_parameters().first("source"), Some("web"));
        match request.body() {
            lambda_http::Body::Text(text) => assert_eq!(text, "{\"email\":\"a@b.co\"}"),
            other => panic!("expected a text body, got {other:?}"),
        }
    }

    #[test]
    fn binary_bodies_are_base64_encoded_like_api_gateway_does() {
        let parts = parts("POST", "/signup", &[("content-type", "application/octet-stream")]);
        let event = event_json(&parts, &Bytes::from_static(&[0xff, 0x00, 0x01]));
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(event["body"], "/wAB");
        let request = lambda_request(&parts, &Bytes::from_static(&[0xff, 0x00, 0x01])).expect("parses");
        match request.body() {
            lambda_http::Body::Binary(data) => assert_eq!(data, &[0xff, 0x00, 0x01]),
            other => panic!("expected a binary body, got {other:?}"),
        }
    }

    #[test]
    fn the_template_routes_only_its_method_and_path_pairs() {
        use http::Method;
        let route = |method: Method, path: &str| Routing::Template.function(&method, path);
        for path in ["/oauth/start", "/oauth/callback", "/status", "/admin"] {
            assert_eq!(route(Method::GET, path), Some(Function::OAuth), "{path}");
            assert_eq!(route(Method::POST, path), None, "{path}");
            assert_eq!(route(Method::HEAD, path), None, "{path}");
        }
        assert_eq!(route(Method::POST, "/signup"), Some(Function::Signup));
        for path in ["/form", "/form/contact"] {
            assert_eq!(route(Method::POST, path), Some(Function::Signup), "{path}");
            assert_eq!(route(Method::OPTIONS, path), Some(Function::Signup), "{path}");
            assert_eq!(route(Method::GET, path), None, "{path}");
        }
        for path in ["/form/", "/form/a/b", "/formx", "/form//"] {
            assert_eq!(route(Method::POST, path), None, "{path}");
        }
        for path in ["/admin/redrive", "/admin/discard", "/admin/enable-events"] {
            assert_eq!(route(Method::POST, path), Some(Function::OAuth), "{path}");
            assert_eq!(route(Method::GET, path), None, "{path}");
        }
        for (method, path) in [
            (Method::GET, "/signup"),
            (Method::POST, "/signup/"),
            (Method::GET, "/"),
            (Method::GET, "/status/"),
            (Method::GET, "/prod/status"),
        ] {
            assert_eq!(route(method.clone(), path), None, "{method} {path}");
        }
    }

    #[test]
    fn handler_routing_hands_every_request_to_a_function() {
        use http::Method;
        let route = |method: Method, path: &str| Routing::Handlers.function(&method, path);
        assert_eq!(route(Method::POST, "/signup"), Some(Function::Signup));
        assert_eq!(route(Method::DELETE, "/signup/"), Some(Function::Signup));
        assert_eq!(route(Method::GET, "/form/contact"), Some(Function::Signup));
        assert_eq!(route(Method::POST, "/status"), Some(Function::OAuth));
        assert_eq!(route(Method::GET, "/nope"), Some(Function::OAuth));
    }

    #[test]
    fn repeated_headers_are_joined_with_commas() {
        let parts = parts(
            "GET",
            "/status",
            &[("accept", "text/html"), ("accept", "application/json")],
        );
        let event = event_json(&parts, &Bytes::new());
        assert_eq!(event["headers"]["accept"], "text/html,application/json");
        assert!(event.get("body").is_none());
    }
}
