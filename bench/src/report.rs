//! `results/latest.json` (every figure, stable keys) and `results/latest.md` (the tables).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cold_start::ColdStart;
use crate::cost::CostModel;
use crate::invocations::InvocationRun;
use crate::probes::{RefreshCalls, RoundTrips};
use crate::steady::SteadyState;
use crate::storm::StormRun;
use crate::{BenchError, Result};

/// A measurement, or why it could not be taken (the rest of the report still stands).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Section<T> {
    Measured(T),
    Failed { error: String },
}

impl<T> Section<T> {
    pub fn from(result: Result<T>) -> Section<T> {
        match result {
            Ok(value) => Section::Measured(value),
            Err(error) => Section::Failed {
                error: error.to_string(),
            },
        }
    }

    pub fn ok(&self) -> Option<&T> {
        match self {
            Section::Measured(value) => Some(value),
            Section::Failed { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub generated_at: String,
    pub mode: String,
    pub git_commit: String,
    pub machine: String,
    pub rustc: String,
    /// `relay-bench` alone (cold starts, invocations, signups, storms).
    pub measuring_seconds: f64,
    /// The whole `run.sh`, builds and criterion included.
    pub total_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdStartRow {
    #[serde(flatten)]
    pub measured: ColdStart,
    pub init_work: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdStarts {
    pub functions: Vec<ColdStartRow>,
    /// Median ms of each init step of the signup function, in order of execution.
    pub signup_init_steps: Section<Vec<(String, f64)>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Storm {
    pub store: String,
    pub round_trips: RoundTrips,
    /// One Keap token call plus one store read (p50s), the reference of the 100 ms target.
    pub baseline_ms: f64,
    pub runs: Vec<StormRun>,
}

/// One criterion benchmark's estimate (ns).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CriterionEstimate {
    pub id: String,
    pub median_ns: f64,
    pub mean_ns: f64,
    pub median_low_ns: f64,
    pub median_high_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Headline {
    pub figure: String,
    pub measured: String,
    pub target: String,
    /// `None` when there is no target or no measurement.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub meta: Meta,
    pub headline: Vec<Headline>,
    pub cold_start: Section<ColdStarts>,
    pub steady_state: Section<SteadyState>,
    pub signup_binary: Section<InvocationRun>,
    pub storm: Section<Storm>,
    pub refresh: Section<RefreshCalls>,
    /// As `run.sh` wrote it: artifact sizes and build times.
    pub build: serde_json::Value,
    pub criterion: Vec<CriterionEstimate>,
    pub cost: Section<CostModel>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Criterion estimates written since `since` under `dir` (`<id>/new/estimates.json`).
pub fn criterion_estimates(dir: &Path, since: SystemTime) -> Vec<CriterionEstimate> {
    #[derive(Deserialize)]
    struct Interval {
        lower_bound: f64,
        upper_bound: f64,
    }
    #[derive(Deserialize)]
    struct Estimate {
        point_estimate: f64,
        confidence_interval: Interval,
    }
    #[derive(Deserialize)]
    struct Estimates {
        mean: Estimate,
        median: Estimate,
    }
    #[derive(Deserialize)]
    struct Benchmark {
        full_id: String,
    }
    let mut found = Vec::new();
    let mut pending: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name == "new") {
                    let estimates = path.join("estimates.json");
                    let fresh = std::fs::metadata(&estimates)
                        .and_then(|m| m.modified())
                        .is_ok_and(|at| at >= since);
                    if let (true, Some(e), Some(b)) = (
                        fresh,
                        read_json::<Estimates>(&estimates),
                        read_json::<Benchmark>(&path.join("benchmark.json")),
                    ) {
                        found.push(CriterionEstimate {
                            id: b.full_id,
                            median_ns: e.median.point_estimate,
                            mean_ns: e.mean.point_estimate,
                            median_low_ns: e.median.confidence_interval.lower_bound,
                            median_high_ns: e.median.confidence_interval.upper_bound,
                        });
                    }
                } else {
                    pending.push(path);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

fn f1(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.1}")
    } else {
        "n/a".into()
    }
}

fn f2(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "n/a".into()
    }
}

/// Sizes in decimal megabytes, the unit of the targets (30 MB, 5 MB).
pub fn mb_of_kib(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 * 1024.0 / 1e6)
}

pub fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

fn usd(value: f64) -> String {
    if value == 0.0 {
        "0".into()
    } else if value < 0.01 {
        format!("{value:.6}")
    } else {
        format!("{value:.4}")
    }
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "-",
    }
}

fn time_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

impl Report {
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(BenchError::io_at("create", dir))?;
        let json = serde_json::to_string_pretty(self).map_err(BenchError::json("serialize the report"))?;
        let json_path = dir.join("latest.json");
        std::fs::write(&json_path, json + "\n").map_err(BenchError::io_at("write", &json_path))?;
        let md_path = dir.join("latest.md");
        std::fs::write(&md_path, self.markdown()).map_err(BenchError::io_at("write", &md_path))
    }

    pub fn headline_markdown(&self) -> String {
        let mut out = String::from("| figure | measured | target | met |\n|---|---|---|---|\n");
        for h in &self.headline {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                h.figure,
                h.measured,
                h.target,
                mark(h.met)
            );
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.meta;
        let _ = writeln!(out, "# keap-relay benchmark results\n");
        let took = match m.total_seconds {
            Some(total) => format!("{total:.0} s in all, {:.0} s of it measuring", m.measuring_seconds),
            None => format!("{:.0} s", m.measuring_seconds),
        };
        let _ = writeln!(
            out,
            "Generated {} by `./bench/run.sh{}` at commit `{}` on {} ({}); the run took {took}. \
             Loopback against the in-process Keap sandbox; timings on a shared machine are noisy, \
             compare runs by their medians. See `bench/README.md` for what each figure means.\n",
            m.generated_at,
            if m.mode == "quick" { " --quick" } else { "" },
            m.git_commit,
            m.machine,
            m.rustc,
        );
        let _ = writeln!(out, "## Headline\n\n{}", self.headline_markdown());
        self.cold_start_md(&mut out);
        self.steady_md(&mut out);
        self.binary_md(&mut out);
        self.storm_md(&mut out);
        self.refresh_md(&mut out);
        self.build_md(&mut out);
        self.criterion_md(&mut out);
        self.cost_md(&mut out);
        out
    }

    fn cold_start_md(&self, out: &mut String) {
        let Some(cold) = heading(out, "Cold start: process start to first `next` poll", &self.cold_start) else {
            return;
        };
        let rows = &cold.functions;
        let n = rows.first().map_or(0, |r| r.measured.first_poll.n);
        let _ = writeln!(
            out,
            "Release binaries (native x86_64 build of the same code), {n} starts each, deployment environment (template.yaml defaults, Secrets Manager store, dummy credentials).\n"
        );
        let _ = writeln!(
            out,
            "| function | p50 | p90 | p99 | min | max | peak RSS at first poll |\n|---|---|---|---|---|---|---|"
        );
        for row in rows {
            let s = &row.measured.first_poll;
            let _ = writeln!(
                out,
                "| {} | {} ms | {} ms | {} ms | {} ms | {} ms | {} |",
                row.measured.function,
                f2(s.p50_ms),
                f2(s.p90_ms),
                f2(s.p99_ms),
                f2(s.min_ms),
                f2(s.max_ms),
                mb_of_kib(row.measured.hwm_at_first_poll_kib)
            );
        }
        let _ = writeln!(
            out,
            "\nInit work before the first poll (from `main.rs` and `shared/src/app.rs`; no network call is made):\n"
        );
        for row in rows.iter().filter(|r| !r.init_work.is_empty()) {
            let _ = writeln!(out, "- **{}**: {}", row.measured.function, row.init_work.join("; "));
        }
        match &cold.signup_init_steps {
            Section::Measured(steps) => {
                let total: f64 = steps.iter().map(|(_, ms)| ms).sum();
                let _ = writeln!(
                    out,
                    "\nWhere signup's init goes (`init-probe`: the same steps timed one by one in fresh processes, medians; {} ms in all, the rest of the cold start is process start, the tokio runtime and lambda_runtime):\n",
                    f2(total)
                );
                let _ = writeln!(out, "| step | ms |\n|---|---|");
                for (step, ms) in steps {
                    let _ = writeln!(out, "| {step} | {} |", f2(*ms));
                }
            }
            Section::Failed { error } => {
                let _ = writeln!(out, "\nInit breakdown not measured: {error}");
            }
        }
        out.push('\n');
    }

    fn steady_md(&self, out: &mut String) {
        let Some(s) = heading(out, "Steady-state signup (in-process handler)", &self.steady_state) else {
            return;
        };
        let _ = writeln!(
            out,
            "`signup::handler::handle` with the production wiring (OAuth token source, welcome tag by name, one extra tag), {} signups with distinct emails, {} answered 2xx.\n",
            s.signups, s.succeeded
        );
        let _ = writeln!(out, "| | p50 | p90 | p99 | max |\n|---|---|---|---|---|");
        for (name, sum) in [
            ("handler, Keap on loopback included", &s.handler),
            ("baseline: the same 2 Keap requests, bare", &s.keap_baseline),
            ("**relay's own time** (paired difference)", &s.own),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {} ms | {} ms | {} ms | {} ms |",
                f2(sum.p50_ms),
                f2(sum.p90_ms),
                f2(sum.p99_ms),
                f2(sum.max_ms)
            );
        }
        let _ = writeln!(
            out,
            "\nKeap calls per signup: **{}** (measured signups), first signup of a process: {}",
            f2(s.keap_calls_per_signup),
            calls(&s.first_signup_keap_calls)
        );
        let _ = writeln!(out, "\n| Keap call (measured signups) | count |\n|---|---|");
        for (call, count) in &s.keap_calls {
            let _ = writeln!(out, "| `{call}` | {count} |");
        }
        let _ = writeln!(
            out,
            "\nSecrets Manager calls per signup while the cached token is valid: **{}** ({} in total over {} signups); the first signup of a process reads {} (app secret and token state).\n",
            f2(s.store_calls_per_signup),
            s.store_calls_measured.total(),
            s.signups,
            s.store_calls_first_signup.total()
        );
    }

    fn binary_md(&self, out: &mut String) {
        let Some(r) = heading(out, "Signup binary under the Runtime API emulator", &self.signup_binary) else {
            return;
        };
        let _ = writeln!(
            out,
            "Release `signup` binary, {} invocations one after another (store: {}), {} answered 2xx{}.\n",
            r.invocations,
            r.store,
            r.succeeded,
            if r.failures.is_empty() {
                String::new()
            } else {
                format!("; failures: {}", r.failures.join(", "))
            }
        );
        let _ = writeln!(out, "| figure | value |\n|---|---|");
        let _ = writeln!(
            out,
            "| peak memory (VmHWM) after the last invocation | **{}** |",
            mb_of_kib(r.memory_kib.hwm)
        );
        let _ = writeln!(
            out,
            "| resident (VmRSS) after the last invocation | {} |",
            mb_of_kib(r.memory_kib.rss)
        );
        let t = &r.round_trip;
        let _ = writeln!(
            out,
            "| event out to response in (p50 / p99) | {} ms / {} ms |\n",
            f2(t.p50_ms),
            f2(t.p99_ms)
        );
    }

    fn storm_md(&self, out: &mut String) {
        let Some(storm) = heading(out, "Rotation storm", &self.storm) else {
            return;
        };
        let rt = &storm.round_trips;
        let timings = keap_relay::token::TokenSettings::default();
        let _ = writeln!(
            out,
            "Contender processes (one `TokenSource` each, production timings: lease {} s, polls {} ms to {} s with jitter) over the {} find the stored access token expired and ask for a credential at the same instant. \
             Round-trip baseline: one Keap token call {} ms + one store read {} ms = **{} ms** (p50s; a store write, put + swap, is {} ms).\n",
            timings.lease_duration.as_secs(),
            timings.poll_min.as_millis(),
            timings.poll_max.as_secs(),
            storm.store,
            f2(rt.keap_token_call.p50_ms),
            f2(rt.store_read.p50_ms),
            f2(storm.baseline_ms),
            f2(rt.store_write.p50_ms)
        );
        let _ = writeln!(
            out,
            "| contenders | round | Keap token calls | versions written | last contender proceeds | within baseline + 100 ms | p50 contender | start skew | errors | distinct tokens |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for run in &storm.runs {
            let within = run.last_proceeds_ms <= storm.baseline_ms + 100.0;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} ms | {} | {} ms | {} ms | {} | {} |",
                run.contenders,
                run.round,
                run.keap_token_calls,
                run.versions_written,
                f1(run.last_proceeds_ms),
                mark(Some(within)),
                f1(run.per_contender.p50_ms),
                f1(run.start_skew_ms),
                run.contenders - run.ok,
                run.distinct_tokens
            );
        }
        out.push('\n');
    }

    fn refresh_md(&self, out: &mut String) {
        let Some(r) = heading(out, "Scheduled refresh: store and Keap calls per run", &self.refresh) else {
            return;
        };
        let _ = writeln!(
            out,
            "| run | reads | puts | swaps | versions created | Keap token calls |\n|---|---|---|---|---|---|"
        );
        let _ = writeln!(
            out,
            "| nothing due | {} | {} | {} | {} | 0 |",
            r.not_due.read_current + r.not_due.read_version,
            r.not_due.put,
            r.not_due.swap,
            r.not_due.created
        );
        let _ = writeln!(
            out,
            "| rotation | {} | {} | {} | {} | {} |\n",
            r.rotation.read_current + r.rotation.read_version,
            r.rotation.put,
            r.rotation.swap,
            r.rotation.created,
            r.rotation_keap_token_calls
        );
    }

    fn build_md(&self, out: &mut String) {
        let _ = writeln!(out, "## Artifacts and build\n");
        let b = &self.build;
        if let Some(artifacts) = b["artifacts"].as_array().filter(|a| !a.is_empty()) {
            let _ = writeln!(
                out,
                "| function | bootstrap | zip | machine | source | built |\n|---|---|---|---|---|---|"
            );
            for a in artifacts {
                let text = |key: &str| a[key].as_str().unwrap_or("?").to_owned();
                let _ = writeln!(
                    out,
                    "| {} | {} | **{}** | {} | {} | {} |",
                    text("function"),
                    mb(a["bootstrap_bytes"].as_f64().unwrap_or(f64::NAN)),
                    mb(a["zip_bytes"].as_f64().unwrap_or(f64::NAN)),
                    text("machine"),
                    text("source"),
                    text("built_at")
                );
            }
        } else {
            let _ = writeln!(
                out,
                "No arm64 artifacts found (run `./bench/run.sh` without `--quick` to build them)."
            );
        }
        out.push('\n');
        for (key, label) in [
            (
                "arm64_build",
                "arm64 release build (`cargo lambda build --release --arm64`, 4 functions)",
            ),
            ("native_build", "native release build (functions + bench harness)"),
        ] {
            let line = build_line(&b[key]).unwrap_or_else(|| {
                format!(
                    "not timed in this run ({})",
                    b[key]["note"].as_str().unwrap_or("quick mode")
                )
            });
            let _ = writeln!(out, "- {label}: {line}");
        }
        out.push('\n');
    }

    fn criterion_md(&self, out: &mut String) {
        let _ = writeln!(out, "## In-process micro benchmarks (criterion)\n");
        if self.criterion.is_empty() {
            let _ = writeln!(out, "No criterion results from this run.\n");
            return;
        }
        let _ = writeln!(
            out,
            "| benchmark | median | 95% CI of median | mean |\n|---|---|---|---|"
        );
        for e in &self.criterion {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} .. {} | {} |",
                e.id,
                time_ns(e.median_ns),
                time_ns(e.median_low_ns),
                time_ns(e.median_high_ns),
                time_ns(e.mean_ns)
            );
        }
        out.push('\n');
    }

    fn cost_md(&self, out: &mut String) {
        let Some(cost) = heading(out, "Cost model", &self.cost) else {
            return;
        };
        let p = &cost.prices;
        let a = &cost.assumptions;
        let _ = writeln!(
            out,
            "Prices (AWS public, us-east-1, assumed valid on {}): Lambda arm64 ${}/GB-s + ${}/1M requests; Secrets Manager ${}/secret/month + ${}/10k calls; SQS ${}/1M requests; HTTP API ${}/1M requests.\n",
            p.date,
            p.lambda_arm64_per_gb_second,
            p.lambda_per_million_requests,
            p.secrets_manager_per_secret_month,
            p.secrets_manager_per_10k_calls,
            p.sqs_per_million_requests,
            p.http_api_per_million_requests
        );
        let _ = writeln!(
            out,
            "Assumed, not measured: {} MB functions; Keap answers in {} ms and Secrets Manager in {} ms in production; {} refresh runs and {} rotations a month, every run a cold start; {} idle queue pollers with {} s long polls. \
             Measured: own time {} ms and {} Keap calls per signup, {} / {} Secrets Manager calls per warm / first signup, cold start {} ms (signup) and {} ms (refresh).\n",
            a.memory_mb,
            a.keap_call_ms,
            a.secrets_manager_call_ms,
            a.refresh_runs_per_month,
            a.rotations_per_month,
            a.idle_queue_pollers,
            a.long_poll_seconds,
            f2(cost.measured.signup_own_ms),
            f2(cost.measured.keap_calls_per_signup),
            f2(cost.measured.store_calls_per_warm_signup),
            f2(cost.measured.store_calls_first_signup),
            f1(cost.measured.signup_cold_start_ms),
            f1(cost.measured.refresh_cold_start_ms)
        );
        let _ = writeln!(
            out,
            "| scenario | invocations | billed ms each | GB-s | Lambda $ | SM calls | SM $ | SQS requests | SQS $ | HTTP API $ | total $ |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for l in &cost.lines {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** |",
                l.scenario,
                l.invocations,
                l.billed_ms_per_invocation,
                f2(l.lambda_gb_seconds),
                usd(l.lambda_usd),
                l.secrets_manager_calls,
                usd(l.secrets_manager_usd),
                l.sqs_requests,
                usd(l.sqs_usd),
                usd(l.http_api_usd),
                usd(l.total_usd)
            );
        }
        out.push('\n');
    }
}

