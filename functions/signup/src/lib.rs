//! The `signup` function: `POST /signup` (see [`handler`]), its production dependencies
//! ([`Deps`], built once by `main.rs`), and [`event_signing`] for the `sign-event` tool and tests.

pub mod event_signing;
pub mod handler;

use std::sync::Arc;

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::app::{App, AppSecretCache};
use keap_relay::events::EventSink;
use keap_relay::signup::{SignupQueue, SignupService};

pub use handler::handle;
use handler::{SigningKeyUnavailable, SignupDeps};

/// The handler's dependencies over the process-wide [`App`].
pub struct Deps {
    app_secret: Arc<AppSecretCache>,
    /// Keep one per process: it caches tag ids.
    service: SignupService,
    queue: Option<Arc<dyn SignupQueue>>,
    events: Option<Arc<dyn EventSink>>,
}

/// The name the tests and benches use.
pub type AppDeps = Deps;

impl Deps {
    pub fn from_app(app: &App) -> Self {
        Self {
            app_secret: app.app_secret.clone(),
            service: app.signup_service(),
            queue: app.queue.clone(),
            events: app.events.clone(),
        }
    }
}

#[async_trait]
impl SignupDeps for Deps {
    async fn signing_key(&self) -> Result<SecretString, SigningKeyUnavailable> {
        let secret = self
            .app_secret
            .get()
            .await
            .map_err(|e| SigningKeyUnavailable(e.to_string()))?;
        secret
            .signup_signing_key
            .clone()
            .ok_or_else(|| SigningKeyUnavailable("the app secret has no signup_signing_key".into()))
    }

    fn service(&self) -> &SignupService {
        &self.service
    }

    fn queue(&self) -> Option<&dyn SignupQueue> {
        self.queue.as_deref()
    }

    fn events(&self) -> Option<&dyn EventSink> {
        self.events.as_deref()
    }
}
