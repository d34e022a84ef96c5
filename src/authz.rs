//! The core: `Authorizer::check(&CheckView) -> Decision`. Selects the policy, authenticates with the policy's
//! methods, applies access control and builds the upstream headers. No protobuf and no network framing here.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::{AuthMethod, Config, LoginSettings, Policy};
use crate::decision::{Allow, Decision, Deny, DenyStatus};
use crate::flow::authcode::{
    ActiveSession, CallbackError, LOGIN_COOKIE, Login, OpenedSession, RefreshCache, SessionError,
    ended_key, error_page, is_browser, refresh_cache, request_url, revoke,
};
use crate::flow::bearer::{BearerError, BearerVerifier, Verified};
use crate::flow::client_credentials::{self, CcError, ClientCredentials, Refusal};
use crate::flow::introspection::{IntrospectionError, Introspector};
use crate::flow::session::{
    CookieAttrs, EndedSessions, MemoryEndedSessions, RequestCookies, clear_cookie_headers,
};
use crate::flow::{Credential, authorization};
use crate::policy::access::{claim_header_value, claim_value};
use crate::provider::{IdpClient, IdpError, Provider, ReqwestIdp};
use crate::request::CheckView;
use crate::rng::Rng;
use crate::telemetry::{DecisionCounters, Metrics};

/// Logout revocations that may run at once per provider.
const MAX_REVOCATIONS_PER_PROVIDER: usize = 16;

/// Answers Checks for one configuration.
#[derive(Debug)]
pub struct Authorizer {
    config: Arc<Config>,
    providers: Arc<[Arc<Provider>]>,
    bearer: BearerVerifier,
    cc: ClientCredentials,
    introspector: Introspector,
    /// Decision counters per policy, resolved at start.
    decisions: DecisionCounters,
    /// Opened and verified session cookies by a hash of (policy, cookie value).
    sessions: moka::future::Cache<[u8; 32], Arc<OpenedSession>>,
    /// Session refreshes in flight or just done (one refresh grant per session at a time).
    refreshes: RefreshCache,
    /// Sessions ended by a logout.
    ended: Arc<dyn EndedSessions>,
    /// Logout revocations in flight per provider (aligned with `providers`), at most
    /// `MAX_REVOCATIONS_PER_PROVIDER` each: a slow provider cannot pile up revocation tasks.
    revocations: Vec<Arc<tokio::sync::Semaphore>>,
    clock: Arc<dyn Clock>,
    /// The login's state, nonce, PKCE verifier and session ids.
    rng: Arc<dyn Rng>,
    metrics: Arc<Metrics>,
}

/// The metrics and the log line of one Check. Created when the Check starts (in flight), finished with its
/// outcome; a Check whose future is dropped before it is answered (Envoy reset the stream: its own timeout, the
/// client went away) is recorded on drop as `cancelled`, so the in-flight gauge, the counters, the latency
/// histogram and the log stay true.
struct Record<'a> {
    authz: &'a Authorizer,
    view: &'a CheckView<'a>,
    start: Instant,
    /// The selected policy's name, `-` until one is selected.
    policy: &'a str,
    finished: bool,
}

impl<'a> Record<'a> {
    fn start(authz: &'a Authorizer, view: &'a CheckView<'a>) -> Self {
        authz.metrics.in_flight.inc();
        Record {
            authz,
            view,
            start: Instant::now(),
            policy: "-",
            finished: false,
        }
    }

    fn finish(&mut self, outcome: &Outcome) {
        let result = match &outcome.decision {
            Decision::Allow(_) => "allow",
            Decision::Deny(d) => match d.status {
                DenyStatus::Unauthorized => "deny_401",
                DenyStatus::Forbidden => "deny_403",
                DenyStatus::Unavailable => "deny_503",
            },
            Decision::Redirect(_) => "redirect",
        };
        let reason = match &outcome.decision {
            Decision::Deny(d) => d.description.as_str(),
            Decision::Allow(_) | Decision::Redirect(_) => "",
        };
        let method = outcome.method.map_or("-", AuthMethod::as_str);
        self.record(method, outcome.sub.as_deref().unwrap_or(""), result, reason);
        self.finished = true;
    }

