//! Test support: an in-process mock IdP (discovery + JWKS with keys it mints tokens with, switchable to
//! down/slow/garbage/rotated keys), the real oidc-authz server on port 0, and a Check request builder.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oidc_authz::config::Config;
use oidc_authz::server::Server;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ------------------------------------------------------------------------------------------------
// Keys
// ------------------------------------------------------------------------------------------------

/// A signing key the mock IdP publishes and signs with.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn load(file: &str, kid: &str, alg: Algorithm) -> Self {
        let pem = std::fs::read(format!(
            "{}/tests/support/keys/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let encoding = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                EncodingKey::from_rsa_pem(&pem).unwrap()
            }
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
            _ => panic!("not an asymmetric alg"),
        };
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        SigningKey {
            kid: kid.into(),
            alg,
            encoding,
            jwk,
        }
    }

    pub fn rsa1() -> Self {
        Self::load("rsa1.pem", "rsa1", Algorithm::RS256)
    }
    pub fn rsa2() -> Self {
        Self::load("rsa2.pem", "rsa2", Algorithm::RS256)
    }

    /// Signs claims with this key (header alg and kid from the key unless overridden).
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }
}

// ------------------------------------------------------------------------------------------------
// Mock IdP
// ------------------------------------------------------------------------------------------------

/// How the mock IdP behaves right now.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Up,
    /// Every endpoint answers 503.
    Down,
    /// Every endpoint answers after this delay.
    Slow(Duration),
    /// Every endpoint answers 200 with a body that is not JSON.
    Garbage,
    /// Every request is held (counted, then no answer) until the mode changes, then answered as the new mode
    /// says; after 60 s it gets 503. For timeouts and in-flight states without racing a clock.
    Held,
}

pub struct IdpState {
    pub issuer: Mutex<String>,
    /// The issuer the discovery document claims (for mismatch tests).
    pub claimed_issuer: Mutex<Option<String>>,
    pub mode: Mutex<Mode>,
    /// Published keys; the first signs.
    pub keys: Mutex<Vec<SigningKey>>,
    pub discovery_hits: AtomicUsize,
    pub jwks_hits: AtomicUsize,
    /// Extra JWKS entries published as they are (for bad-key tests).
    pub extra_jwks: Mutex<Vec<Value>>,
    /// Serve `/.well-known/openid-configuration` (else only `/.well-known/oauth-authorization-server`).
    pub oidc_discovery: std::sync::atomic::AtomicBool,
    /// Serve no discovery document at all (404 on both well-known names).
    pub no_discovery: std::sync::atomic::AtomicBool,
    /// Confidential clients: id -> (secret, scopes it may have).
    pub clients: Mutex<HashMap<String, (String, Vec<String>)>>,
    /// Token endpoint calls.
    pub token_hits: AtomicUsize,
    /// `expires_in` of issued tokens.
    pub expires_in: std::sync::atomic::AtomicU64,
    /// Client authentication methods the token endpoint accepts (and discovery advertises).
    pub token_auth_methods: Mutex<Vec<String>>,
    /// Issue opaque access tokens instead of JWTs.
    pub opaque_tokens: std::sync::atomic::AtomicBool,
    /// Answer the token endpoint with this HTTP status and an error body instead (0: normal).
    pub token_status: std::sync::atomic::AtomicU16,
    /// Tokens the introspection endpoint knows: token -> claims (removed when revoked).
    pub introspectable: Mutex<HashMap<String, Value>>,
    /// Introspection endpoint calls.
    pub introspect_hits: AtomicUsize,
    /// Issued authorization codes: code -> grant.
    pub codes: Mutex<HashMap<String, CodeGrant>>,
    /// Live refresh tokens: token -> user.
    pub refresh_tokens: Mutex<HashMap<String, String>>,
    /// Extra claims put into user access tokens (e.g. a huge one to force cookie chunking).
    pub user_extra: Mutex<Value>,
    /// Refresh-token rotation: a refresh token works once (Okta's default for SPAs).
    pub rotate_refresh_tokens: std::sync::atomic::AtomicBool,
    /// RFC 7009 revocation calls, and the tokens revoked (with their hint).
    pub revocations: Mutex<Vec<(String, String)>>,
    /// Requests to the revocation endpoint, counted on arrival (also while `Mode::Held`).
    pub revoke_hits: AtomicUsize,
    /// Answer the revocation endpoint with this HTTP status instead (0: normal).
    pub revoke_status: std::sync::atomic::AtomicU16,
    /// Seconds added to the real time in the user tokens it issues (to follow a test's ManualClock).
    pub clock_offset: std::sync::atomic::AtomicU64,
}

