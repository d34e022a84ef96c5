//! gRPC conformance: the real server on port 0, driven by a tonic client, against the in-process mock IdP.
//! Every answer of DESIGN.md is asserted field by field, with both header encodings.

use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn valid_token_is_allowed_with_headers_and_metadata_in_both_encodings() {
    let (idp, server) = world().await;
    let token = idp.mint(json!({}));
    for raw in [false, true] {
        let mut r = req("/anything")
            .policy("api")
            .bearer(&token)
            .header("x-user", "attacker");
        if raw {
            r = r.raw();
        }
        let a = ask(&server, r).await;
        a.assert_allow();
        assert_eq!(a.grpc_code, 0);
        // overwrite, not append: the client's copy can never survive
        let overwrite =
            envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        assert_eq!(
            a.headers,
            vec![
                ("x-issuer".to_string(), idp.issuer.clone(), overwrite),
                (
                    "x-user".to_string(),
                    "alice@example.com".to_string(),
                    overwrite
                ),
                (
                    "x-groups".to_string(),
                    "Everyone,admins".to_string(),
                    overwrite
                ),
            ]
        );
        assert!(a.remove.is_empty());
        assert_eq!(
            a.metadata.get("sub").map(String::as_str),
            Some("alice@example.com")
        );
        assert_eq!(a.metadata.get("iss"), Some(&idp.issuer));
        assert_eq!(
            a.metadata.get("client_id").map(String::as_str),
            Some("0oa-client")
        );
        assert_eq!(a.metadata.get("policy").map(String::as_str), Some("api"));
        assert_eq!(
            a.metadata.get("auth_method").map(String::as_str),
            Some("bearer")
        );
        a.assert_not_echoing(&token);
    }
}

#[tokio::test]
async fn missing_claim_header_is_removed_not_passed_through() {
    let (idp, server) = world().await;
    let token = idp.mint(json!({"groups": null}));
    let a = ask(
        &server,
        req("/x")
            .policy("api")
            .bearer(&token)
            .header("x-groups", "admins"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.remove, vec!["x-groups".to_string()]);
    assert!(a.header("x-groups").is_none());
}

#[tokio::test]
async fn no_credentials_is_401_with_challenge() {
    let (_idp, server) = world().await;
    for r in [req("/x").policy("api"), req("/x").policy("api").raw()] {
        let a = ask(&server, r).await;
        a.assert_deny(401, "invalid_token");
        assert_eq!(a.grpc_code, tonic::Code::Unauthenticated as i32);
        let c = a.header("www-authenticate").unwrap();
        assert!(
            c.starts_with("Bearer realm=\"api\", error=\"invalid_token\", error_description=\""),
            "{c}"
        );
    }
}

#[tokio::test]
async fn bad_tokens_are_401_and_never_echoed() {
    let (idp, server) = world().await;
    let now = now();
    let other = SigningKey::rsa2();
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not-a-jwt".into()),
        ("three dots", "a.b.c.d".into()),
        (
            "expired",
            idp.mint(json!({"exp": now - 10, "iat": now - 100})),
        ),
        ("not yet valid", idp.mint(json!({"nbf": now + 600}))),
        ("issued in future", idp.mint(json!({"iat": now + 600}))),
        ("wrong audience", idp.mint(json!({"aud": "api://other"}))),
        (
            "wrong issuer",
            idp.mint(json!({"iss": "https://evil.example.com"})),
        ),
        ("no exp", idp.mint(json!({"exp": null}))),
        ("string exp", idp.mint(json!({"exp": "tomorrow"}))),
        ("unknown kid", other.sign(&idp.claims(json!({})))),
        ("bad signature", {
            let t = idp.mint(json!({}));
            let forged = other.sign(&idp.claims(json!({"sub": "mallory"})));
            let (head, _) = t.rsplit_once('.').unwrap();
            let (_, sig) = forged.rsplit_once('.').unwrap();
            format!("{head}.{sig}")
        }),
        ("tampered payload", {
            let t = idp.mint(json!({}));
            let parts: Vec<&str> = t.split('.').collect();
            let evil = idp.mint(json!({"sub": "mallory"}));
            let evil_payload = evil.split('.').nth(1).unwrap();
            format!("{}.{}.{}", parts[0], evil_payload, parts[2])
        }),
        ("oversized", "a".repeat(17 * 1024) + ".b.c"),
    ];
    for (name, token) in cases {
        for raw in [false, true] {
            let mut r = req("/x").policy("api").bearer(&token);
            if raw {
                r = r.raw();
            }
            let a = ask(&server, r).await;
            assert_eq!(a.status, 401, "{name}: {a:?}");
            a.assert_deny(401, "invalid_token");
            if token.len() > 8 {
                a.assert_not_echoing(&token);
            }
        }
    }
}

