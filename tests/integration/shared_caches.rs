//! The token methods' caches shared by two replicas over one real Redis, against the mock IdP: introspection
//! answers, client-credentials grants, the lock-out of a guessed client id and the JWKS refetch limiter; Redis
//! down (the token methods keep answering) and back (sharing resumes); nothing readable left in Redis.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::support::*;

/// The `[store]` table of replicas sharing `redis`.
fn store_toml(redis: &RedisServer) -> String {
    let bytes: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let secret = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"t13:\"\nsecret = \"{secret}\"\ntimeout_ms = 2000\n",
        redis.url()
    )
}

/// Two replicas (A and B) of the standard config (edited by `edit`) sharing `redis`, ready, their stores connected.
async fn replicas(
    idp: &MockIdp,
    redis: &RedisServer,
    edit: impl Fn(Setup) -> Setup,
) -> (TestServer, TestServer) {
    let a = edit(serve(idp)).extra(&store_toml(redis)).ready().await;
    let b = edit(serve(idp)).extra(&store_toml(redis)).ready().await;
    for s in [&a, &b] {
        connected(s).await;
    }
    (a, b)
}

/// Waits until the replica's store answers (it connects in the background), within a generous budget.
async fn connected(s: &TestServer) {
    for _ in 0..300 {
        if s.authorizer.store().ping().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store did not connect in 30 s");
}

/// `n` copies of `r`, half through A and half through B, all at once: every answer's status.
async fn burst(a: &TestServer, b: &TestServer, n: usize, r: Req) -> Vec<u16> {
    let r = r.build();
    let (x, y) = tokio::join!(a.concurrent(n / 2, r.clone()), b.concurrent(n - n / 2, r));
    x.into_iter().chain(y).collect()
}

/// Nothing in Redis names a token, a secret or a code: keys are hashes under the prefix, values sealed; and
/// something of each of `kinds` is there.
async fn nothing_readable(redis: &RedisServer, secrets: &[&str], kinds: &[&str]) {
    let at_rest = redis.dump().await;
    for kind in kinds {
        let prefix = format!("t13:{kind}:");
        assert!(
            at_rest.iter().any(|(k, _)| k.starts_with(&prefix)),
            "no {kind} entry in {:?}",
            at_rest.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
    }
    for (k, v) in &at_rest {
        assert!(k.starts_with("t13:"), "{k}");
        let v = String::from_utf8_lossy(v);
        for s in secrets {
            assert!(!k.contains(s) && !v.contains(s), "{s:?} at rest under {k}");
        }
        // (only strings of 5 characters or more: shorter ones may occur in sealed bytes by chance)
        for plain in ["cc-app", "guess", "secret", "alice", "Bearer"] {
            assert!(
                !k.contains(plain) && !v.contains(plain),
                "{plain:?} at rest under {k}"
            );
        }
    }
}

/// A cold burst of 1000 Checks for one new opaque token over both replicas asks the IdP at most once per
/// replica; a token one replica has asked about costs the other nothing; a negative answer is shared too.
#[tokio::test]
async fn introspection_answers_are_shared() {
    let idp = MockIdp::start().await;
    let redis = RedisServer::start().await;
    let (a, b) = replicas(&idp, &redis, |c| c).await;

    let t = idp.opaque(json!({}));
    let statuses = burst(&a, &b, 1000, req("/x").policy("intro").bearer(&t)).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let cold = idp.introspect_hits();
    assert!(
        (1..=2).contains(&cold),
        "cold burst: {cold} introspection calls"
    );
    println!("cold burst of 1000 over 2 replicas: {cold} introspection call(s)");

    // another new token: A asks the IdP once, then a burst over B (which never saw it) asks nothing
    let t2 = idp.opaque(json!({}));
    ask(&a, req("/x").policy("intro").bearer(&t2))
        .await
        .assert_allow();
    assert_eq!(idp.introspect_hits(), cold + 1);
    let statuses = b
        .concurrent(500, req("/x").policy("intro").bearer(&t2).build())
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(idp.introspect_hits(), cold + 1, "B used A's stored answer");
    // and another burst over both: nothing more
    let statuses = burst(&a, &b, 1000, req("/x").policy("intro").bearer(&t2)).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(idp.introspect_hits(), cold + 1, "stored: no IdP call");

    // an inactive token's answer is shared for cache_ttl_neg_secs
    ask(&a, req("/x").policy("intro").bearer("op-never-issued"))
        .await
        .assert_deny(401, "invalid_token");
    ask(&b, req("/x").policy("intro").bearer("op-never-issued"))
        .await
        .assert_deny(401, "invalid_token");
    assert_eq!(
        idp.introspect_hits(),
        cold + 2,
        "B used A's negative answer"
    );
    // the claims B serves are the IdP's
    let via_b = ask(&b, req("/x").policy("intro").bearer(&t2)).await;
    assert_eq!(via_b.header("x-user"), Some("alice@example.com"));

    nothing_readable(&redis, &[&t, &t2, "op-never-issued"], &["introspection"]).await;
}

/// A client-credentials token granted through A is served by B without a grant; a refusal is remembered for both.
#[tokio::test]
async fn client_credentials_tokens_are_shared() {
    let idp = MockIdp::start().await;
    let redis = RedisServer::start().await;
    let (a, b) = replicas(&idp, &redis, |c| c).await;

    let via_a = ask(&a, req("/x").policy("cc").basic("cc-app", "cc-app-secret")).await;
    via_a.assert_allow();
    assert_eq!(idp.token_hits(), 1);
    let via_b = ask(&b, req("/x").policy("cc").basic("cc-app", "cc-app-secret")).await;
    via_b.assert_allow();
    assert_eq!(idp.token_hits(), 1, "B served A's token without a grant");
    let token = via_a.header("authorization").expect("a token upstream");
    assert_eq!(via_b.header("authorization"), Some(token), "the same token");
    // a burst over both: no grant
    let statuses = burst(
        &a,
        &b,
        200,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(idp.token_hits(), 1);

    // a refused secret is remembered for both
    ask(&a, req("/x").policy("cc").basic("cc-app", "wrong-one"))
        .await
        .assert_deny(401, "invalid_client");
    ask(&b, req("/x").policy("cc").basic("cc-app", "wrong-one"))
        .await
        .assert_deny(401, "invalid_client");
    assert_eq!(idp.token_hits(), 2, "B used A's remembered refusal");

    let token = token.trim_start_matches("Bearer ").to_string();
    nothing_readable(
        &redis,
        &[&token, "cc-app-secret", "wrong-one", "oidc-authz-secret"],
        &["cc", "cc-good"],
    )
    .await;
}

/// Wrong secrets spread over A and B lock the client id out after the threshold in total, on both; the secret
/// that last got a token (through A) still gets one through B.
#[tokio::test]
async fn guessing_is_counted_over_both_replicas() {
    let idp = MockIdp::start().await;
    let redis = RedisServer::start().await;
    let (a, b) = replicas(&idp, &redis, |c| c).await;
    // the right secret gets a token through A: known good on both
    ask(&a, req("/x").policy("cc").basic("cc-app", "cc-app-secret"))
        .await
        .assert_allow();
    assert_eq!(idp.token_hits(), 1);

    // client_lockout_threshold = 5: guesses 0..5 alternate between A and B and reach the IdP
    for i in 0..5 {
        let s = if i % 2 == 0 { &a } else { &b };
        let g = ask(
            s,
            req("/x")
                .policy("cc")
                .basic("cc-app", &format!("guess-{i}")),
        )
        .await;
        g.assert_deny(401, "invalid_client");
        assert_eq!(
            g.header("retry-after"),
            None,
            "guess {i} is below the threshold"
        );
    }
    assert_eq!(idp.token_hits(), 6);
    // the threshold is reached in total (3 on A, 2 on B): locked out on both, the IdP not asked
    for (i, s) in [&a, &b, &a, &b].into_iter().enumerate() {
        let g = ask(
            s,
            req("/x").policy("cc").basic("cc-app", &format!("more-{i}")),
        )
        .await;
        g.assert_deny(401, "invalid_client");
        assert!(
            g.header("retry-after").is_some(),
            "locked out: says when to retry"
        );
    }
    assert_eq!(
        idp.token_hits(),
        6,
        "nothing of a locked-out client id reaches the IdP"
    );
    let lockouts = a.metric(LOCKOUTS).await + b.metric(LOCKOUTS).await;
    assert_eq!(lockouts, 1.0, "one lock-out, started by one replica");

    // B never got a token for cc-app, but the secret that last got one (through A) is known good everywhere:
    // a new grant for other scopes goes through
    ask(
        &b,
        req("/x").policy("cc_only").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_allow();
    assert_eq!(idp.token_hits(), 7);

    // another client id: a burst of distinct guesses over both replicas at once reaches the IdP at most
    // threshold + 1 times (one grant may be in flight on the other replica when the count reaches it)
    let before = idp.token_hits();
    let r = |i: usize| {
        req("/x")
            .policy("cc")
            .basic("cc-readonly", &format!("burst-{i}"))
            .build()
    };
    let (x, y) = tokio::join!(
        async {
            let mut c = a.client().await;
            for i in 0..20 {
                c.check(r(2 * i)).await.unwrap();
            }
        },
        async {
            let mut c = b.client().await;
            for i in 0..20 {
                c.check(r(2 * i + 1)).await.unwrap();
            }
        }
    );
    let _ = (x, y);
    let calls = idp.token_hits() - before;
    assert!(
        (5..=6).contains(&calls),
        "{calls} grants for 40 guesses over 2 replicas"
    );

    println!("40 distinct guesses over 2 replicas at once: {calls} grants");
    nothing_readable(
        &redis,
        &["cc-app-secret", "guess-", "more-", "burst-"],
        &["cc-good", "cc-lockout"],
    )
    .await;
}

const LOCKOUTS: &str = "oidc_authz_client_lockouts_total{provider=\"okta\"}";

/// Unknown kids sent to both replicas: at most one JWKS refetch per jwks_min_refetch window in all.
#[tokio::test]
async fn the_jwks_refetch_limit_holds_across_replicas() {
    let idp = MockIdp::start().await;
    let redis = RedisServer::start().await;
    let (a, b) = replicas(&idp, &redis, |c| {
        c.edit("jwks_min_refetch_secs = 0", "jwks_min_refetch_secs = 60")
    })
    .await;
    let before = idp.jwks_hits();
    let other = SigningKey::rsa2();
    let mut reqs = Vec::new();
    for i in 0..40 {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(format!("random-{i}"));
        let t = other.sign_with_header(&h, &idp.claims(json!({})));
        reqs.push(req("/x").policy("api").bearer(&t).build());
    }
    let (x, y) = tokio::join!(
        async {
            let mut out = Vec::new();
            for r in reqs.iter().step_by(2) {
                out.push(a.check(r.clone()).await);
            }
            out
        },
        async {
            let mut out = Vec::new();
            for r in reqs.iter().skip(1).step_by(2) {
                out.push(b.check(r.clone()).await);
            }
            out
        }
    );
    for r in x.into_iter().chain(y) {
        Answer::from(r).assert_deny(401, "invalid_token");
    }
    let calls = idp.jwks_hits() - before;
    assert_eq!(calls, 1, "one JWKS refetch for both replicas in the window");
    nothing_readable(&redis, &[], &["jwks-refetch"]).await;
    // each replica still verifies tokens with its own keys
    let good = idp.mint(json!({}));
    for s in [&a, &b] {
        ask(s, req("/x").policy("api").bearer(&good))
            .await
            .assert_allow();
    }
}

/// Redis stopped: bearer, introspection and client-credentials Checks are still answered (200), asking the IdP
/// as needed; Redis back: the replicas share again by themselves.
#[tokio::test]
async fn redis_down_token_methods_keep_working_and_sharing_resumes() {
    let idp = MockIdp::start().await;
    let mut redis = RedisServer::start().await;
    let (a, b) = replicas(&idp, &redis, |c| c).await;
    redis.stop();

    let jwt = idp.mint(json!({}));
    let opaque = idp.opaque(json!({}));
    for s in [&a, &b] {
        ask(s, req("/x").policy("api").bearer(&jwt))
            .await
            .assert_allow();
        ask(s, req("/x").policy("intro").bearer(&opaque))
            .await
            .assert_allow();
        ask(s, req("/x").policy("cc").basic("cc-app", "cc-app-secret"))
            .await
            .assert_allow();
    }
    assert_eq!(idp.introspect_hits(), 2, "each replica asked the IdP once");
    assert_eq!(idp.token_hits(), 2, "each replica got its own token");
    // guesses are still counted (per replica) and the IdP still answers them
    ask(&a, req("/x").policy("cc").basic("cc-app", "while-down"))
        .await
        .assert_deny(401, "invalid_client");
    assert!(
        a.metric("oidc_authz_store_requests_total{op=\"get\",outcome=\"error\"}")
            .await
            >= 1.0
    );

    redis.restart().await;
    connected(&a).await;
    connected(&b).await;
    // sharing resumes: a new token asked through A, then B, costs one IdP call (within a generous budget: each
    // replica leaves a failed store alone for a moment)
    for _ in 0..150 {
        let t = idp.opaque(json!({}));
        let before = idp.introspect_hits();
        ask(&a, req("/x").policy("intro").bearer(&t))
            .await
            .assert_allow();
        ask(&b, req("/x").policy("intro").bearer(&t))
            .await
            .assert_allow();
        if idp.introspect_hits() - before == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the replicas did not share again within 30 s of Redis coming back");
}

/// Replicas on different configs (a rollout): an active answer A stored is checked again against B's provider
/// config, so B never allows a token its own config refuses.
#[tokio::test]
async fn a_stored_answer_is_checked_against_each_replicas_config() {
    let idp = MockIdp::start().await;
    let redis = RedisServer::start().await;
    let a = serve(&idp).extra(&store_toml(&redis)).ready().await;
    let b = serve(&idp)
        .edit(
            "audiences = [\"api://default\"]",
            "audiences = [\"api://other\"]",
        )
        .extra(&store_toml(&redis))
        .ready()
        .await;
    connected(&a).await;
    connected(&b).await;
    let t = idp.opaque(json!({}));
    ask(&a, req("/x").policy("intro").bearer(&t))
        .await
        .assert_allow();
    assert_eq!(idp.introspect_hits(), 1);
    ask(&b, req("/x").policy("intro").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
    assert_eq!(idp.introspect_hits(), 2, "B asked for its own judgement");
}
