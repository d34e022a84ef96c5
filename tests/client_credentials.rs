//! `client_credentials` against the in-process mock IdP: the grant, the token cache (hits, expiry, coalescing,
//! negative cache), the answers (401 with Basic challenge, invalid_client, 403, 503) and what goes upstream.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

fn auth_header(a: &Answer) -> &str {
    a.header("authorization").unwrap_or_default()
}

#[tokio::test]
async fn seed_scenario_basic_in_bearer_out_with_issuer_header() {
    let (idp, server) = world().await;
    for raw in [false, true] {
        let mut r = req("/oidcroute/get")
            .policy("cc")
            .basic("cc-app", "cc-app-secret")
            .header("issuer_header", "spoofed");
        if raw {
            r = r.raw();
        }
        let a = ask(&server, r).await;
        assert_eq!(a.status, 200, "{a:?}");
        let bearer = auth_header(&a)
            .strip_prefix("Bearer ")
            .expect("Authorization: Bearer upstream");
        assert_eq!(bearer.split('.').count(), 3, "a JWT from the IdP");
        assert_eq!(a.header("issuer_header"), Some(idp.issuer.as_str()));
        assert_eq!(a.header("x-client-id"), Some("cc-app"));
        assert_eq!(
            a.metadata.get("auth_method").map(String::as_str),
            Some("client_credentials")
        );
        assert_eq!(
            a.metadata.get("client_id").map(String::as_str),
            Some("cc-app")
        );
        a.assert_not_echoing("cc-app-secret");
    }
    assert_eq!(idp.token_hits(), 1, "the second request rode the cache");
}

