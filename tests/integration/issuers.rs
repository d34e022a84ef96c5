//! Several issuers on one policy (`providers = ["okta", "entra"]`): two in-process mock IdPs with their own keys;
//! a JWT's `iss` picks the provider, an issuer not listed is refused without a call to any IdP.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::support::*;

/// Every call the IdP has received (discovery, JWKS, token, introspection).
fn calls(idp: &MockIdp) -> usize {
    idp.state.discovery_hits.load(Ordering::SeqCst)
        + idp.jwks_hits()
        + idp.token_hits()
        + idp.introspect_hits()
}

/// The standard world (`okta` on IdP A, key rsa1), plus `entra` on IdP B (key rsa2) and a policy over both.
async fn two_issuers() -> (MockIdp, MockIdp, TestServer) {
    let a = MockIdp::start().await;
    let b = MockIdp::start_with_keys(vec![SigningKey::rsa2()]).await;
    let server = serve(&a)
        .extra(&format!(
            r#"
[providers.entra]
issuer = "{issuer}"
client_id = "oidc-authz"
client_secret = "oidc-authz-secret"
audiences = ["api://default"]
leeway_secs = 0
jwks_min_refetch_secs = 0

[policies.multi]
providers = ["okta", "entra"]
auth_methods = ["bearer", "client_credentials"]
display_errors = true
scopes = ["api:read"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["iss", "sub"]
upstream_headers_names = ["x-issuer", "x-user"]
"#,
            issuer = b.issuer
        ))
        .ready()
        .await;
    (a, b, server)
}

#[tokio::test]
async fn tokens_of_both_issuers_pass_with_their_own_issuer_shown() {
    let (a, b, server) = two_issuers().await;
    for idp in [&a, &b] {
        let token = idp.mint(json!({}));
        let answer = ask(&server, req("/x").policy("multi").bearer(&token)).await;
        answer.assert_allow();
        assert_eq!(answer.metadata.get("iss"), Some(&idp.issuer));
        let shown = answer.headers.iter().find(|(k, _, _)| k == "x-issuer");
        assert_eq!(shown.map(|h| h.1.as_str()), Some(idp.issuer.as_str()));
        answer.assert_not_echoing(&token);
    }
    // the one-provider policies on the same server still take only their own issuer
    let answer = ask(&server, req("/x").policy("api").bearer(&b.mint(json!({})))).await;
    answer.assert_deny(401, "invalid_token");
}

#[tokio::test]
async fn an_issuer_not_listed_is_refused_with_no_call_to_any_idp() {
    let (a, b, server) = two_issuers().await;
    let c = MockIdp::start().await;
    let before = (calls(&a), calls(&b), calls(&c));
    for token in [
        c.mint(json!({})),
        // A's key, an issuer nobody lists
        a.mint(json!({"iss": "https://evil.example.com"})),
        a.mint(json!({"iss": format!("{}/", a.issuer)})),
        a.mint(json!({"iss": null})),
    ] {
        let answer = ask(&server, req("/x").policy("multi").bearer(&token)).await;
        answer.assert_deny(401, "invalid_token");
        assert_eq!(
            answer.json()["error_description"],
            "the token was issued by another issuer"
        );
    }
    assert_eq!((calls(&a), calls(&b), calls(&c)), before);
}

#[tokio::test]
async fn a_token_signed_by_one_issuer_claiming_the_other_is_refused() {
    let (a, b, server) = two_issuers().await;
    // A's key (rsa1), B's issuer: verified with B's keys, which do not have it
    let forged = a.mint(json!({"iss": b.issuer}));
    let answer = ask(&server, req("/x").policy("multi").bearer(&forged)).await;
    answer.assert_deny(401, "invalid_token");
    // B's key, A's issuer: the same the other way round
    let forged = b.signing_key().sign(&a.claims(json!({})));
    let answer = ask(&server, req("/x").policy("multi").bearer(&forged)).await;
    answer.assert_deny(401, "invalid_token");
    // the genuine tokens still pass
    for idp in [&a, &b] {
        ask(
            &server,
            req("/x").policy("multi").bearer(&idp.mint(json!({}))),
        )
        .await
        .assert_allow();
    }
}

#[tokio::test]
async fn client_credentials_run_at_the_first_provider() {
    let (a, b, server) = two_issuers().await;
    let answer = ask(
        &server,
        req("/x").policy("multi").basic("cc-app", "cc-app-secret"),
    )
    .await;
    answer.assert_allow();
    assert_eq!(answer.metadata.get("iss"), Some(&a.issuer));
    assert_eq!((a.token_hits(), b.token_hits()), (1, 0));
}
