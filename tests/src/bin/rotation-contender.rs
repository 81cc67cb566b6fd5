//! One contender "process" of the rotation storm: its own `TokenSource` (own cache, own
//! holder id) over the store named in its arguments, against Keap at `token_url`.
//! Prints JSON lines: `ready`, then after a `go` line on stdin one `call` per caller and `done`.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::keap::oauth::{OAuthClient, OAuthError, TokenEndpoint};
use keap_relay::store::counting::CountingStore;
use keap_relay::token::{Credential, CredentialSource, TokenGrant, TokenSource};
use relay_tests::rotation::{ContenderArgs, ContenderLine, StoreSpec, fingerprint};

/// Holds a Keap call back while the pause marker exists, so a test can kill the lease holder
/// before its request leaves.
#[derive(Debug)]
struct PausingKeap {
    inner: OAuthClient,
    marker: Option<std::path::PathBuf>,
    pause: Duration,
}

#[async_trait]
impl TokenEndpoint for PausingKeap {
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, OAuthError> {
        if self.marker.as_ref().is_some_and(|m| m.exists()) {
            println!("{{\"kind\":\"pausing\"}}");
            tokio::time::sleep(self.pause).await;
        }
        self.inner.refresh(refresh_token).await
    }
}

fn emit(line: &ContenderLine) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", serde_json::to_string(line).expect("line serializes"));
    let _ = stdout.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: ContenderArgs =
        serde_json::from_str(&std::env::args().nth(1).expect("one JSON argument")).expect("valid arguments");
    let store = StoreSpec::parse(&args.store).expect("store spec").open();
    let counting = Arc::new(CountingStore::new(store));
    let settings = args.timings.settings();
    let oauth = args.oauth_client();
    let keap = Arc::new(PausingKeap {
        inner: oauth,
        marker: args.pause_marker.clone(),
        pause: Duration::from_millis(args.pause_ms),
    });
    let source = TokenSource::new(counting.clone(), args.secret_id.clone(), keap, settings).expect("settings");
    if args.warm {
        source.credential().await.expect("warm-up credential");
    }
    emit(&ContenderLine::Ready {
        process_id: source.process_id().to_owned(),
    });
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).expect("go line");
    counting.reset();
    let started = Instant::now();
    let callers: Vec<_> = (0..args.callers)
        .map(|_| {
            let source = source.clone();
            tokio::spawn(async move {
                let result = source.credential().await;
                let elapsed_ms = started.elapsed().as_millis() as u64;
                match result {
                    Ok(Credential::AccessToken { token, generation }) => ContenderLine::Call {
                        ok: true,
                        fingerprint: Some(fingerprint(&token)),
                        generation: Some(generation),
                        error: None,
                        elapsed_ms,
                    },
                    Ok(Credential::ApiKey(_)) => unreachable!("oauth source"),
                    Err(error) => ContenderLine::Call {
                        ok: false,
                        fingerprint: None,
                        generation: None,
                        error: Some(error.to_string()),
                        elapsed_ms,
                    },
                }
            })
        })
        .collect();
    for caller in callers {
        emit(&caller.await.expect("caller task"));
    }
    let counts = counting.counts();
    emit(&ContenderLine::Done {
        store_calls: counts.total(),
        store_writes: counts.writes(),
        created: counts.created,
    });
}
