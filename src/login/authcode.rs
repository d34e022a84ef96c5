//! The steps of the browser login for one policy ([`Login`]): no session: 302 to the provider (state, nonce,
//! PKCE S256) with an encrypted login cookie; the callback: state checked, code exchanged, ID token verified,
//! session stored, 302 back to the original path; later requests ride the session (its tokens verified, refreshed
//! when the access token is about to expire); logout forgets it and goes to the provider.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cache;
use crate::clock::Clock;
use crate::config::{ClaimsSource, LoginSettings, Policy};
use crate::decision::Redirect;
use crate::flow::bearer::{BearerError, BearerVerifier, verify_signature};
use crate::flow::claims::{self, NotForUs, TimeError};
use crate::login::cookie::{
    CHUNK_SIZE, CookieAttrs, CookieCodec, RequestCookies, SetCookie, clear_cookie_headers,
    for_request, set_cookie_header,
};
use crate::login::store::{SessionData, SessionStore};
use crate::provider::token::{TokenAnswer, TokenResponse};
use crate::provider::{IdpError, Provider};
use crate::request::CheckView;
use crate::rng::Rng;
use crate::store::{Store, StoreError};

/// Name of the short-lived login cookie.
pub const LOGIN_COOKIE: &str = "oidc_authz_login";
/// How long a login may take, in seconds.
const LOGIN_TTL: u64 = 300;
/// A session's last-seen time is rewritten at most this often (seconds), so most requests set no cookie.
const SEEN_GRANULARITY: u64 = 60;
/// Longest return path (path and query) kept in the login cookie; a longer one keeps the path alone, or `/`.
pub const MAX_RETURN_PATH: usize = 2048;
/// How long a refresh's result answers requests still carrying the cookie from before it (seconds).
pub const REFRESH_REUSE_SECS: u64 = 60;

/// The store kind of a refresh's result, shared with every replica for [`REFRESH_REUSE_SECS`].
const REFRESHED_KIND: &str = "refreshed";
/// The store kind of the lock that lets one replica run a refresh grant.
const REFRESH_LOCK_KIND: &str = "refresh-lock";
/// How often a replica waiting for another's refresh looks for its result.
const REFRESH_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// A refresh's result as the store shares it (sealed at rest by the store).
#[derive(Serialize, Deserialize)]
enum SharedRefresh {
    /// The refreshed session.
    Done(SessionData),
    /// The provider refused the refresh token: the session is over.
    Failed,
}

/// Refreshes in flight or just done, by a hash of the refresh and access tokens they replace: one refresh per session
/// at a time, and requests that still carry the pre-refresh cookie get the refreshed session (and its cookie) too.
pub type RefreshCache = moka::future::Cache<cache::Key, Arc<Refreshed>>;

/// A refreshed session and the `Set-Cookie` values storing it (shared by every request that waited for it).
pub struct Refreshed {
    /// The session after the refresh.
    pub session: Arc<OpenedSession>,
    /// `Set-Cookie` values of the refreshed session.
    pub set_cookies: Vec<SetCookie>,
}

impl std::fmt::Debug for Refreshed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshed").finish_non_exhaustive()
    }
}

/// A refresh cache with the reuse window.
pub fn refresh_cache() -> RefreshCache {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(std::time::Duration::from_secs(REFRESH_REUSE_SECS))
        .build()
}

/// What the login cookie holds between the redirect and the callback.
#[derive(Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    /// Path and query to return to (always starts with a single `/`).
    return_to: String,
    redirect_uri: String,
    provider: String,
    exp: u64,
}

