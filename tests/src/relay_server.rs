//! keap-relay's HTTP API on 127.0.0.1 for hostile-input tests (schemathesis, security tests):
//! the real `oauth` and `signup` handlers wired as in production (`App` over a store, the
//! adapters of each function), behind `relay-local`'s API Gateway stand-in
//! (`relay_local::gateway`) routing every request to a handler (`Routing::Handlers`, so the
//! handlers' own 404 and 405 answers are exercised), against an in-process Keap sandbox that
//! auto-approves.
//!
//! Secrets live in a memory store; the queue is a memory queue, so a signup Keap cannot take
//! is answered 202 as in a deployment with `SIGNUP_QUEUE_URL`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use keap_relay::SecretString;
use keap_relay::app::App;
use keap_relay::config::Config;
use keap_relay::signup::{MemoryQueue, SignupQueue};
use keap_relay::store::SecretStore;
use keap_relay::store::memory::MemoryStore;
use keap_sandbox::{Sandbox, SandboxConfig};

use relay_local::gateway::{self, Functions, Routing};

pub const APP_SECRET_ID: &str = "keap-relay/app";
pub const TOKEN_SECRET_ID: &str = "keap-relay/token";
pub const ADMIN_PASSWORD: &str = "hostile-admin-password";
pub const SIGNING_KEY: &str = "hostile-signup-signing-key";
pub const WELCOME_TAG: &str = "Welcome";
/// The origin the website forms accept (schemathesis sends it as `Origin`).
pub const FORM_ORIGIN: &str = "https://www.example.com";
/// The named form (`/form/contact`).
pub const FORM_NAME: &str = "contact";
/// The callback URL registered with the (sandbox) Keap client.
pub const REDIRECT_PATH: &str = "/oauth/callback";

/// What to set up.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Store a sandbox-issued pair before serving, as if the administrator had connected.
    pub connected: bool,
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Time one signup may spend retrying Keap before it is queued.
    pub retry_budget: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            connected: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            retry_budget: Duration::from_millis(500),
        }
    }
}

/// A running relay. Dropping it stops serving.
pub struct RelayServer {
    pub addr: SocketAddr,
    pub sandbox: Sandbox,
    pub store: Arc<MemoryStore>,
    pub queue: Arc<MemoryQueue>,
    /// The OAuth function's app (its connection reads the same token secret).
    pub oauth_app: Arc<App>,
    /// The functions' dependencies (the signup function's, for driving its handler directly).
    pub functions: Arc<Functions>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl RelayServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn redirect_uri(&self) -> String {
        format!("{}{REDIRECT_PATH}", self.url())
    }

    /// The app secret as the operator writes it.
    pub fn app_secret_json() -> String {
        serde_json::json!({
            "client_id": keap_sandbox::DEFAULT_CLIENT_ID,
            "client_secret": keap_sandbox::DEFAULT_CLIENT_SECRET,
            "api_key": keap_sandbox::DEFAULT_API_KEY,
            "signup_signing_key": SIGNING_KEY,
            "admin_password": ADMIN_PASSWORD,
        })
        .to_string()
    }
}

/// The configuration a deployment would have, pointed at the sandbox.
/// A `POST /signup` with `body` and `X-Signature: signature`, as API Gateway hands it to the
/// handler.
pub fn signup_request(body: &[u8], signature: &str) -> lambda_http::Request {
    let (parts, ()) = http::Request::builder()
        .method("POST")
        .uri("/signup")
        .header("content-type", "application/json")
        .header("x-signature", signature)
        .body(())
        .expect("a valid request")
        .into_parts();
    gateway::lambda_request(&parts, &Bytes::copy_from_slice(body)).expect("a valid API Gateway event")
}

pub fn config(sandbox: &Sandbox, redirect_uri: &str, retry_budget: Duration) -> Config {
    Config {
        app_secret_id: APP_SECRET_ID.into(),
        token_secret_id: TOKEN_SECRET_ID.into(),
        redirect_uri: Some(redirect_uri.to_owned()),
        api_url: sandbox.api_url(),
        token_url: sandbox.token_url(),
        authorize_url: sandbox.authorize_url(),
        welcome_tag: Some(WELCOME_TAG.into()),
        http_timeout: Duration::from_secs(5),
        signup_retry_budget: retry_budget,
        welcome_email: Some(keap_relay::config::WelcomeEmail {
            user_id: 1,
            subject: "Welcome".into(),
            html_body: "<p>Welcome aboard.</p>".into(),
        }),
        // Any custom field label or lead source name a schema-valid body carries is created,
        // so such a body is taken (openapi.yaml; scripts/check-hostile.sh).
        signup_options: keap_relay::config::SignupOptions {
            create_custom_fields: true,
            create_lead_sources: true,
            ..Default::default()
        },
        forms: forms(),
        ..Config::defaults()
    }
}

/// The website forms: posts from [`FORM_ORIGIN`] to `/form` and `/form/contact`; no thank-you
/// or error page (so plain forms get the relay's pages, not a redirect off this machine), no
/// per-address limit (every request comes from 127.0.0.1), the address recorded.
pub fn forms() -> keap_relay::forms::FormsConfig {
    let vars = [
        ("FORM_ALLOWED_ORIGINS", FORM_ORIGIN.to_owned()),
        ("FORM_RATE_LIMIT_PER_MINUTE", "0".to_owned()),
        ("FORM_RECORD_IP", "true".to_owned()),
        (
            "FORMS_JSON",
            serde_json::json!({ FORM_NAME: { "tags": ["Contact form"] } }).to_string(),
        ),
    ];
    keap_relay::forms::FormsConfig::from_lookup(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()))
        .expect("the test server's form settings are valid")
}

/// Starts the sandbox and the relay.
pub async fn start(options: RelayOptions) -> std::io::Result<RelayServer> {
    let sandbox = Sandbox::start(SandboxConfig::default()).await?;
    sandbox.set_auto_approve(true);
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let redirect_uri = format!("http://{addr}{REDIRECT_PATH}");

    let store = Arc::new(MemoryStore::new());
    store
        .put_version(
            APP_SECRET_ID,
            "app-v1",
            &SecretString::from(RelayServer::app_secret_json()),
        )
        .await
        .map_err(std::io::Error::other)?;
    let queue = Arc::new(MemoryQueue::new());
    let config = config(&sandbox, &redirect_uri, options.retry_budget);
    let shared_store: Arc<dyn SecretStore> = store.clone();
    let shared_queue: Arc<dyn SignupQueue> = queue.clone();
    // One app per function, as two Lambda functions share nothing but the store and the state
    // table (here its notices: what signup notes, the console shows).
    let notices: Arc<dyn keap_relay::notices::Notices> = Arc::new(keap_relay::notices::MemoryNotices::new());
    let oauth_app = Arc::new(
        App::with_parts(config.clone(), shared_store.clone(), None)
            .map_err(std::io::Error::other)?
            .with_notices(notices.clone()),
    );
    let signup_app = App::with_parts(config, shared_store, Some(shared_queue))
        .map_err(std::io::Error::other)?
        .with_notices(notices);
    if options.connected {
        oauth_app
            .connection
            .connect(test_support::grant::minted(&sandbox), false)
            .await
            .map_err(std::io::Error::other)?;
    }
    let functions = Arc::new(Functions {
        oauth: oauth::Deps::from_app(&oauth_app),
        signup: signup::Deps::from_app(&signup_app),
    });
    let router = gateway::router(functions.clone(), Routing::Handlers);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(RelayServer {
        addr,
        sandbox,
        store,
        queue,
        oauth_app,
        functions,
        stop: Some(stop),
    })
}
