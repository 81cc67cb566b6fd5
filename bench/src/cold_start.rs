//! Cold start: from just before `spawn` of a function binary to its first `next` poll of the
//! Runtime API emulator, over many fresh processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::runtime_api::{ApiEvent, RuntimeApi};
use crate::stats::{Summary, ms};
use crate::{BenchError, Result};

/// Starts discarded before measuring (page cache, first exec of a fresh build).
const WARMUP_STARTS: usize = 2;
const FIRST_POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// A function process; killed when dropped.
#[derive(Debug)]
pub struct FunctionProcess {
    child: Child,
    stderr: PathBuf,
}

impl FunctionProcess {
    /// Starts `binary` with exactly `env` (nothing inherited). Logs (stdout) are discarded as
    /// Lambda's log pipe would take them; stderr goes to `stderr` for error reports.
    pub fn spawn(binary: &Path, env: &[(String, String)], stderr: &Path) -> Result<FunctionProcess> {
        let stderr_file = std::fs::File::create(stderr).map_err(BenchError::io_at("create", stderr))?;
        let child = Command::new(binary)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file)
            .spawn()
            .map_err(BenchError::io_at("start", binary))?;
        Ok(FunctionProcess {
            child,
            stderr: stderr.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmHWM` and `VmRSS` of the process, in KiB.
    pub fn memory_kib(&self) -> Result<MemoryKib> {
        let path = PathBuf::from(format!("/proc/{}/status", self.pid()));
        let status = std::fs::read_to_string(&path).map_err(BenchError::io_at("read", &path))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(MemoryKib {
            hwm: field("VmHWM:"),
            rss: field("VmRSS:"),
        })
    }

    /// Why it failed: exit status (if it exited) and the end of its stderr.
    pub fn diagnosis(&mut self) -> String {
        let exited = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited with {status}"),
            _ => "still running".to_owned(),
        };
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: String = stderr
            .chars()
            .rev()
            .take(800)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{exited}; stderr: {}", tail.trim())
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryKib {
    pub hwm: u64,
    pub rss: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdStart {
    pub function: String,
    pub binary: String,
    /// Spawn to first `next` poll.
    pub first_poll: Summary,
    /// Median peak RSS (`VmHWM`) at the first poll, in KiB.
    pub hwm_at_first_poll_kib: u64,
}

/// Starts `binary` `starts` times (after a short warm-up) and times each first poll.
pub async fn measure(
    api: &mut RuntimeApi,
    function: &str,
    binary: &Path,
    env: &[(String, String)],
    starts: usize,
    scratch: &Path,
) -> Result<ColdStart> {
    let stderr = scratch.join(format!("{function}.stderr"));
    let mut samples = Vec::with_capacity(starts);
    let mut hwm = Vec::with_capacity(starts);
    for round in 0..WARMUP_STARTS + starts {
        api.reset();
        let spawned = Instant::now();
        let mut process = FunctionProcess::spawn(binary, env, &stderr)?;
        let polled = loop {
            match api.next_event(FIRST_POLL_TIMEOUT).await {
                Some(ApiEvent::Next { at }) => break at,
                Some(ApiEvent::InitError { body }) => {
                    return Err(BenchError::Failed(format!(
                        "{function}: init error {body}; {}",
                        process.diagnosis()
                    )));
                }
                Some(_) => continue,
                None => {
                    return Err(BenchError::Failed(format!(
                        "{function}: no first poll within {FIRST_POLL_TIMEOUT:?}; {}",
                        process.diagnosis()
                    )));
                }
            }
        };
        let memory = process.memory_kib()?;
        process.stop();
        if round >= WARMUP_STARTS {
            samples.push(ms(polled.saturating_duration_since(spawned)));
            hwm.push(memory.hwm);
        }
    }
    hwm.sort_unstable();
    Ok(ColdStart {
        function: function.to_owned(),
        binary: binary.display().to_string(),
        first_poll: Summary::of_ms(&samples),
        hwm_at_first_poll_kib: hwm.get(hwm.len() / 2).copied().unwrap_or(0),
    })
}

/// Median time of each init step of the signup function (`init-probe`, fresh process each run).
pub fn init_breakdown(probe: &Path, env: &[(String, String)], runs: usize) -> Result<BTreeMap<String, f64>> {
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..runs {
        let output = Command::new(probe)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .map_err(BenchError::io_at("run", probe))?;
        if !output.status.success() {
            return Err(BenchError::Failed(format!(
                "init-probe {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        // The last line is the probe's; tracing may have written before it.
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().last().unwrap_or_default();
        let steps: BTreeMap<String, f64> = serde_json::from_str(line).map_err(BenchError::json("init-probe output"))?;
        for (step, value) in steps {
            samples.entry(step).or_default().push(value);
        }
    }
    Ok(samples
        .into_iter()
        .map(|(step, values)| (step, Summary::of_ms(&values).p50_ms))
        .collect())
}