#[tokio::test]
async fn alg_none_and_hmac_confusion_are_refused() {
    let (idp, server) = world().await;
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = idp.claims(json!({}));
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    let a = ask(&server, req("/x").policy("api").bearer(&none)).await;
    a.assert_deny(401, "invalid_token");

    // HS256 signed with the RSA public key's JWK text as the secret: the classic confusion attack.
    let jwk_text = serde_json::to_string(&idp.signing_key().jwk).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(idp.signing_key().kid);
    let hs = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(jwk_text.as_bytes()),
    )
    .unwrap();
    let a = ask(&server, req("/x").policy("api").bearer(&hs)).await;
    a.assert_deny(401, "invalid_token");
    assert!(
        a.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("algorithm"),
        "{a:?}"
    );

    // RS256 header on an EC key's kid
    idp.rotate(vec![
        idp.signing_key(),
        SigningKey::load("ec256.pem", "ec1", Algorithm::ES256),
    ]);
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("ec1".into());
    let t = idp.signing_key().sign_with_header(&h, &claims);
    ask(&server, req("/x").policy("api").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
}

#[tokio::test]
async fn every_asymmetric_algorithm_verifies() {
    let keys = vec![
        SigningKey::load("rsa1.pem", "rs256", Algorithm::RS256),
        SigningKey::load("rsa1.pem", "rs384", Algorithm::RS384),
        SigningKey::load("rsa1.pem", "rs512", Algorithm::RS512),
        SigningKey::load("rsa1.pem", "ps256", Algorithm::PS256),
        SigningKey::load("ec256.pem", "es256", Algorithm::ES256),
        SigningKey::load("ec384.pem", "es384", Algorithm::ES384),
        SigningKey::load("ed25519.pem", "eddsa", Algorithm::EdDSA),
    ];
    let idp = MockIdp::start_with_keys(keys.clone()).await;
    let server = serve(&idp).ready().await;
    for k in &keys {
        let t = k.sign(&idp.claims(json!({})));
        let a = ask(&server, req("/x").policy("api").bearer(&t)).await;
        assert_eq!(a.status, 200, "{:?}: {a:?}", k.alg);
    }
}

#[tokio::test]
async fn keys_whose_use_forbids_signing_are_ignored() {
    let idp = MockIdp::start().await;
    let enc = SigningKey::rsa2();
    let mut jwk = enc.jwk.clone();
    jwk["use"] = json!("enc");
    idp.state.extra_jwks.lock().unwrap().push(jwk);
    let server = serve(&idp).ready().await;
    let t = enc.sign(&idp.claims(json!({})));
    ask(&server, req("/x").policy("api").bearer(&t))
        .await
        .assert_deny(401, "invalid_token");
    // the signing key still works
    ask(
        &server,
        req("/x").policy("api").bearer(&idp.mint(json!({}))),
    )
    .await
    .assert_allow();
}

#[tokio::test]
async fn insufficient_scope_is_403_with_challenge() {
    let (idp, server) = world().await;
    let t = idp.mint(json!({"scp": ["openid"]}));
    let a = ask(&server, req("/x").policy("api").bearer(&t)).await;
    a.assert_deny(403, "insufficient_scope");
    assert_eq!(a.grpc_code, tonic::Code::PermissionDenied as i32);
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    // space-separated string claim works as well as an array
    let t = idp.mint(json!({"scp": "openid api:read"}));
    ask(&server, req("/x").policy("api").bearer(&t))
        .await
        .assert_allow();
}

#[tokio::test]
async fn group_rules_or_of_and() {
    let (idp, server) = world().await;
    let host = "a.example.com";
    let ok_admin = idp.mint(json!({"groups": ["admins"]}));
    let ok_both = idp.mint(json!({"groups": ["ops", "oncall"]}));
    let only_ops = idp.mint(json!({"groups": ["ops"]}));
    ask(&server, req("/admin/x").host(host).bearer(&ok_admin))
        .await
        .assert_allow();
    ask(&server, req("/admin/x").host(host).bearer(&ok_both))
        .await
        .assert_allow();
    ask(&server, req("/admin/x").host(host).bearer(&only_ops))
        .await
        .assert_deny(403, "insufficient_scope");
}

