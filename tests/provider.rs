//! The identity provider failing in every way it can: down, slow, garbage, rotated keys, wrong issuer; and the
//! JWKS cache coalescing and rate-limiting refetches. Never an allow by accident, never a gRPC error.

mod support;

use std::sync::Arc;
use std::time::Duration;

use oidc_authz::clock::ManualClock;
use serde_json::json;
use support::*;

#[tokio::test]
async fn idp_down_at_start_gives_503_then_recovers() {
    let idp = MockIdp::start().await;
    idp.set_mode(Mode::Down);
    let server = TestServer::start(&config_toml(&idp, "")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = server.admin_get("/readyz").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "waiting for providers: okta\n")
    );
    let token = idp.mint(json!({}));
    let a = ask(&server, req("/x").policy("api").bearer(&token)).await;
    a.assert_deny(503, "temporarily_unavailable");
    assert_eq!(a.header("retry-after"), Some("5"));
    a.assert_not_echoing(&token);
    // a request without credentials does not need the IdP: still a plain 401
    ask(&server, req("/x").policy("api"))
        .await
        .assert_deny(401, "invalid_token");

    idp.set_mode(Mode::Up);
    server.wait_ready().await;
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    assert_eq!(
        ask(&server, req("/x").policy("api").bearer(&token))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn keys_in_hand_keep_serving_while_idp_is_down() {
    let idp = MockIdp::start().await;
    let server = TestServer::start_ready(&short_http_timeout(&config_toml(&idp, ""))).await;
    let unseen = idp.mint(json!({}));
    for mode in [Mode::Down, Mode::Garbage, Mode::Held] {
        idp.set_mode(mode.clone());
        let fresh = idp.mint(json!({}));
        assert_eq!(
            ask(&server, req("/x").policy("api").bearer(&fresh))
                .await
                .status,
            200,
            "{mode:?}"
        );
    }
    assert_eq!(
        ask(&server, req("/x").policy("api").bearer(&unseen))
            .await
            .status,
        200
    );
    // a token naming a key we do not have, while the IdP is unusable: 503 (cannot tell), never allow
    idp.set_mode(Mode::Down);
    let other = SigningKey::rsa2().sign(&idp.claims(json!({})));
    ask(&server, req("/x").policy("api").bearer(&other))
        .await
        .assert_deny(503, "temporarily_unavailable");
}

#[tokio::test]
async fn slow_and_garbage_idp_at_start_fail_closed() {
    for mode in [Mode::Held, Mode::Garbage] {
        let idp = MockIdp::start().await;
        idp.set_mode(mode.clone());
        let server = TestServer::start(&short_http_timeout(&config_toml(&idp, ""))).await;
        let token = idp.mint(json!({}));
        let started = std::time::Instant::now();
        let a = ask(&server, req("/x").policy("api").bearer(&token)).await;
        a.assert_deny(503, "temporarily_unavailable");
        // a held IdP never answers: the 300 ms HTTP timeout answers, well inside this budget
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{mode:?} took {:?}",
            started.elapsed()
        );
        assert!(!server.authorizer.is_ready());
    }
}

#[tokio::test]
async fn rotated_keys_are_refetched_once_for_a_burst() {
    let idp = MockIdp::start().await;
    let server = TestServer::start_ready(&config_toml(&idp, "")).await;
    let before = idp.jwks_hits();
    idp.rotate(vec![SigningKey::rsa2()]);
    let token = idp.mint(json!({}));
    let r = req("/x").policy("api").bearer(&token).build();
    assert!(server.concurrent(50, r).await.iter().all(|s| *s == 200));
    assert_eq!(
        idp.jwks_hits() - before,
        1,
        "50 concurrent misses must make one JWKS call"
    );
}

#[tokio::test]
async fn unknown_kids_are_rate_limited() {
    let idp = MockIdp::start().await;
    let server = TestServer::start_ready(
        &config_toml(&idp, "").replace("jwks_min_refetch_secs = 0", "jwks_min_refetch_secs = 60"),
    )
    .await;
    let before = idp.jwks_hits();
    let other = SigningKey::rsa2();
    for i in 0..20 {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(format!("random-{i}"));
        let t = other.sign_with_header(&h, &idp.claims(json!({})));
        ask(&server, req("/x").policy("api").bearer(&t))
            .await
            .assert_deny(401, "invalid_token");
    }
    assert!(
        idp.jwks_hits() - before <= 1,
        "unknown kids hammered the IdP: {}",
        idp.jwks_hits() - before
    );
}

