//! One contender of the rotation storm (`relay_bench::storm`): its own `TokenSource` (own
//! cache, own lease holder id) over the file store, with the production timings of
//! `TokenSettings::from_config`. Prints `ready`; reads the start instant (unix ns) from stdin;
//! at that instant asks for a credential once; prints `done` and exits.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keap_relay::ExposeSecret;
use keap_relay::config::{AuthMode, local_config};
use keap_relay::store::counting::CountingStore;
use keap_relay::store::file::FileStore;
use keap_relay::token::{Credential, CredentialSource, TokenSettings};
use relay_bench::seed;
use relay_bench::storm::{ContenderArgs, ContenderLine, unix_ns};
use sha2::{Digest, Sha256};

fn emit(line: &ContenderLine) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", serde_json::to_string(line).unwrap_or_default());
    let _ = stdout.flush();
}

fn fail(message: String) -> ! {
    eprintln!("storm-contender: {message}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: ContenderArgs = std::env::args()
        .nth(1)
        .and_then(|arg| serde_json::from_str(&arg).ok())
        .unwrap_or_else(|| fail("expects one JSON argument (ContenderArgs)".into()));
    let counting = Arc::new(CountingStore::new(Arc::new(FileStore::new(&args.store_dir))));
    // The production timings: template defaults for margin, lease and Keap timeout.
    let settings = TokenSettings::from_config(&local_config(AuthMode::OAuth, "http://127.0.0.1"));
    let source = seed::token_source(counting.clone(), &args.secret_id, &args.token_url, settings)
        .unwrap_or_else(|e| fail(e.to_string()));
    emit(&ContenderLine::Ready);

    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        fail("no start instant on stdin".into());
    }
    let start: u64 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| fail(format!("bad start instant {line:?}")));
    let wait = start.saturating_sub(unix_ns(SystemTime::now()));
    tokio::time::sleep(Duration::from_nanos(wait)).await;

    let started = unix_ns(SystemTime::now());
    let result = source.credential().await;
    let finished = unix_ns(SystemTime::now());
    let counts = counting.counts();
    let (ok, error, fingerprint, generation) = match result {
        Ok(Credential::AccessToken { token, generation }) => {
            let hash = Sha256::digest(token.expose_secret().as_bytes());
            (true, None, Some(hex::encode(&hash[..8])), Some(generation))
        }
        Ok(Credential::ApiKey(_)) => (false, Some("an API key from an OAuth source".to_owned()), None, None),
        Err(error) => (false, Some(error.to_string()), None, None),
    };
    emit(&ContenderLine::Done {
        ok,
        error,
        fingerprint,
        generation,
        started_unix_ns: started,
        finished_unix_ns: finished,
        store_calls: counts.total(),
        store_writes: counts.writes(),
        versions_created: counts.created,
    });
}
