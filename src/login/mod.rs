//! The browser login of `authorization_code` + `session`, all of it: the callback, the logout, riding a session
//! (opened, verified, refreshed) and the redirect to log in, behind the [`store::SessionStore`] seam (the session in
//! its cookie, or in the shared store). [`Logins`] holds what every login policy shares (the opened-session and
//! refresh caches, the ended sessions, the shared store); a policy's own part is its [`LoginFlow`]; the steps
//! themselves are in [`authcode`], the cookie mechanics in [`cookie`].

pub mod authcode;
pub mod backchannel;
pub mod cookie;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

pub use authcode::{OpenedSession, error_page};

use crate::authn::{Authenticated, Claims, Identity, Refusal};
use crate::cache;
use crate::clock::Clock;
use crate::config::{AuthMethod, LoginSettings, Policy, SessionStorage};
use crate::credentials::{Credentials, Intent};
use crate::decision::Answered;
use crate::login::authcode::{
    ActiveSession, CallbackError, Login, RefreshCache, SessionError, ended_key, is_browser,
    refresh_cache, request_url, revoke,
};
use crate::login::cookie::{RequestCookies, for_request};
use crate::login::store::{
    CookieStore, EndedSessions, NOT_ENDED_FOR, SessionData, SessionStore, SharedEndedSessions,
    StoreSessions,
};
use crate::provider::Provider;
use crate::request::CheckView;
use crate::rng::Rng;
use crate::store::sessions::{SessionIndex, public_id};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

/// Logout revocations that may run at once per provider.
pub const MAX_REVOCATIONS_PER_PROVIDER: usize = 16;

/// One policy's login: its settings (taken out of the config's policy, so a compiled policy has them in one
/// place), where its sessions live, and its provider's revocation slots.
#[derive(Debug)]
pub struct LoginFlow {
    /// The settings (with the cookie codec built at validation).
    pub settings: LoginSettings,
    /// Where its sessions live with `session_storage = "cookie"` (with `"store"`, a [`StoreSessions`] over the
    /// shared store is used instead).
    pub store: Box<dyn SessionStore>,
    /// Logout revocations in flight for its provider (shared by the provider's policies), at most
    /// [`MAX_REVOCATIONS_PER_PROVIDER`]: a slow provider cannot pile up revocation tasks.
    pub revocations: Arc<tokio::sync::Semaphore>,
}

impl LoginFlow {
    /// The login of a policy with `settings`, its sessions in the encrypted session cookie.
    pub fn new(settings: LoginSettings, revocations: Arc<tokio::sync::Semaphore>) -> Self {
        let store = CookieStore::new(
            &settings.cookie_name,
            settings.codec.clone(),
            settings.redirect_uri.scheme() == "https",
            settings.absolute_timeout,
        );
        LoginFlow {
            settings,
            store: Box::new(store),
            revocations,
        }
    }
}

/// What every login policy shares.
#[derive(Debug)]
pub struct Logins {
    /// Opened and verified cookie sessions by a hash of (policy, session reference).
    sessions: moka::future::Cache<cache::Key, Arc<OpenedSession>>,
    /// Opened and verified sessions of the shared store, by a hash of (policy, session reference): kept at most
    /// [`NOT_ENDED_FOR`] (another replica may refresh them); one that ended is refused by the ended sessions
    /// (which take in every replica's ended events) and dropped.
    shared_sessions: moka::future::Cache<cache::Key, Arc<OpenedSession>>,
    /// Session refreshes in flight or just done (one refresh grant per session at a time).
    refreshes: RefreshCache,
    /// Sessions ended by a logout (on any replica).
    ended: Arc<dyn EndedSessions>,
    /// The store shared with the other replicas: server-side sessions, ended sessions, refresh locks and results.
    store: Arc<Store>,
    /// How long a logout waits for its revocations, and a request for another replica's refresh.
    revoke_budget: Duration,
    clock: Arc<dyn Clock>,
    /// The login's state, nonce, PKCE verifier and session ids.
    rng: Arc<dyn Rng>,
    metrics: Arc<Metrics>,
    /// Every login's session, by user (the admin API lists and revokes them).
    index: Option<SessionIndex>,
}

