//! A local stand-in for a human-check provider's siteverify endpoint (Cloudflare Turnstile,
//! hCaptcha and Google reCAPTCHA share it): a form post of `secret`, `response` and optionally
//! `remoteip`, answered `200` with `{"success": bool, "error-codes": [...]}` and, on success,
//! `challenge_ts` and `hostname`, as the real ones answer. The form route's tests and the local
//! run point `FORM_CAPTCHA_VERIFY_URL` at it.
//!
//! It knows one secret and accepts tokens that start with [`PASSING_TOKEN_PREFIX`] (Turnstile's
//! own test token is `XXXX.DUMMY.TOKEN.XXXX`), each once: a token seen before is
//! `timeout-or-duplicate`, as with the real providers.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Tokens that pass start with this.
pub const PASSING_TOKEN_PREFIX: &str = "XXXX.DUMMY.TOKEN";
/// The secret the fake knows unless told another.
pub const DEFAULT_SECRET: &str = "local-captcha-secret";

#[derive(Debug, Default)]
struct Seen {
    tokens: HashSet<String>,
    calls: usize,
    remote_ips: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    secret: String,
    seen: Mutex<Seen>,
}

/// A running fake siteverify. Dropping it stops it.
#[derive(Debug)]
pub struct FakeSiteverify {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for FakeSiteverify {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl FakeSiteverify {
    /// Serves on `127.0.0.1` at a free port.
    pub async fn start(secret: &str) -> std::io::Result<Self> {
        Self::bind(secret, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    pub async fn bind(secret: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            secret: secret.to_owned(),
            seen: Mutex::new(Seen::default()),
        });
        let app = Router::new()
            .route("/siteverify", post(siteverify))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:PORT/siteverify`.
    pub fn url(&self) -> String {
        format!("http://{}/siteverify", self.addr)
    }

    /// Verification requests answered so far.
    pub fn calls(&self) -> usize {
        self.shared.seen.lock().unwrap_or_else(PoisonError::into_inner).calls
    }

    /// The `remoteip` values sent so far, in order.
    pub fn remote_ips(&self) -> Vec<String> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remote_ips
            .clone()
    }
}

async fn siteverify(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> axum::Json<Value> {
    let mut secret = None;
    let mut response = None;
    let mut remote_ip = None;
    for (name, value) in form_urlencoded::parse(&body) {
        match name.as_ref() {
            "secret" => secret = Some(value.into_owned()),
            "response" => response = Some(value.into_owned()),
            "remoteip" => remote_ip = Some(value.into_owned()),
            _ => {}
        }
    }
    let mut seen = shared.seen.lock().unwrap_or_else(PoisonError::into_inner);
    seen.calls += 1;
    if let Some(ip) = remote_ip {
        seen.remote_ips.push(ip);
    }
    let failure = |code: &str| axum::Json(json!({ "success": false, "error-codes": [code] }));
    match (secret, response) {
        (None, _) => failure("missing-input-secret"),
        (Some(s), _) if s != shared.secret => failure("invalid-input-secret"),
        (_, None) => failure("missing-input-response"),
        (_, Some(token)) if !token.starts_with(PASSING_TOKEN_PREFIX) => failure("invalid-input-response"),
        (_, Some(token)) if !seen.tokens.insert(token.clone()) => failure("timeout-or-duplicate"),
        _ => axum::Json(json!({
            "success": true,
            "error-codes": [],
            "challenge_ts": "2026-01-01T00:00:00.000Z",
            "hostname": "localhost",
        })),
    }
}
