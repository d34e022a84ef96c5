//! What goes upstream on an allow: the claim headers, the token or ID token the policy sends, the metadata for
//! Envoy, the session cookies and client credentials stripped, and every client-sent spelling of a header the
//! policy controls removed.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::authn::Identity;
use crate::config::{AuthMethod, LoginSettings, Policy};
use crate::credentials::token_places::{ACCESS_TOKEN_PARAM, TokenPlace};
use crate::credentials::{Authorization, Credentials};
use crate::decision::Allow;
use crate::login::authcode::LOGIN_COOKIE;
use crate::login::cookie::RequestCookies;
use crate::policy::access::{Consumer, claim_header_value, claim_value};
use crate::policy::runtime::PolicyRuntime;
use crate::request::CheckView;

/// The allow of a request that authenticated as `id` and passed the access rules.
pub fn allow(
    rt: &PolicyRuntime,
    view: &CheckView<'_>,
    creds: &Credentials<'_>,
    mut id: Identity,
) -> Allow {
    let policy = &rt.policy;
    let settings = rt.login.as_ref().map(|flow| &flow.settings);
    let mut allowed = claim_headers(policy, &id);
    user_info_header(&mut allowed, policy, &id);
    token_headers(&mut allowed, policy, creds, &mut id);
    let id_token_header = settings.and_then(|s| s.upstream_id_token_header.as_ref());
    if id.method == AuthMethod::Session {
        if let (Some(h), Some(it)) = (id_token_header, id.id_token) {
            allowed.set_headers.push((h.clone(), it));
        }
    } else {
        // The client credentials it sent in headers stay here.
        if let Some((id_h, secret_h)) = &policy.client_credential_headers {
            for h in [id_h, secret_h] {
                if view.has_header(h.as_str()) && !allowed.remove_headers.contains(h) {
                    allowed.remove_headers.push(h.clone());
                }
            }
        }
        // A token won over a session: the session's headers are not ours to trust.
        if let Some(h) = id_token_header {
            allowed.remove_headers.push(h.clone());
        }
    }
    strip_our_cookies(&mut allowed, policy, settings, &creds.cookies);
    allowed.response_headers = id
        .set_cookies
        .into_iter()
        .map(|c| ("set-cookie", c))
        .collect();
    remove_spellings(&mut allowed, policy, view);
    // A token from the query never reaches the upstream (RFC 6750 2.3), whatever else goes there.
    if creds.token_place == Some(TokenPlace::Query) {
        allowed.remove_query_params.push(ACCESS_TOKEN_PARAM);
    }
    allowed
}

/// Largest `upstream_user_info_header` value sent (encoded bytes): well inside Envoy's and common upstreams'
/// header limits (Envoy: 60 KiB for all headers; nginx: 8 KiB per line by default).
pub const MAX_USER_INFO_HEADER: usize = 8 * 1024;

/// `upstream_user_info_header`: the userinfo answer of a request the `userinfo` method authenticated, as base64url
/// (no padding) JSON. An answer encoding to more than [`MAX_USER_INFO_HEADER`] bytes is not sent (logged; client
/// copies are still removed): a partial JSON would mislead, and an oversized header would make Envoy or the
/// upstream refuse a request that passed every rule.
fn user_info_header(allowed: &mut Allow, policy: &Policy, id: &Identity) {
    use base64::Engine;
    let Some(h) = &policy.upstream_user_info_header else {
        return;
    };
    if id.method != AuthMethod::Userinfo {
        return;
    }
    let Ok(json) = serde_json::to_vec(id.claims()) else {
        return;
    };
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    if value.len() > MAX_USER_INFO_HEADER {
        tracing::warn!(policy.name = %policy.name, bytes = value.len(), max = MAX_USER_INFO_HEADER, "the userinfo answer is too large for upstream_user_info_header: not sent");
        return;
    }
    allowed.set_headers.retain(|(k, _)| k != h);
    allowed.remove_headers.retain(|k| k != h);
    allowed.set_headers.push((h.clone(), value));
}

/// The largest `upstream_introspection_header` value sent, in bytes; a larger answer is left out (and logged),
/// never cut (a cut JSON is not JSON) and never a reason to refuse a request the rules allowed.
pub const MAX_INTROSPECTION_HEADER_BYTES: usize = 8 * 1024;

