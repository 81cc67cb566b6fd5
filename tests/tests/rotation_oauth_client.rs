//! `keap::oauth::OAuthClient` against the Keap sandbox: the authorize round trip, the code
//! exchange, the refresh, and how each failure is classified.

use std::time::Duration;

use keap_relay::keap::oauth::{OAuthClient, OAuthError};
use keap_relay::{ExposeSecret, SecretString};
use keap_sandbox::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Sandbox, SandboxConfig};
use test_support::moto::free_port;
use url::Url;

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";

fn client(sandbox: &Sandbox, secret: &str, timeout: Duration) -> OAuthClient {
    OAuthClient::new(
        reqwest::Client::new(),
        Url::parse(&sandbox.token_url()).unwrap(),
        Url::parse(&sandbox.authorize_url()).unwrap(),
        DEFAULT_CLIENT_ID.into(),
        SecretString::from(secret.to_owned()),
        timeout,
    )
}

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_exchange_and_refresh_against_the_sandbox() {
    let sandbox = sandbox().await;
    sandbox.set_auto_approve(true);
    let oauth = client(&sandbox, DEFAULT_CLIENT_SECRET, Duration::from_secs(5));
    let authorize = oauth.authorize_url(REDIRECT, "state-123");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = no_redirects.get(authorize).send().await.unwrap();
    assert!(answer.status().is_redirection(), "{}", answer.status());
    let location = Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    let query: std::collections::HashMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(query.get("state").map(String::as_str), Some("state-123"));

    let grant = oauth.exchange_code(&query["code"], REDIRECT).await.unwrap();
    assert!(grant.expires_in > Duration::ZERO);
    assert!(grant.account.is_some(), "tenant from the scope or the header");
    let used_again = oauth.exchange_code(&query["code"], REDIRECT).await.unwrap_err();
    assert!(matches!(used_again, OAuthError::CodeRejected { .. }), "{used_again:?}");

    let refreshed = oauth.refresh(&grant.refresh_token).await.unwrap();
    assert_ne!(
        refreshed.refresh_token.expose_secret(),
        grant.refresh_token.expose_secret()
    );
    let reused = oauth.refresh(&grant.refresh_token).await.unwrap_err();
    assert!(matches!(reused, OAuthError::RefreshTokenRejected { .. }), "{reused:?}");
    assert!(!reused.may_have_rotated());
    let stats = sandbox.stats();
    assert_eq!((stats.code_exchanges, stats.refreshes_served), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified_by_what_they_mean_for_the_token() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(DEFAULT_CLIENT_ID);
    let token = SecretString::from(pair.refresh_token);

    let wrong_secret = client(&sandbox, "not-the-secret", Duration::from_secs(5))
        .refresh(&token)
        .await
        .unwrap_err();
    assert!(matches!(wrong_secret, OAuthError::InvalidClient(_)), "{wrong_secret:?}");
    assert!(!wrong_secret.to_string().contains("not-the-secret"));

    let oauth = client(&sandbox, DEFAULT_CLIENT_SECRET, Duration::from_millis(500));
    sandbox.faults().set_server_error_rate(1.0);
    assert!(matches!(
        oauth.refresh(&token).await,
        Err(OAuthError::Transient { status: 502 | 503, .. })
    ));
    sandbox.faults().clear();

    sandbox.faults().set_token_latency(Duration::from_millis(1500));
    let slow = oauth.refresh(&token).await.unwrap_err();
    assert!(
        matches!(slow, OAuthError::OutcomeUnknown(_)) && slow.may_have_rotated(),
        "{slow:?}"
    );
    sandbox.faults().clear();
    tokio::time::sleep(Duration::from_millis(1200)).await; // the slow call lands meanwhile

    let pair = sandbox.mint_grant(DEFAULT_CLIENT_ID);
    sandbox.faults().drop_next_refresh_responses(1);
    let dropped = oauth
        .refresh(&SecretString::from(pair.refresh_token))
        .await
        .unwrap_err();
    assert!(matches!(dropped, OAuthError::OutcomeUnknown(_)), "{dropped:?}");

    let nowhere = OAuthClient::new(
        reqwest::Client::new(),
        Url::parse(&format!("http://127.0.0.1:{}/token", free_port())).unwrap(),
        Url::parse("http://127.0.0.1/authorize").unwrap(),
        DEFAULT_CLIENT_ID.into(),
        SecretString::from(DEFAULT_CLIENT_SECRET),
        Duration::from_secs(1),
    );
    assert!(matches!(nowhere.refresh(&token).await, Err(OAuthError::NotSent(_))));
}
