//! Unit tests of the core without a network: `Authorizer::check` driven with the [`FakeIdp`], a
//! [`ManualClock`], a [`SequenceRng`] and JWTs signed here with the test keys in `tests/support/keys`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::authz::Authorizer;
use crate::clock::ManualClock;
use crate::config::{Config, TokenEndpointAuth};
use crate::decision::{Allow, Answered, Decision, Deny, DenyStatus, Redirect};
use crate::provider::Endpoint;
use crate::provider::fake::{FakeAnswer, FakeIdp};
use crate::request::CheckView;
use crate::rng::SequenceRng;
use crate::store::memory::MemoryBackend;
use crate::store::{Backend, Store, StoreError};
use crate::telemetry::Metrics;

/// The time of every test (the ManualClock's reading).
const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://idp.test";
/// The first byte of the SequenceRng's stream.
const RNG_START: u8 = 7;

const CONFIG: &str = r#"
[providers.idp]
issuer = "https://idp.test"
client_id = "oidc-authz"
client_secret = "oidc-authz-secret"
audiences = ["api://default"]
leeway_secs = 0
jwks_min_refetch_secs = 0

[policies.api]
provider = "idp"
auth_methods = ["bearer"]
display_errors = true   # these tests read the detailed error_description
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["sub", "iss"]
upstream_headers_names = ["x-user", "x-issuer"]

[policies.cc]
provider = "idp"
auth_methods = ["client_credentials"]
scopes = ["api:read"]
upstream_headers_claims = ["cid"]
upstream_headers_names = ["x-client-id"]

[policies.intro]
provider = "idp"
auth_methods = ["introspection"]
display_errors = true   # these tests read the detailed error_description
cache_introspection_secs = 300
upstream_headers_claims = ["sub"]
upstream_headers_names = ["x-user"]

[policies.web]
provider = "idp"
auth_methods = ["authorization_code", "session"]
display_errors = true   # these tests read the detailed error_description
scopes = ["openid", "profile", "offline_access"]
redirect_uri = "https://app.example.com/oauth2/callback"
logout_path = "/oauth2/logout"
backchannel_logout_path = "/oauth2/backchannel-logout"
session_secret = "fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg="
upstream_headers_claims = ["sub", "email"]
upstream_headers_names = ["x-user", "x-email"]
"#;

/// The IdP's signing key: signs tokens here, published in the fake's JWKS.
struct Key {
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    fn rsa1() -> Self {
        let pem = include_bytes!("../tests/support/keys/rsa1.pem");
        let encoding = EncodingKey::from_rsa_pem(pem).unwrap();
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
        let mut jwk = serde_json::to_value(jwk).unwrap();
        jwk["kid"] = json!("rsa1");
        jwk["use"] = json!("sig");
        Key { encoding, jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa1".into());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// `base` with the fields of `extra` added or replaced.
fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// Claims of an access token of the provider for `sub`, valid for an hour from [`NOW`].
fn access_claims(sub: &str, extra: Value) -> Value {
    let base = json!({
        "iss": ISSUER, "aud": "api://default", "sub": sub, "cid": "web-app", "scp": ["api:read"],
        "iat": NOW, "exp": NOW + 3600,
    });
    with(base, extra)
}

/// An authorizer over the fake IdP (discovery for [`ISSUER`], the key in its JWKS), at [`NOW`].
struct World {
    authz: Authorizer,
    idp: Arc<FakeIdp>,
    key: Key,
}

impl World {
    fn new() -> Self {
        Self::with_backend(Box::new(MemoryBackend::new()))
    }

    /// The world with its shared store over `backend`.
    fn with_backend(backend: Box<dyn Backend>) -> Self {
        Self::with_config(CONFIG, backend)
    }

    /// The world of the config `toml`, its shared store over `backend`.
    fn with_config(toml: &str, backend: Box<dyn Backend>) -> Self {
        let key = Key::rsa1();
        let idp = Arc::new(FakeIdp::for_issuer(ISSUER));
        idp.jwks(vec![key.jwk.clone()]);
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(Metrics::new());
        let store = Store::with_backend(
            backend,
            &config.store.key_prefix,
            None,
            config.store.timeout,
            metrics.clone(),
        );
        let authz = Authorizer::with_store(
            config,
            metrics,
            Arc::new(ManualClock::new(NOW)),
            Arc::new(SequenceRng::new(RNG_START)),
            idp.clone(),
            Arc::new(store),
        );
        World { authz, idp, key }
    }

    async fn check(&self, req: &CheckRequest) -> Decision {
        self.authz.check(&CheckView::new(req)).await
    }
}

/// A Check for `policy` (Envoy's `context_extensions`): `GET` unless `method` says otherwise, on
/// `app.example.com`, `target` being the path and query.
fn request(policy: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut req = crate::request::check_request(HttpRequest {
        id: "req-1".into(),
        host: "app.example.com".into(),
        scheme: "https".into(),
        ..crate::request::http_request(method, target, headers)
    });
    if let Some(attributes) = req.attributes.as_mut() {
        attributes.context_extensions = HashMap::from([("policy".to_string(), policy.to_string())]);
    }
    req
}

fn allowed(d: Decision) -> Allow {
    match d {
        Decision::Allow(a) => a,
        other => panic!("not an allow: {other:?}"),
    }
}

fn denied(d: Decision) -> Deny {
    match d {
        Decision::Deny(d) => d,
        other => panic!("not a deny: {other:?}"),
    }
}

fn redirected(d: Decision) -> Redirect {
    match d {
        Decision::Redirect(r) => r,
        other => panic!("not a redirect: {other:?}"),
    }
}

/// The value an allow sets upstream for header `name`.
fn header<'a>(a: &'a Allow, name: &str) -> Option<&'a str> {
    a.set_headers
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v.as_str())
}

