//! Lambda on this machine, for whole-process tests: a pool of execution environments per
//! function, each one function process polling a Runtime API endpoint of its own (as every
//! Lambda environment has its own API), running one invocation at a time.
//!
//! What Lambda does and the tests rely on:
//! - an invocation goes to an idle environment; with none idle it waits (reserved concurrency);
//! - a process that exits mid-invocation (killed, crashed) fails that invocation, and the
//!   environment starts a fresh process (a cold start) for the next one;
//! - an invocation past the function's timeout is failed and its process is killed.
//!
//! Each process gets exactly the environment it is given (nothing inherited) and its stdout
//! and stderr are appended to `<log_dir>/<function>-<n>.log`, where a test can audit them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use relay_bench::runtime_api::invocation_headers;
use tokio::process::Child;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

/// How an invocation ended, as the caller (API Gateway, the SQS poller) learns it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The function's answer (for API Gateway: `statusCode`, `headers`, `body`).
    Response(serde_json::Value),
    /// The handler returned an error (`/error`): Lambda reports a function error.
    FunctionError(String),
    /// The process exited mid-invocation; `killed` when this pool killed it on purpose.
    Crashed { killed: bool },
    /// Past the function's timeout: the process was killed.
    TimedOut,
}

/// What the pool did, for the figures.
#[derive(Debug, Default)]
pub struct PoolCounters {
    pub invocations: AtomicU64,
    pub cold_starts: AtomicU64,
    pub killed: AtomicU64,
    pub crashed: AtomicU64,
    pub timed_out: AtomicU64,
    pub function_errors: AtomicU64,
}

/// The invocation an environment is running.
struct Pending {
    request_id: String,
    event: String,
    deadline: SystemTime,
    handed_out: bool,
    answer: Option<oneshot::Sender<Outcome>>,
}

/// What a Runtime API endpoint and the invoker share.
struct Slot {
    function_arn: String,
    pending: Mutex<Option<Pending>>,
    ready: Notify,
}

