//! The newcomer's path, end to end: `relay-local demo --no-serve` on free ports in an empty
//! directory, as a separate process, judged by its exit status and its progress lines.

use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

use keap_relay::SecretString;
use keap_relay::signup::signature;
use test_support::temp::TempDir;

const LOCAL_SECRETS: [&str; 2] = ["local-signup-signing-key", "local-admin-password"];

/// `relay-local ARGS` in `dir`, with none of the variables that point it elsewhere.
fn relay_local(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay-local"));
    command.args(args).current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("KEAP_") || name.starts_with("SIGNUP_") || name == "AWS_ENDPOINT_URL" {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("relay-local runs")
}

fn demo_once(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let args = [
        &[
            "demo",
            "--no-serve",
            "--port",
            "0",
            "--sandbox-port",
            "0",
            "--site-port",
            "0",
        ],
        extra,
    ]
    .concat();
    let output = relay_local(dir, &args, env);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

fn assert_all_checks_passed(output: &Output, stdout: &str, checks: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status.code()
    );
    for check in checks {
        assert!(
            stdout.lines().any(|line| line == format!("✓ {check}")),
            "no passed check {check:?} in\n{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!("All {} checks passed.", checks.len())),
        "{stdout}"
    );
    for secret in LOCAL_SECRETS {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed without a curl line"
        );
    }
}

const OAUTH_CHECKS: [&str; 6] = [
    "connected",
    "contact created",
    "tag applied",
    "welcome email queued",
    "exactly one rotation",
    "status connected",
];

#[test]
fn the_walkthrough_connects_signs_up_rotates_once_and_reports_connected() {
    let dir = TempDir::new("relay-local-demo");
    let (output, stdout) = demo_once(dir.path(), &[], &[]);
    assert_all_checks_passed(&output, &stdout, &OAUTH_CHECKS);
    assert!(stdout.contains("seeded from the local defaults"), "{stdout}");
    assert!(
        stdout.contains("→ POST /signup ada.lovelace@example.com (new) → 201 "),
        "{stdout}"
    );
    assert!(
        stdout.contains("→ POST /signup ada.lovelace@example.com (repeat) → 200 "),
        "{stdout}"
    );
    assert!(
        stdout.contains("→ POST /signup ada.lovelace(at)example.com (invalid) → 400 "),
        "{stdout}"
    );
    assert!(stdout.contains("generation 1 → 2"), "{stdout}");
    assert!(!stdout.contains("Serving"), "--no-serve must not serve");

    // The store is where the README says, and a second run reuses it.
    let store = dir.path().join(".local/secrets");
    assert!(store.join("keap-relay%2Flocal%2Fapp/current").is_file());
    assert!(store.join("keap-relay%2Flocal%2Ftoken/current").is_file());
    let (output, stdout) = demo_once(dir.path(), &[], &[]);
    assert_all_checks_passed(&output, &stdout, &OAUTH_CHECKS);
    assert!(stdout.contains("(already there)"), "{stdout}");
}

#[test]
fn api_key_mode_skips_the_oauth_steps() {
    let dir = TempDir::new("relay-local-demo");
    let (output, stdout) = demo_once(dir.path(), &[], &[("KEAP_AUTH_MODE", "api-key")]);
    let checks = [
        "contact created",
        "tag applied",
        "welcome email queued",
        "api key checked",
        "status connected",
    ];
    assert_all_checks_passed(&output, &stdout, &checks);
}

#[test]
fn a_walkthrough_that_cannot_keep_its_promises_exits_non_zero_and_says_why() {
    let dir = TempDir::new("relay-local-demo");
    let (output, stdout) = demo_once(dir.path(), &["--events", "no-such-dir"], &[]);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("✗ sample events: no-such-dir/signup-valid.json"),
        "{stdout}"
    );
    assert!(stdout.contains("1 of 1 checks failed."), "{stdout}");
}

