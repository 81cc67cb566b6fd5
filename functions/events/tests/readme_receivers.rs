//! The README's two receiver examples (Python and JavaScript), run as written against the
//! `events` function's own delivery: a signed event is taken (and a repeat printed once), a
//! wrong key and a stale timestamp are refused with 401.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use keap_relay::SecretString;
use keap_relay::events::Event;
use keap_relay::events::webhook::{Delivery, Webhook};

const KEY: &str = "readme-receiver-test-key";

/// The code block right after the README's `<!-- marker: … -->` line.
fn readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let at = readme
        .find(&format!("<!-- {marker}:"))
        .unwrap_or_else(|| panic!("README has no {marker} block"));
    let rest = &readme[at..];
    let start = rest.find("```").unwrap();
    let code = &rest[start..];
    let code = &code[code.find('\n').unwrap() + 1..];
    code[..code.find("\n```").unwrap()].to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A receiver process (killed on drop) and the lines it prints.
struct Receiver {
    child: Child,
    lines: mpsc::Receiver<String>,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(program: &str, file_name: &str, code: &str) -> Receiver {
    let dir = tempfile_dir();
    let file = dir.join(file_name);
    std::fs::write(&file, code).unwrap();
    let port = free_port();
    let mut child = Command::new(program)
        .arg(&file)
        .env("EVENTS_SIGNING_KEY", KEY)
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (the README's receiver needs it): {e}"));
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    // Listening once a connection is accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{program} {file_name} did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Receiver {
        child,
        lines,
        url: format!("http://127.0.0.1:{port}/events"),
        dir,
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keap-relay-readme-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn check(receiver: Receiver) {
    let webhook = Webhook::new(&receiver.url).unwrap();
    let key = SecretString::from(KEY);
    let event = Event::signup_queued("ada@example.com", uuid::Uuid::new_v4(), "keap_unavailable");
    let now = SystemTime::now();
    assert_eq!(
        webhook.deliver(&event, &key, now).await,
        Delivery::Delivered { status: 204 }
    );
    assert_eq!(
        webhook.deliver(&event, &key, now).await,
        Delivery::Delivered { status: 204 }
    );

    let refused = |delivery: Delivery| matches!(&delivery, Delivery::Retry { detail, .. } if detail.contains("401"));
    let other_key = SecretString::from("someone-elses-key");
    let other = Event::connection_recovered("acct");
    assert!(refused(webhook.deliver(&other, &other_key, now).await));
    let stale = now - Duration::from_secs(301);
    assert!(refused(webhook.deliver(&other, &key, stale).await));

    let printed: Vec<String> =
        std::iter::from_fn(|| receiver.lines.recv_timeout(Duration::from_secs(2)).ok()).collect();
    assert_eq!(
        printed.len(),
        1,
        "the repeat is dropped, the refused are not printed: {printed:?}"
    );
    assert!(printed[0].starts_with("signup.queued "), "{printed:?}");
    assert!(printed[0].contains("ada@example.com"), "{printed:?}");
}

#[tokio::test]
async fn the_python_receiver_of_the_readme_verifies_and_drops_repeats() {
    check(start("python3", "receiver.py", &readme_block("receiver-python"))).await;
}

#[tokio::test]
async fn the_javascript_receiver_of_the_readme_verifies_and_drops_repeats() {
    check(start("node", "receiver.js", &readme_block("receiver-js"))).await;
}
