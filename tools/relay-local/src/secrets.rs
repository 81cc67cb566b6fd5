//! The local run's writes to the secret store: the operator's app secret (seeded or given),
//! and the demo's "make the stored access token due". Both go through the same
//! [`SecretStore`] port as the functions: a new version, then a compare-and-swap of `current`.

use std::time::SystemTime;

use keap_relay::config::{AppSecret, Config, StoreKind};
use keap_relay::store::{self, AppSecretError, PutOutcome, SecretStore, StoreError, SwapOutcome};
use keap_relay::token::TokenState;
use keap_relay::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the secret {secret_id} changed while it was being replaced; try again")]
    Raced { secret_id: String },
    #[error("the app secret given is not valid JSON of the documented shape ({0})")]
    InvalidAppSecret(String),
    #[error(transparent)]
    AppSecret(#[from] AppSecretError),
    #[error("the token secret {secret_id} holds no connection yet")]
    NotConnected { secret_id: String },
    #[error("the token secret {secret_id} is not readable: {reason}")]
    InvalidTokenState { secret_id: String, reason: String },
}

/// Makes `value` the current version of `secret_id` (creating the secret if needed).
pub async fn replace_current(
    store: &dyn SecretStore,
    secret_id: &str,
    value: &SecretString,
) -> Result<(), SecretsError> {
    let previous = match store.read_current(secret_id).await {
        Ok(current) => current.map(|version| version.version_id),
        Err(StoreError::NotFound { .. }) => None,
        Err(error) => return Err(error.into()),
    };
    let version_id = uuid::Uuid::new_v4().to_string();
    match store.put_version(secret_id, &version_id, value).await? {
        PutOutcome::Created | PutOutcome::AlreadyExists => {}
        PutOutcome::Conflict => {
            return Err(SecretsError::Raced {
                secret_id: secret_id.into(),
            });
        }
    }
    // The first version of a secret is current as soon as it is put.
    let Some(previous) = previous else { return Ok(()) };
    match store.swap_current(secret_id, &previous, &version_id).await? {
        SwapOutcome::Swapped => Ok(()),
        SwapOutcome::Stale => Err(SecretsError::Raced {
            secret_id: secret_id.into(),
        }),
    }
}

