//! Serves keap-relay's HTTP API on 127.0.0.1 for schemathesis (`scripts/check-hostile.sh`):
//! the real handlers, connected to an in-process Keap sandbox. Prints `RELAY_URL=…` once ready,
//! then serves until stdin closes or the process is killed.
//!
//! usage: relay-hostile-server [--port N]

use std::net::SocketAddr;

use relay_tests::relay_server;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut options = relay_server::RelayOptions::default();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => {
                let port: u16 = args.next().ok_or("--port needs a value")?.parse()?;
                options.listen = SocketAddr::from(([127, 0, 0, 1], port));
            }
            other => return Err(format!("unknown argument {other:?}; usage: relay-hostile-server [--port N]").into()),
        }
    }
    let server = relay_server::start(options).await?;
    println!("RELAY_URL={}", server.url());
    println!("RELAY_ADMIN_PASSWORD={}", relay_server::ADMIN_PASSWORD);
    println!("RELAY_SIGNING_KEY={}", relay_server::SIGNING_KEY);
    // Serve until whoever started us closes our stdin (or kills us).
    let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
    drop(server);
    Ok(())
}
