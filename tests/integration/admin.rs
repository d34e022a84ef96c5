//! The admin API (gRPC on the admin address, next to /healthz /readyz /metrics), driven by its tonic client against
//! the real server and the mock IdP: Explain (a dry run: no IdP call, no token echoed), ListSessions and
//! RevokeSessions (by user, by id), and the session index shared through a real Redis.

use std::collections::HashMap;
use std::time::Duration;

use oidc_authz::admin::pb;
use oidc_authz::admin::pb::admin_client::AdminClient;
use oidc_authz::admin::pb::revoke_sessions_request::Target;
use serde_json::json;
use tonic::transport::Channel;

use crate::support::*;

const APP: &str = "app.example.com";

async fn admin(server: &TestServer) -> AdminClient<Channel> {
    AdminClient::connect(format!("http://{}", server.admin_addr))
        .await
        .expect("the admin API answers")
}

/// A browser's cookie jar.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, a: &Answer) {
        for name in a.cookies_cleared() {
            self.0.retain(|(n, _)| *n != name);
        }
        for (n, v) in a.cookies_set() {
            self.0.retain(|(k, _)| *k != n);
            self.0.push((n, v));
        }
    }

    fn values(&self) -> Vec<String> {
        self.0.iter().map(|(_, v)| v.clone()).collect()
    }

    fn get(&self, path: &str) -> Req {
        let r = req(path)
            .host(APP)
            .policy("login")
            .header("accept", "text/html");
        if self.0.is_empty() {
            return r;
        }
        let cookie: Vec<String> = self.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
        r.header("cookie", &cookie.join("; "))
    }
}

/// Logs `user` in through `server` (policy `login`); the browser's jar afterwards.
async fn log_in(server: &TestServer, idp: &MockIdp, user: &str) -> Jar {
    let mut jar = Jar::default();
    let start = ask(server, jar.get("/app")).await;
    assert_eq!(start.status, 302, "{start:?}");
    jar.take(&start);
    let query = idp.login(start.header("location").expect("a location"), user);
    let cb = ask(server, jar.get(&format!("/oauth2/callback?{query}"))).await;
    assert_eq!(cb.status, 302, "{cb:?}");
    jar.take(&cb);
    jar
}

/// Whether the browser's session still lets it in (a session that ended is sent to log in again).
async fn allowed(server: &TestServer, jar: &Jar) -> bool {
    let a = ask(server, jar.get("/app")).await;
    match a.status {
        200 => true,
        302 => {
            let to = a.header("location").unwrap_or_default();
            assert!(to.contains("/authorize"), "sent to log in: {a:?}");
            false
        }
        other => panic!("neither allowed nor sent to log in: {other} {a:?}"),
    }
}

async fn list(server: &TestServer, sub: &str) -> Vec<pb::Session> {
    admin(server)
        .await
        .list_sessions(pb::ListSessionsRequest { sub: sub.into() })
        .await
        .expect("ListSessions")
        .into_inner()
        .sessions
}

async fn revoke(server: &TestServer, target: Target) -> u32 {
    admin(server)
        .await
        .revoke_sessions(pb::RevokeSessionsRequest {
            target: Some(target),
        })
        .await
        .expect("RevokeSessions")
        .into_inner()
        .revoked
}

fn explain_request(path: &str, headers: &[(&str, &str)], claims: &str) -> pb::ExplainRequest {
    pb::ExplainRequest {
        method: "GET".into(),
        host: APP.into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        context_policy: String::new(),
        claims_json: claims.into(),
    }
}

