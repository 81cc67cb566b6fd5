//! The rotation storm: N contender processes (`storm-contender`, one `TokenSource` each,
//! production timings) over one file store find the stored access token expired and all ask
//! for a credential at the same wall-clock instant.
//!
//! Measured: calls to Keap's token endpoint, secret versions written, and the time from that
//! instant until the last contender holds a usable token, beside the round-trip baseline
//! (one Keap token call plus one store read, see [`crate::probes`]).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keap_relay::store::SecretStore;
use keap_relay::store::file::FileStore;
use keap_sandbox::Sandbox;
use serde::{Deserialize, Serialize};

use crate::seed;
use crate::stats::Summary;
use crate::{BenchError, Result};

/// Arguments of one contender (one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContenderArgs {
    pub store_dir: PathBuf,
    pub secret_id: String,
    pub token_url: String,
}

/// What a contender prints, one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContenderLine {
    Ready,
    Done {
        ok: bool,
        error: Option<String>,
        /// Short hash of the access token it got (tells tokens apart without showing them).
        fingerprint: Option<String>,
        generation: Option<u64>,
        started_unix_ns: u64,
        finished_unix_ns: u64,
        store_calls: u64,
        store_writes: u64,
        versions_created: u64,
    },
}

/// Nanoseconds since the epoch (u64 lasts until 2554; serde's tagged enums refuse u128).
pub fn unix_ns(time: SystemTime) -> u64 {
    u64::try_from(time.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Serialize)]
pub struct StormRun {
    pub contenders: usize,
    /// Repetition of this size (1-based).
    pub round: usize,
    pub ok: usize,
    pub errors: Vec<String>,
    /// Distinct access tokens the contenders ended with (1 when all agree).
    pub distinct_tokens: usize,
    /// Requests to Keap's `/token` (refreshes served plus refused).
    pub keap_token_calls: u64,
    pub refreshes_served: u64,
    /// New versions of the token secret.
    pub versions_written: usize,
    pub store_calls: u64,
    pub store_writes: u64,
    /// From the common start instant until the last contender had its token.
    pub last_proceeds_ms: f64,
    /// Per contender, start instant to token.
    pub per_contender: Summary,
    /// How late the latest contender actually started (scheduling on a loaded machine).
    pub start_skew_ms: f64,
}

struct Contender {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<ContenderLine>,
}

impl Contender {
    fn spawn(program: &Path, args: &ContenderArgs) -> Result<Contender> {
        let arg = serde_json::to_string(args).map_err(BenchError::json("contender arguments"))?;
        let mut child = Command::new(program)
            .arg(arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(BenchError::io_at("start", program))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Failed("contender stdout".into()))?;
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                match serde_json::from_str::<ContenderLine>(&line) {
                    Ok(parsed) => {
                        if send.send(parsed).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("storm-contender: {line}"),
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(Contender { child, stdin, lines })
    }

    fn line(&self, deadline: Instant) -> Result<ContenderLine> {
        self.lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| BenchError::Failed("a storm contender died or hung".into()))
    }

    fn go(&mut self, at_unix_ns: u64) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| BenchError::Failed("contender stdin closed".into()))?;
        stdin
            .write_all(format!("{at_unix_ns}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(BenchError::io("signal a contender"))
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One storm of `contenders` processes on a fresh secret in `store_dir`.
pub async fn run(
    sandbox: &Sandbox,
    program: &Path,
    store_dir: &Path,
    contenders: usize,
    round: usize,
) -> Result<StormRun> {
    let store = FileStore::new(store_dir);
    let secret_id = format!("storm-{contenders}-{}", uuid::Uuid::new_v4().simple());
    // Stored with its expiry now: every contender must refresh before use.
    seed::connect(
        Arc::new(store.clone()) as Arc<dyn SecretStore>,
        &secret_id,
        sandbox,
        Some(Duration::ZERO),
    )
    .await?;
    sandbox.expire_access_tokens();
    let versions_before = store
        .version_ids(&secret_id)
        .map_err(|e| BenchError::Failed(e.to_string()))?
        .len();
    sandbox.reset_stats();

    let args = ContenderArgs {
        store_dir: store_dir.to_owned(),
        secret_id: secret_id.clone(),
        token_url: sandbox.token_url(),
    };
    let program = program.to_owned();
    let lines = tokio::task::spawn_blocking(move || -> Result<(Vec<ContenderLine>, u64)> {
        let mut processes = (0..contenders)
            .map(|_| Contender::spawn(&program, &args))
            .collect::<Result<Vec<_>>>()?;
        let ready_by = Instant::now() + Duration::from_secs(120);
        for process in &processes {
            match process.line(ready_by)? {
                ContenderLine::Ready => {}
                other => {
                    return Err(BenchError::Failed(format!("contender not ready: {other:?}")));
                }
            }
        }
        // Far enough ahead that every process has its instant before it comes.
        let lead = Duration::from_millis(200) + Duration::from_millis(2) * contenders as u32;
        let start = unix_ns(SystemTime::now() + lead);
        for process in &mut processes {
            process.go(start)?;
        }
        let done_by = Instant::now() + Duration::from_secs(120);
        let lines = processes
            .iter()
            .map(|process| process.line(done_by))
            .collect::<Result<Vec<_>>>()?;
        Ok((lines, start))
    })
    .await
    .map_err(|e| BenchError::Failed(format!("storm thread: {e}")))?;
    let (lines, start) = lines?;

    let stats = sandbox.stats();
    let mut run = StormRun {
        contenders,
        round,
        ok: 0,
        errors: Vec::new(),
        distinct_tokens: 0,
        keap_token_calls: stats.calls_to("POST", "/token") as u64,
        refreshes_served: stats.refreshes_served,
        versions_written: store
            .version_ids(&secret_id)
            .map_err(|e| BenchError::Failed(e.to_string()))?
            .len()
            - versions_before,
        store_calls: 0,
        store_writes: 0,
        last_proceeds_ms: 0.0,
        per_contender: Summary::of_ms(&[]),
        start_skew_ms: 0.0,
    };
    let mut tokens = BTreeSet::new();
    let mut waits = Vec::new();
    let to_ms = |ns: u64| ns as f64 / 1e6;
    for line in lines {
        if let ContenderLine::Done {
            ok,
            error,
            fingerprint,
            started_unix_ns,
            finished_unix_ns,
            store_calls,
            store_writes,
            ..
        } = line
        {
            run.ok += usize::from(ok);
            run.errors.extend(error);
            tokens.extend(fingerprint);
            run.store_calls += store_calls;
            run.store_writes += store_writes;
            waits.push(to_ms(finished_unix_ns.saturating_sub(start)));
            run.start_skew_ms = run.start_skew_ms.max(to_ms(started_unix_ns.saturating_sub(start)));
        }
    }
    run.distinct_tokens = tokens.len();
    run.per_contender = Summary::of_ms(&waits);
    run.last_proceeds_ms = run.per_contender.max_ms;
    Ok(run)
}
