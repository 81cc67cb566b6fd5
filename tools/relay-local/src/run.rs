//! The commands that start the stack: `demo` (the walkthrough, then serving) and `serve`;
//! and `app-secret`, which writes the operator's secret into the configured store.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keap_relay::ExposeSecret;
use keap_relay::config::{AuthMode, Config};
use keap_relay::token::LinkStatus;
use tokio::sync::watch;

use crate::cli::{DemoArgs, ServeArgs, Timers};
use crate::defaults;
use crate::helpers;
use crate::progress;
use crate::secrets::{self, Seeded};
use crate::stack::{AppSecretState, QueueSettings, Stack, StackOptions};
use crate::walkthrough::{self, Check};

/// The relay's listener, bound before the configuration is read because its port goes into
/// `KEAP_REDIRECT_URI`.
pub fn bind_relay(port: u16) -> Result<std::net::TcpListener, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::TcpListener::bind(addr)
        .map_err(|error| format!("cannot listen on {addr} for keap-relay: {error}; pick another port with --port"))
}

/// Why the environment does not fit a run against the built-in sandbox (checked before the
/// defaults are applied). The demo drives the sandbox, so Keap URLs contradict it; and the
/// sandbox's tokens must never land in somebody's real token secret.
pub fn sandbox_conflicts(demo: bool) -> Vec<String> {
    let mut conflicts = Vec::new();
    if demo {
        for name in defaults::KEAP_URL_VARS
            .into_iter()
            .filter(|name| defaults::is_set(name))
        {
            conflicts.push(format!(
                "the demo runs against the built-in Keap sandbox, but {name} is set; unset it, or use `relay-local serve` to run against that Keap"
            ));
        }
    }
    if let Ok(id) = std::env::var("KEAP_TOKEN_SECRET_ID")
        && !id.trim().is_empty()
        && id.trim() != defaults::TOKEN_SECRET_ID
    {
        conflicts.push(format!(
            "KEAP_TOKEN_SECRET_ID is {id}: connecting the sandbox would overwrite that token secret with the sandbox's tokens; \
             unset it (the local run uses {})",
            defaults::TOKEN_SECRET_ID
        ));
    }
    conflicts
}

fn sandbox_addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `--events`, else `./events`, else the repository's `events/` next to this crate.
fn events_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| Path::new("events").is_dir().then(|| PathBuf::from("events")))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events"))
}

async fn start(
    relay: std::net::TcpListener,
    site: std::net::TcpListener,
    sandbox: Option<SocketAddr>,
) -> Option<Stack> {
    match Stack::start(StackOptions {
        relay,
        site: Some(site),
        sandbox,
        queue: QueueSettings::default(),
    })
    .await
    {
        Ok(stack) => Some(stack),
        Err(error) => {
            progress::failed(&format!("could not start: {error}"));
            None
        }
    }
}

pub async fn demo(args: DemoArgs, relay: std::net::TcpListener, site: std::net::TcpListener) -> ExitCode {
    println!("keap-relay on this machine: the Keap sandbox, the secret store and the four functions' handlers");
    let Some(stack) = start(relay, site, Some(sandbox_addr(args.sandbox_port))).await else {
        return ExitCode::FAILURE;
    };
    describe(&stack);
    let events = events_dir(args.events);
    let walked = tokio::select! {
        checks = walkthrough::run(&stack, &events) => Some(checks),
        () = wait_for_stop_signal() => None,
    };
    let Some(checks) = walked else {
        println!();
        progress::action("stopping before the walkthrough finished");
        stack.shutdown().await;
        return ExitCode::from(130);
    };
    let passed = report(&checks);
    if args.serve {
        serve_until_stopped(stack, &args.timers).await;
    } else {
        stack.shutdown().await;
    }
    if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

pub async fn serve(args: ServeArgs, relay: std::net::TcpListener, site: std::net::TcpListener) -> ExitCode {
    println!("keap-relay on this machine: the four functions' handlers, configured from the environment");
    let Some(stack) = start(relay, site, args.sandbox_port.map(sandbox_addr)).await else {
        return ExitCode::FAILURE;
    };
    describe(&stack);
    next_step(&stack).await;
    serve_until_stopped(stack, &args.timers).await;
    ExitCode::SUCCESS
}

/// Reads the app secret JSON (or takes the local defaults) and makes it current in the store.
pub async fn write_app_secret(local_defaults: bool, input: Option<String>) -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            progress::failed(&error.to_string());
            return ExitCode::from(2);
        }
    };
    let value = match input {
        _ if local_defaults => defaults::app_secret(),
        Some(json) => keap_relay::SecretString::from(json),
        None => {
            progress::failed("no app secret given: pipe its JSON into standard input, or pass --local-defaults");
            return ExitCode::from(2);
        }
    };
    let parsed = match secrets::parse_app_secret(value.expose_secret()) {
        Ok(parsed) => parsed,
        Err(error) => {
            progress::failed(&error.to_string());
            return ExitCode::from(2);
        }
    };
    if let Err(error) = secrets::prepare_store(&config) {
        progress::failed(&format!(
            "cannot create the secret store's directory ({}): {error}",
            secrets::describe_store(&config)
        ));
        return ExitCode::FAILURE;
    }
    let (store, _queue) = keap_relay::app::store_and_queue(&config).await;
    match secrets::replace_current(store.as_ref(), &config.app_secret_id, &value).await {
        Ok(()) => {
            progress::ok(&format!(
                "stored the app secret {} ({}) in {}",
                config.app_secret_id,
                secrets::filled_fields(&parsed).join(", "),
                secrets::describe_store(&config)
            ));
            ExitCode::SUCCESS
        }
        Err(error) => {
            progress::failed(&format!(
                "could not store the app secret {}: {error}",
                config.app_secret_id
            ));
            ExitCode::FAILURE
        }
    }
}

