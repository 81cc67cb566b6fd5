//! What every REST call meets first (auth, quotas, injected faults), the call log, the
//! control endpoints and shutdown.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use keap_sandbox::{AuthKind, CallRecord, RateLimit, SandboxConfig, Stats, TokenResponse};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Every route the sandbox serves, plus paths it does not.
const REST_PATHS: &[(&str, &str)] = &[
    ("PUT", "/v1/contacts"),
    ("POST", "/v1/contacts"),
    ("GET", "/v1/contacts"),
    ("GET", "/v1/contacts/1001"),
    ("POST", "/v1/contacts/1001/tags"),
    ("GET", "/v1/tags"),
    ("POST", "/v1/tags"),
    ("GET", "/v1/tags/101"),
    ("POST", "/v1/emails/queue"),
    ("POST", "/v2/contacts"),
    ("GET", "/v2/contacts"),
    ("GET", "/v2/contacts/1001"),
    ("GET", "/v2/tags"),
    ("POST", "/v2/tags"),
    ("GET", "/v2/tags/101"),
    ("POST", "/v2/tags/101/contacts:applyTags"),
    ("POST", "/v2/emails:send"),
    ("GET", "/v1/no/such/path"),
    ("DELETE", "/v2/contacts/1001"),
    ("GET", "/v3/anything"),
    ("GET", ""),
];

#[tokio::test]
async fn every_rest_path_checks_the_credential_first() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    sandbox.expire_access_tokens();
    let credentials: [(&str, String); 5] = [
        ("none", String::new()),
        ("Authorization", "Bearer not-a-token".to_owned()),
        ("Authorization", format!("Bearer {}", pair.access_token)),
        ("X-Keap-API-Key", "KeapAK-wrong".to_owned()),
        (
            "Authorization",
            "Basic c2FuZGJveC1jbGllbnQ6c2FuZGJveC1zZWNyZXQ=".to_owned(),
        ),
    ];
    for (method, path) in REST_PATHS {
        for (header, value) in &credentials {
            let mut request = client()
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", sandbox.api_url()),
                )
                .header("Content-Type", "application/json")
                .body("{}");
            if *header != "none" {
                request = request.header(*header, value);
            }
            let response = request.send().await.unwrap();
            assert_invalid_access_token(response).await;
        }
    }
    let stats = sandbox.stats();
    assert_eq!(stats.unauthorized, (REST_PATHS.len() * credentials.len()) as u64);
    assert_eq!(stats.contacts_created + stats.tags_created, 0);
}

#[tokio::test]
async fn unknown_paths_answer_404_once_authenticated() {
    let sandbox = sandbox().await;
    let v1 = rest(&sandbox, Method::GET, "/v1/no/such/path").send().await.unwrap();
    assert_eq!(v1.status(), StatusCode::NOT_FOUND);
    assert!(json_of(v1).await["message"].is_string());
    let v2 = rest(&sandbox, Method::GET, "/v2/nothing").send().await.unwrap();
    assert_eq!(v2.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(v2).await["code"], 404);
}