impl Logins {
    /// Empty caches over the shared `store`; a logout waits at most `revoke_budget` for its revocations, and a
    /// request as long for another replica's refresh of its session.
    pub fn new(
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        metrics: Arc<Metrics>,
        revoke_budget: Duration,
        store: Arc<Store>,
    ) -> Self {
        Logins {
            sessions: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(120))
                .build(),
            shared_sessions: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(NOT_ENDED_FOR)
                .build(),
            refreshes: refresh_cache(),
            ended: Arc::new(SharedEndedSessions::new(store.clone(), clock.clone())),
            store,
            revoke_budget,
            clock,
            rng,
            metrics,
            index: None,
        }
    }

    /// The same, recording every new session in `index`.
    pub fn with_index(self, index: SessionIndex) -> Self {
        Logins {
            index: Some(index),
            ..self
        }
    }

    /// The session index, when there is one.
    pub fn index(&self) -> Option<&SessionIndex> {
        self.index.as_ref()
    }

    /// Ends the session whose ended-session key is `key` (until `until`), on every replica the ended sessions
    /// reach: the admin API's revoke.
    pub async fn end(&self, key: cache::Key, until: u64) -> Result<(), StoreError> {
        self.ended.end(key, until).await
    }

    /// The login's part of a Check: the callback, the logout, a session, or the redirect to log in. `None` when
    /// the request is for the token methods (it carries a token or client credentials, which win over a session).
    pub async fn step(
        &self,
        policy: &Policy,
        flow: &LoginFlow,
        provider: &Arc<Provider>,
        view: &CheckView<'_>,
        creds: &Credentials<'_>,
    ) -> Option<Result<Authenticated, Refusal>> {
        let server_side;
        let store: &dyn SessionStore = match flow.settings.session_storage {
            SessionStorage::Cookie => flow.store.as_ref(),
            SessionStorage::Store => {
                server_side = StoreSessions::new(&self.store, &flow.settings);
                &server_side
            }
        };
        let login = Login {
            policy,
            settings: &flow.settings,
            store,
            provider,
            clock: &self.clock,
            rng: self.rng.as_ref(),
            shared: &self.store,
            refresh_wait: self.revoke_budget,
        };
        let cookies = &creds.cookies;
        let method = AuthMethod::AuthorizationCode;
        // The rare steps are boxed: their futures are large (IdP and store calls), and inline they would make
        // every Check's future as large, copied on every Check (measured: memcpy was the top symbol of a
        // store-session Check's profile).
        let step = match creds.intent {
            Intent::Callback => Box::pin(self.callback(&login, view, cookies)).await,
            Intent::Logout => Box::pin(self.logout(&login, flow, provider, view, cookies)).await,
            Intent::BackchannelLogout => Box::pin(self.backchannel(&login, view)).await,
            Intent::Resource if creds.has_token() => return None,
            Intent::Resource => self.resource(&login, view, cookies).await,
        };
        Some(step.map_err(|r| match r.method {
            Some(_) => r,
            None if creds.intent != Intent::Resource => r.during(method),
            None => r,
        }))
    }

    /// OpenID Connect Back-Channel Logout: the provider's logout token verified (`backchannel`), then every
    /// session it names (by the provider's session id, else by user) ended on every replica: 200, or 400 for a
    /// token that does not verify, 503 when the provider's keys or the store cannot be had. Nothing goes upstream.
    async fn backchannel(
        &self,
        login: &Login<'_>,
        view: &CheckView<'_>,
    ) -> Result<Authenticated, Refusal> {
        use backchannel::BackchannelError;
        let provider = login.provider;
        let refused = |e: BackchannelError| match e {
            BackchannelError::Idp(e) => Refusal::idp(provider.name(), &e),
            BackchannelError::Store(_) => Refusal::unavailable("the session store is unavailable"),
            e => {
                tracing::info!(policy.name = %login.policy.name, reason = %e, "back-channel logout refused");
                Refusal::bad_request(e.to_string())
            }
        };
        if !view.method.eq_ignore_ascii_case("POST") {
            return Err(Refusal::bad_request("a back-channel logout is a POST"));
        }
        let token = backchannel::token_of(view.body).map_err(refused)?;
        let target = backchannel::verify(provider, &self.store, &token, self.clock.now())
            .await
            .map_err(refused)?;
        let ended = match self.end_named(provider.name(), &target).await {
            Ok(ended) => ended,
            Err(refusal) => {
                // Not every session ended: the provider's retry of this token must be honoured, not a replay.
                let _ = backchannel::release(&self.store, &target).await;
                return Err(refusal);
            }
        };
        // Used only once every session it names has ended. If marking it used fails, it stays pending (never
        // released: every session has ended, so nothing is left for a retry to do).
        backchannel::done(provider, &self.store, &target)
            .await
            .map_err(|_| Refusal::unavailable("the session store is unavailable"))?;
        tracing::info!(policy.name = %login.policy.name, provider = %provider.name(), sessions = ended, "back-channel logout: sessions ended");
        Ok(Authenticated::Answered(Answered { status: 200 }))
    }

    /// Ends every session a verified logout token names, on every replica: how many.
    async fn end_named(
        &self,
        provider: &str,
        target: &backchannel::LogoutTarget,
    ) -> Result<usize, Refusal> {
        let unavailable = |_| Refusal::unavailable("the session store is unavailable");
        let Some(index) = &self.index else {
            return Err(Refusal::unavailable(
                "no session index to find the sessions in",
            ));
        };
        let records = index
            .of_logout(provider, target.sub.as_deref(), target.sid.as_deref())
            .await
            .map_err(unavailable)?;
        for record in &records {
            let Some(key) = record.ended_key() else {
                tracing::error!(session.id = %record.id, "back-channel logout: an index record has no ended-session key");
                return Err(Refusal::unavailable("a session could not be ended"));
            };
            self.end(key, record.until).await.map_err(unavailable)?;
            index.remove(record).await.map_err(unavailable)?;
        }
        Ok(records.len())
    }

    async fn callback(
        &self,
        login: &Login<'_>,
        view: &CheckView<'_>,
        cookies: &RequestCookies<'_>,
    ) -> Result<Authenticated, Refusal> {
        match login.callback(view, cookies).await {
            Ok(r) => {
                if let Some(index) = &self.index {
                    // A session that cannot be indexed could not be revoked: 503 (logged by the store).
                    let indexed = index.record_login(login, &r.set_cookies, self.clock.now());
                    indexed
                        .await
                        .map_err(|_| Refusal::unavailable("the session store is unavailable"))?;
                }
                Ok(Authenticated::Redirect(r.for_request(cookies)))
            }
            Err(CallbackError::Idp(e)) => Err(Refusal::idp(login.provider.name(), &e)),
            Err(CallbackError::Store(e)) => Err(store_unavailable(login, &e)),
            Err(e) => {
                tracing::info!(policy.name = %login.policy.name, reason = %e, "login callback refused");
                let error = if matches!(e, CallbackError::Provider(_)) {
                    "access_denied"
                } else {
                    "invalid_request"
                };
                let clear = for_request(login.forget_login(), cookies);
                Err(Refusal::login_failed(error, e.to_string()).with_cookies(clear))
            }
        }
    }

    async fn logout(
        &self,
        login: &Login<'_>,
        flow: &LoginFlow,
        provider: &Arc<Provider>,
        view: &CheckView<'_>,
        cookies: &RequestCookies<'_>,
    ) -> Result<Authenticated, Refusal> {
        if let Err(why) = login.logout_allowed(view) {
            tracing::info!(policy.name = %login.policy.name, request.method = view.method, reason = why, "logout refused");
            return Err(Refusal::forbidden(why));
        }
        let session = login
            .read_session(cookies)
            .await
            .map_err(|e| store_unavailable(login, &e))?;
        if let Some(s) = &session {
            self.end_session(login, flow, provider, s)
                .await
                .map_err(|e| store_unavailable(login, &e))?;
        }
        Ok(Authenticated::Redirect(
            login.logout(session).await.for_request(cookies),
        ))
    }

    /// A request for the protected resource without a token: its session, else the redirect to log in (a
    /// browser on a policy that allows `authorization_code`), else 401.
    async fn resource(
        &self,
        login: &Login<'_>,
        view: &CheckView<'_>,
        cookies: &RequestCookies<'_>,
    ) -> Result<Authenticated, Refusal> {
        let mut clear = Vec::new();
        if let Some(reference) = login.store.find(cookies) {
            let active = match reference {
                Some(r) => self.session(login, &r).await,
                None => Err(SessionError::Gone),
            };
            match active {
                Ok(active) => {
                    return Ok(Authenticated::Identity(session_identity(
                        login, active, cookies,
                    )));
                }
                Err(SessionError::Idp(e)) => return Err(Refusal::idp(login.provider.name(), &e)),
                Err(SessionError::Store(e)) => return Err(store_unavailable(login, &e)),
                Err(SessionError::Busy) => {
                    return Err(
                        Refusal::unavailable("the session is being refreshed; try again")
                            .retry_after(1),
                    );
                }
                Err(SessionError::Gone | SessionError::RefreshFailed) => {
                    clear = for_request(login.store.forget(), cookies);
                }
            }
        }
        let can_login = login.policy.allows(AuthMethod::AuthorizationCode);
        if can_login && is_browser(view) {
            return match Box::pin(login.start(view)).await {
                Ok(r) => {
                    let mut r = r.for_request(cookies);
                    r.set_cookies.extend(clear);
                    Ok(Authenticated::Redirect(r))
                }
                Err(e) => Err(Refusal::idp(login.provider.name(), &e)),
            };
        }
        let login_uri = can_login.then(|| request_url(view, login.settings));
        Err(Refusal::login_required(login_uri).with_cookies(clear))
    }

    /// Opens a session (tokens verified), refuses an ended one, refreshes it when needed.
    async fn session(
        &self,
        login: &Login<'_>,
        reference: &str,
    ) -> Result<ActiveSession, SessionError> {
        let opened = self.open_session(login, reference).await?;
        // `is_ended` takes in the ended events first: a session ended on any replica is refused here, whatever
        // local copy of it there is (and that copy, of this session only, is dropped).
        if self
            .ended
            .is_ended(opened.ended_key)
            .await
            .map_err(SessionError::Store)?
        {
            if login.store.server_side() {
                let key = cache::key(&[login.policy.name.as_str(), reference]);
                self.shared_sessions.invalidate(&key).await;
            }
            return Err(SessionError::Gone);
        }
        let active = login.use_session(opened.clone(), &self.refreshes).await?;
        if login.store.server_side() && !Arc::ptr_eq(&active.session, &opened) {
            // The same cookie names the session after a last-seen update or a refresh: the local copy must be the
            // new one, or every Check until it expires would save (or refresh) again.
            let key = cache::key(&[login.policy.name.as_str(), reference]);
            self.shared_sessions
                .insert(key, active.session.clone())
                .await;
        }
        Ok(active)
    }

    /// Opens a session and verifies its tokens, remembering the result by a SHA-256 of (policy, reference): a
    /// browser sends the same cookie on every request, so the AES-GCM open, the JSON parsing and the signature
    /// checks happen once per cookie (concurrent first uses share one). A session of the shared store is
    /// remembered for at most a second, so a refresh or logout on another replica is seen here.
    async fn open_session(
        &self,
        login: &Login<'_>,
        reference: &str,
    ) -> Result<Arc<OpenedSession>, SessionError> {
        let key = cache::key(&[login.policy.name.as_str(), reference]);
        let sessions = if login.store.server_side() {
            &self.shared_sessions
        } else {
            &self.sessions
        };
        if let Some(hit) = sessions.get(&key).await {
            self.metrics.cache_lookup("session", true);
            return Ok(hit);
        }
        self.metrics.cache_lookup("session", false);
        // Boxed: opening (store, signatures) makes a large future, which inline would be copied with every Check's.
        Box::pin(self.open_session_miss(login, reference, sessions, key)).await
    }

    /// [`Logins::open_session`] for a session not in `sessions`: opened once for all concurrent Checks with it.
    async fn open_session_miss(
        &self,
        login: &Login<'_>,
        reference: &str,
        sessions: &moka::future::Cache<cache::Key, Arc<OpenedSession>>,
        key: cache::Key,
    ) -> Result<Arc<OpenedSession>, SessionError> {
        let entry = sessions
            .entry(key)
            .or_try_insert_with(async { login.open_session(reference).await.map(Arc::new) })
            .await
            .map_err(|e| (*e).clone())?;
        let fresh = entry.is_fresh();
        let opened = entry.into_value();
        // Only the Check that opened it (the others waited for that one, or found it just stored).
        if fresh && let Some(index) = self.index.clone() {
            // Last seen, to this cache's granularity; best effort on its own task (it decides nothing).
            let (sid, now) = (opened.data.sid.clone(), self.clock.now());
            let until = opened
                .data
                .created
                .saturating_add(login.settings.absolute_timeout);
            tokio::spawn(async move { index.seen(&sid, until, now).await });
        }
        Ok(opened)
    }

    /// Logout of a session: remembered as ended until its absolute expiry (in the shared store, every replica
    /// told), removed from where it is kept and from the session index, and its tokens revoked at the provider (`logout_revoke`). Revocation runs on its own task and is awaited for at most the revoke budget
    /// (half the Check deadline), so a slow provider never holds the logout up; its failures are logged only. A
    /// session that already ended is not revoked again (a replayed logout costs the provider nothing), and at most
    /// [`MAX_REVOCATIONS_PER_PROVIDER`] revocations run per provider: beyond that, revocation is skipped (logged).
    async fn end_session(
        &self,
        login: &Login<'_>,
        flow: &LoginFlow,
        provider: &Arc<Provider>,
        session: &SessionData,
    ) -> Result<(), StoreError> {
        let key = ended_key(&session.sid);
        let already = self.ended.is_ended(key).await?;
        if !already {
            let until = session
                .created
                .saturating_add(flow.settings.absolute_timeout);
            self.ended.end(key, until).await?;
            login.store.remove(session).await?;
        }
        // Also when it had ended already: a logout that failed after ending it is retried to here.
        if let Some(index) = &self.index
            && let Some(record) = index.get(&public_id(&session.sid)).await?
        {
            index.remove(&record).await?;
        }
        if already || !flow.settings.logout_revoke {
            return Ok(());
        }
        let policy = &login.policy.name;
        let Ok(permit) = flow.revocations.clone().try_acquire_owned() else {
            tracing::warn!(policy.name = %policy, "logout: too many token revocations in flight; not revoking");
            return Ok(());
        };
        let provider = provider.clone();
        let session = session.clone();
        let task = tokio::spawn(async move {
            revoke(&provider, &session).await;
            drop(permit);
        });
        if tokio::time::timeout(self.revoke_budget, task)
            .await
            .is_err()
        {
            tracing::warn!(policy.name = %policy, "logout: token revocation still running; not waiting for it");
        }
        Ok(())
    }
}