/// The dynamic metadata of an allow.
fn metadata(a: &Allow) -> HashMap<&'static str, &str> {
    a.metadata.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The `Cookie` header a browser sends after these `Set-Cookie` values (deletions dropped).
fn cookie_header(set_cookies: &[String]) -> String {
    set_cookies
        .iter()
        .filter(|c| !c.contains("Max-Age=0"))
        .filter_map(|c| c.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test]
async fn dynamic_metadata_off_leaves_the_metadata_out_and_the_headers_in() {
    let config = CONFIG.replace(
        "[policies.api]\n",
        "[policies.api]\ndynamic_metadata = false\nconsumer_claim = [\"sub\"]\nupstream_consumer_header = \"x-consumer\"\n",
    );
    let w = World::with_config(&config, Box::new(MemoryBackend::new()));
    let token = w.key.sign(&access_claims("alice", json!({})));
    let auth = format!("Bearer {token}");
    let a = allowed(
        w.check(&request("api", "GET", "/x", &[("authorization", &auth)]))
            .await,
    );
    assert_eq!(header(&a, "x-user"), Some("alice"));
    assert_eq!(header(&a, "x-consumer"), Some("alice"));
    assert!(a.metadata.is_empty(), "{:?}", a.metadata);
    // The same policy with the default setting carries it.
    let cfg = config.replace("[policies.api]\ndynamic_metadata = false", "[policies.api]");
    let w2 = World::with_config(&cfg, Box::new(MemoryBackend::new()));
    let token = w2.key.sign(&access_claims("bob", json!({})));
    let auth = format!("Bearer {token}");
    let a = allowed(
        w2.check(&request("api", "GET", "/x", &[("authorization", &auth)]))
            .await,
    );
    let m = metadata(&a);
    assert_eq!(
        (m["sub"], m["consumer"], m["policy"]),
        ("bob", "bob", "api")
    );
}

#[tokio::test]
async fn a_valid_bearer_jwt_is_allowed_with_its_headers_and_metadata() {
    let w = World::new();
    let token = w.key.sign(&access_claims("alice", json!({})));
    let auth = format!("Bearer {token}");
    let a = allowed(
        w.check(&request("api", "GET", "/x", &[("authorization", &auth)]))
            .await,
    );
    assert_eq!(header(&a, "x-user"), Some("alice"));
    assert_eq!(header(&a, "x-issuer"), Some(ISSUER));
    let m = metadata(&a);
    assert_eq!(m["sub"], "alice");
    assert_eq!(m["iss"], ISSUER);
    assert_eq!(m["client_id"], "web-app");
    assert_eq!(m["policy"], "api");
    assert_eq!(m["auth_method"], "bearer");
    assert_eq!(w.idp.calls(Endpoint::Discovery), 1);
    assert_eq!(w.idp.calls(Endpoint::Jwks), 1);
    // without the scope the policy requires: 403
    let token = w
        .key
        .sign(&access_claims("bob", json!({"scp": ["api:write"]})));
    let auth = format!("Bearer {token}");
    let d = denied(
        w.check(&request("api", "GET", "/x", &[("authorization", &auth)]))
            .await,
    );
    assert_eq!(
        (d.status, d.error),
        (DenyStatus::Forbidden, "insufficient_scope")
    );
    assert_eq!(w.idp.calls(Endpoint::Jwks), 1, "the keys in hand served");
}

#[tokio::test]
async fn a_jwt_expired_at_the_clocks_time_is_refused() {
    let w = World::new();
    let claims = access_claims("alice", json!({"iat": NOW - 3600, "exp": NOW - 1}));
    let auth = format!("Bearer {}", w.key.sign(&claims));
    let d = denied(
        w.check(&request("api", "GET", "/x", &[("authorization", &auth)]))
            .await,
    );
    assert_eq!(
        (d.status, d.error),
        (DenyStatus::Unauthorized, "invalid_token")
    );
    assert_eq!(d.description, "the token has expired");
    let challenge = d.www_authenticate.unwrap_or_default();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test]
async fn a_failing_jwks_endpoint_is_a_503() {
    let w = World::new();
    w.idp
        .answer(Endpoint::Jwks, 500, json!({"error": "server_error"}));
    let auth = format!("Bearer {}", w.key.sign(&access_claims("alice", json!({}))));
    let d = denied(
        w.check(&request("api", "GET", "/x", &[("authorization", &auth)]))
            .await,
    );
    assert_eq!(d.status, DenyStatus::Unavailable);
    assert_eq!(d.error, "temporarily_unavailable");
    assert_eq!(w.idp.calls(Endpoint::Discovery), 1);
    assert_eq!(w.idp.calls(Endpoint::Jwks), 1);
    let jwks = w.idp.last(Endpoint::Jwks).map(|c| c.url.to_string());
    assert_eq!(
        jwks.as_deref(),
        Some("https://idp.test/keys"),
        "from discovery"
    );

    // a provider that cannot be reached at all is a 503 too
    let w = World::new();
    w.idp.unreachable(Endpoint::Discovery);
    let d = denied(
        w.check(&request("api", "GET", "/x", &[("authorization", &auth)]))
            .await,
    );
    assert_eq!(d.status, DenyStatus::Unavailable);
    assert_eq!(w.idp.calls(Endpoint::Jwks), 0);
}

#[tokio::test]
async fn client_credentials_run_the_grant_once_and_forward_the_issued_token() {
    let w = World::new();
    let issued = w.key.sign(&access_claims("svc", json!({"cid": "svc"})));
    let answer = json!({"access_token": issued, "token_type": "Bearer", "expires_in": 3600});
    w.idp.answer_with(Endpoint::Token, move |call| {
        match (call.field("grant_type"), &call.client) {
            (Some("client_credentials"), Some(c)) if c.id == "svc" && c.secret == "svc-secret" => {
                FakeAnswer::json(200, answer.clone())
            }
            _ => FakeAnswer::json(401, json!({"error": "invalid_client"})),
        }
    });
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("svc:svc-secret")
    );
    let req = request("cc", "GET", "/x", &[("authorization", &basic)]);
    let a = allowed(w.check(&req).await);
    assert_eq!(
        header(&a, "authorization"),
        Some(format!("Bearer {issued}").as_str())
    );
    assert_eq!(header(&a, "x-client-id"), Some("svc"));
    assert_eq!(metadata(&a)["auth_method"], "client_credentials");
    let sent = w.idp.last(Endpoint::Token).unwrap();
    assert_eq!(sent.field("grant_type"), Some("client_credentials"));
    assert_eq!(sent.field("scope"), Some("api:read"));
    assert_eq!(sent.url.as_str(), "https://idp.test/token");
    let client = sent.client.unwrap();
    assert_eq!(client.method, TokenEndpointAuth::ClientSecretBasic);

    // the same credentials again: the cached token, no second grant
    let a = allowed(w.check(&req).await);
    assert_eq!(
        header(&a, "authorization"),
        Some(format!("Bearer {issued}").as_str())
    );
    assert_eq!(w.idp.calls(Endpoint::Token), 1);

    // credentials the IdP refuses: 401 invalid_client
    let wrong = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("svc:wrong")
    );
    let d = denied(
        w.check(&request("cc", "GET", "/x", &[("authorization", &wrong)]))
            .await,
    );
    assert_eq!(
        (d.status, d.error),
        (DenyStatus::Unauthorized, "invalid_client")
    );
    assert_eq!(w.idp.calls(Endpoint::Token), 2);
}