#[tokio::test]
async fn api_keys_work_in_both_header_styles() {
    let sandbox = sandbox().await;
    let header = rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap();
    assert_eq!(header.status(), StatusCode::OK);
    assert_eq!(get_bearer(&sandbox, "/v2/tags", API_KEY).await.status(), StatusCode::OK);
    let lowercase_scheme = client()
        .get(format!("{}/v2/tags", sandbox.api_url()))
        .header("Authorization", format!("bearer {API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lowercase_scheme.status(), StatusCode::OK);
    let auth: Vec<AuthKind> = sandbox.stats().calls.iter().map(|c| c.auth).collect();
    assert_eq!(auth, [AuthKind::ApiKey, AuthKind::Bearer, AuthKind::Bearer]);
}

#[tokio::test]
async fn the_call_log_records_method_path_auth_and_status() {
    let sandbox = sandbox().await;
    rest(&sandbox, Method::GET, "/v1/tags?name=Secret")
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{}/v1/tags", sandbox.api_url()))
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{}/_sandbox/stats", sandbox.base_url()))
        .send()
        .await
        .unwrap();
    let stats = sandbox.stats();
    assert_eq!(
        stats.calls,
        [
            CallRecord {
                method: "GET".into(),
                path: "/crm/rest/v1/tags".into(),
                auth: AuthKind::ApiKey,
                status: 200
            },
            CallRecord {
                method: "GET".into(),
                path: "/crm/rest/v1/tags".into(),
                auth: AuthKind::None,
                status: 401
            },
        ],
        "query strings and control calls are not logged"
    );
    assert_eq!(stats.calls_to("GET", "/crm/rest/v1/tags"), 2);
    sandbox.reset_stats();
    assert_eq!(sandbox.stats(), Stats::default());
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn assert_throttled(response: reqwest::Response, retry_after: Option<&str>) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), retry_after);
    for name in ["limit", "time-unit", "interval", "available", "used", "expiry-time"] {
        assert!(
            header(&response, &format!("x-keap-product-quota-{name}")).is_some(),
            "{name}"
        );
    }
    let expiry: u128 = header(&response, "x-keap-product-quota-expiry-time")
        .unwrap()
        .parse()
        .unwrap();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    assert!(
        expiry > now_ms - 1000,
        "expiry-time is epoch milliseconds in the future"
    );
    assert_eq!(
        json_of(response).await,
        json!({"code": "429", "message": "Quota Exceeded", "status": "Request Throttled", "details": null})
    );
}

#[tokio::test]
async fn throttle_fault_answers_429_with_and_without_retry_after() {
    let sandbox = sandbox().await;
    sandbox.faults().throttle_next(2, Some(7));
    // An unauthenticated call is refused before quotas and does not use up the fault.
    let anonymous = client()
        .get(format!("{}/v1/tags", sandbox.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        assert_throttled(rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap(), Some("7")).await;
    }
    assert_eq!(
        rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap().status(),
        StatusCode::OK
    );
    sandbox.faults().throttle_next(1, None);
    assert_throttled(rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap(), None).await;
    assert_eq!(sandbox.stats().throttled, 3);
}

#[tokio::test]
async fn rate_limit_is_per_credential_with_quota_headers() {
    let sandbox = start(SandboxConfig {
        api_keys: vec![API_KEY.to_owned(), "KeapAK-second".to_owned()],
        rate_limit: Some(RateLimit {
            per_minute: 3,
            ..RateLimit::OFF
        }),
        ..SandboxConfig::default()
    })
    .await;
    for expected_available in ["2", "1", "0"] {
        let response = rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "x-keap-product-quota-available"),
            Some(expected_available)
        );
        assert_eq!(header(&response, "x-keap-product-quota-limit"), Some("3"));
        assert_eq!(header(&response, "x-keap-product-quota-time-unit"), Some("minute"));
    }
    let refused = rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap();
    let retry_after: u64 = header(&refused, "retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_throttled(refused, Some(retry_after.to_string().as_str())).await;
    let other_key = client()
        .get(format!("{}/v1/tags", sandbox.api_url()))
        .header("X-Keap-API-Key", "KeapAK-second")
        .send()
        .await
        .unwrap();
    assert_eq!(other_key.status(), StatusCode::OK);
    assert_eq!(sandbox.stats().throttled, 1);
}

#[tokio::test]
async fn server_error_fault_hits_rest_and_token_without_side_effects() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    sandbox.faults().set_server_error_rate(1.0);
    for _ in 0..4 {
        let response = rest(&sandbox, Method::POST, "/v1/tags")
            .json(&json!({"name": "X"}))
            .send()
            .await
            .unwrap();
        assert!(matches!(response.status().as_u16(), 502 | 503), "{}", response.status());
        assert!(json_of(response).await["fault"]["faultstring"].is_string());
    }
    let token = refresh(&sandbox, &pair.refresh_token).await;
    assert!(matches!(token.status().as_u16(), 502 | 503));
    sandbox.faults().set_server_error_rate(0.0);
    assert_eq!(sandbox.tag_by_name("X"), None, "nothing was created");
    refreshed_pair(&sandbox, &pair.refresh_token).await;
    let stats = sandbox.stats();
    assert_eq!(stats.server_errors, 5);
    assert_eq!(stats.refreshes_served, 1);
}

