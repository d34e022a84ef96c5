//! `introspection` (RFC 7662) against the in-process mock IdP: answers, cache TTL, `exp` capping, negative
//! cache, coalescing (1000 concurrent Checks with one new token -> one call), IdP failures, and JWTs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use oidc_authz::clock::Clock;
use serde_json::json;

use crate::support::*;

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
        a.assert_allow();
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
        ask(&server, req("/x").policy("intro_nocache").bearer(&t))
            .await
            .assert_allow();
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

// The answer cache expires by the server's clock, so the TTL's two sides are asserted on a manual clock: a second
// before the TTL the cached answer stands; at the TTL the IdP is asked again.
#[tokio::test]
async fn cached_answer_lives_its_ttl_then_revocation_shows() {
    let (idp, server, clock) = world_with_clock(|c| c).await;
    let t = idp.opaque(json!({}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_allow();
    assert_eq!(idp.introspect_hits(), 1);
    idp.revoke(&t);
    // within the TTL (cache_introspection_secs = 300) the cached answer stands, as configured
    clock.advance(299);
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_allow();
    assert_eq!(idp.introspect_hits(), 1);
    // past the TTL the IdP is asked again, and the revocation shows
    clock.advance(1);
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
    assert_eq!(idp.introspect_hits(), 2);
}

#[tokio::test]
async fn cache_never_outlives_exp() {
    let (idp, server, clock) = world_with_clock(|c| c).await;
    // cache_introspection_secs = 300 but the token expires in 60 s of the server's time
    let t = idp.opaque(json!({"exp": clock.now() + 60}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_allow();
    clock.advance(61);
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
    assert_eq!(
        idp.introspect_hits(),
        2,
        "the cached answer ends at exp: the IdP is asked again (and its answer refused)"
    );
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
    let (idp, server) = world_with(Setup::short_http_timeout).await;
    let t = idp.opaque(json!({}));
    for mode in [Mode::Down, Mode::Garbage, Mode::Held] {
        idp.set_mode(mode.clone());
        let a = ask(&server, req("/x").policy("intro").bearer(&t)).await;
        a.assert_deny(503, "temporarily_unavailable");
        a.assert_not_echoing(&t);
    }
    idp.set_mode(Mode::Up);
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_allow();
}

#[tokio::test]
async fn our_client_refused_by_the_idp_is_503_not_401() {
    let (idp, server) = world_with(|c| {
        c.edit(
            "client_secret = \"oidc-authz-secret\"",
            "client_secret = \"wrong\"",
        )
    })
    .await;
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
    ask(&server, req("/x").policy("intro").bearer(&jwt))
        .await
        .assert_allow();
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
    let server = serve(&idp).ready().await;
    ask(
        &server,
        req("/x").policy("intro").bearer(&idp.opaque(json!({}))),
    )
    .await
    .assert_allow();
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
    let server = serve(&idp).extra(extra).ready().await;
    let a = ask(
        &server,
        req("/x")
            .policy("cc_intro")
            .basic("cc-app", "cc-app-secret"),
    )
    .await;
    a.assert_allow();
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
    ask(&server, req("/x").policy("intro").bearer(&ok))
        .await
        .assert_allow();
}

#[tokio::test]
async fn a_slow_idp_is_answered_503_within_the_check_deadline() {
    // the Check deadline (300 ms) is far below the HTTP timeout (60 s) and the IdP never answers while held:
    // a 503 here can only come from the deadline
    let (idp, server) = world_with(|c| {
        c.edit("check_timeout_ms = 60000", "check_timeout_ms = 300")
            .edit("http_timeout_ms = 30000", "http_timeout_ms = 60000")
    })
    .await;
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

/// A second provider for the same issuer without `audiences`, and a token policy that opts out of them.
const ANY_AUDIENCE: &str = r#"
[providers.any]
issuer = "ISSUER"
client_id = "oidc-authz"
client_secret = "oidc-authz-secret"
leeway_secs = 0
http_timeout_ms = 500

[policies.any_audience]
provider = "any"
auth_methods = ["bearer", "introspection"]
allow_any_audience = true
cache_introspection_secs = 0
cache_ttl_neg_secs = 0
"#;

async fn world_with_any_audience() -> (MockIdp, TestServer) {
    let idp = MockIdp::start().await;
    let server = serve(&idp)
        .extra(&ANY_AUDIENCE.replace("ISSUER", &idp.issuer))
        .ready()
        .await;
    (idp, server)
}

/// What oidc-provider answers for an active refresh token: no `aud`, no `token_type`, a `scope`.
fn refresh_answer(idp: &MockIdp, token: &str) {
    let n = now();
    idp.register(
        token,
        json!({"iss": idp.issuer, "sub": "alice", "client_id": "oidc-authz", "scope": "openid offline_access api:read",
               "scp": ["api:read"], "iat": n, "exp": n + 86400, "jti": "rt-1"}),
    );
}

// issue 10 item 2: a refresh token presented as a bearer token used to pass introspection.
#[tokio::test]
async fn a_refresh_token_is_not_an_access_token() {
    let (idp, server) = world_with_any_audience().await;
    refresh_answer(&idp, "rt-opaque-1");
    for policy in ["intro", "intro_nocache", "any_audience"] {
        let a = ask(&server, req("/x").policy(policy).bearer("rt-opaque-1")).await;
        a.assert_deny(401, "invalid_token");
        a.assert_not_echoing("rt-opaque-1");
    }
    // an answer naming the type is refused whatever its audience
    let mut c = idp.claims(json!({}));
    c["token_type"] = json!("refresh_token");
    idp.register("rt-opaque-2", c);
    for policy in ["intro", "any_audience"] {
        ask(&server, req("/x").policy(policy).bearer("rt-opaque-2"))
            .await
            .assert_deny(401, "invalid_token");
    }
    // the access tokens of that provider pass, on both kinds of policy
    let at = idp.opaque(json!({}));
    for policy in ["intro", "any_audience"] {
        let a = ask(&server, req("/x").policy(policy).bearer(&at)).await;
        assert_eq!(a.status, 200, "{policy}: {a:?}");
    }
    // allow_any_audience: an access token of another API passes there, not on the audience-checking policy
    let other = idp.opaque(json!({"aud": "api://other"}));
    ask(&server, req("/x").policy("any_audience").bearer(&other))
        .await
        .assert_allow();
    ask(&server, req("/x").policy("intro").bearer(&other))
        .await
        .assert_deny(401, "invalid_token");
}

#[tokio::test]
async fn an_introspection_answer_without_aud_is_refused_when_audiences_are_configured() {
    let (idp, server) = world().await;
    let t = idp.opaque(json!({"aud": null}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
}

/// An ID token of this service's own login, as the mock IdP issues it (aud = our client_id, a nonce).
fn id_token(idp: &MockIdp) -> String {
    idp.mint(json!({"aud": "oidc-authz", "nonce": "n-123", "email": "alice@example.com", "scp": ["api:read"]}))
}

#[tokio::test]
async fn an_id_token_never_passes_as_an_access_token() {
    let (idp, server) = world_with_any_audience().await;
    let id = id_token(&idp);
    // introspected policies refuse it before asking the IdP (some would call it active)
    idp.register(
        &id,
        idp.claims(json!({"aud": "oidc-authz", "nonce": "n-123"})),
    );
    for policy in ["api", "intro", "intro_jwt", "any_audience"] {
        let a = ask(&server, req("/x").policy(policy).bearer(&id)).await;
        a.assert_deny(401, "invalid_token");
        a.assert_not_echoing(&id);
    }
    assert_eq!(idp.introspect_hits(), 0);
    // without nonce, and with audiences open: still our client's ID token (aud = client_id)
    let bare = idp.mint(json!({"aud": "oidc-authz"}));
    ask(&server, req("/x").policy("any_audience").bearer(&bare))
        .await
        .assert_deny(401, "invalid_token");
    // other JWTs of the issuer that are not access tokens: a logout token, an ID token of another client
    let key = idp.signing_key();
    let mut h = jsonwebtoken::Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    h.typ = Some("logout+jwt".into());
    let logout = key.sign_with_header(&h, &idp.claims(json!({"aud": "api://default"})));
    let other_client = idp.mint(json!({"aud": "another-app", "at_hash": "x0Yb"}));
    for t in [&logout, &other_client] {
        for policy in ["api", "any_audience"] {
            ask(&server, req("/x").policy(policy).bearer(t))
                .await
                .assert_deny(401, "invalid_token");
        }
    }
    // an RFC 9068 access token passes
    h.typ = Some("at+jwt".into());
    let at = key.sign_with_header(&h, &idp.claims(json!({})));
    for policy in ["api", "any_audience"] {
        ask(&server, req("/x").policy(policy).bearer(&at))
            .await
            .assert_allow();
    }
}

// issue 10 item 9: a malformed or negative `exp` in an introspection answer is not "no exp".
#[tokio::test]
async fn introspection_answers_with_malformed_times_are_refused() {
    let (idp, server) = world().await;
    for (claim, value) in [
        ("exp", json!(-1)),
        ("exp", json!("4102444800")),
        ("exp", json!(1e300)),
        ("exp", json!({"at": 1})),
        ("nbf", json!(now() + 600)),
        ("iat", json!("now")),
    ] {
        let t = idp.opaque(json!({ claim: value.clone() }));
        ask(&server, req("/x").policy("intro").bearer(&t))
            .await
            .assert_deny(401, "invalid_token");
    }
    // no exp at all is still allowed (RFC 7662 makes it optional)
    let t = idp.opaque(json!({"exp": null}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_allow();
}
