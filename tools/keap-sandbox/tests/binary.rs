//! The `keap-sandbox` binary: flags, the URL lines it prints, and serving.

mod common;

use std::process::Stdio;

use common::{client, json_of};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_keap-sandbox");

#[tokio::test]
async fn binary_prints_its_urls_and_serves_with_the_given_flags() {
    let mut child = Command::new(BINARY)
        .args([
            "--port",
            "0",
            "--auto-approve",
            "--access-ttl",
            "60",
            "--reuse-policy",
            "revoke-family",
            "--client-id",
            "cli-app",
            "--client-secret",
            "cli-secret",
            "--api-key",
            "KeapAK-cli",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = std::collections::HashMap::new();
    while urls.len() < 4 {
        let line = lines.next_line().await.unwrap().expect("URL lines before exit");
        let (name, value) = line.split_once('=').expect("NAME=value");
        urls.insert(name.to_owned(), value.to_owned());
    }
    let base = &urls["KEAP_SANDBOX_URL"];
    assert_eq!(urls["KEAP_API_URL"], format!("{base}/crm/rest"));
    assert_eq!(urls["KEAP_TOKEN_URL"], format!("{base}/token"));
    assert_eq!(urls["KEAP_AUTHORIZE_URL"], format!("{base}/app/oauth/authorize"));

    let grant = client()
        .post(format!("{base}/_sandbox/grant"))
        .json(&json!({"client_id": "cli-app"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(grant).await["expires_in"], 60);
    let tags = client()
        .get(format!("{}/v1/tags", urls["KEAP_API_URL"]))
        .header("X-Keap-API-Key", "KeapAK-cli")
        .send()
        .await
        .unwrap();
    assert_eq!(tags.status(), StatusCode::OK);
    let default_key = client()
        .get(format!("{}/v1/tags", urls["KEAP_API_URL"]))
        .header("X-Keap-API-Key", keap_sandbox::DEFAULT_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        default_key.status(),
        StatusCode::UNAUTHORIZED,
        "--api-key replaces the default"
    );
    let authorize = client()
        .get(&urls["KEAP_AUTHORIZE_URL"])
        .query(&[
            ("client_id", "cli-app"),
            ("redirect_uri", "http://localhost/cb"),
            ("response_type", "code"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(authorize.status(), StatusCode::FOUND, "--auto-approve");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn bad_flags_exit_with_usage() {
    for args in [
        &["--port", "huge"][..],
        &["--client-id", "only-id"],
        &["--reuse-policy", "sometimes"],
        &["--bogus"],
    ] {
        let output = Command::new(BINARY).args(args).output().await.unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("usage: keap-sandbox"));
    }
    let help = Command::new(BINARY).arg("--help").output().await.unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--rate-per-second"));
}