/// Explain of a bearer request names the routed policy, its methods, the method the token would use and each
/// rule's alternatives with which matched; it echoes no token and calls no IdP. The HTTP endpoints of the admin
/// address answer as before on the same port.
#[tokio::test]
async fn explain_names_the_policy_the_method_and_each_rule_without_echoing_the_token() {
    let (idp, server) = world().await;
    let token = idp.mint(json!({}));
    let jwks = idp.jwks_hits();
    let claims = idp.claims(json!({"scp": ["openid"]})).to_string();
    let auth = format!("Bearer {token}");
    let mut client = admin(&server).await;

    let e = client
        .explain(explain_request(
            "/routed/x",
            &[("Authorization", &auth)],
            &claims,
        ))
        .await
        .expect("Explain")
        .into_inner();
    assert_eq!(e.policy, "api");
    assert_eq!(e.selection, "the best [[routes]] match");
    assert_eq!(e.accepted_methods, vec!["bearer"]);
    assert_eq!(e.method, "bearer");
    assert_eq!(e.rules.len(), 1);
    assert_eq!(
        (e.rules[0].what.as_str(), e.rules[0].claim.as_str()),
        ("scopes", "scp")
    );
    assert_eq!(e.rules[0].alternatives.len(), 1);
    assert_eq!(e.rules[0].alternatives[0].words, vec!["api:read"]);
    assert!(!e.rules[0].alternatives[0].matched && !e.rules[0].satisfied);
    assert!(!e.access_allowed);
    assert!(!format!("{e:?}").contains(&token), "no token echoed");

    // groups: (admins) OR (ops AND oncall); the second alternative matches
    let mut named = explain_request(
        "/anything",
        &[("authorization", &auth)],
        &idp.claims(json!({"groups": ["ops", "oncall"]})).to_string(),
    );
    named.context_policy = "admins".into();
    let e = client.explain(named).await.expect("Explain").into_inner();
    assert_eq!(
        (e.policy.as_str(), e.selection.as_str()),
        ("admins", "context_extensions.policy")
    );
    let groups = &e.rules[0];
    assert_eq!(groups.what, "groups");
    let alts: Vec<(Vec<String>, bool)> = groups
        .alternatives
        .iter()
        .map(|a| (a.words.clone(), a.matched))
        .collect();
    assert_eq!(
        alts,
        vec![
            (vec!["admins".to_string()], false),
            (vec!["ops".to_string(), "oncall".to_string()], true)
        ]
    );
    assert!(groups.satisfied && e.access_allowed);

    // an opaque token on an introspection policy: named, not introspected
    let opaque = idp.opaque(json!({}));
    let mut intro = explain_request("/x", &[("authorization", &format!("Bearer {opaque}"))], "");
    intro.context_policy = "intro".into();
    let e = client.explain(intro).await.expect("Explain").into_inner();
    assert_eq!(e.method, "introspection");
    assert!(e.rules.iter().all(|r| !r.satisfied) && !e.access_allowed);
    assert!(!format!("{e:?}").contains(&opaque));

    // a browser on the login policy without a session; no policy for an unrouted path
    let mut browser = explain_request("/app", &[("accept", "text/html")], "{}");
    browser.context_policy = "login".into();
    let e = client.explain(browser).await.expect("Explain").into_inner();
    assert_eq!(e.method, "authorization_code");
    assert_eq!(
        e.accepted_methods,
        vec!["bearer", "authorization_code", "session"]
    );
    let e = client
        .explain(explain_request("/nowhere", &[], "not json"))
        .await
        .expect("Explain")
        .into_inner();
    assert!(
        e.policy.is_empty() && e.selection.contains("no policy"),
        "{e:?}"
    );

    assert_eq!(
        (idp.introspect_hits(), idp.token_hits()),
        (0, 0),
        "no IdP call"
    );
    assert_eq!(idp.jwks_hits(), jwks, "no key fetched");
    assert_eq!(
        server.admin_get("/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(server.admin_get("/readyz").await.0, 200);
}

/// Two logins of one user are two sessions (ids, policy, times; no token or cookie in the answer); revoking by
/// id ends that one only, revoking by user ends the rest; another user's session lives on.
#[tokio::test]
async fn sessions_are_listed_without_tokens_and_revoked_by_id_then_by_user() {
    let (idp, server) = world().await;
    let first = log_in(&server, &idp, "alice").await;
    let second = log_in(&server, &idp, "alice").await;
    let bob = log_in(&server, &idp, "bob").await;
    for jar in [&first, &second, &bob] {
        assert!(allowed(&server, jar).await);
    }

    let sessions = list(&server, "alice").await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_ne!(sessions[0].id, sessions[1].id);
    for s in &sessions {
        assert_eq!((s.policy.as_str(), s.sub.as_str()), ("login", "alice"));
        assert!(s.created > 0 && s.last_seen >= s.created && s.expires == s.created + 3600);
    }
    let shown = format!("{sessions:?}");
    for value in first.values().iter().chain(second.values().iter()) {
        assert!(!shown.contains(value.as_str()), "no cookie in the list");
    }
    assert!(!shown.contains("ey"), "no token in the list");
    assert_eq!(list(&server, "nobody").await.len(), 0);

    // which listed session is `first`'s: revoke one by id, see which browser is out
    assert_eq!(revoke(&server, Target::Id(sessions[0].id.clone())).await, 1);
    let (out, kept) = if allowed(&server, &first).await {
        (&second, &first)
    } else {
        (&first, &second)
    };
    assert!(!allowed(&server, out).await, "the revoked session is over");
    assert!(allowed(&server, kept).await, "the other one lives");
    assert_eq!(list(&server, "alice").await.len(), 1);
    assert_eq!(revoke(&server, Target::Id(sessions[0].id.clone())).await, 0);

    assert_eq!(revoke(&server, Target::Sub("alice".into())).await, 1);
    assert!(!allowed(&server, kept).await);
    assert!(list(&server, "alice").await.is_empty());
    assert!(
        allowed(&server, &bob).await,
        "another user's session lives on"
    );
}

/// Revoking by user ends every one of their sessions at once; an empty request is refused.
#[tokio::test]
async fn revoking_a_user_ends_all_their_sessions() {
    let (idp, server) = world().await;
    let a = log_in(&server, &idp, "alice").await;
    let b = log_in(&server, &idp, "alice").await;
    assert!(allowed(&server, &a).await && allowed(&server, &b).await);
    assert_eq!(revoke(&server, Target::Sub("alice".into())).await, 2);
    assert!(!allowed(&server, &a).await);
    assert!(!allowed(&server, &b).await);
    let empty = admin(&server)
        .await
        .revoke_sessions(pb::RevokeSessionsRequest { target: None })
        .await
        .expect_err("no target");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
}

/// Two servers sharing a real Redis: the standard config with `[store]` on it.
async fn replicas(redis: &RedisServer) -> (MockIdp, TestServer, TestServer) {
    let idp = MockIdp::start().await;
    let secret = "YgkhMaR/YTZqwk13q1w36bx3iMsjriSao8q4VdYNeSs=";
    let store = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"admin-test:\"\ntimeout_ms = 1000\nsecret = \"{secret}\"",
        redis.url()
    );
    let a = serve(&idp).extra(&store).ready().await;
    let b = serve(&idp).extra(&store).ready().await;
    (idp, a, b)
}

/// Polls `f` until it holds, within a generous budget (the Redis connection comes up in the background).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 30 s");
}

