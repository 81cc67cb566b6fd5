//! `relay-local`: see `relay-local --help` and the README's "Run it locally".

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use relay_local::cli::{self, Command};
use relay_local::{defaults, helpers, progress, run, site};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("relay-local: {error}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Sign { key, body } => sign(key, body),
        Command::Curl { key, email, url } => {
            println!(
                "{}",
                helpers::curl_command(&url, &helpers::signing_key(key), &helpers::signup_body(&email))
            );
            ExitCode::SUCCESS
        }
        Command::CallbackEvent { answer } => callback_event(&answer),
        Command::Backfill(args) => backfill(args),
        Command::AppSecret { local_defaults } => {
            let input = if local_defaults { None } else { read_stdin() };
            with_local_env(defaults::RELAY_PORT, None, false, |runtime| {
                runtime.block_on(run::write_app_secret(local_defaults, input))
            })
        }
        Command::Demo(args) => {
            if refuse(run::sandbox_conflicts(true)) {
                return ExitCode::from(2);
            }
            let relay = match run::bind_relay(args.port) {
                Ok(listener) => listener,
                Err(message) => return startup_failure(&message),
            };
            let site = match site::bind(args.site_port) {
                Ok(listener) => listener,
                Err(message) => return startup_failure(&message),
            };
            let port = relay.local_addr().map(|a| a.port()).unwrap_or(args.port);
            let site_port = site.local_addr().map(|a| a.port()).ok();
            with_local_env(port, site_port, true, |runtime| {
                runtime.block_on(run::demo(args, relay, site))
            })
        }
        Command::Serve(args) => {
            if args.sandbox_port.is_some() && refuse(run::sandbox_conflicts(false)) {
                return ExitCode::from(2);
            }
            let relay = match run::bind_relay(args.port) {
                Ok(listener) => listener,
                Err(message) => return startup_failure(&message),
            };
            let site = match site::bind(args.site_port) {
                Ok(listener) => listener,
                Err(message) => return startup_failure(&message),
            };
            let port = relay.local_addr().map(|a| a.port()).unwrap_or(args.port);
            let site_port = site.local_addr().map(|a| a.port()).ok();
            let with_sandbox = args.sandbox_port.is_some();
            with_local_env(port, site_port, with_sandbox, |runtime| {
                runtime.block_on(run::serve(args, relay, site))
            })
        }
    }
}

/// Fills the unset environment variables with the local defaults (the website form's too when
/// the example website runs on `site_port`), then runs `body` on a Tokio runtime.
fn with_local_env(
    relay_port: u16,
    site_port: Option<u16>,
    with_sandbox: bool,
    body: impl FnOnce(&tokio::runtime::Runtime) -> ExitCode,
) -> ExitCode {
    let relay_base = format!("http://127.0.0.1:{relay_port}");
    // SAFETY: no other thread exists yet; the runtime (and every thread) starts below.
    #[allow(unsafe_code)] // before the runtime starts: no other thread exists yet
    unsafe {
        defaults::apply_env_defaults(&defaults::env_defaults(&relay_base, with_sandbox));
        if let Some(port) = site_port {
            defaults::apply_env_defaults(&defaults::form_env_defaults(&format!("http://127.0.0.1:{port}")));
        }
    };
    init_logs();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => body(&runtime),
        Err(error) => startup_failure(&format!("cannot start the Tokio runtime: {error}")),
    }
}

/// Prints each conflict; true when there is any.
fn refuse(conflicts: Vec<String>) -> bool {
    for conflict in &conflicts {
        eprintln!("relay-local: {conflict}");
    }
    !conflicts.is_empty()
}

fn startup_failure(message: &str) -> ExitCode {
    progress::failed(message);
    ExitCode::FAILURE
}

/// Human-readable logs on stderr, so stdout stays the story.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .try_init();
}

fn read_stdin() -> Option<String> {
    let mut input = String::new();
    match std::io::stdin().read_to_string(&mut input) {
        Ok(_) if !input.trim().is_empty() => Some(input),
        _ => None,
    }
}

/// Reads `path` (`-`: standard input) as text.
fn read_input(path: &str) -> std::io::Result<String> {
    if path == "-" {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input)?;
        Ok(input)
    } else {
        std::fs::read_to_string(path)
    }
}

fn callback_event(answer_path: &str) -> ExitCode {
    use relay_local::callback_event::{approve, authorize_url, callback_event, start_cookies};
    let answer = match read_input(answer_path) {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("relay-local: cannot read {answer_path}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return startup_failure(&format!("cannot start the Tokio runtime: {error}")),
    };
    let event = start_cookies(&answer).and_then(|cookies| {
        authorize_url(&answer)
            .and_then(|url| runtime.block_on(approve(&url)))
            .and_then(|back| callback_event(&back, &cookies))
    });
    match event {
        Ok(event) => {
            println!("{}", serde_json::to_string_pretty(&event).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("relay-local: {error}");
            ExitCode::FAILURE
        }
    }
}

fn backfill(args: relay_local::backfill::BackfillArgs) -> ExitCode {
    let terminal = std::io::stderr().is_terminal();
    if args.local {
        with_local_env(defaults::RELAY_PORT, None, true, |runtime| {
            runtime.block_on(relay_local::backfill::run(&args, terminal))
        })
    } else {
        init_logs();
        match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(relay_local::backfill::run(&args, terminal)),
            Err(error) => startup_failure(&format!("cannot start the Tokio runtime: {error}")),
        }
    }
}

fn sign(key: Option<String>, body: String) -> ExitCode {
    let body = if body == "-" {
        match read_input("-") {
            Ok(input) => input.into_bytes(),
            Err(error) => {
                eprintln!("relay-local: cannot read the body from standard input: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        body.into_bytes()
    };
    println!("{}", helpers::sign_now(&helpers::signing_key(key), &body));
    ExitCode::SUCCESS
}
