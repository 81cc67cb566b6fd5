//! The environment a deployed function sees: Lambda's own variables and template.yaml's
//! (`Globals.Function.Environment` plus the function's own), with Keap aimed at the sandbox.

use std::path::{Path, PathBuf};

/// The four functions of template.yaml: binary name and the function's own variables.
pub const FUNCTIONS: [&str; 4] = ["oauth", "signup", "refresh", "signup-retry"];

/// Where the token state and app secret live for a process under test.
#[derive(Debug, Clone)]
pub enum StoreEnv {
    /// Secrets Manager as deployed; `endpoint` overrides AWS's (moto), `None` leaves the
    /// real endpoint (no call is made before the first invocation).
    SecretsManager { endpoint: Option<String> },
    /// `KEAP_STORE=file` (the local default).
    File(PathBuf),
}

/// Everything one function process gets (`env_clear` first: nothing leaks in from this shell).
#[derive(Debug, Clone)]
pub struct DeploymentEnv {
    pub function: String,
    pub runtime_api: String,
    /// Keap's base URL (the sandbox's `base_url()`).
    pub keap_base: String,
    pub store: StoreEnv,
    /// An empty directory: AWS's config loader looks for `~/.aws` profiles.
    pub home: PathBuf,
    pub app_secret_id: String,
    pub token_secret_id: String,
    pub queue_url: String,
}

pub const ACCOUNT: &str = "123456789012";
const API_HOST: &str = "abc123defg.execute-api.us-east-1.amazonaws.com";

impl DeploymentEnv {
    pub fn new(function: &str, runtime_api: &str, keap_base: &str, store: StoreEnv, home: &Path) -> DeploymentEnv {
        DeploymentEnv {
            function: function.to_owned(),
            runtime_api: runtime_api.to_owned(),
            keap_base: keap_base.trim_end_matches('/').to_owned(),
            store,
            home: home.to_owned(),
            // `!Ref` of a secret is its ARN.
            app_secret_id: format!("arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:AppSecret-AbCdEf"),
            token_secret_id: format!("arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:TokenSecret-GhIjKl"),
            queue_url: format!("https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/keap-relay-SignupQueue"),
        }
    }

    /// The load tests' deployment: Secrets Manager and SQS on moto at `moto_endpoint`, these
    /// secrets (`app`, `token`) and this signup queue.
    pub fn on_moto(
        function: &str,
        keap_base: &str,
        moto_endpoint: &str,
        home: &Path,
        (app, token): (&str, &str),
        queue_url: &str,
    ) -> DeploymentEnv {
        let store = StoreEnv::SecretsManager {
            endpoint: Some(moto_endpoint.to_owned()),
        };
        DeploymentEnv {
            app_secret_id: app.to_owned(),
            token_secret_id: token.to_owned(),
            queue_url: queue_url.to_owned(),
            ..DeploymentEnv::new(function, "unset", keap_base, store, home)
        }
    }