#[test]
fn the_demo_refuses_a_real_keap_url() {
    let dir = TempDir::new("relay-local-demo");
    let (output, _) = demo_once(
        dir.path(),
        &[],
        &[("KEAP_API_URL", "https://api.infusionsoft.com/crm/rest")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("KEAP_API_URL is set"));
}

#[test]
fn the_sandbox_never_writes_into_another_token_secret() {
    let dir = TempDir::new("relay-local-demo");
    let (output, _) = demo_once(dir.path(), &[], &[("KEAP_TOKEN_SECRET_ID", "keap-relay-prod/token")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("would overwrite that token secret"));
    let serve = relay_local(
        dir.path(),
        &["serve", "--sandbox", "--port", "0"],
        &[("KEAP_TOKEN_SECRET_ID", "keap-relay-prod/token")],
    );
    assert_eq!(serve.status.code(), Some(2));
    assert!(!dir.path().join(".local").exists(), "nothing written");
}

#[test]
fn sign_prints_a_header_the_signup_function_accepts() {
    let dir = TempDir::new("relay-local-demo");
    let body = r#"{"email":"you@example.com"}"#;
    let output = relay_local(dir.path(), &["sign", "--key", "k", body], &[]);
    assert!(output.status.success());
    let header = String::from_utf8(output.stdout).unwrap();
    let key = SecretString::from("k");
    assert_eq!(
        signature::verify(&key, Some(header.trim()), body.as_bytes(), SystemTime::now()),
        Ok(())
    );

    let default = relay_local(dir.path(), &["sign", body], &[]);
    let header = String::from_utf8(default.stdout).unwrap();
    let local = SecretString::from(LOCAL_SECRETS[0]);
    assert_eq!(
        signature::verify(&local, Some(header.trim()), body.as_bytes(), SystemTime::now()),
        Ok(())
    );
}

/// The lines a running `relay-local` prints, as they come.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn follow(stdout: std::process::ChildStdout) -> Lines {
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(receive)
    }

    /// The first line from now on that satisfies `wanted` (a generous cap keeps a broken run
    /// from hanging the suite; nothing here depends on how fast it is).
    fn until(&self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            match self.0.recv_timeout(std::time::Duration::from_secs(120)) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(error) => panic!("relay-local stopped printing before the expected line: {error}"),
            }
        }
    }
}

/// A child process that is killed if the test ends before it exits.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn serve_queues_what_keap_cannot_take_retries_it_and_stops_on_sigterm() {
    let dir = TempDir::new("relay-local-demo");
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay-local"));
    command.args([
        "serve",
        "--sandbox",
        "--port",
        "0",
        "--sandbox-port",
        "0",
        "--site-port",
        "0",
        "--drain-every",
        "1",
    ]);
    command
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("KEAP_") || name.starts_with("SIGNUP_")) {
        command.env_remove(name);
    }
    let mut child = Running(command.spawn().unwrap());
    let lines = Lines::follow(child.0.stdout.take().unwrap());
    let relay_line = lines.until(|line| line.starts_with("✓ relay on "));
    let relay = relay_line
        .trim_start_matches("✓ relay on ")
        .split(':')
        .take(3)
        .collect::<Vec<_>>()
        .join(":");
    lines.until(|line| line.contains("Keap is not connected yet"));
    lines.until(|line| line == "== Serving (Ctrl-C to stop)");

    let client = reqwest::Client::new();
    let unknown = client.get(format!("{relay}/signup")).send().await.unwrap();
    assert_eq!(unknown.status(), 404, "API Gateway has no GET /signup route");
    assert_eq!(unknown.text().await.unwrap(), r#"{"message":"Not Found"}"#);

    // Nobody connected Keap: the signup function queues the signup, signup-retry keeps it.
    let body = r#"{"email":"grace@example.com"}"#;
    let header = signature::sign(
        &SecretString::from(LOCAL_SECRETS[0]),
        signature::unix_seconds(SystemTime::now()),
        body.as_bytes(),
    );
    let signup = client
        .post(format!("{relay}/signup"))
        .header("content-type", "application/json")
        .header("x-signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 202);
    assert!(signup.text().await.unwrap().contains(r#""queued":true"#));
    let drained = lines.until(|line| line.starts_with("↻ signup-retry:"));
    assert!(drained.contains("0 delivered, 1 back in the queue"), "{drained}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    lines.until(|line| line == "✓ stopped");
    assert!(child.0.wait().unwrap().success());
}
