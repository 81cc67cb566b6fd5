//! [`SecretStore`] over AWS Secrets Manager (production), written to AWS semantics and safe
//! on moto (see `docs/secrets-manager.md`):
//! - every read names `VersionStage=AWSCURRENT` (moto may answer a plain read with an old value);
//! - a put is `PutSecretValue` with `ClientRequestToken` = the version id and a project-owned
//!   stage [`NEXT_STAGE`], so it never moves `AWSCURRENT` (and never uses `AWSPENDING`, which
//!   moto silently overwrites); the first write of a secret that does not exist is `CreateSecret`;
//! - the compare-and-swap is `UpdateSecretVersionStage(AWSCURRENT, MoveToVersionId,
//!   RemoveFromVersionId)`.
//!
//! AWS does not tell a new version from an idempotent retry: a successful put is reported as
//! [`PutOutcome::Created`] either way. The token protocol never depends on the difference.
//!
//! Every call is bounded in time ([`client_config`]): the SDK sets no timeout by default, and a
//! call that hangs as long as its connection would break the rotation's timing argument.
//! `LimitExceededException` (the version quota) is [`StoreError::QuotaExceeded`].

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::interceptors::InterceptorContext;
use aws_sdk_secretsmanager::config::retry::{ClassifyRetry, RetryAction, RetryConfig};
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::create_secret::CreateSecretError;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_sdk_secretsmanager::operation::put_secret_value::PutSecretValueError;
use aws_sdk_secretsmanager::operation::update_secret_version_stage::UpdateSecretVersionStageError;
use secrecy::{ExposeSecret, SecretString};

use super::{PutOutcome, SecretStore, StoreError, StoreOp, StoredVersion, SwapOutcome};

pub const CURRENT_STAGE: &str = "AWSCURRENT";
/// The label every put attaches instead of `AWSPENDING`; it marks the latest written version.
pub const NEXT_STAGE: &str = "KEAPRELAY_NEXT";

// Why: a lease holder's commit must finish inside its lease, so each call needs a bound, below the token code's
// `TokenSettings::store_call_timeout` (3 s) so that the SDK's own bound acts first and says what happened.
/// Upper bound of one HTTP attempt (connect, send, answer); a timed-out attempt is retried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Upper bound of one store call, all attempts and backoff included: no call takes longer.
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(2500);
/// Upper bound of opening a connection (TCP and TLS), inside the attempt timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts per call, the first included (standard retry mode: throttling, 5xx, timeouts).
pub const MAX_ATTEMPTS: u32 = 3;

/// The time bounds of every Secrets Manager call.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Standard mode with [`MAX_ATTEMPTS`], set explicitly so that the bound does not depend on
/// `AWS_MAX_ATTEMPTS` or a profile.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS)
}

/// The client configuration: everything from the loaded AWS configuration (region,
/// credentials, `AWS_ENDPOINT_URL`), with [`timeout_config`] and [`retry_config`] on top, and
/// no retry of the version quota ([`NoRetryOnQuota`]).
pub fn client_config(aws: &aws_config::SdkConfig) -> aws_sdk_secretsmanager::Config {
    aws_sdk_secretsmanager::config::Builder::from(aws)
        .timeout_config(timeout_config())
        .retry_config(retry_config())
        .retry_classifier(NoRetryOnQuota)
        .build()
}

/// The error code of the version quota (and of Secrets Manager's other quotas).
pub const QUOTA_CODE: &str = "LimitExceededException";

/// The SDK counts `LimitExceededException` as throttling and retries it. For the version quota a
/// retry cannot succeed for hours, and one cut short by [`OPERATION_TIMEOUT`] would turn the
/// quota into a plain timeout (transient, retried again by the token code). So: no retry.
#[derive(Debug)]
pub struct NoRetryOnQuota;

