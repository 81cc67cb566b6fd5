//! [`SecretStore`] over AWS Secrets Manager (production), written to AWS semantics and safe
//! on moto (see `secrets-manager.md`):
//! - every read names `VersionStage=AWSCURRENT` (moto may answer a plain read with an old value);
//! - a put is `PutSecretValue` with `ClientRequestToken` = the version id and a project-owned
//!   stage [`NEXT_STAGE`], so it never moves `AWSCURRENT` (and never uses `AWSPENDING`, which
//!   moto silently overwrites); the first write of a secret that does not exist is `CreateSecret`;
//! - the compare-and-swap is `UpdateSecretVersionStage(AWSCURRENT, MoveToVersionId,
//!   RemoveFromVersionId)`.
//!
//! AWS does not tell a new version from an idempotent retry: a successful put is reported as
//! [`PutOutcome::Created`] either way. The token protocol never depends on the difference.

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::{PutOutcome, SecretStore, StoreError, StoreOp, StoredVersion, SwapOutcome};

pub const CURRENT_STAGE: &str = "AWSCURRENT";
/// The label every put attaches instead of `AWSPENDING`; it marks the latest written version.
pub const NEXT_STAGE: &str = "KEAPRELAY_NEXT";

#[derive(Debug, Clone)]
pub struct SecretsManagerStore {
    client: Client,
}

impl SecretsManagerStore {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// What a failed call means, before each operation maps the codes it expects.
enum Failure {
    /// A service error with its code (e.g. `ResourceExistsException`).
    Service(String),
    Error(StoreError),
}

fn classify<E>(op: StoreOp, error: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transient = |detail: String| Failure::Error(StoreError::Transient { operation: op.name(), detail });
    match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            transient(DisplayErrorContext(&error).to_string())
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_owned();
            let status = service.raw().status().as_u16();
            if status >= 500 || status == 429 {
                return transient(DisplayErrorContext(&error).to_string());
            }
            match code.as_str() {
                "ThrottlingException" | "InternalServiceError" | "InternalServiceErrorException"
                | "ServiceUnavailable" | "RequestTimeout" | "RequestTimeoutException" => {
                    transient(DisplayErrorContext(&error).to_string())
                }
                _ => Failure::Service(code),
            }
        }
        _ => Failure::Error(StoreError::Permanent { operation: op.name(), detail: DisplayErrorContext(&error).to_string() }),
    }
}

fn unexpected(op: StoreOp, code: &str) -> StoreError {
    StoreError::Permanent { operation: op.name(), detail: format!("Secrets Manager answered {code}") }
}

impl SecretsManagerStore {
    async fn get(&self, op: StoreOp, secret_id: &str, version_id: Option<&str>) -> Result<Option<StoredVersion>, StoreError> {
        let request = self.client.get_secret_value().secret_id(secret_id);
        let request = match version_id {
            Some(id) => request.version_id(id),
            None => request.version_stage(CURRENT_STAGE),
        };
        match request.send().await {
            Ok(output) => {
                let value = output.secret_string().ok_or_else(|| StoreError::Permanent {
                    operation: op.name(),
                    detail: "the secret holds binary data, not a string".into(),
                })?;
                let version_id = output.version_id().ok_or_else(|| StoreError::Permanent {
                    operation: op.name(),
                    detail: "Secrets Manager returned no version id".into(),
                })?;
                Ok(Some(StoredVersion { version_id: version_id.to_owned(), value: SecretString::from(value.to_owned()) }))
            }
            Err(error) => match classify(op, error) {
                Failure::Service(code) if code == "ResourceNotFoundException" => Ok(None),
                Failure::Service(code) => Err(unexpected(op, &code)),
                Failure::Error(error) => Err(error),
            },
        }
    }

    async fn create(&self, secret_id: &str, version_id: &str, value: &SecretString) -> Result<bool, StoreError> {
        let created = self
            .client
            .create_secret()
            .name(secret_id)
            .client_request_token(version_id)
            .secret_string(value.expose_secret())
            .send()
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(error) => match classify(StoreOp::Put, error) {
                // Created meanwhile by another writer: go back to PutSecretValue.
                Failure::Service(code) if code == "ResourceExistsException" => Ok(false),
                Failure::Service(code) => Err(unexpected(StoreOp::Put, &code)),
                Failure::Error(error) => Err(error),
            },
        }
    }
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn read_current(&self, secret_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.get(StoreOp::ReadCurrent, secret_id, None).await
    }

    async fn read_version(&self, secret_id: &str, version_id: &str) -> Result<Option<StoredVersion>, StoreError> {
        self.get(StoreOp::ReadVersion, secret_id, Some(version_id)).await
    }

    async fn put_version(&self, secret_id: &str, version_id: &str, value: &SecretString) -> Result<PutOutcome, StoreError> {
        // At most: put, create (secret missing), put again (created meanwhile by someone else).
        for _ in 0..2 {
            let put = self
                .client
                .put_secret_value()
                .secret_id(secret_id)
                .client_request_token(version_id)
                .secret_string(value.expose_secret())
                .version_stages(NEXT_STAGE)
                .send()
                .await;
            match put {
                Ok(_) => return Ok(PutOutcome::Created),
                Err(error) => match classify(StoreOp::Put, error) {
                    Failure::Service(code) if code == "ResourceExistsException" => return Ok(PutOutcome::Conflict),
                    Failure::Service(code) if code == "ResourceNotFoundException" => {
                        if self.create(secret_id, version_id, value).await? {
                            return Ok(PutOutcome::Created);
                        }
                    }
                    Failure::Service(code) => return Err(unexpected(StoreOp::Put, &code)),
                    Failure::Error(error) => return Err(error),
                },
            }
        }
        Err(StoreError::Transient {
            operation: StoreOp::Put.name(),
            detail: "the secret kept appearing and disappearing during the first write".into(),
        })
    }

    async fn swap_current(&self, secret_id: &str, from: &str, to: &str) -> Result<SwapOutcome, StoreError> {
        let moved = self
            .client
            .update_secret_version_stage()
            .secret_id(secret_id)
            .version_stage(CURRENT_STAGE)
            .move_to_version_id(to)
            .remove_from_version_id(from)
            .send()
            .await;
        match moved {
            Ok(_) => Ok(SwapOutcome::Swapped),
            Err(error) => match classify(StoreOp::Swap, error) {
                // AWS does not document the code for "the label is not on RemoveFromVersionId";
                // moto answers InvalidParameterException.
                Failure::Service(code) if code == "InvalidParameterException" || code == "InvalidRequestException" => {
                    Ok(SwapOutcome::Stale)
                }
                Failure::Service(code) if code == "ResourceNotFoundException" => {
                    Err(StoreError::NotFound { secret_id: secret_id.to_owned() })
                }
                Failure::Service(code) => Err(unexpected(StoreOp::Swap, &code)),
                Failure::Error(error) => Err(error),
            },
        }
    }
}