/// 503 for a session store that could not answer, logged (the error names no key or value): never an allow.
fn store_unavailable(login: &Login<'_>, e: &StoreError) -> Refusal {
    tracing::warn!(policy.name = %login.policy.name, error = %e, "session store needed and unavailable");
    Refusal::unavailable("the session store is unavailable")
}

/// The identity of a usable session: its claims, the tokens the policy sends upstream, and its cookie updates.
fn session_identity(
    login: &Login<'_>,
    active: ActiveSession,
    cookies: &RequestCookies<'_>,
) -> Identity {
    let settings = login.settings;
    let data = &active.session.data;
    Identity {
        method: AuthMethod::Session,
        upstream_authorization: settings.upstream_access_token.then(|| {
            let mut value = String::with_capacity("Bearer ".len() + data.at.len());
            value.push_str("Bearer ");
            value.push_str(&data.at);
            value
        }),
        // Copied only for a policy that sends it upstream.
        id_token: settings
            .upstream_id_token_header
            .as_ref()
            .and_then(|_| data.it.clone()),
        set_cookies: for_request(active.set_cookies, cookies),
        claims: Claims::Session(active.session),
        vouched_by: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;
    use sha2::{Digest, Sha256};

    use crate::authz::Authorizer;
    use crate::config::Config;
    use crate::decision::Decision;
    use crate::login::authcode::LOGIN_COOKIE;
    use crate::request::CheckView;
    use crate::telemetry::Metrics;

    /// With a predictable `Rng`, a browser without a session is sent to the provider carrying exactly the state,
    /// nonce and S256 challenge drawn from its bytes (32 each: state, nonce, verifier), and the login cookie keeps
    /// that verifier for the callback. No network: the provider has its endpoints configured and an issuer that
    /// is no URL, so there is no discovery document to fetch.
    #[tokio::test]
    async fn login_redirect_carries_the_values_of_the_rng() {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;

        use crate::clock::ManualClock;
        use crate::rng::SequenceRng;

        let mut cfg = Config::from_toml(
            r#"
[providers.p]
issuer = "https://idp.example.com"
client_id = "app"
client_secret = "app-secret"
jwks_uri = "https://idp.example.com/keys"
authorization_endpoint = "https://idp.example.com/authorize"
[policies.web]
provider = "p"
auth_methods = ["authorization_code", "session"]
redirect_uri = "https://app.example.com/cb"
session_secret = "fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg="
[[routes]]
path_prefix = "/"
policy = "web"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut provider = cfg.providers[0].clone();
        provider.issuer = "offline".into();
        cfg.providers = Arc::from(vec![provider]);
        let codec = cfg.policies[0]
            .login
            .as_ref()
            .map(|l| l.codec.clone())
            .expect("a login policy");
        let authz = Authorizer::new(
            cfg,
            Arc::new(Metrics::new()),
            Arc::new(ManualClock::new(1_700_000_000)),
            Arc::new(SequenceRng::new(7)),
        );
        let req = crate::request::get_with_headers(&[("accept", "text/html")]);
        let Decision::Redirect(r) = authz.check(&CheckView::new(&req)).await else {
            panic!("not a redirect")
        };

        let bytes: Vec<u8> = (0..96u8).map(|i| 7u8.wrapping_add(i)).collect();
        let state = URL_SAFE_NO_PAD.encode(&bytes[..32]);
        let nonce = URL_SAFE_NO_PAD.encode(&bytes[32..64]);
        let verifier = URL_SAFE_NO_PAD.encode(&bytes[64..]);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let location = url::Url::parse(&r.location).unwrap();
        assert_eq!(location.path(), "/authorize");
        let q: std::collections::HashMap<String, String> =
            location.query_pairs().into_owned().collect();
        assert_eq!(q["state"], state);
        assert_eq!(q["nonce"], nonce);
        assert_eq!(q["code_challenge"], challenge);
        assert_eq!(q["code_challenge_method"], "S256");

        let sealed = r
            .set_cookies
            .iter()
            .find_map(|c| c.strip_prefix(&format!("{LOGIN_COOKIE}=")))
            .and_then(|c| c.split(';').next())
            .unwrap();
        let login: Value =
            serde_json::from_slice(&codec.open(LOGIN_COOKIE, sealed).unwrap()).unwrap();
        assert_eq!(login["state"], state.as_str());
        assert_eq!(login["nonce"], nonce.as_str());
        assert_eq!(login["verifier"], verifier.as_str());
    }
}