/// Why a callback failed (each is a 401 page, except `Idp` which is a 503).
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The provider sent `error=...`.
    #[error("the identity provider reported an error: {0}")]
    Provider(String),
    /// No login cookie, or it expired, or it does not open.
    #[error("the login expired or was started in another browser; please try again")]
    NoLogin,
    /// The callback's `iss` names another issuer (RFC 9207 mix-up defence).
    #[error("the callback comes from another issuer")]
    Issuer,
    /// `state` differs from the login cookie's.
    #[error("the login state does not match; please try again")]
    State,
    /// No `code`.
    #[error("the callback carries no authorization code")]
    NoCode,
    /// The code exchange was refused.
    #[error("the identity provider refused the authorization code")]
    Exchange,
    /// The ID token did not verify.
    #[error("the ID token is not valid: {0}")]
    IdToken(&'static str),
    /// The provider could not be reached.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
    /// The session could not be stored.
    #[error("the session store is unavailable")]
    Store(#[source] StoreError),
}

/// Why a session could not be used.
#[derive(Debug, Clone)]
pub enum SessionError {
    /// No cookie, garbage, wrong provider, idle or absolute timeout: start over.
    Gone,
    /// The access token expired and could not be refreshed: start over.
    RefreshFailed,
    /// The provider was needed for a refresh and could not be reached.
    Idp(IdpError),
    /// The session store was needed and could not answer.
    Store(StoreError),
    /// Another replica's refresh of this session gave no result within the wait budget.
    Busy,
}

/// A usable session and what to tell the browser.
pub struct ActiveSession {
    /// The session (possibly refreshed) and its claims.
    pub session: Arc<OpenedSession>,
    /// `Set-Cookie` values when the session cookie changed (refresh, last-seen update).
    pub set_cookies: Vec<SetCookie>,
}

/// A session cookie opened and its tokens verified: its data and the verified claims (cached per cookie value by
/// the caller).
pub struct OpenedSession {
    /// What the cookie holds.
    pub data: SessionData,
    /// Merged claims of the verified tokens, for access control and headers.
    pub claims: Map<String, Value>,
    /// The claims hold until then (the earliest of the access token's expiry and the verified tokens' `exp`): past
    /// it, the session is refreshed before it is used.
    pub valid_until: u64,
    /// The key of this session in the ended-session set (a hash of `data.sid`).
    pub ended_key: cache::Key,
}

impl std::fmt::Debug for OpenedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedSession")
            .field("provider", &self.data.provider)
            .finish_non_exhaustive()
    }
}

fn random_b64(rng: &dyn Rng, n: usize) -> String {
    let mut b = vec![0u8; n];
    rng.fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Whether the request comes from a browser navigation (so a redirect makes sense).
pub fn is_browser(view: &CheckView<'_>) -> bool {
    let accept_html = view
        .header("accept")
        .is_some_and(|a| a.to_ascii_lowercase().contains("text/html"));
    accept_html && !view.has_header("x-requested-with")
}

/// The path (and query) to come back to; anything that is not a plain absolute path becomes `/`.
pub fn return_path(view: &CheckView<'_>) -> String {
    let p = view.path;
    let safe = p.starts_with('/')
        && !p.starts_with("//")
        && !p.contains('\\')
        && !p.chars().any(char::is_control);
    if !safe {
        return "/".into();
    }
    // Capped, so a long link cannot blow up the login cookie: path and query, else the path alone, else `/`.
    if !view.query.is_empty() && p.len() + 1 + view.query.len() <= MAX_RETURN_PATH {
        format!("{p}?{}", view.query)
    } else if p.len() <= MAX_RETURN_PATH {
        p.to_string()
    } else {
        "/".into()
    }
}

/// The absolute URL of the request (for `login_uri` in a 401), on the origin of the configured `redirect_uri`:
/// never the client's `Host` or scheme.
pub fn request_url(view: &CheckView<'_>, login: &LoginSettings) -> String {
    format!(
        "{}{}",
        login.redirect_uri.origin().ascii_serialization(),
        return_path(view)
    )
}

/// The key of a session id in the ended-session set.
pub fn ended_key(sid: &str) -> cache::Key {
    cache::key(&["oidc-authz ended session", sid])
}

/// Why a session's tokens did not verify.
enum TokenCheck {
    /// Forged, tampered or from another issuer or client: no session.
    Invalid(&'static str),
    /// The keys could not be loaded.
    Idp(IdpError),
}

/// `exp` of verified claims, when it is a non-negative number.
fn exp_of(claims: &Map<String, Value>) -> Option<u64> {
    claims.get("exp").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    })
}