/// The access token in `upstream_access_token_header`, the introspection answer in
/// `upstream_introspection_header`, and the consumer in `dynamic_metadata` and `upstream_consumer_header`.
///
/// The token sent is the one that authenticated: the client's own for `bearer` and `introspection`, the grant's
/// for `client_credentials`, the session's for a session with `upstream_access_token`. With the default
/// (`authorization:bearer`) a client's own `Authorization` goes upstream as it is; with another header the token
/// goes there (after the prefix and a space) and the client's `Authorization` is removed, so the credential
/// reaches the upstream in one place only (and a client's `Basic` secret never does).
fn token_headers(allowed: &mut Allow, policy: &Policy, creds: &Credentials<'_>, id: &mut Identity) {
    let th = &policy.upstream_access_token_header;
    let ours = id.upstream_authorization.take();
    let token = match (&ours, id.method, &creds.authorization) {
        // `upstream_authorization` is `Bearer <token>` (see [`Identity`]).
        (Some(a), _, _) => Some(a.strip_prefix("Bearer ").unwrap_or(a)),
        (
            None,
            AuthMethod::Bearer | AuthMethod::Introspection | AuthMethod::Userinfo,
            Authorization::Bearer(t),
        ) => {
            // The client's own header already says it as the default would; a token from the query, a form body
            // or a cookie is sent in the configured header (the query parameter itself is removed).
            (!th.is_default() || !sent_authorization(creds)).then_some(&**t)
        }
        _ => None,
    };
    if let Some(token) = token {
        allowed
            .set_headers
            .insert(0, (th.name.clone(), th.value(token)));
        if !th.is_authorization() && sent_authorization(creds) {
            allowed.remove_headers.push(http::header::AUTHORIZATION);
        }
    }
    if let Some(h) = &policy.upstream_introspection_header {
        let value = if id.method == AuthMethod::Introspection {
            introspection_value(id.claims())
        } else {
            None
        };
        match value {
            Some(v) => allowed.set_headers.push((h.clone(), v)),
            None => allowed.remove_headers.push(h.clone()),
        }
    }
    if let Consumer::Named(consumer) = policy.access.consumer(id.claims()) {
        if let Some(h) = &policy.upstream_consumer_header {
            allowed.set_headers.push((h.clone(), consumer.clone()));
        }
        if policy.dynamic_metadata {
            allowed.metadata.push(("consumer", consumer));
        }
    } else if let Some(h) = &policy.upstream_consumer_header {
        allowed.remove_headers.push(h.clone());
    }
}

/// Whether the request came with an `Authorization` header (which a non-default token header must not let
/// through).
fn sent_authorization(creds: &Credentials<'_>) -> bool {
    match creds.authorization {
        Authorization::None => false,
        // A bearer token read from the query, a form body or a cookie did not come in `Authorization`.
        Authorization::Bearer(_) => matches!(creds.token_place, None | Some(TokenPlace::Header)),
        _ => true,
    }
}

