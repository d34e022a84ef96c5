//! Issue 15 items 3, 5 and 7 against the real server and the mock IdP: `claims_forbidden`, `consumer_claim` (with
//! `consumer_optional` and `upstream_consumer_header`), `upstream_access_token_header`,
//! `upstream_introspection_header`, and the error answers (`display_errors`, the two messages).

use base64::Engine;
use serde_json::{Value, json};

use crate::login::{Browser, login};
use crate::support::*;

const POLICIES: &str = r#"
[policies.forbid]
provider = "okta"
auth_methods = ["bearer", "introspection"]
claims_forbidden = ["act", ["realm", "admin"], "https://x.example/impersonated"]
cache_introspection_secs = 0

[policies.consumer]
provider = "okta"
auth_methods = ["bearer", "client_credentials"]
consumer_claim = ["cid"]
upstream_consumer_header = "X-Consumer"

[policies.consumer_nested]
provider = "okta"
auth_methods = ["bearer"]
consumer_claim = ["ext", "consumer"]
consumer_optional = true
upstream_consumer_header = "x-consumer"

[policies.token_header]
provider = "okta"
auth_methods = ["bearer", "introspection", "client_credentials"]
introspect_jwt_tokens = false
cache_introspection_secs = 0
upstream_access_token_header = "X-Access-Token"
upstream_introspection_header = "x-introspection"

[policies.token_prefixed]
provider = "okta"
auth_methods = ["bearer"]
upstream_access_token_header = "authorization:token"

[policies.quiet]
provider = "okta"
auth_methods = ["bearer", "client_credentials"]
scopes_claim = ["scp"]
scopes_required = ["api:write"]

[policies.custom_messages]
provider = "okta"
auth_methods = ["bearer"]
scopes_claim = ["scp"]
scopes_required = ["api:write"]
unauthorized_error_message = "Please sign in"
forbidden_error_message = "Not for you"

[policies.rules_web]
provider = "okta"
auth_methods = ["authorization_code", "session"]
scopes = ["openid", "profile"]
redirect_uri = "https://app.example.com/oauth2/rules-callback"
session_secret = "YgkhMaR/YTZqwk13q1w36bx3iMsjriSao8q4VdYNeSs="
upstream_access_token_header = "x-access-token:Bearer"
consumer_claim = ["sub"]
upstream_consumer_header = "x-consumer"
claims_forbidden = ["act"]
"#;

async fn rules_world() -> (MockIdp, TestServer) {
    world_with(|s| s.extra(POLICIES)).await
}

/// Every client-sent spelling of `name` (a lower-case name with `-`) that an attacker might try.
fn spellings(name: &str) -> Vec<String> {
    vec![
        name.to_ascii_uppercase(),
        name.replace('-', "_"),
        name.to_ascii_uppercase().replace('-', "_"),
    ]
}

/// The request with a spoofed copy of each header in `names`, in every odd spelling.
fn spoofing(mut r: Req, names: &[&str]) -> Req {
    for n in names {
        for s in spellings(n) {
            r = r.header(&s, "mallory");
        }
    }
    r
}

/// No spoofed value reaches the upstream: each odd spelling is removed, or overwritten by the header we set
/// (Envoy's header map ignores case).
fn assert_no_spoofed_copy(a: &Answer, names: &[&str]) {
    for n in names {
        for s in spellings(n) {
            let removed = a.remove.iter().any(|r| r.eq_ignore_ascii_case(&s));
            let overwritten = s.eq_ignore_ascii_case(n) && a.header(n).is_some();
            assert!(
                removed || overwritten,
                "client-sent {s} must not reach the upstream: {a:?}"
            );
        }
        assert_ne!(a.header(n), Some("mallory"), "{a:?}");
    }
}