impl ClassifyRetry for NoRetryOnQuota {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let Some(error) = error.as_operation_error() else {
            return RetryAction::NoActionIndicated;
        };
        let code = None
            .or_else(|| error.downcast_ref::<PutSecretValueError>().and_then(|e| e.code()))
            .or_else(|| error.downcast_ref::<CreateSecretError>().and_then(|e| e.code()))
            .or_else(|| {
                error
                    .downcast_ref::<UpdateSecretVersionStageError>()
                    .and_then(|e| e.code())
            })
            .or_else(|| error.downcast_ref::<GetSecretValueError>().and_then(|e| e.code()));
        if code == Some(QUOTA_CODE) {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "keap-relay: no retry of Secrets Manager's version quota"
    }
}

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
    let transient = |detail: String| {
        Failure::Error(StoreError::Transient {
            operation: op.name(),
            detail,
        })
    };
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
                "ThrottlingException"
                | "InternalServiceError"
                | "InternalServiceErrorException"
                | "ServiceUnavailable"
                | "RequestTimeout"
                | "RequestTimeoutException" => transient(DisplayErrorContext(&error).to_string()),
                // The version quota (PutSecretValue, CreateSecret): nothing is written until
                // versions age out, so neither transient nor a plain refusal.
                QUOTA_CODE => Failure::Error(StoreError::QuotaExceeded {
                    operation: op.name(),
                    detail: DisplayErrorContext(&error).to_string(),
                }),
                _ => Failure::Service(code),
            }
        }
        _ => Failure::Error(StoreError::Permanent {
            operation: op.name(),
            detail: DisplayErrorContext(&error).to_string(),
        }),
    }
}

fn unexpected(op: StoreOp, code: &str) -> StoreError {
    StoreError::Permanent {
        operation: op.name(),
        detail: format!("Secrets Manager answered {code}"),
    }
}

