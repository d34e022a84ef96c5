//! Unit tests of the `userinfo` auth method through `Authorizer::check` with the [`FakeIdp`]: claims, header,
//! caches, failures, and its order among the token methods.

use super::*;

const USERINFO_CONFIG: &str = r#"
[providers.idp]
issuer = "https://idp.test"
client_id = "oidc-authz"
client_secret = "oidc-authz-secret"
audiences = ["api://default"]
leeway_secs = 0

[policies.ui]
provider = "idp"
auth_methods = ["userinfo"]
display_errors = true
cache_user_info_secs = 300
cache_ttl_neg_secs = 30
scopes_claim = ["scope"]
scopes_required = ["openid"]
groups_claim = ["groups"]
groups_required = ["admins"]
upstream_headers_claims = ["email"]
upstream_headers_names = ["x-email"]
upstream_user_info_header = "X-Userinfo"

[policies.ui_nocache]
provider = "idp"
auth_methods = ["userinfo"]
display_errors = true
cache_user_info_secs = 0
cache_ttl_neg_secs = 0

[policies.intro_first]
provider = "idp"
auth_methods = ["bearer", "introspection", "userinfo"]
display_errors = true
upstream_user_info_header = "x-userinfo"

[policies.ui_first]
provider = "idp"
auth_methods = ["userinfo", "introspection"]
display_errors = true
"#;

const GOOD: &str = "opaque-good";

/// A world whose userinfo endpoint knows [`GOOD`] (carol, in `admins`) and answers 401 to any other token.
fn userinfo_world() -> World {
    let w = World::with_config(USERINFO_CONFIG, Box::new(MemoryBackend::new()));
    w.idp.answer_with(Endpoint::Userinfo, |call| {
        if call.bearer.as_deref() == Some(GOOD) {
            FakeAnswer::json(
                200,
                json!({"sub": "carol", "email": "carol@example.com", "groups": ["admins"], "scope": "openid email"}),
            )
        } else {
            FakeAnswer::json(401, json!({"error": "invalid_token"}))
        }
    });
    w
}

fn bearer(policy: &str, token: &str) -> CheckRequest {
    request(
        policy,
        "GET",
        "/x",
        &[("authorization", &format!("Bearer {token}"))],
    )
}

#[tokio::test]
async fn a_token_the_userinfo_endpoint_knows_is_allowed_with_its_claims_and_header() {
    let w = userinfo_world();
    let req = request(
        "ui",
        "GET",
        "/x",
        &[
            ("authorization", "Bearer opaque-good"),
            ("x-userinfo", "forged"),
            ("X_Userinfo", "forged"),
        ],
    );
    let a = allowed(w.check(&req).await);
    assert_eq!(header(&a, "x-email"), Some("carol@example.com"));
    assert_eq!(metadata(&a)["auth_method"], "userinfo");
    assert_eq!(metadata(&a)["sub"], "carol");
    let encoded = header(&a, "x-userinfo").expect("the userinfo header");
    assert!(!encoded.contains('='), "no padding: {encoded}");
    let decoded: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(encoded).unwrap()).unwrap();
    assert_eq!(decoded["sub"], "carol");
    assert_eq!(decoded["groups"], json!(["admins"]));
    // The answer names no issuer: the metadata names the provider asked, the header stays the answer as given.
    assert_eq!(metadata(&a)["iss"], "https://idp.test");
    assert!(decoded.get("iss").is_none(), "{decoded}");
    assert!(
        a.remove_headers.iter().any(|h| h.as_str() == "x_userinfo"),
        "{:?}",
        a.remove_headers
    );
    let sent = w.idp.last(Endpoint::Userinfo).unwrap();
    assert_eq!(sent.bearer.as_deref(), Some(GOOD));
    assert!(
        sent.client.is_none() && sent.form.is_empty(),
        "no client auth"
    );
    assert_eq!(sent.url.as_str(), "https://idp.test/userinfo");
    // cached: no second call
    allowed(w.check(&req).await);
    assert_eq!(w.idp.calls(Endpoint::Userinfo), 1);
    assert_eq!(w.idp.calls(Endpoint::Introspection), 0);
}