#[tokio::test]
async fn discovery_issuer_must_match() {
    let idp = MockIdp::start().await;
    *idp.state.claimed_issuer.lock().unwrap() = Some("https://evil.example.com".into());
    let server = TestServer::start(&config_toml(&idp, "")).await;
    let a = ask(
        &server,
        req("/x").policy("api").bearer(&idp.mint(json!({}))),
    )
    .await;
    a.assert_deny(503, "temporarily_unavailable");
    assert!(!server.authorizer.is_ready());
}

#[tokio::test]
async fn discovery_falls_back_to_oauth_authorization_server() {
    let idp = MockIdp::start().await;
    idp.state
        .oidc_discovery
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let server = TestServer::start_ready(&config_toml(&idp, "")).await;
    assert_eq!(
        ask(
            &server,
            req("/x").policy("api").bearer(&idp.mint(json!({})))
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn explicit_jwks_uri_works_without_discovery() {
    let idp = MockIdp::start().await;
    idp.state
        .no_discovery
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let toml = config_toml(&idp, "").replace(
        "\nleeway_secs = 0",
        &format!("\nleeway_secs = 0\njwks_uri = \"{}/v1/keys\"", idp.issuer),
    );
    let server = TestServer::start_ready(&toml).await;
    assert_eq!(
        ask(
            &server,
            req("/x").policy("api").bearer(&idp.mint(json!({})))
        )
        .await
        .status,
        200
    );
    assert!(
        idp.state
            .discovery_hits
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1,
        "discovery was tried"
    );
}

#[tokio::test]
async fn no_discovery_and_no_jwks_uri_is_not_ready() {
    let idp = MockIdp::start().await;
    idp.state
        .no_discovery
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let server = TestServer::start(&config_toml(&idp, "")).await;
    ask(
        &server,
        req("/x").policy("api").bearer(&idp.mint(json!({}))),
    )
    .await
    .assert_deny(503, "temporarily_unavailable");
    assert!(!server.authorizer.is_ready());
}

#[tokio::test]
async fn cached_token_expires_by_the_clock() {
    let idp = MockIdp::start().await;
    let clock = Arc::new(ManualClock::new(now() + 2));
    let server = TestServer::start_with_clock(&config_toml(&idp, ""), clock.clone()).await;
    server.wait_ready().await;
    let t = idp.mint(json!({"exp": now() + 60}));
    assert_eq!(
        ask(&server, req("/x").policy("api").bearer(&t))
            .await
            .status,
        200
    );
    assert_eq!(
        ask(&server, req("/x").policy("api").bearer(&t))
            .await
            .status,
        200
    );
    clock.advance(61);
    let a = ask(&server, req("/x").policy("api").bearer(&t)).await;
    a.assert_deny(401, "invalid_token");
    assert!(
        a.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test]
async fn leeway_applies_to_exp_and_nbf() {
    let idp = MockIdp::start().await;
    let toml = config_toml(&idp, "").replace("\nleeway_secs = 0", "\nleeway_secs = 30");
    let clock = Arc::new(ManualClock::new(now() + 2));
    let server = TestServer::start_with_clock(&toml, clock.clone()).await;
    server.wait_ready().await;
    let n = now();
    let just_expired = idp.mint(json!({"exp": n - 10, "iat": n - 100}));
    let nbf_soon = idp.mint(json!({"nbf": n + 10}));
    assert_eq!(
        ask(&server, req("/x").policy("api").bearer(&just_expired))
            .await
            .status,
        200
    );
    assert_eq!(
        ask(&server, req("/x").policy("api").bearer(&nbf_soon))
            .await
            .status,
        200
    );
    let long_expired = idp.mint(json!({"exp": n - 31, "iat": n - 100}));
    ask(&server, req("/x").policy("api").bearer(&long_expired))
        .await
        .assert_deny(401, "invalid_token");
}
