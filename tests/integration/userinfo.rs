//! `userinfo` against the in-process mock IdP: claims from the userinfo answer used by scope and group rules and a
//! claim header, the base64url `upstream_user_info_header`, 401 from the endpoint, the IdP down, and coalescing
//! (100 concurrent Checks with one new token -> one userinfo call).

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::*;

/// A `userinfo` policy with scope and group rules, a claim header and the userinfo header.
const POLICY: &str = r#"
[policies.ui]
provider = "okta"
auth_methods = ["userinfo"]
scopes_claim = ["scope"]
scopes_required = ["openid"]
groups_claim = ["groups"]
groups_required = ["admins"]
upstream_headers_claims = ["email"]
upstream_headers_names = ["x-email"]
upstream_user_info_header = "x-userinfo"
"#;

fn answer() -> Value {
    json!({"sub": "alice", "email": "alice@example.com", "groups": ["admins"], "scope": "openid email"})
}

async fn world_ui() -> (MockIdp, TestServer) {
    world_with(|c| c.extra(POLICY)).await
}

#[tokio::test]
async fn a_token_known_to_userinfo_is_allowed_with_its_claims() {
    let (idp, server) = world_ui().await;
    let t = idp.userinfo_token(answer());
    let a = ask(
        &server,
        req("/x")
            .policy("ui")
            .bearer(&t)
            .header("x-userinfo", "forged")
            .header("X-Email", "forged"),
    )
    .await;
    a.assert_allow();
    assert_eq!(a.header("x-email"), Some("alice@example.com"));
    assert_eq!(
        a.metadata.get("auth_method").map(String::as_str),
        Some("userinfo")
    );
    let encoded = a.header("x-userinfo").expect("the userinfo header");
    let decoded: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decoded, answer());
    // The answer names no issuer: the metadata names the provider asked.
    assert_eq!(a.metadata.get("iss"), Some(&idp.issuer));
    a.assert_not_echoing(&t);
    ask(&server, req("/x").policy("ui").bearer(&t))
        .await
        .assert_allow();
    assert_eq!(idp.userinfo_hits(), 1, "the second Check used the cache");
    assert_eq!(idp.introspect_hits(), 0);
}

#[tokio::test]
async fn userinfo_claims_feed_the_scope_and_group_rules() {
    let (idp, server) = world_ui().await;
    let no_scope =
        idp.userinfo_token(json!({"sub": "bob", "groups": ["admins"], "scope": "email"}));
    ask(&server, req("/x").policy("ui").bearer(&no_scope))
        .await
        .assert_deny(403, "insufficient_scope");
    let no_group =
        idp.userinfo_token(json!({"sub": "bob", "groups": ["users"], "scope": "openid"}));
    ask(&server, req("/x").policy("ui").bearer(&no_group))
        .await
        .assert_deny(403, "insufficient_scope");
}

#[tokio::test]
async fn a_token_the_userinfo_endpoint_refuses_is_401_and_negatively_cached() {
    let (idp, server) = world_ui().await;
    for _ in 0..5 {
        let a = ask(&server, req("/x").policy("ui").bearer("ui-never-issued")).await;
        a.assert_deny(401, "invalid_token");
        a.assert_not_echoing("ui-never-issued");
    }
    assert_eq!(idp.userinfo_hits(), 1);
}

#[tokio::test]
async fn idp_failures_are_503_and_not_cached() {
    let (idp, server) = world_with(|c| c.extra(POLICY).short_http_timeout()).await;
    let t = idp.userinfo_token(answer());
    for mode in [Mode::Down, Mode::Garbage, Mode::Held] {
        idp.set_mode(mode.clone());
        let a = ask(&server, req("/x").policy("ui").bearer(&t)).await;
        a.assert_deny(503, "temporarily_unavailable");
        a.assert_not_echoing(&t);
    }
    idp.set_mode(Mode::Up);
    ask(&server, req("/x").policy("ui").bearer(&t))
        .await
        .assert_allow();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_checks_make_one_call() {
    let (idp, server) = world_ui().await;
    idp.set_mode(Mode::Slow(Duration::from_millis(300)));
    let t = idp.userinfo_token(answer());
    let r = req("/x").policy("ui").bearer(&t).build();
    assert!(server.concurrent(100, r).await.iter().all(|s| *s == 200));
    assert_eq!(
        idp.userinfo_hits(),
        1,
        "100 concurrent Checks with one new token -> one userinfo call"
    );
}

/// `["introspection", "userinfo"]`: a token introspection does not know goes on to userinfo.
#[tokio::test]
async fn introspection_first_then_userinfo() {
    let (idp, server) = world_with(|c| {
        c.extra(
            "[policies.both]\nprovider = \"okta\"\nauth_methods = [\"bearer\", \"introspection\", \"userinfo\"]\n",
        )
    })
    .await;
    let ui = idp.userinfo_token(answer());
    let a = ask(&server, req("/x").policy("both").bearer(&ui)).await;
    a.assert_allow();
    assert_eq!(
        a.metadata.get("auth_method").map(String::as_str),
        Some("userinfo")
    );
    let op = idp.opaque(json!({}));
    let a = ask(&server, req("/x").policy("both").bearer(&op)).await;
    assert_eq!(
        a.metadata.get("auth_method").map(String::as_str),
        Some("introspection")
    );
    assert_eq!((idp.introspect_hits(), idp.userinfo_hits()), (2, 1));
}

/// `userinfo_endpoint` on the provider replaces the one its discovery document names: the Check asks the configured
/// endpoint (another server here), never the discovered one.
#[tokio::test]
async fn a_configured_userinfo_endpoint_is_the_one_asked() {
    let other = MockIdp::start().await;
    let endpoint = format!("{}/v1/userinfo", other.issuer);
    let (idp, server) = world_with(|c| {
        c.extra(POLICY).edit(
            "jwks_min_refetch_secs = 0",
            &format!("jwks_min_refetch_secs = 0\nuserinfo_endpoint = \"{endpoint}\""),
        )
    })
    .await;
    let t = other.userinfo_token(answer());
    let a = ask(&server, req("/x").policy("ui").bearer(&t)).await;
    a.assert_allow();
    assert_eq!(a.header("x-email"), Some("alice@example.com"));
    assert_eq!(other.userinfo_hits(), 1, "the configured endpoint answered");
    assert_eq!(
        idp.userinfo_hits(),
        0,
        "the discovered endpoint was not asked"
    );
    // A token only the discovered endpoint knows is refused: it is never asked.
    let only_there = idp.userinfo_token(answer());
    ask(&server, req("/x").policy("ui").bearer(&only_there))
        .await
        .assert_deny(401, "invalid_token");
    assert_eq!(idp.userinfo_hits(), 0);
    assert_eq!(
        other.userinfo_hits(),
        2,
        "the configured endpoint was asked, and refused it"
    );
}
