//! Browser login through Check answers, against the in-process mock IdP: redirect with state/nonce/PKCE, the
//! callback (state, replay, PKCE, ID token), session cookies (tampering, chunking, rotation, idle and absolute
//! expiry), refresh, API vs browser answers, logout, open redirects.

use serde_json::json;

use crate::support::*;

const APP: &str = "app.example.com";

pub(crate) struct Browser {
    pub(crate) jar: Vec<(String, String)>,
}

impl Browser {
    pub(crate) fn new() -> Self {
        Browser { jar: Vec::new() }
    }

    pub(crate) fn absorb(&mut self, a: &Answer) {
        for name in a.cookies_cleared() {
            self.jar.retain(|(n, _)| *n != name);
        }
        for (n, v) in a.cookies_set() {
            self.jar.retain(|(k, _)| *k != n);
            self.jar.push((n, v));
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) fn req(&self, path: &str, policy: &str) -> Req {
        let mut r = req(path)
            .host(APP)
            .policy(policy)
            .header("accept", "text/html,application/xhtml+xml");
        if !self.jar.is_empty() {
            r = r.header("cookie", &format!("{}; other=keep", self.cookie_header()));
        }
        r
    }

    fn has(&self, name: &str) -> bool {
        self.jar
            .iter()
            .any(|(n, _)| n == name || n.starts_with(&format!("{name}_")))
    }
}

/// Logs `user` in on `path` (policy `policy`); returns the callback answer.
pub(crate) async fn login(
    server: &TestServer,
    idp: &MockIdp,
    b: &mut Browser,
    path: &str,
    policy: &str,
    user: &str,
) -> Answer {
    let start = ask(server, b.req(path, policy)).await;
    assert_eq!(start.status, 302, "{start:?}");
    b.absorb(&start);
    let location = start.header("location").unwrap().to_string();
    let query = idp.login(&location, user);
    // the callback is answered by whichever policy Envoy routes it to; here the one that started the login, at
    // the path of the redirect_uri it sent
    let redirect_uri = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let callback = url::Url::parse(&redirect_uri).unwrap().path().to_string();
    let cb = ask(server, b.req(&format!("{callback}?{query}"), policy)).await;
    b.absorb(&cb);
    cb
}

#[tokio::test]
async fn redirect_to_login_carries_state_nonce_pkce_and_a_login_cookie() {
    let (idp, server) = world().await;
    let a = ask(&server, Browser::new().req("/app/page?x=1", "login")).await;
    assert_eq!(a.status, 302);
    assert_ne!(a.grpc_code, 0);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let loc = url::Url::parse(a.header("location").unwrap()).unwrap();
    assert_eq!(
        format!("{}{}", loc.origin().ascii_serialization(), loc.path()),
        format!("{}/v1/authorize", idp.issuer)
    );
    let q: std::collections::HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "oidc-authz");
    assert_eq!(q["redirect_uri"], "https://app.example.com/oauth2/callback");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "openid profile offline_access");
    for k in ["state", "nonce", "code_challenge"] {
        assert!(q[k].len() >= 43, "{k} too short");
    }
    let set = a
        .headers
        .iter()
        .find(|(k, _, _)| k == "set-cookie")
        .unwrap()
        .1
        .clone();
    assert!(set.starts_with("oidc_authz_login="), "{set}");
    for attr in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Secure",
        "Max-Age=300",
    ] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    // a browser without cookies is not sent deletions of cookies it never had
    let set_cookies = a
        .headers
        .iter()
        .filter(|(k, _, _)| k == "set-cookie")
        .count();
    assert_eq!(set_cookies, 1, "{a:?}");
    // the state and nonce are not readable in the cookie
    assert!(!set.contains(&q["state"]) && !set.contains(&q["nonce"]));
}

#[tokio::test]
async fn full_login_then_session_with_headers_and_cookie_stripped() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    let cb = login(&server, &idp, &mut b, "/app/page?x=1", "login", "alice").await;
    assert_eq!(cb.status, 302, "{cb:?}");
    assert_eq!(cb.header("location"), Some("/app/page?x=1"));
    assert!(
        cb.cookies_cleared()
            .contains(&"oidc_authz_login".to_string())
    );
    assert!(b.has("oidc_authz_session") && !b.has("oidc_authz_login"));
    let set = cb
        .headers
        .iter()
        .find(|(k, v, _)| k == "set-cookie" && v.starts_with("oidc_authz_session="))
        .unwrap();
    assert!(
        set.1.contains("Secure") && set.1.contains("HttpOnly") && set.1.contains("SameSite=Lax")
    );

    let a = ask(&server, b.req("/app/page?x=1", "login")).await;
    a.assert_allow();
    assert_eq!(a.header("x-user"), Some("alice"));
    assert_eq!(
        a.header("x-email"),
        Some("alice@example.com"),
        "from the ID token when the access token lacks it"
    );
    assert!(a.header("authorization").unwrap().starts_with("Bearer ey"));
    assert!(a.header("x-id-token").unwrap().starts_with("ey"));
    assert_eq!(
        a.header("cookie"),
        Some("other=keep"),
        "the session never goes upstream"
    );
    assert_eq!(
        a.metadata.get("auth_method").map(String::as_str),
        Some("session")
    );
    assert!(
        a.response_headers.is_empty(),
        "no cookie rewrite on a plain request"
    );
}

