//! The oauth function's routes, driven with the events in `events/` through the real handler,
//! the in-process Keap sandbox and the real `OAuthClient`.

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use keap_relay::config::AuthMode;
use keap_relay::oauth_state::{IssuedState, StateKey};
use keap_relay::{ExposeSecret, SecretString};

/// The harness deployment's state key (from its signing key and admin password).
fn state_key() -> StateKey {
    StateKey::from_deployment_secrets(&SecretString::from(SIGNING_KEY), &SecretString::from(ADMIN_PASSWORD))
}

/// The cookie a browser holding `issued`'s binding sends.
fn binding_cookie(issued: &IssuedState) -> String {
    format!("keap_relay_oauth={}", issued.browser_binding.expose_secret())
}

/// The binding cookie's value in a `/oauth/start` answer.
fn start_cookie_value(response: &lambda_http::Response<lambda_http::Body>) -> String {
    let cookies = set_cookies(response);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    cookie_pair(&cookies[0])
        .strip_prefix("keap_relay_oauth=")
        .expect("the binding cookie")
        .to_owned()
}

fn with_param(query: &str, name: &str, value: Option<&str>) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, existing) in url::form_urlencoded::parse(query.as_bytes()) {
        if key != name {
            out.append_pair(&key, &existing);
        }
    }
    if let Some(value) = value {
        out.append_pair(name, value);
    }
    out.finish()
}

fn assert_page(response: &lambda_http::Response<lambda_http::Body>, status: u16, code: &str) {
    let body = body_text(response);
    assert_eq!(response.status(), status, "{body}");
    assert_eq!(header(response, "content-type"), Some("text/html; charset=utf-8"));
    assert!(
        body.contains(&format!("keap-relay: {code}")),
        "expected {code} in {body}"
    );
}

