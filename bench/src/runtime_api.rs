//! A Lambda Runtime API emulator (the endpoints a custom runtime such as `lambda_runtime`
//! polls), enough to start and invoke a function binary on this machine:
//!
//! - `GET  /2018-06-01/runtime/invocation/next`: reported as [`ApiEvent::Next`], then held
//!   until an invocation is queued (as Lambda holds it), or forever;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` and `.../error`, `POST /2018-06-01/runtime/init/error`.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::{BenchError, Result};

/// What a function did, in the order the emulator saw it.
#[derive(Debug)]
pub enum ApiEvent {
    /// A `next` poll arrived (the function is initialized and waiting for work).
    Next {
        at: Instant,
    },
    /// The function answered an invocation; `status` is the API Gateway `statusCode`, if any.
    Response {
        request_id: String,
        at: Instant,
        status: Option<u16>,
    },
    Error {
        request_id: String,
        body: String,
    },
    InitError {
        body: String,
    },
}

/// One invocation to hand out: its request id and event JSON.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    pub event: String,
}

#[derive(Debug)]
struct Shared {
    function_arn: String,
    queue: Mutex<VecDeque<Invocation>>,
    queued: Notify,
    sent: Mutex<HashMap<String, Instant>>,
    events: mpsc::UnboundedSender<ApiEvent>,
}

/// A running emulator on `127.0.0.1`; stops when dropped.
#[derive(Debug)]
pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<ApiEvent>,
    server: JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start(function_name: &str) -> Result<RuntimeApi> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(BenchError::io("bind the Runtime API emulator"))?;
        let addr = listener
            .local_addr()
            .map_err(BenchError::io("Runtime API emulator address"))?;
        let (sender, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{function_name}"),
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            sent: Mutex::new(HashMap::new()),
            events: sender,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("runtime API emulator stopped: {error}");
            }
        });
        Ok(RuntimeApi {
            addr,
            shared,
            events,
            server,
        })
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn push(&self, invocation: Invocation) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(invocation);
        self.shared.queued.notify_one();
    }

    /// When the invocation was handed to the function.
    pub fn sent_at(&self, request_id: &str) -> Option<Instant> {
        self.shared
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(request_id)
            .copied()
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<ApiEvent> {
        tokio::time::timeout(timeout, self.events.recv()).await.ok().flatten()
    }

    /// Forgets queued invocations and unread events (between two processes).
    pub fn reset(&mut self) {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.shared.sent.lock().unwrap_or_else(|e| e.into_inner()).clear();
        while self.events.try_recv().is_ok() {}
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn unix_millis(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    let _ = shared.events.send(ApiEvent::Next { at: Instant::now() });
    loop {
        // Registered before the queue is checked, so a push in between is not missed.
        let queued = shared.queued.notified();
        let invocation = shared.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        if let Some(invocation) = invocation {
            let deadline = SystemTime::now() + Duration::from_secs(15);
            let headers = invocation_headers(&invocation.request_id, deadline, &shared.function_arn);
            shared
                .sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(invocation.request_id.clone(), Instant::now());
            return (StatusCode::OK, headers, invocation.event).into_response();
        }
        queued.await;
    }
}

async fn response(State(shared): State<Arc<Shared>>, Path(request_id): Path<String>, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let status = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|answer| answer.get("statusCode").and_then(serde_json::Value::as_u64))
        .and_then(|code| u16::try_from(code).ok());
    let _ = shared.events.send(ApiEvent::Response { request_id, at, status });
    StatusCode::ACCEPTED
}

async fn error(State(shared): State<Arc<Shared>>, Path(request_id): Path<String>, body: Bytes) -> StatusCode {
    let body = String::from_utf8_lossy(&body).into_owned();
    let _ = shared.events.send(ApiEvent::Error { request_id, body });
    StatusCode::ACCEPTED
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let body = String::from_utf8_lossy(&body).into_owned();
    let _ = shared.events.send(ApiEvent::InitError { body });
    StatusCode::ACCEPTED
}

/// The headers Lambda's Runtime API sends with an invocation: request id, deadline (epoch
/// ms), function ARN, trace id.
pub fn invocation_headers(request_id: &str, deadline: SystemTime, function_arn: &str) -> HeaderMap {
    let header = |value: &str| HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("invalid"));
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", header(request_id));
    headers.insert("lambda-runtime-deadline-ms", header(&unix_millis(deadline).to_string()));
    headers.insert("lambda-runtime-invoked-function-arn", header(function_arn));
    headers.insert(
        "lambda-runtime-trace-id",
        header("Root=1-00000000-000000000000000000000000;Sampled=0"),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers
}