#[tokio::test]
async fn policy_selection_and_fail_closed() {
    let (idp, server) = world().await;
    let t = idp.mint(json!({}));
    // routes table: prefix at a segment boundary
    let a = ask(&server, req("/routed/x?y=1").bearer(&t)).await;
    assert_eq!(
        (a.status, a.metadata.get("policy").map(String::as_str)),
        (200, Some("api"))
    );
    ask(&server, req("/routedx").bearer(&t))
        .await
        .assert_deny(403, "access_denied");
    // host wildcard + method
    let admin = idp.mint(json!({"groups": ["admins"]}));
    ask(
        &server,
        req("/admin").host("b.example.com:8443").bearer(&admin),
    )
    .await
    .assert_allow();
    ask(&server, req("/admin").host("example.com").bearer(&admin))
        .await
        .assert_deny(403, "access_denied");
    ask(
        &server,
        req("/admin")
            .host("b.example.com")
            .method("POST")
            .bearer(&admin),
    )
    .await
    .assert_deny(403, "access_denied");
    // an unknown policy named by Envoy: deny, never a default
    ask(&server, req("/routed/x").policy("nope").bearer(&t))
        .await
        .assert_deny(403, "access_denied");
    // context_extensions win over the routes table
    let a = ask(
        &server,
        req("/admin").host("b.example.com").policy("api").bearer(&t),
    )
    .await;
    assert_eq!(a.metadata.get("policy").map(String::as_str), Some("api"));
}