/// What runs where, and where the secrets are (never their values).
fn describe(stack: &Stack) {
    let config = &stack.config;
    if let Some(sandbox) = &stack.sandbox {
        let client = sandbox
            .config()
            .clients
            .first()
            .map_or("none", |c| c.client_id.as_str());
        progress::ok(&format!(
            "Keap sandbox (in-process) on {}: OAuth client {client}, account {}.infusionsoft.com",
            sandbox.base_url(),
            sandbox.config().tenant
        ));
    } else {
        progress::ok(&format!(
            "Keap: API {}, token endpoint {}",
            config.api_url, config.token_url
        ));
    }
    progress::ok(&format!("secret store: {}", secrets::describe_store(config)));
    match &stack.app_secret {
        AppSecretState::Ready { secret, seeded } => {
            let origin = match seeded {
                Seeded::Seeded => "seeded from the local defaults",
                Seeded::Existing => "already there",
            };
            progress::detail(&format!(
                "app secret {} ({origin}): {}",
                config.app_secret_id,
                secrets::filled_fields(secret).join(", ")
            ));
        }
        AppSecretState::Unavailable(error) => {
            progress::failed(&format!("{error}"));
            progress::detail(
                "write it with: relay-local app-secret < app-secret.json   (or --local-defaults for the sandbox's)",
            );
        }
    }
    if config.auth_mode == AuthMode::OAuth {
        progress::detail(&format!(
            "token secret {} (written by the functions only)",
            config.token_secret_id
        ));
    }
    progress::ok(&format!(
        "relay on {}: GET /oauth/start, GET /oauth/callback, GET /status → oauth; POST /signup, POST /form, POST /form/{{form_name}} → signup",
        stack.relay_url
    ));
    if let Some(site) = &stack.site_url {
        progress::ok(&format!(
            "example website on {site}: {site}/ (plain form), {site}/fetch.html (fetch()) → POST {}/form",
            stack.relay_url
        ));
    }
    if let Some(check) = &config.forms.human_check {
        progress::detail(&format!(
            "website form human check: {} (siteverify {})",
            check.provider.name(),
            check.verify_url
        ));
    }
    let welcome_tag = config.welcome_tag.as_deref().unwrap_or("none");
    let welcome_email = config
        .welcome_email
        .as_ref()
        .map_or("none".to_owned(), |email| format!("{:?}", email.subject));
    progress::detail(&format!(
        "mode {}; welcome tag {welcome_tag}; welcome email {welcome_email}; redirect URI {}",
        mode_name(config.auth_mode),
        config.redirect_uri.as_deref().unwrap_or("not set")
    ));
    match &stack.queue {
        Some(_) => progress::ok("signup queue: in memory, drained by the signup-retry handler (while serving)"),
        None => progress::ok(&format!(
            "signup queue: SQS {} (drained by a deployed signup-retry, not here)",
            config.signup_queue_url.as_deref().unwrap_or("")
        )),
    }
}

fn mode_name(mode: AuthMode) -> &'static str {
    match mode {
        AuthMode::OAuth => "oauth",
        AuthMode::ApiKey => "api-key",
    }
}

