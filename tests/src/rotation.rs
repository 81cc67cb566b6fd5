//! Harness of the rotation storm and fault tests: the stores under test (file, moto's Secrets
//! Manager, the server from `test_support::moto`) and contender processes
//! (`rotation-contender`), each with its own `TokenSource` and cache.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keap_relay::store::SecretStore;
use keap_relay::store::file::FileStore;
use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_relay::token::TokenSettings;
use keap_relay::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use test_support::moto::sm_client;

/// Which store a test (and its contenders) use, in a form that fits on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    File(PathBuf),
    SecretsManager { endpoint: String },
}

impl StoreSpec {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("file", dir)) => Ok(StoreSpec::File(dir.into())),
            Some(("sm", endpoint)) => Ok(StoreSpec::SecretsManager {
                endpoint: endpoint.into(),
            }),
            _ => Err(format!("store must be file:<dir> or sm:<endpoint>, not {text:?}")),
        }
    }

    pub fn to_arg(&self) -> String {
        match self {
            StoreSpec::File(dir) => format!("file:{}", dir.display()),
            StoreSpec::SecretsManager { endpoint } => format!("sm:{endpoint}"),
        }
    }

    pub fn open(&self) -> Arc<dyn SecretStore> {
        match self {
            StoreSpec::File(dir) => Arc::new(FileStore::new(dir)),
            StoreSpec::SecretsManager { endpoint } => Arc::new(SecretsManagerStore::new(sm_client(endpoint))),
        }
    }

    /// Versions the secret holds (all of them, labelled or not).
    pub async fn version_count(&self, secret_id: &str) -> usize {
        match self {
            StoreSpec::File(dir) => FileStore::new(dir).version_ids(secret_id).expect("list versions").len(),
            StoreSpec::SecretsManager { endpoint } => sm_client(endpoint)
                .list_secret_version_ids()
                .secret_id(secret_id)
                .include_deprecated(true)
                .send()
                .await
                .expect("list versions")
                .versions()
                .len(),
        }
    }
}

/// Timings of the contenders: short, in production's proportions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ContenderTimings {
    pub lease_ms: u64,
    pub keap_timeout_ms: u64,
    pub commit_allowance_ms: u64,
    pub margin_s: u64,
}

impl Default for ContenderTimings {
    fn default() -> Self {
        Self {
            lease_ms: 4000,
            keap_timeout_ms: 1500,
            commit_allowance_ms: 1500,
            margin_s: 60,
        }
    }
}

impl ContenderTimings {
    pub fn settings(&self) -> TokenSettings {
        TokenSettings {
            access_margin: Duration::from_secs(self.margin_s),
            lease_duration: Duration::from_millis(self.lease_ms),
            keap_timeout: Duration::from_millis(self.keap_timeout_ms),
            commit_allowance: Duration::from_millis(self.commit_allowance_ms),
            clock_skew: Duration::from_millis(100),
            store_call_timeout: Duration::from_millis(700),
            late_commit_grace: Duration::from_millis(3000),
            backoff_min: Duration::from_millis(2000),
            backoff_max: Duration::from_secs(30),
            poll_min: Duration::from_millis(10),
            poll_max: Duration::from_millis(200),
            store_attempts: 5,
            orphan_grace: Duration::from_millis(500),
        }
    }
}

/// Everything a contender process needs, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContenderArgs {
    pub store: String,
    pub secret_id: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub callers: usize,
    pub timings: ContenderTimings,
    /// Fill the cache (one `credential()`) before reporting ready.
    pub warm: bool,
    /// While this file exists, each Keap call first waits `pause_ms` (to kill a lease holder
    /// before its request leaves).
    pub pause_marker: Option<PathBuf>,
    pub pause_ms: u64,
}

/// What a contender prints: one `Ready`, one `Call` per caller, one `Done`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContenderLine {
    Ready {
        process_id: String,
    },
    Call {
        ok: bool,
        fingerprint: Option<String>,
        generation: Option<u64>,
        error: Option<String>,
        elapsed_ms: u64,
    },
    Done {
        store_calls: u64,
        store_writes: u64,
        created: u64,
    },
}

/// A short hash that tells tokens apart without printing them.
pub fn fingerprint(token: &SecretString) -> String {
    hex::encode(&Sha256::digest(token.expose_secret().as_bytes())[..8])
}

/// One contender process.
pub struct Contender {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<ContenderLine>,
    pub process_id: String,
}