/// The introspection answer as base64url (no padding) of its JSON; `None` (logged) when it is larger than
/// [`MAX_INTROSPECTION_HEADER_BYTES`].
fn introspection_value(answer: &Map<String, Value>) -> Option<String> {
    use base64::Engine;
    let json = serde_json::to_vec(answer).ok()?;
    if json.len().div_ceil(3) * 4 > MAX_INTROSPECTION_HEADER_BYTES {
        tracing::warn!(
            json_bytes = json.len(),
            limit = MAX_INTROSPECTION_HEADER_BYTES,
            "introspection answer too large for upstream_introspection_header: header left out"
        );
        return None;
    }
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

/// The session and login cookies, and the policy's token cookie (`bearer_token_cookie_name`), never go upstream:
/// rewrite the `Cookie` header without them (or drop it). The token cookie goes like the query's `access_token`: the
/// token reaches the upstream only in the header the policy sends it in.
fn strip_our_cookies(
    allowed: &mut Allow,
    policy: &Policy,
    settings: Option<&LoginSettings>,
    cookies: &RequestCookies<'_>,
) {
    let session: &[&str] = match settings {
        Some(s) => &[s.cookie_name.as_str(), LOGIN_COOKIE],
        None => &[],
    };
    let token: &[&str] = match &policy.bearer_token_places.cookie {
        Some(name) => &[name.as_str()],
        None => &[],
    };
    if session.is_empty() && token.is_empty() {
        return;
    }
    // A Cookie header that is not text cannot be searched for our cookies: none of it goes upstream (a session
    // cookie in it would be a credential the upstream could replay).
    if cookies.unreadable() {
        allowed.remove_headers.push(http::header::COOKIE);
        return;
    }
    if !session.iter().any(|n| cookies.has(n)) && !token.iter().any(|n| cookies.has_spelling_of(n))
    {
        return;
    }
    match cookies.without_names(session, token) {
        Some(rest) => allowed.set_headers.push((http::header::COOKIE, rest)),
        None => allowed.remove_headers.push(http::header::COOKIE),
    }
}

/// The claim headers and metadata of an allowed request.
fn claim_headers(policy: &Policy, id: &Identity) -> Allow {
    let (method, claims) = (id.method, id.claims());
    let mut out = Allow::default();
    for h in &policy.upstream_headers {
        let value = claim_value(claims, &h.claim)
            .and_then(claim_header_value)
            .filter(|v| HeaderValue::from_str(v).is_ok() && !v.is_empty());
        match value {
            Some(v) => out.set_headers.push((h.name.clone(), v)),
            None => out.remove_headers.push(h.name.clone()),
        }
    }
    dedup_headers(&mut out);
    if !policy.dynamic_metadata {
        return out;
    }
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(sub) = s("sub") {
        out.metadata.push(("sub", sub));
    }
    if let Some(iss) = id.iss() {
        out.metadata.push(("iss", iss.to_string()));
    }
    if let Some(cid) = s("client_id").or_else(|| s("cid")).or_else(|| s("azp")) {
        out.metadata.push(("client_id", cid));
    }
    out.metadata.push(("policy", policy.name.clone()));
    out.metadata
        .push(("auth_method", method.as_str().to_string()));
    out
}

/// Removes every client-sent header spelled like one the policy controls (any case, `_` for `-`, or exactly),
/// unless it is one this answer sets (which overwrites it): WSGI/CGI/Rack/PHP upstreams read `X_User` as `X-User`,
/// so a client's `x_user: mallory` must not reach them next to (or instead of) the `x-user` we set, and a header
/// we set only sometimes (the ID-token header of a session without an ID token) must never come from the client.
/// The one exception is the client's own `Authorization` on a token request: it is the credential that was just
/// verified, and goes upstream as it is.
fn remove_spellings(allowed: &mut Allow, policy: &Policy, view: &CheckView<'_>) {
    if policy.controlled_headers.is_empty() {
        return;
    }
    for sent in view.header_names() {
        if sent.starts_with(':') || sent.eq_ignore_ascii_case("authorization") {
            continue;
        }
        let ours = policy
            .controlled_headers
            .iter()
            .any(|ours| spelled_alike(sent, ours.as_str()));
        if ours
            && let Ok(name) = HeaderName::from_bytes(sent.to_ascii_lowercase().as_bytes())
            && !allowed.remove_headers.contains(&name)
            && !allowed.set_headers.iter().any(|(k, _)| *k == name)
        {
            allowed.remove_headers.push(name);
        }
    }
}

/// Whether a header name reads as `ours` (lower case) once lower-cased with `_` taken as `-`.
fn spelled_alike(sent: &str, ours: &str) -> bool {
    let norm = |b: u8| {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    sent.len() == ours.len()
        && sent
            .bytes()
            .zip(ours.bytes())
            .all(|(a, b)| norm(a) == norm(b))
}

/// A header configured twice keeps its first value; a name never appears both set and removed.
fn dedup_headers(a: &mut Allow) {
    let mut seen: Vec<HeaderName> = Vec::new();
    a.set_headers.retain(|(k, _)| {
        if seen.contains(k) {
            false
        } else {
            seen.push(k.clone());
            true
        }
    });
    a.remove_headers.retain(|k| !seen.contains(k));
    a.remove_headers.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn login_policy() -> Policy {
        let cfg = Config::from_toml(
            r#"
[providers.p]
issuer = "https://idp.example.com"
client_id = "app"
audiences = ["api"]
[policies.web]
provider = "p"
auth_methods = ["authorization_code", "session"]
redirect_uri = "https://app.example.com/cb"
session_secret = "fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg="
upstream_id_token_header = "x-id-token"
upstream_headers_claims = ["sub"]
upstream_headers_names = ["x-user"]
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        cfg.policies[0].clone()
    }

    /// The introspection answer goes upstream whole or not at all.
    #[test]
    fn introspection_header_is_whole_or_left_out() {
        use base64::Engine;
        let small: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"active": true, "sub": "a"})).unwrap();
        let v = introspection_value(&small).unwrap();
        let back = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v)
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Map<String, Value>>(&back).unwrap(),
            small
        );
        let mut big = small.clone();
        big.insert("blob".into(), Value::String("x".repeat(6 * 1024)));
        assert!(
            introspection_value(&big).is_none(),
            "8 KiB encoded is the limit"
        );
        let mut edge = small.clone();
        edge.insert("blob".into(), Value::String("x".repeat(5 * 1024)));
        assert!(introspection_value(&edge).unwrap().len() <= MAX_INTROSPECTION_HEADER_BYTES);
    }

    /// A header we set only sometimes (the ID token of a session that has none) never comes from the client, in
    /// any spelling; a header we do set is overwritten, not removed; the client's Authorization is not ours.
    #[test]
    fn controlled_headers_not_set_are_removed_in_every_spelling() {
        let policy = login_policy();
        let req = crate::request::get_with_headers(&[
            ("x-id-token", "someone-elses-id-token"),
            ("x_id_token", "x"),
            ("x-user", "mallory"),
            ("x_user", "mallory"),
            ("authorization", "Bearer t"),
            ("x-other", "kept"),
        ]);
        let view = CheckView::new(&req);
        let mut allowed = Allow::default();
        allowed
            .set_headers
            .push((HeaderName::from_static("x-user"), "alice".into()));
        remove_spellings(&mut allowed, &policy, &view);
        let mut removed: Vec<&str> = allowed.remove_headers.iter().map(|h| h.as_str()).collect();
        removed.sort();
        assert_eq!(removed, vec!["x-id-token", "x_id_token", "x_user"]);
        assert_eq!(allowed.set_headers.len(), 1);
    }
}
