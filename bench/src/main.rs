//! `relay-bench`: the whole-process part of `./bench/run.sh`. Measures cold starts, the signup
//! binary under load, the in-process handler, rotation storms and refresh calls, merges the
//! build figures and criterion estimates `run.sh` collected, and writes `results/latest.{json,md}`.
//!
//! ```text
//! relay-bench [--quick] [--workspace DIR] [--out DIR] [--build-info FILE]
//!             [--criterion-dir DIR] [--since UNIX_SECONDS]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use keap_relay::store::SecretStore;
use keap_relay::store::secrets_manager::SecretsManagerStore;
use keap_sandbox::{Sandbox, SandboxConfig};
use relay_bench::cold_start::{self, ColdStart};
use relay_bench::cost::{self, Assumptions, Measured, Prices};
use relay_bench::deployment::{self, DeploymentEnv, FUNCTIONS, StoreEnv};
use relay_bench::events::SignupEvents;
use relay_bench::invocations::{self, InvocationRun};
use relay_bench::report::{self, ColdStartRow, ColdStarts, Headline, Meta, Report, Section, Storm, mb, mb_of_kib};
use relay_bench::runtime_api::RuntimeApi;
use relay_bench::{BenchError, Result, moto, probes, seed, steady, storm};

const BARE: &str = "bare-lambda";
const STORM_SIZES: [usize; 4] = [1, 8, 64, 256];

struct Options {
    quick: bool,
    workspace: PathBuf,
    out: PathBuf,
    build_info: Option<PathBuf>,
    criterion_dir: PathBuf,
    /// When `run.sh` started (criterion results older than this are not this run's).
    since: Option<SystemTime>,
    bin_dir: PathBuf,
}

/// How much of everything: `--quick` is for checking the harness, full for the record.
struct Sizes {
    cold_starts: usize,
    steady_signups: usize,
    binary_invocations: usize,
    storm_rounds: usize,
    round_trip_samples: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                cold_starts: 15,
                steady_signups: 300,
                binary_invocations: 200,
                storm_rounds: 1,
                round_trip_samples: 20,
            }
        } else {
            Sizes {
                cold_starts: 50,
                steady_signups: 2000,
                binary_invocations: 1000,
                storm_rounds: 3,
                round_trip_samples: 50,
            }
        }
    }
}

