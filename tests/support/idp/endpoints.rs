//! The mock IdP's HTTP endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{IdpState, Mode};
use crate::support::{now, rand_u64};

/// The routes under `/oauth2/default` (Okta's default authorization server).
pub(super) fn router(state: Arc<IdpState>) -> Router {
    Router::new()
        .route(
            "/oauth2/default/.well-known/openid-configuration",
            get(oidc_discovery),
        )
        .route(
            "/oauth2/default/.well-known/oauth-authorization-server",
            get(discovery),
        )
        .route("/oauth2/default/v1/keys", get(jwks))
        .route("/oauth2/default/v1/token", post(token))
        .route("/oauth2/default/v1/introspect", post(introspect))
        .route("/oauth2/default/v1/revoke", post(revoke))
        .route("/oauth2/default/v1/userinfo", get(userinfo))
        .with_state(state)
}

async fn gate(state: &IdpState) -> Option<Response> {
    let mut mode = state.mode.lock().unwrap().clone();
    let mut waited = 0;
    while mode == Mode::Held {
        if waited == 6000 {
            return Some((StatusCode::SERVICE_UNAVAILABLE, "held too long").into_response());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
        mode = state.mode.lock().unwrap().clone();
    }
    match mode {
        Mode::Held => None,
        Mode::Up => None,
        Mode::Down => Some((StatusCode::SERVICE_UNAVAILABLE, "down").into_response()),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Mode::Garbage => Some((StatusCode::OK, "<html>oops</html>").into_response()),
    }
}

async fn oidc_discovery(State(s): State<Arc<IdpState>>) -> Response {
    if !s.oidc_discovery.load(Ordering::SeqCst) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    discovery(State(s)).await
}

async fn discovery(State(s): State<Arc<IdpState>>) -> Response {
    s.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if s.no_discovery.load(Ordering::SeqCst) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    if let Some(r) = gate(&s).await {
        return r;
    }
    let issuer = s.issuer.lock().unwrap().clone();
    let claimed = s
        .claimed_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(issuer.clone());
    axum::Json(json!({
        "issuer": claimed,
        "jwks_uri": format!("{issuer}/v1/keys"),
        "token_endpoint": format!("{issuer}/v1/token"),
        "introspection_endpoint": format!("{issuer}/v1/introspect"),
        "authorization_endpoint": format!("{issuer}/v1/authorize"),
        "end_session_endpoint": format!("{issuer}/v1/logout"),
        "revocation_endpoint": format!("{issuer}/v1/revoke"),
        "userinfo_endpoint": format!("{issuer}/v1/userinfo"),
        "token_endpoint_auth_methods_supported": s.token_auth_methods.lock().unwrap().clone(),
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<IdpState>>) -> Response {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = gate(&s).await {
        return r;
    }
    let mut keys: Vec<Value> = s
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|k| k.jwk.clone())
        .collect();
    keys.extend(s.extra_jwks.lock().unwrap().iter().cloned());
    axum::Json(json!({ "keys": keys })).into_response()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "error_description": "mock idp says no" })),
    )
        .into_response()
}

fn pct_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The token endpoint: client credentials, authorization code (with PKCE) and refresh grants, Okta-style answers.
async fn token(
    State(s): State<Arc<IdpState>>,
    headers: axum::http::HeaderMap,
    axum::extract::Form(form): axum::extract::Form<HashMap<String, String>>,
) -> Response {
    s.token_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = gate(&s).await {
        return r;
    }
    let forced = s.token_status.load(Ordering::SeqCst);
    if forced != 0 {
        return oauth_error(StatusCode::from_u16(forced).unwrap(), "server_error");
    }
    let id = match client_auth(&s, &headers, &form, "/v1/token") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let allowed = s
        .clients
        .lock()
        .unwrap()
        .get(&id)
        .map(|c| c.1.clone())
        .unwrap_or_default();
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some("authorization_code") => return code_grant(&s, &id, &form),
        Some("refresh_token") => return refresh_grant(&s, &id, &form),
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
    let requested: Vec<String> = form
        .get("scope")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    if requested.iter().any(|r| !allowed.contains(r)) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope");
    }
    let granted = if requested.is_empty() {
        allowed
    } else {
        requested
    };
    let expires_in = s.expires_in.load(Ordering::SeqCst);
    let issuer = s.issuer.lock().unwrap().clone();
    let access_token = if s.opaque_tokens.load(Ordering::SeqCst) {
        let t = format!("opaque-{:x}", rand_u64());
        let now = now();
        s.introspectable.lock().unwrap().insert(
            t.clone(),
            json!({"iss": issuer, "aud": "api://default", "sub": id, "client_id": id, "cid": id, "scp": granted,
                   "scope": granted.join(" "), "token_type": "Bearer", "iat": now, "exp": now + expires_in}),
        );
        t
    } else {
        let now = now();
        let key = s.keys.lock().unwrap()[0].clone();
        key.sign(&json!({
            "iss": issuer, "aud": "api://default", "sub": id, "cid": id, "scp": granted,
            "iat": now, "exp": now + expires_in, "jti": format!("{:x}", rand_u64()),
        }))
    };
    axum::Json(json!({
        "access_token": access_token, "token_type": "Bearer", "expires_in": expires_in, "scope": granted.join(" "),
    }))
    .into_response()
}

