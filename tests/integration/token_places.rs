//! Tokens from the query, a form body and a cookie (`bearer_token_param_type`): verified like a header token, the
//! query parameter removed upstream, and every second place or repeat refused without echoing the token.

use serde_json::json;

use crate::support::*;

/// A policy reading tokens everywhere, one reading them in the query alone, and one login policy with a token
/// cookie; each sends the token upstream under its own name.
const PLACES: &str = r#"
[policies.places]
provider = "okta"
auth_methods = ["bearer", "introspection"]
display_errors = true
bearer_token_param_type = ["header", "query", "body", "cookie"]
bearer_token_cookie_name = "access_token"
upstream_headers_claims = ["sub"]
upstream_headers_names = ["x-user"]

[policies.query_only]
provider = "okta"
auth_methods = ["bearer"]
display_errors = true
bearer_token_param_type = ["query"]

[policies.login_cookie]
provider = "okta"
auth_methods = ["bearer", "authorization_code", "session"]
display_errors = true
bearer_token_param_type = ["header", "cookie"]
bearer_token_cookie_name = "at"
redirect_uri = "https://app.example.com/oauth2/cookie-callback"
session_secret = "fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg="
"#;

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn a_query_token_is_allowed_and_removed_upstream() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let token = idp.mint(json!({}));
    for policy in ["places", "query_only"] {
        for raw in [false, true] {
            let mut r = req(&format!("/get?a=1&access_token={token}&b=2")).policy(policy);
            if raw {
                r = r.raw();
            }
            let a = ask(&server, r).await;
            a.assert_allow();
            assert_eq!(a.remove_query, vec!["access_token".to_string()], "{policy}");
            assert_eq!(
                a.metadata.get("auth_method").map(String::as_str),
                Some("bearer")
            );
            // The token left the query: the upstream gets it in `upstream_access_token_header` (default
            // `Authorization: Bearer`), as from a header, and nowhere else.
            let bearer = format!("Bearer {token}");
            assert_eq!(a.header("authorization"), Some(bearer.as_str()), "{policy}");
        }
    }
    // A header token removes nothing from the query.
    let a = ask(&server, req("/get?a=1").policy("places").bearer(&token)).await;
    a.assert_allow();
    assert!(a.remove_query.is_empty());
    assert_eq!(a.header("x-user"), Some("alice@example.com"));
}

#[tokio::test]
async fn opaque_tokens_from_any_place_are_introspected() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let token = idp.opaque(json!({}));
    let body = format!("x=1&access_token={token}");
    for r in [
        req(&format!("/get?access_token={token}")),
        req("/get").header("cookie", &format!("a=b; access_token={token}")),
        req("/post")
            .method("POST")
            .header("content-type", FORM)
            .header("content-length", &body.len().to_string())
            .body(&body),
    ] {
        let a = ask(&server, r.policy("places")).await;
        a.assert_allow();
        assert_eq!(
            a.metadata.get("auth_method").map(String::as_str),
            Some("introspection")
        );
    }
}

#[tokio::test]
async fn a_bad_token_anywhere_is_401_without_the_token() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let good = idp.mint(json!({}));
    let bad = format!("{good}x");
    for r in [
        req(&format!("/get?access_token={bad}")),
        req("/get").header("cookie", &format!("access_token={bad}")),
    ] {
        let a = ask(&server, r.policy("places")).await;
        a.assert_deny(401, "invalid_token");
        a.assert_not_echoing(&bad);
    }
}

