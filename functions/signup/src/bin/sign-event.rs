//! Puts a fresh `X-Signature` on API Gateway event files, for `cargo lambda invoke`.
//!
//! ```text
//! SIGNUP_SIGNING_KEY=… sign-event events/signup-valid.json > /tmp/signup.json
//! SIGNUP_SIGNING_KEY=… sign-event --write events/signup-*.json
//! ```
//!
//! The key is the app secret's `signup_signing_key`. A signature is valid for 300 s.

use std::process::ExitCode;
use std::time::SystemTime;

use keap_relay::SecretString;
use keap_relay::signup::signature::unix_seconds;
use signup::event_signing::resign_event;

const USAGE: &str = "usage: SIGNUP_SIGNING_KEY=<key> sign-event [--write] EVENT.json...\n\
  Replaces each event's x-signature header with a signature of its body made now.\n\
  Without --write the (single) signed event goes to standard output.";

fn main() -> ExitCode {
    let mut write = false;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--write" | "-w" => write = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => files.push(arg),
        }
    }
    let key = match std::env::var("SIGNUP_SIGNING_KEY") {
        Ok(key) if !key.is_empty() => SecretString::from(key),
        _ => {
            eprintln!("SIGNUP_SIGNING_KEY is not set\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if files.is_empty() || (!write && files.len() > 1) {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let now = unix_seconds(SystemTime::now());
    for file in &files {
        let signed = std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| resign_event(&text, &key, now).map_err(|e| e.to_string()));
        let result = match signed {
            Ok(signed) if write => std::fs::write(file, signed).map_err(|e| e.to_string()),
            Ok(signed) => {
                print!("{signed}");
                Ok(())
            }
            Err(problem) => Err(problem),
        };
        if let Err(problem) = result {
            eprintln!("{file}: {problem}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