/// The walkthrough's verdict, one line per check.
fn report(checks: &[Check]) -> bool {
    progress::section("Result");
    for check in checks {
        if check.passed {
            progress::ok(check.name);
        } else {
            progress::failed(&format!("{}: {}", check.name, check.detail));
        }
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    if failed == 0 {
        println!("All {} checks passed.", checks.len());
    } else {
        println!("{failed} of {} checks failed.", checks.len());
    }
    failed == 0
}

/// In `serve`, what the stored connection means for the person at the keyboard.
async fn next_step(stack: &Stack) {
    if stack.config.auth_mode != AuthMode::OAuth {
        return;
    }
    let start = format!("{}/oauth/start", stack.relay_url);
    match secrets::token_state(stack.store.as_ref(), &stack.config.token_secret_id).await {
        Ok(state) if state.status == LinkStatus::Connected && stack.sandbox.is_some() => progress::detail(&format!(
            "the stored connection is from an earlier run; this sandbox is new and does not know its tokens: open {start} to connect again"
        )),
        Ok(state) if state.status == LinkStatus::Connected => progress::ok(&format!(
            "connected to Keap account {} (token generation {})",
            state.account.as_deref().unwrap_or("(unknown)"),
            state.generation
        )),
        Ok(state) if state.status == LinkStatus::NeedsReauth => {
            progress::failed(&format!("the connection needs re-authorization: open {start}"));
        }
        _ => progress::detail(&format!("Keap is not connected yet: open {start} in a browser")),
    }
}

/// Ready-to-paste commands for the running stack. The admin password appears only when it is
/// the local default, and only in the local curl line.
fn print_try_it(stack: &Stack) {
    let signup_url = format!("{}/signup", stack.relay_url);
    let port_flag = match stack.relay_url.rsplit(':').next() {
        Some(port) if port != defaults::RELAY_PORT.to_string() => format!(" --port {port}"),
        _ => String::new(),
    };
    let secret = match &stack.app_secret {
        AppSecretState::Ready { secret, .. } => Some(secret),
        AppSecretState::Unavailable(_) => None,
    };
    let local =
        |value: Option<&keap_relay::SecretString>, default: &str| value.is_some_and(|v| v.expose_secret() == default);
    let local_key = local(
        secret.and_then(|s| s.signup_signing_key.as_ref()),
        defaults::SIGNING_KEY,
    );
    let local_password = local(secret.and_then(|s| s.admin_password.as_ref()), defaults::ADMIN_PASSWORD);
    let key_flag = if local_key {
        ""
    } else {
        " --key \"$SIGNUP_SIGNING_KEY\""
    };

    println!("Send a signed signup (the signature is good for 5 minutes):");
    match secret.and_then(|s| s.signup_signing_key.as_ref()) {
        Some(key) => println!(
            "  {}",
            helpers::curl_command(&signup_url, key, &helpers::signup_body("you@example.com"))
        ),
        None => println!("  (the app secret has no signup_signing_key yet)"),
    }
    println!("A fresh signed curl command any time:");
    println!("  cargo run -q -p relay-local -- curl{port_flag}{key_flag} you@example.com");
    println!("The X-Signature value for any body:");
    println!(
        "  cargo run -q -p relay-local -- sign{key_flag} '{{\"email\":\"you@example.com\",\"given_name\":\"You\"}}'"
    );
    println!("The connection's status:");
    if local_password {
        println!(
            "  curl -s -u {}:{} {}/status",
            defaults::ADMIN_USER,
            defaults::ADMIN_PASSWORD,
            stack.relay_url
        );
    } else {
        println!(
            "  curl -s -u \"{}:$ADMIN_PASSWORD\" {}/status",
            defaults::ADMIN_USER,
            stack.relay_url
        );
    }
    if stack.config.auth_mode == AuthMode::OAuth {
        println!(
            "Connect Keap again in a browser (same user and password): {}/oauth/start",
            stack.relay_url
        );
    }
}

/// Serves with the timers running until Ctrl-C or SIGTERM, then stops everything.
async fn serve_until_stopped(stack: Stack, timers: &Timers) {
    progress::section("Serving (Ctrl-C to stop)");
    print_try_it(&stack);
    let queue_note = if stack.queue.is_some() {
        format!("; signup queue drained every {} s", timers.drain_every.as_secs())
    } else {
        String::new()
    };
    progress::detail(&format!(
        "scheduled refresh every {} s{queue_note}",
        timers.refresh_every.as_secs()
    ));
    let (stop_timers, stopped) = watch::channel(false);
    let running = stack.start_timers(timers.refresh_every, timers.drain_every, stopped);
    wait_for_stop_signal().await;
    println!();
    progress::action("stopping");
    let _ = stop_timers.send(true);
    for timer in running {
        let _ = timer.await;
    }
    stack.shutdown().await;
    progress::ok("stopped");
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot wait for Ctrl-C; stopping");
    }
}
