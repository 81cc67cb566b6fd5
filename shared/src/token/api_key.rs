//! [`ApiKeySource`]: a Personal Access Token or Service Account Key. Such keys neither expire
//! nor rotate, so there is nothing to store and no store call at all.

use async_trait::async_trait;
use secrecy::SecretString;

use super::{
    ConnectError, ConnectOutcome, Connection, ConnectionStatus, Credential, CredentialSource, RotationAction,
    RotationPolicy, RotationReport, TokenError, TokenGrant,
};

pub struct ApiKeySource {
    key: SecretString,
}

impl std::fmt::Debug for ApiKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeySource { key: [REDACTED] }")
    }
}

impl ApiKeySource {
    pub fn new(key: SecretString) -> Self {
        Self { key }
    }

    fn report(&self) -> ConnectionStatus {
        ConnectionStatus {
            mode: "api-key",
            connected: true,
            account: None,
            access_expires_at: None,
            access_expires_in_seconds: None,
            refresh_token_age_days: None,
            last_refresh_at: None,
            last_error: None,
            needs_reauth: false,
            needs_reauth_reason: None,
            generation: None,
            retry_not_before: None,
            last_error_at: None,
            needs_reauth_since: None,
        }
    }
}

#[async_trait]
impl CredentialSource for ApiKeySource {
    async fn credential(&self) -> Result<Credential, TokenError> {
        Ok(Credential::ApiKey(self.key.clone()))
    }

    async fn after_unauthorized(&self, _rejected: &Credential) -> Result<Credential, TokenError> {
        Err(TokenError::Misconfigured(
            "Keap rejected the API key; put a valid Personal Access Token or Service Account Key in the app secret's api_key".into(),
        ))
    }
}

#[async_trait]
impl Connection for ApiKeySource {
    async fn connect(&self, _grant: TokenGrant, _allow_switch: bool) -> Result<ConnectOutcome, ConnectError> {
        Err(TokenError::Misconfigured(
            "this deployment uses an API key (KEAP_AUTH_MODE=api-key); OAuth connections are off".into(),
        )
        .into())
    }

    async fn status(&self) -> Result<ConnectionStatus, TokenError> {
        Ok(self.report())
    }

    async fn rotate_if_due(&self, _policy: RotationPolicy) -> Result<RotationReport, TokenError> {
        Ok(RotationReport {
            action: RotationAction::ApiKeyChecked,
            status: self.report(),
        })
    }
}