#[tokio::test]
async fn group_rule_member_passes_non_member_gets_403() {
    let (idp, server) = world().await;
    let mut alice = Browser::new();
    login(&server, &idp, &mut alice, "/group/x", "group", "alice").await;
    ask(&server, alice.req("/group/x", "group"))
        .await
        .assert_allow();
    let mut bob = Browser::new();
    login(&server, &idp, &mut bob, "/group/x", "group", "bob").await;
    ask(&server, bob.req("/group/x", "group"))
        .await
        .assert_deny(403, "insufficient_scope");
}

#[tokio::test]
async fn api_requests_get_401_with_login_uri_not_a_redirect() {
    let (_idp, server) = world().await;
    for r in [
        req("/app/data")
            .host(APP)
            .policy("login")
            .header("accept", "application/json"),
        req("/app/data")
            .host(APP)
            .policy("login")
            .header("accept", "text/html")
            .header("x-requested-with", "XMLHttpRequest"),
        req("/app/data").host(APP).policy("login"),
    ] {
        let a = ask(&server, r).await;
        a.assert_deny(401, "invalid_token");
        let w = a.header("www-authenticate").unwrap();
        assert!(
            w.contains("login_uri=\"https://app.example.com/app/data\""),
            "{w}"
        );
    }
}

#[tokio::test]
async fn bearer_wins_over_session() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let token = idp.mint(json!({"sub": "service-x"}));
    let a = ask(&server, b.req("/app", "login").bearer(&token)).await;
    assert_eq!((a.status, a.header("x-user")), (200, Some("service-x")));
    assert_eq!(
        a.metadata.get("auth_method").map(String::as_str),
        Some("bearer")
    );
}

#[tokio::test]
async fn state_mismatch_missing_cookie_and_replay_are_refused() {
    let (idp, server) = world().await;
    // state mismatch
    let mut b = Browser::new();
    let start = ask(&server, b.req("/app", "login")).await;
    b.absorb(&start);
    let q = idp.login(start.header("location").unwrap(), "alice");
    let forged = q.split("&state=").next().unwrap().to_string() + "&state=forged";
    let a = ask(
        &server,
        b.req(&format!("/oauth2/callback?{forged}"), "login"),
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    assert!(a.body.contains("state"), "{}", a.body);
    // no login cookie at all
    let a = ask(
        &server,
        Browser::new().req(&format!("/oauth2/callback?{q}"), "login"),
    )
    .await;
    assert_eq!(a.status, 401);
    // the real one works once...
    let ok = ask(&server, b.req(&format!("/oauth2/callback?{q}"), "login")).await;
    assert_eq!(ok.status, 302, "{ok:?}");
    // ...and a replay of the same callback is refused (the IdP will not take the code twice)
    let replay = ask(&server, b.req(&format!("/oauth2/callback?{q}"), "login")).await;
    assert_eq!(replay.status, 401, "{replay:?}");
}

#[tokio::test]
async fn provider_error_callback_is_a_clear_401_page() {
    let (_idp, server) = world().await;
    let a = ask(
        &server,
        Browser::new().req(
            "/oauth2/callback?error=access_denied&error_description=%3Cb%3Enope&state=x",
            "login",
        ),
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(
        a.body.contains("access_denied") && !a.body.contains("<b>nope"),
        "{}",
        a.body
    );
    assert_eq!(a.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn wrong_pkce_verifier_fails_the_exchange() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    let start = ask(&server, b.req("/app", "login")).await;
    b.absorb(&start);
    let q = idp.login(start.header("location").unwrap(), "alice");
    // the IdP was told another challenge: our (correct) verifier no longer matches it
    for g in idp.state.codes.lock().unwrap().values_mut() {
        g.challenge = "not-the-challenge".into();
    }
    let a = ask(&server, b.req(&format!("/oauth2/callback?{q}"), "login")).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert!(
        a.body
            .contains("the identity provider refused the authorization code"),
        "{a:?}"
    );
}

#[tokio::test]
async fn any_flipped_bit_in_the_session_cookie_means_no_session() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let (name, value) = b
        .jar
        .iter()
        .find(|(n, _)| n.starts_with("oidc_authz_session"))
        .unwrap()
        .clone();
    for i in [0, value.len() / 2, value.len() - 1] {
        let mut bytes = value.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let mut evil = Browser::new();
        evil.jar
            .push((name.clone(), String::from_utf8(bytes).unwrap()));
        let a = ask(&server, evil.req("/app", "login")).await;
        assert_eq!(a.status, 302, "a tampered cookie must not be a session");
        assert!(
            a.cookies_cleared()
                .contains(&"oidc_authz_session".to_string())
        );
    }
}

#[tokio::test]
async fn big_sessions_are_chunked_and_reassembled() {
    let (idp, server) = world().await;
    *idp.state.user_extra.lock().unwrap() = json!({"blob": "x".repeat(6000)});
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let names: Vec<&str> = b.jar.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"oidc_authz_session_0") && names.contains(&"oidc_authz_session_1"),
        "{names:?}"
    );
    assert!(b.jar.iter().all(|(_, v)| v.len() <= 4000));
    let a = ask(&server, b.req("/app", "login")).await;
    assert_eq!((a.status, a.header("x-user")), (200, Some("alice")));
    assert_eq!(
        a.header("cookie"),
        Some("other=keep"),
        "every chunk is stripped"
    );
}