#[tokio::test]
async fn start_redirects_the_administrator_to_keap_with_a_signed_state() {
    let h = Harness::start().await;
    let response = h.run(event("oauth-start.json")).await;
    assert_eq!(response.status(), 302);
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    let location = url::Url::parse(header(&response, "location").unwrap()).unwrap();
    assert!(location.as_str().starts_with(&h.sandbox.authorize_url()), "{location}");
    let query = location.query().unwrap();
    assert_eq!(
        query_value(query, "client_id").as_deref(),
        Some(keap_sandbox::DEFAULT_CLIENT_ID)
    );
    assert_eq!(query_value(query, "redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert_eq!(query_value(query, "response_type").as_deref(), Some("code"));
    let state = query_value(query, "state").unwrap();
    let binding = start_cookie_value(&response);
    let verified = state_key()
        .verify(Some(&state), &[&binding], REDIRECT_URI, SystemTime::now())
        .unwrap();
    assert!(!verified.switch);

    let switch = h.run(event_with_query("oauth-start.json", "switch=1")).await;
    let location = url::Url::parse(header(&switch, "location").unwrap()).unwrap();
    let state = query_value(location.query().unwrap(), "state").unwrap();
    assert!(
        state_key()
            .verify(
                Some(&state),
                &[&start_cookie_value(&switch)],
                REDIRECT_URI,
                SystemTime::now()
            )
            .unwrap()
            .switch
    );
}

#[tokio::test]
async fn start_binds_the_state_to_the_browser_with_a_cookie_the_callback_clears() {
    let h = Harness::start().await;
    let start = h.run(event("oauth-start.json")).await;
    let cookies = set_cookies(&start);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let attributes: Vec<&str> = cookies[0].split(';').map(str::trim).skip(1).collect();
    assert_eq!(
        attributes,
        [
            "Max-Age=600",
            "Path=/oauth/callback",
            "Secure",
            "HttpOnly",
            "SameSite=Lax"
        ]
    );
    let binding = start_cookie_value(&start);
    let location = url::Url::parse(header(&start, "location").unwrap()).unwrap();
    assert!(
        !location.as_str().contains(&binding),
        "the binding never travels in a URL"
    );
    assert!(!body_text(&start).contains(&binding));

    // The happy path: the callback in the same browser connects, and clears the cookie.
    let response = h.connect_via_browser("").await;
    assert_page(&response, 200, "connected");
    let cleared = set_cookies(&response);
    assert_eq!(
        cleared,
        ["keap_relay_oauth=; Max-Age=0; Path=/oauth/callback; Secure; HttpOnly; SameSite=Lax"]
    );
    assert!(h.browser_cookie.lock().unwrap().is_none());
    // Every callback answer clears it, refusals included.
    let refused = h.run(event("oauth-callback.json")).await;
    assert_eq!(set_cookies(&refused), cleared);
}

#[tokio::test]
async fn start_demands_the_admin_password() {
    let h = Harness::start().await;
    let unauthorized = h.run(event("oauth-start-unauthorized.json")).await;
    assert_page(&unauthorized, 401, "unauthorized");
    assert!(
        header(&unauthorized, "www-authenticate")
            .unwrap()
            .starts_with("Basic realm=\"keap-relay\"")
    );
    assert!(header(&unauthorized, "location").is_none());

    for wrong in [
        "Basic YWRtaW46d3JvbmctcGFzc3dvcmQ=",
        "Bearer local-admin-password",
        "Basic !!",
    ] {
        let response = h.run(event_with_authorization("oauth-start.json", Some(wrong))).await;
        assert_page(&response, 401, "unauthorized");
        assert!(header(&response, "www-authenticate").is_some());
    }
    let other_user = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ops:local-admin-password")
    );
    let response = h
        .run(event_with_authorization("oauth-start.json", Some(&other_user)))
        .await;
    assert_eq!(response.status(), 302);
}

#[tokio::test]
async fn without_an_admin_password_the_admin_routes_stay_closed() {
    let h = Harness::with(AuthMode::OAuth, app_secret(keap_sandbox::DEFAULT_CLIENT_SECRET, None)).await;
    for name in ["oauth-start.json", "oauth-start-unauthorized.json"] {
        let response = h.run(event(name)).await;
        assert_page(&response, 503, "admin_password_missing");
        assert!(header(&response, "location").is_none());
    }
    let status = h.run(event("status.json")).await;
    assert_eq!(status.status(), 503);
    assert!(body_text(&status).contains("admin_password_missing"));
}

#[tokio::test]
async fn start_refuses_a_bad_switch_value() {
    let h = Harness::start().await;
    assert_page(
        &h.run(event_with_query("oauth-start.json", "switch=maybe")).await,
        400,
        "bad_switch",
    );
}

#[tokio::test]
async fn api_key_mode_explains_that_oauth_is_not_used() {
    let h = Harness::with(
        AuthMode::ApiKey,
        app_secret(keap_sandbox::DEFAULT_CLIENT_SECRET, Some(ADMIN_PASSWORD)),
    )
    .await;
    assert_page(&h.run(event("oauth-start.json")).await, 409, "oauth_not_used");
    assert_page(
        &h.run(event("oauth-start-unauthorized.json")).await,
        401,
        "unauthorized",
    );
    assert_page(&h.run(event("oauth-callback.json")).await, 409, "oauth_not_used");
    let status = h.run(event("status.json")).await;
    assert_eq!(status.status(), 200);
    let json: serde_json::Value = serde_json::from_str(&body_text(&status)).unwrap();
    assert_eq!(json["mode"], "api-key");
}

#[tokio::test]
async fn callback_connects_and_names_the_account_without_echoing_secrets() {
    let h = Harness::start().await;
    let callback_query = h.authorize("").await;
    let code = query_value(&callback_query, "code").unwrap();
    let response = h.callback(&callback_query).await;
    assert_page(&response, 200, "connected");
    let body = body_text(&response);
    assert!(body.contains("ab123.infusionsoft.com"), "{body}");
    assert_eq!(h.stored_account().await.as_deref(), Some("ab123.infusionsoft.com"));
    assert!(!body.contains(&code));
    let tokens = h.stored_tokens().await;
    assert_eq!(tokens.len(), 2);
    for token in tokens {
        assert!(!body.contains(&token));
    }
    assert_eq!(h.sandbox.stats().code_exchanges, 1);
}

#[tokio::test]
async fn stored_callback_event_has_a_placeholder_state() {
    let h = Harness::start().await;
    assert_page(&h.run(event("oauth-callback.json")).await, 400, "state_malformed");
    assert_eq!(h.sandbox.stats().code_exchanges, 0);
}

#[tokio::test]
async fn forged_state_is_refused_before_the_code_is_spent() {
    let h = Harness::start().await;
    let query = h.authorize("").await;
    let state = query_value(&query, "state").unwrap();
    let (payload, signature) = state.split_once('.').unwrap();
    let mut fields: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    fields["s"] = true.into();
    let forged = format!("{}.{signature}", URL_SAFE_NO_PAD.encode(fields.to_string()));
    let response = h.callback(&with_param(&query, "state", Some(&forged))).await;
    assert_page(&response, 400, "state_bad_signature");
    assert_eq!(h.sandbox.stats().code_exchanges, 0);
    assert_eq!(h.token_versions(), 0);
}

#[tokio::test]
async fn expired_missing_and_foreign_states_are_refused() {
    let h = Harness::start().await;
    let query = h.authorize("").await;
    let expired = state_key().issue(REDIRECT_URI, false, SystemTime::now() - Duration::from_secs(11 * 60));
    let foreign = StateKey::from_deployment_secrets(
        &SecretString::from("another-deployments-signing-key"),
        &SecretString::from(ADMIN_PASSWORD),
    )
    .issue(REDIRECT_URI, false, SystemTime::now());
    let other_redirect = state_key().issue("https://staging.example.com/oauth/callback", false, SystemTime::now());
    let cases = [
        (with_param(&query, "state", Some(&expired.value)), "state_expired"),
        (with_param(&query, "state", None), "state_missing"),
        (with_param(&query, "state", Some("")), "state_missing"),
        (
            with_param(&query, "state", Some(&foreign.value)),
            "state_wrong_deployment",
        ),
        (
            with_param(&query, "state", Some(&other_redirect.value)),
            "state_wrong_deployment",
        ),
        (with_param(&query, "state", Some("not-a-state")), "state_malformed"),
    ];
    let cookie = h.browser_cookie.lock().unwrap().clone().unwrap();
    for (query, code) in cases {
        let response = h.callback_with_cookies(&query, &[&cookie]).await;
        assert_page(&response, 400, code);
    }
    assert_eq!(h.sandbox.stats().code_exchanges, 0);
    assert_eq!(h.token_versions(), 0);
}

#[tokio::test]
async fn a_state_works_once() {
    let h = Harness::start().await;
    // A state issued a moment before the callback, as in any real sign-in (the check compares
    // milliseconds, and in-process the whole round trip can fit in one).
    let earlier = state_key().issue(REDIRECT_URI, false, SystemTime::now() - Duration::from_secs(2));
    let cookie = binding_cookie(&earlier);
    let query = with_param(&h.authorize("").await, "state", Some(&earlier.value));
    assert_page(&h.callback_with_cookies(&query, &[&cookie]).await, 200, "connected");
    let versions = h.token_versions();

    // The same redirect again (browser back button, or a replay with the cookie kept).
    let replay = h.callback_with_cookies(&query, &[&cookie]).await;
    assert_page(&replay, 400, "state_reused");

    // The same state with a fresh code from another authorization.
    let fresh = h.authorize("").await;
    let replay = with_param(&fresh, "state", query_value(&query, "state").as_deref());
    assert_page(&h.callback_with_cookies(&replay, &[&cookie]).await, 400, "state_reused");

    assert_eq!(h.token_versions(), versions);
    assert_eq!(h.sandbox.stats().code_exchanges, 1);
}

#[tokio::test]
async fn access_denied_stores_nothing() {
    let h = Harness::start().await;
    let response = h.run(event("oauth-callback-denied.json")).await;
    assert_page(&response, 403, "access_denied");
    assert!(body_text(&response).contains("Access was declined"));
    assert_eq!(h.token_versions(), 0);
    assert_eq!(h.sandbox.stats().code_exchanges, 0);
}

#[tokio::test]
async fn keap_errors_are_shown_escaped_and_their_description_only_to_the_administrators_browser() {
    let h = Harness::start().await;
    let description = "%3Cscript%3Ealert(1)%3C%2Fscript%3E+Call+555-0100";
    // Anyone's link: no state, a made-up state, or a genuine state without its browser.
    let query = h.authorize("").await;
    let state = query_value(&query, "state").unwrap();
    let cookie = h.browser_cookie.lock().unwrap().clone().unwrap();
    let unverified = [
        (format!("error=server_error&error_description={description}"), None),
        (
            format!("error=server_error&error_description={description}&state=x"),
            Some(&cookie),
        ),
        (
            format!("error=server_error&error_description={description}&state={state}"),
            None,
        ),
    ];
    for (query, cookie) in unverified {
        let response = h.callback_with_cookies(&query, cookie.as_slice()).await;
        assert_page(&response, 400, "keap_error");
        let body = body_text(&response);
        assert!(body.contains("(server_error)"), "{body}");
        assert!(
            !body.contains("script") && !body.contains("555-0100"),
            "{query}: {body}"
        );
    }
    // Keap's own redirect to the browser that started the sign-in: shown, escaped.
    let query = format!("error=server_error&error_description={description}&state={state}");
    let response = h.callback(&query).await;
    assert_page(&response, 400, "keap_error");
    let body = body_text(&response);
    assert!(!body.contains("<script>"), "{body}");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt; Call 555-0100"),
        "{body}"
    );
    assert_eq!(h.sandbox.stats().code_exchanges, 0);
}

