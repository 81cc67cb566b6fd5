//! Hostile input to the connection routes, over HTTP through the API Gateway stand-in to the
//! real oauth handler, the real code exchange and token store, and a Keap sandbox that
//! auto-approves. The oauth function's own tests cover forged, expired, missing, foreign and
//! reused states and the other-account refusal; this covers the rest: spliced and truncated
//! states, a forged state smuggled before a genuine one, racing callbacks with one state, hostile Basic
//! credentials, and the browser-binding cookie over real HTTP (set by `/oauth/start`, required and
//! cleared by the callback; hostile `Cookie` headers).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keap_relay::ExposeSecret;
use relay_tests::relay_server::{self, ADMIN_PASSWORD, RelayOptions, RelayServer};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `(status, body)`, asserting no 5xx.
async fn get(url: &str, authorization: Option<&[u8]>) -> (u16, String) {
    get_with_cookie(url, authorization, None).await
}

/// `(status, body)` of a GET with an optional `Cookie` header, asserting no 5xx.
async fn get_with_cookie(url: &str, authorization: Option<&[u8]>, cookie: Option<&[u8]>) -> (u16, String) {
    let mut request = client().get(url);
    if let Some(value) = authorization {
        request = request.header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    if let Some(value) = cookie {
        request = request.header("cookie", reqwest::header::HeaderValue::from_bytes(value).unwrap());
    }
    let response = request.send().await.expect("the relay answers");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert!(status < 500, "{status} for {url}: {body}");
    (status, body)
}

fn basic(password: &str) -> Vec<u8> {
    format!("Basic {}", STANDARD.encode(format!("admin:{password}"))).into_bytes()
}

fn page_code(body: &str) -> &str {
    body.rsplit_once("keap-relay: ")
        .map(|(_, rest)| rest.split('<').next().unwrap_or_default())
        .unwrap_or("<none>")
}

/// One sign-in as the browser sees it: the query Keap sends it back with, and the cookie
/// (`name=value`) `/oauth/start` set for the callback.
struct SignIn {
    query: String,
    cookie: String,
}

/// `/oauth/start` as the administrator, then Keap's (auto-approving) authorize page.
async fn authorize(relay: &RelayServer, start_query: &str) -> SignIn {
    let start = client()
        .get(format!("{}/oauth/start?{start_query}", relay.url()))
        .header("authorization", basic(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let set_cookies: Vec<&str> = start
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set_cookies.len(), 1, "{set_cookies:?}");
    let cookie = set_cookies[0].split(';').next().unwrap().to_owned();
    let keap = client()
        .get(start.headers()["location"].to_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(keap.status(), 302, "the sandbox approves");
    let back = url::Url::parse(keap.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(back.path(), relay_server::REDIRECT_PATH);
    SignIn {
        query: back.query().unwrap_or_default().to_owned(),
        cookie,
    }
}

fn param(query: &str, name: &str) -> String {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

fn with_state(query: &str, state: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        out.append_pair(&k, if k == "state" { state } else { &v });
    }
    out.finish()
}

/// The callback with `query`, from the browser holding `cookie` (`name=value`).
async fn callback(relay: &RelayServer, query: &str, cookie: &str) -> (u16, String) {
    get_with_cookie(
        &format!("{}/oauth/callback?{query}", relay.url()),
        None,
        Some(cookie.as_bytes()),
    )
    .await
}

async fn not_connected() -> RelayServer {
    relay_server::start(RelayOptions {
        connected: false,
        ..RelayOptions::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn spliced_truncated_and_repeated_states_are_refused_and_no_code_is_spent() {
    let relay = not_connected().await;
    let SignIn { query: first, cookie } = authorize(&relay, "").await;
    let second = authorize(&relay, "switch=1").await.query;
    let (payload, _) = param(&first, "state")
        .split_once('.')
        .map(|(p, s)| (p.to_owned(), s.to_owned()))
        .unwrap();
    let (_, other_signature) = param(&second, "state")
        .split_once('.')
        .map(|(p, s)| (p.to_owned(), s.to_owned()))
        .unwrap();
    let state = param(&first, "state");
    // The switch=1 state's payload relabelled with this payload's fields but the key id kept:
    // only the MAC decides, the key id merely picks the message.
    let mut fields: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&payload).unwrap()).unwrap();
    fields["e"] = (fields["e"].as_u64().unwrap() + 3_600_000).into();
    let extended = format!("{}.{other_signature}", URL_SAFE_NO_PAD.encode(fields.to_string()));
    let cases = [
        (
            "another genuine state's MAC",
            format!("{payload}.{other_signature}"),
            &["state_bad_signature"][..],
        ),
        ("expiry pushed an hour", extended, &["state_bad_signature"]),
        // Cut inside a Base64 group the rest may not even decode: either refusal is right.
        (
            "MAC cut short",
            state[..state.len() - 4].to_owned(),
            &["state_bad_signature", "state_malformed"],
        ),
        ("no MAC", format!("{payload}."), &["state_bad_signature"]),
        (
            "two states joined as API Gateway joins a repeated parameter",
            format!("{state},{state}"),
            &["state_malformed"],
        ),
        (
            "over 1024 characters",
            format!("{state}{}", "A".repeat(1024)),
            &["state_malformed"],
        ),
    ];
    for (what, state, codes) in cases {
        let (status, body) = callback(&relay, &with_state(&first, &state), &cookie).await;
        assert_eq!(status, 400, "{what}");
        assert!(codes.contains(&page_code(&body)), "{what}: {}", page_code(&body));
    }
    // A repeated parameter resolves to its first value: a forged state first and the genuine
    // one after it is still refused.
    let smuggled = format!(
        "{}&state={state}",
        with_state(&first, &format!("{payload}.{other_signature}"))
    );
    let (status, body) = callback(&relay, &smuggled, &cookie).await;
    assert_eq!(
        (status, page_code(&body)),
        (400, "state_bad_signature"),
        "forged state first, genuine second"
    );
    assert_eq!(
        relay.sandbox.stats().code_exchanges,
        0,
        "no code spent on a refused state"
    );
    assert!(relay.oauth_app.connection.status().await.is_ok_and(|s| !s.connected));
}

#[tokio::test]
async fn callbacks_racing_with_one_state_connect_at_most_once() {
    let relay = not_connected().await;
    // Two sign-ins' answers, then the first state used with both codes at the same moment.
    let SignIn { query: first, cookie } = authorize(&relay, "").await;
    let second = authorize(&relay, "").await.query;
    let state = param(&first, "state");
    let raced = with_state(&second, &state);
    let (a, b) = tokio::join!(callback(&relay, &first, &cookie), callback(&relay, &raced, &cookie));
    let connected = [a.0, b.0].iter().filter(|&&s| s == 200).count();
    let generation = relay
        .oauth_app
        .connection
        .status()
        .await
        .unwrap()
        .generation
        .unwrap_or(0);
    // Whatever the interleaving, the store holds one working pair; a second success is only
    // possible when both exchanges finished before either stored (see docs/security.md).
    assert!(connected >= 1, "{a:?} {b:?}");
    assert_eq!(generation as usize, connected, "each success stored exactly one pair");
    let (status, _) = callback(&relay, &raced, &cookie).await;
    assert_eq!(status, 400, "afterwards the state is spent");
}

#[tokio::test]
async fn hostile_basic_credentials_are_401_on_both_admin_routes() {
    let relay = relay_server::start(RelayOptions::default()).await.unwrap();
    let long_password = basic(&"p".repeat(16 * 1024));
    let not_utf8 = format!("Basic {}", STANDARD.encode(b"admin:\xff\xfe")).into_bytes();
    let cases: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("none", None),
        ("16 KiB password", Some(long_password)),
        ("decoded bytes not UTF-8", Some(not_utf8)),
        ("not base64", Some(b"Basic !!!!".to_vec())),
        (
            "no colon",
            Some(format!("Basic {}", STANDARD.encode(ADMIN_PASSWORD)).into_bytes()),
        ),
        (
            "password as user name",
            Some(format!("Basic {}", STANDARD.encode(format!("{ADMIN_PASSWORD}:"))).into_bytes()),
        ),
        (
            "password with a trailing NUL",
            Some(basic(&format!("{ADMIN_PASSWORD}\0"))),
        ),
        (
            "password prefix",
            Some(basic(&ADMIN_PASSWORD[..ADMIN_PASSWORD.len() - 1])),
        ),
        ("bearer scheme", Some(format!("Bearer {ADMIN_PASSWORD}").into_bytes())),
        ("non-ASCII header bytes", Some(b"Basic \xe9\xe9".to_vec())),
    ];
    for route in ["/oauth/start", "/status"] {
        for (what, authorization) in &cases {
            let response = client()
                .get(format!("{}{route}", relay.url()))
                .headers(match authorization {
                    Some(value) => [(
                        reqwest::header::AUTHORIZATION,
                        reqwest::header::HeaderValue::from_bytes(value).unwrap(),
                    )]
                    .into_iter()
                    .collect(),
                    None => Default::default(),
                })
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{route}: {what}");
            assert!(
                response.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic"),
                "{route}: {what}"
            );
            let body = response.text().await.unwrap();
            assert!(!body.contains(ADMIN_PASSWORD), "{route}: {what}");
        }
    }
    // And the right password still works on both.
    assert_eq!(
        get(&format!("{}/status", relay.url()), Some(&basic(ADMIN_PASSWORD)))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&format!("{}/oauth/start", relay.url()), Some(&basic(ADMIN_PASSWORD)))
            .await
            .0,
        302
    );
}

#[tokio::test]
async fn status_and_pages_never_carry_a_stored_token() {
    let relay = relay_server::start(RelayOptions::default()).await.unwrap();
    let stored = relay.store.peek_current(relay_server::TOKEN_SECRET_ID).unwrap();
    let state: serde_json::Value = serde_json::from_str(stored.value.expose_secret()).unwrap();
    let tokens = [
        state["access_token"].as_str().unwrap().to_owned(),
        state["refresh_token"].as_str().unwrap().to_owned(),
    ];
    let (_, status) = get(&format!("{}/status", relay.url()), Some(&basic(ADMIN_PASSWORD))).await;
    let (_, start) = get(&format!("{}/oauth/start", relay.url()), Some(&basic(ADMIN_PASSWORD))).await;
    let sign_in = authorize(&relay, "").await;
    let (_, page) = callback(&relay, &sign_in.query, &sign_in.cookie).await;
    for body in [&status, &start, &page] {
        for token in &tokens {
            assert!(!body.contains(token.as_str()), "a token in {body}");
        }
        assert!(!body.contains(keap_sandbox::DEFAULT_CLIENT_SECRET) && !body.contains(ADMIN_PASSWORD));
    }
}

#[tokio::test]
async fn the_callback_needs_the_cookie_of_the_browser_that_started_the_sign_in() {
    let relay = not_connected().await;
    let SignIn { query, cookie } = authorize(&relay, "").await;
    let binding = cookie.split_once('=').unwrap().1.to_owned();
    let other = authorize(&relay, "").await.cookie;
    let long = format!("keap_relay_oauth={}", "A".repeat(8 * 1024));
    type Case<'a> = (&'a str, Option<Vec<u8>>, (u16, &'a str));
    let cases: Vec<Case> = vec![
        ("no cookie", None, (400, "state_cookie_missing")),
        (
            "an empty cookie",
            Some(b"keap_relay_oauth=".to_vec()),
            (400, "state_cookie_missing"),
        ),
        (
            "the value under another name",
            Some(format!("keap_relay_oauthx={binding}").into_bytes()),
            (400, "state_cookie_missing"),
        ),
        (
            "another sign-in's cookie",
            Some(other.into_bytes()),
            (403, "state_cookie_mismatch"),
        ),
        (
            "the value cut short",
            Some(cookie.as_bytes()[..cookie.len() - 1].to_vec()),
            (403, "state_cookie_mismatch"),
        ),
        (
            "8 KiB of value",
            Some(long.into_bytes()),
            (403, "state_cookie_mismatch"),
        ),
        (
            "non-ASCII bytes",
            Some(b"keap_relay_oauth=\xe9\xe9".to_vec()),
            (400, "state_cookie_missing"),
        ),
    ];
    for (what, cookie, expected) in cases {
        let (status, body) = get_with_cookie(
            &format!("{}/oauth/callback?{query}", relay.url()),
            None,
            cookie.as_deref(),
        )
        .await;
        assert_eq!((status, page_code(&body)), expected, "{what}");
    }
    assert_eq!(
        relay.sandbox.stats().code_exchanges,
        0,
        "no code spent without the cookie"
    );

    // The browser that started it: connected, and the cookie cleared.
    let response = client()
        .get(format!("{}/oauth/callback?{query}", relay.url()))
        .header("cookie", format!("unrelated=1; {cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cleared = response.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("keap_relay_oauth=; Max-Age=0; Path=/oauth/callback"),
        "{cleared}"
    );
    assert_eq!(relay.sandbox.stats().code_exchanges, 1);
}