impl Slot {
    fn pending(&self) -> MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(&self, request_id: &str, outcome: Outcome) -> StatusCode {
        let mut pending = self.pending();
        match pending.as_mut() {
            Some(p) if p.request_id == request_id => {
                if let Some(answer) = p.answer.take() {
                    let _ = answer.send(outcome);
                }
                *pending = None;
                StatusCode::ACCEPTED
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// One running process and the Runtime API endpoint only it polls. A restart replaces both,
/// so a poll left over from a dead process can never take the next invocation.
struct Running {
    child: Child,
    slot: Arc<Slot>,
    server: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
        let _ = self.child.start_kill();
    }
}

struct Environment {
    index: usize,
    running: tokio::sync::Mutex<Option<Running>>,
    /// Set while an invocation is handed out (a kill then hits a request in flight).
    busy: AtomicBool,
    kill_requested: AtomicBool,
    /// The pid of the current process (0: none), readable without the async lock.
    pid: AtomicU64,
}

/// Everything needed to start one more process of the function.
struct Spawner {
    function: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
}

/// Environments of one function.
pub struct FunctionPool {
    spawner: Spawner,
    environments: Vec<Arc<Environment>>,
    idle: Mutex<Vec<usize>>,
    permits: Semaphore,
    timeout: Duration,
    next_request: AtomicU64,
    pub counters: PoolCounters,
}

impl FunctionPool {
    /// Starts `size` processes of `binary`, each with `env` plus its own
    /// `AWS_LAMBDA_RUNTIME_API`, and waits for none: the first invocation waits for the
    /// process's first poll, as a cold start does.
    pub async fn start(
        function: &str,
        binary: &Path,
        env: Vec<(String, String)>,
        size: usize,
        timeout: Duration,
        log_dir: &Path,
    ) -> std::io::Result<FunctionPool> {
        let spawner = Spawner {
            function: function.to_owned(),
            binary: binary.to_owned(),
            env: env
                .into_iter()
                .filter(|(name, _)| name != "AWS_LAMBDA_RUNTIME_API")
                .collect(),
            log_dir: log_dir.to_owned(),
        };
        let pool = FunctionPool {
            spawner,
            environments: (0..size)
                .map(|index| {
                    Arc::new(Environment {
                        index,
                        running: tokio::sync::Mutex::new(None),
                        busy: AtomicBool::new(false),
                        kill_requested: AtomicBool::new(false),
                        pid: AtomicU64::new(0),
                    })
                })
                .collect(),
            idle: Mutex::new((0..size).rev().collect()),
            permits: Semaphore::new(size),
            timeout,
            next_request: AtomicU64::new(0),
            counters: PoolCounters::default(),
        };
        for environment in &pool.environments {
            let running = pool.spawn(environment).await?;
            *environment.running.lock().await = Some(running);
        }
        Ok(pool)
    }

    pub fn function(&self) -> &str {
        &self.spawner.function
    }

    async fn spawn(&self, environment: &Environment) -> std::io::Result<Running> {
        let slot = Arc::new(Slot {
            function_arn: format!(
                "arn:aws:lambda:us-east-1:123456789012:function:keap-relay-{}",
                self.spawner.function
            ),
            pending: Mutex::new(None),
            ready: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address: SocketAddr = listener.local_addr()?;
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(slot.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let log = self
            .spawner
            .log_dir
            .join(format!("{}-{}.log", self.spawner.function, environment.index));
        let open = || std::fs::File::options().create(true).append(true).open(&log);
        let child = tokio::process::Command::new(&self.spawner.binary)
            .env_clear()
            .envs(self.spawner.env.iter().map(|(k, v)| (k, v)))
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .kill_on_drop(true)
            .spawn()?;
        environment
            .pid
            .store(child.id().map_or(0, u64::from), Ordering::Relaxed);
        self.counters.cold_starts.fetch_add(1, Ordering::Relaxed);
        Ok(Running { child, slot, server })
    }

    /// Runs `event` in an idle environment (waiting for one), as Lambda would.
    pub async fn invoke(&self, event: String) -> Outcome {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        let index = self.lock_idle().pop().expect("a permit means an idle environment");
        let environment = self.environments[index].clone();
        let outcome = self.invoke_in(&environment, event).await;
        self.lock_idle().push(index);
        self.counters.invocations.fetch_add(1, Ordering::Relaxed);
        let counter = match &outcome {
            Outcome::Response(_) => None,
            Outcome::FunctionError(_) => Some(&self.counters.function_errors),
            Outcome::Crashed { killed: true } => Some(&self.counters.killed),
            Outcome::Crashed { killed: false } => Some(&self.counters.crashed),
            Outcome::TimedOut => Some(&self.counters.timed_out),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<usize>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn invoke_in(&self, environment: &Environment, event: String) -> Outcome {
        let mut running = environment.running.lock().await;
        let request_id = format!(
            "{}-{:08}",
            self.spawner.function,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        );
        // A process that died while idle is replaced first, as Lambda would never pick it.
        let dead = running
            .as_mut()
            .is_none_or(|current| !matches!(current.child.try_wait(), Ok(None)));
        if dead {
            environment.kill_requested.store(false, Ordering::Relaxed);
            *running = self
                .spawn(environment)
                .await
                .map_err(|error| eprintln!("{}: could not restart a process: {error}", self.spawner.function))
                .ok();
        }
        let (answer, mut answered) = oneshot::channel();
        let deadline = SystemTime::now() + self.timeout;
        {
            let Some(current) = running.as_ref() else {
                return Outcome::Crashed { killed: false };
            };
            *current.slot.pending() = Some(Pending {
                request_id,
                event,
                deadline,
                handed_out: false,
                answer: Some(answer),
            });
            current.slot.ready.notify_one();
        }
        environment.busy.store(true, Ordering::Relaxed);
        let timeout = tokio::time::sleep(self.timeout);
        tokio::pin!(timeout);
        let mut check = tokio::time::interval(Duration::from_millis(20));
        let outcome = loop {
            tokio::select! {
                outcome = &mut answered => {
                    break outcome.unwrap_or(Outcome::Crashed { killed: false });
                }
                _ = &mut timeout => {
                    if let Some(current) = running.as_mut() {
                        let _ = current.child.kill().await;
                    }
                    break Outcome::TimedOut;
                }
                _ = check.tick() => {
                    let exited = running.as_mut().is_none_or(|current| matches!(current.child.try_wait(), Ok(Some(_)) | Err(_)));
                    if exited {
                        break Outcome::Crashed { killed: environment.kill_requested.load(Ordering::Relaxed) };
                    }
                }
            }
        };
        environment.busy.store(false, Ordering::Relaxed);
        if !matches!(outcome, Outcome::Response(_) | Outcome::FunctionError(_)) {
            // Lambda throws the environment away; the next invocation cold-starts a new one.
            *running = None;
            environment.kill_requested.store(false, Ordering::Relaxed);
            match self.spawn(environment).await {
                Ok(fresh) => *running = Some(fresh),
                Err(error) => eprintln!("{}: could not restart a process: {error}", self.spawner.function),
            }
        }
        outcome
    }

    /// SIGKILLs the process of one environment that is running an invocation, if any;
    /// `pick` chooses among the busy ones. Returns whether a process was killed.
    pub fn kill_busy(&self, pick: u64) -> bool {
        let busy: Vec<&Arc<Environment>> = self
            .environments
            .iter()
            .filter(|e| e.busy.load(Ordering::Relaxed))
            .collect();
        if busy.is_empty() {
            return false;
        }
        let environment = busy[(pick % busy.len() as u64) as usize];
        let pid = environment.pid.load(Ordering::Relaxed);
        if pid == 0 {
            return false;
        }
        environment.kill_requested.store(true, Ordering::Relaxed);
        // SIGKILL by pid: the async lock is held by the invocation being killed.
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Stops every process.
    pub async fn shutdown(&self) {
        for environment in &self.environments {
            if let Some(mut running) = environment.running.lock().await.take() {
                let _ = running.child.kill().await;
            }
        }
    }

    /// The log files of this pool's processes.
    pub fn log_files(&self) -> Vec<PathBuf> {
        (0..self.environments.len())
            .map(|index| {
                self.spawner
                    .log_dir
                    .join(format!("{}-{index}.log", self.spawner.function))
            })
            .collect()
    }
}

/// `GET next`: held until this environment has an invocation, then handed out once.
async fn next(State(slot): State<Arc<Slot>>) -> Response {
    loop {
        // Registered before the check, so an invocation set in between is not missed.
        let ready = slot.ready.notified();
        {
            let mut pending = slot.pending();
            if let Some(p) = pending.as_mut().filter(|p| !p.handed_out) {
                p.handed_out = true;
                let headers = invocation_headers(&p.request_id, p.deadline, &slot.function_arn);
                return (StatusCode::OK, headers, p.event.clone()).into_response();
            }
        }
        ready.await;
    }
}

async fn response(State(slot): State<Arc<Slot>>, UrlPath(request_id): UrlPath<String>, body: Bytes) -> StatusCode {
    let outcome = match serde_json::from_slice(&body) {
        Ok(value) => Outcome::Response(value),
        Err(_) => Outcome::FunctionError(format!("a response that is not JSON ({} bytes)", body.len())),
    };
    slot.answer(&request_id, outcome)
}

async fn error(State(slot): State<Arc<Slot>>, UrlPath(request_id): UrlPath<String>, body: Bytes) -> StatusCode {
    slot.answer(
        &request_id,
        Outcome::FunctionError(String::from_utf8_lossy(&body).into_owned()),
    )
}

/// An init error fails the invocation waiting for this process (the process then exits).
async fn init_error(State(slot): State<Arc<Slot>>, body: Bytes) -> StatusCode {
    let request_id = slot.pending().as_ref().map(|p| p.request_id.clone());
    if let Some(request_id) = request_id {
        slot.answer(
            &request_id,
            Outcome::FunctionError(format!("init: {}", String::from_utf8_lossy(&body))),
        );
    }
    StatusCode::ACCEPTED
}

/// Builds the binaries of the function `packages` for this test's profile (so a run never
/// uses stale ones) and returns the directory they are in (`target/<profile>`).
pub fn build_function_binaries(packages: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "--quiet", "--locked", "--bins"]);
    for package in packages {
        build.args(["-p", package]);
    }
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build of {packages:?} failed");
    dir
}

/// An SQS queue as Lambda's event source mapping reads it.
pub struct SqsSource<'a> {
    pub sqs: &'a aws_sdk_sqs::Client,
    pub url: &'a str,
    pub arn: &'a str,
    /// The mapping's `BatchSize`.
    pub batch_size: i32,
}

/// Lambda's SQS event source mapping, once: receive up to a batch (long poll 1 s), invoke
/// `function` with it, delete what the answer does not list in `batchItemFailures` (nothing,
/// if the invocation failed). The messages acknowledged, and the invocation's outcome (none:
/// nothing was received).
pub async fn poll_sqs_once(source: &SqsSource<'_>, function: &FunctionPool) -> (usize, Option<Outcome>) {
    use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
    let Ok(received) = source
        .sqs
        .receive_message()
        .queue_url(source.url)
        .max_number_of_messages(source.batch_size)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
    else {
        return (0, None);
    };
    let messages = received.messages.unwrap_or_default();
    if messages.is_empty() {
        return (0, None);
    }
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let attributes: std::collections::BTreeMap<String, String> = m
                .attributes
                .iter()
                .flatten()
                .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
                .collect();
            serde_json::json!({
                "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body,
                "attributes": attributes, "messageAttributes": {}, "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs", "eventSourceARN": source.arn, "awsRegion": "us-east-1",
            })
        })
        .collect();
    let outcome = function
        .invoke(serde_json::json!({ "Records": records }).to_string())
        .await;
    let failed: std::collections::BTreeSet<String> = match &outcome {
        Outcome::Response(answer) => answer["batchItemFailures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
            .collect(),
        _ => messages.iter().filter_map(|m| m.message_id.clone()).collect(),
    };
    let done: Vec<DeleteMessageBatchRequestEntry> = messages
        .iter()
        .filter(|m| m.message_id.as_ref().is_some_and(|id| !failed.contains(id)))
        .enumerate()
        .map(|(n, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(n.to_string())
                .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                .build()
                .expect("id and receipt handle are set")
        })
        .collect();
    let acknowledged = done.len();
    if !done.is_empty() {
        source
            .sqs
            .delete_message_batch()
            .queue_url(source.url)
            .set_entries(Some(done))
            .send()
            .await
            .expect("the queue deletes what was handled");
    }
    (acknowledged, Some(outcome))
}