#[tokio::test]
async fn latency_faults_delay_rest_and_token_separately() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let tags = format!("{}/v1/tags", sandbox.api_url());

    sandbox.faults().set_latency(Duration::from_secs(30));
    let error = impatient
        .get(&tags)
        .header("X-Keap-API-Key", API_KEY)
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout());
    let token = refresh_with(&patient, &sandbox, &pair.refresh_token).await.unwrap();
    assert_eq!(token.status(), StatusCode::OK, "REST latency does not touch /token");
    let pair: TokenResponse = token.json().await.unwrap();

    sandbox.faults().clear();
    sandbox.faults().set_token_latency(Duration::from_secs(30));
    assert!(
        refresh_with(&impatient, &sandbox, &pair.refresh_token)
            .await
            .unwrap_err()
            .is_timeout()
    );
    let ok = patient
        .get(&tags)
        .header("X-Keap-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK, "token latency does not touch REST");
}

#[tokio::test]
async fn a_dropped_refresh_response_still_rotates_the_token() {
    let sandbox = sandbox().await;
    let pair = sandbox.mint_grant(CLIENT_ID);
    sandbox.faults().drop_next_refresh_responses(1);
    let lost = refresh_with(&client(), &sandbox, &pair.refresh_token)
        .await
        .unwrap_err();
    assert!(!lost.is_timeout(), "the connection is closed, not left hanging: {lost}");
    assert_invalid_grant(refresh(&sandbox, &pair.refresh_token).await).await;
    let stats = sandbox.stats();
    assert_eq!(stats.refreshes_served, 1);
    assert_eq!(stats.dropped_responses, 1);
    assert_eq!(stats.refresh_failure("invalid_grant_used"), 1);
    assert_eq!(stats.calls[0].status, 0, "logged as no response");
    // The fault is used up: the next refresh is answered.
    let fresh = sandbox.mint_grant(CLIENT_ID);
    refreshed_pair(&sandbox, &fresh.refresh_token).await;
}