#[tokio::test]
async fn a_code_keap_already_consumed_is_reported_and_nothing_changes() {
    let h = Harness::start().await;
    let first = h.authorize("").await;
    assert_page(&h.callback(&first).await, 200, "connected");
    let versions = h.token_versions();

    // A valid, fresh state carrying the code that was already exchanged.
    let fresh = h.authorize("").await;
    let reused_code = with_param(&fresh, "code", query_value(&first, "code").as_deref());
    let response = h.callback(&reused_code).await;
    assert_page(&response, 400, "code_rejected");
    let body = body_text(&response);
    assert!(body.contains("invalid_grant"), "{body}");
    assert!(!body.contains(&query_value(&first, "code").unwrap()));
    assert_eq!(h.token_versions(), versions);
}

#[tokio::test]
async fn a_code_issued_for_another_redirect_uri_is_refused() {
    let h = Harness::start().await;
    let ours = h.authorize("").await;
    // A code Keap issued to some other callback URL.
    let mut authorize = url::Url::parse(&h.sandbox.authorize_url()).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", keap_sandbox::DEFAULT_CLIENT_ID)
        .append_pair("redirect_uri", "https://elsewhere.example.com/callback")
        .append_pair("response_type", "code")
        .append_pair("scope", "full");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = http.get(authorize).send().await.unwrap();
    let back = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    let foreign_code = query_value(back.query().unwrap(), "code").unwrap();

    let query = with_param(&ours, "code", Some(&foreign_code));
    assert_page(&h.callback(&query).await, 400, "code_rejected");
    assert_eq!(h.token_versions(), 0);
}

