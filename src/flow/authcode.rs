//! `authorization_code` + `session`: the browser login done entirely through Check answers. No session: 302 to
//! the provider (state, nonce, PKCE S256) with an encrypted login cookie; the callback: state checked, code
//! exchanged, ID token verified, session cookie set, 302 back to the original path; later requests ride the
//! session (refreshed when the access token is about to expire); logout clears it and goes to the provider.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::config::{ClaimsSource, LoginSettings, Policy};
use crate::decision::Redirect;
use crate::flow::bearer::{BearerError, verify_signature};
use crate::flow::session::{
    CookieAttrs, CookieCodec, RequestCookies, clear_cookie_headers, set_cookie_headers,
};
use crate::provider::{IdpError, Provider};
use crate::request::CheckView;

/// Name of the short-lived login cookie.
pub const LOGIN_COOKIE: &str = "oidc_authz_login";
/// How long a login may take, in seconds.
const LOGIN_TTL: u64 = 300;
/// A session's last-seen time is rewritten at most this often (seconds), so most requests set no cookie.
const SEEN_GRANULARITY: u64 = 60;

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

/// What the session cookie holds. `Debug` shows no token.
#[derive(Serialize, Deserialize, Clone)]
pub struct SessionData {
    /// The provider that issued the tokens.
    pub provider: String,
    /// Access token.
    pub at: String,
    /// ID token.
    #[serde(default)]
    pub it: Option<String>,
    /// Refresh token.
    #[serde(default)]
    pub rt: Option<String>,
    /// When the access token expires (seconds since the epoch).
    pub at_exp: u64,
    /// When the user logged in.
    pub created: u64,
    /// When the session was last used (to [`SEEN_GRANULARITY`]).
    pub seen: u64,
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
}

/// Why a session could not be used.
#[derive(Debug)]
pub enum SessionError {
    /// No cookie, garbage, wrong provider, idle or absolute timeout: start over.
    Gone,
    /// The access token expired and could not be refreshed: start over.
    RefreshFailed,
    /// The provider was needed for a refresh and could not be reached.
    Idp(IdpError),
}

/// A usable session and what to tell the browser.
pub struct ActiveSession {
    /// The session (possibly refreshed) and its claims.
    pub session: Arc<OpenedSession>,
    /// `Set-Cookie` values when the session cookie changed (refresh, last-seen update).
    pub set_cookies: Vec<String>,
}

/// A session cookie opened: its data and the claims of its tokens (cached per cookie value by the caller).
pub struct OpenedSession {
    /// What the cookie holds.
    pub data: SessionData,
    /// Merged claims for access control and headers.
    pub claims: Map<String, Value>,
}

impl std::fmt::Debug for OpenedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedSession")
            .field("provider", &self.data.provider)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<Value>,
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
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
    if view.query.is_empty() {
        p.to_string()
    } else {
        format!("{p}?{}", view.query)
    }
}

/// The absolute URL of the request (for `login_uri` in a 401).
pub fn request_url(view: &CheckView<'_>, login: &LoginSettings) -> String {
    let scheme = if view.scheme.is_empty() {
        login.redirect_uri.scheme()
    } else {
        view.scheme
    };
    format!("{scheme}://{}{}", view.host, return_path(view))
}

fn json_payload(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn expires_in(v: &Option<Value>) -> u64 {
    match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(300),
        Some(Value::String(s)) => s.parse().unwrap_or(300),
        _ => 300,
    }
}

/// The login flow for one policy.
pub struct Login<'a> {
    /// The policy.
    pub policy: &'a Policy,
    /// Its login settings.
    pub settings: &'a LoginSettings,
    /// Its cookie codec.
    pub codec: &'a CookieCodec,
    /// Its provider.
    pub provider: &'a Provider,
    /// The clock.
    pub clock: &'a Arc<dyn Clock>,
}