    fn record(&self, method: &'static str, sub: &str, result: &'static str, reason: &str) {
        let (authz, view) = (self.authz, self.view);
        authz.metrics.in_flight.dec();
        authz
            .decisions
            .inc(&authz.metrics, self.policy, method, result);
        authz
            .metrics
            .check_seconds
            .observe(self.start.elapsed().as_secs_f64());
        tracing::info!(
            policy.name = self.policy,
            auth.method = method,
            auth.sub = sub,
            decision = result,
            reason,
            request.id = view.request_id,
            request.method = view.method,
            request.path = view.path,
            "check"
        );
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(
                "-",
                "",
                "cancelled",
                "the Check was cancelled before it was answered",
            );
        }
    }
}

/// A decision with what led to it, for logs and metrics.
struct Outcome {
    decision: Decision,
    method: Option<AuthMethod>,
    sub: Option<String>,
}

impl Outcome {
    fn deny(deny: Deny) -> Self {
        Outcome {
            decision: Decision::Deny(deny),
            method: None,
            sub: None,
        }
    }
}

impl Authorizer {
    /// Builds the authorizer: one HTTP client and one provider object per configured provider (nothing fetched yet).
    /// Token and session times are checked against `clock`; the login's random values come from `rng`.
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Self {
        Self::with_idp(config, metrics, clock, rng, Arc::new(ReqwestIdp::new()))
    }

