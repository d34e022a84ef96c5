//! `introspection` (RFC 7662) against the in-process mock IdP: answers, cache TTL, `exp` capping, negative
//! cache, coalescing (1000 concurrent Checks with one new token -> one call), IdP failures, and JWTs.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn active_opaque_token_is_allowed_with_claims_as_headers() {
    let (idp, server) = world().await;
    let t = idp.opaque(json!({"sub": "cc-app", "cid": "cc-app"}));
    for raw in [false, true] {
        let mut r = req("/x")
            .policy("intro")
            .bearer(&t)
            .header("x-user", "attacker");
        if raw {
            r = r.raw();
        }
        let a = ask(&server, r).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.header("x-user"), Some("cc-app"));
        assert_eq!(a.header("x-client-id"), Some("cc-app"));
        assert_eq!(
            a.metadata.get("auth_method").map(String::as_str),
            Some("introspection")
        );
        assert_eq!(
            a.metadata.get("client_id").map(String::as_str),
            Some("cc-app")
        );
        a.assert_not_echoing(&t);
    }
    assert_eq!(idp.introspect_hits(), 1, "the second Check used the cache");
}

#[tokio::test]
async fn inactive_token_is_401_and_negatively_cached() {
    let (idp, server) = world().await;
    for _ in 0..10 {
        let a = ask(&server, req("/x").policy("intro").bearer("op-never-issued")).await;
        a.assert_deny(401, "invalid_token");
        assert!(
            a.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("not active")
        );
    }
    assert_eq!(idp.introspect_hits(), 1);
}

