//! The `signup` function: `POST /signup` (see [`handler`]), its production wiring
//! ([`AppDeps`]), and [`event_signing`] for the `sign-event` tool and tests.

pub mod event_signing;
pub mod handler;

use async_trait::async_trait;
use keap_relay::SecretString;
use keap_relay::app::App;
use keap_relay::signup::{SignupQueue, SignupService};

use handler::{SignupDeps, SigningKeyUnavailable};

/// The handler's dependencies from the process-wide [`App`].
pub struct AppDeps {
    app: App,
    service: SignupService,
}

impl AppDeps {
    pub fn new(app: App) -> Self {
        let service = app.signup_service();
        Self { app, service }
    }
}

#[async_trait]
impl SignupDeps for AppDeps {
    async fn signing_key(&self) -> Result<SecretString, SigningKeyUnavailable> {
        let secret = self.app.app_secret.get().await.map_err(|e| SigningKeyUnavailable(e.to_string()))?;
        secret
            .signup_signing_key
            .clone()
            .ok_or_else(|| SigningKeyUnavailable("the app secret has no signup_signing_key".into()))
    }

    fn service(&self) -> &SignupService {
        &self.service
    }

    fn queue(&self) -> Option<&dyn SignupQueue> {
        self.app.queue.as_deref()
    }
}