#[tokio::test]
async fn introspection_active_is_allowed_and_inactive_refused() {
    let w = World::new();
    w.idp.answer_with(Endpoint::Introspection, |call| {
        if call.field("token") == Some("opaque-good") {
            FakeAnswer::json(
                200,
                json!({"active": true, "iss": ISSUER, "aud": "api://default", "sub": "carol",
                       "client_id": "svc", "token_type": "Bearer", "iat": NOW, "exp": NOW + 600}),
            )
        } else {
            FakeAnswer::json(200, json!({"active": false}))
        }
    });
    let good = request(
        "intro",
        "GET",
        "/x",
        &[("authorization", "Bearer opaque-good")],
    );
    let a = allowed(w.check(&good).await);
    assert_eq!(header(&a, "x-user"), Some("carol"));
    assert_eq!(metadata(&a)["auth_method"], "introspection");
    let sent = w.idp.last(Endpoint::Introspection).unwrap();
    assert_eq!(sent.field("token_type_hint"), Some("access_token"));
    let client = sent.client.unwrap();
    assert_eq!(
        (client.id.as_str(), client.secret.as_str()),
        ("oidc-authz", "oidc-authz-secret")
    );

    let bad = request(
        "intro",
        "GET",
        "/x",
        &[("authorization", "Bearer opaque-revoked")],
    );
    let d = denied(w.check(&bad).await);
    assert_eq!(
        (d.status, d.error),
        (DenyStatus::Unauthorized, "invalid_token")
    );
    assert_eq!(d.description, "the token is not active");
    // the active answer is cached: asking again costs no call
    allowed(w.check(&good).await);
    assert_eq!(w.idp.calls(Endpoint::Introspection), 2);
    assert_eq!(w.idp.calls(Endpoint::Jwks), 0, "no JWT, no keys");
}

