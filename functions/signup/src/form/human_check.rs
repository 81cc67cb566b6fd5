//! The human check: the provider's token (from its widget, in its usual form field) verified
//! with the provider's siteverify endpoint and the app secret's `captcha_secret`. Turnstile,
//! hCaptcha and reCAPTCHA share the protocol: a form post of `secret`, `response` and
//! `remoteip`, answered `{"success": bool, "error-codes": [...]}`.

use keap_relay::ExposeSecret;
use keap_relay::SecretString;
use keap_relay::forms::HumanCheck;
use serde::Deserialize;

/// Longest token sent on: the providers' tokens are about 2 KiB at most; anything longer is
/// refused without a call.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Largest siteverify answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Why a post did not pass the human check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HumanCheckError {
    /// 400: the post has no token.
    #[error("the human check was not completed; complete it and send the form again")]
    Missing,
    /// 400: the provider did not accept the token.
    #[error("the human check failed; complete it again and send the form again")]
    Failed { provider_codes: Vec<String> },
    /// 503: the provider could not be asked (or `captcha_secret` is missing).
    #[error("the human check could not be verified right now; try again later")]
    Unavailable { detail: String },
}

impl HumanCheckError {
    pub fn code(&self) -> &'static str {
        match self {
            HumanCheckError::Missing => "captcha_missing",
            HumanCheckError::Failed { .. } => "captcha_failed",
            HumanCheckError::Unavailable { .. } => "captcha_unavailable",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    success: bool,
    #[serde(default, rename = "error-codes")]
    error_codes: Vec<String>,
}

/// Verifies `token` with the provider. `secret` is `captcha_secret`.
pub async fn verify(
    http: &reqwest::Client,
    check: &HumanCheck,
    secret: &SecretString,
    token: &str,
    remote_ip: Option<&str>,
) -> Result<(), HumanCheckError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(HumanCheckError::Failed {
            provider_codes: vec!["token-too-long".into()],
        });
    }
    let mut form = vec![("secret", secret.expose_secret()), ("response", token)];
    if let Some(ip) = remote_ip {
        form.push(("remoteip", ip));
    }
    let unavailable = |detail: String| HumanCheckError::Unavailable { detail };
    let response = http
        .post(check.verify_url.clone())
        .form(&form)
        .send()
        .await
        // Without the URL: reqwest's messages carry it, and it is configuration.
        .map_err(|e| unavailable(format!("siteverify did not answer: {}", e.without_url())))?;
    let status = response.status();
    if !status.is_success() {
        return Err(unavailable(format!("siteverify answered {status}")));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| unavailable(format!("siteverify's answer could not be read: {}", e.without_url())))?;
    if body.len() > MAX_ANSWER_BYTES {
        return Err(unavailable("siteverify's answer is too large".into()));
    }
    let answer: Answer = serde_json::from_slice(&body)
        .map_err(|_| unavailable("siteverify's answer is not the documented JSON".into()))?;
    if answer.success {
        Ok(())
    } else {
        // A wrong or missing secret is the operator's problem, not the visitor's.
        if answer
            .error_codes
            .iter()
            .any(|c| c == "invalid-input-secret" || c == "missing-input-secret")
        {
            return Err(unavailable(format!(
                "the provider refused captcha_secret ({})",
                answer.error_codes.join(", ")
            )));
        }
        Err(HumanCheckError::Failed {
            provider_codes: answer.error_codes.into_iter().take(5).collect(),
        })
    }
}