#[tokio::test]
async fn keap_being_down_during_the_exchange_is_a_bad_gateway() {
    let h = Harness::start().await;
    let query = h.authorize("").await;
    h.sandbox.faults().set_server_error_rate(1.0);
    assert_page(&h.callback(&query).await, 502, "keap_unavailable");
    assert_eq!(h.token_versions(), 0);
}

#[tokio::test]
async fn a_wrong_client_secret_is_reported_as_a_configuration_problem() {
    let h = Harness::with(
        AuthMode::OAuth,
        app_secret("not-the-sandbox-secret", Some(ADMIN_PASSWORD)),
    )
    .await;
    let response = h.connect_via_browser("").await;
    assert_page(&response, 502, "client_rejected");
    assert!(!body_text(&response).contains("not-the-sandbox-secret"));
    assert_eq!(h.token_versions(), 0);
}

#[tokio::test]
async fn another_account_needs_the_switch_flag() {
    let h = Harness::start().await;
    h.seed("zz999.infusionsoft.com").await;

    let refused = h.connect_via_browser("").await;
    assert_page(&refused, 409, "different_account");
    let body = body_text(&refused);
    assert!(
        body.contains("zz999.infusionsoft.com") && body.contains("ab123.infusionsoft.com"),
        "{body}"
    );
    assert!(body.contains("start?switch=1"));
    assert_eq!(h.stored_account().await.as_deref(), Some("zz999.infusionsoft.com"));

    let switched = h.connect_via_browser("switch=1").await;
    assert_page(&switched, 200, "connected");
    assert_eq!(h.stored_account().await.as_deref(), Some("ab123.infusionsoft.com"));
}