fn user_tokens(s: &IdpState, client: &str, sub: &str, nonce: Option<&str>) -> Response {
    let now = now() + s.clock_offset.load(Ordering::SeqCst);
    let issuer = s.issuer.lock().unwrap().clone();
    let key = s.keys.lock().unwrap()[0].clone();
    let expires_in = s.expires_in.load(Ordering::SeqCst);
    let groups = if sub == "alice" {
        json!(["Everyone", "kong_group"])
    } else {
        json!(["Everyone"])
    };
    let mut at = json!({
        "iss": issuer, "aud": "api://default", "sub": sub, "uid": sub, "cid": client, "scp": ["openid", "api:read"],
        "groups": groups, "iat": now, "exp": now + expires_in, "jti": format!("{:x}", rand_u64()),
    });
    if let (Some(at), Some(extra)) = (at.as_object_mut(), s.user_extra.lock().unwrap().as_object())
    {
        for (k, v) in extra {
            at.insert(k.clone(), v.clone());
        }
    }
    let mut id = json!({
        "iss": issuer, "aud": client, "sub": sub, "email": format!("{sub}@example.com"), "groups": groups,
        "iat": now, "exp": now + 3600, "name": sub,
    });
    if let Some(n) = nonce {
        id["nonce"] = json!(n);
    }
    let rt = format!("rt-{:x}", rand_u64());
    s.refresh_tokens
        .lock()
        .unwrap()
        .insert(rt.clone(), sub.to_string());
    axum::Json(json!({
        "access_token": key.sign(&at), "id_token": key.sign(&id), "refresh_token": rt,
        "token_type": "Bearer", "expires_in": expires_in,
    }))
    .into_response()
}

fn code_grant(s: &IdpState, client: &str, form: &HashMap<String, String>) -> Response {
    use base64::Engine;
    use sha2::Digest;
    let code = form.get("code").cloned().unwrap_or_default();
    let grant = {
        let mut codes = s.codes.lock().unwrap();
        match codes.get_mut(&code) {
            Some(g) if !g.used => {
                g.used = true;
                g.clone()
            }
            _ => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
        }
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    if verifier.is_empty() || challenge != grant.challenge {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    if form.get("redirect_uri") != Some(&grant.redirect_uri) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    user_tokens(s, client, &grant.sub, Some(&grant.nonce))
}

fn refresh_grant(s: &IdpState, client: &str, form: &HashMap<String, String>) -> Response {
    let rt = form.get("refresh_token").cloned().unwrap_or_default();
    let sub = if s.rotate_refresh_tokens.load(Ordering::SeqCst) {
        s.refresh_tokens.lock().unwrap().remove(&rt)
    } else {
        s.refresh_tokens.lock().unwrap().get(&rt).cloned()
    };
    match sub {
        Some(sub) => user_tokens(s, client, &sub, None),
        None => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
    }
}

/// Client authentication as the token endpoint does it; `Err` is the 401 answer. `endpoint` is the path called
/// (under the issuer): a client assertion must name its URL in `aud`, as Okta requires.
#[allow(clippy::result_large_err)]
fn client_auth(
    s: &IdpState,
    headers: &axum::http::HeaderMap,
    form: &HashMap<String, String>,
    endpoint: &str,
) -> Result<String, Response> {
    use base64::Engine;
    let methods = s.token_auth_methods.lock().unwrap().clone();
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|p| {
            p.split_once(':')
                .map(|(a, b)| (pct_decode(a), pct_decode(b)))
        });
    if let Some(jwt) = form.get("client_assertion") {
        if basic.is_some() || form.contains_key("client_secret") {
            return Err(oauth_error(StatusCode::BAD_REQUEST, "invalid_request"));
        }
        let aud = format!("{}{endpoint}", s.issuer.lock().unwrap());
        return client_assertion(s, form, jwt, &aud, endpoint)
            .ok_or_else(|| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"));
    }
    let (id, secret) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(pair), None, None) if methods.iter().any(|m| m == "client_secret_basic") => pair,
        (None, Some(id), Some(sec)) if methods.iter().any(|m| m == "client_secret_post") => {
            (id.clone(), sec.clone())
        }
        _ => return Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client")),
    };
    if s.jwt_clients.lock().unwrap().contains_key(&id) {
        return Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"));
    }
    match s.clients.lock().unwrap().get(&id) {
        Some((want, _)) if *want == secret => Ok(id),
        _ => Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client")),
    }
}