    /// [`vars`](Self::vars) with `overrides` applied in order: each replaces the variable of
    /// its name, or adds it.
    pub fn vars_with<'a>(&self, overrides: impl IntoIterator<Item = &'a (&'a str, &'a str)>) -> Vec<(String, String)> {
        let mut vars = self.vars();
        for (name, value) in overrides {
            vars.retain(|(n, _)| n != name);
            vars.push(((*name).to_owned(), (*value).to_owned()));
        }
        vars
    }

    pub fn vars(&self) -> Vec<(String, String)> {
        let name = format!("keap-relay-{}", self.function);
        let mut vars: Vec<(&str, String)> = vec![
            // Lambda (provided.al2023, arm64, 128 MB as in template.yaml Globals)
            ("AWS_LAMBDA_RUNTIME_API", self.runtime_api.clone()),
            ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/11/22/[$LATEST]0123456789abcdef0123456789abcdef".into(),
            ),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
            ("AWS_LAMBDA_LOG_LEVEL", "INFO".into()),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
            ("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLEBENCHKEY0".into()),
            (
                "AWS_SECRET_ACCESS_KEY",
                "bench/secret/access/key/not/a/real/one/0000".into(),
            ),
            ("AWS_SESSION_TOKEN", "bench-session-token".into()),
            ("_HANDLER", "bootstrap".into()),
            ("LAMBDA_TASK_ROOT", "/var/task".into()),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime".into()),
            ("TZ", ":UTC".into()),
            ("LANG", "en_US.UTF-8".into()),
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME", self.home.display().to_string()),
            // template.yaml Globals.Function.Environment (defaults of its parameters)
            ("KEAP_AUTH_MODE", "oauth".into()),
            ("KEAP_APP_SECRET_ID", self.app_secret_id.clone()),
            ("KEAP_TOKEN_SECRET_ID", self.token_secret_id.clone()),
            ("KEAP_REDIRECT_URI", format!("https://{API_HOST}/oauth/callback")),
            ("KEAP_START_URL", format!("https://{API_HOST}/oauth/start")),
            ("KEAP_API_URL", format!("{}/crm/rest", self.keap_base)),
            ("KEAP_TOKEN_URL", format!("{}/token", self.keap_base)),
            ("KEAP_AUTHORIZE_URL", format!("{}/app/oauth/authorize", self.keap_base)),
            ("KEAP_WELCOME_TAG", "Welcome".into()),
            ("KEAP_WELCOME_EMAIL_SUBJECT", String::new()),
            ("KEAP_WELCOME_EMAIL_USER_ID", String::new()),
            ("KEAP_WELCOME_EMAIL_HTML", String::new()),
            ("KEAP_HTTP_TIMEOUT_SECONDS", "10".into()),
            ("KEAP_ACCESS_MARGIN_SECONDS", "300".into()),
            ("KEAP_REFRESH_LEAD_SECONDS", "21600".into()),
            ("KEAP_REFRESH_MAX_AGE_SECONDS", "2592000".into()),
            ("KEAP_LEASE_SECONDS", "30".into()),
            ("KEAP_SIGNUP_RETRY_BUDGET_MS", "2000".into()),
        ];
        match &self.store {
            StoreEnv::SecretsManager { endpoint } => {
                vars.push(("KEAP_STORE", "secretsmanager".into()));
                if let Some(endpoint) = endpoint {
                    vars.push(("AWS_ENDPOINT_URL", endpoint.clone()));
                }
            }
            StoreEnv::File(dir) => {
                vars.push(("KEAP_STORE", "file".into()));
                vars.push(("KEAP_STORE_DIR", dir.display().to_string()));
            }
        }
        if self.function == "signup" {
            vars.push(("SIGNUP_QUEUE_URL", self.queue_url.clone()));
            // The website forms (SignupFunction's own, defaults of their parameters).
            for (name, value) in [
                ("FORM_ALLOWED_ORIGINS", ""),
                ("FORM_THANK_YOU_URL", ""),
                ("FORM_ERROR_URL", ""),
                ("FORM_TAGS", ""),
                ("FORM_SOURCE", "the website form"),
                ("FORM_CUSTOM_FIELDS", ""),
                ("FORMS_JSON", ""),
                ("FORM_CAPTCHA_PROVIDER", "none"),
                ("FORM_CAPTCHA_REQUIRED", "true"),
                ("FORM_CAPTCHA_VERIFY_URL", ""),
                ("FORM_RECORD_IP", "false"),
                ("FORM_RATE_LIMIT_PER_MINUTE", "10"),
                ("FORM_HONEYPOT_FIELD", "_gotcha"),
            ] {
                vars.push((name, value.into()));
            }
        }
        vars.into_iter().map(|(name, value)| (name.to_owned(), value)).collect()
    }
}

/// What each function's `main` does before its first `next` poll (from reading `main.rs`
/// and `shared/src/app.rs`); printed beside the cold-start table.
pub fn init_work(function: &str) -> Vec<&'static str> {
    let mut work = vec![
        "tokio multi-thread runtime (one worker per core)",
        "init_tracing: EnvFilter from RUST_LOG / AWS_LAMBDA_LOG_LEVEL, JSON subscriber",
        "Config::from_env: ~20 KEAP_* variables parsed",
        "app::store_and_queue: one aws_config::defaults().load() (env/profile chain, no network) + Secrets Manager client",
    ];
    if function == "signup" {
        work.push("SIGNUP_QUEUE_URL set: an SQS client on the same AWS config");
    }
    work.extend([
        "reqwest::Client (rustls, timeouts, user agent): the one HTTP client for Keap",
        "AppSecretCache + LazyConnection + KeapApi: no I/O (app secret and token are read on first use)",
    ]);
    match function {
        "oauth" => work.push("oauth::Deps::from_app: the app's OAuth client and secret cache"),
        "signup" => work.push("signup::Deps::from_app: SignupService (tag-id cache)"),
        "refresh" => work.push("refresh::Deps::from_app: start URL, rotation policy, function name from Config"),
        "signup-retry" => work.push("signup_retry::Deps::from_app: SignupService and the parking queue"),
        _ => {}
    }
    work.push(
        "lambda_runtime: Config::from_env (AWS_LAMBDA_* variables), hyper client for the Runtime API, first GET next",
    );
    work
}