#[tokio::test]
async fn the_browser_login_from_redirect_to_session_and_logout() {
    let w = World::new();
    let browser = [("accept", "text/html")];

    // 1. no session: to the provider, with the state, nonce and challenge drawn from the Rng
    let start = redirected(
        w.check(&request("web", "GET", "/app/page?x=1", &browser))
            .await,
    );
    let location = url::Url::parse(&start.location).unwrap();
    assert_eq!(
        location.as_str().split('?').next(),
        Some("https://idp.test/authorize")
    );
    let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
    let bytes: Vec<u8> = (0..96u8).map(|i| RNG_START.wrapping_add(i)).collect();
    let state = URL_SAFE_NO_PAD.encode(&bytes[..32]);
    let nonce = URL_SAFE_NO_PAD.encode(&bytes[32..64]);
    let verifier = URL_SAFE_NO_PAD.encode(&bytes[64..]);
    assert_eq!(q["state"], state);
    assert_eq!(q["nonce"], nonce);
    assert_eq!(
        q["code_challenge"],
        URL_SAFE_NO_PAD.encode(Sha256::digest(&verifier))
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], "oidc-authz");
    assert_eq!(q["redirect_uri"], "https://app.example.com/oauth2/callback");
    let login_cookie = cookie_header(&start.set_cookies);
    assert!(
        login_cookie.starts_with("oidc_authz_login="),
        "{login_cookie}"
    );

    // 2. the provider answers the code with tokens; the ID token carries the nonce
    let at = w
        .key
        .sign(&access_claims("alice", json!({"cid": "oidc-authz"})));
    let id_token = w.key.sign(&json!({
        "iss": ISSUER, "aud": "oidc-authz", "sub": "alice", "email": "alice@example.com",
        "nonce": nonce, "iat": NOW, "exp": NOW + 3600,
    }));
    let tokens = json!({"access_token": at, "id_token": id_token, "refresh_token": "rt-1",
                        "token_type": "Bearer", "expires_in": 3600});
    w.idp.answer_with(Endpoint::Token, move |call| {
        match (call.field("grant_type"), call.field("code")) {
            (Some("authorization_code"), Some("the-code")) => FakeAnswer::json(200, tokens.clone()),
            _ => FakeAnswer::json(400, json!({"error": "invalid_grant"})),
        }
    });
    w.idp.answer(Endpoint::Revocation, 200, json!({}));

    // 3. the callback: back to the page, with a session cookie and the login cookie cleared
    let callback = format!("/oauth2/callback?code=the-code&state={state}");
    let headers = [("accept", "text/html"), ("cookie", login_cookie.as_str())];
    let back = redirected(w.check(&request("web", "GET", &callback, &headers)).await);
    assert_eq!(back.location, "/app/page?x=1");
    assert!(
        back.set_cookies
            .iter()
            .any(|c| c.starts_with("oidc_authz_login=") && c.contains("Max-Age=0"))
    );
    let session = cookie_header(&back.set_cookies);
    assert!(session.starts_with("oidc_authz_session"), "{session}");
    let sent = w.idp.last(Endpoint::Token).unwrap();
    assert_eq!(sent.field("code_verifier"), Some(verifier.as_str()));
    assert_eq!(
        sent.field("redirect_uri"),
        Some("https://app.example.com/oauth2/callback")
    );
    let client = sent.client.unwrap();
    assert_eq!(
        (client.id.as_str(), client.method),
        ("oidc-authz", TokenEndpointAuth::ClientSecretBasic)
    );
    assert_eq!(w.idp.calls(Endpoint::Token), 1);

    // 4. the session lets the browser in, with the claims of its tokens
    let headers = [("accept", "text/html"), ("cookie", session.as_str())];
    let a = allowed(w.check(&request("web", "GET", "/app/page", &headers)).await);
    assert_eq!(metadata(&a)["auth_method"], "session");
    assert_eq!(header(&a, "x-user"), Some("alice"));
    assert_eq!(header(&a, "x-email"), Some("alice@example.com"));
    assert_eq!(
        header(&a, "authorization"),
        Some(format!("Bearer {at}").as_str())
    );
    assert_eq!(w.idp.calls(Endpoint::Token), 1, "no refresh");

    // 5. logout: both tokens revoked, then the session no longer counts
    let headers = [
        ("cookie", session.as_str()),
        ("origin", "https://app.example.com"),
    ];
    let out = redirected(
        w.check(&request("web", "POST", "/oauth2/logout", &headers))
            .await,
    );
    assert!(
        out.location.starts_with("https://idp.test/logout"),
        "{}",
        out.location
    );
    assert_eq!(w.idp.calls(Endpoint::Revocation), 2);
    let last = w.idp.last(Endpoint::Revocation).unwrap();
    assert_eq!(last.field("token"), Some(at.as_str()));
    assert_eq!(last.field("token_type_hint"), Some("access_token"));
    let headers = [("accept", "text/html"), ("cookie", session.as_str())];
    redirected(w.check(&request("web", "GET", "/app/page", &headers)).await);
}