/// Parses an app secret without echoing any part of it (serde's messages may quote values).
pub fn parse_app_secret(json: &str) -> Result<AppSecret, SecretsError> {
    serde_json::from_str::<AppSecret>(json).map_err(|e| {
        SecretsError::InvalidAppSecret(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// The field names an app secret fills (never their values), for progress lines.
pub fn filled_fields(secret: &AppSecret) -> Vec<&'static str> {
    let filled = |value: Option<&SecretString>| value.is_some_and(|v| !v.expose_secret().is_empty());
    [
        ("client_id", secret.client_id.as_deref().is_some_and(|v| !v.is_empty())),
        ("client_secret", filled(secret.client_secret.as_ref())),
        ("api_key", filled(secret.api_key.as_ref())),
        ("signup_signing_key", filled(secret.signup_signing_key.as_ref())),
        ("admin_password", filled(secret.admin_password.as_ref())),
        ("captcha_secret", filled(secret.captcha_secret.as_ref())),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect()
}

/// Whether the app secret was already there or had to be seeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeded {
    Existing,
    Seeded,
}

/// Reads the app secret, writing `default` first when the store has none.
pub async fn app_secret_or_seed(
    store: &dyn SecretStore,
    secret_id: &str,
    default: &SecretString,
) -> Result<(AppSecret, Seeded), SecretsError> {
    match store::load_app_secret(store, secret_id).await {
        Ok(secret) => Ok((secret, Seeded::Existing)),
        Err(AppSecretError::Missing { .. }) => {
            replace_current(store, secret_id, default).await?;
            Ok((store::load_app_secret(store, secret_id).await?, Seeded::Seeded))
        }
        Err(error) => Err(error.into()),
    }
}

/// Creates the file store's directory readable by this user only (the file store itself
/// would create it with the default permissions). Other stores need nothing.
pub fn prepare_store(config: &Config) -> std::io::Result<()> {
    let StoreKind::File(dir) = &config.store else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Where the secrets live, for people: a directory, or Secrets Manager (and its endpoint).
pub fn describe_store(config: &Config) -> String {
    match &config.store {
        StoreKind::File(dir) => {
            let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            format!("files under {}", shown.display())
        }
        StoreKind::SecretsManager => match std::env::var("AWS_ENDPOINT_URL") {
            Ok(endpoint) if !endpoint.trim().is_empty() => format!("Secrets Manager at {endpoint}"),
            _ => "AWS Secrets Manager".to_owned(),
        },
    }
}

/// Reads the token secret's state (tokens stay inside; callers print only what
/// [`TokenState::status_report`] shows).
pub async fn token_state(store: &dyn SecretStore, secret_id: &str) -> Result<TokenState, SecretsError> {
    let current = match store.read_current(secret_id).await {
        Ok(current) => current,
        Err(StoreError::NotFound { .. }) => None,
        Err(error) => return Err(error.into()),
    };
    let version = current.ok_or_else(|| SecretsError::NotConnected {
        secret_id: secret_id.into(),
    })?;
    TokenState::from_json(version.value.expose_secret()).map_err(|reason| SecretsError::InvalidTokenState {
        secret_id: secret_id.into(),
        reason,
    })
}

/// Records in the store that the access token expires now, as if its day had passed, so the
/// next scheduled refresh finds the rotation due.
pub async fn make_access_token_due(store: &dyn SecretStore, secret_id: &str) -> Result<(), SecretsError> {
    let mut state = token_state(store, secret_id).await?;
    if state.access_token.is_none() {
        return Err(SecretsError::NotConnected {
            secret_id: secret_id.into(),
        });
    }
    state.access_expires_at = Some(SystemTime::now());
    replace_current(store, secret_id, &state.to_secret()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use keap_relay::store::memory::MemoryStore;

    #[tokio::test]
    async fn replacing_creates_then_moves_current() {
        let store = MemoryStore::new();
        replace_current(&store, "s", &SecretString::from("one")).await.unwrap();
        replace_current(&store, "s", &SecretString::from("two")).await.unwrap();
        let current = store.read_current("s").await.unwrap().unwrap();
        assert_eq!(current.value.expose_secret(), "two");
    }

    #[tokio::test]
    async fn an_existing_app_secret_is_kept_and_a_missing_one_seeded() {
        let store = MemoryStore::new();
        let default = crate::defaults::app_secret();
        let (secret, seeded) = app_secret_or_seed(&store, "app", &default).await.unwrap();
        assert_eq!(seeded, Seeded::Seeded);
        assert!(filled_fields(&secret).contains(&"admin_password"));

        replace_current(&store, "app", &SecretString::from(r#"{"api_key":"KeapAK-mine"}"#))
            .await
            .unwrap();
        let (secret, seeded) = app_secret_or_seed(&store, "app", &default).await.unwrap();
        assert_eq!(seeded, Seeded::Existing);
        assert_eq!(filled_fields(&secret), ["api_key"]);
    }

    #[test]
    fn a_bad_app_secret_is_reported_without_its_content() {
        let error = parse_app_secret(r#"{"client_secret": 12345678}"#)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("12345678"), "{error}");
    }

    #[tokio::test]
    async fn making_the_token_due_needs_a_connection_and_expires_it_now() {
        let store = MemoryStore::new();
        assert!(matches!(
            make_access_token_due(&store, "t").await,
            Err(SecretsError::NotConnected { .. })
        ));

        let grant = keap_relay::token::TokenGrant {
            access_token: SecretString::from("a"),
            refresh_token: SecretString::from("r"),
            expires_in: std::time::Duration::from_secs(86_400),
            scope: "full|ab123.infusionsoft.com".into(),
            account: Some("ab123.infusionsoft.com".into()),
        };
        let state = TokenState::connected(&grant, 1, SystemTime::now());
        replace_current(&store, "t", &state.to_secret()).await.unwrap();
        make_access_token_due(&store, "t").await.unwrap();
        let after = token_state(&store, "t").await.unwrap();
        assert_eq!(after.access_left(SystemTime::now()), std::time::Duration::ZERO);
        assert_eq!(after.generation, 1, "only the expiry changes");
    }
}