#[tokio::test]
async fn status_reports_health_and_never_a_token() {
    let h = Harness::start().await;
    let before = h.run(event("status.json")).await;
    assert_eq!(before.status(), 200);
    let json: serde_json::Value = serde_json::from_str(&body_text(&before)).unwrap();
    assert_eq!(json["connected"], false);

    assert_eq!(h.connect_via_browser("").await.status(), 200);
    let response = h.run(event("status.json")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    let body = body_text(&response);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["mode"], "oauth");
    assert_eq!(json["connected"], true);
    assert_eq!(json["account"], "ab123.infusionsoft.com");
    assert_eq!(json["needs_reauth"], false);
    let tokens = h.stored_tokens().await;
    assert_eq!(tokens.len(), 2);
    for token in tokens {
        assert!(!body.contains(&token), "status leaks a token: {body}");
    }
}

#[tokio::test]
async fn status_demands_the_admin_password() {
    let h = Harness::start().await;
    let response = h.run(event_with_authorization("status.json", None)).await;
    assert_eq!(response.status(), 401);
    assert!(header(&response, "www-authenticate").unwrap().starts_with("Basic"));
    let json: serde_json::Value = serde_json::from_str(&body_text(&response)).unwrap();
    assert_eq!(json["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn wrong_methods_and_unknown_paths() {
    let h = Harness::start().await;
    for path in ["/oauth/start", "/oauth/callback", "/status"] {
        let response = h.run(event_with_route("status.json", "POST", path)).await;
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(header(&response, "allow"), Some("GET"));
        let json: serde_json::Value = serde_json::from_str(&body_text(&response)).unwrap();
        assert_eq!(json["error"]["code"], "method_not_allowed");
    }
    let response = h.run(event_with_route("status.json", "GET", "/nope")).await;
    assert_eq!(response.status(), 404);
    let json: serde_json::Value = serde_json::from_str(&body_text(&response)).unwrap();
    assert_eq!(json["error"]["code"], "not_found");
}

#[tokio::test]
async fn routes_work_under_a_named_stage() {
    let h = Harness::start().await;
    let mut json = event_json("status.json");
    json["rawPath"] = "/prod/status".into();
    json["requestContext"]["stage"] = "prod".into();
    json["requestContext"]["http"]["path"] = "/prod/status".into();
    let response = h.run(to_request(&json)).await;
    assert_eq!(response.status(), 200, "{}", body_text(&response));
}

#[tokio::test]
async fn an_unreadable_app_secret_is_a_configuration_error_not_open_access() {
    struct Unreadable;
    #[async_trait::async_trait]
    impl oauth::ports::AppSecretSource for Unreadable {
        async fn app_secret(
            &self,
        ) -> Result<std::sync::Arc<keap_relay::config::AppSecret>, oauth::ports::SecretUnavailable> {
            Err(oauth::ports::SecretUnavailable(
                "secret keap-relay/app does not exist".into(),
            ))
        }
    }
    let mut h = Harness::start().await;
    h.deps.secrets = std::sync::Arc::new(Unreadable);
    assert_page(&h.run(event("oauth-start.json")).await, 503, "app_secret_unavailable");
    let query = "code=abc&state=x.y";
    assert_page(
        &h.run(event_with_query("oauth-callback.json", query)).await,
        503,
        "app_secret_unavailable",
    );
    let status = h.run(event("status.json")).await;
    assert_eq!(status.status(), 503);
    let json: serde_json::Value = serde_json::from_str(&body_text(&status)).unwrap();
    assert_eq!(json["error"]["code"], "app_secret_unavailable");
}

#[tokio::test]
async fn a_callback_without_a_code_is_refused() {
    let h = Harness::start().await;
    let query = with_param(&h.authorize("").await, "code", None);
    assert_page(&h.callback(&query).await, 400, "code_missing");
    assert_eq!(h.token_versions(), 0);
}

#[tokio::test]
async fn status_shows_a_connection_that_needs_reauthorization() {
    let h = Harness::start().await;
    assert_eq!(h.connect_via_browser("").await.status(), 200);
    let current = h.store.peek_current(TOKEN_SECRET_ID).unwrap();
    let state =
        keap_relay::token::TokenState::from_json(keap_relay::ExposeSecret::expose_secret(&current.value)).unwrap();
    let dead = state.needing_reauth("Keap refused the refresh token (invalid_grant)", SystemTime::now());
    use keap_relay::store::SecretStore as _;
    h.store
        .put_version(TOKEN_SECRET_ID, "marked", &dead.to_secret())
        .await
        .unwrap();
    h.store
        .swap_current(TOKEN_SECRET_ID, &current.version_id, "marked")
        .await
        .unwrap();

    let response = h.run(event("status.json")).await;
    let json: serde_json::Value = serde_json::from_str(&body_text(&response)).unwrap();
    assert_eq!(json["needs_reauth"], true, "{json}");
    assert_eq!(json["connected"], false);
    assert!(json["needs_reauth_reason"].as_str().unwrap().contains("invalid_grant"));

    // Connecting again (same account) repairs it.
    assert_page(&h.connect_via_browser("").await, 200, "connected");
    let json: serde_json::Value = serde_json::from_str(&body_text(&h.run(event("status.json")).await)).unwrap();
    assert_eq!(json["needs_reauth"], false);
    assert_eq!(json["connected"], true);
}

// Issue 14: the state key, its lifetime and the browser binding.

#[tokio::test]
async fn a_state_forged_with_the_client_secret_is_refused() {
    // The client secret is shown in Keap's developer portal and may be shared by several
    // deployments. Its holder mints a state as the key used to be derived (HMAC(client
    // secret, label)), binds it to a cookie of their own and calls the callback with both.
    let h = Harness::start().await;
    let query = h.authorize("switch=1").await;
    use hmac::Mac as _;
    let mut key = hmac::Hmac::<sha2::Sha256>::new_from_slice(keap_sandbox::DEFAULT_CLIENT_SECRET.as_bytes()).unwrap();
    key.update(b"keap-relay oauth state v1");
    let forger = StateKey::from_raw(key.finalize().into_bytes().into());
    let forged = forger.issue(REDIRECT_URI, true, SystemTime::now());
    let response = h
        .callback_with_cookies(
            &with_param(&query, "state", Some(&forged.value)),
            &[binding_cookie(&forged)],
        )
        .await;
    assert_page(&response, 400, "state_wrong_deployment");
    assert_eq!(h.sandbox.stats().code_exchanges, 0);
    assert_eq!(h.token_versions(), 0);
}

#[tokio::test]
async fn a_callback_without_the_starting_browsers_cookie_is_refused_and_spends_nothing() {
    let h = Harness::start().await;
    let query = h.authorize("").await;
    let ours = h.browser_cookie.lock().unwrap().clone().unwrap();

    // The state and code alone (leaked URL, another browser, cookies blocked).
    let response = h.callback_with_cookies(&query, &[] as &[&str]).await;
    assert_page(&response, 400, "state_cookie_missing");
    assert!(body_text(&response).contains("Nothing was changed"));

    // Another sign-in's cookie (a second /oauth/start since, or an attacker's own).
    let other = h.run(event("oauth-start.json")).await;
    let theirs = format!("keap_relay_oauth={}", start_cookie_value(&other));
    for cookies in [
        vec![theirs.clone()],
        vec!["keap_relay_oauth=AAAA".to_owned()],
        vec![format!("other_cookie={}", ours.split_once('=').unwrap().1)],
    ] {
        let response = h.callback_with_cookies(&query, &cookies).await;
        let expected = if cookies[0].starts_with("other") {
            (400, "state_cookie_missing")
        } else {
            (403, "state_cookie_mismatch")
        };
        assert_page(&response, expected.0, expected.1);
    }
    assert_eq!(h.sandbox.stats().code_exchanges, 0, "nothing exchanged");
    assert_eq!(h.token_versions(), 0, "nothing stored");

    // The administrator's own browser still completes the sign-in.
    let response = h.callback_with_cookies(&query, &[&theirs, &ours]).await;
    assert_page(&response, 200, "connected");
}

// Issue 14: failed logins and the admin password's length.

#[tokio::test]
async fn a_failed_login_is_logged_with_the_source_address_and_counted() {
    let h = Harness::start().await;
    let logs = test_support::logs::LogCapture::default();
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("mallory:guess-number-one-2024")
    );
    {
        let _guard = logs.json_on_this_thread(tracing::Level::INFO);
        for name in ["oauth-start.json", "status.json"] {
            let response = h.run(event_with_authorization(name, Some(&wrong))).await;
            assert_eq!(response.status(), 401);
        }
        // No credentials at all is a browser's first request, not a failed login; the right
        // password is not one either.
        assert_eq!(h.run(event("oauth-start-unauthorized.json")).await.status(), 401);
        assert_eq!(h.run(event("status.json")).await.status(), 200);
    }
    let failures: Vec<serde_json::Value> = logs
        .json_lines()
        .into_iter()
        .filter(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("failed administrator login"))
        })
        .collect();
    assert_eq!(failures.len(), 2, "{}", logs.text());
    for (line, route) in failures.iter().zip(["/oauth/start", "/status"]) {
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["source_ip"], "203.0.113.10", "events/*.json's sourceIp");
        assert_eq!(line["fields"]["route"], route);
    }
    let text = logs.text();
    assert!(
        !text.contains("mallory") && !text.contains("guess-number-one"),
        "never the attempted user or password: {text}"
    );

    let metrics = h.metrics.lines();
    assert_eq!(metrics.len(), 2, "{metrics:?}");
    for line in &metrics {
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "KeapRelay");
        assert_eq!(directive["Dimensions"], serde_json::json!([["FunctionName"]]));
        assert_eq!(
            directive["Metrics"],
            serde_json::json!([{"Name": "AdminLoginFailures", "Unit": "Count"}])
        );
        assert_eq!(line["FunctionName"], FUNCTION_NAME);
        assert_eq!(line["AdminLoginFailures"], 1.0);
        assert_eq!(line["source_ip"], "203.0.113.10");
        assert!(!line.to_string().contains("guess-number-one"));
    }
}