#[tokio::test]
async fn a_callback_with_another_state_is_refused_without_asking_the_provider() {
    let w = World::new();
    let start = redirected(
        w.check(&request("web", "GET", "/", &[("accept", "text/html")]))
            .await,
    );
    let cookie = cookie_header(&start.set_cookies);
    let headers = [("accept", "text/html"), ("cookie", cookie.as_str())];
    let req = request(
        "web",
        "GET",
        "/oauth2/callback?code=c&state=forged",
        &headers,
    );
    let d = denied(w.check(&req).await);
    assert_eq!(
        (d.status, d.error),
        (DenyStatus::Unauthorized, "invalid_request")
    );
    assert!(d.page.is_some(), "an HTML page for the browser");
    assert_eq!(w.idp.calls(Endpoint::Token), 0);
}

/// Logs `sub` in on the `web` policy within the provider's session `op_sid`: the session cookie.
async fn logged_in(w: &World, sub: &str, op_sid: &str) -> String {
    login_as(w, Some(sub), op_sid).await
}

/// Logs in on the `web` policy within the provider's session `op_sid`, as `sub` (tokens without one for
/// `None`): the session cookie.
async fn login_as(w: &World, sub: Option<&str>, op_sid: &str) -> String {
    let browser = [("accept", "text/html")];
    let start = redirected(w.check(&request("web", "GET", "/app", &browser)).await);
    let q: HashMap<String, String> = url::Url::parse(&start.location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let mut at = access_claims(sub.unwrap_or_default(), json!({"cid": "oidc-authz"}));
    let mut id = json!({
        "iss": ISSUER, "aud": "oidc-authz", "sub": sub, "sid": op_sid, "nonce": q["nonce"],
        "iat": NOW, "exp": NOW + 3600,
    });
    if sub.is_none() {
        for claims in [&mut at, &mut id] {
            claims.as_object_mut().map(|c| c.remove("sub"));
        }
    }
    let (at, id_token) = (w.key.sign(&at), w.key.sign(&id));
    let tokens = json!({"access_token": at, "id_token": id_token, "token_type": "Bearer", "expires_in": 3600});
    w.idp.answer(Endpoint::Token, 200, tokens);
    let callback = format!("/oauth2/callback?code=c&state={}", q["state"]);
    let login_cookie = cookie_header(&start.set_cookies);
    let headers = [("accept", "text/html"), ("cookie", login_cookie.as_str())];
    let back = redirected(w.check(&request("web", "GET", &callback, &headers)).await);
    cookie_header(&back.set_cookies)
}

/// Whether the session cookie `cookie` still lets a browser in.
async fn in_session(w: &World, cookie: &str) -> bool {
    let headers = [("accept", "text/html"), ("cookie", cookie)];
    matches!(
        w.check(&request("web", "GET", "/app", &headers)).await,
        Decision::Allow(_)
    )
}

/// A back-channel logout POST carrying `body`.
fn backchannel_post(method: &str, body: &str) -> CheckRequest {
    let mut req = request(
        "web",
        method,
        "/oauth2/backchannel-logout",
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    if let Some(http) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.body = body.to_string();
    }
    req
}

/// The claims of a valid logout token for `sub` in the provider's session `op_sid`, with `jti`.
fn logout_claims(sub: &str, op_sid: &str, jti: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": "oidc-authz", "sub": sub, "sid": op_sid, "jti": jti, "iat": NOW, "exp": NOW + 120,
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    })
}

