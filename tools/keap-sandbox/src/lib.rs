//! A faithful local stand-in for Keap: the OAuth authorize page, the token endpoint with
//! single-use rotating refresh tokens, and the slice of REST v1/v2 that keap-relay uses,
//! with fault injection and counters for tests.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sandbox = keap_sandbox::Sandbox::start(keap_sandbox::SandboxConfig::default()).await?;
//! let pair = sandbox.mint_grant("sandbox-client");
//! println!("{} {}", sandbox.api_url(), pair.access_token);
//! # Ok(()) }
//! ```

mod config;
mod crm;
mod faults;
mod http;
mod marketing;
mod oauth_store;
mod quota;
mod server;
pub mod siteverify;
mod stats;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{
    ClientConfig, DEFAULT_API_KEY, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, RateLimit, ReusePolicy,
    SandboxConfig,
};
pub use crm::ContactView;
pub use faults::{FaultSettings, Faults};
pub use marketing::{CampaignDef, CustomFieldDef, EmailTemplateDef, LeadSourceDef};
pub use oauth_store::TokenResponse;
pub use stats::{AuthKind, CallRecord, Stats};

/// Everything behind the one lock: holding it across a whole `/token` request is what
/// makes rotation atomic.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub oauth: oauth_store::OAuthStore,
    pub crm: crm::Crm,
    pub marketing: marketing::Marketing,
    pub quotas: quota::Quotas,
    pub stats: Stats,
}

impl World {
    pub(crate) fn contact_view(&self, email: &str) -> Option<ContactView> {
        let mut view = self.crm.contact_by_email(email)?;
        view.goals_achieved = self.marketing.goals_achieved.get(&view.id).copied().unwrap_or(0);
        view.emails_sent = self.marketing.subjects_sent_to(view.id);
        Some(view)
    }

    /// Sends an email with `subject` to each contact; all must exist. Err: the first unknown id.
    pub(crate) fn send_email(&mut self, contact_ids: &[i64], subject: &str) -> Result<(), i64> {
        self.crm.deliver_email(contact_ids)?;
        for id in contact_ids {
            let address = self.crm.address(*id).unwrap_or_default();
            self.marketing.record_sent(*id, subject, &address);
        }
        self.stats.emails_queued += contact_ids.len() as u64;
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SandboxConfig,
    pub auto_approve: AtomicBool,
    pub faults: Faults,
    world: Mutex<World>,
}

impl Shared {
    fn new(config: SandboxConfig) -> Self {
        Self {
            auto_approve: AtomicBool::new(config.auto_approve),
            config,
            faults: Faults::default(),
            world: Mutex::new(World::default()),
        }
    }

    /// Never held across an `.await`.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        // Handlers never panic while holding the lock; if one did, the data is still usable.
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn mint_grant(&self, client_id: &str) -> TokenResponse {
        let mut world = self.world();
        world.stats.grants_minted += 1;
        world.oauth.new_grant(&self.config, client_id)
    }
}

/// A running sandbox server. Dropping it (or `shutdown().await`) stops it.
#[derive(Debug)]
pub struct Sandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Sandbox {
    /// Serve on `127.0.0.1` at a free port.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Sandbox> {
        Self::bind(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Serve on `addr`.
    pub async fn bind(config: SandboxConfig, addr: SocketAddr) -> std::io::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let app = http::router(shared.clone()).into_make_service_with_connect_info::<server::ConnHandle>();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(server::SeverableListener(listener), app)
                .with_graceful_shutdown(async move {
                    // Either an explicit stop or the Sandbox being dropped.
                    let _ = stopped.await;
                })
                .await
        });
        tracing::debug!(%addr, "keap sandbox listening");
        Ok(Sandbox {
            shared,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stop accepting connections and wait for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "keap sandbox server stopped with an error")
                }
                Err(err) => tracing::warn!(error = %err, "keap sandbox server task failed"),
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// REST base, `{base}/crm/rest`; append `/v1/...` or `/v2/...`.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.base_url(), http::REST_PREFIX)
    }

    pub fn token_url(&self) -> String {
        format!("{}{}", self.base_url(), http::TOKEN_PATH)
    }

    pub fn authorize_url(&self) -> String {
        format!("{}{}", self.base_url(), http::AUTHORIZE_PATH)
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    pub fn stats(&self) -> Stats {
        self.shared.world().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.shared.world().stats = Stats::default();
    }

    /// Issue a valid pair for `client_id` directly, as if a user had authorized (for
    /// seeding token stores). Counted in `grants_minted`, not as a refresh or exchange.
    /// The client id is not checked: a pair minted for an unknown client cannot be
    /// refreshed, since refreshing authenticates the client.
    pub fn mint_grant(&self, client_id: &str) -> TokenResponse {
        self.shared.mint_grant(client_id)
    }

    /// Every access and refresh token issued so far, live or not (for log audits: a token a
    /// store has since pruned must not appear in a log either).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.world().oauth.issued_tokens()
    }

    /// Every access token issued so far is expired from now on.
    pub fn expire_access_tokens(&self) {
        self.shared.world().oauth.expire_access_tokens();
    }

    /// Every refresh token issued so far is expired from now on.
    pub fn expire_refresh_tokens(&self) {
        self.shared.world().oauth.expire_refresh_tokens();
    }

    /// Move the sandbox's clock forward (token and code expiry; not quota windows).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.world().oauth.advance_clock(by);
    }

    /// The oldest contact holding this email address (case-insensitive).
    pub fn contact_by_email(&self, email: &str) -> Option<ContactView> {
        self.shared.world().contact_view(email)
    }

    /// Defines a contact custom field (as an administrator would in Keap's UI).
    pub fn add_custom_field(&self, label: &str, field_type: &str, options: &[&str]) -> CustomFieldDef {
        let options = options.iter().map(|o| (*o).to_owned()).collect();
        self.shared
            .world()
            .marketing
            .add_custom_field(label, field_type, options)
            .unwrap_or_else(|e| panic!("sandbox custom field {label:?}: {e}"))
            .clone()
    }

    /// Deletes a custom field by label (ids the relay cached become unknown to Keap).
    pub fn remove_custom_field(&self, label: &str) -> bool {
        self.shared.world().marketing.remove_custom_field(label)
    }

    pub fn add_lead_source(&self, name: &str) -> LeadSourceDef {
        self.shared.world().marketing.add_lead_source(name).clone()
    }

    /// Publishes a campaign that starts on the API goal `integration`/`call_name` and sends
    /// an email with `email_subject` when it starts (when given).
    pub fn add_campaign(&self, integration: &str, call_name: &str, email_subject: Option<&str>) -> CampaignDef {
        self.shared
            .world()
            .marketing
            .add_campaign(integration, call_name, email_subject.map(str::to_owned))
            .clone()
    }

    pub fn add_email_template(&self, subject: &str) -> EmailTemplateDef {
        self.shared.world().marketing.add_template(subject).clone()
    }

    /// The id of the oldest tag with exactly this name.
    pub fn tag_by_name(&self, name: &str) -> Option<i64> {
        self.shared.world().crm.tag_by_name(name)
    }

    /// The person behind `email` unsubscribed: their addresses stop being marketable and
    /// no `opt_in_reason` sent through the API changes that. False if no contact has it.
    pub fn unsubscribe(&self, email: &str) -> bool {
        self.shared.world().crm.unsubscribe(email)
    }

    pub fn set_auto_approve(&self, on: bool) {
        self.shared.auto_approve.store(on, Ordering::SeqCst);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
