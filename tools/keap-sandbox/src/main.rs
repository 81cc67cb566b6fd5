//! `keap-sandbox`: run the Keap sandbox as its own process.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use keap_sandbox::{ClientConfig, RateLimit, ReusePolicy, Sandbox, SandboxConfig};

const USAGE: &str = "\
usage: keap-sandbox [--port N] [--host ADDR] [--auto-approve] [--access-ttl SECS]
                    [--refresh-ttl SECS] [--code-ttl SECS] [--reuse-policy reject|revoke-family]
                    [--client-id X --client-secret Y] [--redirect-uri URI]... [--api-key K]...
                    [--tenant NAME] [--rate-per-second N] [--rate-per-minute N]
                    [--rate-per-day N] [--rate-time-scale N] [--keap-oauth-quota]

Defaults: port 0 (any free port), host 127.0.0.1, client sandbox-client/sandbox-secret
(any redirect URI), api key KeapAK-sandbox-key, tenant ab123. Giving --client-id or
--api-key replaces the default. --keap-oauth-quota: Keap's OAuth client quota (25/s,
1500/min, 150000/day); --rate-time-scale N shortens the minute and the day N times. Log filter: RUST_LOG (default info).";

#[derive(Debug, thiserror::Error)]
enum ArgError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("invalid value {value:?} for {flag}")]
    InvalidValue { flag: String, value: String },
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("--client-id and --client-secret must be given together")]
    IncompleteClient,
}

struct Args {
    addr: SocketAddr,
    config: SandboxConfig,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, ArgError> {
    let mut config = SandboxConfig::default();
    let mut host = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut port = 0u16;
    let (mut client_id, mut client_secret, mut redirect_uris) = (None, None, Vec::new());
    let mut api_keys = Vec::new();
    let mut rate = RateLimit::OFF;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| ArgError::MissingValue(flag.clone()));
        fn number<T: std::str::FromStr>(flag: &str, value: String) -> Result<T, ArgError> {
            value.parse().map_err(|_| ArgError::InvalidValue {
                flag: flag.to_owned(),
                value,
            })
        }
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--port" => port = number(&flag, value()?)?,
            "--host" => host = number(&flag, value()?)?,
            "--auto-approve" => config.auto_approve = true,
            "--access-ttl" => config.access_ttl = Duration::from_secs(number(&flag, value()?)?),
            "--refresh-ttl" => config.refresh_ttl = Duration::from_secs(number(&flag, value()?)?),
            "--code-ttl" => config.code_ttl = Duration::from_secs(number(&flag, value()?)?),
            "--reuse-policy" => {
                config.reuse_policy = match value()?.as_str() {
                    "reject" => ReusePolicy::Reject,
                    "revoke-family" => ReusePolicy::RevokeFamily,
                    other => {
                        return Err(ArgError::InvalidValue {
                            flag,
                            value: other.to_owned(),
                        });
                    }
                }
            }
            "--client-id" => client_id = Some(value()?),
            "--client-secret" => client_secret = Some(value()?),
            "--redirect-uri" => redirect_uris.push(value()?),
            "--api-key" => api_keys.push(value()?),
            "--tenant" => config.tenant = value()?,
            "--rate-per-second" => rate.per_second = number(&flag, value()?)?,
            "--rate-per-minute" => rate.per_minute = number(&flag, value()?)?,
            "--rate-per-day" => rate.per_day = number(&flag, value()?)?,
            "--rate-time-scale" => rate.time_scale = number::<u32>(&flag, value()?)?.max(1),
            "--keap-oauth-quota" => rate = RateLimit::KEAP_OAUTH_CLIENT,
            _ => return Err(ArgError::Unknown(flag)),
        }
    }
    match (client_id, client_secret) {
        (Some(id), Some(secret)) => {
            config.clients = vec![ClientConfig::new(id, secret).with_redirect_uris(redirect_uris)];
        }
        (None, None) => {
            if let Some(client) = config.clients.first_mut() {
                client.redirect_uris = redirect_uris;
            }
        }
        _ => return Err(ArgError::IncompleteClient),
    }
    if !api_keys.is_empty() {
        config.api_keys = api_keys;
    }
    if rate.per_second > 0 || rate.per_minute > 0 || rate.per_day > 0 {
        config.rate_limit = Some(rate);
    }
    Ok(Some(Args {
        addr: SocketAddr::new(host, port),
        config,
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("keap-sandbox: {err}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let sandbox = match Sandbox::bind(args.config, args.addr).await {
        Ok(sandbox) => sandbox,
        Err(err) => {
            eprintln!("keap-sandbox: cannot listen on {}: {err}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    // Plain lines on stdout so scripts can pick the URLs up.
    println!("KEAP_SANDBOX_URL={}", sandbox.base_url());
    println!("KEAP_API_URL={}", sandbox.api_url());
    println!("KEAP_TOKEN_URL={}", sandbox.token_url());
    println!("KEAP_AUTHORIZE_URL={}", sandbox.authorize_url());
    tracing::info!(config = ?sandbox.config(), "keap sandbox ready; Ctrl-C to stop");
    if let Err(err) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %err, "cannot wait for Ctrl-C; stopping");
    }
    sandbox.shutdown().await;
    ExitCode::SUCCESS
}