/// Waits until every server's store answers.
async fn up(servers: &[&TestServer]) {
    for s in servers {
        eventually("the store answers", || async {
            s.authorizer.store().ping().await.is_ok()
        })
        .await;
    }
}

/// With Redis, the index is shared: a login through replica A is listed (and named by the same id) by B's admin
/// API, nothing in Redis holds the user's name or cookie in plain text, and a revoke through A empties B's list.
#[tokio::test]
async fn the_session_index_is_shared_through_redis() {
    let redis = RedisServer::start().await;
    let (idp, a, b) = replicas(&redis).await;
    up(&[&a, &b]).await;
    let jar = log_in(&a, &idp, "carol").await;
    assert!(allowed(&b, &jar).await, "a cookie session is good on B");
    let on_b = list(&b, "carol").await;
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b, list(&a, "carol").await);
    for (key, value) in redis.dump().await {
        let text = String::from_utf8_lossy(&value);
        assert!(!key.contains("carol") && !text.contains("carol"), "{key}");
        for v in jar.values() {
            assert!(!text.contains(v.as_str()));
        }
    }
    assert_eq!(revoke(&a, Target::Id(on_b[0].id.clone())).await, 1);
    assert!(
        list(&b, "carol").await.is_empty(),
        "B's index forgot it too"
    );
}

/// A revoke through A's admin API ends the session on B. Needs the ended-session set in the store (issue 13,
/// item 2, branch r13-sessions): with this process's ended sessions, only A knows.
#[tokio::test]
async fn a_revoke_through_one_replica_ends_the_session_on_the_other() {
    let redis = RedisServer::start().await;
    let (idp, a, b) = replicas(&redis).await;
    up(&[&a, &b]).await;
    let jar = log_in(&a, &idp, "dave").await;
    assert!(allowed(&b, &jar).await);
    assert_eq!(revoke(&a, Target::Sub("dave".into())).await, 1);
    eventually("B refuses the revoked session", || async {
        !allowed(&b, &jar).await
    })
    .await;
    assert!(!allowed(&a, &jar).await);
}

/// A login whose session cannot be indexed (Redis down) is refused with 503, never handed a session that no
/// revoke could reach; with Redis back, logins are indexed again.
#[tokio::test]
async fn a_login_that_cannot_be_indexed_is_refused_until_the_store_is_back() {
    let mut redis = RedisServer::start().await;
    let (idp, a, _b) = replicas(&redis).await;
    up(&[&a]).await;
    redis.stop();
    let mut jar = Jar::default();
    let start = ask(&a, jar.get("/app")).await;
    assert_eq!(start.status, 302, "{start:?}");
    jar.take(&start);
    let query = idp.login(start.header("location").expect("a location"), "erin");
    let cb = ask(&a, jar.get(&format!("/oauth2/callback?{query}"))).await;
    assert_eq!(cb.status, 503, "{cb:?}");
    assert!(
        cb.cookies_set()
            .iter()
            .all(|(n, _)| n != "oidc_authz_session")
    );

    redis.restart().await;
    up(&[&a]).await;
    let jar = log_in(&a, &idp, "erin").await;
    assert!(allowed(&a, &jar).await);
    assert_eq!(list(&a, "erin").await.len(), 1);
}
