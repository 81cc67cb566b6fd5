//! `moto_server` (AWS services on localhost) started and stopped by a test, and Secrets
//! Manager and SQS clients aimed at it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `moto_server` on a free port, killed on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

/// Where `moto_server` is: `$MOTO_SERVER`, the workspace's `.venv`, or `PATH`.
pub fn find_moto_server() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("MOTO_SERVER") {
        return Ok(path.into());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.exists() {
        return Ok(venv);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("moto_server"))
                .find(|p| p.exists())
        })
        .ok_or_else(|| {
            "moto_server not found: set MOTO_SERVER, or install it into .venv (scripts/bootstrap.sh), or put it on PATH"
                .into()
        })
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl MotoServer {
    /// Starts `moto_server` and waits until it answers (at most 30 s).
    pub async fn start() -> Self {
        let program = find_moto_server().unwrap_or_else(|message| panic!("{message}"));
        let port = free_port();
        let child = Command::new(&program)
            .args(["-p", &port.to_string(), "-H", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run scripts/bootstrap.sh moto",
                    program.display()
                )
            });
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http.get(format!("{}/moto-api/", server.endpoint)).send().await.is_ok() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration of a Secrets Manager client for a local endpoint, with dummy
/// credentials (to adjust before `build()`).
pub fn sm_config(endpoint: &str) -> aws_sdk_secretsmanager::config::Builder {
    use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "keap-relay-tests"))
        .endpoint_url(endpoint)
}

/// A Secrets Manager client for a local endpoint (moto), with dummy credentials.
pub fn sm_client(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::from_conf(sm_config(endpoint).build())
}

/// An SQS client for a local endpoint (moto), with dummy credentials.
pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "keap-relay-tests"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A DynamoDB client for a local endpoint (moto), with dummy credentials; with the relay's own
/// timeouts and retries when `relay_bounds` (else the SDK's defaults, which a loaded test
/// machine needs for tests of anything but those bounds).
pub fn dynamodb_client(endpoint: &str, relay_bounds: bool) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let builder = aws_sdk_dynamodb::Config::builder();
    let builder = if relay_bounds {
        keap_relay::signup::replay::with_replay_bounds(builder)
    } else {
        builder
    };
    let config = builder
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "keap-relay-tests"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Creates the replay table as template.yaml declares it (partition key `pk`, on demand),
/// with the SDK's default timeouts (moto's first DynamoDB call loads the service).
pub async fn create_replay_table(endpoint: &str, table: &str) {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    dynamodb_client(endpoint, false)
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("moto creates the replay table");
}