#[tokio::test]
async fn no_credentials_names_basic_and_bearer() {
    let (_idp, server) = world().await;
    let a = ask(&server, req("/oidcroute/get").policy("cc")).await;
    a.assert_deny(401, "invalid_token");
    let c = a.header("www-authenticate").unwrap();
    assert!(
        c.starts_with("Basic realm=\"cc\", Bearer realm=\"cc\", error=\"invalid_token\""),
        "{c}"
    );
    // a client-credentials-only policy names Basic alone
    let a = ask(&server, req("/x").policy("cc_only")).await;
    a.assert_deny(401, "invalid_token");
    assert_eq!(
        a.header("www-authenticate"),
        Some("Basic realm=\"cc_only\"")
    );
    // Basic on a bearer-only policy is not accepted
    ask(
        &server,
        req("/x").policy("api").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_deny(401, "invalid_token");
}

#[tokio::test]
async fn wrong_secret_is_401_and_negatively_cached() {
    let (idp, server) = world().await;
    for _ in 0..20 {
        let a = ask(&server, req("/x").policy("cc").basic("cc-app", "guess")).await;
        a.assert_deny(401, "invalid_client");
        assert!(
            a.header("www-authenticate")
                .unwrap()
                .starts_with("Basic realm=\"cc\"")
        );
        a.assert_not_echoing("guess");
    }
    assert_eq!(
        idp.token_hits(),
        1,
        "a guessing loop reaches the IdP once per negative TTL"
    );
    // the right secret is a different cache key: it works at once
    assert_eq!(
        ask(
            &server,
            req("/x").policy("cc").basic("cc-app", "cc-app-secret")
        )
        .await
        .status,
        200
    );
    // unknown client, malformed Basic
    ask(&server, req("/x").policy("cc").basic("nobody", "x"))
        .await
        .assert_deny(401, "invalid_client");
    ask(
        &server,
        req("/x").policy("cc").header("authorization", "Basic !!!"),
    )
    .await
    .assert_deny(401, "invalid_client");
}

#[tokio::test]
async fn scopes_the_client_may_not_have_and_insufficient_scopes_are_403() {
    let (_idp, server) = world().await;
    // cc-readonly may not have api:read: the IdP answers invalid_scope
    let a = ask(
        &server,
        req("/x")
            .policy("cc")
            .basic("cc-readonly", "cc-readonly-secret"),
    )
    .await;
    a.assert_deny(403, "insufficient_scope");
}

#[tokio::test]
async fn token_lacking_required_scope_is_403() {
    let idp = MockIdp::start().await;
    // the policy requests no scope, so the IdP grants all the client may have (cc-readonly: api:write only)
    let toml = config_toml(&idp, "").replace(
        "scopes = [\"api:read\"]\nscopes_claim",
        "scopes = []\nscopes_claim",
    );
    let server = TestServer::start_ready(&toml).await;
    let a = ask(
        &server,
        req("/x")
            .policy("cc")
            .basic("cc-readonly", "cc-readonly-secret"),
    )
    .await;
    a.assert_deny(403, "insufficient_scope");
}

#[tokio::test]
async fn idp_down_or_5xx_is_503_and_not_cached() {
    let (idp, server) = world().await;
    idp.set_mode(Mode::Down);
    // the token endpoint is down (keys were loaded at start)
    let a = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    a.assert_deny(503, "temporarily_unavailable");
    a.assert_not_echoing("cc-app-secret");
    idp.set_mode(Mode::Up);
    idp.state.token_status.store(502, Ordering::SeqCst);
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_deny(503, "temporarily_unavailable");
    idp.state.token_status.store(0, Ordering::SeqCst);
    idp.set_mode(Mode::Garbage);
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_deny(503, "temporarily_unavailable");
    idp.set_mode(Mode::Up);
    assert_eq!(
        ask(
            &server,
            req("/x").policy("cc").basic("cc-app", "cc-app-secret")
        )
        .await
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_token_request() {
    let (idp, server) = world().await;
    idp.set_mode(Mode::Slow(Duration::from_millis(200)));
    let r = req("/x")
        .policy("cc")
        .basic("cc-app", "cc-app-secret")
        .build();
    assert!(server.concurrent(200, r).await.iter().all(|s| *s == 200));
    assert_eq!(
        idp.token_hits(),
        1,
        "200 concurrent Checks with one credential -> one token request"
    );
}

#[tokio::test]
async fn cached_token_is_replaced_before_it_expires() {
    let (idp, server) = world().await;
    idp.state.expires_in.store(2, Ordering::SeqCst);
    let first = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    let again = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    assert_eq!(auth_header(&first), auth_header(&again));
    assert_eq!(idp.token_hits(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    assert_eq!(later.status, 200);
    assert_eq!(idp.token_hits(), 2, "an expired cached token is replaced");
    assert_ne!(auth_header(&first), auth_header(&later));
}

#[tokio::test]
async fn credentials_from_headers_are_stripped_upstream() {
    let (_idp, server) = world().await;
    let a = ask(
        &server,
        req("/x")
            .policy("cc")
            .header("client_id", "cc-app")
            .header("client_secret", "cc-app-secret"),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.remove.contains(&"client_id".to_string())
            && a.remove.contains(&"client_secret".to_string()),
        "{a:?}"
    );
    assert!(auth_header(&a).starts_with("Bearer "));
    // a policy without client_credentials_param_type = ["header"] ignores them
    ask(
        &server,
        req("/x")
            .policy("cc_only")
            .header("client_id", "cc-app")
            .header("client_secret", "cc-app-secret"),
    )
    .await
    .assert_deny(401, "invalid_token");
}

#[tokio::test]
async fn client_secret_post_when_discovery_says_so() {
    let idp = MockIdp::start().await;
    *idp.state.token_auth_methods.lock().unwrap() = vec!["client_secret_post".into()];
    let server = TestServer::start_ready(&config_toml(&idp, "")).await;
    assert_eq!(
        ask(
            &server,
            req("/x").policy("cc").basic("cc-app", "cc-app-secret")
        )
        .await
        .status,
        200
    );
    // and an explicit override wins over discovery
    let toml = config_toml(&idp, "").replace(
        "\nleeway_secs = 0",
        "\nleeway_secs = 0\ntoken_endpoint_auth_method = \"client_secret_basic\"",
    );
    let server = TestServer::start_ready(&toml).await;
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_deny(401, "invalid_client");
}

#[tokio::test]
async fn opaque_issued_token_is_refused_without_introspection() {
    let (idp, server) = world().await;
    idp.state.opaque_tokens.store(true, Ordering::SeqCst);
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_deny(401, "invalid_token");
}

#[tokio::test]
async fn cache_metrics_count_hits_and_misses() {
    let (_idp, server) = world().await;
    for _ in 0..4 {
        assert_eq!(
            ask(
                &server,
                req("/x").policy("cc").basic("cc-app", "cc-app-secret")
            )
            .await
            .status,
            200
        );
    }
    let (_, m) = server.admin_get("/metrics").await;
    let get = |s: &str| metric(&m, s);
    assert_eq!(
        get("oidc_authz_cache_lookups_total{cache=\"client_credentials\",result=\"hit\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(
        get("oidc_authz_cache_lookups_total{cache=\"client_credentials\",result=\"miss\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        get("oidc_authz_idp_requests_total{provider=\"okta\",endpoint=\"token\",outcome=\"ok\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn rate_limited_token_endpoint_is_503_and_not_cached() {
    let (idp, server) = world().await;
    idp.state.token_status.store(429, Ordering::SeqCst);
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_deny(503, "temporarily_unavailable");
    idp.state.token_status.store(0, Ordering::SeqCst);
    assert_eq!(
        ask(
            &server,
            req("/x").policy("cc").basic("cc-app", "cc-app-secret")
        )
        .await
        .status,
        200
    );
}