/// RFC 7523 client authentication: `private_key_jwt` for a client in `jwt_clients` (verified with its public
/// JWK), `client_secret_jwt` (HS256 with its secret) for one in `clients` when discovery lists it. iss = sub =
/// the client, `aud` the URL called, a short `exp`, a `jti` never seen before. The client id, or `None`.
fn client_assertion(
    s: &IdpState,
    form: &HashMap<String, String>,
    jwt: &str,
    aud: &str,
    endpoint: &str,
) -> Option<String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return None;
    }
    let header = jsonwebtoken::decode_header(jwt).ok()?;
    let unverified: Value = {
        use base64::Engine;
        let payload = jwt.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&bytes).ok()?
    };
    let id = unverified["sub"].as_str()?.to_string();
    if form.get("client_id").is_some_and(|c| *c != id) {
        return None;
    }
    let public = s.jwt_clients.lock().unwrap().get(&id).cloned();
    let key = match (public, header.alg) {
        (Some(jwk), Algorithm::RS256 | Algorithm::PS256) if jwk["kty"] == "RSA" => {
            DecodingKey::from_rsa_components(jwk["n"].as_str()?, jwk["e"].as_str()?).ok()?
        }
        (Some(jwk), Algorithm::ES256) if jwk["kty"] == "EC" => {
            DecodingKey::from_ec_components(jwk["x"].as_str()?, jwk["y"].as_str()?).ok()?
        }
        (None, Algorithm::HS256)
            if s.token_auth_methods
                .lock()
                .unwrap()
                .iter()
                .any(|m| m == "client_secret_jwt") =>
        {
            let secret = s.clients.lock().unwrap().get(&id)?.0.clone();
            DecodingKey::from_secret(secret.as_bytes())
        }
        _ => return None,
    };
    let mut v = Validation::new(header.alg);
    v.set_audience(&[aud]);
    v.set_issuer(&[id.as_str()]);
    v.sub = Some(id.clone());
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    v.leeway = 5;
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &v).ok()?.claims;
    let (iat, exp) = (claims["iat"].as_u64()?, claims["exp"].as_u64()?);
    if exp.saturating_sub(iat) > 300 {
        return None;
    }
    let jti = claims["jti"].as_str()?.to_string();
    let mut seen = s.assertions.lock().unwrap();
    if seen.iter().any(|(_, _, c)| c["jti"] == jti.as_str()) {
        return None;
    }
    let header = serde_json::to_value(&header).ok()?;
    seen.push((endpoint.to_string(), header, claims));
    Some(id)
}

/// RFC 7009 revocation (client authentication as at the token endpoint): the token no longer refreshes or
/// introspects.
async fn revoke(
    State(s): State<Arc<IdpState>>,
    headers: axum::http::HeaderMap,
    axum::extract::Form(form): axum::extract::Form<HashMap<String, String>>,
) -> Response {
    s.revoke_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = gate(&s).await {
        return r;
    }
    if let Err(r) = client_auth(&s, &headers, &form, "/v1/revoke") {
        return r;
    }
    let forced = s.revoke_status.load(Ordering::SeqCst);
    if forced != 0 {
        return oauth_error(StatusCode::from_u16(forced).unwrap(), "server_error");
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let hint = form.get("token_type_hint").cloned().unwrap_or_default();
    s.refresh_tokens.lock().unwrap().remove(&token);
    s.introspectable.lock().unwrap().remove(&token);
    s.revocations.lock().unwrap().push((token, hint));
    StatusCode::OK.into_response()
}

/// RFC 7662 introspection of tokens in `introspectable` (only the `oidc-authz` client may ask).
async fn introspect(
    State(s): State<Arc<IdpState>>,
    headers: axum::http::HeaderMap,
    axum::extract::Form(form): axum::extract::Form<HashMap<String, String>>,
) -> Response {
    s.introspect_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = gate(&s).await {
        return r;
    }
    match client_auth(&s, &headers, &form, "/v1/introspect") {
        Ok(id) if id == "oidc-authz" => {}
        Ok(_) => return oauth_error(StatusCode::FORBIDDEN, "access_denied"),
        Err(r) => return r,
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let claims = s.introspectable.lock().unwrap().get(&token).cloned();
    match claims {
        Some(mut c) if c["exp"].as_u64().is_none_or(|e| e > now()) => {
            c["active"] = json!(true);
            axum::Json(c).into_response()
        }
        _ => axum::Json(json!({"active": false})).into_response(),
    }
}

/// OpenID Connect userinfo: the claims of a token it knows (`Authorization: Bearer`), else 401 with RFC 6750's
/// challenge. Every request is counted on arrival.
async fn userinfo(State(s): State<Arc<IdpState>>, headers: axum::http::HeaderMap) -> Response {
    s.userinfo_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = gate(&s).await {
        return r;
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match s.userinfo.lock().unwrap().get(token).cloned() {
        Some(c) => axum::Json(c).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer error=\"invalid_token\"")],
        )
            .into_response(),
    }
}