#[tokio::test]
async fn session_secret_rotation_keeps_old_sessions() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    // `group` seals with the old secret only; `login` lists [new, old]: new seals, both open
    login(&server, &idp, &mut b, "/group/x", "group", "alice").await;
    assert_eq!(
        ask(&server, b.req("/app", "login")).await.status,
        200,
        "old secret still opens"
    );
    let mut b2 = Browser::new();
    login(&server, &idp, &mut b2, "/app", "login", "alice").await;
    assert_eq!(
        ask(&server, b2.req("/group/x", "group")).await.status,
        302,
        "the old-only policy cannot open new-key sessions"
    );
}

#[tokio::test]
async fn idle_and_absolute_timeouts_end_the_session() {
    let idp = MockIdp::start().await;
    idp.state
        .expires_in
        .store(100_000, std::sync::atomic::Ordering::SeqCst);
    let (server, clock) = serve(&idp).ready_with_clock().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    // used every 500 s: idle (600) never hits, last-seen is rewritten
    for i in 0..3 {
        clock.advance(500);
        idp.advance(500);
        let a = ask(&server, b.req("/app", "login")).await;
        assert_eq!(a.status, 200, "round {i}: {a:?}");
        assert!(
            !a.response_headers.is_empty(),
            "last-seen update sets the cookie again"
        );
        b.absorb(&a);
    }
    // absolute timeout (3600) passes
    clock.advance(2200);
    idp.advance(2200);
    assert_eq!(ask(&server, b.req("/app", "login")).await.status, 302);
    // idle timeout
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    clock.advance(601);
    assert_eq!(ask(&server, b.req("/app", "login")).await.status, 302);
}

#[tokio::test]
async fn expired_access_token_is_refreshed_and_failed_refresh_ends_the_session() {
    let idp = MockIdp::start().await;
    idp.state
        .expires_in
        .store(60, std::sync::atomic::Ordering::SeqCst);
    let (server, clock) = serve(&idp).ready_with_clock().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let first = ask(&server, b.req("/app", "login")).await;
    let first_at = first.header("authorization").unwrap().to_string();
    clock.advance(61);
    idp.advance(61);
    let hits = idp.token_hits();
    let refreshed = ask(&server, b.req("/app", "login")).await;
    refreshed.assert_allow();
    assert_eq!(idp.token_hits(), hits + 1, "one refresh call");
    assert_ne!(
        refreshed.header("authorization").unwrap(),
        first_at,
        "a new access token goes upstream"
    );
    assert!(
        refreshed
            .response_headers
            .iter()
            .any(|(k, v, _)| k == "set-cookie" && v.starts_with("oidc_authz_session"))
    );
    b.absorb(&refreshed);
    ask(&server, b.req("/app", "login")).await.assert_allow();
    // refresh fails: browser -> login again, API -> 401; the cookie is cleared
    idp.revoke_refresh_tokens();
    clock.advance(61);
    idp.advance(61);
    let a = ask(&server, b.req("/app", "login")).await;
    assert_eq!(a.status, 302);
    assert!(
        a.cookies_cleared()
            .contains(&"oidc_authz_session".to_string())
    );
    let api = ask(
        &server,
        b.req("/app", "login")
            .header("x-requested-with", "XMLHttpRequest"),
    )
    .await;
    api.assert_deny(401, "invalid_token");
    // the IdP down during a needed refresh: 503, never an allow
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    clock.advance(61);
    idp.advance(61);
    idp.set_mode(Mode::Down);
    ask(&server, b.req("/app", "login"))
        .await
        .assert_deny(503, "temporarily_unavailable");
}

#[tokio::test]
async fn logout_clears_and_goes_to_end_session_with_id_token_hint() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let a = ask(&server, b.req("/oauth2/logout", "login").method("POST")).await;
    assert_eq!(a.status, 302);
    let loc = url::Url::parse(a.header("location").unwrap()).unwrap();
    assert_eq!(loc.path(), "/oauth2/default/v1/logout");
    let q: std::collections::HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert!(q["id_token_hint"].starts_with("ey"));
    assert_eq!(q["post_logout_redirect_uri"], "https://app.example.com/bye");
    assert!(
        a.cookies_cleared()
            .contains(&"oidc_authz_session".to_string())
    );
    b.absorb(&a);
    assert_eq!(
        ask(&server, b.req("/app", "login")).await.status,
        302,
        "logged out"
    );
    // without a session: straight to the post-logout URI
    let a = ask(
        &server,
        Browser::new().req("/oauth2/logout", "login").method("POST"),
    )
    .await;
    assert_eq!(a.header("location"), Some("https://app.example.com/bye"));
}

