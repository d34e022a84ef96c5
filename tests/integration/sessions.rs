//! Sessions shared by replicas through a real Redis (two servers on one Redis, against the mock IdP): a login on
//! one replica works on the other, a logout on one is refused by the other, two replicas refreshing one session
//! make one refresh grant, Redis down means 503 for sessions (never an allow) while tokens keep working, and
//! nothing readable is left in Redis.

use std::sync::atomic::Ordering;
use std::time::Duration;

use oidc_authz::config::Secret;
use oidc_authz::login::cookie::CookieCodec;
use serde_json::json;

use crate::login::{Browser, at_once, login, session_cookie, with_cookie};
use crate::support::*;

/// The `login` policy with its sessions in the store.
fn store_sessions(s: Setup) -> Setup {
    s.edit(
        "upstream_id_token_header = \"x-id-token\"",
        "upstream_id_token_header = \"x-id-token\"\nsession_storage = \"store\"",
    )
}

/// Two replicas of the standard config (edited by `edit`) sharing `redis`, their stores answering.
async fn replicas(
    idp: &MockIdp,
    redis: &RedisServer,
    edit: impl Fn(Setup) -> Setup,
) -> (TestServer, TestServer) {
    let a = edit(serve(idp)).redis(&redis.url()).ready().await;
    let b = edit(serve(idp)).redis(&redis.url()).ready().await;
    a.wait_store().await;
    b.wait_store().await;
    (a, b)
}

/// Two replicas (the standard config edited by `edit`) on `redis` and manual clocks, and alice logged in through
/// the first (her session seen by the second) with a 60 s access token, then 61 s later: the session needs a
/// refresh, and the provider rotates refresh tokens.
async fn expiring_session(
    idp: &MockIdp,
    redis: &RedisServer,
    edit: impl Fn(Setup) -> Setup,
) -> (TestServer, TestServer, Browser) {
    idp.state.expires_in.store(60, Ordering::SeqCst);
    idp.state
        .rotate_refresh_tokens
        .store(true, Ordering::SeqCst);
    let (a, clock_a) = edit(serve(idp))
        .redis(&redis.url())
        .ready_with_clock()
        .await;
    let (b, clock_b) = edit(serve(idp))
        .redis(&redis.url())
        .ready_with_clock()
        .await;
    a.wait_store().await;
    b.wait_store().await;
    let mut alice = Browser::new();
    login(&a, idp, &mut alice, "/app", "login", "alice").await;
    ask(&b, with_cookie("/app", &session_cookie(&alice)))
        .await
        .assert_allow();
    clock_a.advance(61);
    clock_b.advance(61);
    idp.advance(61);
    (a, b, alice)
}