/// What an authorization code stands for.
#[derive(Clone, Debug)]
pub struct CodeGrant {
    pub sub: String,
    pub nonce: String,
    pub challenge: String,
    pub redirect_uri: String,
    pub used: bool,
}

pub struct MockIdp {
    pub addr: SocketAddr,
    pub issuer: String,
    pub state: Arc<IdpState>,
    stop: Option<oneshot::Sender<()>>,
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

/// The token endpoint: client credentials only, Okta-style answers.
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
    let id = match client_auth(&s, &headers, &form) {
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

/// Client authentication as the token endpoint does it; `Err` is the 401 answer.
#[allow(clippy::result_large_err)]
fn client_auth(
    s: &IdpState,
    headers: &axum::http::HeaderMap,
    form: &HashMap<String, String>,
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
    let (id, secret) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(pair), None, None) if methods.iter().any(|m| m == "client_secret_basic") => pair,
        (None, Some(id), Some(sec)) if methods.iter().any(|m| m == "client_secret_post") => {
            (id.clone(), sec.clone())
        }
        _ => return Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client")),
    };
    match s.clients.lock().unwrap().get(&id) {
        Some((want, _)) if *want == secret => Ok(id),
        _ => Err(oauth_error(StatusCode::UNAUTHORIZED, "invalid_client")),
    }
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
    if let Err(r) = client_auth(&s, &headers, &form) {
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
    match client_auth(&s, &headers, &form) {
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

impl MockIdp {
    /// Starts on 127.0.0.1:0 with issuer `http://127.0.0.1:PORT/oauth2/default` and key rsa1.
    pub async fn start() -> MockIdp {
        Self::start_with_keys(vec![SigningKey::rsa1()]).await
    }

    pub async fn start_with_keys(keys: Vec<SigningKey>) -> MockIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}/oauth2/default");
        let state = Arc::new(IdpState {
            issuer: Mutex::new(issuer.clone()),
            claimed_issuer: Mutex::new(None),
            mode: Mutex::new(Mode::Up),
            keys: Mutex::new(keys),
            discovery_hits: AtomicUsize::new(0),
            jwks_hits: AtomicUsize::new(0),
            extra_jwks: Mutex::new(Vec::new()),
            oidc_discovery: std::sync::atomic::AtomicBool::new(true),
            no_discovery: std::sync::atomic::AtomicBool::new(false),
            clients: Mutex::new(HashMap::from([
                (
                    "cc-app".to_string(),
                    (
                        "cc-app-secret".to_string(),
                        vec!["api:read".into(), "api:write".into()],
                    ),
                ),
                (
                    "cc-readonly".to_string(),
                    ("cc-readonly-secret".to_string(), vec!["api:write".into()]),
                ),
                (
                    "oidc-authz".to_string(),
                    ("oidc-authz-secret".to_string(), vec![]),
                ),
            ])),
            token_hits: AtomicUsize::new(0),
            expires_in: std::sync::atomic::AtomicU64::new(3600),
            token_auth_methods: Mutex::new(vec![
                "client_secret_basic".into(),
                "client_secret_post".into(),
            ]),
            opaque_tokens: std::sync::atomic::AtomicBool::new(false),
            token_status: std::sync::atomic::AtomicU16::new(0),
            introspectable: Mutex::new(HashMap::new()),
            introspect_hits: AtomicUsize::new(0),
            codes: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            user_extra: Mutex::new(json!({})),
            rotate_refresh_tokens: std::sync::atomic::AtomicBool::new(false),
            revocations: Mutex::new(Vec::new()),
            revoke_hits: AtomicUsize::new(0),
            revoke_status: std::sync::atomic::AtomicU16::new(0),
            clock_offset: std::sync::atomic::AtomicU64::new(0),
        });
        let app = Router::new()
            .route(
                "/oauth2/default/.well-known/openid-configuration",
                get(oidc_discovery),
            )
            .route(
                "/oauth2/default/.well-known/oauth-authorization-server",
                get(discovery),
            )
            .route("/oauth2/default/v1/keys", get(jwks))
            .route("/oauth2/default/v1/token", axum::routing::post(token))
            .route(
                "/oauth2/default/v1/introspect",
                axum::routing::post(introspect),
            )
            .route("/oauth2/default/v1/revoke", axum::routing::post(revoke))
            .with_state(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        MockIdp {
            addr,
            issuer,
            state,
            stop: Some(tx),
        }
    }

    pub fn set_mode(&self, m: Mode) {
        *self.state.mode.lock().unwrap() = m;
    }

    /// Publishes these keys instead (the first signs).
    pub fn rotate(&self, keys: Vec<SigningKey>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    pub fn signing_key(&self) -> SigningKey {
        self.state.keys.lock().unwrap()[0].clone()
    }

    /// An opaque token the introspection endpoint answers for, with `extra` merged into its claims.
    pub fn opaque(&self, extra: Value) -> String {
        let t = format!("op-{:x}{:x}", rand_u64(), rand_u64());
        let mut c = self.claims(extra);
        c["client_id"] = c["cid"].clone();
        c["token_type"] = json!("Bearer");
        self.state
            .introspectable
            .lock()
            .unwrap()
            .insert(t.clone(), c);
        t
    }

    /// Makes the introspection endpoint know this (JWT) token too.
    pub fn register(&self, token: &str, claims: Value) {
        self.state
            .introspectable
            .lock()
            .unwrap()
            .insert(token.to_string(), claims);
    }

    /// RFC 7009 at the IdP: the token is no longer active.
    pub fn revoke(&self, token: &str) {
        self.state.introspectable.lock().unwrap().remove(token);
    }

    /// Plays the user's login at the IdP: a code for `sub` bound to the authorize URL's nonce, PKCE challenge
    /// and redirect_uri; returns the callback query (`code=...&state=...`).
    pub fn login(&self, authorize_url: &str, sub: &str) -> String {
        let url = url::Url::parse(authorize_url).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
        assert_eq!(
            q.get("code_challenge_method").map(String::as_str),
            Some("S256")
        );
        let code = format!("code-{:x}", rand_u64());
        self.state.codes.lock().unwrap().insert(
            code.clone(),
            CodeGrant {
                sub: sub.into(),
                nonce: q["nonce"].clone(),
                challenge: q["code_challenge"].clone(),
                redirect_uri: q["redirect_uri"].clone(),
                used: false,
            },
        );
        format!("code={code}&state={}", q["state"])
    }

    /// Moves the time of the user tokens it issues forward (with the server's ManualClock).
    pub fn advance(&self, secs: u64) {
        self.state.clock_offset.fetch_add(secs, Ordering::SeqCst);
    }

    /// Forgets every refresh token (a refresh now fails).
    pub fn revoke_refresh_tokens(&self) {
        self.state.refresh_tokens.lock().unwrap().clear();
    }

    pub fn introspect_hits(&self) -> usize {
        self.state.introspect_hits.load(Ordering::SeqCst)
    }

    pub fn token_hits(&self) -> usize {
        self.state.token_hits.load(Ordering::SeqCst)
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    /// Default claims of a valid access token for `aud`.
    pub fn claims(&self, extra: Value) -> Value {
        let now = now();
        let mut c = json!({
            "iss": self.issuer,
            "aud": "api://default",
            "sub": "alice@example.com",
            "cid": "0oa-client",
            "scp": ["api:read", "openid"],
            "groups": ["Everyone", "admins"],
            "iat": now,
            "exp": now + 3600,
            "jti": format!("{:x}", rand_u64()),
        });
        if let (Some(base), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    base.remove(k);
                } else {
                    base.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }

    /// A valid access token signed with the current key, with `extra` merged into the claims (null removes).
    pub fn mint(&self, extra: Value) -> String {
        self.signing_key().sign(&self.claims(extra))
    }
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(N.fetch_add(1, Ordering::SeqCst));
    h.finish()
}

// ------------------------------------------------------------------------------------------------
// oidc-authz under test
// ------------------------------------------------------------------------------------------------

/// A standard config against `idp` with a few policies, plus `extra` TOML appended.
pub fn config_toml(idp: &MockIdp, extra: &str) -> String {
    format!(
        r#"
[server]
grpc_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
log_format = "pretty"
shutdown_grace_secs = 5
check_timeout_ms = 60000

[providers.okta]
issuer = "{issuer}"
client_id = "oidc-authz"
client_secret = "oidc-authz-secret"
audiences = ["api://default"]
leeway_secs = 0
http_timeout_ms = 30000
jwks_min_refetch_secs = 0

[policies.api]
provider = "okta"
auth_methods = ["bearer"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["iss", "sub", "groups"]
upstream_headers_names = ["X-Issuer", "x-user", "x-groups"]

[policies.admins]
provider = "okta"
auth_methods = ["bearer"]
groups_claim = ["groups"]
groups_required = ["admins", "ops oncall"]

[policies.cc]
provider = "okta"
auth_methods = ["client_credentials", "bearer"]
scopes = ["api:read"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
cache_ttl_neg_secs = 30
client_credentials_param_type = ["header"]
upstream_headers_claims = ["iss", "cid"]
upstream_headers_names = ["Issuer_Header", "x-client-id"]

[policies.intro]
provider = "okta"
auth_methods = ["introspection", "bearer"]
cache_introspection_secs = 300
cache_ttl_neg_secs = 30
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["sub", "client_id"]
upstream_headers_names = ["x-user", "x-client-id"]

[policies.intro_nocache]
provider = "okta"
auth_methods = ["introspection"]
cache_introspection_secs = 0
cache_ttl_neg_secs = 0

[policies.intro_jwt]
provider = "okta"
auth_methods = ["introspection", "bearer"]
introspect_jwt_tokens = true
cache_introspection_secs = 2

[policies.login]
provider = "okta"
auth_methods = ["bearer", "authorization_code", "session"]
scopes = ["openid", "profile", "offline_access"]
redirect_uri = "https://app.example.com/oauth2/callback"
logout_path = "/oauth2/logout"
post_logout_redirect_uri = "https://app.example.com/bye"
session_secret = ["fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg=", "YgkhMaR/YTZqwk13q1w36bx3iMsjriSao8q4VdYNeSs="]
session_idle_timeout_secs = 600
session_absolute_timeout_secs = 3600
refresh_leeway_secs = 0
upstream_id_token_header = "x-id-token"
upstream_headers_claims = ["sub", "email"]
upstream_headers_names = ["x-user", "x-email"]

[policies.group]
provider = "okta"
auth_methods = ["authorization_code", "session"]
# its own callback: it shares the session cookie with `login` but not all of its secrets (rotation tests)
redirect_uri = "https://app.example.com/oauth2/group-callback"
session_secret = "YgkhMaR/YTZqwk13q1w36bx3iMsjriSao8q4VdYNeSs="
scopes_claim = ["groups"]
scopes_required = ["kong_group"]

[policies.cc_only]
provider = "okta"
auth_methods = ["client_credentials"]
scopes = ["api:read", "api:write"]

[[routes]]
path_prefix = "/routed"
policy = "api"

[[routes]]
hosts = ["*.example.com"]
path_prefix = "/admin"
methods = ["GET"]
policy = "admins"
{extra}
"#,
        issuer = idp.issuer
    )
}

/// The standard config with a 300 ms HTTP timeout, for tests that hold the IdP (`Mode::Held`) to see a timeout:
/// the IdP never answers while held, so the timeout fires however slow the machine is.
pub fn short_http_timeout(toml: &str) -> String {
    toml.replace("http_timeout_ms = 30000", "http_timeout_ms = 300")
}

/// The mock IdP and a ready server with the standard config.
pub async fn world() -> (MockIdp, TestServer) {
    let idp = MockIdp::start().await;
    let server = TestServer::start_ready(&config_toml(&idp, "")).await;
    (idp, server)
}

/// One Check, read back.
pub async fn ask(server: &TestServer, r: Req) -> Answer {
    Answer::from(server.check(r.build()).await)
}

/// The value of one series in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub authorizer: Arc<oidc_authz::authz::Authorizer>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), oidc_authz::server::ServeError>>>,
}

impl TestServer {
    pub async fn start(toml: &str) -> TestServer {
        Self::start_with_clock(toml, Arc::new(oidc_authz::clock::SystemClock)).await
    }

    pub async fn start_with_clock(
        toml: &str,
        clock: Arc<dyn oidc_authz::clock::Clock>,
    ) -> TestServer {
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::bind_with_clock(config, clock).await.unwrap();
        let grpc_addr = server.grpc_addr();
        let admin_addr = server.admin_addr();
        let authorizer = server.authorizer();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            grpc_addr,
            admin_addr,
            authorizer,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Starts and waits until /readyz says ready.
    pub async fn start_ready(toml: &str) -> TestServer {
        let s = Self::start(toml).await;
        s.wait_ready().await;
        s
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.authorizer.is_ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server never became ready");
    }

    pub async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .unwrap()
    }

    pub async fn check(&self, req: CheckRequest) -> CheckResponse {
        self.client().await.check(req).await.unwrap().into_inner()
    }

    /// Sends `n` copies of `r` at once over 8 connections; returns every answer's HTTP status.
    pub async fn concurrent(&self, n: usize, r: CheckRequest) -> Vec<u16> {
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(self.client().await);
        }
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut c = clients[i % clients.len()].clone();
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                Answer::from(c.check(r).await.unwrap().into_inner()).status
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    /// One series of /metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.admin_get("/metrics").await.1, series)
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.admin_addr))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Requests and answers
// ------------------------------------------------------------------------------------------------

/// Builds a CheckRequest the way Envoy sends one.
#[derive(Clone, Default)]
pub struct Req {
    method: String,
    host: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    raw: bool,
    ext: HashMap<String, String>,
}

pub fn req(path: &str) -> Req {
    Req {
        method: "GET".into(),
        host: "app.example.com".into(),
        path: path.into(),
        ..Default::default()
    }
}

impl Req {
    pub fn policy(mut self, p: &str) -> Self {
        self.ext.insert("policy".into(), p.into());
        self
    }
    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }
    pub fn host(mut self, h: &str) -> Self {
        self.host = h.into();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.as_bytes().to_vec()));
        self
    }
    pub fn header_bytes(mut self, k: &str, v: &[u8]) -> Self {
        self.headers.push((k.into(), v.to_vec()));
        self
    }
    pub fn basic(self, id: &str, secret: &str) -> Self {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        self.header("authorization", &format!("Basic {b}"))
    }
    pub fn bearer(self, t: &str) -> Self {
        self.header("authorization", &format!("Bearer {t}"))
    }
    /// Sends headers in `header_map` (Envoy's `encode_raw_headers: true`) instead of the `headers` map.
    pub fn raw(mut self) -> Self {
        self.raw = true;
        self
    }
    pub fn build(self) -> CheckRequest {
        let mut http = HttpRequest {
            id: "req-1".into(),
            method: self.method,
            host: self.host,
            path: self.path,
            scheme: "https".into(),
            protocol: "HTTP/1.1".into(),
            ..Default::default()
        };
        if self.raw {
            http.header_map = Some(HeaderMap {
                headers: self
                    .headers
                    .into_iter()
                    .map(|(k, v)| HeaderValue {
                        key: k,
                        value: String::new(),
                        raw_value: v,
                    })
                    .collect(),
            });
        } else {
            for (k, v) in self.headers {
                let v = String::from_utf8_lossy(&v).into_owned();
                http.headers
                    .entry(k.to_ascii_lowercase())
                    .and_modify(|e| {
                        e.push(',');
                        e.push_str(&v)
                    })
                    .or_insert(v);
            }
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                context_extensions: self.ext,
                ..Default::default()
            }),
        }
    }
}