#[tokio::test]
async fn a_forbidden_claim_denies_whatever_its_value_and_its_absence_passes() {
    let (idp, server) = rules_world().await;
    let clean = idp.mint(json!({}));
    ask(&server, req("/x").policy("forbid").bearer(&clean))
        .await
        .assert_allow();
    for carried in [
        json!({"act": {"sub": "admin"}}),
        json!({"act": null}),
        json!({"act": false}),
        json!({"act": ""}),
        json!({"act": []}),
        json!({"realm": {"admin": 0}}),
        json!({"https://x.example/impersonated": true}),
    ] {
        // `mint` removes a claim given as null: put a literal null in by signing the claims directly.
        let mut claims = idp.claims(json!({}));
        for (k, v) in carried.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let token = idp.signing_key().sign(&claims);
        let a = ask(&server, req("/x").policy("forbid").bearer(&token)).await;
        a.assert_deny(403, "insufficient_scope");
        assert_eq!(a.json()["error_description"], "Forbidden", "{carried}");
        a.assert_not_echoing(&token);
    }
    // a nested path needs the whole path: a `realm` without `admin` passes
    let other = idp.mint(json!({"realm": {"user": 1}, "admin": true}));
    ask(&server, req("/x").policy("forbid").bearer(&other))
        .await
        .assert_allow();
    // introspection answers are checked the same way
    let opaque = idp.opaque(json!({"act": {"sub": "root"}}));
    ask(&server, req("/x").policy("forbid").bearer(&opaque))
        .await
        .assert_deny(403, "insufficient_scope");
    let fine = idp.opaque(json!({}));
    ask(&server, req("/x").policy("forbid").bearer(&fine))
        .await
        .assert_allow();
}

#[tokio::test]
async fn the_consumer_goes_to_metadata_and_its_header_and_is_required_unless_optional() {
    let (idp, server) = rules_world().await;
    let token = idp.mint(json!({"cid": "shop-frontend"}));
    let a = ask(
        &server,
        spoofing(req("/x").policy("consumer").bearer(&token), &["x-consumer"]),
    )
    .await;
    a.assert_allow();
    assert_eq!(a.header("x-consumer"), Some("shop-frontend"));
    assert_eq!(
        a.metadata.get("consumer").map(String::as_str),
        Some("shop-frontend")
    );
    assert_no_spoofed_copy(&a, &["x-consumer"]);

    // client credentials: the grant's token names the client
    let a = ask(
        &server,
        req("/x")
            .policy("consumer")
            .basic("cc-app", "cc-app-secret"),
    )
    .await;
    a.assert_allow();
    assert_eq!(a.header("x-consumer"), Some("cc-app"));

    // an integer names a consumer too (its decimal text)
    let numeric = idp.mint(json!({"cid": 4217}));
    let a = ask(&server, req("/x").policy("consumer").bearer(&numeric)).await;
    a.assert_allow();
    assert_eq!(a.header("x-consumer"), Some("4217"));

    // without the claim, or with a value that cannot name anyone safely: 403
    for bad in [
        json!({"cid": null}),
        json!({"cid": ""}),
        json!({"cid": true}),
        json!({"cid": 1.5}),
        json!({"cid": ["a", "b"]}),
        json!({"cid": {"name": "x"}}),
        json!({"cid": "evil\r\nx-admin: 1"}),
        json!({"cid": "tab\there"}),
        json!({"cid": " padded"}),
        json!({"cid": "x".repeat(257)}),
    ] {
        let t = idp.mint(bad.clone());
        let a = ask(&server, req("/x").policy("consumer").bearer(&t)).await;
        a.assert_deny(403, "insufficient_scope");
        assert!(a.metadata.is_empty(), "{bad}: {a:?}");
    }

    // consumer_optional: no claim is fine (no consumer, the header never comes from the client); a nested path
    let none = idp.mint(json!({}));
    let a = ask(
        &server,
        spoofing(
            req("/x").policy("consumer_nested").bearer(&none),
            &["x-consumer"],
        )
        .header("x-consumer", "mallory"),
    )
    .await;
    a.assert_allow();
    assert!(!a.metadata.contains_key("consumer"), "{a:?}");
    assert!(a.remove.contains(&"x-consumer".to_string()), "{a:?}");
    assert_no_spoofed_copy(&a, &["x-consumer"]);
    let nested = idp.mint(json!({"ext": {"consumer": "partner-7"}}));
    let a = ask(&server, req("/x").policy("consumer_nested").bearer(&nested)).await;
    a.assert_allow();
    assert_eq!(a.header("x-consumer"), Some("partner-7"));
    // optional, but present and unusable: still 403 (a value we cannot pass on safely is never dropped silently)
    let bad = idp.mint(json!({"ext": {"consumer": "a\nb"}}));
    ask(&server, req("/x").policy("consumer_nested").bearer(&bad))
        .await
        .assert_deny(403, "insufficient_scope");
}