#[tokio::test]
async fn an_admin_password_under_16_characters_closes_the_admin_routes() {
    let short = "fifteen-chars!!";
    let h = Harness::with(
        AuthMode::OAuth,
        app_secret(keap_sandbox::DEFAULT_CLIENT_SECRET, Some(short)),
    )
    .await;
    let right = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{short}"))
    );
    let logs = test_support::logs::LogCapture::default();
    {
        let _guard = logs.json_on_this_thread(tracing::Level::INFO);
        let response = h.run(event_with_authorization("oauth-start.json", Some(&right))).await;
        assert_page(&response, 503, "admin_password_too_short");
        assert!(header(&response, "location").is_none());
        assert!(set_cookies(&response).is_empty());
        let status = h.run(event_with_authorization("status.json", Some(&right))).await;
        assert_eq!(status.status(), 503);
        let json: serde_json::Value = serde_json::from_str(&body_text(&status)).unwrap();
        assert_eq!(json["error"]["code"], "admin_password_too_short");
    }
    let errors: Vec<serde_json::Value> = logs
        .json_lines()
        .into_iter()
        .filter(|l| l["level"] == "ERROR" && l["fields"]["code"] == "admin_password_too_short")
        .collect();
    assert_eq!(errors.len(), 2, "{}", logs.text());
    assert!(
        errors[0]["fields"]["detail"]
            .as_str()
            .unwrap()
            .contains("16 characters")
    );
    assert!(!logs.text().contains(short));
    assert!(h.metrics.lines().is_empty(), "a closed route counts no failed login");
}