#[tokio::test]
async fn return_path_is_never_an_open_redirect() {
    let (idp, server) = world().await;
    for evil in [
        "//evil.example.com/x",
        "/\\evil.example.com",
        "https://evil.example.com/",
    ] {
        let mut b = Browser::new();
        let cb = login(&server, &idp, &mut b, evil, "login", "alice").await;
        let loc = cb.header("location").unwrap();
        assert!(
            loc.starts_with('/') && !loc.starts_with("//") && !loc.contains('\\'),
            "{evil} -> {loc}"
        );
    }
}

#[tokio::test]
async fn callback_from_another_issuer_is_refused() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    let start = ask(&server, b.req("/app", "login")).await;
    b.absorb(&start);
    let q = idp.login(start.header("location").unwrap(), "alice");
    let a = ask(
        &server,
        b.req(
            &format!("/oauth2/callback?{q}&iss=https%3A%2F%2Fevil.example.com"),
            "login",
        ),
    )
    .await;
    assert_eq!(a.status, 401, "{a:?}");
    // the genuine issuer is fine
    let iss: String = url::form_urlencoded::byte_serialize(idp.issuer.as_bytes()).collect();
    let ok = ask(
        &server,
        b.req(&format!("/oauth2/callback?{q}&iss={iss}"), "login"),
    )
    .await;
    assert_eq!(ok.status, 302, "{ok:?}");
}