#[tokio::test]
async fn the_access_token_goes_in_the_configured_header_for_every_method() {
    let (idp, server) = rules_world().await;
    let spoofed = ["x-access-token", "x-introspection"];

    // bearer: the client's own token, moved from Authorization to X-Access-Token (no prefix configured)
    let jwt = idp.mint(json!({}));
    let a = ask(
        &server,
        spoofing(req("/x").policy("token_header").bearer(&jwt), &spoofed),
    )
    .await;
    a.assert_allow();
    assert_eq!(a.header("x-access-token"), Some(jwt.as_str()));
    assert!(a.header("authorization").is_none(), "{a:?}");
    assert!(a.remove.contains(&"authorization".to_string()), "{a:?}");
    assert!(
        a.remove.contains(&"x-introspection".to_string()),
        "not introspected: no introspection header, and never the client's: {a:?}"
    );
    assert_no_spoofed_copy(&a, &spoofed);

    // introspection: the client's token, and the introspection answer as base64url JSON
    let opaque = idp.opaque(json!({"sub": "op-user"}));
    let a = ask(
        &server,
        spoofing(req("/x").policy("token_header").bearer(&opaque), &spoofed),
    )
    .await;
    a.assert_allow();
    assert_eq!(a.header("x-access-token"), Some(opaque.as_str()));
    assert!(a.remove.contains(&"authorization".to_string()), "{a:?}");
    let encoded = a.header("x-introspection").expect("introspection header");
    assert!(!encoded.contains('=') && !encoded.contains('+') && !encoded.contains('/'));
    let answer: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(answer["active"], true);
    assert_eq!(answer["sub"], "op-user");
    assert_no_spoofed_copy(&a, &spoofed);

    // client credentials: the grant's token; the client's Basic secret never goes upstream
    let a = ask(
        &server,
        spoofing(
            req("/x")
                .policy("token_header")
                .basic("cc-app", "cc-app-secret"),
            &spoofed,
        ),
    )
    .await;
    a.assert_allow();
    let granted = a.header("x-access-token").expect("the grant's token");
    assert_eq!(granted.split('.').count(), 3, "a JWT from the IdP");
    assert!(a.header("authorization").is_none());
    assert!(a.remove.contains(&"authorization".to_string()), "{a:?}");
    a.assert_not_echoing("cc-app-secret");

    // `authorization:token`: Authorization rewritten with the configured word
    let a = ask(&server, req("/x").policy("token_prefixed").bearer(&jwt)).await;
    a.assert_allow();
    assert_eq!(
        a.header("authorization"),
        Some(format!("token {jwt}").as_str())
    );

    // the default: the client's Authorization goes upstream as it is (nothing set, nothing removed)
    let a = ask(&server, req("/x").policy("api").bearer(&jwt)).await;
    a.assert_allow();
    assert!(a.header("authorization").is_none() && !a.remove.contains(&"authorization".into()));
}

#[tokio::test]
async fn a_session_sends_its_token_in_the_configured_header_with_its_consumer() {
    let (idp, server) = rules_world().await;
    let mut b = Browser::new();
    let cb = login(&server, &idp, &mut b, "/app", "rules_web", "alice").await;
    assert_eq!(cb.status, 302, "{cb:?}");
    let a = ask(
        &server,
        spoofing(
            b.req("/app", "rules_web"),
            &["x-access-token", "x-consumer"],
        ),
    )
    .await;
    a.assert_allow();
    let token = a.header("x-access-token").expect("the session's token");
    assert!(token.starts_with("Bearer ey"), "{token}");
    assert!(a.header("authorization").is_none(), "{a:?}");
    assert_eq!(a.header("x-consumer"), Some("alice"));
    assert_eq!(
        a.metadata.get("consumer").map(String::as_str),
        Some("alice")
    );
    assert_no_spoofed_copy(&a, &["x-access-token", "x-consumer"]);
}

