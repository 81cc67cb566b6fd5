//! The authorize page and the token endpoint.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keap_sandbox::{AuthKind, ClientConfig, ReusePolicy, SandboxConfig, TokenResponse};
use reqwest::StatusCode;
use serde_json::json;

fn authorize_query<'a>(redirect_uri: &'a str, client_id: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("response_type", "code"),
        ("scope", "full"),
        ("state", "st-42"),
    ]
}

/// Submits the consent form with `decision`; Keap answers with a redirect to the client.
async fn decide(sandbox: &keap_sandbox::Sandbox, decision: &str) -> url::Url {
    let mut form = authorize_query(REDIRECT_URI, CLIENT_ID);
    form.push(("decision", decision));
    let response = client().post(sandbox.authorize_url()).form(&form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    location(&response)
}

#[tokio::test]
async fn consent_page_offers_approve_and_deny() {
    let sandbox = sandbox().await;
    let response = client()
        .get(sandbox.authorize_url())
        .query(&authorize_query(REDIRECT_URI, CLIENT_ID))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(page.contains("value=\"approve\"") && page.contains("value=\"deny\""));
    assert!(page.contains("method=\"post\""));
    assert!(page.contains("value=\"st-42\""), "state carried in the form");
}

#[tokio::test]
async fn approving_redirects_with_code_scope_and_state() {
    let sandbox = sandbox().await;
    let target = decide(&sandbox, "approve").await;
    assert!(target.as_str().starts_with(REDIRECT_URI));
    assert!(query_param(&target, "code").is_some_and(|c| !c.is_empty()));
    assert_eq!(query_param(&target, "state").as_deref(), Some("st-42"));
    assert_eq!(
        query_param(&target, "scope").as_deref(),
        Some("full|ab123.infusionsoft.com")
    );
    assert!(target.as_str().contains("scope=full%7Cab123.infusionsoft.com"));
}

#[tokio::test]
async fn denying_redirects_with_access_denied() {
    let sandbox = sandbox().await;
    let target = decide(&sandbox, "deny").await;
    assert_eq!(query_param(&target, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_param(&target, "state").as_deref(), Some("st-42"));
    assert_eq!(query_param(&target, "code"), None);
}

#[tokio::test]
async fn auto_approve_redirects_at_once_and_can_be_switched() {
    let sandbox = start(SandboxConfig {
        auto_approve: true,
        ..SandboxConfig::default()
    })
    .await;
    let get = || {
        client()
            .get(sandbox.authorize_url())
            .query(&authorize_query(REDIRECT_URI, CLIENT_ID))
            .send()
    };
    let response = get().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(query_param(&location(&response), "code").is_some());
    sandbox.set_auto_approve(false);
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_client_or_redirect_uri_gets_an_error_page_not_a_redirect() {
    let registered = ClientConfig::new("strict-client", "s3cret").with_redirect_uris([REDIRECT_URI]);
    let sandbox = start(SandboxConfig {
        clients: vec![registered],
        auto_approve: true,
        ..SandboxConfig::default()
    })
    .await;
    let cases = [
        authorize_query(REDIRECT_URI, "nobody"),
        authorize_query("https://evil.example.com/cb", "strict-client"),
        authorize_query("ftp://relay.example.com/cb", "strict-client"),
        authorize_query("not a url", "strict-client"),
        vec![("client_id", "strict-client")],
    ];
    for query in cases {
        let response = client()
            .get(sandbox.authorize_url())
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query:?}");
        assert!(response.headers().get("location").is_none());
    }
    let ok = client()
        .get(sandbox.authorize_url())
        .query(&authorize_query(REDIRECT_URI, "strict-client"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn default_client_accepts_any_http_redirect_uri() {
    let sandbox = sandbox().await;
    let code = authorize_code(&sandbox, "http://localhost:9000/oauth/callback").await;
    let response = exchange_code(&sandbox, &code, "http://localhost:9000/oauth/callback").await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn code_exchange_returns_keaps_token_shape_and_tenant_header() {
    let sandbox = sandbox().await;
    let code = authorize_code(&sandbox, REDIRECT_URI).await;
    let response = exchange_code(&sandbox, &code, REDIRECT_URI).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-keap-tenant-id"], "ab123");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json_of(response).await;
    let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["access_token", "expires_in", "refresh_token", "scope", "token_type"]
    );
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86_400);
    assert_eq!(body["scope"], "full|ab123.infusionsoft.com");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(get_bearer(&sandbox, "/v1/tags", access).await.status(), StatusCode::OK);
    let stats = sandbox.stats();
    assert_eq!(stats.code_exchanges, 1);
    assert_eq!(stats.refreshes_served, 0);
}

#[tokio::test]
async fn a_code_works_once() {
    let sandbox = sandbox().await;
    let code = authorize_code(&sandbox, REDIRECT_URI).await;
    assert_eq!(
        exchange_code(&sandbox, &code, REDIRECT_URI).await.status(),
        StatusCode::OK
    );
    let again = exchange_code(&sandbox, &code, REDIRECT_URI).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(again).await["error"], "invalid_grant");
    let stats = sandbox.stats();
    assert_eq!((stats.code_exchanges, stats.code_exchange_failures), (1, 1));
    assert_eq!(stats.code_exchange_failure_reasons["invalid_grant_used"], 1);
}

#[tokio::test]
async fn reusing_a_code_under_revoke_family_revokes_what_it_issued() {
    let sandbox = start(SandboxConfig {
        reuse_policy: ReusePolicy::RevokeFamily,
        ..SandboxConfig::default()
    })
    .await;
    let code = authorize_code(&sandbox, REDIRECT_URI).await;
    let pair: TokenResponse = exchange_code(&sandbox, &code, REDIRECT_URI).await.json().await.unwrap();
    assert_eq!(
        exchange_code(&sandbox, &code, REDIRECT_URI).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_invalid_access_token(get_bearer(&sandbox, "/v1/tags", &pair.access_token).await).await;
}

#[tokio::test]
async fn a_code_expires_after_code_ttl() {
    let sandbox = start(SandboxConfig {
        code_ttl: Duration::from_secs(60),
        ..SandboxConfig::default()
    })
    .await;
    let code = authorize_code(&sandbox, REDIRECT_URI).await;
    sandbox.advance_clock(Duration::from_secs(61));
    let response = exchange_code(&sandbox, &code, REDIRECT_URI).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(response).await["error"], "invalid_grant");
    assert_eq!(
        sandbox.stats().code_exchange_failure_reasons["invalid_grant_expired"],
        1
    );
}

#[tokio::test]
async fn the_code_needs_the_redirect_uri_it_was_issued_for() {
    let sandbox = sandbox().await;
    let code = authorize_code(&sandbox, REDIRECT_URI).await;
    let response = exchange_code(&sandbox, &code, "https://relay.example.com/other").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(response).await["error"], "invalid_grant");
    assert_eq!(
        sandbox.stats().code_exchange_failure_reasons["redirect_uri_mismatch"],
        1
    );
}

#[tokio::test]
async fn code_exchange_needs_client_credentials_in_the_body() {
    let sandbox = sandbox().await;
    let code = authorize_code(&sandbox, REDIRECT_URI).await;
    let basic_only = client()
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(basic_only.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(basic_only).await["error"], "invalid_client");
    let wrong_secret = client()
        .post(sandbox.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", CLIENT_ID),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_secret.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(wrong_secret).await["error"], "invalid_client");
    // The failed attempts did not burn the code.
    assert_eq!(
        exchange_code(&sandbox, &code, REDIRECT_URI).await.status(),
        StatusCode::OK
    );
    let auth: Vec<AuthKind> = sandbox
        .stats()
        .calls
        .iter()
        .filter(|c| c.path == "/token")
        .map(|c| c.auth)
        .collect();
    assert_eq!(
        auth,
        [AuthKind::Basic, AuthKind::BodyCredentials, AuthKind::BodyCredentials]
    );
}

#[tokio::test]
async fn refresh_rotates_and_kills_the_old_refresh_token() {
    let sandbox = sandbox().await;
    let first = sandbox.mint_grant(CLIENT_ID);
    let second = refreshed_pair(&sandbox, &first.refresh_token).await;
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.scope, "full|ab123.infusionsoft.com");
    assert_invalid_grant(refresh(&sandbox, &first.refresh_token).await).await;
    // The new token works; the previous access token stays valid until it expires.
    let third = refreshed_pair(&sandbox, &second.refresh_token).await;
    assert_eq!(
        get_bearer(&sandbox, "/v1/tags", &first.access_token).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_bearer(&sandbox, "/v1/tags", &third.access_token).await.status(),
        StatusCode::OK
    );
    let stats = sandbox.stats();
    assert_eq!(stats.refreshes_served, 2);
    assert_eq!(stats.grants_minted, 1);
    assert_eq!(stats.refresh_failure("invalid_grant_used"), 1);
}

#[tokio::test]
async fn reuse_under_reject_leaves_the_current_pair_working() {
    let sandbox = sandbox().await;
    let first = sandbox.mint_grant(CLIENT_ID);
    let second = refreshed_pair(&sandbox, &first.refresh_token).await;
    assert_invalid_grant(refresh(&sandbox, &first.refresh_token).await).await;
    assert_eq!(
        get_bearer(&sandbox, "/v1/tags", &second.access_token).await.status(),
        StatusCode::OK
    );
    refreshed_pair(&sandbox, &second.refresh_token).await;
}

#[tokio::test]
async fn reuse_under_revoke_family_kills_the_current_pair() {
    let sandbox = start(SandboxConfig {
        reuse_policy: ReusePolicy::RevokeFamily,
        ..SandboxConfig::default()
    })
    .await;
    let first = sandbox.mint_grant(CLIENT_ID);
    let second = refreshed_pair(&sandbox, &first.refresh_token).await;
    let other_grant = sandbox.mint_grant(CLIENT_ID);
    assert_invalid_grant(refresh(&sandbox, &first.refresh_token).await).await;
    assert_invalid_access_token(get_bearer(&sandbox, "/v1/tags", &second.access_token).await).await;
    assert_invalid_grant(refresh(&sandbox, &second.refresh_token).await).await;
    // Other grants are untouched.
    assert_eq!(
        get_bearer(&sandbox, "/v1/tags", &other_grant.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    let stats = sandbox.stats();
    assert_eq!(stats.refresh_failure("invalid_grant_used"), 1);
    assert_eq!(stats.refresh_failure("invalid_grant_revoked"), 1);
}

#[tokio::test]
async fn unknown_and_expired_refresh_tokens_get_invalid_grant() {
    let sandbox = sandbox().await;
    assert_invalid_grant(refresh(&sandbox, "no-such-token").await).await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    sandbox.expire_refresh_tokens();
    assert_invalid_grant(refresh(&sandbox, &pair.refresh_token).await).await;
    let aged = sandbox.mint_grant(CLIENT_ID);
    sandbox.advance_clock(Duration::from_secs(45 * 86_400 + 1));
    assert_invalid_grant(refresh(&sandbox, &aged.refresh_token).await).await;
    let stats = sandbox.stats();
    assert_eq!(stats.refresh_failure("invalid_grant_unknown"), 1);
    assert_eq!(stats.refresh_failure("invalid_grant_expired"), 2);
}

#[tokio::test]
async fn refresh_requires_basic_auth() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    let body_credentials = client()
        .post(sandbox.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", pair.refresh_token.as_str()),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(body_credentials.status(), StatusCode::UNAUTHORIZED);
    assert!(
        body_credentials.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(json_of(body_credentials).await["error"], "invalid_client");
    let garbled = client()
        .post(sandbox.token_url())
        .header("Authorization", "Basic !!!not-base64")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", pair.refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), StatusCode::UNAUTHORIZED);
    // Neither attempt used the token up.
    refreshed_pair(&sandbox, &pair.refresh_token).await;
    let stats = sandbox.stats();
    assert_eq!(stats.refresh_failure("missing_client_auth"), 1);
    assert_eq!(stats.refresh_failure("bad_auth_header"), 1);
    let auth: Vec<AuthKind> = stats.calls.iter().map(|c| c.auth).collect();
    assert_eq!(auth, [AuthKind::BodyCredentials, AuthKind::Basic, AuthKind::Basic]);
}

#[tokio::test]
async fn wrong_client_or_secret_gets_invalid_client() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    for (id, secret) in [(CLIENT_ID, "wrong-secret"), ("other-client", CLIENT_SECRET)] {
        let response = client()
            .post(sandbox.token_url())
            .basic_auth(id, Some(secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", pair.refresh_token.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json_of(response).await["error"], "invalid_client");
    }
    assert_eq!(sandbox.stats().refresh_failure("invalid_client"), 2);
    refreshed_pair(&sandbox, &pair.refresh_token).await;
}

#[tokio::test]
async fn another_clients_refresh_token_is_unknown() {
    let mut config = SandboxConfig::default();
    config.clients.push(ClientConfig::new("second-app", "second-secret"));
    let sandbox = start(config).await;
    let pair = sandbox.mint_grant("second-app");
    assert_invalid_grant(refresh(&sandbox, &pair.refresh_token).await).await;
}

#[tokio::test]
async fn token_endpoint_takes_form_bodies_only() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    let response = client()
        .post(sandbox.token_url())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": pair.refresh_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(response).await["error"], "invalid_request");
    for form in [
        vec![("grant_type", "password")],
        vec![("refresh_token", pair.refresh_token.as_str())],
        vec![("grant_type", "refresh_token")],
    ] {
        let response = client()
            .post(sandbox.token_url())
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{form:?}");
    }
    let stats = sandbox.stats();
    assert_eq!(stats.token_request_failures["unsupported_content_type"], 1);
    assert_eq!(stats.token_request_failures["unsupported_grant_type"], 1);
    assert_eq!(stats.token_request_failures["invalid_request"], 1);
    assert_eq!(stats.refresh_failure("invalid_request"), 1);
    refreshed_pair(&sandbox, &pair.refresh_token).await;
}

#[tokio::test]
async fn expired_access_tokens_get_401_and_refresh_still_works() {
    let sandbox = start(SandboxConfig {
        access_ttl: Duration::from_secs(3600),
        ..SandboxConfig::default()
    })
    .await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    assert_eq!(pair.expires_in, 3600);
    assert_eq!(
        get_bearer(&sandbox, "/v1/tags", &pair.access_token).await.status(),
        StatusCode::OK
    );
    sandbox.expire_access_tokens();
    assert_invalid_access_token(get_bearer(&sandbox, "/v1/tags", &pair.access_token).await).await;
    let next = refreshed_pair(&sandbox, &pair.refresh_token).await;
    assert_eq!(
        get_bearer(&sandbox, "/v1/tags", &next.access_token).await.status(),
        StatusCode::OK
    );
    sandbox.advance_clock(Duration::from_secs(3601));
    assert_invalid_access_token(get_bearer(&sandbox, "/v1/tags", &next.access_token).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_of_one_token_have_exactly_one_winner() {
    const CONTENDERS: usize = 32;
    let sandbox = Arc::new(sandbox().await);
    let pair = sandbox.mint_grant(CLIENT_ID);
    let barrier = Arc::new(tokio::sync::Barrier::new(CONTENDERS));
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|_| {
            let (sandbox, barrier, token) = (sandbox.clone(), barrier.clone(), pair.refresh_token.clone());
            tokio::spawn(async move {
                // Own client each: separate connections, truly parallel requests.
                let client = client();
                barrier.wait().await;
                refresh_with(&client, &sandbox, &token).await.unwrap().status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let winners = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let losers = statuses.iter().filter(|s| **s == StatusCode::BAD_REQUEST).count();
    assert_eq!((winners, losers), (1, CONTENDERS - 1), "{statuses:?}");
    let stats = sandbox.stats();
    assert_eq!(stats.refreshes_served, 1);
    assert_eq!(stats.refresh_failure("invalid_grant_used"), (CONTENDERS - 1) as u64);
}

#[tokio::test]
async fn minted_grants_work_and_count_as_grants() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    assert_eq!(pair.token_type, "bearer");
    assert_eq!(pair.expires_in, 86_400);
    assert_eq!(
        get_bearer(&sandbox, "/v1/tags", &pair.access_token).await.status(),
        StatusCode::OK
    );
    let stats = sandbox.stats();
    assert_eq!(
        (stats.grants_minted, stats.code_exchanges, stats.refreshes_served),
        (1, 0, 0)
    );
}