/// OpenID Connect Back-Channel Logout: a logout token the provider signed ends the sessions of its `sid` (200,
/// nothing upstream), once; a token that is not a valid logout token ends nothing (400).
#[tokio::test]
async fn a_backchannel_logout_token_ends_the_sessions_of_its_provider_session_once() {
    let w = World::new();
    let alice = logged_in(&w, "alice", "op-1").await;
    let other = logged_in(&w, "alice", "op-2").await;
    assert!(in_session(&w, &alice).await && in_session(&w, &other).await);

    let bad = [
        ("signature", {
            let t = w.key.sign(&logout_claims("alice", "op-1", "j0"));
            let (head, _) = t.rsplit_once('.').unwrap();
            format!("{head}.AAAA")
        }),
        (
            "audience",
            w.key.sign(&with(
                logout_claims("alice", "op-1", "j1"),
                json!({"aud": "someone-else"}),
            )),
        ),
        (
            "nonce",
            w.key.sign(&with(
                logout_claims("alice", "op-1", "j2"),
                json!({"nonce": "n"}),
            )),
        ),
        (
            "events",
            w.key.sign(&with(
                logout_claims("alice", "op-1", "j3"),
                json!({"events": {}}),
            )),
        ),
        (
            "too old",
            w.key.sign(&with(
                logout_claims("alice", "op-1", "j4"),
                json!({"iat": NOW - 3600}),
            )),
        ),
        (
            "issuer",
            w.key.sign(&with(
                logout_claims("alice", "op-1", "j5"),
                json!({"iss": "https://evil.test"}),
            )),
        ),
        (
            "no jti",
            w.key.sign(&with(
                logout_claims("alice", "op-1", "j6"),
                json!({"jti": null}),
            )),
        ),
        (
            "an ID token",
            w.key.sign(
                &json!({"iss": ISSUER, "aud": "oidc-authz", "sub": "alice", "sid": "op-1",
            "jti": "j7", "iat": NOW, "exp": NOW + 60, "nonce": "n"}),
            ),
        ),
    ];
    for (why, token) in bad {
        let d = denied(
            w.check(&backchannel_post("POST", &format!("logout_token={token}")))
                .await,
        );
        assert_eq!(
            (d.status.code(), d.error),
            (400, "invalid_request"),
            "{why}: {d:?}"
        );
        assert!(
            in_session(&w, &alice).await,
            "{why}: a bad token ended the session"
        );
    }
    let token = w.key.sign(&logout_claims("alice", "op-1", "j-ok"));
    let body = format!("logout_token={token}");
    let d = denied(w.check(&backchannel_post("GET", &body)).await);
    assert_eq!(d.status.code(), 400, "a GET is no back-channel logout");

    let answered = w.check(&backchannel_post("POST", &body)).await;
    assert_eq!(answered, Decision::Answered(Answered { status: 200 }));
    assert!(!in_session(&w, &alice).await, "the session of op-1 is over");
    assert!(in_session(&w, &other).await, "the session of op-2 is not");
    let replay = denied(w.check(&backchannel_post("POST", &body)).await);
    assert_eq!(replay.description, "the logout token was already used");

    // a token naming only the user ends every session of theirs at this provider
    let token = w.key.sign(&with(
        logout_claims("alice", "op-1", "j-sub"),
        json!({"sid": null}),
    ));
    let answered = w
        .check(&backchannel_post("POST", &format!("logout_token={token}")))
        .await;
    assert_eq!(answered, Decision::Answered(Answered { status: 200 }));
    assert!(!in_session(&w, &other).await);
}