#[tokio::test]
async fn userinfo_claims_feed_access_control() {
    let w = userinfo_world();
    w.idp.answer(
        Endpoint::Userinfo,
        200,
        json!({"sub": "dave", "groups": ["users"], "scope": "openid"}),
    );
    let d = denied(w.check(&bearer("ui", "opaque-dave")).await);
    assert_eq!(d.status, DenyStatus::Forbidden);
}

#[tokio::test]
async fn a_refused_token_is_401_and_negatively_cached() {
    let w = userinfo_world();
    for _ in 0..3 {
        let d = denied(w.check(&bearer("ui", "opaque-bad")).await);
        assert_eq!(
            (d.status, d.error),
            (DenyStatus::Unauthorized, "invalid_token")
        );
    }
    assert_eq!(w.idp.calls(Endpoint::Userinfo), 1);
    w.idp.answer(Endpoint::Userinfo, 403, json!({}));
    denied(w.check(&bearer("ui_nocache", "opaque-other")).await);
    denied(w.check(&bearer("ui_nocache", "opaque-other")).await);
    assert_eq!(
        w.idp.calls(Endpoint::Userinfo),
        3,
        "no cache: asked each time"
    );
}

#[tokio::test]
async fn provider_failures_are_503_and_never_cached() {
    let jwt_body = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYXJvbCJ9.c2ln";
    let answers = [
        FakeAnswer::json(500, json!({})),
        FakeAnswer::json(404, json!({})),
        FakeAnswer::Unreachable,
        FakeAnswer::Reply {
            status: 200,
            body: b"<html>oops</html>".to_vec(),
        },
        FakeAnswer::json(200, json!(["sub"])),
        FakeAnswer::json(200, json!({"email": "no-sub@example.com"})),
        FakeAnswer::json(200, json!({"sub": ""})),
        FakeAnswer::Reply {
            status: 200,
            body: jwt_body.as_bytes().to_vec(),
        },
    ];
    for answer in answers {
        let w = userinfo_world();
        let shown = format!("{answer:?}");
        w.idp
            .answer_with(Endpoint::Userinfo, move |_| answer.clone());
        for _ in 0..2 {
            let d = denied(w.check(&bearer("ui", GOOD)).await);
            assert_eq!(d.status, DenyStatus::Unavailable, "{shown}");
        }
        assert_eq!(w.idp.calls(Endpoint::Userinfo), 2, "not cached: {shown}");
    }
}

#[tokio::test]
async fn a_provider_without_a_userinfo_endpoint_is_a_503() {
    let w = userinfo_world();
    let mut doc = FakeIdp::discovery_document(ISSUER);
    doc.as_object_mut().unwrap().remove("userinfo_endpoint");
    w.idp.answer(Endpoint::Discovery, 200, doc);
    let d = denied(w.check(&bearer("ui", GOOD)).await);
    assert_eq!(d.status, DenyStatus::Unavailable);
    assert_eq!(w.idp.calls(Endpoint::Userinfo), 0);
}

#[tokio::test]
async fn an_oversized_answer_is_allowed_without_the_header() {
    let w = userinfo_world();
    let big = "x".repeat(crate::policy::headers::MAX_USER_INFO_HEADER);
    w.idp.answer(
        Endpoint::Userinfo,
        200,
        json!({"sub": "carol", "groups": ["admins"], "scope": "openid", "big": big}),
    );
    let req = request(
        "ui",
        "GET",
        "/x",
        &[
            ("authorization", "Bearer opaque-big"),
            ("x-userinfo", "forged"),
        ],
    );
    let a = allowed(w.check(&req).await);
    assert_eq!(header(&a, "x-userinfo"), None);
    assert!(a.remove_headers.iter().any(|h| h.as_str() == "x-userinfo"));
}

