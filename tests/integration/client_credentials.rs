//! `client_credentials` against the in-process mock IdP: the grant, the token cache (hits, expiry, coalescing,
//! negative cache), the answers (401 with Basic challenge, invalid_client, 403, 503) and what goes upstream; the
//! lock-out of a client id after repeated refusals and the grant bucket per provider.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

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
        a.assert_allow();
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
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_allow();
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
    // the policy requests no scope, so the IdP grants all the client may have (cc-readonly: api:write only)
    let (_idp, server) = world_with(|c| {
        c.edit(
            "scopes = [\"api:read\"]\nscopes_claim",
            "scopes = []\nscopes_claim",
        )
    })
    .await;
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
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_allow();
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
    let (idp, server, clock) = world_with_clock(|c| c).await;
    idp.state.expires_in.store(60, Ordering::SeqCst);
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
    // 55 s into the token's 60: the server replaces it ahead of its expiry (and the new token is valid then)
    clock.advance(55);
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
    a.assert_allow();
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
    let server = serve(&idp).ready().await;
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_allow();
    // and an explicit override wins over discovery
    let server = serve(&idp)
        .okta("token_endpoint_auth_method = \"client_secret_basic\"")
        .ready()
        .await;
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
        ask(
            &server,
            req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
        )
        .await
        .assert_allow();
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
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_allow();
}

/// Sends every request at once, each on its own task; returns the answers in order.
async fn all_at_once(server: &TestServer, reqs: Vec<Req>) -> Vec<Answer> {
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.client().await);
    }
    let tasks: Vec<_> = reqs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let mut c = clients[i % clients.len()].clone();
            tokio::spawn(
                async move { Answer::from(c.check(r.build()).await.unwrap().into_inner()) },
            )
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

const LOCKOUTS: &str = "oidc_authz_client_lockouts_total{provider=\"okta\"}";
const THROTTLED: &str = "oidc_authz_token_grants_throttled_total{provider=\"okta\"}";

#[tokio::test]
async fn distinct_wrong_secrets_reach_the_idp_at_most_threshold_times() {
    let (idp, server, clock) = world_with_clock(|c| c).await;
    assert_eq!(server.metric(LOCKOUTS).await, 0.0);
    // 200 different guesses at once: each is its own cache key, so no cache or coalescing helps
    let guesses = (0..200)
        .map(|i| {
            req("/x")
                .policy("cc")
                .basic("cc-app", &format!("guess-{i}"))
        })
        .collect();
    let answers = all_at_once(&server, guesses).await;
    for a in &answers {
        a.assert_deny(401, "invalid_client");
        assert!(
            a.header("www-authenticate")
                .unwrap()
                .starts_with("Basic realm=\"cc\"")
        );
        a.assert_not_echoing("guess-");
    }
    assert_eq!(
        idp.token_hits(),
        5,
        "client_lockout_threshold (5) refusals, then the client id is locked out"
    );
    let locked: Vec<_> = answers
        .iter()
        .filter_map(|a| a.header("retry-after"))
        .collect();
    assert_eq!(
        locked.len(),
        195,
        "every answer not from the IdP says when to retry"
    );
    assert!(locked.iter().all(|r| *r == "60"), "{locked:?}");
    assert_eq!(server.metric(LOCKOUTS).await, 1.0);

    // locked out: even the right secret (no token cached for it) is refused here, with the time left
    clock.advance(59);
    let a = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    a.assert_deny(401, "invalid_client");
    assert_eq!(a.header("retry-after"), Some("1"));
    a.assert_not_echoing("cc-app-secret");
    // a remembered refusal too
    let a = ask(&server, req("/x").policy("cc").basic("cc-app", "guess-0")).await;
    a.assert_deny(401, "invalid_client");
    assert_eq!(a.header("retry-after"), Some("1"));
    // credentials from headers are the same client id
    ask(
        &server,
        req("/x")
            .policy("cc")
            .header("client_id", "cc-app")
            .header("client_secret", "guess-from-headers"),
    )
    .await
    .assert_deny(401, "invalid_client");
    assert_eq!(
        idp.token_hits(),
        5,
        "nothing of a locked-out client id reaches the IdP"
    );
    // another client id is not locked out
    assert_eq!(
        ask(&server, req("/x").policy("cc").basic("cc-readonly", "nope"))
            .await
            .header("retry-after"),
        None
    );
    assert_eq!(idp.token_hits(), 6);

    // the cool-down ends: the right secret works, and the success starts a fresh count
    clock.advance(1);
    let a = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    a.assert_allow();
    assert_eq!(idp.token_hits(), 7);
    for i in 0..4 {
        let a = ask(
            &server,
            req("/x")
                .policy("cc")
                .basic("cc-app", &format!("again-{i}")),
        )
        .await;
        a.assert_deny(401, "invalid_client");
        assert_eq!(a.header("retry-after"), None, "below the threshold again");
    }
    assert_eq!(idp.token_hits(), 11);
    assert_eq!(server.metric(LOCKOUTS).await, 1.0);
}

