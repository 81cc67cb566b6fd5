//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use crate::defaults::{RELAY_PORT, SANDBOX_PORT};
use crate::site::DEFAULT_SITE_PORT;

pub const USAGE: &str = "\
relay-local: keap-relay on this machine, on embedded defaults (no AWS, no Keap account)

usage:
  relay-local demo [--no-serve | --once] [--port N] [--sandbox-port N] [--site-port N] [--events DIR]
                   [--refresh-every SECS] [--drain-every SECS]
      Starts the Keap sandbox, the secret store and the four functions' handlers, walks
      through connect, signups, a forced token rotation and the status report, then keeps
      serving (Ctrl-C stops). --no-serve (or --once) exits after the walkthrough: 0 when
      every check held, 1 otherwise.
  relay-local serve [--port N] [--sandbox [--sandbox-port N]] [--site-port N] [--refresh-every SECS]
                    [--drain-every SECS]
      Just the server, the schedule and the queue, configured from the environment (the
      variables of the Lambda functions). No Keap sandbox unless --sandbox.
  relay-local sign [--key KEY] BODY
      Prints the X-Signature header value for BODY (\"-\" reads standard input), made now.
  relay-local curl [--key KEY] [--port N | --url URL] EMAIL
      Prints a complete curl command posting a signed signup for EMAIL.
  relay-local callback-event START_ANSWER.json
      For cargo lambda invoke: takes the oauth function's 302 answer to events/oauth-start.json
      (\"-\" reads standard input), lets the authorize page approve (keap-sandbox
      --auto-approve), and prints the API Gateway event of the callback, code, state and the
      sign-in cookie /oauth/start set included.
  relay-local app-secret [--local-defaults]
      Writes the app secret JSON read from standard input (or the local defaults) into the
      configured store (KEAP_STORE, KEAP_STORE_DIR, KEAP_APP_SECRET_ID).
  relay-local backfill FILE [--format csv|jsonl] [--map FIELD=COLUMN]... [--dry-run] [--yes]
                   [--checkpoint PATH] [--failures PATH] [--live-share PERCENT] [--welcome]
                   [--concurrency N] [--signup-url URL [--key KEY]] [--local]
      Existing users into Keap through the signup code path (docs/backfill.md): columns are
      the signup body's fields (utm_source..utm_content, custom fields as fields.<label>);
      validates every row first (bad rows by line number), sends nothing without --yes, paces to Keap's
      quota leaving --live-share percent (10) to live signups, resumes from the checkpoint
      (FILE.checkpoint) and writes failures to FILE.failures.csv. Keap through the functions'
      configuration (KEAP_*, the secret store; --local: relay-local's sandbox and file store),
      or signed signups to a deployed /signup with --signup-url.

Both also serve the example website form (examples/website-form/) on its own port, posting
to the relay's /form. Ports default to 9000 (relay), 9400 (sandbox) and 9100 (example
website); 0 picks a free one. The signing key of
sign and curl is --key, else SIGNUP_SIGNING_KEY, else the local default. Logs go to standard
error (RUST_LOG, default warn).";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("invalid value {value:?} for {flag}")]
    InvalidValue { flag: String, value: String },
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("{0} needs exactly one {1}")]
    Operand(&'static str, &'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    pub refresh_every: Duration,
    pub drain_every: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            refresh_every: Duration::from_secs(60),
            drain_every: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoArgs {
    pub port: u16,
    pub sandbox_port: u16,
    /// Keep serving after the walkthrough.
    pub serve: bool,
    pub events: Option<PathBuf>,
    pub timers: Timers,
    /// The example website's port.
    pub site_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    pub port: u16,
    /// `Some(port)` starts the sandbox.
    pub sandbox_port: Option<u16>,
    pub timers: Timers,
    /// The example website's port.
    pub site_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Demo(DemoArgs),
    Serve(ServeArgs),
    Sign {
        key: Option<String>,
        body: String,
    },
    Curl {
        key: Option<String>,
        email: String,
        url: String,
    },
    AppSecret {
        local_defaults: bool,
    },
    CallbackEvent {
        answer: String,
    },
    Backfill(crate::backfill::BackfillArgs),
    Help,
}

fn number<T: std::str::FromStr>(flag: &str, value: String) -> Result<T, CliError> {
    value.parse().map_err(|_| CliError::InvalidValue {
        flag: flag.to_owned(),
        value,
    })
}

fn seconds(flag: &str, value: String) -> Result<Duration, CliError> {
    match number::<u64>(flag, value.clone())? {
        0 => Err(CliError::InvalidValue {
            flag: flag.to_owned(),
            value,
        }),
        secs => Ok(Duration::from_secs(secs)),
    }
}

/// Options every command may take, and the operands left.
#[derive(Default)]
struct Parsed {
    port: Option<u16>,
    sandbox_port: Option<u16>,
    site_port: Option<u16>,
    sandbox: bool,
    no_serve: bool,
    events: Option<PathBuf>,
    timers: Timers,
    key: Option<String>,
    url: Option<String>,
    local_defaults: bool,
    operands: Vec<String>,
    help: bool,
}

fn parse_flags(args: impl Iterator<Item = String>, allowed: &[&str]) -> Result<Parsed, CliError> {
    let mut parsed = Parsed::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let flag = arg.as_str();
        if !flag.starts_with('-') || flag == "-" {
            parsed.operands.push(arg);
            continue;
        }
        if matches!(flag, "-h" | "--help") {
            parsed.help = true;
            continue;
        }
        if !allowed.contains(&flag) {
            return Err(CliError::Unknown(arg));
        }
        let mut value = || args.next().ok_or_else(|| CliError::MissingValue(arg.clone()));
        match flag {
            "--port" => parsed.port = Some(number(flag, value()?)?),
            "--sandbox-port" => parsed.sandbox_port = Some(number(flag, value()?)?),
            "--site-port" => parsed.site_port = Some(number(flag, value()?)?),
            "--sandbox" => parsed.sandbox = true,
            "--no-serve" | "--once" => parsed.no_serve = true,
            "--events" => parsed.events = Some(PathBuf::from(value()?)),
            "--refresh-every" => parsed.timers.refresh_every = seconds(flag, value()?)?,
            "--drain-every" => parsed.timers.drain_every = seconds(flag, value()?)?,
            "--key" => parsed.key = Some(value()?),
            "--url" => parsed.url = Some(value()?),
            "--local-defaults" => parsed.local_defaults = true,
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    Ok(parsed)
}

const TIMER_FLAGS: [&str; 2] = ["--refresh-every", "--drain-every"];

pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    let Some(command) = args.next() else {
        return Ok(Command::Help);
    };
    let with = |flags: &[&'static str]| -> Vec<&'static str> { [flags, &TIMER_FLAGS].concat() };
    let parsed = match command.as_str() {
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "demo" => parse_flags(
            args,
            &with(&[
                "--port",
                "--sandbox-port",
                "--site-port",
                "--no-serve",
                "--once",
                "--events",
            ]),
        )?,
        "serve" => parse_flags(args, &with(&["--port", "--sandbox-port", "--sandbox", "--site-port"]))?,
        "sign" => parse_flags(args, &["--key"])?,
        "curl" => parse_flags(args, &["--key", "--port", "--url"])?,
        "app-secret" => parse_flags(args, &["--local-defaults"])?,
        "callback-event" => parse_flags(args, &[])?,
        "backfill" => {
            let mut args = args.peekable();
            if args.peek().is_some_and(|a| matches!(a.as_str(), "-h" | "--help")) {
                return Ok(Command::Help);
            }
            return crate::backfill::parse_args(args).map(Command::Backfill);
        }
        _ => return Err(CliError::UnknownCommand(command)),
    };
    if parsed.help {
        return Ok(Command::Help);
    }
    let single = |what: &'static str, noun: &'static str| -> Result<String, CliError> {
        match parsed.operands.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(CliError::Operand(what, noun)),
        }
    };
    let no_operands = || match parsed.operands.first() {
        Some(extra) => Err(CliError::Unknown(extra.clone())),
        None => Ok(()),
    };
    Ok(match command.as_str() {
        "demo" => {
            no_operands()?;
            Command::Demo(DemoArgs {
                port: parsed.port.unwrap_or(RELAY_PORT),
                sandbox_port: parsed.sandbox_port.unwrap_or(SANDBOX_PORT),
                serve: !parsed.no_serve,
                events: parsed.events.clone(),
                timers: parsed.timers.clone(),
                site_port: parsed.site_port.unwrap_or(DEFAULT_SITE_PORT),
            })
        }
        "serve" => {
            no_operands()?;
            let sandbox = parsed.sandbox || parsed.sandbox_port.is_some();
            Command::Serve(ServeArgs {
                port: parsed.port.unwrap_or(RELAY_PORT),
                sandbox_port: sandbox.then(|| parsed.sandbox_port.unwrap_or(SANDBOX_PORT)),
                timers: parsed.timers.clone(),
                site_port: parsed.site_port.unwrap_or(DEFAULT_SITE_PORT),
            })
        }
        "sign" => Command::Sign {
            key: parsed.key.clone(),
            body: single("sign", "BODY")?,
        },
        "curl" => {
            let url = parsed
                .url
                .clone()
                .unwrap_or_else(|| format!("http://127.0.0.1:{}/signup", parsed.port.unwrap_or(RELAY_PORT)));
            Command::Curl {
                key: parsed.key.clone(),
                email: single("curl", "EMAIL")?,
                url,
            }
        }
        "callback-event" => Command::CallbackEvent {
            answer: single("callback-event", "START_ANSWER.json")?,
        },
        _ => {
            no_operands()?;
            Command::AppSecret {
                local_defaults: parsed.local_defaults,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &str) -> Result<Command, CliError> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn demo_defaults_and_flags() {
        let Command::Demo(demo) = parse_line("demo").unwrap() else {
            panic!()
        };
        assert_eq!((demo.port, demo.sandbox_port, demo.serve), (9000, 9400, true));
        assert_eq!(demo.site_port, 9100);
        let Command::Serve(serve) = parse_line("serve --site-port 0").unwrap() else {
            panic!()
        };
        assert_eq!(serve.site_port, 0);
        let Command::Demo(demo) = parse_line("demo --once --port 0 --sandbox-port 0 --refresh-every 5").unwrap() else {
            panic!()
        };
        assert_eq!((demo.port, demo.sandbox_port, demo.serve), (0, 0, false));
        assert_eq!(demo.timers.refresh_every, Duration::from_secs(5));
        assert!(matches!(
            parse_line("demo --no-serve").unwrap(),
            Command::Demo(DemoArgs { serve: false, .. })
        ));
    }

    #[test]
    fn serve_starts_the_sandbox_only_when_asked() {
        assert!(matches!(
            parse_line("serve").unwrap(),
            Command::Serve(ServeArgs { sandbox_port: None, .. })
        ));
        assert!(matches!(
            parse_line("serve --sandbox").unwrap(),
            Command::Serve(ServeArgs {
                sandbox_port: Some(9400),
                ..
            })
        ));
        assert!(matches!(
            parse_line("serve --sandbox-port 0").unwrap(),
            Command::Serve(ServeArgs {
                sandbox_port: Some(0),
                ..
            })
        ));
    }

    #[test]
    fn helpers_take_one_operand() {
        assert_eq!(
            parse_line("sign --key k {}").unwrap(),
            Command::Sign {
                key: Some("k".into()),
                body: "{}".into()
            }
        );
        assert_eq!(
            parse_line("sign -").unwrap(),
            Command::Sign {
                key: None,
                body: "-".into()
            }
        );
        assert_eq!(parse_line("sign"), Err(CliError::Operand("sign", "BODY")));
        assert_eq!(
            parse_line("callback-event -").unwrap(),
            Command::CallbackEvent { answer: "-".into() }
        );
        let Command::Curl { url, email, .. } = parse_line("curl --port 9100 a@example.com").unwrap() else {
            panic!()
        };
        assert_eq!(
            (url.as_str(), email.as_str()),
            ("http://127.0.0.1:9100/signup", "a@example.com")
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse_line("demo --sandbox"), Err(CliError::Unknown("--sandbox".into())));
        assert_eq!(parse_line("demo --port"), Err(CliError::MissingValue("--port".into())));
        assert!(matches!(
            parse_line("demo --port x"),
            Err(CliError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse_line("demo --drain-every 0"),
            Err(CliError::InvalidValue { .. })
        ));
        assert_eq!(parse_line("deploy"), Err(CliError::UnknownCommand("deploy".into())));
        assert_eq!(parse_line(""), Ok(Command::Help));
    }
}