/// A CheckResponse read back as plain values.
#[derive(Debug)]
pub struct Answer {
    pub grpc_code: i32,
    /// HTTP status of a deny; 200 for an allow.
    pub status: u16,
    pub headers: Vec<(String, String, i32)>,
    pub remove: Vec<String>,
    pub body: String,
    pub metadata: HashMap<String, String>,
    /// Headers added to the client's response (allow only).
    pub response_headers: Vec<(String, String, i32)>,
}

impl Answer {
    pub fn from(r: CheckResponse) -> Answer {
        let grpc_code = r.status.as_ref().map(|s| s.code).unwrap_or(-1);
        let metadata = r
            .dynamic_metadata
            .map(|m| {
                m.fields
                    .into_iter()
                    .filter_map(|(k, v)| match v.kind {
                        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                            Some((k, s))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let hv = |h: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| -> Vec<(String, String, i32)> {
            h.iter()
                .map(|o| {
                    let v = o.header.clone().unwrap();
                    (v.key, v.value, o.append_action)
                })
                .collect()
        };
        match r.http_response {
            Some(HttpResponse::OkResponse(ok)) => Answer {
                grpc_code,
                status: 200,
                headers: hv(&ok.headers),
                remove: ok.headers_to_remove,
                body: String::new(),
                metadata,
                response_headers: hv(&ok.response_headers_to_add),
            },
            Some(HttpResponse::DeniedResponse(d)) => Answer {
                grpc_code,
                status: d.status.map(|s| s.code as u16).unwrap_or(0),
                headers: hv(&d.headers),
                remove: Vec::new(),
                body: d.body,
                metadata,
                response_headers: Vec::new(),
            },
            _ => Answer {
                grpc_code,
                status: 0,
                headers: vec![],
                remove: vec![],
                body: String::new(),
                metadata,
                response_headers: Vec::new(),
            },
        }
    }

    /// Every `Set-Cookie` of the answer (redirects and denies carry them in `headers`, allows in
    /// `response_headers`), as `name=value` pairs of cookies being set (deletions are skipped).
    pub fn cookies_set(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .chain(self.response_headers.iter())
            .filter(|(k, _, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter(|(_, v, _)| !v.contains("Max-Age=0"))
            .filter_map(|(_, v, _)| {
                v.split(';')
                    .next()?
                    .split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect()
    }

    /// Names of cookies this answer deletes.
    pub fn cookies_cleared(&self) -> Vec<String> {
        self.headers
            .iter()
            .chain(self.response_headers.iter())
            .filter(|(k, v, _)| k.eq_ignore_ascii_case("set-cookie") && v.contains("Max-Age=0"))
            .filter_map(|(_, v, _)| v.split('=').next().map(str::to_string))
            .collect()
    }

    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v, _)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts a deny with this status, error code, JSON body and no-store, and that nothing in it echoes `secret`.
    pub fn assert_deny(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_ne!(self.grpc_code, 0, "a deny must not carry gRPC OK: {self:?}");
        assert_eq!(self.header("cache-control"), Some("no-store"), "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["error"], error, "{self:?}");
        assert_eq!(body["status"], status, "{self:?}");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{self:?}"
        );
    }

    pub fn assert_not_echoing(&self, secret: &str) {
        let all = format!("{:?}", self);
        assert!(!all.contains(secret), "answer echoes a secret: {all}");
    }
}