/// A user logout takes the session out of the index (the admin API no longer lists it); the user's other
/// session stays listed and usable.
#[tokio::test]
async fn a_user_logout_removes_the_session_from_the_index() {
    let w = World::new();
    let a = logged_in(&w, "alice", "op-1").await;
    let b = logged_in(&w, "alice", "op-2").await;
    let index = w.authz.logins().index().expect("an index");
    let listed = index.of_sub("alice").await.expect("store");
    assert_eq!(listed.len(), 2);
    let headers = [
        ("cookie", a.as_str()),
        ("origin", "https://app.example.com"),
    ];
    redirected(
        w.check(&request("web", "POST", "/oauth2/logout", &headers))
            .await,
    );
    assert!(!in_session(&w, &a).await && in_session(&w, &b).await);
    let left = index.of_sub("alice").await.expect("store");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(listed.contains(&left[0]) || listed.iter().any(|r| r.id == left[0].id));
    for r in &listed {
        let gone = index.get(&r.id).await.expect("store").is_none();
        assert_eq!(gone, r.id != left[0].id, "{r:?}");
    }
}

/// A login whose tokens name no user (`sub`) is indexed under no user: listing the empty `sub` lists nothing,
/// and a back-channel logout of its provider session still ends it.
#[tokio::test]
async fn a_login_without_sub_is_no_users_session_and_still_ends_by_its_provider_session() {
    let w = World::new();
    let anonymous = login_as(&w, None, "op-9").await;
    let alice = logged_in(&w, "alice", "op-1").await;
    assert!(in_session(&w, &anonymous).await && in_session(&w, &alice).await);
    let index = w.authz.logins().index().expect("an index");
    assert!(index.of_sub("").await.expect("store").is_empty());
    assert_eq!(index.of_sub("alice").await.expect("store").len(), 1);
    let token = w.key.sign(&json!({
        "iss": ISSUER, "aud": "oidc-authz", "sid": "op-9", "jti": "j-anon", "iat": NOW, "exp": NOW + 120,
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }));
    let answered = w
        .check(&backchannel_post("POST", &format!("logout_token={token}")))
        .await;
    assert_eq!(answered, Decision::Answered(Answered { status: 200 }));
    assert!(!in_session(&w, &anonymous).await && in_session(&w, &alice).await);
}

/// A memory store that fails every operation once `left` more have run (Redis dying mid-way), until healed.
#[derive(Debug, Clone)]
struct Breakable {
    inner: MemoryBackend,
    left: Arc<std::sync::atomic::AtomicUsize>,
}

impl Breakable {
    fn new() -> Self {
        Breakable {
            inner: MemoryBackend::new(),
            left: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
        }
    }

    fn fail_after(&self, ops: usize) {
        self.left.store(ops, std::sync::atomic::Ordering::SeqCst);
    }

    fn heal(&self) {
        self.fail_after(usize::MAX);
    }

    /// How many operations ran since it was last healed.
    fn ops(&self) -> usize {
        usize::MAX - self.left.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this operation may run (counting it).
    fn up(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.left
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| StoreError::Unavailable("broken".into()))
    }
}