#[tokio::test]
async fn claims_feed_access_control() {
    let (idp, server) = world().await;
    let t = idp.opaque(json!({"scp": ["openid"]}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(403, "insufficient_scope");
}

#[tokio::test]
async fn no_cache_asks_every_time_and_sees_revocation_at_once() {
    let (idp, server) = world().await;
    let t = idp.opaque(json!({}));
    for _ in 0..3 {
        assert_eq!(
            ask(&server, req("/x").policy("intro_nocache").bearer(&t))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        idp.introspect_hits(),
        3,
        "cache_introspection_secs = 0: every request asks the IdP"
    );
    idp.revoke(&t);
    ask(&server, req("/x").policy("intro_nocache").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
}

#[tokio::test]
async fn cached_answer_lives_its_ttl_then_revocation_shows() {
    let idp = MockIdp::start().await;
    let server = TestServer::start_ready(&config_toml(&idp, "").replace(
        "cache_introspection_secs = 300",
        "cache_introspection_secs = 1",
    ))
    .await;
    let t = idp.opaque(json!({}));
    assert_eq!(
        ask(&server, req("/x").policy("intro").bearer(&t))
            .await
            .status,
        200
    );
    idp.revoke(&t);
    // within the TTL the cached answer stands (as configured)
    assert_eq!(
        ask(&server, req("/x").policy("intro").bearer(&t))
            .await
            .status,
        200
    );
    assert_eq!(idp.introspect_hits(), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
    assert_eq!(idp.introspect_hits(), 2);
}

#[tokio::test]
async fn cache_never_outlives_exp() {
    let (idp, server) = world().await;
    // cache_introspection_secs = 300 but the token expires in 1 s
    let t = idp.opaque(json!({"exp": now() + 1}));
    assert_eq!(
        ask(&server, req("/x").policy("intro").bearer(&t))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_checks_make_one_call() {
    let (idp, server) = world().await;
    idp.set_mode(Mode::Slow(Duration::from_millis(300)));
    let t = idp.opaque(json!({}));
    let r = req("/x").policy("intro").bearer(&t).build();
    assert!(server.concurrent(1000, r).await.iter().all(|s| *s == 200));
    assert_eq!(
        idp.introspect_hits(),
        1,
        "1000 concurrent Checks with one new token -> one introspection call"
    );
}

#[tokio::test]
async fn idp_failures_are_503_and_not_cached() {
    let idp = MockIdp::start().await;
    let server = TestServer::start_ready(&short_http_timeout(&config_toml(&idp, ""))).await;
    let t = idp.opaque(json!({}));
    for mode in [Mode::Down, Mode::Garbage, Mode::Held] {
        idp.set_mode(mode.clone());
        let a = ask(&server, req("/x").policy("intro").bearer(&t)).await;
        a.assert_deny(503, "temporarily_unavailable");
        a.assert_not_echoing(&t);
    }
    idp.set_mode(Mode::Up);
    assert_eq!(
        ask(&server, req("/x").policy("intro").bearer(&t))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn our_client_refused_by_the_idp_is_503_not_401() {
    let idp = MockIdp::start().await;
    let toml = config_toml(&idp, "").replace(
        "client_secret = \"oidc-authz-secret\"",
        "client_secret = \"wrong\"",
    );
    let server = TestServer::start_ready(&toml).await;
    let t = idp.opaque(json!({}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(503, "temporarily_unavailable");
}

#[tokio::test]
async fn jwts_are_verified_locally_unless_introspect_jwt_tokens() {
    let (idp, server) = world().await;
    let jwt = idp.mint(json!({}));
    // `intro` allows bearer too: a JWT is verified locally, no introspection call
    assert_eq!(
        ask(&server, req("/x").policy("intro").bearer(&jwt))
            .await
            .status,
        200
    );
    assert_eq!(idp.introspect_hits(), 0);
    // `intro_jwt` introspects JWTs: unknown to the IdP -> inactive
    ask(&server, req("/x").policy("intro_jwt").bearer(&jwt))
        .await
        .assert_deny(401, "invalid_token");
    assert_eq!(idp.introspect_hits(), 1);
    idp.register(&jwt, idp.claims(json!({})));
    let other = idp.mint(json!({}));
    idp.register(&other, idp.claims(json!({})));
    let a = ask(&server, req("/x").policy("intro_jwt").bearer(&other)).await;
    assert_eq!(
        (a.status, a.metadata.get("auth_method").map(String::as_str)),
        (200, Some("introspection"))
    );
}

#[tokio::test]
async fn active_answer_from_another_issuer_is_refused() {
    let (idp, server) = world().await;
    let t = idp.opaque(json!({"iss": "https://evil.example.com"}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
}

#[tokio::test]
async fn client_secret_post_for_introspection() {
    let idp = MockIdp::start().await;
    *idp.state.token_auth_methods.lock().unwrap() = vec!["client_secret_post".into()];
    let server = TestServer::start_ready(&config_toml(&idp, "")).await;
    assert_eq!(
        ask(
            &server,
            req("/x").policy("intro").bearer(&idp.opaque(json!({})))
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn client_credentials_with_opaque_tokens_introspects_them() {
    let idp = MockIdp::start().await;
    idp.state.opaque_tokens.store(true, Ordering::SeqCst);
    let extra = r#"
[policies.cc_intro]
provider = "okta"
auth_methods = ["client_credentials", "introspection"]
scopes = ["api:read"]
upstream_headers_claims = ["client_id"]
upstream_headers_names = ["x-client-id"]
"#;
    let server = TestServer::start_ready(&config_toml(&idp, extra)).await;
    let a = ask(
        &server,
        req("/x")
            .policy("cc_intro")
            .basic("cc-app", "cc-app-secret"),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-client-id"), Some("cc-app"));
    assert!(
        a.header("authorization")
            .unwrap()
            .starts_with("Bearer opaque-")
    );
}

#[tokio::test]
async fn active_tokens_for_another_audience_or_of_another_type_are_refused() {
    let (idp, server) = world().await;
    let other_api = idp.opaque(json!({"aud": "api://other"}));
    ask(&server, req("/x").policy("intro").bearer(&other_api))
        .await
        .assert_deny(401, "invalid_token");
    let refresh = "rt-looks-active";
    let mut c = idp.claims(json!({}));
    c["token_type"] = json!("refresh_token");
    idp.register(refresh, c);
    ask(&server, req("/x").policy("intro").bearer(refresh))
        .await
        .assert_deny(401, "invalid_token");
    // the same claims as an access token pass
    let ok = idp.opaque(json!({"aud": ["api://other", "api://default"]}));
    assert_eq!(
        ask(&server, req("/x").policy("intro").bearer(&ok))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_slow_idp_is_answered_503_within_the_check_deadline() {
    let idp = MockIdp::start().await;
    // the Check deadline (300 ms) is far below the HTTP timeout (60 s) and the IdP never answers while held:
    // a 503 here can only come from the deadline
    let toml = config_toml(&idp, "")
        .replace("check_timeout_ms = 60000", "check_timeout_ms = 300")
        .replace("http_timeout_ms = 30000", "http_timeout_ms = 60000");
    let server = TestServer::start_ready(&toml).await;
    idp.set_mode(Mode::Held);
    let started = std::time::Instant::now();
    let a = ask(
        &server,
        req("/x").policy("intro").bearer(&idp.opaque(json!({}))),
    )
    .await;
    idp.set_mode(Mode::Up);
    a.assert_deny(503, "temporarily_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered by the deadline, not the HTTP timeout: took {:?}",
        started.elapsed()
    );
}