fn parse_options() -> std::result::Result<Options, String> {
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .ok_or("cannot tell where the release binaries are")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut options = Options {
        quick: false,
        out: workspace.join("bench/results"),
        criterion_dir: workspace.join("target/relay-bench/criterion"),
        workspace,
        build_info: None,
        since: None,
        bin_dir,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--workspace" => options.workspace = value()?.into(),
            "--out" => options.out = value()?.into(),
            "--build-info" => options.build_info = Some(value()?.into()),
            "--criterion-dir" => options.criterion_dir = value()?.into(),
            "--since" => {
                let seconds: u64 = value()?.parse().map_err(|e| format!("--since: {e}"))?;
                options.since = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

fn command_output(program: &str, args: &[&str], dir: &Path) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cpus} x {model}, {}", std::env::consts::ARCH)
}

fn step(name: &str) {
    eprintln!("==> {name}");
}

async fn cold_starts(options: &Options, sizes: &Sizes, sandbox: &Sandbox, scratch: &Path) -> Result<ColdStarts> {
    let mut rows = Vec::new();
    for function in FUNCTIONS.iter().copied().chain([BARE]) {
        let mut api = RuntimeApi::start(&format!("keap-relay-{function}")).await?;
        let env = DeploymentEnv::new(
            function,
            &api.address(),
            &sandbox.base_url(),
            StoreEnv::SecretsManager { endpoint: None },
            &scratch.join("home"),
        );
        let binary = options.bin_dir.join(function);
        let measured: ColdStart =
            cold_start::measure(&mut api, function, &binary, &env.vars(), sizes.cold_starts, scratch).await?;
        eprintln!("    {function}: p50 {:.2} ms", measured.first_poll.p50_ms);
        let init_work = if function == BARE {
            Vec::new()
        } else {
            deployment::init_work(function)
        };
        rows.push(ColdStartRow { measured, init_work });
    }
    let env = DeploymentEnv::new(
        "signup",
        "127.0.0.1:9",
        &sandbox.base_url(),
        StoreEnv::SecretsManager { endpoint: None },
        &scratch.join("home"),
    );
    let steps = cold_start::init_breakdown(&options.bin_dir.join("init-probe"), &env.vars(), sizes.cold_starts).map(
        |medians| {
            // In execution order, as the probe runs them.
            let order = [
                "init_tracing",
                "config_from_env",
                "aws_config_load",
                "secrets_manager_client",
                "second_aws_config_load",
                "sqs_client",
                "app_with_parts_http_client",
                "signup_app_deps",
            ];
            let mut steps: Vec<(String, f64)> = medians.into_iter().collect();
            steps.sort_by_key(|(step, _)| order.iter().position(|o| o == step).unwrap_or(order.len()));
            steps
        },
    );
    Ok(ColdStarts {
        functions: rows,
        signup_init_steps: Section::from(steps),
    })
}

/// The release signup binary over moto's Secrets Manager (as deployed), or the file store
/// when moto is not installed.
async fn signup_binary(
    options: &Options,
    sizes: &Sizes,
    sandbox: &Sandbox,
    events: &SignupEvents,
    scratch: &Path,
) -> Result<InvocationRun> {
    let mut api = RuntimeApi::start("keap-relay-signup").await?;
    let (app_id, token_id) = ("keap-relay/app", "keap-relay/token");
    let moto = match moto::find(&options.workspace) {
        Some(program) => Some(moto::Moto::start(&program).await?),
        None => None,
    };
    let (store, store_env, label): (Arc<dyn SecretStore>, StoreEnv, String) = match &moto {
        Some(moto) => (
            Arc::new(SecretsManagerStore::new(moto.client())),
            StoreEnv::SecretsManager {
                endpoint: Some(moto.endpoint.clone()),
            },
            "Secrets Manager (moto on loopback)".into(),
        ),
        None => {
            let dir = scratch.join("binary-store");
            (
                Arc::new(keap_relay::store::file::FileStore::new(&dir)),
                StoreEnv::File(dir),
                "file store (moto_server not found)".into(),
            )
        }
    };
    seed::put_app_secret(store.as_ref(), app_id).await?;
    seed::connect(store, token_id, sandbox, None).await?;
    let mut env = DeploymentEnv::new(
        "signup",
        &api.address(),
        &sandbox.base_url(),
        store_env,
        &scratch.join("home"),
    );
    env.app_secret_id = app_id.into();
    env.token_secret_id = token_id.into();
    let binary = options.bin_dir.join("signup");
    invocations::run_signups(
        &mut api,
        &binary,
        &env.vars(),
        events,
        sizes.binary_invocations,
        &label,
        scratch,
    )
    .await
}

async fn storms(options: &Options, sizes: &Sizes, scratch: &Path) -> Result<Storm> {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(BenchError::io("start the sandbox"))?;
    let dir = scratch.join("storm-store");
    let round_trips = probes::round_trips(&sandbox, &dir, sizes.round_trip_samples).await?;
    let baseline_ms = round_trips.keap_token_call.p50_ms + round_trips.store_read.p50_ms;
    let program = options.bin_dir.join("storm-contender");
    let mut runs = Vec::new();
    for contenders in STORM_SIZES {
        for round in 1..=sizes.storm_rounds {
            let run = storm::run(&sandbox, &program, &dir, contenders, round).await?;
            eprintln!(
                "    {contenders} contenders: {} Keap token calls, {} versions, last after {:.1} ms",
                run.keap_token_calls, run.versions_written, run.last_proceeds_ms
            );
            runs.push(run);
        }
    }
    Ok(Storm {
        store: "file store".into(),
        round_trips,
        baseline_ms,
        runs,
    })
}

fn headline(report: &Report) -> Vec<Headline> {
    let mut rows = Vec::new();
    let mut add = |figure: &str, measured: String, target: &str, met: Option<bool>| {
        rows.push(Headline {
            figure: figure.into(),
            measured,
            target: target.into(),
            met,
        });
    };
    if let Some(cold) = report.cold_start.ok().map(|c| &c.functions) {
        let functions: Vec<_> = cold.iter().filter(|r| r.measured.function != BARE).collect();
        let listed = functions
            .iter()
            .map(|r| format!("{} {:.1}", r.measured.function, r.measured.first_poll.p50_ms))
            .collect::<Vec<_>>()
            .join(" / ");
        let bare = cold
            .iter()
            .find(|r| r.measured.function == BARE)
            .map_or(f64::NAN, |r| r.measured.first_poll.p50_ms);
        add(
            "Cold start, process start to first poll (p50)",
            format!("{listed} ms (bare lambda_runtime: {bare:.1} ms)"),
            "< 20 ms each",
            Some(functions.iter().all(|r| r.measured.first_poll.p50_ms < 20.0)),
        );
    }
    if let Some(s) = report.steady_state.ok() {
        add(
            "Signup handler, relay's own time (p50 / p99)",
            format!("{:.2} / {:.2} ms", s.own.p50_ms, s.own.p99_ms),
            "-",
            None,
        );
        let expected = s.keap_calls.len() == 2
            && s.keap_calls
                .keys()
                .any(|k| k.starts_with("PUT ") && k.ends_with("/v1/contacts"))
            && s.keap_calls
                .keys()
                .any(|k| k.starts_with("POST ") && k.ends_with("/tags"));
        add(
            "Keap calls per signup (tag ids known)",
            format!(
                "{:.2} ({})",
                s.keap_calls_per_signup,
                s.keap_calls.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            "2: upsert + one tag call",
            Some(expected && s.keap_calls_per_signup == 2.0),
        );
        add(
            "Secrets Manager calls per signup (cached token valid)",
            format!("{:.2}", s.store_calls_per_signup),
            "0",
            Some(s.store_calls_measured.total() == 0),
        );
    }
    if let Some(b) = report.signup_binary.ok() {
        add(
            "Peak memory, signup binary (VmHWM)",
            format!("{} after {} invocations", mb_of_kib(b.memory_kib.hwm), b.invocations),
            "< 30 MB",
            Some((b.memory_kib.hwm as f64) * 1024.0 < 30e6),
        );
    }
    if let Some(storm) = report.storm.ok() {
        let by_size = |pick: &dyn Fn(&storm::StormRun) -> f64| {
            STORM_SIZES
                .iter()
                .map(|n| {
                    storm
                        .runs
                        .iter()
                        .filter(|r| r.contenders == *n)
                        .map(pick)
                        .fold(f64::NAN, f64::max)
                })
                .collect::<Vec<f64>>()
        };
        let join = |values: &[f64], digits: usize| {
            values
                .iter()
                .map(|v| format!("{v:.digits$}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let calls = by_size(&|r| r.keap_token_calls as f64);
        let versions = by_size(&|r| r.versions_written as f64);
        let last = by_size(&|r| r.last_proceeds_ms);
        let errors: usize = storm.runs.iter().map(|r| r.contenders - r.ok).sum();
        add(
            "Storm 1/8/64/256 contenders: Keap token calls (worst round)",
            join(&calls, 0),
            "1",
            Some(calls.iter().all(|c| *c == 1.0)),
        );
        add(
            "Storm: secret versions written (worst round)",
            join(&versions, 0),
            "<= 2",
            Some(versions.iter().all(|v| *v <= 2.0)),
        );
        add(
            "Storm: last contender proceeds (worst round)",
            format!(
                "{} ms; baseline (Keap + store round trip) {:.1} ms; {errors} errors",
                join(&last, 0),
                storm.baseline_ms
            ),
            "<= baseline + 100 ms",
            Some(last.iter().all(|l| *l <= storm.baseline_ms + 100.0) && errors == 0),
        );
    }
    if let Some(artifacts) = report.build["artifacts"].as_array().filter(|a| !a.is_empty()) {
        let zips: Vec<f64> = artifacts
            .iter()
            .map(|a| a["zip_bytes"].as_f64().unwrap_or(f64::NAN))
            .collect();
        let listed = artifacts
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a["function"].as_str().unwrap_or("?"),
                    mb(a["zip_bytes"].as_f64().unwrap_or(f64::NAN))
                )
            })
            .collect::<Vec<_>>()
            .join(" / ");
        add(
            "Zipped bootstrap, arm64",
            listed,
            "< 5 MB each",
            Some(zips.iter().all(|z| *z < 5e6)),
        );
    }
    if let Some(measured) = report::build_line(&report.build["arm64_build"]) {
        add("Release build, 4 functions, arm64 (incremental)", measured, "-", None);
    }
    if let Some(cost) = report.cost.ok() {
        let warm = &cost.lines[0];
        let month: f64 = cost.lines[3].total_usd + cost.lines[4].total_usd;
        add(
            "Cost per 1,000 signups (warm) / fixed + refresh per month",
            format!("${:.4} / ${:.2}", warm.total_usd, month),
            "-",
            None,
        );
    }
    rows
}

fn cost_model(report: &Report, prices: Prices) -> Result<cost::CostModel> {
    let missing = |what: &str| BenchError::Failed(format!("needs the {what} figures"));
    let steady = report.steady_state.ok().ok_or_else(|| missing("steady-state"))?;
    let cold = &report.cold_start.ok().ok_or_else(|| missing("cold-start"))?.functions;
    let refresh = report.refresh.ok().ok_or_else(|| missing("refresh"))?;
    let cold_of = |function: &str| {
        cold.iter()
            .find(|r| r.measured.function == function)
            .map_or(f64::NAN, |r| r.measured.first_poll.p50_ms)
    };
    Ok(cost::model(
        prices,
        Assumptions::default(),
        Measured {
            signup_own_ms: steady.own.p50_ms.max(0.0),
            keap_calls_per_signup: steady.keap_calls_per_signup,
            store_calls_per_warm_signup: steady.store_calls_per_signup,
            store_calls_first_signup: steady.store_calls_first_signup.total() as f64,
            signup_cold_start_ms: cold_of("signup"),
            refresh_cold_start_ms: cold_of("refresh"),
            refresh: refresh.clone(),
        },
    ))
}

async fn run(options: Options) -> Result<Report> {
    let started = Instant::now();
    let sizes = Sizes::new(options.quick);
    let scratch = options
        .workspace
        .join(format!("target/relay-bench/scratch-{}", std::process::id()));
    std::fs::create_dir_all(scratch.join("home")).map_err(BenchError::io_at("create", &scratch))?;
    let events = SignupEvents::new(&options.workspace)?;
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(BenchError::io("start the sandbox"))?;

    step("cold starts");
    let cold_start = Section::from(cold_starts(&options, &sizes, &sandbox, &scratch).await);
    step("signup binary under the Runtime API emulator");
    let signup_binary = Section::from(signup_binary(&options, &sizes, &sandbox, &events, &scratch).await);
    step("steady-state signup, in-process");
    let steady_state = Section::from(steady::measure(&events, sizes.steady_signups).await);
    step("rotation storms");
    let storm = Section::from(storms(&options, &sizes, &scratch).await);
    step("refresh run calls");
    let refresh = Section::from(probes::refresh_calls(&sandbox).await);

    let build = options
        .build_info
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null);
    let now = SystemTime::now();
    let date = command_output("date", &["-u", "+%Y-%m-%d"], &options.workspace);
    let mut report = Report {
        schema: 1,
        meta: Meta {
            generated_at: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"], &options.workspace),
            mode: if options.quick { "quick" } else { "full" }.into(),
            git_commit: command_output("git", &["rev-parse", "--short", "HEAD"], &options.workspace),
            machine: machine(),
            rustc: command_output("rustc", &["--version"], &options.workspace),
            measuring_seconds: 0.0,
            total_seconds: None,
        },
        headline: Vec::new(),
        cold_start,
        steady_state,
        signup_binary,
        storm,
        refresh,
        build,
        criterion: report::criterion_estimates(
            &options.criterion_dir,
            options.since.unwrap_or(now - Duration::from_secs(3600)),
        ),
        cost: Section::Failed {
            error: "not computed".into(),
        },
    };
    report.cost = Section::from(cost_model(&report, Prices::aws_public(&date)));
    report.headline = headline(&report);
    report.meta.measuring_seconds = started.elapsed().as_secs_f64();
    report.meta.total_seconds = options
        .since
        .and_then(|since| since.elapsed().ok())
        .map(|total| total.as_secs_f64());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(report)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("relay-bench: {message}");
            return ExitCode::from(2);
        }
    };
    let out = options.out.clone();
    match run(options).await {
        Ok(report) => {
            if let Err(error) = report.write(&out) {
                eprintln!("relay-bench: {error}");
                return ExitCode::FAILURE;
            }
            println!("{}", report.headline_markdown());
            println!("Full results: {}/latest.md and latest.json", out.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("relay-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
