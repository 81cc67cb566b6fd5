//! A fault-injecting HTTP proxy in front of moto's Secrets Manager, so the real SDK and the
//! `SecretsManagerStore` adapter meet throttling and 5xx answers. Requests are told apart by
//! their `X-Amz-Target` header (`secretsmanager.PutSecretValue`, ...); per target, a plan
//! that the test switches at run time either forwards the request as-is (moto does not check
//! SigV4), or answers instead: a throttle, a 500, or a 500 after forwarding (the write
//! happened, its answer was lost). Apart from the plans, commit puts can be held
//! ([`FaultProxy::hold_puts_above_generation`]): forwarded late, whether or not the client
//! still waits, like a write held up in the network that lands after its sender gave up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_secretsmanager::config::retry::RetryConfig;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;

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
    /// The request reaches moto only after this delay, even if the client gave up meanwhile;
    /// moto's answer is relayed if the client still waits. Set by
    /// [`FaultProxy::hold_puts_above_generation`], not by the per-target plans.
    Hold(Duration),
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
    Sequence {
        pass: usize,
        faults: VecDeque<Fault>,
    },
    Always(Fault),
}

/// Hold PutSecretValue requests whose `SecretString` is a token state above a generation.
#[derive(Debug, Clone, Copy)]
struct HoldRule {
    above_generation: u64,
    delay: Duration,
}

#[derive(Debug, Default)]
struct Plan {
    rules: HashMap<String, Rule>,
    counts: HashMap<String, usize>,
    faulted: Vec<FaultedRequest>,
    hold: Option<HoldRule>,
    /// Requests held so far, and those of them forwarded to moto (answered or not).
    held: usize,
    held_forwarded: usize,
}

/// The `generation` of the token state a PutSecretValue body carries, if it carries one.
fn put_generation(body: &[u8]) -> Option<u64> {
    let request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let state: serde_json::Value = serde_json::from_str(request.get("SecretString")?.as_str()?).ok()?;
    state.get("generation")?.as_u64()
}

impl Plan {
    /// Counts the request and tells whether (and how) to fault it; a hold comes first.
    fn decide(&mut self, target: &str, body: &[u8]) -> Option<Fault> {
        *self.counts.entry(target.to_owned()).or_default() += 1;
        if target == PUT_SECRET_VALUE
            && let Some(hold) = self.hold
            && put_generation(body).is_some_and(|generation| generation > hold.above_generation)
        {
            self.held += 1;
            return Some(Fault::Hold(hold.delay));
        }
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
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("proxy server");
        });
        FaultProxy {
            endpoint,
            shared,
            server,
        }
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.shared.plan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For `target`: forward the next `pass` requests, then answer the following ones with
    /// `faults`, one each, then forward again. Replaces any earlier rule for `target`.
    pub fn fail_after(&self, target: &str, pass: usize, faults: &[Fault]) {
        let rule = Rule::Sequence {
            pass,
            faults: faults.iter().copied().collect(),
        };
        self.plan().rules.insert(target.to_owned(), rule);
    }

    /// Answer every request to `target` with `fault`.
    pub fn fail_always(&self, target: &str, fault: Fault) {
        self.plan().rules.insert(target.to_owned(), Rule::Always(fault));
    }

    /// Hold every PutSecretValue whose `SecretString` is a token state with a `generation`
    /// above `generation` (a commit's put; a lease's or a release's keeps the generation) for
    /// `delay`, then forward it to moto, whether or not the client still waits. Takes
    /// precedence over the plan for PutSecretValue; replaces an earlier hold.
    pub fn hold_puts_above_generation(&self, generation: u64, delay: Duration) {
        self.plan().hold = Some(HoldRule {
            above_generation: generation,
            delay,
        });
    }

    /// Requests held so far (each also in [`FaultProxy::faulted`], as [`Fault::Hold`]).
    pub fn held(&self) -> usize {
        self.plan().held
    }

    /// Held requests not forwarded to moto yet.
    pub fn held_pending(&self) -> usize {
        let plan = self.plan();
        plan.held - plan.held_forwarded
    }

    /// Waits until every held request has been forwarded to moto and moto answered (or
    /// `timeout` passed); true when none is pending.
    pub async fn wait_held_forwarded(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.held_pending() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Forget every rule and the hold (counts and the faulted log stay; requests already held
    /// are still forwarded).
    pub fn clear(&self) {
        let mut plan = self.plan();
        plan.rules.clear();
        plan.hold = None;
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
        let config = test_support::moto::sm_config(&self.endpoint)
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
    !matches!(
        name.as_str(),
        "host" | "content-length" | "connection" | "transfer-encoding" | "keep-alive"
    )
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let fault = shared
        .plan
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .decide(&target, &body);
    if let Some(fault) = fault {
        let record = FaultedRequest {
            target: target.clone(),
            fault,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        };
        shared
            .plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .faulted
            .push(record);
    }
    match fault {
        Some(Fault::Throttle) => aws_error(StatusCode::BAD_REQUEST, "ThrottlingException", "Rate exceeded"),
        Some(Fault::ServerError) => aws_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServiceError", "boom"),
        Some(Fault::ServerErrorAfterApply) => match forward(&shared, method, &uri, &headers, body).await {
            Ok(_) => aws_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServiceError", "boom"),
            Err(response) => response,
        },
        Some(Fault::Hold(delay)) => {
            // A task of its own: the client may drop this handler (it timed out), the write
            // must still reach moto.
            let held = shared.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let answer = forward(&held, method, &uri, &headers, body).await;
                held.plan.lock().unwrap_or_else(|e| e.into_inner()).held_forwarded += 1;
                answer
            });
            match task.await {
                Ok(answer) => answer.unwrap_or_else(|response| response),
                Err(error) => plain(StatusCode::BAD_GATEWAY, format!("proxy: held request failed: {error}")),
            }
        }
        None => forward(&shared, method, &uri, &headers, body)
            .await
            .unwrap_or_else(|response| response),
    }
}

/// Sends the request to moto and relays its answer; `Err` is a 502 when moto is unreachable.
async fn forward(
    shared: &Shared,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = shared
        .http
        .request(method, format!("{}{path}", shared.upstream))
        .body(body);
    for (name, value) in headers.iter().filter(|(name, _)| forwarded(name)) {
        request = request.header(name, value);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| plain(StatusCode::BAD_GATEWAY, format!("proxy: moto unreachable: {e}")))?;
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| plain(StatusCode::BAD_GATEWAY, format!("proxy: moto body: {e}")))?;
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
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
    headers.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("uuid header"),
    );
    response
}

fn plain(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}
