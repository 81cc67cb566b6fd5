//! moto's Secrets Manager on loopback (the Python `moto_server` from the workspace `.venv`),
//! so a function binary reads its secrets through the real AWS SDK client.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};

use crate::{BenchError, Result};

/// `moto_server`, killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

/// `$MOTO_SERVER`, else `<workspace>/.venv/bin/moto_server`, if it exists.
pub fn find(workspace: &Path) -> Option<PathBuf> {
    std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| Some(workspace.join(".venv/bin/moto_server")))
        .filter(|path| path.exists())
}

impl Moto {
    pub async fn start(program: &Path) -> Result<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(BenchError::io("pick a port for moto"))?
            .port();
        let child = Command::new(program)
            .args(["-p", &port.to_string(), "-H", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BenchError::io_at("start", program))?;
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{}/moto-api/", moto.endpoint)).send().await.is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "moto_server did not answer on port {port} within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(moto)
    }

    /// A Secrets Manager client for this server, with dummy credentials.
    pub fn client(&self) -> aws_sdk_secretsmanager::Client {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("bench", "bench", None, None, "relay-bench"))
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