/// `["bearer", "introspection", "userinfo"]`: a JWT is verified locally only; an opaque token goes to
/// introspection, then to userinfo when introspection finds it invalid, but not when introspection is down.
#[tokio::test]
async fn opaque_tokens_go_through_introspection_then_userinfo_in_config_order() {
    let w = userinfo_world();
    w.idp
        .answer(Endpoint::Introspection, 200, json!({"active": false}));
    let a = allowed(w.check(&bearer("intro_first", GOOD)).await);
    assert_eq!(metadata(&a)["auth_method"], "userinfo");
    assert!(header(&a, "x-userinfo").is_some());
    assert_eq!(w.idp.calls(Endpoint::Introspection), 1);
    assert_eq!(w.idp.calls(Endpoint::Userinfo), 1);

    // refused by both: 401, from the last one
    let d = denied(w.check(&bearer("intro_first", "opaque-bad")).await);
    assert_eq!(d.status, DenyStatus::Unauthorized);
    assert_eq!(
        d.description,
        "the token is not valid at the userinfo endpoint"
    );

    // active at introspection but for another audience: refused there, never handed on to userinfo (which checks
    // no audience and would let it in)
    w.idp.answer(
        Endpoint::Introspection,
        200,
        json!({"active": true, "iss": ISSUER, "aud": "api://other", "sub": "mallory", "token_type": "Bearer",
               "iat": NOW, "exp": NOW + 600}),
    );
    let before = w.idp.calls(Endpoint::Userinfo);
    let d = denied(
        w.check(&bearer("intro_first", "opaque-other-audience"))
            .await,
    );
    assert_eq!(d.status, DenyStatus::Unauthorized);
    assert_eq!(
        w.idp.calls(Endpoint::Userinfo),
        before,
        "userinfo not asked"
    );

    // introspection down: 503, userinfo not asked
    w.idp.unreachable(Endpoint::Introspection);
    let calls = w.idp.calls(Endpoint::Userinfo);
    let d = denied(w.check(&bearer("intro_first", "opaque-new")).await);
    assert_eq!(d.status, DenyStatus::Unavailable);
    assert_eq!(w.idp.calls(Endpoint::Userinfo), calls);

    // a JWT: bearer only (a forged one is refused without asking the provider)
    let jwt = w.key.sign(&access_claims("erin", json!({})));
    let a = allowed(w.check(&bearer("intro_first", &jwt)).await);
    assert_eq!(metadata(&a)["auth_method"], "bearer");
    assert_eq!(header(&a, "x-userinfo"), None, "no userinfo answer fetched");
    let forged = format!("{}x", &jwt[..jwt.len() - 1]);
    denied(w.check(&bearer("intro_first", &forged)).await);
    assert_eq!(w.idp.calls(Endpoint::Userinfo), calls);
}

#[tokio::test]
async fn userinfo_listed_first_is_asked_first() {
    let w = userinfo_world();
    w.idp.answer(
        Endpoint::Introspection,
        200,
        json!({"active": true, "iss": ISSUER, "aud": "api://default", "sub": "frank", "token_type": "Bearer",
               "iat": NOW, "exp": NOW + 600}),
    );
    let a = allowed(w.check(&bearer("ui_first", GOOD)).await);
    assert_eq!(metadata(&a)["auth_method"], "userinfo");
    assert_eq!(w.idp.calls(Endpoint::Introspection), 0);
    let a = allowed(w.check(&bearer("ui_first", "opaque-frank")).await);
    assert_eq!(metadata(&a)["auth_method"], "introspection");
    assert_eq!(w.idp.calls(Endpoint::Userinfo), 2);
}

/// With a shared store, a userinfo answer one replica fetched is served to another without a call.
#[tokio::test]
async fn answers_are_shared_through_the_store() {
    let redis_like = format!(
        "{USERINFO_CONFIG}\n[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nsecret = \"fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg=\"\n"
    );
    let backend = MemoryBackend::new();
    let a = World::with_config(&redis_like, Box::new(backend.clone()));
    let b = World::with_config(&redis_like, Box::new(backend));
    for w in [&a, &b] {
        w.idp.answer(
            Endpoint::Userinfo,
            200,
            json!({"sub": "carol", "groups": ["admins"], "scope": "openid"}),
        );
    }
    allowed(a.check(&bearer("ui", GOOD)).await);
    let got = allowed(b.check(&bearer("ui", GOOD)).await);
    assert_eq!(metadata(&got)["sub"], "carol");
    assert_eq!(a.idp.calls(Endpoint::Userinfo), 1);
    assert_eq!(
        b.idp.calls(Endpoint::Userinfo),
        0,
        "B used A's stored answer"
    );
}