impl Backend for Breakable {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        match self.up() {
            Ok(()) => self.inner.get(key),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: std::time::Duration,
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        match self.up() {
            Ok(()) => self.inner.set(key, value, ttl),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn set_new<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: std::time::Duration,
    ) -> futures::future::BoxFuture<'a, Result<bool, StoreError>> {
        match self.up() {
            Ok(()) => self.inner.set_new(key, value, ttl),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn delete<'a>(
        &'a self,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        match self.up() {
            Ok(()) => self.inner.delete(key),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn incr<'a>(
        &'a self,
        key: &'a str,
        ttl: std::time::Duration,
    ) -> futures::future::BoxFuture<'a, Result<u64, StoreError>> {
        match self.up() {
            Ok(()) => self.inner.incr(key, ttl),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        match self.up() {
            Ok(()) => self.inner.publish(channel, message),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn subscribe(&self, channel: String, to: tokio::sync::broadcast::Sender<Vec<u8>>) {
        self.inner.subscribe(channel, to)
    }
    fn ping(&self) -> futures::future::BoxFuture<'_, Result<(), StoreError>> {
        match self.up() {
            Ok(()) => self.inner.ping(),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a [u8],
        ttl: std::time::Duration,
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        match self.up() {
            Ok(()) => self.inner.add_member(key, member, ttl),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn remove_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a [u8],
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        match self.up() {
            Ok(()) => self.inner.remove_member(key, member),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    fn members<'a>(
        &'a self,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Vec<u8>>, StoreError>> {
        match self.up() {
            Ok(()) => self.inner.members(key),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// The store failing at any point of a back-channel logout (Redis dying mid-way, and staying down for the rest
/// of that request): the answer is a 503, never a 200, and the provider's retry of the same token, once the
/// store is back, is honoured and ends every session it names; once it is, the token is used.
#[tokio::test]
async fn a_store_failing_midway_through_a_backchannel_logout_is_a_503_and_its_retry_ends_every_session()
 {
    let mut completed = false;
    for budget in 0..200 {
        let store = Breakable::new();
        let w = World::with_backend(Box::new(store.clone()));
        let a = logged_in(&w, "alice", "op-1").await;
        let b = logged_in(&w, "alice", "op-1").await;
        assert!(in_session(&w, &a).await && in_session(&w, &b).await);
        let token = w.key.sign(&logout_claims("alice", "op-1", "j-1"));
        let body = format!("logout_token={token}");
        store.fail_after(budget);
        let first = w.check(&backchannel_post("POST", &body)).await;
        store.heal();
        match first {
            Decision::Answered(Answered { status: 200 }) => completed = true,
            Decision::Deny(d) => {
                assert_eq!(
                    d.status.code(),
                    503,
                    "store failing after {budget} operations: {d:?}"
                );
                let retry = w.check(&backchannel_post("POST", &body)).await;
                assert_eq!(
                    retry,
                    Decision::Answered(Answered { status: 200 }),
                    "the retry after failing at {budget}"
                );
            }
            other => panic!("store failing after {budget} operations: {other:?}"),
        }
        assert!(
            !in_session(&w, &a).await && !in_session(&w, &b).await,
            "a session outlived the logout (store failing after {budget} operations)"
        );
        let replay = denied(w.check(&backchannel_post("POST", &body)).await);
        assert_eq!(replay.description, "the logout token was already used");
        if completed {
            break;
        }
    }
    assert!(completed, "the logout never completed");
}

/// Two replicas with `web`'s sessions in their shared store: a logout on A ends the session on B at once, and
/// drops B's local copy of that session only: B's copy of another session is still used, without a store read.
#[tokio::test]
async fn an_ended_event_drops_only_the_ended_sessions_copy() {
    let config = CONFIG.replace(
        "backchannel_logout_path = ",
        "session_storage = \"store\"\nbackchannel_logout_path = ",
    );
    let mut checked = false;
    // The local copies live a second of real time: an attempt slower than half of that proves nothing and is
    // run again.
    for _ in 0..10 {
        let store = Breakable::new();
        let a = World::with_config(&config, Box::new(store.clone()));
        let b = World::with_config(&config, Box::new(store.clone()));
        let alice = logged_in(&a, "alice", "op-1").await;
        let bob = logged_in(&a, "bob", "op-2").await;
        let start = std::time::Instant::now();
        assert!(in_session(&b, &alice).await && in_session(&b, &bob).await);
        let headers = [
            ("cookie", alice.as_str()),
            ("origin", "https://app.example.com"),
        ];
        redirected(
            a.check(&request("web", "POST", "/oauth2/logout", &headers))
                .await,
        );
        assert!(!in_session(&b, &alice).await, "ended on B at once");
        let before = store.ops();
        assert!(in_session(&b, &bob).await);
        let reads = store.ops() - before;
        if start.elapsed() > std::time::Duration::from_millis(500) {
            continue;
        }
        assert_eq!(reads, 0, "bob's copy on B was dropped");
        checked = true;
        break;
    }
    assert!(checked, "every attempt was too slow to tell");
}

#[path = "offline_userinfo_tests.rs"]
mod userinfo;

/// A Check's future stays small: the steps that call the provider or the store (logging in, refreshing, verifying a
/// token not cached, a grant, an introspection) are boxed, taken only when needed. Inline, they made the future of
/// every Check (cache hits too) 8 kB, copied on every Check (memcpy was the top symbol of a store-session Check).
#[tokio::test]
async fn a_checks_future_is_small() {
    let w = World::new();
    let req = request("api", "GET", "/", &[]);
    let view = CheckView::new(&req);
    let check = w.authz.check(&view);
    let size = std::mem::size_of_val(&check);
    assert!(size <= 3 * 1024, "a Check's future is {size} bytes");
}
