//! `client_auth` at the provider against the in-process mock IdP: with `private_key_jwt` every call of this
//! service's own client (the code exchange at the token endpoint, introspection, revocation at logout) carries a
//! fresh RFC 7523 assertion the mock verifies with the registered public key, and a wrong key is refused (503, the
//! fail-closed answer to an IdP that refuses this service); callers of the client credentials grant keep their
//! secrets. `client_secret_jwt` is checked at the token endpoint too.

use serde_json::{Value, json};

use crate::login::{Browser, login};
use crate::support::*;

fn key_file(name: &str) -> String {
    format!(
        "{}/tests/data/client-keys/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn jwk(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(key_file(name)).unwrap()).unwrap()
}

/// The mock with `oidc-authz` registered for `private_key_jwt` (the public half of `registered`), and a server
/// whose provider signs with `signing`.
async fn jwt_world(registered: &str, signing: &str) -> (MockIdp, TestServer) {
    let idp = MockIdp::start().await;
    idp.register_jwt_client("oidc-authz", &jwk(registered));
    let server = serve(&idp)
        .edit(
            "client_secret = \"oidc-authz-secret\"",
            &format!(
                "client_auth = \"private_key_jwt\"\nclient_jwk_file = \"{}\"",
                key_file(signing)
            ),
        )
        .ready()
        .await;
    (idp, server)
}

/// cc-app's client credentials grant through policy `cc`.
async fn cc_app_is_allowed(server: &TestServer) {
    ask(
        server,
        req("/x").policy("cc").basic("cc-app", "cc-app-secret"),
    )
    .await
    .assert_allow();
}

#[tokio::test]
async fn private_key_jwt_authenticates_every_call_of_this_service() {
    let (idp, server) = jwt_world("rsa", "rsa").await;
    // introspection
    let t = idp.opaque(json!({"sub": "cc-app", "cid": "cc-app"}));
    ask(&server, req("/x").policy("intro").bearer(&t))
        .await
        .assert_allow();
    // the code exchange at the token endpoint, then revocation at logout
    let mut b = Browser::new();
    login(&server, &idp, &mut b, "/app", "login", "alice").await;
    ask(&server, b.req("/app", "login")).await.assert_allow();
    let a = ask(&server, b.req("/oauth2/logout", "login").method("POST")).await;
    assert_eq!(a.status, 302, "{a:?}");
    assert_eq!(idp.state.revocations.lock().unwrap().len(), 2);
    // a caller's client credentials: its own secret, as before
    cc_app_is_allowed(&server).await;

    let seen = idp.state.assertions.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["/v1/introspect", "/v1/token", "/v1/revoke", "/v1/revoke"],
        "one assertion per call of this service's client, none for the caller's grant"
    );
    let mut jtis = std::collections::HashSet::new();
    for (path, header, claims) in &seen {
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "test-rsa-1");
        assert_eq!(claims["iss"], "oidc-authz");
        assert_eq!(claims["sub"], "oidc-authz");
        assert_eq!(claims["aud"], format!("{}{path}", idp.issuer));
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert!(exp > iat && exp - iat <= 60, "{claims}");
        assert!(jtis.insert(claims["jti"].as_str().unwrap().to_string()));
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_by_the_provider_and_fails_closed() {
    let (idp, server) = jwt_world("rsa", "rsa-other").await;
    let t = idp.opaque(json!({}));
    let a = ask(&server, req("/x").policy("intro").bearer(&t)).await;
    assert_eq!(a.status, 503, "{a:?}");
    // the code exchange is refused too: no session
    let mut b = Browser::new();
    let start = ask(&server, b.req("/app", "login")).await;
    b.absorb(&start);
    let location = start.header("location").unwrap().to_string();
    let query = idp.login(&location, "alice");
    let cb = ask(
        &server,
        b.req(&format!("/oauth2/callback?{query}"), "login"),
    )
    .await;
    assert_ne!(cb.status, 200, "{cb:?}");
    b.absorb(&cb);
    let again = ask(&server, b.req("/app", "login")).await;
    assert_eq!(
        again.status, 302,
        "no session: to the login again; {again:?}"
    );
    assert!(idp.state.assertions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_secret_jwt_at_the_token_endpoint() {
    let idp = MockIdp::start().await;
    idp.state
        .token_auth_methods
        .lock()
        .unwrap()
        .push("client_secret_jwt".into());
    let server = serve(&idp)
        .edit(
            "client_secret = \"oidc-authz-secret\"",
            "client_secret = \"oidc-authz-secret\"\nclient_auth = \"client_secret_jwt\"",
        )
        .ready()
        .await;
    ask(
        &server,
        req("/x").policy("intro").bearer(&idp.opaque(json!({}))),
    )
    .await
    .assert_allow();
    // a caller's grant is signed with the caller's secret
    cc_app_is_allowed(&server).await;
    let seen = idp.state.assertions.lock().unwrap().clone();
    let who: Vec<(&str, &str, &str)> = seen
        .iter()
        .map(|(p, h, c)| {
            (
                p.as_str(),
                h["alg"].as_str().unwrap(),
                c["sub"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("/v1/introspect", "HS256", "oidc-authz"),
            ("/v1/token", "HS256", "cc-app")
        ]
    );
    // a wrong caller secret signs a wrong assertion: refused as invalid_client, 401
    ask(
        &server,
        req("/x").policy("cc").basic("cc-app", "not-the-secret"),
    )
    .await
    .assert_deny(401, "invalid_client");
}