#[tokio::test]
async fn opened_sessions_are_cached_per_cookie_value() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    for _ in 0..5 {
        ask(&server, b.req("/app", "login")).await.assert_allow();
    }
    let (_, m) = server.admin_get("/metrics").await;
    let get = |s: &str| metric(&m, s);
    assert_eq!(
        get("oidc_authz_cache_lookups_total{cache=\"session\",result=\"miss\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        get("oidc_authz_cache_lookups_total{cache=\"session\",result=\"hit\"}"),
        4.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_login_cookie_without_a_pkce_verifier_cannot_complete() {
    use oidc_authz::config::Secret;
    use oidc_authz::login::cookie::CookieCodec;
    let (idp, server) = world().await;
    const EXCHANGE_REFUSED: &str = "the identity provider refused the authorization code";
    const NO_LOGIN: &str = "the login expired or was started in another browser";
    let mut b = Browser::new();
    let start = ask(&server, b.req("/app", "login")).await;
    b.absorb(&start);
    let location = start.header("location").unwrap().to_string();
    // the real login cookie, opened with the policy's real key: only its verifier is changed below, so the nonce,
    // state and redirect_uri all match and nothing but PKCE can refuse the login
    let codec =
        CookieCodec::new(&[Secret::new("fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg=")]).unwrap();
    let sealed = &b
        .jar
        .iter()
        .find(|(n, _)| n == "oidc_authz_login")
        .unwrap()
        .1;
    let real: serde_json::Value =
        serde_json::from_slice(&codec.open("oidc_authz_login", sealed).unwrap()).unwrap();
    assert!(
        real["verifier"].as_str().is_some_and(|v| !v.is_empty()),
        "{real}"
    );
    // each callback with a fresh code for the same login (the IdP binds it to the same challenge and nonce)
    let callback = async |login: &serde_json::Value| {
        let q = idp.login(&location, "alice");
        let mut b = Browser::new();
        let sealed = codec.seal("oidc_authz_login", login.to_string().as_bytes());
        b.jar = vec![("oidc_authz_login".into(), sealed)];
        let hits = idp.token_hits();
        let a = ask(&server, b.req(&format!("/oauth2/callback?{q}"), "login")).await;
        (a, idp.token_hits() - hits)
    };
    // an empty or a wrong verifier goes to the IdP, whose PKCE check refuses the code
    for verifier in [json!(""), json!("x".repeat(43))] {
        let mut login = real.clone();
        login["verifier"] = verifier;
        let (a, exchanges) = callback(&login).await;
        assert_eq!(a.status, 401, "{a:?}");
        assert!(a.body.contains(EXCHANGE_REFUSED), "{a:?}");
        assert_eq!(exchanges, 1, "{a:?}");
    }
    // no verifier at all: not a login state, so no exchange is even tried
    let mut login = real.clone();
    login.as_object_mut().unwrap().remove("verifier");
    let (a, exchanges) = callback(&login).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert!(a.body.contains(NO_LOGIN), "{a:?}");
    assert_eq!(exchanges, 0, "{a:?}");
    // the control: the same cookie with its real verifier completes the login
    let (a, exchanges) = callback(&real).await;
    assert_eq!(a.status, 302, "{a:?}");
    assert_eq!(a.header("location"), Some("/app"), "{a:?}");
    assert_eq!(exchanges, 1, "{a:?}");
}

#[tokio::test]
async fn a_token_winning_over_a_session_strips_the_session_and_its_headers() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let token = idp.mint(json!({"sub": "service-x"}));
    let a = ask(
        &server,
        b.req("/app", "login")
            .bearer(&token)
            .header("x-id-token", "forged.id.token"),
    )
    .await;
    a.assert_allow();
    assert!(
        a.remove.contains(&"x-id-token".to_string()),
        "a client-sent ID-token header must not pass: {a:?}"
    );
    assert_eq!(
        a.header("cookie"),
        Some("other=keep"),
        "the session cookie stays at the gateway"
    );
}

// ------------------------------------------------------------------------------------------------
// Issue 10: coalesced refresh (5), no cookie bomb (6), logout that means it (7), verified session claims (8),
// login_uri from configuration (12)
// ------------------------------------------------------------------------------------------------

/// The session cookie pairs of a jar, as a `Cookie` header value.
pub(crate) fn session_cookie(b: &Browser) -> String {
    b.jar
        .iter()
        .filter(|(n, _)| n.starts_with("oidc_authz_session"))
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn with_cookie(path: &str, cookie: &str) -> Req {
    req(path)
        .host(APP)
        .policy("login")
        .header("accept", "text/html")
        .header("cookie", cookie)
}

/// `n` requests carrying the session `cookie`, sent at once over 8 connections spread over `servers`.
pub(crate) async fn at_once(servers: &[&TestServer], n: usize, cookie: &str) -> Vec<Answer> {
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(servers[i % servers.len()].client().await);
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = clients[i % clients.len()].clone();
        let r = with_cookie("/app", cookie).build();
        tasks.push(tokio::spawn(async move {
            Answer::from(c.check(r).await.unwrap().into_inner())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn thirty_parallel_requests_on_an_expiring_session_make_one_refresh() {
    let idp = MockIdp::start().await;
    idp.state
        .expires_in
        .store(60, std::sync::atomic::Ordering::SeqCst);
    idp.state
        .rotate_refresh_tokens
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (server, clock) = serve(&idp).ready_with_clock().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let old = session_cookie(&b);
    clock.advance(61);
    idp.advance(61);
    let hits = idp.token_hits();
    let answers = at_once(&[&server], 30, &old).await;
    assert_eq!(
        idp.token_hits(),
        hits + 1,
        "one refresh grant for 30 requests"
    );
    let mut new_cookies = std::collections::HashSet::new();
    for a in &answers {
        a.assert_allow();
        let set: Vec<(String, String)> = a
            .cookies_set()
            .into_iter()
            .filter(|(n, _)| n.starts_with("oidc_authz_session"))
            .collect();
        assert!(
            !set.is_empty(),
            "every answer carries the new cookie: {a:?}"
        );
        new_cookies.insert(format!("{set:?}"));
    }
    assert_eq!(new_cookies.len(), 1, "all answer with the same new cookie");
    // a late request still carrying the old cookie gets the refreshed session too, with no new grant
    let late = ask(&server, with_cookie("/app", &old)).await;
    late.assert_allow();
    assert!(!late.cookies_set().is_empty(), "{late:?}");
    assert_eq!(idp.token_hits(), hits + 1);
    // and the new cookie works
    b.absorb(&answers[0]);
    let a = ask(&server, b.req("/app", "login")).await;
    assert_eq!(
        (a.status, a.header("x-user")),
        (200, Some("alice")),
        "{a:?}"
    );
}

#[tokio::test]
async fn a_huge_return_url_makes_one_small_login_cookie() {
    let (idp, server) = world().await;
    let huge = format!("/app/get?q={}", "x".repeat(20_000));
    let a = ask(&server, Browser::new().req(&huge, "login")).await;
    assert_eq!(a.status, 302, "{a:?}");
    let set: Vec<&(String, String, i32)> = a
        .headers
        .iter()
        .filter(|(k, _, _)| k == "set-cookie")
        .collect();
    assert_eq!(set.len(), 1, "one login cookie, never chunks: {set:?}");
    assert!(set[0].1.starts_with("oidc_authz_login="), "{set:?}");
    assert!(set[0].1.len() < 4096, "{} bytes", set[0].1.len());
    // after the login, the path alone
    let mut b = Browser::new();
    let cb = login(&server, &idp, &mut b, &huge, "login", "alice").await;
    assert_eq!(cb.header("location"), Some("/app/get"));
    // a long path: `/`
    let mut b = Browser::new();
    let long_path = format!("/app/{}", "p".repeat(3000));
    let cb = login(&server, &idp, &mut b, &long_path, "login", "alice").await;
    assert_eq!(cb.header("location"), Some("/"));
    // a query under the cap comes back whole
    let mut b = Browser::new();
    let ok = format!("/app/get?q={}", "y".repeat(1500));
    let cb = login(&server, &idp, &mut b, &ok, "login", "alice").await;
    assert_eq!(cb.header("location"), Some(ok.as_str()));
}

#[tokio::test]
async fn login_uri_comes_from_the_redirect_uri_not_the_host_header() {
    let (_idp, server) = world().await;
    for host in ["evil.com", "app.example.com:8443", ""] {
        let a = ask(
            &server,
            req("/app/get?x=1")
                .host(host)
                .policy("login")
                .header("accept", "application/json")
                .header("x-forwarded-host", "evil.com"),
        )
        .await;
        a.assert_deny(401, "invalid_token");
        let w = a.header("www-authenticate").unwrap();
        assert!(
            w.contains("login_uri=\"https://app.example.com/app/get?x=1\""),
            "Host {host:?}: {w}"
        );
    }
}

#[tokio::test]
async fn logout_needs_post_or_delete_by_default() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    // a GET (any cross-site link or image) is refused and logs nobody out
    for site in [None, Some("cross-site"), Some("same-origin")] {
        let mut r = b.req("/oauth2/logout", "login");
        if let Some(s) = site {
            r = r.header("sec-fetch-site", s);
        }
        let a = ask(&server, r).await;
        a.assert_deny(403, "access_denied");
        assert!(a.cookies_cleared().is_empty(), "{a:?}");
    }
    // a cross-site POST or DELETE is refused too
    for (m, h, v) in [
        ("POST", "origin", "https://evil.example.com"),
        ("POST", "sec-fetch-site", "cross-site"),
        ("DELETE", "sec-fetch-site", "same-site"),
        ("POST", "origin", "null"),
    ] {
        let a = ask(
            &server,
            b.req("/oauth2/logout", "login").method(m).header(h, v),
        )
        .await;
        a.assert_deny(403, "access_denied");
    }
    ask(&server, b.req("/app", "login")).await.assert_allow();
    assert!(idp.state.revocations.lock().unwrap().is_empty());
    // a same-origin POST and a DELETE log out
    let a = ask(
        &server,
        b.req("/oauth2/logout", "login")
            .method("POST")
            .header("origin", "https://app.example.com")
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(a.status, 302, "{a:?}");
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let a = ask(&server, b.req("/oauth2/logout", "login").method("DELETE")).await;
    assert_eq!(a.status, 302, "{a:?}");
}

#[tokio::test]
async fn get_logout_when_listed_is_same_origin_only() {
    let extra = r#"
[policies.getout]
provider = "okta"
auth_methods = ["authorization_code", "session"]
redirect_uri = "https://app.example.com/oauth2/callback"
session_secret = "fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg="
logout_path = "/oauth2/logout"
logout_methods = ["GET", "POST"]
"#;
    let (idp, server) = world_with(|c| c.extra(extra)).await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    for site in [None, Some("cross-site"), Some("same-site")] {
        let mut r = b.req("/oauth2/logout", "getout");
        if let Some(s) = site {
            r = r.header("sec-fetch-site", s);
        }
        ask(&server, r).await.assert_deny(403, "access_denied");
    }
    ask(&server, b.req("/oauth2/logout", "getout").method("DELETE"))
        .await
        .assert_deny(403, "access_denied");
    ask(&server, b.req("/app", "login")).await.assert_allow();
    for site in ["same-origin", "none"] {
        let a = ask(
            &server,
            b.req("/oauth2/logout", "getout")
                .header("sec-fetch-site", site),
        )
        .await;
        assert_eq!(a.status, 302, "{site}: {a:?}");
    }
    b.absorb(
        &ask(
            &server,
            b.req("/oauth2/logout", "getout")
                .header("sec-fetch-site", "same-origin"),
        )
        .await,
    );
    assert_eq!(ask(&server, b.req("/app", "login")).await.status, 302);
}

#[tokio::test]
async fn logout_revokes_the_tokens_and_kills_copies_of_the_cookie() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let copy = session_cookie(&b);
    let rt: Vec<String> = idp
        .state
        .refresh_tokens
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(rt.len(), 1);
    ask(&server, with_cookie("/app", &copy))
        .await
        .assert_allow();
    let a = ask(&server, b.req("/oauth2/logout", "login").method("POST")).await;
    assert_eq!(a.status, 302, "{a:?}");
    b.absorb(&a);
    // the refresh token, then the access token, revoked at the provider
    let revoked = idp.state.revocations.lock().unwrap().clone();
    let hints: Vec<&str> = revoked.iter().map(|(_, h)| h.as_str()).collect();
    assert_eq!(hints, ["refresh_token", "access_token"], "{revoked:?}");
    assert_eq!(revoked[0].0, rt[0]);
    assert!(idp.state.refresh_tokens.lock().unwrap().is_empty());
    // the copy made before the logout is no session: browser -> login, cookie cleared; API -> 401
    let a = ask(&server, with_cookie("/app", &copy)).await;
    assert_eq!(a.status, 302, "{a:?}");
    assert!(
        a.cookies_cleared()
            .contains(&"oidc_authz_session".to_string())
    );
    ask(
        &server,
        with_cookie("/app", &copy).header("x-requested-with", "XMLHttpRequest"),
    )
    .await
    .assert_deny(401, "invalid_token");
    // another session of the same user is not affected
    let mut other = Browser::new();
    login(&server, &idp, &mut other, "/app", "login", "alice").await;
    ask(&server, other.req("/app", "login"))
        .await
        .assert_allow();
}

#[tokio::test]
async fn a_failed_revocation_does_not_block_logout_and_logout_revoke_false_skips_it() {
    let extra = r#"
[policies.norevoke]
provider = "okta"
auth_methods = ["authorization_code", "session"]
redirect_uri = "https://app.example.com/oauth2/callback"
session_secret = "fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg="
logout_path = "/oauth2/logout"
logout_revoke = false
"#;
    let (idp, server) = world_with(|c| c.extra(extra)).await;
    idp.state
        .revoke_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let copy = session_cookie(&b);
    let a = ask(&server, b.req("/oauth2/logout", "login").method("POST")).await;
    assert_eq!(a.status, 302, "{a:?}");
    assert_eq!(ask(&server, with_cookie("/app", &copy)).await.status, 302);

    idp.state
        .revoke_status
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let copy = session_cookie(&b);
    let a = ask(&server, b.req("/oauth2/logout", "norevoke").method("POST")).await;
    assert_eq!(a.status, 302, "{a:?}");
    assert!(idp.state.revocations.lock().unwrap().is_empty());
    assert_eq!(
        ask(&server, with_cookie("/app", &copy)).await.status,
        302,
        "ended without revocation too"
    );
}

/// A session cookie sealed with the `login` policy's real secret around `at` / `it`.
fn forged_session(at: &str, it: Option<&str>) -> String {
    use oidc_authz::config::Secret;
    use oidc_authz::login::cookie::CookieCodec;
    let codec =
        CookieCodec::new(&[Secret::new("fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg=")]).unwrap();
    let now = now();
    let data = json!({
        "sid": "forged", "provider": "okta", "at": at, "it": it, "rt": null,
        "at_exp": now + 3600, "created": now, "seen": now,
    });
    let sealed = codec.seal("oidc_authz_session", data.to_string().as_bytes());
    format!("oidc_authz_session={sealed}")
}

fn unsigned(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let e = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.",
        e(&json!({"alg": "none", "typ": "JWT"})),
        e(claims)
    )
}

#[tokio::test]
async fn a_forged_session_with_unsigned_tokens_is_refused() {
    let (idp, server) = world().await;
    let admin = json!({
        "iss": idp.issuer, "aud": "api://default", "sub": "mallory", "groups": ["admins", "kong_group"],
        "scp": ["api:read"], "iat": now(), "exp": now() + 3600,
    });
    let mut id = admin.clone();
    id["aud"] = json!("oidc-authz");
    let other_key = SigningKey::rsa2();
    let cases = [
        (
            "alg:none access token",
            forged_session(&unsigned(&admin), None),
        ),
        (
            "alg:none access and ID tokens",
            forged_session(&unsigned(&admin), Some(&unsigned(&id))),
        ),
        (
            "opaque access token alone",
            forged_session("opaque-xyz", None),
        ),
        (
            "genuine access token, alg:none ID token",
            forged_session(&idp.mint(json!({})), Some(&unsigned(&id))),
        ),
        (
            "signed by a key the provider does not publish",
            forged_session(&other_key.sign(&admin), None),
        ),
        (
            "ID token of another client",
            forged_session("opaque-xyz", Some(&idp.mint(json!({"aud": "other-app"})))),
        ),
    ];
    for (what, cookie) in cases {
        for policy in ["login", "group"] {
            let a = ask(
                &server,
                req("/app")
                    .host(APP)
                    .policy(policy)
                    .header("accept", "text/html")
                    .header("cookie", &cookie),
            )
            .await;
            assert_eq!(a.status, 302, "{what} on {policy}: {a:?}");
            assert!(
                a.cookies_cleared()
                    .contains(&"oidc_authz_session".to_string()),
                "{what}: {a:?}"
            );
        }
    }
    // the same shape with genuine tokens is a session
    let mut id = idp.claims(json!({"aud": "oidc-authz", "sub": "alice"}));
    id["email"] = json!("alice@example.com");
    let genuine = forged_session(
        &idp.mint(json!({"sub": "alice"})),
        Some(&idp.signing_key().sign(&id)),
    );
    let a = ask(
        &server,
        req("/app")
            .host(APP)
            .policy("login")
            .header("accept", "text/html")
            .header("cookie", &genuine),
    )
    .await;
    assert_eq!(
        (a.status, a.header("x-user")),
        (200, Some("alice")),
        "{a:?}"
    );
}

#[tokio::test]
async fn an_expired_access_token_in_a_session_is_refreshed_not_trusted() {
    let (idp, server, _clock) = world_with_clock(|c| c).await;
    // at_exp in the cookie says "valid" but the signed token expired: a refresh is needed; with no refresh token,
    // the session is over
    let expired = idp.mint(json!({"sub": "alice", "exp": now() - 10}));
    let cookie = forged_session(&expired, None);
    let a = ask(&server, with_cookie("/app", &cookie)).await;
    assert_eq!(a.status, 302, "{a:?}");
}

/// A session cookie sealed with the `login` policy's real secret: session `sid`, tokens `at` / `it`, refresh
/// token `rt`, created and last seen at `now`.
fn sealed_session(sid: &str, at: &str, it: Option<&str>, rt: Option<&str>, now: u64) -> String {
    use oidc_authz::config::Secret;
    use oidc_authz::login::cookie::CookieCodec;
    let codec =
        CookieCodec::new(&[Secret::new("fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg=")]).unwrap();
    let data = json!({
        "sid": sid, "provider": "okta", "at": at, "it": it, "rt": rt,
        "at_exp": now + 3600, "created": now, "seen": now,
    });
    let sealed = codec.seal("oidc_authz_session", data.to_string().as_bytes());
    format!("oidc_authz_session={sealed}")
}

#[tokio::test]
async fn replayed_logout_with_one_cookie_revokes_once() {
    let (idp, server) = world().await;
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    let copy = session_cookie(&b);
    for i in 0..10 {
        let a = ask(&server, with_cookie("/oauth2/logout", &copy).method("POST")).await;
        // every logout answers as usual: redirect, session cookie cleared
        assert_eq!(a.status, 302, "logout {i}: {a:?}");
        assert!(
            a.cookies_cleared()
                .contains(&"oidc_authz_session".to_string()),
            "logout {i}: {a:?}"
        );
    }
    let hints: Vec<String> = idp
        .state
        .revocations
        .lock()
        .unwrap()
        .iter()
        .map(|(_, h)| h.clone())
        .collect();
    assert_eq!(hints, ["refresh_token", "access_token"], "revoked once");
    assert_eq!(
        idp.state
            .revoke_hits
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn a_held_provider_gets_at_most_sixteen_logout_revocations_at_once() {
    // logout waits for its revocation at most half the Check deadline (1 s here)
    let (idp, server) =
        world_with(|c| c.edit("check_timeout_ms = 60000", "check_timeout_ms = 2000")).await;
    // the provider's metadata is known before it is held (a login)
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    idp.set_mode(Mode::Held);
    let now = now();
    let logouts = (0..20).map(|i| {
        let cookie = sealed_session(
            &format!("sid-{i}"),
            "at-opaque",
            None,
            Some(&format!("rt-{i}")),
            now,
        );
        let server = &server;
        async move {
            ask(
                server,
                with_cookie("/oauth2/logout", &cookie).method("POST"),
            )
            .await
        }
    });
    for a in futures::future::join_all(logouts).await {
        assert_eq!(a.status, 302, "{a:?}");
    }
    // every logout answered; 16 revocations reached the held provider, the other 4 were skipped
    let hits = || {
        idp.state
            .revoke_hits
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    for _ in 0..3000 {
        if hits() >= 16 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(hits(), 16);
    idp.set_mode(Mode::Up);
    server.stop().await;
}

#[tokio::test]
async fn a_session_whose_expired_tokens_were_signed_by_a_rotated_out_key_is_refreshed() {
    let idp = MockIdp::start().await;
    let old = idp.signing_key();
    // the provider rotated its key: the session's (expired) tokens were signed by a key it no longer publishes
    idp.rotate(vec![SigningKey::rsa2()]);
    assert_ne!(idp.signing_key().kid, old.kid);
    let server = serve(&idp).ready().await;
    let now = now();
    let mut at = idp.claims(json!({"sub": "alice", "exp": now - 10}));
    at["iat"] = json!(now - 3610);
    let mut id = idp.claims(json!({"aud": "oidc-authz", "sub": "alice", "exp": now - 10}));
    id["iat"] = json!(now - 3610);
    idp.state
        .refresh_tokens
        .lock()
        .unwrap()
        .insert("rt-rotated".into(), "alice".into());
    let cookie = sealed_session(
        "rotated",
        &old.sign(&at),
        Some(&old.sign(&id)),
        Some("rt-rotated"),
        now,
    );
    let hits = idp.token_hits();
    let a = ask(&server, with_cookie("/app", &cookie)).await;
    assert_eq!(
        (a.status, a.header("x-user")),
        (200, Some("alice")),
        "refreshed, not logged out: {a:?}"
    );
    assert_eq!(idp.token_hits(), hits + 1, "one refresh grant");
    assert!(
        a.response_headers
            .iter()
            .any(|(k, v, _)| k == "set-cookie" && v.starts_with("oidc_authz_session")),
        "{a:?}"
    );
    // an unexpired token signed by the rotated-out key is still refused (no refresh)
    let fresh = sealed_session(
        "rotated-fresh",
        &old.sign(&idp.claims(json!({"sub": "alice"}))),
        None,
        Some("rt-rotated-2"),
        now,
    );
    let hits = idp.token_hits();
    let a = ask(&server, with_cookie("/app", &fresh)).await;
    assert_eq!(a.status, 302, "{a:?}");
    assert_eq!(idp.token_hits(), hits, "no refresh for an invalid token");
}

/// `upstream_access_token = false`: a session's allow sends no `Authorization` upstream; the ID token header and
/// the claim headers still go.
#[tokio::test]
async fn upstream_access_token_false_keeps_the_sessions_token_here() {
    let (idp, server) = world_with(|c| {
        c.edit(
            "upstream_id_token_header = \"x-id-token\"",
            "upstream_id_token_header = \"x-id-token\"\nupstream_access_token = false",
        )
    })
    .await;
    let mut b = Browser::new();
    let cb = login(&server, &idp, &mut b, "/app/page", "login", "alice").await;
    assert_eq!(cb.status, 302, "{cb:?}");
    let a = ask(&server, b.req("/app/page", "login")).await;
    a.assert_allow();
    assert_eq!(a.header("authorization"), None, "{a:?}");
    assert_eq!(a.header("x-user"), Some("alice"));
    assert!(a.header("x-id-token").unwrap().starts_with("ey"));
}