fn json_payload(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A 302 of the login with its cookies, before they meet the request (see [`LoginRedirect::for_request`]).
#[derive(Debug)]
pub struct LoginRedirect {
    /// Where the browser goes.
    pub location: String,
    /// The cookies it gets.
    pub set_cookies: Vec<SetCookie>,
}

impl LoginRedirect {
    /// The redirect answered to a request carrying `cookies` (deletions only of cookies it carried).
    pub fn for_request(self, cookies: &RequestCookies<'_>) -> Redirect {
        Redirect {
            location: self.location,
            set_cookies: for_request(self.set_cookies, cookies),
        }
    }
}

/// The login flow for one policy.
pub struct Login<'a> {
    /// The policy (its scopes).
    pub policy: &'a Policy,
    /// Its login settings.
    pub settings: &'a LoginSettings,
    /// Where its sessions live.
    pub store: &'a dyn SessionStore,
    /// Its provider.
    pub provider: &'a Provider,
    /// The clock.
    pub clock: &'a Arc<dyn Clock>,
    /// Where the state, nonce, PKCE verifier and session id come from.
    pub rng: &'a dyn Rng,
    /// The store shared with the other replicas (refresh locks and results).
    pub shared: &'a Store,
    /// How long a request waits for another replica's refresh of its session.
    pub refresh_wait: std::time::Duration,
}

