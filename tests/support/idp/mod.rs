//! The mock IdP: Okta-style discovery, JWKS, token (client credentials, authorization code with PKCE, refresh),
//! introspection, revocation and userinfo, with switchable failure modes ([`Mode`]) and knobs in [`IdpState`].

mod endpoints;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::keys::SigningKey;
use super::{now, rand_u64};

// ------------------------------------------------------------------------------------------------
// State
// ------------------------------------------------------------------------------------------------

/// How the mock IdP behaves right now.
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
    /// Clients registered for `private_key_jwt` (Okta's public-key client authentication): id -> public JWK. Such
    /// a client authenticates by a signed assertion only, never by a secret.
    pub jwt_clients: Mutex<HashMap<String, Value>>,
    /// Every client assertion accepted: (the endpoint path, its header, its claims).
    pub assertions: Mutex<Vec<(String, Value, Value)>>,
    /// Tokens the userinfo endpoint knows: token -> its answer.
    pub userinfo: Mutex<HashMap<String, Value>>,
    /// Userinfo endpoint calls, counted on arrival.
    pub userinfo_hits: AtomicUsize,
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

// ------------------------------------------------------------------------------------------------
// The running IdP and its controls
// ------------------------------------------------------------------------------------------------

pub struct MockIdp {
    pub issuer: String,
    pub state: Arc<IdpState>,
    stop: Option<oneshot::Sender<()>>,
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
            jwt_clients: Mutex::new(HashMap::new()),
            assertions: Mutex::new(Vec::new()),
            userinfo: Mutex::new(HashMap::new()),
            userinfo_hits: AtomicUsize::new(0),
        });
        let app = endpoints::router(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        MockIdp {
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

    /// Registers `id` as a `private_key_jwt` client with the public half of the private JWK `jwk` (from then on
    /// it authenticates by assertion only).
    pub fn register_jwt_client(&self, id: &str, jwk: &Value) {
        let mut public = jwk.clone();
        for m in ["d", "p", "q", "dp", "dq", "qi"] {
            public.as_object_mut().unwrap().remove(m);
        }
        self.state
            .jwt_clients
            .lock()
            .unwrap()
            .insert(id.to_string(), public);
    }

    /// An opaque token only the userinfo endpoint knows, answered with `answer`.
    pub fn userinfo_token(&self, answer: Value) -> String {
        let t = format!("ui-{:x}{:x}", rand_u64(), rand_u64());
        self.state
            .userinfo
            .lock()
            .unwrap()
            .insert(t.clone(), answer);
        t
    }

    pub fn userinfo_hits(&self) -> usize {
        self.state.userinfo_hits.load(Ordering::SeqCst)
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