impl Login<'_> {
    fn attrs(&self, max_age: Option<u64>) -> CookieAttrs {
        CookieAttrs {
            secure: self.settings.redirect_uri.scheme() == "https",
            max_age_secs: max_age,
        }
    }

    /// Whether this request is the callback.
    pub fn is_callback(&self, view: &CheckView<'_>) -> bool {
        view.path == self.settings.redirect_uri.path()
    }

    /// Whether this request is the logout path.
    pub fn is_logout(&self, view: &CheckView<'_>) -> bool {
        self.policy.logout_path.as_deref() == Some(view.path)
    }

    /// The 302 to the provider's login, with the login cookie.
    pub async fn start(&self, view: &CheckView<'_>) -> Result<Redirect, IdpError> {
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
        let state = random_b64(32);
        let nonce = random_b64(32);
        let verifier = random_b64(32);
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
        let sealed = self.codec.seal(
            LOGIN_COOKIE,
            &serde_json::to_vec(&login).unwrap_or_default(),
        );
        let set_cookies = set_cookie_headers(LOGIN_COOKIE, &sealed, &self.attrs(Some(LOGIN_TTL)))
            .unwrap_or_default();
        Ok(Redirect {
            location: url.to_string(),
            set_cookies,
        })
    }

    /// The callback: state, code exchange, ID token, session cookie, 302 back.
    pub async fn callback(
        &self,
        view: &CheckView<'_>,
        cookies: &RequestCookies<'_>,
    ) -> Result<Redirect, CallbackError> {
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
            .read_chunked(LOGIN_COOKIE)
            .and_then(|v| self.codec.open(LOGIN_COOKIE, &v))
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
            provider: self.provider.name().to_string(),
            at_exp: now.saturating_add(expires_in(&tokens.expires_in)),
            at: tokens.access_token,
            it: Some(id_token),
            rt: tokens.refresh_token,
            created: now,
            seen: now,
        };
        let mut set_cookies = self.session_cookies(&data);
        set_cookies.extend(clear_cookie_headers(LOGIN_COOKIE, &self.attrs(None)));
        let location = if login.return_to.starts_with('/') && !login.return_to.starts_with("//") {
            login.return_to
        } else {
            "/".into()
        };
        Ok(Redirect {
            location,
            set_cookies,
        })
    }

    async fn verify_id_token(&self, id_token: &str, nonce: &str) -> Result<(), CallbackError> {
        let claims = verify_signature(self.provider, id_token)
            .await
            .map_err(|e| match e {
                BearerError::Idp(e) => CallbackError::Idp(e),
                _ => CallbackError::IdToken("signature"),
            })?;
        let client_id = self
            .provider
            .config
            .client_id
            .as_deref()
            .unwrap_or_default();
        let leeway = self.provider.config.leeway_secs;
        let now = self.clock.now();
        if claims.get("iss").and_then(Value::as_str) != Some(self.provider.config.issuer.as_str()) {
            return Err(CallbackError::IdToken("issuer"));
        }
        let auds: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(v)) => v.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !auds.contains(&client_id) {
            return Err(CallbackError::IdToken("audience"));
        }
        if auds.len() > 1 && claims.get("azp").and_then(Value::as_str) != Some(client_id) {
            return Err(CallbackError::IdToken("authorized party"));
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(CallbackError::IdToken("expiry"))?;
        if now > exp.saturating_add(leeway) {
            return Err(CallbackError::IdToken("expired"));
        }
        if claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat > now.saturating_add(leeway))
        {
            return Err(CallbackError::IdToken("issued in the future"));
        }
        let got = claims
            .get("nonce")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bool::from(got.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(CallbackError::IdToken("nonce"));
        }
        Ok(())
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, TokenCallError> {
        let meta = self
            .provider
            .metadata()
            .await
            .map_err(TokenCallError::Idp)?;
        let url = meta
            .token_endpoint
            .clone()
            .ok_or(TokenCallError::Idp(IdpError::NoEndpoint("token_endpoint")))?;
        let (Some(id), Some(secret)) = (
            &self.provider.config.client_id,
            &self.provider.config.client_secret,
        ) else {
            return Err(TokenCallError::Idp(IdpError::NoEndpoint(
                "client_id and client_secret",
            )));
        };
        let auth = self.provider.token_auth(&meta);
        let (status, body) = self
            .provider
            .post_form("token", &url, form, (id.as_str(), secret), auth)
            .await
            .map_err(TokenCallError::Idp)?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| {
                TokenCallError::Idp(IdpError::Garbage {
                    endpoint: "token",
                    reason: e.to_string(),
                })
            }),
            s if s >= 500 || s == 429 || s == 408 => Err(TokenCallError::Idp(IdpError::Status {
                endpoint: "token",
                status: s,
            })),
            _ => Err(TokenCallError::Refused),
        }
    }

    /// `Set-Cookie` values storing the session.
    pub fn session_cookies(&self, data: &SessionData) -> Vec<String> {
        let name = self.settings.cookie_name.as_str();
        let sealed = self
            .codec
            .seal(name, &serde_json::to_vec(data).unwrap_or_default());
        let remaining =
            (data.created + self.settings.absolute_timeout).saturating_sub(self.clock.now());
        set_cookie_headers(name, &sealed, &self.attrs(Some(remaining.max(1))))
            .unwrap_or_else(|| clear_cookie_headers(name, &self.attrs(None)))
    }

    /// `Set-Cookie` values deleting the session.
    pub fn clear_session(&self) -> Vec<String> {
        clear_cookie_headers(&self.settings.cookie_name, &self.attrs(None))
    }

    /// The sealed session cookie value, if any (`None`: no cookie at all; `Some(None)`: broken chunks).
    pub fn session_value(&self, cookies: &RequestCookies<'_>) -> Option<Option<String>> {
        let name = self.settings.cookie_name.as_str();
        if !cookies.has(name) {
            return None;
        }
        Some(cookies.read_chunked(name))
    }

    /// Opens a sealed session value (`None`: it does not authenticate or parse).
    pub fn open_session(&self, value: &str) -> Option<OpenedSession> {
        let name = self.settings.cookie_name.as_str();
        let data = self
            .codec
            .open(name, value)
            .and_then(|b| serde_json::from_slice::<SessionData>(&b).ok())?;
        let claims = self.claims(&data);
        Some(OpenedSession { data, claims })
    }

    /// Reads and opens the session cookie, if any (`None`: no cookie at all).
    pub fn read_session(&self, cookies: &RequestCookies<'_>) -> Option<Option<SessionData>> {
        Some(
            self.session_value(cookies)?
                .and_then(|v| self.open_session(&v))
                .map(|o| o.data),
        )
    }

    /// Validates a session, refreshing its access token when needed.
    pub async fn use_session(
        &self,
        opened: Arc<OpenedSession>,
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
        let needs_refresh = now.saturating_add(s.refresh_leeway) >= data.at_exp;
        let needs_seen = now.saturating_sub(data.seen) >= SEEN_GRANULARITY;
        if !needs_refresh && !needs_seen {
            return Ok(ActiveSession {
                session: opened,
                set_cookies: Vec::new(),
            });
        }
        let mut data = data.clone();
        if needs_refresh {
            let Some(rt) = data.rt.clone() else {
                return Err(SessionError::RefreshFailed);
            };
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
            ];
            match self.token_request(&form).await {
                Ok(t) => {
                    data.at_exp = now.saturating_add(expires_in(&t.expires_in));
                    data.at = t.access_token;
                    if t.refresh_token.is_some() {
                        data.rt = t.refresh_token;
                    }
                    if t.id_token.is_some() {
                        data.it = t.id_token;
                    }
                }
                Err(TokenCallError::Refused) => return Err(SessionError::RefreshFailed),
                Err(TokenCallError::Idp(e)) => return Err(SessionError::Idp(e)),
            }
        }
        data.seen = now;
        let set_cookies = self.session_cookies(&data);
        let claims = if needs_refresh {
            self.claims(&data)
        } else {
            opened.claims.clone()
        };
        Ok(ActiveSession {
            session: Arc::new(OpenedSession { data, claims }),
            set_cookies,
        })
    }

    /// Claims from the session's tokens, by the policy's precedence (first source wins per claim).
    fn claims(&self, data: &SessionData) -> Map<String, Value> {
        let mut out = Map::new();
        for src in &self.settings.claims_source {
            let part = match src {
                ClaimsSource::AccessToken => json_payload(&data.at),
                ClaimsSource::IdToken => data.it.as_deref().and_then(json_payload),
            };
            for (k, v) in part.unwrap_or_default() {
                out.entry(k).or_insert(v);
            }
        }
        out
    }

    /// Logout: clear the session and go to the provider's end-session endpoint (or the post-logout URI).
    pub async fn logout(&self, session: Option<SessionData>) -> Redirect {
        let mut set_cookies = self.clear_session();
        set_cookies.extend(clear_cookie_headers(LOGIN_COOKIE, &self.attrs(None)));
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
        Redirect {
            location,
            set_cookies,
        }
    }
}

enum TokenCallError {
    Refused,
    Idp(IdpError),
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