impl Login<'_> {
    fn attrs(&self, max_age: Option<u64>) -> CookieAttrs {
        CookieAttrs {
            secure: self.settings.redirect_uri.scheme() == "https",
            max_age_secs: max_age,
        }
    }

    fn codec(&self) -> &CookieCodec {
        &self.settings.codec
    }

    /// The 302 to the provider's login, with the login cookie.
    pub async fn start(&self, view: &CheckView<'_>) -> Result<LoginRedirect, IdpError> {
        let meta = self.provider.metadata().await?;
        let endpoint = meta
            .authorization_endpoint
            .clone()
            .ok_or(IdpError::NoEndpoint("authorization_endpoint"))?;
        let client_id = self
            .provider
            .config
            .client_id
            .clone()
            .ok_or(IdpError::NoEndpoint("client_id"))?;
        let state = random_b64(self.rng, 32);
        let nonce = random_b64(self.rng, 32);
        let verifier = random_b64(self.rng, 32);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let mut scopes = self.policy.scopes.clone();
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let mut url = endpoint;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", self.settings.redirect_uri.as_str())
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let login = LoginState {
            state,
            nonce,
            verifier,
            return_to: return_path(view),
            redirect_uri: self.settings.redirect_uri.to_string(),
            provider: self.provider.name().to_string(),
            exp: self.clock.now() + LOGIN_TTL,
        };
        let mut sealed = self.codec().seal(
            LOGIN_COOKIE,
            &serde_json::to_vec(&login).unwrap_or_default(),
        );
        // Never chunked: one cookie, else the same login returning to `/`.
        if sealed.len() > CHUNK_SIZE {
            let login = LoginState {
                return_to: "/".into(),
                ..login
            };
            sealed = self.codec().seal(
                LOGIN_COOKIE,
                &serde_json::to_vec(&login).unwrap_or_default(),
            );
        }
        let set_cookies = set_cookie_header(LOGIN_COOKIE, &sealed, &self.attrs(Some(LOGIN_TTL)))
            .into_iter()
            .collect();
        Ok(LoginRedirect {
            location: url.to_string(),
            set_cookies,
        })
    }

    /// The callback: state, code exchange, ID token, session cookie, 302 back.
    pub async fn callback(
        &self,
        view: &CheckView<'_>,
        cookies: &RequestCookies<'_>,
    ) -> Result<LoginRedirect, CallbackError> {
        let params: Vec<(String, String)> = url::form_urlencoded::parse(view.query.as_bytes())
            .into_owned()
            .collect();
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if let Some(err) = param("error") {
            let clean: String = err
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(CallbackError::Provider(clean));
        }
        let login: LoginState = cookies
            .get(LOGIN_COOKIE)
            .and_then(|v| self.codec().open(LOGIN_COOKIE, v))
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(CallbackError::NoLogin)?;
        if login.exp < self.clock.now() || login.provider != self.provider.name() {
            return Err(CallbackError::NoLogin);
        }
        // RFC 9207: when the provider names itself in the callback, it must be the provider the login went to.
        if param("iss").is_some_and(|iss| iss != self.provider.config.issuer) {
            return Err(CallbackError::Issuer);
        }
        let state = param("state").unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(login.state.as_bytes())) {
            return Err(CallbackError::State);
        }
        let code = param("code")
            .filter(|c| !c.is_empty())
            .ok_or(CallbackError::NoCode)?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", login.redirect_uri.as_str()),
            ("code_verifier", login.verifier.as_str()),
        ];
        let tokens = self.token_request(&form).await.map_err(|e| match e {
            TokenCallError::Refused => CallbackError::Exchange,
            TokenCallError::Idp(e) => CallbackError::Idp(e),
        })?;
        let id_token = tokens
            .id_token
            .clone()
            .ok_or(CallbackError::IdToken("missing"))?;
        self.verify_id_token(&id_token, &login.nonce).await?;
        let now = self.clock.now();
        let data = SessionData {
            sid: random_b64(self.rng, 16),
            provider: self.provider.name().to_string(),
            at_exp: now.saturating_add(tokens.expires_in()),
            at: tokens.access_token,
            it: Some(id_token),
            rt: tokens.refresh_token,
            created: now,
            seen: now,
        };
        let mut set_cookies = self
            .store
            .save(&data, now)
            .await
            .map_err(CallbackError::Store)?;
        set_cookies.extend(self.forget_login());
        let location = if login.return_to.starts_with('/') && !login.return_to.starts_with("//") {
            login.return_to
        } else {
            "/".into()
        };
        Ok(LoginRedirect {
            location,
            set_cookies,
        })
    }

    async fn verify_id_token(&self, id_token: &str, nonce: &str) -> Result<(), CallbackError> {
        let claims = self.verify_token(id_token).await.map_err(|e| match e {
            TokenCheck::Idp(e) => CallbackError::Idp(e),
            TokenCheck::Invalid(why) => CallbackError::IdToken(why),
        })?;
        let config = &self.provider.config;
        let client_id = config.client_id.as_deref().unwrap_or_default();
        claims::id_token_audience(&claims, client_id).map_err(|e| {
            CallbackError::IdToken(match e {
                NotForUs::Audience => "audience",
                NotForUs::AuthorizedParty => "authorized party",
            })
        })?;
        let now = self.clock.now();
        claims::check_times(&claims, now, config.leeway_secs, claims::ID_TOKEN).map_err(|e| {
            CallbackError::IdToken(match e {
                TimeError::MalformedExp | TimeError::NoExpiry => "expiry",
                other => other.reason(),
            })
        })?;
        let got = claims
            .get("nonce")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bool::from(got.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(CallbackError::IdToken("nonce"));
        }
        Ok(())
    }

    /// One grant at the token endpoint with this service's own client.
    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, TokenCallError> {
        match self
            .provider
            .token_grant(form, self.provider.own_client())
            .await
        {
            Ok(TokenAnswer::Tokens(t)) => Ok(t),
            Ok(TokenAnswer::Refused { .. }) => Err(TokenCallError::Refused),
            Err(e) => Err(TokenCallError::Idp(e)),
        }
    }

    /// `Set-Cookie` values deleting the login cookie.
    pub fn forget_login(&self) -> Vec<SetCookie> {
        clear_cookie_headers(LOGIN_COOKIE, &self.attrs(None))
    }

    /// Loads a session by its reference and verifies its tokens: the claims of a session come only from tokens
    /// whose signature, issuer (and for the ID token, audience) verify. `Gone` for a reference with no session
    /// behind it or whose tokens do not verify.
    pub async fn open_session(&self, reference: &str) -> Result<OpenedSession, SessionError> {
        let data = self
            .store
            .load(reference)
            .await
            .map_err(SessionError::Store)?
            .ok_or(SessionError::Gone)?;
        self.verified(data).await.map_err(|e| match e {
            TokenCheck::Idp(e) => SessionError::Idp(e),
            TokenCheck::Invalid(why) => {
                tracing::info!(provider = %self.provider.name(), reason = why, "session tokens refused");
                SessionError::Gone
            }
        })
    }

    /// Verifies the session's tokens and merges their claims by the policy's precedence (first source wins per
    /// claim). A JWT access token is verified like a bearer token (signature and issuer; its `exp` bounds
    /// `valid_until`, so an expired one is refreshed, never trusted); the ID token is verified as at login
    /// (signature, issuer, audience). An opaque access token contributes no claims: then the ID token is required.
    ///
    /// A token whose `exp` has passed (read from the sealed cookie, unverified) is neither verified nor a source
    /// of claims: it only bounds `valid_until`, so the session goes straight to refresh (a key the provider has
    /// since rotated out does not log the user out). Such a session carries no claims and is never used as is.
    async fn verified(&self, data: SessionData) -> Result<OpenedSession, TokenCheck> {
        let now = self.clock.now();
        let expired = |token: &str| {
            json_payload(token)
                .and_then(|c| exp_of(&c))
                .filter(|exp| *exp <= now)
        };
        let mut valid_until = data.at_exp;
        let at_expired = BearerVerifier::is_jwt(&data.at)
            .then(|| expired(&data.at))
            .flatten();
        let at_claims = if let Some(exp) = at_expired {
            valid_until = valid_until.min(exp);
            None
        } else if BearerVerifier::is_jwt(&data.at) {
            let claims = self.verify_token(&data.at).await?;
            valid_until = valid_until.min(exp_of(&claims).ok_or(TokenCheck::Invalid("expiry"))?);
            Some(claims)
        } else {
            None
        };
        let it_expired = data.it.as_deref().and_then(expired);
        let it_claims = match (&data.it, it_expired) {
            (Some(_), Some(exp)) => {
                valid_until = valid_until.min(exp);
                None
            }
            (Some(it), None) => {
                let claims = self.verify_token(it).await?;
                let client_id = self
                    .provider
                    .config
                    .client_id
                    .as_deref()
                    .unwrap_or_default();
                claims::id_token_audience(&claims, client_id)
                    .map_err(|_| TokenCheck::Invalid("ID token audience"))?;
                valid_until =
                    valid_until.min(exp_of(&claims).ok_or(TokenCheck::Invalid("expiry"))?);
                Some(claims)
            }
            (None, _) => None,
        };
        if at_claims.is_none() && it_claims.is_none() && valid_until > now {
            return Err(TokenCheck::Invalid("no verifiable token"));
        }
        let mut claims = Map::new();
        for src in &self.settings.claims_source {
            let part = match src {
                ClaimsSource::AccessToken => at_claims.as_ref(),
                ClaimsSource::IdToken => it_claims.as_ref(),
            };
            for (k, v) in part.into_iter().flatten() {
                claims.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Ok(OpenedSession {
            ended_key: ended_key(&data.sid),
            data,
            claims,
            valid_until,
        })
    }

    /// Signature (the provider's keys) and issuer of one of the session's tokens.
    async fn verify_token(&self, token: &str) -> Result<Map<String, Value>, TokenCheck> {
        let claims = verify_signature(self.provider, token)
            .await
            .map_err(|e| match e {
                BearerError::Idp(e) => TokenCheck::Idp(e),
                _ => TokenCheck::Invalid("signature"),
            })?;
        if !claims::issuer_is(&claims, &self.provider.config.issuer) {
            return Err(TokenCheck::Invalid("issuer"));
        }
        Ok(claims)
    }

    /// Loads the request's session without verifying its tokens (logout: to revoke and end it).
    pub async fn read_session(
        &self,
        cookies: &RequestCookies<'_>,
    ) -> Result<Option<SessionData>, StoreError> {
        let Some(Some(reference)) = self.store.find(cookies) else {
            return Ok(None);
        };
        self.store.load(&reference).await
    }

    /// Validates a session, refreshing its tokens when needed. Concurrent refreshes of one session share one
    /// refresh grant (`refreshes`, keyed by a hash of the refresh and access tokens; across replicas, `Login::shared_refresh`),
    /// and all answer with its cookie.
    pub async fn use_session(
        &self,
        opened: Arc<OpenedSession>,
        refreshes: &RefreshCache,
    ) -> Result<ActiveSession, SessionError> {
        let now = self.clock.now();
        let s = self.settings;
        let data = &opened.data;
        if data.provider != self.provider.name()
            || now > data.created.saturating_add(s.absolute_timeout)
            || now > data.seen.saturating_add(s.idle_timeout)
        {
            return Err(SessionError::Gone);
        }
        let needs_refresh = now.saturating_add(s.refresh_leeway) >= opened.valid_until;
        let needs_seen = now.saturating_sub(data.seen) >= SEEN_GRANULARITY;
        if needs_refresh {
            // Boxed: the refresh's future is large, and inline it would be part of (and copied with) every Check's.
            return Box::pin(self.refreshed_session(&opened, refreshes)).await;
        }
        if !needs_seen {
            return Ok(ActiveSession {
                session: opened,
                set_cookies: Vec::new(),
            });
        }
        let mut data = data.clone();
        data.seen = now;
        let set_cookies = self
            .store
            .save(&data, now)
            .await
            .map_err(SessionError::Store)?;
        Ok(ActiveSession {
            session: Arc::new(OpenedSession {
                data,
                claims: opened.claims.clone(),
                valid_until: opened.valid_until,
                ended_key: opened.ended_key,
            }),
            set_cookies,
        })
    }

    /// The session's tokens refreshed: concurrent refreshes here share one (`refreshes`), and across replicas
    /// [`Login::shared_refresh`].
    async fn refreshed_session(
        &self,
        opened: &OpenedSession,
        refreshes: &RefreshCache,
    ) -> Result<ActiveSession, SessionError> {
        let data = &opened.data;
        let Some(rt) = data.rt.as_deref() else {
            return Err(SessionError::RefreshFailed);
        };
        // By the refresh token and the access token it goes with: requests still carrying the cookie from
        // before a refresh share its result; a session refreshed since (with a provider that keeps the refresh
        // token) is a new refresh, never the old result again.
        let key = cache::key(&[self.provider.name(), rt, &data.at]);
        let refreshed = refreshes
            .try_get_with(key, self.shared_refresh(opened, key))
            .await
            .map_err(|e| (*e).clone())?;
        Ok(ActiveSession {
            session: refreshed.session.clone(),
            set_cookies: refreshed.set_cookies.clone(),
        })
    }

    /// A refresh coalesced across replicas, by `key` (a hash of the provider and the old refresh token): the
    /// result another replica shared in the store, else the refresh grant run here under the store's lock (its
    /// result shared for [`REFRESH_REUSE_SECS`]), else the wait for the replica holding the lock, looking for its
    /// result within the wait budget (then `Busy`: a 503, never a second grant that a rotating provider would
    /// answer by ending the session). Only one replica spends the old refresh token while its lock lives.
    async fn shared_refresh(
        &self,
        opened: &OpenedSession,
        key: cache::Key,
    ) -> Result<Arc<Refreshed>, SessionError> {
        let reuse = std::time::Duration::from_secs(REFRESH_REUSE_SECS);
        // The lock lives as long as a Check may (twice the wait): a refresh cut off with its Check (deadline,
        // client gone) holds no session up for longer.
        let lock_ttl = (self.refresh_wait * 2).max(std::time::Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + self.refresh_wait;
        loop {
            if let Some(shared) = self
                .shared
                .get(REFRESHED_KIND, &key)
                .await
                .map_err(SessionError::Store)?
            {
                return self.adopt(&shared).await;
            }
            let won = self
                .shared
                .put_new(REFRESH_LOCK_KIND, &key, b"1", lock_ttl)
                .await
                .map_err(SessionError::Store)?;
            if won {
                let result = self.refresh(opened).await;
                let shared = match &result {
                    Ok(r) => Some(SharedRefresh::Done(r.session.data.clone())),
                    Err(SessionError::RefreshFailed) => Some(SharedRefresh::Failed),
                    Err(_) => None,
                };
                match shared {
                    Some(shared) => {
                        let value = serde_json::to_vec(&shared).unwrap_or_default();
                        // A failure is logged by the store; the replicas waiting then answer 503.
                        let _ = self.shared.put(REFRESHED_KIND, &key, &value, reuse).await;
                    }
                    // The provider or the store failed: another request may try again.
                    None => {
                        let _ = self.shared.delete(REFRESH_LOCK_KIND, &key).await;
                    }
                }
                return result;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(provider = %self.provider.name(), "session refresh: no result from the replica refreshing it in time");
                return Err(SessionError::Busy);
            }
            tokio::time::sleep(REFRESH_POLL).await;
        }
    }

    /// A refresh another replica (or this one) shared: its tokens verified like the ones of a new session, and
    /// stored for this request's answer.
    async fn adopt(&self, shared: &[u8]) -> Result<Arc<Refreshed>, SessionError> {
        let data = match serde_json::from_slice::<SharedRefresh>(shared) {
            Ok(SharedRefresh::Done(data)) => data,
            Ok(SharedRefresh::Failed) | Err(_) => return Err(SessionError::RefreshFailed),
        };
        self.store_refreshed(data, self.clock.now()).await
    }

    /// One refresh grant, then the new tokens verified like the ones of a new session.
    async fn refresh(&self, opened: &OpenedSession) -> Result<Arc<Refreshed>, SessionError> {
        let now = self.clock.now();
        let mut data = opened.data.clone();
        let rt = data.rt.clone().ok_or(SessionError::RefreshFailed)?;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
        ];
        let t = match self.token_request(&form).await {
            Ok(t) => t,
            Err(TokenCallError::Refused) => return Err(SessionError::RefreshFailed),
            Err(TokenCallError::Idp(e)) => return Err(SessionError::Idp(e)),
        };
        data.at_exp = now.saturating_add(t.expires_in());
        data.at = t.access_token;
        if t.refresh_token.is_some() {
            data.rt = t.refresh_token;
        }
        match t.id_token {
            Some(it) => data.it = Some(it),
            // An ID token the provider did not renew is dropped once expired: its claims no longer count.
            None => {
                if data
                    .it
                    .as_deref()
                    .and_then(json_payload)
                    .and_then(|c| exp_of(&c))
                    .is_none_or(|exp| exp <= now)
                {
                    data.it = None;
                }
            }
        }
        data.seen = now;
        self.store_refreshed(data, now).await
    }

    /// Refreshed tokens (from this grant started at `now`, or shared by another replica) verified like the ones
    /// of a new session and still valid at `now`, then stored; the `Set-Cookie` values count from after the grant.
    async fn store_refreshed(
        &self,
        data: SessionData,
        now: u64,
    ) -> Result<Arc<Refreshed>, SessionError> {
        let session = self.verified(data).await.map_err(|e| match e {
            TokenCheck::Idp(e) => SessionError::Idp(e),
            TokenCheck::Invalid(why) => {
                tracing::warn!(provider = %self.provider.name(), reason = why, "refreshed tokens refused");
                SessionError::RefreshFailed
            }
        })?;
        if session.valid_until <= now {
            return Err(SessionError::RefreshFailed);
        }
        let set_cookies = self
            .store
            .save(&session.data, self.clock.now())
            .await
            .map_err(SessionError::Store)?;
        Ok(Arc::new(Refreshed {
            session: Arc::new(session),
            set_cookies,
        }))
    }

    /// Whether this request may log out: its method is one of `logout_methods`, and a browser request comes from
    /// this site (`Origin`, `Sec-Fetch-Site`); a GET only as a same-origin navigation (or one the user typed).
    pub fn logout_allowed(&self, view: &CheckView<'_>) -> Result<(), &'static str> {
        let method = view.method.to_ascii_uppercase();
        if !self.settings.logout_methods.contains(&method) {
            return Err("logout is not accepted with this request method");
        }
        let ours = self.settings.redirect_uri.origin().ascii_serialization();
        if view.header("origin").is_some_and(|o| o.trim() != ours) {
            return Err("logout from another site is refused");
        }
        let site = view
            .header("sec-fetch-site")
            .map(|s| s.trim().to_ascii_lowercase());
        let same = |s: &str| s == "same-origin" || s == "none";
        match (method.as_str(), site.as_deref()) {
            (_, Some(s)) if !same(s) => Err("logout from another site is refused"),
            ("GET", None) => Err("a GET logout must be a same-origin browser navigation"),
            _ => Ok(()),
        }
    }

    /// Logout: clear the session and go to the provider's end-session endpoint (or the post-logout URI).
    pub async fn logout(&self, session: Option<SessionData>) -> LoginRedirect {
        let mut set_cookies = self.store.forget();
        set_cookies.extend(self.forget_login());
        let after = self
            .settings
            .post_logout_redirect_uri
            .as_ref()
            .map(|u| u.to_string());
        let end_session = match self.provider.metadata().await {
            Ok(m) => m.end_session_endpoint.clone(),
            Err(_) => None,
        };
        let location = match (end_session, session.and_then(|s| s.it)) {
            (Some(mut url), Some(id_token)) => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("id_token_hint", &id_token);
                    if let Some(a) = &after {
                        q.append_pair("post_logout_redirect_uri", a);
                    }
                }
                url.to_string()
            }
            _ => after.unwrap_or_else(|| "/".into()),
        };
        LoginRedirect {
            location,
            set_cookies,
        }
    }
}

