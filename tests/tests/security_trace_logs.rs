//! TRACE logging keeps the administrator's credentials out of the logs (issue 14, item 1).
//!
//! The real `oauth` binary runs under a Lambda Runtime API of its own
//! (`relay_tests::lambda_pool`) with `RUST_LOG=trace` and `AWS_LAMBDA_LOG_LEVEL=TRACE`, and
//! serves `GET /oauth/start` (the sample event in `events/`) with
//! `Authorization: Basic base64(admin:<password>)`. At TRACE the Lambda runtime logs every raw
//! event it receives, header included; `keap_relay::app::init_tracing` caps the runtime, HTTP
//! and AWS SDK crates at INFO, so nothing the process writes may hold the password: raw,
//! Base64 (with its user name, alone, URL-safe), URL-encoded (`+` and `%20` for a space) or
//! JSON-escaped.
//!
//! The control: the same binary with `KEAP_UNSAFE_TRACE_PAYLOADS=1` does write the Base64
//! credentials (so the audit would see a leak), after its warning line.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use keap_relay::SecretString;
use keap_relay::store::SecretStore;
use keap_relay::store::file::FileStore;
use relay_bench::deployment::{DeploymentEnv, StoreEnv};
use relay_tests::lambda_pool::{FunctionPool, Outcome, build_function_binaries};
use serde_json::{Value, json};
use test_support::temp::TempDir;

/// Characters that JSON escaping and URL encoding change, so each form differs from the raw one.
const PASSWORD: &str = r#"tr@ce "audit" pa\ss/w0rd+&=%?"#;

/// Every form in which the password could show up in a log line.
fn forms_of_the_password() -> Vec<(&'static str, String)> {
    let credentials = format!("admin:{PASSWORD}");
    let url_encoded: String = form_urlencoded::byte_serialize(PASSWORD.as_bytes()).collect();
    let json_escaped = serde_json::to_string(PASSWORD).unwrap();
    let forms = vec![
        ("raw", PASSWORD.to_owned()),
        ("base64 of admin:password", STANDARD.encode(&credentials)),
        ("url-safe base64 of admin:password", URL_SAFE.encode(&credentials)),
        ("url-safe base64, no padding", URL_SAFE_NO_PAD.encode(&credentials)),
        ("base64 of the password", STANDARD.encode(PASSWORD)),
        ("url-encoded", url_encoded.clone()),
        ("percent-encoded", url_encoded.replace('+', "%20")),
        ("json-escaped", json_escaped.trim_matches('"').to_owned()),
        (
            "json-escaped twice",
            serde_json::to_string(&json_escaped)
                .unwrap()
                .trim_matches('"')
                .to_owned(),
        ),
    ];
    for (name, form) in &forms {
        assert!(form.len() >= 8, "{name} is too short to search for");
    }
    forms
}

/// Runs one `GET /oauth/start` through a fresh `oauth` process with `extra` environment and
/// returns the answer and everything the process wrote.
async fn start_under_trace(bin_dir: &Path, scratch: &Path, label: &str, extra: &[(&str, &str)]) -> (Value, String) {
    let log_dir = scratch.join(label);
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut deployment = DeploymentEnv::new(
        "oauth",
        "unset",
        "https://keap.invalid",
        StoreEnv::File(scratch.join("secrets")),
        &scratch.join("home"),
    );
    deployment.app_secret_id = "app".into();
    deployment.token_secret_id = "token".into();
    let overrides = [("RUST_LOG", "trace"), ("AWS_LAMBDA_LOG_LEVEL", "TRACE")];
    let env = deployment.vars_with(overrides.iter().chain(extra));
    let pool = FunctionPool::start(label, &bin_dir.join("oauth"), env, 1, Duration::from_secs(15), &log_dir)
        .await
        .unwrap();

    let mut event = test_support::events::json("oauth-start.json");
    event["headers"]["authorization"] = json!(format!("Basic {}", STANDARD.encode(format!("admin:{PASSWORD}"))));
    let outcome = pool.invoke(event.to_string()).await;
    pool.shutdown().await;
    let logs: String = pool
        .log_files()
        .iter()
        .map(|file| std::fs::read_to_string(file).unwrap_or_default())
        .collect();
    let Outcome::Response(answer) = outcome else {
        panic!("{label}: /oauth/start was not answered: {outcome:?}\n{logs}");
    };
    (answer, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth_function_at_trace_never_logs_the_admin_password() {
    let bin_dir = build_function_binaries(&["oauth"]);
    let scratch = TempDir::new("security-trace-logs");
    std::fs::create_dir_all(scratch.path().join("home")).unwrap();
    let store = FileStore::new(scratch.path().join("secrets"));
    let app_secret = json!({
        "client_id": "trace-audit-client",
        "client_secret": "trace-audit-client-secret",
        "signup_signing_key": "trace-audit-signing-key",
        "admin_password": PASSWORD,
    });
    store
        .put_version("app", "v1", &SecretString::from(app_secret.to_string()))
        .await
        .unwrap();

    let (answer, logs) = start_under_trace(&bin_dir, scratch.path(), "oauth", &[]).await;
    assert_eq!(answer["statusCode"], 302, "the administrator got through: {answer}");
    assert!(
        logs.contains("sending the administrator to Keap's authorize page"),
        "the audit reads the process's log lines:\n{logs}"
    );
    for (form, value) in forms_of_the_password() {
        assert!(
            !logs.contains(&value),
            "the admin password ({form}: {value}) is in the oauth function's TRACE logs:\n{logs}"
        );
    }

    // The control: with the cap lifted, the raw event (with the header) is logged, and the
    // process said so first.
    let (answer, logs) = start_under_trace(
        &bin_dir,
        scratch.path(),
        "oauth-unsafe",
        &[("KEAP_UNSAFE_TRACE_PAYLOADS", "1")],
    )
    .await;
    assert_eq!(answer["statusCode"], 302, "{answer}");
    let credentials = STANDARD.encode(format!("admin:{PASSWORD}"));
    assert!(
        logs.contains(&credentials),
        "with KEAP_UNSAFE_TRACE_PAYLOADS=1 the raw event is logged (the audit above can see a leak):\n{logs}"
    );
    let warning = logs
        .lines()
        .position(|line| line.contains("UNSAFE: KEAP_UNSAFE_TRACE_PAYLOADS is set"))
        .expect("the warning line");
    let first_leak = logs.lines().position(|line| line.contains(&credentials)).unwrap();
    assert!(warning < first_leak, "the warning comes before anything it warns about");
}