/// RFC 6750: one method only, and the header is not a token place where the policy does not list it.
#[tokio::test]
async fn two_places_a_repeat_or_an_unlisted_header_is_401() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let token = idp.mint(json!({}));
    let q = format!("/get?access_token={token}");
    for (policy, r, why) in [
        ("places", req(&q).bearer(&token), "more than one place"),
        (
            "places",
            req(&q).header("cookie", &format!("access_token={token}")),
            "more than one place",
        ),
        (
            "places",
            req(&format!("{q}&access_token={token}")),
            "repeated",
        ),
        (
            "places",
            req("/get").header(
                "cookie",
                &format!("access_token={token}; access_token={token}"),
            ),
            "repeated",
        ),
        (
            "query_only",
            req("/get").bearer(&token),
            "does not take a token in the Authorization header",
        ),
        ("query_only", req(&q).bearer(&token), "more than one place"),
    ] {
        let a = ask(&server, r.policy(policy)).await;
        a.assert_deny(401, "invalid_token");
        assert!(a.body.contains(why), "{policy} {why}: {}", a.body);
        a.assert_not_echoing(&token);
    }
}

/// A form body must reach us whole: absent or cut, the request is refused, never allowed on another token.
#[tokio::test]
async fn a_form_body_that_did_not_arrive_whole_is_401() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let token = idp.mint(json!({}));
    let body = format!("access_token={token}");
    let post = || {
        req("/post")
            .policy("places")
            .method("POST")
            .header("content-type", FORM)
    };
    let a = ask(
        &server,
        post().header("content-length", "50").bearer(&token),
    )
    .await;
    a.assert_deny(401, "invalid_token");
    assert!(a.body.contains("with_request_body"), "{}", a.body);
    let a = ask(
        &server,
        post()
            .header("x-envoy-auth-partial-body", "true")
            .body(&body),
    )
    .await;
    a.assert_deny(401, "invalid_token");
    assert!(a.body.contains("truncated"), "{}", a.body);
    a.assert_not_echoing(&token);
    // Whole, it is read; a GET's form body is not a token place.
    let whole = post()
        .header("x-envoy-auth-partial-body", "false")
        .header("content-length", &body.len().to_string())
        .body(&body);
    ask(&server, whole).await.assert_allow();
    let get = req("/get")
        .policy("places")
        .header("content-type", FORM)
        .body(&body);
    let a = ask(&server, get).await;
    a.assert_deny(401, "invalid_token");
    assert!(a.body.contains("no access token"), "{}", a.body);
}

/// On a login policy, a token cookie wins over the session (as an `Authorization` token does) and the browser is
/// not sent to log in; without it, the login goes on as before.
#[tokio::test]
async fn a_token_cookie_on_a_login_policy_wins_over_logging_in() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let token = idp.mint(json!({}));
    let browser = |r: Req| r.policy("login_cookie").header("accept", "text/html");
    let a = ask(
        &server,
        browser(req("/app")).header("cookie", &format!("at={token}")),
    )
    .await;
    a.assert_allow();
    assert_eq!(
        a.metadata.get("auth_method").map(String::as_str),
        Some("bearer")
    );
    let a = ask(&server, browser(req("/app")).header("cookie", "other=1")).await;
    assert_eq!(a.status, 302, "{a:?}");
    let a = ask(
        &server,
        browser(req("/app")).header("cookie", &format!("at={token}x")),
    )
    .await;
    a.assert_deny(401, "invalid_token");
}

/// A `Cookie` header Envoy passes as raw bytes that are not UTF-8 may carry a second token cookie: the request is
/// refused (401, JSON), never allowed on the readable copy.
#[tokio::test]
async fn a_cookie_header_that_is_not_text_is_401_on_a_token_cookie_policy() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let token = idp.mint(json!({}));
    let other = idp.mint(json!({ "sub": "mallory" }));
    let mut second = format!("access_token={other}; x=").into_bytes();
    second.push(0xff);
    let r = req("/get")
        .policy("places")
        .raw()
        .header("cookie", &format!("access_token={token}"))
        .header_bytes("cookie", &second);
    let a = ask(&server, r).await;
    a.assert_deny(401, "invalid_token");
    assert!(a.body.contains("not valid text"), "{}", a.body);
    a.assert_not_echoing(&token);
    // Readable, the same copies are a repeat.
    let r = req("/get")
        .policy("places")
        .raw()
        .header("cookie", &format!("access_token={token}"))
        .header("cookie", &format!("access_token={other}"));
    let a = ask(&server, r).await;
    a.assert_deny(401, "invalid_token");
    assert!(a.body.contains("repeated"), "{}", a.body);
}

