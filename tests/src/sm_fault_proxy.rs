//! A fault-injecting HTTP proxy in front of moto's Secrets Manager, so the real SDK and the
//! `SecretsManagerStore` adapter meet throttling and 5xx answers. Requests are told apart by
//! their `X-Amz-Target` header (`secretsmanager.PutSecretValue`, ...); per target, a plan
//! that the test switches at run time either forwards the request as-is (moto does not check
//! SigV4), or answers instead: a throttle, a 500, or a 500 after forwarding (the write
//! happened, its answer was lost).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};

pub const GET_SECRET_VALUE: &str = "secretsmanager.GetSecretValue";
pub const PUT_SECRET_VALUE: &str = "secretsmanager.PutSecretValue";
pub const UPDATE_SECRET_VERSION_STAGE: &str = "secretsmanager.UpdateSecretVersionStage";

/// What the proxy answers instead of moto's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 400 `ThrottlingException`; moto never sees the request.
    Throttle,
    /// 500 `InternalServiceError`; moto never sees the request.
    ServerError,
    /// The request reaches moto (and takes effect), then the answer is a 500.
    ServerErrorAfterApply,
}

/// A request the proxy answered with a fault.
#[derive(Debug, Clone)]
pub struct FaultedRequest {
    pub target: String,
    pub fault: Fault,
    /// The request's JSON body (test data only: the proxy runs inside the test).
    pub body: serde_json::Value,
}

#[derive(Debug)]
enum Rule {
    /// Let `pass` requests through, then answer with `faults` in order, then forward again.
    Sequence { pass: usize, faults: VecDeque<Fault> },
    Always(Fault),
}

#[derive(Debug, Default)]
struct Plan {
    rules: HashMap<String, Rule>,
    counts: HashMap<String, usize>,
    faulted: Vec<FaultedRequest>,
}

impl Plan {
    /// Counts the request and tells whether (and how) to fault it.
    fn decide(&mut self, target: &str) -> Option<Fault> {
        *self.counts.entry(target.to_owned()).or_default() += 1;
        match self.rules.get_mut(target)? {
            Rule::Always(fault) => Some(*fault),
            Rule::Sequence { pass, faults } => {
                if *pass > 0 {
                    *pass -= 1;
                    None
                } else {
                    faults.pop_front()
                }
            }
        }
    }
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    plan: Mutex<Plan>,
}

/// The proxy, listening on `127.0.0.1:0`; stops on drop.
pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// A proxy forwarding to `upstream` (moto's endpoint, e.g. `http://127.0.0.1:5000`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            plan: Mutex::new(Plan::default()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("proxy server");
        });
        FaultProxy { endpoint, shared, server }
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.shared.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For `target`: forward the next `pass` requests, then answer the following ones with
    /// `faults`, one each, then forward again. Replaces any earlier rule for `target`.
    pub fn fail_after(&self, target: &str, pass: usize, faults: &[Fault]) {
        let rule = Rule::Sequence { pass, faults: faults.iter().copied().collect() };
        self.plan().rules.insert(target.to_owned(), rule);
    }

    /// Answer every request to `target` with `fault`.
    pub fn fail_always(&self, target: &str, fault: Fault) {
        self.plan().rules.insert(target.to_owned(), Rule::Always(fault));
    }

    /// Forget every rule (counts and the faulted log stay).
    pub fn clear(&self) {
        self.plan().rules.clear();
    }

    /// Requests seen for `target`, faulted or not.
    pub fn count(&self, target: &str) -> usize {
        self.plan().counts.get(target).copied().unwrap_or(0)
    }

    /// The requests answered with a fault, in order.
    pub fn faulted(&self) -> Vec<FaultedRequest> {
        self.plan().faulted.clone()
    }

    /// A Secrets Manager client aimed at the proxy, with dummy credentials and no SDK
    /// retries: every fault reaches the adapter.
    pub fn sm_client(&self) -> aws_sdk_secretsmanager::Client {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "relay-tests"))
            .endpoint_url(&self.endpoint)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Hop-by-hop and framing headers that the HTTP clients set themselves.
fn forwarded(name: &HeaderName) -> bool {
    !matches!(name.as_str(), "host" | "content-length" | "connection" | "transfer-encoding" | "keep-alive")
}

async fn handle(State(shared): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let fault = shared.plan.lock().unwrap_or_else(|e| e.into_inner()).decide(&target);
    if let Some(fault) = fault {
        let record = FaultedRequest {
            target: target.clone(),
            fault,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        };
        shared.plan.lock().unwrap_or_else(|e| e.into_inner()).faulted.push(record);
    }
    match fault {
        Some(Fault::Throttle) => aws_error(StatusCode::BAD_REQUEST, "ThrottlingException", "Rate exceeded"),
        Some(Fault::ServerError) => aws_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServiceError", "boom"),
        Some(Fault::ServerErrorAfterApply) => match forward(&shared, method, &uri, &headers, body).await {
            Ok(_) => aws_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServiceError", "boom"),
            Err(response) => response,
        },
        None => forward(&shared, method, &uri, &headers, body).await.unwrap_or_else(|response| response),
    }
}

/// Sends the request to moto and relays its answer; `Err` is a 502 when moto is unreachable.
async fn forward(shared: &Shared, method: Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Result<Response, Response> {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = shared.http.request(method, format!("{}{path}", shared.upstream)).body(body);
    for (name, value) in headers.iter().filter(|(name, _)| forwarded(name)) {
        request = request.header(name, value);
    }
    let answer = request.send().await.map_err(|e| plain(StatusCode::BAD_GATEWAY, format!("proxy: moto unreachable: {e}")))?;
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let bytes = answer.bytes().await.map_err(|e| plain(StatusCode::BAD_GATEWAY, format!("proxy: moto body: {e}")))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in answer_headers.iter().filter(|(name, _)| forwarded(name)) {
        response.headers_mut().append(name, value.clone());
    }
    Ok(response)
}

fn aws_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    let body = serde_json::json!({ "__type": code, "message": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
    headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
    headers.insert("x-amzn-requestid", HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("uuid header"));
    response
}

fn plain(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}