#[tokio::test]
async fn malformed_requests_never_error_or_allow() {
    let (idp, server) = world().await;
    let t = idp.mint(json!({}));
    // no attributes at all
    let a = Answer::from(server.check(Default::default()).await);
    a.assert_deny(403, "access_denied");
    // two Authorization headers (raw), non-UTF-8 Authorization, empty scheme, unknown scheme
    let cases = vec![
        req("/x").policy("api").raw().bearer(&t).bearer(&t),
        req("/x")
            .policy("api")
            .raw()
            .header_bytes("authorization", &[0x42, 0xff, 0xfe]),
        req("/x").policy("api").header("authorization", "Bearer"),
        req("/x")
            .policy("api")
            .header("authorization", "Bearer    "),
        req("/x")
            .policy("api")
            .header("authorization", "Digest abc"),
        req("/x")
            .policy("api")
            .header("authorization", "Basic YTpi"),
        req("/x")
            .policy("api")
            .header("authorization", &format!("Bearer {t},Bearer {t}")),
    ];
    for r in cases {
        ask(&server, r).await.assert_deny(401, "invalid_token");
    }
    // huge and non-UTF-8 values elsewhere do not matter
    let big = "v".repeat(256 * 1024);
    let a = ask(
        &server,
        req("/x")
            .policy("api")
            .raw()
            .bearer(&t)
            .header("x-big", &big)
            .header_bytes("x-bin", &[0xff]),
    )
    .await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn repeated_token_is_verified_once() {
    let (idp, server) = world().await;
    let t = idp.mint(json!({}));
    for _ in 0..5 {
        ask(&server, req("/x").policy("api").bearer(&t))
            .await
            .assert_allow();
    }
    let (_, metrics) = server.admin_get("/metrics").await;
    let hits = metric(
        &metrics,
        "oidc_authz_cache_lookups_total{cache=\"token\",result=\"hit\"}",
    );
    let misses = metric(
        &metrics,
        "oidc_authz_cache_lookups_total{cache=\"token\",result=\"miss\"}",
    );
    assert_eq!((hits, misses), (4.0, 1.0), "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "oidc_authz_decisions_total{policy=\"api\",method=\"bearer\",result=\"allow\"}"
        ),
        5.0
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let (_idp, server) = world().await;
    assert_eq!(server.admin_get("/healthz").await.0, 200);
    assert_eq!(
        server.admin_get("/readyz").await,
        (200, "ready\nstore: ok\n".to_string())
    );
    let (code, text) = server.admin_get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "oidc_authz_check_duration_seconds",
        "oidc_authz_idp_requests_total",
        "oidc_authz_idp_request_duration_seconds",
    ] {
        assert!(text.contains(name), "{name} missing in {text}");
    }
    // grpc health says SERVING
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn graceful_shutdown_stops_listening() {
    let (_idp, server) = world().await;
    let addr = server.grpc_addr;
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_check_finish() {
    let (idp, server) = world().await;
    // an introspection Check is held at the IdP (so it is surely in flight) when the shutdown signal comes
    idp.set_mode(Mode::Held);
    let token = idp.opaque(json!({}));
    let mut client = server.client().await;
    let in_flight = tokio::spawn(async move {
        Answer::from(
            client
                .check(req("/x").policy("intro").bearer(&token).build())
                .await
                .unwrap()
                .into_inner(),
        )
    });
    while idp.introspect_hits() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let addr = server.grpc_addr;
    let stopping = tokio::spawn(server.stop());
    // the listener closes once the shutdown has begun; only then is the IdP released
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    idp.set_mode(Mode::Up);
    let a = in_flight.await.unwrap();
    stopping.await.unwrap();
    assert_eq!(
        a.status, 200,
        "the in-flight Check is answered, not cut: {a:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn injected_headers_cannot_be_spoofed_by_spelling() {
    let (idp, server) = world().await;
    // `groups` absent: x-groups is removed; every other spelling of our headers is removed too, present or not
    let token = idp.mint(json!({"groups": null}));
    for raw in [false, true] {
        let mut r = req("/x")
            .policy("api")
            .bearer(&token)
            .header("x_user", "mallory")
            .header("X_Groups", "admins")
            .header("x_issuer", "https://evil.example")
            .header("x-request-id", "kept")
            .header("x_forwarded_host", "kept");
        if raw {
            r = r.raw();
        }
        let a = ask(&server, r).await;
        a.assert_allow();
        let mut removed = a.remove.clone();
        removed.sort();
        assert_eq!(
            removed,
            vec!["x-groups", "x_groups", "x_issuer", "x_user"],
            "raw={raw}"
        );
        assert_eq!(a.header("x-user"), Some("alice@example.com"));
    }
    // a name configured with '_' (Kong's seed `Issuer_Header`): the '-' spelling is removed, ours is set
    let a = ask(
        &server,
        req("/x")
            .policy("cc")
            .basic("cc-app", "cc-app-secret")
            .header("issuer-header", "https://evil.example")
            .header("ISSUER-HEADER", "https://evil.example"),
    )
    .await;
    a.assert_allow();
    assert!(a.remove.contains(&"issuer-header".to_string()), "{a:?}");
    assert_eq!(a.header("issuer_header"), Some(idp.issuer.as_str()));
    // the client-credential headers and Authorization in any other spelling on a policy that sends them
    let a = ask(
        &server,
        req("/x")
            .policy("cc")
            .header("client_id", "cc-app")
            .header("client_secret", "cc-app-secret")
            .header("client-secret", "copy"),
    )
    .await;
    a.assert_allow();
    for h in ["client_id", "client_secret", "client-secret"] {
        assert!(a.remove.contains(&h.to_string()), "{h}: {a:?}");
    }
}

/// The in-flight gauge and the cancelled-decision counter, read from /metrics.
async fn in_flight_and_cancelled(server: &TestServer) -> (f64, f64) {
    let text = server.admin_get("/metrics").await.1;
    let cancelled = text
        .lines()
        .filter(|l| {
            l.starts_with("oidc_authz_decisions_total{") && l.contains("result=\"cancelled\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (metric(&text, "oidc_authz_checks_in_flight "), cancelled)
}

#[tokio::test]
async fn a_check_cancelled_by_envoy_is_recorded_and_leaves_the_gauge_true() {
    let (idp, server) = world().await;
    // the Check waits at the IdP (held: surely in flight) when the client resets the stream, as Envoy does at
    // its own timeout
    idp.set_mode(Mode::Held);
    let token = idp.opaque(json!({}));
    let mut client = server.client().await;
    let call = tokio::spawn(async move {
        let _ = client
            .check(req("/x").policy("intro").bearer(&token).build())
            .await;
    });
    while idp.introspect_hits() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(in_flight_and_cancelled(&server).await, (1.0, 0.0));
    call.abort();
    // the server drops the Check when the reset arrives; wait for that (bounded), then read the record
    let mut seen = in_flight_and_cancelled(&server).await;
    for _ in 0..6000 {
        if seen.0 == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        seen = in_flight_and_cancelled(&server).await;
    }
    idp.set_mode(Mode::Up);
    assert_eq!(
        seen,
        (0.0, 1.0),
        "(in flight, cancelled) after the stream reset"
    );
    // and the next Check is counted as usual
    let t = idp.opaque(json!({}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_allow();
    assert_eq!(in_flight_and_cancelled(&server).await, (0.0, 1.0));
}