/// "N s, M crates compiled"; when this run had nothing to compile, the last rebuild instead.
pub fn build_line(build: &serde_json::Value) -> Option<String> {
    let describe = |b: &serde_json::Value| {
        format!(
            "{:.0} s, {} crates compiled",
            b["seconds"].as_f64().unwrap_or(f64::NAN),
            b["crates_compiled"].as_u64().unwrap_or(0)
        )
    };
    let last = &build["last_rebuild"];
    match (build["crates_compiled"].as_u64(), last["at"].as_str()) {
        (Some(0), Some(at)) => Some(format!(
            "nothing to rebuild in this run; last rebuild {} ({at})",
            describe(last)
        )),
        (Some(_), _) => Some(describe(build)),
        (None, Some(at)) => Some(format!("not built in this run; last rebuild {} ({at})", describe(last))),
        (None, None) => None,
    }
}

/// Writes the heading, then hands out the measurement, or writes why there is none.
fn heading<'a, T>(out: &mut String, title: &str, section: &'a Section<T>) -> Option<&'a T> {
    let _ = writeln!(out, "## {title}\n");
    match section {
        Section::Measured(value) => Some(value),
        Section::Failed { error } => {
            let _ = writeln!(out, "Not measured: {error}\n");
            None
        }
    }
}

fn calls(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(call, n)| format!("`{call}` x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