impl Contender {
    /// `program` is the `rotation-contender` binary (`env!("CARGO_BIN_EXE_rotation-contender")`
    /// in an integration test).
    pub fn spawn(program: &Path, args: &ContenderArgs) -> Contender {
        let mut child = Command::new(program)
            .arg(serde_json::to_string(args).expect("args serialize"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rotation-contender");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<ContenderLine>(&line) {
                    Ok(parsed) => {
                        if send.send(parsed).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("contender: {line}"),
                }
            }
        });
        let stdin = child.stdin.take();
        Contender {
            child,
            stdin,
            lines,
            process_id: String::new(),
        }
    }

    fn next_line(&self, deadline: Instant) -> Option<ContenderLine> {
        self.lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }

    pub fn wait_ready(&mut self, deadline: Instant) {
        match self.next_line(deadline) {
            Some(ContenderLine::Ready { process_id }) => self.process_id = process_id,
            other => panic!("contender not ready: {other:?}"),
        }
    }

    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(b"go\n")
            .and_then(|_| stdin.flush())
            .expect("signal contender");
    }

    /// The caller lines and the summary; `None` when the process died first.
    pub fn collect(&mut self, deadline: Instant) -> Option<(Vec<ContenderLine>, ContenderLine)> {
        let mut calls = Vec::new();
        loop {
            match self.next_line(deadline)? {
                done @ ContenderLine::Done { .. } => {
                    let _ = self.child.wait();
                    return Some((calls, done));
                }
                call => calls.push(call),
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `processes` contenders, waits until all are ready.
pub fn spawn_contenders(program: &Path, args: &ContenderArgs, processes: usize) -> Vec<Contender> {
    let mut contenders: Vec<Contender> = (0..processes).map(|_| Contender::spawn(program, args)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for contender in &mut contenders {
        contender.wait_ready(deadline);
    }
    contenders
}

/// Outcome of a storm, summed over the processes.
#[derive(Debug, Default)]
pub struct StormOutcome {
    pub calls: Vec<ContenderLine>,
    pub store_calls: u64,
    pub store_writes: u64,
    pub created: u64,
    /// Time from "go" until the last caller answered.
    pub elapsed: Duration,
}

impl StormOutcome {
    pub fn fingerprints(&self) -> std::collections::BTreeSet<Option<String>> {
        self.calls
            .iter()
            .map(|c| match c {
                ContenderLine::Call { fingerprint, .. } => fingerprint.clone(),
                _ => None,
            })
            .collect()
    }

    pub fn errors(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                ContenderLine::Call { error: Some(error), .. } => Some(error.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Signals every contender at once and gathers what they report.
pub async fn unleash(contenders: Vec<Contender>) -> StormOutcome {
    tokio::task::spawn_blocking(move || {
        let mut contenders = contenders;
        let started = Instant::now();
        for contender in &mut contenders {
            contender.go();
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut outcome = StormOutcome::default();
        for contender in &mut contenders {
            let (calls, done) = contender.collect(deadline).expect("a contender died or hung");
            outcome.calls.extend(calls);
            if let ContenderLine::Done {
                store_calls,
                store_writes,
                created,
            } = done
            {
                outcome.store_calls += store_calls;
                outcome.store_writes += store_writes;
                outcome.created += created;
            }
        }
        outcome.elapsed = outcome
            .calls
            .iter()
            .filter_map(|c| match c {
                ContenderLine::Call { elapsed_ms, .. } => Some(Duration::from_millis(*elapsed_ms)),
                _ => None,
            })
            .max()
            .unwrap_or_else(|| started.elapsed());
        outcome
    })
    .await
    .expect("storm thread")
}

/// A sandbox, a store holding a first authorization, and contender arguments aimed at both.
pub struct StormSetup {
    pub sandbox: keap_sandbox::Sandbox,
    pub store: StoreSpec,
    pub secret_id: String,
    pub versions_before: usize,
    pub args: ContenderArgs,
}

impl StormSetup {
    /// `expired`: the stored access token's expiry is in the past and the sandbox has expired
    /// it too, so every contender must refresh.
    pub async fn new(store: StoreSpec, policy: keap_sandbox::ReusePolicy, expired: bool) -> StormSetup {
        let sandbox = keap_sandbox::Sandbox::start(keap_sandbox::SandboxConfig {
            reuse_policy: policy,
            ..Default::default()
        })
        .await
        .expect("sandbox");
        let secret_id = format!("storm-{}", uuid::Uuid::new_v4());
        let minted = test_support::grant::minted(&sandbox);
        let grant = keap_relay::token::TokenGrant {
            expires_in: if expired { Duration::ZERO } else { minted.expires_in },
            ..minted
        };
        let args = ContenderArgs {
            store: store.to_arg(),
            secret_id: secret_id.clone(),
            token_url: sandbox.token_url(),
            client_id: keap_sandbox::DEFAULT_CLIENT_ID.into(),
            client_secret: keap_sandbox::DEFAULT_CLIENT_SECRET.into(),
            callers: 8,
            timings: ContenderTimings::default(),
            warm: false,
            pause_marker: None,
            pause_ms: 0,
        };
        let source = args.token_source(store.open());
        use keap_relay::token::Connection;
        source
            .connect(grant, false)
            .await
            .expect("store the first authorization");
        if expired {
            sandbox.expire_access_tokens();
        }
        sandbox.reset_stats();
        let versions_before = store.version_count(&secret_id).await;
        StormSetup {
            sandbox,
            store,
            secret_id,
            versions_before,
            args,
        }
    }

    pub async fn stored(&self) -> keap_relay::token::TokenState {
        let current = self
            .store
            .open()
            .read_current(&self.secret_id)
            .await
            .expect("read")
            .expect("a current version");
        keap_relay::token::TokenState::from_json(current.value.expose_secret()).expect("state parses")
    }

    pub async fn new_versions(&self) -> usize {
        self.store.version_count(&self.secret_id).await - self.versions_before
    }
}

impl ContenderArgs {
    /// The contender's client for the sandbox's token endpoint.
    pub fn oauth_client(&self) -> keap_relay::keap::oauth::OAuthClient {
        keap_relay::keap::oauth::OAuthClient::new(
            reqwest::Client::new(),
            url::Url::parse(&self.token_url).expect("token url"),
            url::Url::parse("http://127.0.0.1/unused-authorize").expect("url"),
            self.client_id.clone(),
            SecretString::from(self.client_secret.clone()),
            self.timings.settings().keap_timeout,
        )
    }

    /// The `TokenSource` a contender builds, over `store`.
    pub fn token_source(&self, store: Arc<dyn SecretStore>) -> keap_relay::token::TokenSource {
        let oauth = Arc::new(self.oauth_client());
        keap_relay::token::TokenSource::new(store, self.secret_id.clone(), oauth, self.timings.settings())
            .expect("settings")
    }
}