    /// [`Authorizer::new`] with every provider calling its IdP through `idp` (tests: [`crate::provider::fake`]).
    pub fn with_idp(
        config: Config,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        idp: Arc<dyn IdpClient>,
    ) -> Self {
        let providers: Arc<[Arc<Provider>]> = config
            .providers
            .iter()
            .map(|p| Arc::new(Provider::new(p.clone(), idp.clone(), metrics.clone())))
            .collect();
        // A token policy on a provider without `audiences` is a config error unless it says
        // `allow_any_audience = true` (config.rs), so no warning is needed here.
        Authorizer {
            bearer: BearerVerifier::new(
                config.server.token_cache_entries,
                clock.clone(),
                metrics.clone(),
            ),
            cc: ClientCredentials::new(10_000, &config.providers, clock.clone(), metrics.clone()),
            introspector: Introspector::new(100_000, clock.clone(), metrics.clone()),
            decisions: metrics.decision_counters(config.policies.iter().map(|p| p.name.as_str())),
            sessions: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(120))
                .build(),
            refreshes: refresh_cache(),
            ended: Arc::new(MemoryEndedSessions::new(clock.clone())),
            revocations: providers
                .iter()
                .map(|_| Arc::new(tokio::sync::Semaphore::new(MAX_REVOCATIONS_PER_PROVIDER)))
                .collect(),
            clock,
            rng,
            config: Arc::new(config),
            providers,
            metrics,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The providers, in config order.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// Ready once every provider has loaded its discovery document and keys.
    pub fn is_ready(&self) -> bool {
        self.providers.iter().all(|p| p.is_ready())
    }

    /// Answers one Check: never panics, never fails open.
    pub async fn check(&self, view: &CheckView<'_>) -> Decision {
        let mut record = Record::start(self, view);
        let (policy, mut outcome) = match self.select(view) {
            Ok(policy) => {
                record.policy = &policy.name;
                let deadline = self.config.server.check_timeout;
                match tokio::time::timeout(deadline, self.check_policy(policy, view)).await {
                    Ok(outcome) => (Some(policy), outcome),
                    Err(_) => {
                        tracing::warn!(policy.name = %policy.name, timeout_ms = deadline.as_millis() as u64, "check deadline passed waiting for the identity provider");
                        (
                            Some(policy),
                            Outcome::deny(Deny::unavailable("the identity provider is too slow")),
                        )
                    }
                }
            }
            Err(deny) => (None, Outcome::deny(deny)),
        };
        if let (Some(policy), Decision::Allow(allowed)) = (policy, &mut outcome.decision) {
            remove_spellings(allowed, policy, view);
        }
        record.finish(&outcome);
        outcome.decision
    }

    /// `context_extensions.policy`, else the best `[[routes]]` match, else 403.
    fn select(&self, view: &CheckView<'_>) -> Result<&Policy, Deny> {
        if let Some(name) = view.policy_hint() {
            return match self.config.policy_index(name) {
                Some(i) => Ok(&self.config.policies[i]),
                None => {
                    let shown: String = name.chars().take(64).collect();
                    tracing::error!(policy.hint = %shown, "Envoy named a policy that is not configured; denying");
                    Err(Deny::forbidden(
                        "access_denied",
                        "no policy is configured for this route",
                    ))
                }
            };
        }
        match self.config.routes.find(view.host, view.path, view.method) {
            Some(route) => Ok(&self.config.policies[route.policy]),
            None => Err(Deny::forbidden(
                "access_denied",
                "no policy is configured for this route",
            )),
        }
    }

    async fn check_policy(&self, policy: &Policy, view: &CheckView<'_>) -> Outcome {
        let provider = &self.providers[policy.provider];
        if let Some(outcome) = self.check_login(policy, provider, view).await {
            return outcome;
        }
        let cc_allowed = policy.allows(AuthMethod::ClientCredentials);
        let header_creds = if cc_allowed {
            client_credentials::from_headers(view, policy)
        } else {
            None
        };
        let authn = match (authorization(view), header_creds) {
            (Credential::Bearer(token), _)
                if policy.allows(AuthMethod::Bearer)
                    || policy.allows(AuthMethod::Introspection) =>
            {
                match self.token(policy, provider, token).await {
                    Ok(a) => a,
                    Err((method, deny)) => {
                        return Outcome {
                            method: Some(method),
                            ..Outcome::deny(deny)
                        };
                    }
                }
            }
            (Credential::Basic(b64), _) if cc_allowed => {
                match self
                    .cc_authn(policy, provider, client_credentials::from_basic(b64))
                    .await
                {
                    Ok(a) => a,
                    Err(outcome) => return outcome,
                }
            }
            (Credential::None, Some(creds)) => match self.cc_authn(policy, provider, creds).await {
                Ok(a) => a,
                Err(outcome) => return outcome,
            },
            (Credential::Malformed(why), _) => {
                return Outcome::deny(unauthorized(policy, "invalid_token", why));
            }
            (Credential::None, None) => {
                let what = if cc_allowed {
                    "no credentials in the request"
                } else {
                    "no access token in the request"
                };
                return Outcome::deny(unauthorized(policy, "invalid_token", what));
            }
            (Credential::Bearer(_) | Credential::Basic(_), _) => {
                return Outcome::deny(unauthorized(
                    policy,
                    "invalid_token",
                    "this route does not accept these credentials",
                ));
            }
        };
        let claims = &authn.verified.claims;
        let method = authn.method;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Err(denied) = policy.access.check(claims) {
            return Outcome {
                decision: Decision::Deny(Deny::insufficient(&policy.name, denied.to_string())),
                method: Some(method),
                sub,
            };
        }
        let mut allowed = allow(policy, method, claims);
        if let Some(token) = &authn.upstream_token {
            allowed
                .set_headers
                .insert(0, (http::header::AUTHORIZATION, format!("Bearer {token}")));
        }
        if let Some((id_h, secret_h)) = &policy.client_credential_headers {
            for h in [id_h, secret_h] {
                if view.has_header(h.as_str()) && !allowed.remove_headers.contains(h) {
                    allowed.remove_headers.push(h.clone());
                }
            }
        }
        if let Some(settings) = &policy.login {
            // A token won over a session: the session's headers are not ours to trust, and its cookies stay here.
            if let Some(h) = &settings.upstream_id_token_header {
                allowed.remove_headers.push(h.clone());
            }
            let cookie_headers: Vec<&str> =
                view.header_values("cookie").into_iter().flatten().collect();
            strip_session_cookies(
                &mut allowed,
                settings,
                &RequestCookies::parse(&cookie_headers),
            );
        }
        Outcome {
            decision: Decision::Allow(allowed),
            method: Some(method),
            sub,
        }
    }

    /// The browser part of a login policy: callback, logout, session, or the redirect to log in. `None` when the
    /// request is not for it (a bearer token, client credentials), so the token methods decide.
    async fn check_login(
        &self,
        policy: &Policy,
        provider: &Provider,
        view: &CheckView<'_>,
    ) -> Option<Outcome> {
        let settings = policy.login.as_ref()?;
        let login = Login {
            policy,
            settings,
            codec: &settings.codec,
            provider,
            clock: &self.clock,
            rng: self.rng.as_ref(),
        };
        let cookie_headers: Vec<&str> =
            view.header_values("cookie").into_iter().flatten().collect();
        let cookies = RequestCookies::parse(&cookie_headers);
        let mut outcome = self.check_login_with(&login, view, &cookies).await?;
        // Deleting a cookie the browser does not have is noise (the cookie helpers clear every chunk name they
        // might have written): keep only deletions of cookies this request carried.
        let keep = |c: &String| {
            !c.contains("Max-Age=0")
                || c.split('=')
                    .next()
                    .is_some_and(|name| cookies.get(name).is_some())
        };
        match &mut outcome.decision {
            Decision::Redirect(r) => r.set_cookies.retain(keep),
            Decision::Deny(d) => d.set_cookies.retain(keep),
            Decision::Allow(a) => a.response_headers.retain(|(_, c)| keep(c)),
        }
        Some(outcome)
    }

    async fn check_login_with(
        &self,
        login: &Login<'_>,
        view: &CheckView<'_>,
        cookies: &RequestCookies<'_>,
    ) -> Option<Outcome> {
        let (policy, settings, provider) = (login.policy, login.settings, login.provider);
        let method = Some(AuthMethod::AuthorizationCode);
        if login.is_callback(view) {
            let decision = match login.callback(view, cookies).await {
                Ok(r) => Decision::Redirect(r),
                Err(CallbackError::Idp(e)) => Decision::Deny(idp_down(provider, &e)),
                Err(e) => {
                    tracing::info!(policy.name = %policy.name, reason = %e, "login callback refused");
                    let error = if matches!(e, CallbackError::Provider(_)) {
                        "access_denied"
                    } else {
                        "invalid_request"
                    };
                    let mut deny = Deny::unauthorized(&policy.name, error, e.to_string());
                    deny.www_authenticate = None;
                    deny.page = Some(error_page(&e.to_string()));
                    deny.set_cookies = clear_cookie_headers(
                        LOGIN_COOKIE,
                        &CookieAttrs {
                            secure: settings.redirect_uri.scheme() == "https",
                            max_age_secs: None,
                        },
                    );
                    Decision::Deny(deny)
                }
            };
            return Some(Outcome {
                decision,
                method,
                sub: None,
            });
        }
        if login.is_logout(view) {
            if let Err(why) = login.logout_allowed(view) {
                tracing::info!(policy.name = %policy.name, request.method = view.method, reason = why, "logout refused");
                return Some(Outcome {
                    decision: Decision::Deny(Deny::forbidden("access_denied", why)),
                    method,
                    sub: None,
                });
            }
            let session = login.read_session(cookies).flatten();
            if let Some(s) = &session {
                self.end_session(policy, settings, s).await;
            }
            return Some(Outcome {
                decision: Decision::Redirect(login.logout(session).await),
                method,
                sub: None,
            });
        }
        if !matches!(authorization(view), Credential::None)
            || client_credentials::from_headers(view, policy).is_some()
        {
            return None; // a token wins over a session
        }
        let mut clear = Vec::new();
        if let Some(value) = login.session_value(cookies) {
            let active = match value {
                Some(v) => self.session(policy, login, &v).await,
                None => Err(SessionError::Gone),
            };
            match active {
                Ok(active) => return Some(self.session_allow(policy, settings, active, cookies)),
                Err(SessionError::Idp(e)) => {
                    return Some(Outcome::deny(idp_down(provider, &e)));
                }
                Err(SessionError::Gone | SessionError::RefreshFailed) => {
                    clear = login.clear_session()
                }
            }
        }
        if policy.allows(AuthMethod::AuthorizationCode) && is_browser(view) {
            return Some(match login.start(view).await {
                Ok(mut r) => {
                    r.set_cookies.extend(clear);
                    Outcome {
                        decision: Decision::Redirect(r),
                        method,
                        sub: None,
                    }
                }
                Err(e) => Outcome::deny(idp_down(provider, &e)),
            });
        }
        let mut deny = unauthorized(policy, "invalid_token", "login required");
        if policy.allows(AuthMethod::AuthorizationCode) {
            let url: String = request_url(view, settings)
                .chars()
                .filter(|c| *c != '"' && *c != '\\')
                .collect();
            deny.www_authenticate = deny
                .www_authenticate
                .map(|w| format!("{w}, login_uri=\"{url}\""));
        }
        deny.set_cookies = clear;
        Some(Outcome::deny(deny))
    }

    /// Opens a session cookie value (tokens verified), refuses an ended one, refreshes it when needed.
    async fn session(
        &self,
        policy: &Policy,
        login: &Login<'_>,
        value: &str,
    ) -> Result<ActiveSession, SessionError> {
        let opened = self.open_session(policy, login, value).await?;
        if self.ended.is_ended(opened.ended_key).await {
            return Err(SessionError::Gone);
        }
        login.use_session(opened, &self.refreshes).await
    }

    /// Opens a session cookie value and verifies its tokens, remembering the result by a SHA-256 of (policy,
    /// value): a browser sends the same value on every request, so the AES-GCM open, the JSON parsing and the
    /// signature checks happen once per cookie (concurrent first uses share one).
    async fn open_session(
        &self,
        policy: &Policy,
        login: &Login<'_>,
        value: &str,
    ) -> Result<Arc<OpenedSession>, SessionError> {
        let key = crate::cache::key(&[policy.name.as_str(), value]);
        if let Some(hit) = self.sessions.get(&key).await {
            self.metrics.cache_lookup("session", true);
            return Ok(hit);
        }
        self.metrics.cache_lookup("session", false);
        self.sessions
            .try_get_with(key, async { login.open_session(value).await.map(Arc::new) })
            .await
            .map_err(|e| (*e).clone())
    }

    /// Logout of a session: remembered as ended until its absolute expiry, and its tokens revoked at the
    /// provider (`logout_revoke`). Revocation runs on its own task and is awaited for at most half the Check
    /// deadline, so a slow provider never holds the logout up; its failures are logged only. A session that
    /// already ended is not revoked again (a replayed logout costs the provider nothing), and at most
    /// `MAX_REVOCATIONS_PER_PROVIDER` revocations run per provider: beyond that, revocation is skipped (logged).
    async fn end_session(
        &self,
        policy: &Policy,
        settings: &LoginSettings,
        session: &crate::flow::authcode::SessionData,
    ) {
        let key = ended_key(&session.sid);
        if self.ended.is_ended(key).await {
            return;
        }
        let until = session.created.saturating_add(settings.absolute_timeout);
        self.ended.end(key, until).await;
        if !settings.logout_revoke {
            return;
        }
        let Some(permit) = self
            .revocations
            .get(policy.provider)
            .and_then(|s| s.clone().try_acquire_owned().ok())
        else {
            tracing::warn!(policy.name = %policy.name, "logout: too many token revocations in flight; not revoking");
            return;
        };
        let provider = self.providers[policy.provider].clone();
        let session = session.clone();
        let task = tokio::spawn(async move {
            revoke(&provider, &session).await;
            drop(permit);
        });
        let budget = self.config.server.check_timeout / 2;
        if tokio::time::timeout(budget, task).await.is_err() {
            tracing::warn!(policy.name = %policy.name, "logout: token revocation still running; not waiting for it");
        }
    }

    fn session_allow(
        &self,
        policy: &Policy,
        settings: &LoginSettings,
        active: ActiveSession,
        cookies: &RequestCookies<'_>,
    ) -> Outcome {
        let method = AuthMethod::Session;
        let session = active.session.clone();
        let claims = &session.claims;
        let data = &session.data;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Err(denied) = policy.access.check(claims) {
            let mut deny = Deny::insufficient(&policy.name, denied.to_string());
            deny.set_cookies = active.set_cookies;
            return Outcome {
                decision: Decision::Deny(deny),
                method: Some(method),
                sub,
            };
        }
        let mut allowed = allow(policy, method, claims);
        if settings.upstream_access_token {
            allowed.set_headers.insert(
                0,
                (http::header::AUTHORIZATION, format!("Bearer {}", data.at)),
            );
        }
        if let (Some(h), Some(it)) = (&settings.upstream_id_token_header, &data.it) {
            allowed.set_headers.push((h.clone(), it.clone()));
        }
        strip_session_cookies(&mut allowed, settings, cookies);
        allowed.response_headers = active
            .set_cookies
            .into_iter()
            .map(|c| ("set-cookie", c))
            .collect();
        Outcome {
            decision: Decision::Allow(allowed),
            method: Some(method),
            sub,
        }
    }

    /// Client credentials read from the request (Basic or headers) -> an authentication, or the answer.
    async fn cc_authn(
        &self,
        policy: &Policy,
        provider: &Provider,
        creds: Result<client_credentials::ClientCreds, client_credentials::CredsError>,
    ) -> Result<Authn, Outcome> {
        let creds = creds
            .map_err(|e| Outcome::deny(unauthorized(policy, "invalid_client", e.to_string())))?;
        self.client_credentials(policy, provider, &creds)
            .await
            .map_err(|deny| Outcome {
                method: Some(AuthMethod::ClientCredentials),
                ..Outcome::deny(deny)
            })
    }

    /// Runs (or reuses) the client-credentials grant, then verifies the token the IdP issued like any bearer token.
    async fn client_credentials(
        &self,
        policy: &Policy,
        provider: &Provider,
        creds: &client_credentials::ClientCreds,
    ) -> Result<Authn, Deny> {
        let token = match self.cc.token(provider, policy, creds).await {
            Ok(t) => t,
            Err(CcError::Refused(Refusal::InvalidScope)) => {
                return Err(Deny::insufficient(
                    &policy.name,
                    "the client may not have the scopes this route requests",
                ));
            }
            Err(CcError::Refused(_)) => {
                return Err(unauthorized(
                    policy,
                    "invalid_client",
                    "the identity provider refused the client credentials",
                ));
            }
            Err(CcError::Idp(e)) => {
                return Err(idp_down(provider, &e));
            }
            Err(CcError::LockedOut { retry_after }) => {
                let mut deny = unauthorized(
                    policy,
                    "invalid_client",
                    "too many refused attempts for this client; try again later",
                );
                deny.retry_after = Some(u16::try_from(retry_after).unwrap_or(u16::MAX));
                return Err(deny);
            }
            Err(CcError::Throttled { retry_after }) => {
                let mut deny = Deny::unavailable("the identity provider is busy; try again later");
                deny.retry_after = Some(u16::try_from(retry_after).unwrap_or(u16::MAX));
                return Err(deny);
            }
        };
        // The issued token is checked exactly like a token the client sent (locally or by introspection).
        let mut authn = self.token(policy, provider, &token).await.map_err(|(_, deny)| {
            if deny.status != DenyStatus::Unavailable {
                tracing::warn!(policy.name = %policy.name, reason = %deny.description, "the token the provider issued was refused (check issuer, audiences, introspection)");
            }
            deny
        })?;
        authn.method = AuthMethod::ClientCredentials;
        authn.upstream_token = Some(token);
        Ok(authn)
    }

    /// A token from `Authorization: Bearer`: verified locally when it is a JWT and the policy allows `bearer`
    /// (unless `introspect_jwt_tokens`), else introspected when the policy allows `introspection`.
    async fn token(
        &self,
        policy: &Policy,
        provider: &Provider,
        token: &str,
    ) -> Result<Authn, (AuthMethod, Deny)> {
        let jwt = BearerVerifier::is_jwt(token);
        let introspect = policy.allows(AuthMethod::Introspection)
            && (!jwt || policy.introspect_jwt_tokens || !policy.allows(AuthMethod::Bearer));
        if introspect {
            let m = AuthMethod::Introspection;
            return match self.introspector.introspect(provider, policy, token).await {
                Ok(verified) => Ok(Authn {
                    method: m,
                    verified,
                    upstream_token: None,
                }),
                Err(IntrospectionError::Idp(e)) => Err((m, idp_down(provider, &e))),
                Err(e) => Err((m, unauthorized(policy, "invalid_token", e.to_string()))),
            };
        }
        match self.bearer.verify(provider, token).await {
            Ok(verified) => Ok(Authn {
                method: AuthMethod::Bearer,
                verified,
                upstream_token: None,
            }),
            Err(e) => Err((AuthMethod::Bearer, self.bearer_deny(policy, &e, provider))),
        }
    }

    fn bearer_deny(&self, policy: &Policy, e: &BearerError, provider: &Provider) -> Deny {
        match e {
            BearerError::Idp(err) => idp_down(provider, err),
            other => unauthorized(policy, "invalid_token", other.to_string()),
        }
    }
}

/// The session and login cookies never go upstream: rewrite the `Cookie` header without them (or drop it).
fn strip_session_cookies(
    allowed: &mut Allow,
    settings: &LoginSettings,
    cookies: &RequestCookies<'_>,
) {
    let ours = [settings.cookie_name.as_str(), LOGIN_COOKIE];
    if !ours.iter().any(|n| cookies.has(n)) {
        return;
    }
    match cookies.without(&ours) {
        Some(rest) => allowed.set_headers.push((http::header::COOKIE, rest)),
        None => allowed.remove_headers.push(http::header::COOKIE),
    }
}

/// Logs an IdP outage and answers 503 (never an allow, never a gRPC error).
fn idp_down(provider: &Provider, e: &IdpError) -> Deny {
    tracing::warn!(provider = %provider.name(), error = %e, "identity provider needed and unavailable");
    Deny::unavailable("the identity provider is unavailable")
}

/// How a request authenticated.
struct Authn {
    method: AuthMethod,
    verified: Arc<Verified>,
    /// A token to send upstream in `Authorization` (client credentials).
    upstream_token: Option<Arc<str>>,
}

/// 401 with the challenges the policy accepts: `Basic` for client credentials, `Bearer` for tokens.
fn unauthorized(policy: &Policy, error: &'static str, description: impl Into<String>) -> Deny {
    let mut deny = Deny::unauthorized(&policy.name, error, description);
    if policy.allows(AuthMethod::ClientCredentials) {
        let basic = format!("Basic realm=\"{}\"", policy.name);
        let token_methods =
            policy.allows(AuthMethod::Bearer) || policy.allows(AuthMethod::Introspection);
        deny.www_authenticate = Some(match deny.www_authenticate.take() {
            Some(bearer) if token_methods => format!("{basic}, {bearer}"),
            _ => basic,
        });
    }
    deny
}

/// The upstream headers and metadata of an allowed request.
fn allow(policy: &Policy, method: AuthMethod, claims: &Map<String, Value>) -> Allow {
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
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(sub) = s("sub") {
        out.metadata.push(("sub", sub));
    }
    if let Some(iss) = s("iss") {
        out.metadata.push(("iss", iss));
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
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use sha2::{Digest, Sha256};

    fn request(headers: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/x".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

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

    /// A header we set only sometimes (the ID token of a session that has none) never comes from the client, in
    /// any spelling; a header we do set is overwritten, not removed; the client's Authorization is not ours.
    #[test]
    fn controlled_headers_not_set_are_removed_in_every_spelling() {
        let policy = login_policy();
        let req = request(&[
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
        let req = request(&[("accept", "text/html")]);
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