#[tokio::test]
async fn a_cached_token_keeps_working_while_its_client_id_is_locked_out() {
    let (idp, server, _clock) = world_with_clock(|c| c).await;
    let first = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    first.assert_allow();
    for i in 0..5 {
        ask(
            &server,
            req("/x")
                .policy("cc")
                .basic("cc-app", &format!("guess-{i}")),
        )
        .await
        .assert_deny(401, "invalid_client");
    }
    assert_eq!(idp.token_hits(), 6);
    assert_eq!(server.metric(LOCKOUTS).await, 1.0);
    // the token already granted for the right secret is still served (from the cache, the IdP not asked)
    let again = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    again.assert_allow();
    assert_eq!(auth_header(&again), auth_header(&first));
    // a new grant with the known-good secret (the cc_only policy asks other scopes, as after the token expires)
    // is not locked out: the secret that last got a token skips the lock-out
    let a = ask(
        &server,
        req("/x").policy("cc_only").basic("cc-app", "cc-app-secret"),
    )
    .await;
    a.assert_allow();
    assert_eq!(idp.token_hits(), 7);
    // a guess is still locked out
    let a = ask(&server, req("/x").policy("cc").basic("cc-app", "guess-9")).await;
    a.assert_deny(401, "invalid_client");
    assert_eq!(a.header("retry-after"), Some("60"));
    assert_eq!(idp.token_hits(), 7);
}

#[tokio::test]
async fn the_known_good_secret_skips_an_empty_grant_bucket() {
    let (idp, server, _clock) =
        world_with_clock(|c| c.okta("client_credentials_rate = 1\nclient_credentials_burst = 2"))
            .await;
    let a = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    a.assert_allow();
    // a flood of random client ids empties the bucket
    let flood = (0..20)
        .map(|i| req("/x").policy("cc").basic(&format!("rnd-{i}"), "x"))
        .collect();
    let answers = all_at_once(&server, flood).await;
    assert!(
        answers.iter().any(|a| a.status == 503),
        "the bucket is spent"
    );
    assert_eq!(idp.token_hits(), 2);
    // the legitimate client's next grant (other scopes: not cached) still passes
    let a = ask(
        &server,
        req("/x").policy("cc_only").basic("cc-app", "cc-app-secret"),
    )
    .await;
    a.assert_allow();
    assert_eq!(idp.token_hits(), 3);
    // a fresh client id does not
    let a = ask(&server, req("/x").policy("cc").basic("cc-readonly", "nope")).await;
    assert_eq!(a.status, 503, "{a:?}");
}

#[tokio::test]
async fn lockout_threshold_and_cool_down_are_configurable_and_zero_turns_it_off() {
    let (idp, server, clock) =
        world_with_clock(|c| c.okta("client_lockout_threshold = 2\nclient_lockout_secs = 10"))
            .await;
    for i in 0..2 {
        ask(
            &server,
            req("/x").policy("cc").basic("cc-app", &format!("g{i}")),
        )
        .await;
    }
    let a = ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    assert_eq!(a.header("retry-after"), Some("10"), "{a:?}");
    clock.advance(10);
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_allow();
    assert_eq!(idp.token_hits(), 3);

    let (idp, server, _clock) = world_with_clock(|c| c.okta("client_lockout_threshold = 0")).await;
    for i in 0..12 {
        let a = ask(
            &server,
            req("/x").policy("cc").basic("cc-app", &format!("g{i}")),
        )
        .await;
        assert_eq!(a.header("retry-after"), None);
    }
    assert_eq!(idp.token_hits(), 12);
    assert_eq!(server.metric(LOCKOUTS).await, 0.0);
}

#[tokio::test]
async fn the_grant_bucket_caps_grants_across_many_distinct_valid_clients() {
    let (idp, server, clock) =
        world_with_clock(|c| c.okta("client_credentials_rate = 2\nclient_credentials_burst = 3"))
            .await;
    let ids: Vec<String> = (0..20).map(|i| format!("svc-{i}")).collect();
    for id in &ids {
        idp.state.clients.lock().unwrap().insert(
            id.clone(),
            (format!("{id}-secret"), vec!["api:read".into()]),
        );
    }
    let ask_all = |ids: &[String]| {
        ids.iter()
            .map(|id| req("/x").policy("cc").basic(id, &format!("{id}-secret")))
            .collect::<Vec<_>>()
    };
    let answers = all_at_once(&server, ask_all(&ids)).await;
    assert_eq!(
        idp.token_hits(),
        3,
        "client_credentials_burst grants, then none"
    );
    let granted: Vec<&String> = ids
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.status == 200)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(granted.len(), 3);
    for a in answers.iter().filter(|a| a.status != 200) {
        a.assert_deny(503, "temporarily_unavailable");
        assert_eq!(a.header("retry-after"), Some("1"));
        assert_eq!(a.grpc_code, 14, "UNAVAILABLE");
    }
    assert_eq!(server.metric(THROTTLED).await, 17.0);
    assert_eq!(
        server.metric(LOCKOUTS).await,
        0.0,
        "throttling is no refusal"
    );

    // cache hits never take from the bucket
    let cached: Vec<String> = granted.iter().map(|s| s.to_string()).collect();
    for _ in 0..5 {
        assert!(
            all_at_once(&server, ask_all(&cached))
                .await
                .iter()
                .all(|a| a.status == 200)
        );
    }
    assert_eq!(idp.token_hits(), 3);
    assert_eq!(server.metric(THROTTLED).await, 17.0);

    // a second later, client_credentials_rate more
    clock.advance(1);
    let answers = all_at_once(&server, ask_all(&ids)).await;
    assert_eq!(idp.token_hits(), 5);
    assert_eq!(answers.iter().filter(|a| a.status == 200).count(), 5);
    // wrong secrets take from the same bucket: guessing across client ids cannot pass it either
    clock.advance(100);
    let guesses = (0..50)
        .map(|i| req("/x").policy("cc").basic(&format!("ghost-{i}"), "x"))
        .collect();
    let answers = all_at_once(&server, guesses).await;
    assert_eq!(idp.token_hits(), 8);
    assert_eq!(answers.iter().filter(|a| a.status == 401).count(), 3);
    assert_eq!(answers.iter().filter(|a| a.status == 503).count(), 47);
}