#[tokio::test]
async fn by_default_denies_hide_which_check_failed() {
    let (idp, server) = rules_world().await;
    // 401 without credentials: the code and challenges stay, the description is generic
    let a = ask(&server, req("/x").policy("quiet")).await;
    a.assert_deny(401, "invalid_token");
    assert_eq!(a.json()["error_description"], "Unauthorized");
    let www = a.header("www-authenticate").unwrap();
    assert_eq!(
        www,
        "Basic realm=\"quiet\", Bearer realm=\"quiet\", error=\"invalid_token\", error_description=\"Unauthorized\""
    );
    // a bad token, a bad client secret
    let expired = idp.mint(json!({"exp": now() - 100}));
    let a = ask(&server, req("/x").policy("quiet").bearer(&expired)).await;
    a.assert_deny(401, "invalid_token");
    assert_eq!(a.json()["error_description"], "Unauthorized");
    let a = ask(
        &server,
        req("/x").policy("quiet").basic("cc-app", "wrong-secret"),
    )
    .await;
    a.assert_deny(401, "invalid_client");
    assert_eq!(a.json()["error_description"], "Unauthorized");
    // 403 for a missing scope
    let token = idp.mint(json!({}));
    let a = ask(&server, req("/x").policy("quiet").bearer(&token)).await;
    a.assert_deny(403, "insufficient_scope");
    assert_eq!(a.json()["error_description"], "Forbidden");
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .ends_with("error=\"insufficient_scope\", error_description=\"Forbidden\"")
    );
    // no policy for the route: 403 Forbidden as well
    let a = ask(&server, req("/nowhere")).await;
    a.assert_deny(403, "access_denied");
    assert_eq!(a.json()["error_description"], "Forbidden");
    // the configured messages
    let a = ask(&server, req("/x").policy("custom_messages")).await;
    a.assert_deny(401, "invalid_token");
    assert_eq!(a.json()["error_description"], "Please sign in");
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("error_description=\"Please sign in\"")
    );
    let a = ask(&server, req("/x").policy("custom_messages").bearer(&token)).await;
    a.assert_deny(403, "insufficient_scope");
    assert_eq!(a.json()["error_description"], "Not for you");
    // display_errors = true (the standard `api` policy) keeps the detail
    let a = ask(&server, req("/x").policy("api").bearer(&expired)).await;
    a.assert_deny(401, "invalid_token");
    assert_eq!(a.json()["error_description"], "the token has expired");
}

#[tokio::test]
async fn a_503_keeps_its_text() {
    let (idp, server) = rules_world().await;
    let opaque = idp.opaque(json!({}));
    idp.set_mode(Mode::Down);
    let a = ask(&server, req("/x").policy("forbid").bearer(&opaque)).await;
    a.assert_deny(503, "temporarily_unavailable");
    assert_eq!(
        a.json()["error_description"],
        "the identity provider is unavailable"
    );
}

/// The admin API's Explain gives the full reason (whatever `display_errors`), the two claim rules among the
/// rules, and the consumer.
#[tokio::test]
async fn explain_names_the_forbidden_claim_and_the_consumer() {
    use oidc_authz::admin::pb;
    use oidc_authz::admin::pb::admin_client::AdminClient;
    let (idp, server) = rules_world().await;
    let mut client = AdminClient::connect(format!("http://{}", server.admin_addr))
        .await
        .expect("the admin API answers");
    let ask_explain = |policy: &str, claims: Value| pb::ExplainRequest {
        method: "GET".into(),
        host: "app.example.com".into(),
        path: "/x".into(),
        context_policy: policy.into(),
        claims_json: claims.to_string(),
        ..Default::default()
    };
    let e = client
        .explain(ask_explain(
            "forbid",
            idp.claims(json!({"realm": {"admin": 1}})),
        ))
        .await
        .expect("Explain")
        .into_inner();
    assert!(!e.access_allowed);
    assert_eq!(
        e.access_reason,
        "the token carries the forbidden claim realm.admin"
    );
    let forbidden: Vec<(&str, bool)> = e
        .rules
        .iter()
        .filter(|r| r.what == "claims_forbidden")
        .map(|r| (r.claim.as_str(), r.satisfied))
        .collect();
    assert_eq!(
        forbidden,
        [
            ("act", true),
            ("realm.admin", false),
            ("https://x.example/impersonated", true)
        ]
    );

    let e = client
        .explain(ask_explain("consumer", idp.claims(json!({"cid": "shop"}))))
        .await
        .expect("Explain")
        .into_inner();
    assert!(e.access_allowed && e.access_reason.is_empty(), "{e:?}");
    assert_eq!(e.consumer, "shop");
    let e = client
        .explain(ask_explain("consumer", idp.claims(json!({"cid": null}))))
        .await
        .expect("Explain")
        .into_inner();
    assert!(!e.access_allowed && e.consumer.is_empty());
    assert_eq!(
        e.access_reason,
        "the token's consumer claim cid is missing or not a usable consumer name"
    );
    assert!(
        e.rules
            .iter()
            .any(|r| r.what == "consumer_claim" && r.claim == "cid" && !r.satisfied)
    );
}