enum TokenCallError {
    Refused,
    Idp(IdpError),
}

/// RFC 7009: revokes the session's refresh token, then its access token, at the provider's `revocation_endpoint`
/// with the client authentication of the token endpoint. Failures are logged (never a token) and end nothing:
/// logout goes on. Returns how many tokens the provider confirmed revoked.
pub async fn revoke(provider: &Provider, session: &SessionData) -> usize {
    let meta = match provider.metadata().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(provider = %provider.name(), error = %e, "logout: tokens not revoked");
            return 0;
        }
    };
    let Some(url) = meta.revocation_endpoint.clone() else {
        tracing::debug!(provider = %provider.name(), "logout: the provider has no revocation_endpoint");
        return 0;
    };
    let Some(client) = provider.own_client() else {
        return 0;
    };
    let auth = provider.token_auth(&meta);
    let mut revoked = 0;
    let tokens = [
        (session.rt.as_deref(), "refresh_token"),
        (Some(session.at.as_str()), "access_token"),
    ];
    for (token, hint) in tokens {
        let Some(token) = token else { continue };
        let form = [("token", token), ("token_type_hint", hint)];
        match provider
            .post_form(
                crate::provider::Endpoint::Revocation,
                &url,
                &form,
                client,
                auth,
            )
            .await
        {
            Ok((200, _)) => revoked += 1,
            Ok((status, _)) => {
                tracing::warn!(provider = %provider.name(), token_type = hint, status, "logout: the provider refused to revoke a token");
            }
            Err(e) => {
                tracing::warn!(provider = %provider.name(), token_type = hint, error = %e, "logout: token revocation failed");
            }
        }
    }
    revoked
}

/// A small HTML page for a failed login.
pub fn error_page(message: &str) -> String {
    let esc: String = message
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign-in failed</title></head>\
         <body><h1>Sign-in failed</h1><p>{esc}</p><p><a href=\"/\">Start again</a></p></body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_page_escapes() {
        let p = error_page("<script>alert(1)</script>");
        assert!(!p.contains("<script>") && p.contains("&lt;script&gt;"));
    }

    #[test]
    fn payload_decoding() {
        let p = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice"}"#);
        assert_eq!(json_payload(&format!("h.{p}.s")).unwrap()["sub"], "alice");
        assert!(json_payload("opaque").is_none());
    }
}