impl SecretsManagerStore {
    async fn get(
        &self,
        op: StoreOp,
        secret_id: &str,
        version_id: Option<&str>,
    ) -> Result<Option<StoredVersion>, StoreError> {
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
                Ok(Some(StoredVersion {
                    version_id: version_id.to_owned(),
                    value: SecretString::from(value.to_owned()),
                }))
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

    async fn put_version(
        &self,
        secret_id: &str,
        version_id: &str,
        value: &SecretString,
    ) -> Result<PutOutcome, StoreError> {
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
                Failure::Service(code) if code == "ResourceNotFoundException" => Err(StoreError::NotFound {
                    secret_id: secret_id.to_owned(),
                }),
                Failure::Service(code) => Err(unexpected(StoreOp::Swap, &code)),
                Failure::Error(error) => Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a tiny local HTTP server that answers as Secrets Manager does (awsJson 1.1), so
    //! the SDK's own error parsing is part of what is tested. No network beyond 127.0.0.1.

    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// What the server does with one request, by `X-Amz-Target` operation (e.g. `PutSecretValue`).
    #[derive(Clone, Copy)]
    enum Answer {
        Json(u16, &'static str),
        /// Read the request, never answer.
        Silence,
    }

    const QUOTA_BODY: &str = r#"{"__type":"LimitExceededException","message":"You have exceeded the maximum number of secret versions for this secret."}"#;
    const NOT_FOUND_BODY: &str =
        r#"{"__type":"ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}"#;

    /// A server on 127.0.0.1 answering with `answer`; returns the store over it and the operations it saw.
    async fn store_over(answer: fn(&str) -> Answer) -> (SecretsManagerStore, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, answer, log.clone()));
            }
        });
        let aws = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "test", "test", None, None, "test",
            )))
            .endpoint_url(endpoint)
            .build();
        (SecretsManagerStore::new(Client::from_conf(client_config(&aws))), seen)
    }

    async fn serve(mut socket: TcpStream, answer: fn(&str) -> Answer, seen: Arc<Mutex<Vec<String>>>) {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then Content-Length bytes of body; one request per connection.
        let (head_len, body_len) = loop {
            let Ok(n) = socket.read(&mut buf).await else { return };
            if n == 0 {
                return;
            }
            request.extend_from_slice(&buf[..n]);
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, length);
            }
        };
        while request.len() < head_len + body_len {
            let Ok(n) = socket.read(&mut buf).await else { return };
            if n == 0 {
                return;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&request[..head_len]).to_string();
        let target = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .starts_with("x-amz-target:")
                    .then(|| line[13..].trim().to_owned())
            })
            .unwrap_or_default();
        let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
        seen.lock().unwrap().push(operation.clone());
        match answer(&operation) {
            Answer::Json(status, body) => {
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-requestid: test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
            Answer::Silence => {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }

    fn value() -> SecretString {
        SecretString::from("{}".to_owned())
    }

    #[test]
    fn the_client_has_the_documented_bounds() {
        let aws = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        let config = client_config(&aws);
        let timeouts = config.timeout_config().expect("timeouts set");
        assert_eq!(timeouts.connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(timeouts.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
        assert_eq!(timeouts.operation_timeout(), Some(OPERATION_TIMEOUT));
        let retries = config.retry_config().expect("retries set");
        assert_eq!(retries.max_attempts(), MAX_ATTEMPTS);
        assert_eq!(
            retries.mode(),
            aws_sdk_secretsmanager::config::retry::RetryMode::Standard
        );
        assert!(config.retry_classifiers().any(|c| c.name() == NoRetryOnQuota.name()));
        assert!(ATTEMPT_TIMEOUT <= OPERATION_TIMEOUT && CONNECT_TIMEOUT <= ATTEMPT_TIMEOUT);
    }

    #[test]
    fn the_sdk_bound_acts_before_the_token_codes_own() {
        let settings = crate::token::TokenSettings::default();
        assert!(
            OPERATION_TIMEOUT < settings.store_call_timeout,
            "{OPERATION_TIMEOUT:?} vs {:?}",
            settings.store_call_timeout
        );
        assert!(
            OPERATION_TIMEOUT * 2 <= settings.commit_allowance,
            "a put and a swap fit the commit allowance"
        );
    }

    #[tokio::test]
    async fn the_version_quota_on_a_put_is_quota_exceeded_and_not_retried() {
        let (store, seen) = store_over(|_| Answer::Json(400, QUOTA_BODY)).await;
        let error = store
            .put_version("token", "v-0123456789abcdef0123456789abcdef", &value())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::QuotaExceeded { operation: "put_version", detail } if detail.contains("LimitExceededException")),
            "{error:?}"
        );
        assert!(error.is_quota_exceeded() && !error.is_transient());
        assert!(error.to_string().contains("version quota"), "{error}");
        assert_eq!(
            *seen.lock().unwrap(),
            ["PutSecretValue"],
            "the SDK does not retry it, nor does the adapter"
        );
    }

    #[tokio::test]
    async fn the_version_quota_on_the_first_write_is_quota_exceeded() {
        let (store, seen) = store_over(|operation| match operation {
            "PutSecretValue" => Answer::Json(400, NOT_FOUND_BODY),
            _ => Answer::Json(400, QUOTA_BODY),
        })
        .await;
        let error = store
            .put_version("token", "v-0123456789abcdef0123456789abcdef", &value())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::QuotaExceeded {
                    operation: "put_version",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(*seen.lock().unwrap(), ["PutSecretValue", "CreateSecret"]);
    }

    #[tokio::test]
    async fn throttling_is_still_retried_and_transient() {
        let (store, seen) =
            store_over(|_| Answer::Json(400, r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#)).await;
        let error = store.swap_current("token", "a", "b").await.unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        assert!(seen.lock().unwrap().len() >= 2, "{:?}", seen.lock().unwrap());
    }

    #[tokio::test]
    async fn a_silent_endpoint_costs_at_most_the_operation_timeout() {
        let (store, seen) = store_over(|_| Answer::Silence).await;
        let started = Instant::now();
        let error = store.read_current("token").await.unwrap_err();
        let took = started.elapsed();
        assert!(error.is_transient(), "{error:?}");
        assert!(took >= ATTEMPT_TIMEOUT, "took {took:?}");
        assert!(took < OPERATION_TIMEOUT + Duration::from_secs(1), "took {took:?}");
        let attempts = seen.lock().unwrap().len();
        assert!((1..=MAX_ATTEMPTS as usize).contains(&attempts), "{attempts} attempts");
    }
}
