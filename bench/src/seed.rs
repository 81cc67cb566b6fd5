//! Puts what an operator and a first authorization would leave in a store: the app secret
//! and a connected token state minted by the sandbox.

use std::sync::Arc;
use std::time::Duration;

use keap_relay::SecretString;
use keap_relay::keap::oauth::OAuthClient;
use keap_relay::store::SecretStore;
use keap_relay::token::{Connection, TokenGrant, TokenSettings, TokenSource};
use keap_sandbox::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Sandbox};
use serde_json::json;

use crate::events::SIGNING_KEY;
use crate::{BenchError, Result};

/// Version id of the app secret as the operator writes it (Secrets Manager wants 32 to 64
/// characters).
const OPERATOR_VERSION: &str = "00000000-0000-4000-8000-000000000001";

/// The operator-written app secret (oauth mode) with the bench signing key.
pub fn app_secret_json() -> String {
    json!({
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "api_key": null,
        "signup_signing_key": SIGNING_KEY,
        "admin_password": null,
    })
    .to_string()
}

pub async fn put_app_secret(store: &dyn SecretStore, secret_id: &str) -> Result<()> {
    store
        .put_version(secret_id, OPERATOR_VERSION, &SecretString::from(app_secret_json()))
        .await
        .map(drop)
        .map_err(|e| BenchError::Failed(format!("could not store the app secret: {e}")))
}

/// The OAuth token source a function builds, with production timings, for `token_url`.
pub fn token_source(
    store: Arc<dyn SecretStore>,
    secret_id: &str,
    token_url: &str,
    settings: TokenSettings,
) -> Result<TokenSource> {
    let oauth = token_source_client(token_url)?;
    TokenSource::new(store, secret_id, Arc::new(oauth), settings).map_err(|e| BenchError::Failed(e.to_string()))
}

/// A pair freshly issued by the sandbox; `expires_in` overrides its lifetime as stored.
pub fn grant(sandbox: &Sandbox, expires_in: Option<Duration>) -> TokenGrant {
    let pair = sandbox.mint_grant(DEFAULT_CLIENT_ID);
    TokenGrant {
        access_token: SecretString::from(pair.access_token),
        refresh_token: SecretString::from(pair.refresh_token),
        expires_in: expires_in.unwrap_or(Duration::from_secs(pair.expires_in)),
        account: pair.scope.split_once('|').map(|(_, tenant)| tenant.to_owned()),
        scope: pair.scope,
    }
}

/// Stores a connected token state (as the OAuth callback would).
pub async fn connect(
    store: Arc<dyn SecretStore>,
    secret_id: &str,
    sandbox: &Sandbox,
    expires_in: Option<Duration>,
) -> Result<TokenGrant> {
    let grant = grant(sandbox, expires_in);
    let source = token_source(store, secret_id, &sandbox.token_url(), TokenSettings::default())?;
    source
        .connect(grant.clone(), false)
        .await
        .map_err(|e| BenchError::Failed(format!("could not store the first authorization: {e}")))?;
    Ok(grant)
}

/// The OAuth client of [`token_source`], for a bare token call.
pub fn token_source_client(token_url: &str) -> Result<OAuthClient> {
    let parse = |url: &str| url::Url::parse(url).map_err(|e| BenchError::Failed(format!("bad URL {url}: {e}")));
    Ok(OAuthClient::new(
        reqwest::Client::new(),
        parse(token_url)?,
        parse("http://127.0.0.1/unused-authorize")?,
        DEFAULT_CLIENT_ID.to_owned(),
        SecretString::from(DEFAULT_CLIENT_SECRET),
        Duration::from_secs(10),
    ))
}