// Issue 14: nothing about the deployment before authentication.

#[tokio::test]
async fn configuration_details_are_shown_only_to_the_administrator() {
    struct Unreadable;
    #[async_trait::async_trait]
    impl oauth::ports::AppSecretSource for Unreadable {
        async fn app_secret(
            &self,
        ) -> Result<std::sync::Arc<keap_relay::config::AppSecret>, oauth::ports::SecretUnavailable> {
            Err(oauth::ports::SecretUnavailable(
                "secret arn:aws:secretsmanager:us-east-1:123456789012:secret:keap-relay/app-AbCdEf: AccessDenied"
                    .into(),
            ))
        }
    }
    let leaks = ["arn:aws", "123456789012", "keap-relay/app", "AccessDenied"];
    let mut h = Harness::start().await;
    h.deps.secrets = std::sync::Arc::new(Unreadable);
    let answers = [
        h.run(event("oauth-start.json")).await,
        h.run(event("status.json")).await,
        h.run(event_with_query("oauth-callback.json", "code=abc&state=x.y"))
            .await,
    ];
    for response in answers {
        assert_eq!(response.status(), 503);
        let body = body_text(&response);
        assert!(body.contains("app_secret_unavailable"), "{body}");
        for leak in leaks {
            assert!(!body.contains(leak), "{leak} in {body}");
        }
    }

    // Settings the callback lacks: the code, not the setting's name or the mode. The
    // administrator (Basic auth on /oauth/start) gets the detail.
    let mut no_redirect = Harness::start().await;
    no_redirect.deps.redirect_uri = None;
    let anyone = no_redirect
        .run(event_with_query("oauth-callback.json", "code=abc&state=x.y"))
        .await;
    assert_page(&anyone, 503, "redirect_uri_missing");
    assert!(!body_text(&anyone).contains("KEAP_REDIRECT_URI"));
    let admin = no_redirect.run(event("oauth-start.json")).await;
    assert_page(&admin, 503, "redirect_uri_missing");
    assert!(body_text(&admin).contains("KEAP_REDIRECT_URI"));

    let mut secret = app_secret(keap_sandbox::DEFAULT_CLIENT_SECRET, Some(ADMIN_PASSWORD));
    secret.signup_signing_key = None;
    let no_key = Harness::with(AuthMode::OAuth, secret).await;
    let anyone = no_key
        .run(event_with_query("oauth-callback.json", "code=abc&state=x.y"))
        .await;
    assert_page(&anyone, 503, "signup_signing_key_missing");
    assert!(!body_text(&anyone).contains("app secret"));
    let admin = no_key.run(event("oauth-start.json")).await;
    assert_page(&admin, 503, "signup_signing_key_missing");
    assert!(body_text(&admin).contains("app secret has no signup_signing_key"));

    let no_password = Harness::with(AuthMode::OAuth, app_secret(keap_sandbox::DEFAULT_CLIENT_SECRET, None)).await;
    let anyone = no_password.run(event("oauth-start-unauthorized.json")).await;
    assert_page(&anyone, 503, "admin_password_missing");
    assert!(!body_text(&anyone).contains("app secret"));

    let api_key = Harness::with(
        AuthMode::ApiKey,
        app_secret(keap_sandbox::DEFAULT_CLIENT_SECRET, Some(ADMIN_PASSWORD)),
    )
    .await;
    let anyone = api_key.run(event("oauth-callback.json")).await;
    assert_page(&anyone, 409, "oauth_not_used");
    let body = body_text(&anyone);
    assert!(!body.contains("KEAP_AUTH_MODE") && !body.contains("API key"), "{body}");
    let admin = api_key.run(event("oauth-start.json")).await;
    assert_page(&admin, 409, "oauth_not_used");
    assert!(body_text(&admin).contains("KEAP_AUTH_MODE=api-key"));
}