#[tokio::test]
async fn control_endpoints_drive_a_sandbox_from_another_process() {
    let sandbox = sandbox().await;
    let control = |path: &str| format!("{}/_sandbox/{path}", sandbox.base_url());
    let http = client();

    let pair: TokenResponse = http
        .post(control("grant"))
        .json(&json!({"client_id": CLIENT_ID}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        get_bearer(&sandbox, "/v1/tags", &pair.access_token).await.status(),
        StatusCode::OK
    );
    let expire = http.post(control("expire-access-tokens")).send().await.unwrap();
    assert_eq!(expire.status(), StatusCode::OK);
    assert_invalid_access_token(get_bearer(&sandbox, "/v1/tags", &pair.access_token).await).await;

    let faults = http
        .post(control("faults"))
        .json(&json!({"throttle_next": 1, "retry_after": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(faults.status(), StatusCode::OK);
    assert_throttled(rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap(), Some("3")).await;
    let unknown_knob = http
        .post(control("faults"))
        .json(&json!({"latency": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_knob.status(), StatusCode::BAD_REQUEST);
    http.post(control("faults"))
        .json(&json!({"clear": true, "server_error_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert!(
        rest(&sandbox, Method::GET, "/v1/tags")
            .send()
            .await
            .unwrap()
            .status()
            .is_server_error()
    );
    http.post(control("faults"))
        .json(&json!({"clear": true}))
        .send()
        .await
        .unwrap();

    rest(&sandbox, Method::PUT, "/v1/contacts")
        .json(&json!({"duplicate_option": "Email", "given_name": "Ann",
            "email_addresses": [{"email": "ann@example.com", "field": "EMAIL1"}]}))
        .send()
        .await
        .unwrap();
    let contact = json_of(
        http.get(control("contacts"))
            .query(&[("email", "ann@example.com")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(contact["given_name"], "Ann");
    let missing = http
        .get(control("contacts"))
        .query(&[("email", "nobody@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let unsubscribed = http
        .post(control("unsubscribe"))
        .json(&json!({"email": "ann@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unsubscribed.status(), StatusCode::OK);
    assert_eq!(
        sandbox.contact_by_email("ann@example.com").unwrap().email_status,
        "ListUnsubscribe"
    );

    rest(&sandbox, Method::POST, "/v1/tags")
        .json(&json!({"name": "Welcome"}))
        .send()
        .await
        .unwrap();
    let tag = json_of(
        http.get(control("tags"))
            .query(&[("name", "Welcome")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tag["id"], sandbox.tag_by_name("Welcome").unwrap());

    let stats: Stats = http.get(control("stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats, sandbox.stats());
    assert_eq!(
        (
            stats.grants_minted,
            stats.contacts_created,
            stats.tags_created,
            stats.throttled
        ),
        (1, 1, 1, 1)
    );
    http.post(control("reset-stats")).send().await.unwrap();
    assert_eq!(sandbox.stats(), Stats::default());

    http.post(control("auto-approve"))
        .json(&json!({"on": true}))
        .send()
        .await
        .unwrap();
    let code = client()
        .get(sandbox.authorize_url())
        .query(&[
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("response_type", "code"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(code.status(), StatusCode::FOUND);
    let code = query_param(&location(&code), "code").unwrap();
    http.post(control("advance-clock"))
        .json(&json!({"secs": 61}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        exchange_code(&sandbox, &code, REDIRECT_URI).await.status(),
        StatusCode::BAD_REQUEST
    );
    let refresh_pair = sandbox.mint_grant(CLIENT_ID);
    http.post(control("expire-refresh-tokens")).send().await.unwrap();
    assert_invalid_grant(refresh(&sandbox, &refresh_pair.refresh_token).await).await;
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sandbox = sandbox().await;
    let url = format!("{}/v1/tags", sandbox.api_url());
    sandbox.shutdown().await;
    let error = client()
        .get(&url)
        .header("X-Keap-API-Key", API_KEY)
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error}");
}

#[tokio::test]
async fn spike_minute_and_day_windows_are_reported_and_enforced() {
    let sandbox = start(SandboxConfig {
        rate_limit: Some(RateLimit {
            per_second: 2,
            per_minute: 50,
            per_day: 1000,
            ..RateLimit::OFF
        }),
        ..SandboxConfig::default()
    })
    .await;
    let first = rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-keap-product-throttle-time-unit"), Some("second"));
    assert_eq!(header(&first, "x-keap-product-throttle-limit"), Some("2"));
    assert_eq!(header(&first, "x-keap-product-throttle-available"), Some("1"));
    assert_eq!(header(&first, "x-keap-product-quota-time-unit"), Some("minute|day"));
    assert_eq!(header(&first, "x-keap-product-quota-limit"), Some("50|1000"));
    assert_eq!(header(&first, "x-keap-product-quota-available"), Some("49|999"));
    assert_eq!(header(&first, "x-keap-product-quota-used"), Some("1|1"));
    let expiries: Vec<u128> = header(&first, "x-keap-product-quota-expiry-time")
        .unwrap()
        .split('|')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(expiries.len(), 2);
    assert_eq!(
        rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap().status(),
        StatusCode::OK
    );
    let refused = rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap();
    assert_eq!(header(&refused, "x-keap-product-throttle-available"), Some("0"));
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-keap-product-quota-available"), Some("48|998"));
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let later = rest(&sandbox, Method::GET, "/v1/tags").send().await.unwrap();
    assert_eq!(later.status(), StatusCode::OK);
    assert_eq!(header(&later, "x-keap-product-quota-available"), Some("47|997"));
}