/// Asks `r()` until the answer is not 200, within 30 s: the first such answer.
async fn refused_within_budget(server: &TestServer, r: impl Fn() -> Req) -> Answer {
    for _ in 0..300 {
        let a = ask(server, r()).await;
        if a.status != 200 {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still allowed after 30 s");
}

/// Every secret a run produced that must never be readable in Redis: tokens sent upstream (and their JWT payloads),
/// refresh tokens and codes the IdP issued, cookie values, the user's email.
fn secrets(idp: &MockIdp, answers: &[&Answer], browsers: &[&Browser]) -> Vec<String> {
    let mut out = vec!["alice@example.com".to_string()];
    for a in answers {
        for h in ["authorization", "x-id-token"] {
            if let Some(v) = a.header(h) {
                let token = v.trim_start_matches("Bearer ").to_string();
                if let Some(payload) = token.split('.').nth(1) {
                    out.push(payload.to_string());
                }
                out.push(token);
            }
        }
    }
    out.extend(idp.state.refresh_tokens.lock().unwrap().keys().cloned());
    out.extend(idp.state.codes.lock().unwrap().keys().cloned());
    for b in browsers {
        out.extend(b.jar.iter().map(|(_, v)| v.clone()));
    }
    out.retain(|s| s.len() >= 8);
    out
}

/// Nothing of `secrets` in a key or a value of `redis`, and only hashed keys under the prefix.
async fn nothing_readable(redis: &RedisServer, secrets: &[String]) {
    let at_rest = redis.dump().await;
    assert!(!at_rest.is_empty(), "the run stored something");
    for (k, v) in &at_rest {
        assert!(k.starts_with("oidc-authz-test:"), "{k}");
        let v = String::from_utf8_lossy(v);
        for s in secrets {
            assert!(!k.contains(s.as_str()), "a secret in key {k}");
            assert!(!v.contains(s.as_str()), "a secret in the value of {k}");
        }
    }
}

/// The lifetimes (TTL, seconds) of the server-side sessions in `redis`.
async fn session_ttls(redis: &RedisServer) -> Vec<i64> {
    let client = redis::Client::open(redis.url()).expect("a client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("a connection");
    let mut out = Vec::new();
    for (k, _) in redis.dump().await {
        if k.starts_with("oidc-authz-test:session:") {
            let ttl: i64 = redis::cmd("TTL")
                .arg(&k)
                .query_async(&mut c)
                .await
                .expect("TTL");
            out.push(ttl);
        }
    }
    out
}

/// `session_storage = "store"`: logged in through A, the session works on B; the cookie is one small value of
/// constant size holding no token; logout through A is refused on B (and on A), and the session is gone from Redis.
#[tokio::test]
async fn a_store_session_works_on_every_replica_and_a_logout_ends_it_everywhere() {
    let redis = RedisServer::start().await;
    let idp = MockIdp::start().await;
    let (a, b) = replicas(&idp, &redis, store_sessions).await;
    let mut alice = Browser::new();
    login(&a, &idp, &mut alice, "/app", "login", "alice").await;
    let mut bob = Browser::new();
    login(&b, &idp, &mut bob, "/app", "login", "bob").await;
    let on_b = ask(&b, alice.req("/app", "login")).await;
    on_b.assert_allow();
    assert_eq!(on_b.header("x-user"), Some("alice"));
    let on_a = ask(&a, bob.req("/app", "login")).await;
    assert_eq!(on_a.header("x-user"), Some("bob"), "{on_a:?}");
    // the cookie names the session only: one small value, the same size for every session, no token in it
    let cookies: Vec<&(String, String)> = alice
        .jar
        .iter()
        .filter(|(n, _)| n.starts_with("oidc_authz_session"))
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let value = &cookies[0].1;
    assert!(value.len() < 200, "{} bytes", value.len());
    assert_eq!(
        value.len(),
        session_cookie(&bob).len() - "oidc_authz_session=".len()
    );
    let at = on_b
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ");
    let it = on_b.header("x-id-token").unwrap();
    for token in [at, it] {
        for part in token.split('.') {
            assert!(!value.contains(part), "a token part in the cookie");
        }
    }
    let copy = session_cookie(&alice);
    let mut secrets = secrets(&idp, &[&on_a, &on_b], &[&alice, &bob]);
    // the session id sealed in the cookie (the login policy's first session secret opens it)
    let codec = CookieCodec::new(&[Secret::new("fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg=")])
        .expect("the login policy's secret");
    let sid = codec
        .open("oidc_authz_session", value)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("sid:").map(str::to_string))
        .expect("the cookie holds a sealed session id");
    secrets.push(sid);
    // in Redis: one entry per session, living the idle timeout (600 s; the absolute one is 3600 s)
    let sessions = session_ttls(&redis).await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(sessions.iter().all(|t| *t > 0 && *t <= 600), "{sessions:?}");
    // logout through A: B refuses the session (polled within a budget; the assertion is on the answer)
    let out = ask(&a, alice.req("/oauth2/logout", "login").method("POST")).await;
    assert_eq!(out.status, 302, "{out:?}");
    let refused = refused_within_budget(&b, || with_cookie("/app", &copy)).await;
    assert_eq!(refused.status, 302, "to the login: {refused:?}");
    assert!(
        refused
            .cookies_cleared()
            .contains(&"oidc_authz_session".to_string())
    );
    assert_eq!(ask(&a, with_cookie("/app", &copy)).await.status, 302);
    // bob's session is not affected
    ask(&b, bob.req("/app", "login")).await.assert_allow();
    assert_eq!(
        session_ttls(&redis).await.len(),
        1,
        "alice's session is deleted"
    );
    nothing_readable(&redis, &secrets).await;
}

/// `session_storage = "cookie"`: the session is in the cookie, yet a copy of it made before a logout on A is
/// refused on B (the ended session is in the store).
#[tokio::test]
async fn a_copied_cookie_session_dies_on_the_other_replica_after_logout() {
    let redis = RedisServer::start().await;
    let idp = MockIdp::start().await;
    let (a, b) = replicas(&idp, &redis, |s| s).await;
    let mut alice = Browser::new();
    login(&a, &idp, &mut alice, "/app", "login", "alice").await;
    let copy = session_cookie(&alice);
    let on_b = ask(&b, with_cookie("/app", &copy)).await;
    on_b.assert_allow();
    let out = ask(&a, alice.req("/oauth2/logout", "login").method("POST")).await;
    assert_eq!(out.status, 302, "{out:?}");
    let refused = refused_within_budget(&b, || with_cookie("/app", &copy)).await;
    assert_eq!(refused.status, 302, "to the login: {refused:?}");
    ask(
        &b,
        with_cookie("/app", &copy).header("x-requested-with", "XMLHttpRequest"),
    )
    .await
    .assert_deny(401, "invalid_token");
    let secrets = secrets(&idp, &[&on_b], &[&alice]);
    nothing_readable(&redis, &secrets).await;
}

/// Two replicas meeting one expired session at once (rotating refresh tokens, both storages): one refresh grant
/// at the provider, every answer an allow with the refreshed session, and the new cookie works on both.
#[tokio::test]
async fn two_replicas_refreshing_one_session_make_one_refresh_grant() {
    for store in [false, true] {
        let redis = RedisServer::start().await;
        let idp = MockIdp::start().await;
        let edit = |s: Setup| if store { store_sessions(s) } else { s };
        let (a, b, mut alice) = expiring_session(&idp, &redis, edit).await;
        let old = session_cookie(&alice);
        let hits = idp.token_hits();
        let answers = at_once(&[&a, &b], 20, &old).await;
        assert_eq!(
            idp.token_hits(),
            hits + 1,
            "one refresh grant (store: {store})"
        );
        for r in &answers {
            r.assert_allow();
            assert_eq!(r.header("x-user"), Some("alice"));
        }
        let upstream: std::collections::HashSet<_> = answers
            .iter()
            .map(|r| r.header("authorization").unwrap().to_string())
            .collect();
        assert_eq!(upstream.len(), 1, "one refreshed access token everywhere");
        alice.absorb(&answers[0]);
        ask(&a, alice.req("/app", "login")).await.assert_allow();
        ask(&b, alice.req("/app", "login")).await.assert_allow();
        assert_eq!(idp.token_hits(), hits + 1);
        let answers: Vec<&Answer> = answers.iter().collect();
        let secrets = secrets(&idp, &answers, &[&alice]);
        nothing_readable(&redis, &secrets).await;
    }
}

/// Redis stopped: a Check on a store session and a Check on a cookie session (its ended check) answer 503,
/// never an allow; a token Check still answers 200. Redis back (empty): a new login works again by itself.
#[tokio::test]
async fn redis_down_fails_sessions_closed_and_tokens_keep_working() {
    let mut redis = RedisServer::start().await;
    let idp = MockIdp::start().await;
    let server = store_sessions(serve(&idp))
        .redis(&redis.url())
        .ready()
        .await;
    server.wait_store().await;
    let mut stored = Browser::new();
    login(&server, &idp, &mut stored, "/app", "login", "alice").await;
    ask(&server, stored.req("/app", "login"))
        .await
        .assert_allow();
    let mut cookie = Browser::new();
    login(&server, &idp, &mut cookie, "/group/x", "group", "alice").await;
    ask(&server, cookie.req("/group/x", "group"))
        .await
        .assert_allow();
    redis.stop();
    let down = refused_within_budget(&server, || stored.req("/app", "login")).await;
    down.assert_deny(503, "temporarily_unavailable");
    let down = refused_within_budget(&server, || cookie.req("/group/x", "group")).await;
    down.assert_deny(503, "temporarily_unavailable");
    let token = idp.mint(json!({}));
    ask(&server, req("/x").policy("api").bearer(&token))
        .await
        .assert_allow();
    // a logout cannot be recorded: 503, not a logout that other replicas would never hear of
    ask(
        &server,
        stored.req("/oauth2/logout", "login").method("POST"),
    )
    .await
    .assert_deny(503, "temporarily_unavailable");
    redis.restart().await;
    server.wait_store().await;
    let mut again = Browser::new();
    login(&server, &idp, &mut again, "/app", "login", "alice").await;
    ask(&server, again.req("/app", "login"))
        .await
        .assert_allow();
}

/// A replica whose session is being refreshed by another (the provider holding that grant) waits for the
/// result within half the check timeout, then answers 503: it never runs a second refresh grant.
#[tokio::test]
async fn a_replica_waiting_for_another_replicas_refresh_answers_503_not_a_second_grant() {
    let redis = RedisServer::start().await;
    let idp = MockIdp::start().await;
    let edit = |s: Setup| s.edit("check_timeout_ms = 60000", "check_timeout_ms = 4000");
    let (a, b, alice) = expiring_session(&idp, &redis, edit).await;
    let old = session_cookie(&alice);
    let hits = idp.token_hits();
    idp.set_mode(Mode::Held);
    let mut client = a.client().await;
    let r = with_cookie("/app", &old).build();
    let held = tokio::spawn(async move { client.check(r).await.map(|_| ()) });
    for _ in 0..300 {
        if idp.token_hits() > hits {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        idp.token_hits(),
        hits + 1,
        "A's refresh grant reached the provider"
    );
    let waited = ask(&b, with_cookie("/app", &old)).await;
    waited.assert_deny(503, "temporarily_unavailable");
    assert!(
        waited.body.contains("the session is being refreshed"),
        "B waited for A's refresh (not a store or deadline 503): {}",
        waited.body
    );
    assert_eq!(waited.header("retry-after"), Some("1"));
    assert_eq!(
        idp.token_hits(),
        hits + 1,
        "B ran no refresh grant of its own"
    );
    idp.set_mode(Mode::Up);
    let _ = held.await;
}

/// `session_storage = "store"` on the default memory backend (one process): the login, the session, the logout
/// and a refresh behave as with cookie sessions, and the cookie stays one small value across the refresh.
#[tokio::test]
async fn store_sessions_on_the_memory_backend_log_in_refresh_and_log_out() {
    let idp = MockIdp::start().await;
    idp.state.expires_in.store(60, Ordering::SeqCst);
    idp.state
        .rotate_refresh_tokens
        .store(true, Ordering::SeqCst);
    let (server, clock) = store_sessions(serve(&idp)).ready_with_clock().await;
    let mut alice = Browser::new();
    login(&server, &idp, &mut alice, "/app", "login", "alice").await;
    let first = ask(&server, alice.req("/app", "login")).await;
    first.assert_allow();
    let copy = session_cookie(&alice);
    assert!(copy.len() < 200, "{copy}");
    clock.advance(61);
    idp.advance(61);
    let hits = idp.token_hits();
    let refreshed = ask(&server, alice.req("/app", "login")).await;
    refreshed.assert_allow();
    assert_eq!(idp.token_hits(), hits + 1);
    assert_ne!(
        refreshed.header("authorization"),
        first.header("authorization"),
        "the refreshed access token goes upstream"
    );
    alice.absorb(&refreshed);
    assert_eq!(session_cookie(&alice).len(), copy.len(), "constant size");
    ask(&server, with_cookie("/app", &copy))
        .await
        .assert_allow();
    let out = ask(&server, alice.req("/oauth2/logout", "login").method("POST")).await;
    assert_eq!(out.status, 302, "{out:?}");
    assert_eq!(ask(&server, with_cookie("/app", &copy)).await.status, 302);
}

/// The sum of the `oidc_authz_store_requests_total` samples of `op` that succeeded.
async fn store_ops(server: &TestServer, op: &str) -> f64 {
    let (_, text) = server.admin_get("/metrics").await;
    let prefix = format!("oidc_authz_store_requests_total{{op=\"{op}\",outcome=\"ok\"}}");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A store session's last-seen update is saved once, not by every Check until the local copy expires: the local
/// copy becomes the updated session (the cookie naming it does not change).
#[tokio::test]
async fn a_store_sessions_last_seen_is_saved_once() {
    let idp = MockIdp::start().await;
    let (server, clock) = store_sessions(serve(&idp)).ready_with_clock().await;
    let mut alice = Browser::new();
    login(&server, &idp, &mut alice, "/app", "login", "alice").await;
    ask(&server, alice.req("/app", "login"))
        .await
        .assert_allow();
    clock.advance(61);
    let before = store_ops(&server, "set").await;
    for _ in 0..20 {
        ask(&server, alice.req("/app", "login"))
            .await
            .assert_allow();
    }
    assert_eq!(
        store_ops(&server, "set").await - before,
        1.0,
        "one save of the last-seen time for 20 Checks"
    );
}