/// The token cookie is a credential like the query's `access_token`: on an allow it leaves the upstream `Cookie`
/// header (every copy, the other cookies kept), and the token goes upstream only in the policy's token header.
#[tokio::test]
async fn a_token_cookie_is_removed_from_the_upstream_cookie_header() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let token = idp.mint(json!({}));
    for raw in [false, true] {
        let mut r = req("/get")
            .policy("places")
            .header("cookie", &format!("a=b; access_token={token}; c=d"));
        if raw {
            r = r.raw();
        }
        let a = ask(&server, r).await;
        a.assert_allow();
        assert_eq!(a.header("cookie"), Some("a=b; c=d"), "raw {raw}: {a:?}");
        if raw {
            // A second Cookie header (HTTP/2 may send one per cookie): both are read, the rewrite replaces them.
            let r = req("/get")
                .policy("places")
                .raw()
                .header("cookie", "a=b")
                .header("cookie", &format!("access_token={token}"));
            let a = ask(&server, r).await;
            a.assert_allow();
            assert_eq!(a.header("cookie"), Some("a=b"), "{a:?}");
        }
        // Alone, the header goes.
        let a = ask(
            &server,
            req("/get")
                .policy("places")
                .header("cookie", &format!("access_token={token}")),
        )
        .await;
        a.assert_allow();
        assert_eq!(a.header("cookie"), None, "{a:?}");
        assert!(a.remove.iter().any(|h| h == "cookie"), "{a:?}");
        assert_eq!(
            a.header("authorization"),
            Some(format!("Bearer {token}").as_str())
        );
    }
    // On a login policy, next to the session's own cookies; a cookie only named like it (`at_1`) stays.
    let a = ask(
        &server,
        req("/app")
            .policy("login_cookie")
            .header("cookie", &format!("at={token}; at_1=keep; other=1")),
    )
    .await;
    a.assert_allow();
    assert_eq!(a.header("cookie"), Some("at_1=keep; other=1"), "{a:?}");
    // Spellings an upstream reads as the token cookie (ASP.NET: any case; PHP: `.` and ` ` as `_`) go too: the
    // upstream could take one for a token oidc-authz never verified.
    let a = ask(
        &server,
        req("/get")
            .policy("places")
            .bearer(&token)
            .header("cookie", "Access_Token=unverified; access.token=x; a=b"),
    )
    .await;
    a.assert_allow();
    assert_eq!(a.header("cookie"), Some("a=b"), "{a:?}");
    // A header token leaves the cookies alone.
    let a = ask(
        &server,
        req("/get")
            .policy("places")
            .bearer(&token)
            .header("cookie", "a=b"),
    )
    .await;
    a.assert_allow();
    assert_eq!(a.header("cookie"), None, "{a:?}");
    assert!(!a.remove.iter().any(|h| h == "cookie"), "{a:?}");
}

/// A `Cookie` header that is not UTF-8 cannot be searched for the session's cookies: on a login policy's allow (by a
/// bearer token here) it is removed whole, so a session cookie in it never reaches the upstream.
#[tokio::test]
async fn a_cookie_header_that_is_not_text_is_removed_upstream_on_a_login_policy() {
    let (idp, server) = world_with(|s| s.extra(PLACES)).await;
    let token = idp.mint(json!({}));
    let mut cookie = b"oidc_authz_session=sealed-session-value; x=".to_vec();
    cookie.push(0xff);
    let r = req("/get")
        .policy("login")
        .raw()
        .header("authorization", &format!("Bearer {token}"))
        .header_bytes("cookie", &cookie);
    let a = ask(&server, r).await;
    a.assert_allow();
    assert!(a.remove.iter().any(|h| h == "cookie"), "{a:?}");
    assert_eq!(a.header("cookie"), None, "{a:?}");
}
