//! One OpenID provider at run time: discovery, the JWKS cache (refetch on unknown `kid`, coalesced and
//! rate-limited; old keys keep serving while the IdP is down; periodic refresh), over one shared [`IdpClient`].
//! A failed discovery or JWKS fetch closes a [`Gate`] for a bounded exponential backoff: until it reopens, callers
//! get the remembered failure (or, for discovery, the configured endpoints) without calling the IdP.
//! With a shared store (Redis), the unknown-`kid` refetch is also limited across replicas: a refetch first takes
//! a lock in the store for `jwks_min_refetch`, so the replicas together make at most one per window (each keeps
//! its own keys; one that did not get the lock answers as within its own window).

pub mod assertion;
pub mod client;
pub mod fake;
pub mod jwks;
pub mod token;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use url::Url;

use crate::clock::{Clock, SystemClock};
use crate::config::{ProviderConfig, Secret, TokenEndpointAuth};
use crate::flow::Shared;
use crate::rng::{Rng, SystemRng};
use crate::telemetry::Metrics;
use assertion::Signer;
pub use client::{ClientAuth, Endpoint, Form, IdpClient, Proof, ReqwestIdp, Target};
use jwks::{KeySet, VerifyKey};

/// An identity provider call that failed. Never carries a token or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdpError {
    /// Connect failure, timeout, reset.
    #[error("{endpoint} unreachable: {reason}")]
    Unreachable {
        endpoint: &'static str,
        reason: String,
    },
    /// A non-success HTTP status.
    #[error("{endpoint} answered HTTP {status}")]
    Status { endpoint: &'static str, status: u16 },
    /// An answer we cannot use.
    #[error("{endpoint} answered garbage: {reason}")]
    Garbage {
        endpoint: &'static str,
        reason: String,
    },
    /// Discovery names another issuer.
    #[error("discovery issuer {got:?} differs from the configured issuer {expected:?}")]
    IssuerMismatch { expected: String, got: String },
    /// An endpoint neither configured nor discovered.
    #[error("the provider has no {0}")]
    NoEndpoint(&'static str),
    /// This service's client cannot authenticate as configured (no secret, or the assertion could not be signed).
    #[error("cannot authenticate the client: {0}")]
    ClientAuth(&'static str),
}

/// Who a POST to the IdP authenticates as.
#[derive(Clone, Copy)]
pub enum Who<'a> {
    /// This service's own client (`client_id`, with `client_secret` or the `client_jwk` of `private_key_jwt`).
    Own {
        /// `client_id`.
        id: &'a str,
        /// `client_secret`, if configured.
        secret: Option<&'a Secret>,
    },
    /// A caller's client in the client credentials grant: the id and secret it sent.
    Caller {
        /// Its `client_id`.
        id: &'a str,
        /// Its secret.
        secret: &'a Secret,
    },
}

impl<'a> From<(&'a str, &'a Secret)> for Who<'a> {
    fn from((id, secret): (&'a str, &'a Secret)) -> Self {
        Who::Caller { id, secret }
    }
}

/// The provider's endpoints: configured overrides win over discovery.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Where the signing keys are.
    pub jwks_uri: Option<Url>,
    /// Token endpoint (client credentials, code exchange, refresh).
    pub token_endpoint: Option<Url>,
    /// RFC 7662 introspection endpoint.
    pub introspection_endpoint: Option<Url>,
    /// Login endpoint.
    pub authorization_endpoint: Option<Url>,
    /// RP-initiated logout endpoint.
    pub end_session_endpoint: Option<Url>,
    /// RFC 7009 token revocation endpoint (discovery only).
    pub revocation_endpoint: Option<Url>,
    /// OpenID Connect userinfo endpoint (the `userinfo` auth method).
    pub userinfo_endpoint: Option<Url>,
    /// Client authentication methods the token endpoint accepts.
    pub token_endpoint_auth_methods: Vec<String>,
}

#[derive(Deserialize)]
struct RawMetadata {
    issuer: Option<String>,
    jwks_uri: Option<String>,
    token_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// Why a signing key could not be found for a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The JWKS has no key with this `kid` (after a refetch, or the refetch was rate-limited).
    #[error("no signing key matches the token")]
    Unknown,
    /// The keys could not be loaded and none are in hand.
    #[error(transparent)]
    Idp(#[from] IdpError),
}

/// One provider's live state.
#[derive(Debug)]
pub struct Provider {
    /// Its configuration.
    pub config: ProviderConfig,
    /// Every call to the IdP goes through this.
    idp: Arc<dyn IdpClient>,
    metrics: Arc<Metrics>,
    metadata: RwLock<Option<Arc<Metadata>>>,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When a request may next cause a JWKS fetch (after `jwks_min_refetch`, or a backoff after failures); the
    /// lock also serialises every fetch, so concurrent misses make one call. Startup and periodic loads are not
    /// held back by it, but their failures close it.
    fetch: tokio::sync::Mutex<Gate>,
    /// Serialises discovery and remembers a failed one for its backoff.
    discovering: tokio::sync::Mutex<DiscoveryState>,
    ready: AtomicBool,
    /// The store the replicas share (Redis), holding the refetch lock; `None`: this replica's gate alone.
    shared: Option<Shared>,
    /// `iat` of client assertions.
    clock: Arc<dyn Clock>,
    /// `jti` of client assertions.
    rng: Arc<dyn Rng>,
}

/// First wait after a failed IdP call; it doubles with every failure in a row, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two request-driven calls to an IdP that keeps failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The backoff after `failures` failures in a row: 1 s, 2 s, 4 s, ... at most [`BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX)
}

/// Rate limit of the calls requests cause: closed until `retry_at`; remembers the last failure to answer with.
#[derive(Debug, Default)]
pub struct Gate {
    /// No request-driven call before this instant.
    retry_at: Option<Instant>,
    /// Failures in a row.
    failures: u32,
    /// The last failure (answered while closed); `None` after a success.
    error: Option<IdpError>,
}

impl Gate {
    /// Whether a request must not call the IdP at `now`.
    pub fn closed(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| now < t)
    }

    /// The failure to answer with while closed (`None`: the last call worked).
    pub fn error(&self) -> Option<&IdpError> {
        self.error.as_ref()
    }

    /// A call at `now` worked: the next one may come after `min_interval`.
    pub fn succeeded(&mut self, now: Instant, min_interval: Duration) {
        self.failures = 0;
        self.error = None;
        self.retry_at = (!min_interval.is_zero()).then(|| now + min_interval);
    }

    /// A call at `now` failed: closed for the backoff (never less than `min_interval`).
    pub fn failed(&mut self, now: Instant, error: Option<IdpError>, min_interval: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.error = error;
        self.retry_at = Some(now + backoff(self.failures).max(min_interval));
    }

    /// Startup or a periodic load worked: open.
    fn reset(&mut self) {
        *self = Gate::default();
    }
}

/// Discovery's gate, and the endpoints from configuration alone while discovery is failing.
#[derive(Debug, Default)]
pub struct DiscoveryState {
    gate: Gate,
    /// Configured endpoints, served while the gate is closed (discovery failed but `jwks_uri` is configured).
    fallback: Option<Arc<Metadata>>,
}

impl Provider {
    /// A provider with nothing loaded yet, calling the IdP through `idp`.
    pub fn new(config: ProviderConfig, idp: Arc<dyn IdpClient>, metrics: Arc<Metrics>) -> Self {
        Provider {
            config,
            idp,
            metrics,
            metadata: RwLock::new(None),
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(Gate::default()),
            discovering: tokio::sync::Mutex::new(DiscoveryState::default()),
            ready: AtomicBool::new(false),
            shared: None,
            clock: Arc::new(SystemClock),
            rng: Arc::new(SystemRng),
        }
    }

    /// The same provider, its client assertions dated by `clock` and their `jti` drawn from `rng`.
    pub fn with_seams(mut self, clock: Arc<dyn Clock>, rng: Arc<dyn Rng>) -> Self {
        self.clock = clock;
        self.rng = rng;
        self
    }

    /// The same provider, its unknown-`kid` refetches also limited across the replicas sharing `shared`.
    pub fn with_shared(mut self, shared: Option<Shared>) -> Self {
        self.shared = shared;
        self
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether discovery and the JWKS have loaded at least once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// GETs a JSON document, with metrics, the provider's timeout and a size cap.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        url: &Url,
    ) -> Result<T, IdpError> {
        let start = Instant::now();
        let res = self.get_body(endpoint, url).await.and_then(|body| {
            serde_json::from_slice::<T>(&body).map_err(|e| IdpError::Garbage {
                endpoint: endpoint.as_str(),
                reason: e.to_string(),
            })
        });
        self.metrics
            .idp_call(self.name(), endpoint.as_str(), res.is_ok(), start.elapsed());
        res
    }

    /// A call to `endpoint` at `url` with the provider's timeout.
    fn target<'a>(&self, endpoint: Endpoint, url: &'a Url) -> Target<'a> {
        Target {
            endpoint,
            url,
            timeout: self.config.http_timeout,
        }
    }

    /// GETs a document with the provider's timeout: its body, or an error for a status that is not 2xx.
    async fn get_body(&self, endpoint: Endpoint, url: &Url) -> Result<Vec<u8>, IdpError> {
        let (status, body) = self.idp.get(self.target(endpoint, url)).await?;
        if !(200..300).contains(&status) {
            return Err(IdpError::Status {
                endpoint: endpoint.as_str(),
                status,
            });
        }
        Ok(body)
    }

    /// How to authenticate this client at the token, introspection and revocation endpoints: configured
    /// (`client_auth`), else basic unless discovery lists only `client_secret_post`.
    pub fn token_auth(&self, meta: &Metadata) -> TokenEndpointAuth {
        if let Some(m) = self.config.token_endpoint_auth_method {
            return m;
        }
        Self::secret_auth(meta)
    }

    /// The secret method discovery asks for: basic unless it lists only `client_secret_post`.
    fn secret_auth(meta: &Metadata) -> TokenEndpointAuth {
        let methods = &meta.token_endpoint_auth_methods;
        let has = |m: &str| methods.iter().any(|x| x == m);
        if !has("client_secret_basic") && has("client_secret_post") {
            TokenEndpointAuth::ClientSecretPost
        } else {
            TokenEndpointAuth::ClientSecretBasic
        }
    }

    /// POSTs a form with client authentication; returns the status and body (any status: the caller reads OAuth
    /// errors). Transport failures and oversized bodies are errors. Neither the secret, the assertion nor the form
    /// is ever logged. `auth` is [`Provider::token_auth`]; a caller's client (client credentials) cannot sign with
    /// this service's key, so under `private_key_jwt` it sends its secret as discovery asks.
    pub async fn post_form<'c>(
        &self,
        endpoint: Endpoint,
        url: &Url,
        form: &[(&str, &str)],
        client: impl Into<Who<'c>>,
        auth: TokenEndpointAuth,
    ) -> Result<(u16, Vec<u8>), IdpError> {
        let start = Instant::now();
        let who = client.into();
        let (id, secret, own) = match who {
            Who::Own { id, secret } => (id, secret, true),
            Who::Caller { id, secret } => (id, Some(secret), false),
        };
        let method = match auth {
            TokenEndpointAuth::PrivateKeyJwt if !own => self
                .lasting_metadata()
                .map_or(TokenEndpointAuth::ClientSecretBasic, |m| {
                    Self::secret_auth(&m)
                }),
            m => m,
        };
        let no_secret = IdpError::ClientAuth("no client_secret");
        let jwt;
        let proof = match method {
            TokenEndpointAuth::ClientSecretBasic => Proof::Basic(secret.ok_or(no_secret)?),
            TokenEndpointAuth::ClientSecretPost => Proof::Post(secret.ok_or(no_secret)?),
            TokenEndpointAuth::ClientSecretJwt => {
                jwt = self.assertion(Signer::Secret(secret.ok_or(no_secret)?), id, url)?;
                Proof::Assertion(&jwt)
            }
            TokenEndpointAuth::PrivateKeyJwt => {
                let key = self
                    .config
                    .client_key
                    .as_ref()
                    .ok_or(IdpError::ClientAuth("no client_jwk"))?;
                jwt = self.assertion(Signer::Key(key), id, url)?;
                Proof::Assertion(&jwt)
            }
        };
        let form = Form {
            fields: form,
            client: ClientAuth { id, proof },
        };
        let res = self.idp.post_form(self.target(endpoint, url), form).await;
        let ok = matches!(&res, Ok((s, _)) if !token::idp_unwell(*s));
        self.metrics
            .idp_call(self.name(), endpoint.as_str(), ok, start.elapsed());
        res
    }

    /// GETs `url` with the caller's token as `Authorization: Bearer` (the userinfo endpoint): the status and the
    /// body, whatever the status; the call is counted in the IdP metrics (a 5xx as a failure).
    pub async fn get_bearer(
        &self,
        endpoint: Endpoint,
        url: &Url,
        token: &str,
    ) -> Result<(u16, Vec<u8>), IdpError> {
        let start = Instant::now();
        let res = self.idp.get_bearer(self.target(endpoint, url), token).await;
        let ok = matches!(&res, Ok((s, _)) if !token::idp_unwell(*s));
        self.metrics
            .idp_call(self.name(), endpoint.as_str(), ok, start.elapsed());
        res
    }

    /// A fresh client assertion for a call to `url` (its `aud`: the endpoint called, the token endpoint for every
    /// grant, as Okta requires).
    fn assertion(&self, signer: Signer<'_>, id: &str, url: &Url) -> Result<String, IdpError> {
        let jti = assertion::new_jti(self.rng.as_ref());
        assertion::assertion(signer, id, url.as_str(), &jti, self.clock.now()).map_err(|e| {
            tracing::error!(provider = %self.name(), error = %e, "cannot sign the client assertion");
            IdpError::ClientAuth("the client assertion could not be signed")
        })
    }

    fn discovery_urls(&self) -> Vec<Url> {
        let issuer = self.config.issuer.trim_end_matches('/');
        let mut urls = Vec::new();
        for suffix in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            if let Ok(u) = Url::parse(&format!("{issuer}{suffix}")) {
                urls.push(u);
            }
        }
        // RFC 8414 form: the well-known segment goes between host and path.
        if let Ok(base) = Url::parse(issuer) {
            let path = base.path().trim_end_matches('/');
            if !path.is_empty() {
                let mut u = base.clone();
                u.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
                urls.push(u);
            }
        }
        urls
    }

    /// The provider's endpoints, discovering them on first use (concurrent callers share one discovery). After a
    /// failed discovery, callers get the same failure (or the configured endpoints) until the backoff has passed.
    pub async fn metadata(&self) -> Result<Arc<Metadata>, IdpError> {
        self.metadata_with(false).await
    }

    fn lasting_metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `force`: discover even while the gate is closed (startup and periodic loads, which have their own pace).
    async fn metadata_with(&self, force: bool) -> Result<Arc<Metadata>, IdpError> {
        if let Some(m) = self.lasting_metadata() {
            return Ok(m);
        }
        let mut state = self.discovering.lock().await;
        if let Some(m) = self.lasting_metadata() {
            return Ok(m);
        }
        let now = Instant::now();
        if !force && state.gate.closed(now) {
            if let Some(m) = &state.fallback {
                return Ok(m.clone());
            }
            if let Some(e) = state.gate.error() {
                return Err(e.clone());
            }
        }
        match self.discover().await {
            Ok((m, true)) => {
                let m = Arc::new(m);
                *self.metadata.write().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
                *state = DiscoveryState::default();
                Ok(m)
            }
            // Endpoints from configuration alone (discovery failed): used until the backoff passes, then
            // discovery is tried again.
            Ok((m, false)) => {
                let m = Arc::new(m);
                state.gate.failed(now, None, Duration::ZERO);
                state.fallback = Some(m.clone());
                Ok(m)
            }
            Err(e) => {
                state.gate.failed(now, Some(e.clone()), Duration::ZERO);
                state.fallback = None;
                Err(e)
            }
        }
    }

    async fn discover(&self) -> Result<(Metadata, bool), IdpError> {
        let c = &self.config;
        let mut last_err = IdpError::NoEndpoint("discovery document");
        let mut raw = None;
        for url in self.discovery_urls() {
            match self
                .get_json::<RawMetadata>(Endpoint::Discovery, &url)
                .await
            {
                Ok(r) => {
                    raw = Some(r);
                    break;
                }
                // A 404 means "try the next well-known name"; anything else is an outage.
                Err(e @ IdpError::Status { status: 404, .. }) => last_err = e,
                Err(e) => {
                    last_err = e;
                    break;
                }
            }
        }
        let raw = match raw {
            Some(r) => r,
            // Without discovery, explicit endpoints are enough.
            None if c.jwks_uri.is_some() => {
                tracing::warn!(provider = %c.name, error = %last_err, "discovery failed; using configured endpoints only");
                return Ok((self.overrides_only(), false));
            }
            None => return Err(last_err),
        };
        let issuer = raw.issuer.unwrap_or_default();
        if issuer != c.issuer {
            return Err(IdpError::IssuerMismatch {
                expected: c.issuer.clone(),
                got: issuer,
            });
        }
        let parse = |s: Option<String>| s.and_then(|s| Url::parse(&s).ok());
        let m = Metadata {
            jwks_uri: c.jwks_uri.clone().or_else(|| parse(raw.jwks_uri)),
            token_endpoint: c
                .token_endpoint
                .clone()
                .or_else(|| parse(raw.token_endpoint)),
            introspection_endpoint: c
                .introspection_endpoint
                .clone()
                .or_else(|| parse(raw.introspection_endpoint)),
            authorization_endpoint: c
                .authorization_endpoint
                .clone()
                .or_else(|| parse(raw.authorization_endpoint)),
            end_session_endpoint: c
                .end_session_endpoint
                .clone()
                .or_else(|| parse(raw.end_session_endpoint)),
            revocation_endpoint: parse(raw.revocation_endpoint),
            userinfo_endpoint: c
                .userinfo_endpoint
                .clone()
                .or_else(|| parse(raw.userinfo_endpoint)),
            token_endpoint_auth_methods: raw.token_endpoint_auth_methods_supported,
        };
        Ok((m, true))
    }

    fn overrides_only(&self) -> Metadata {
        let c = &self.config;
        Metadata {
            jwks_uri: c.jwks_uri.clone(),
            token_endpoint: c.token_endpoint.clone(),
            introspection_endpoint: c.introspection_endpoint.clone(),
            authorization_endpoint: c.authorization_endpoint.clone(),
            end_session_endpoint: c.end_session_endpoint.clone(),
            revocation_endpoint: None,
            userinfo_endpoint: c.userinfo_endpoint.clone(),
            token_endpoint_auth_methods: Vec::new(),
        }
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches the JWKS now and swaps it in; old keys stay if the fetch fails.
    async fn fetch_keys(&self, force: bool) -> Result<Arc<KeySet>, IdpError> {
        let meta = self.metadata_with(force).await?;
        let url = meta
            .jwks_uri
            .clone()
            .ok_or(IdpError::NoEndpoint("jwks_uri"))?;
        let start = Instant::now();
        let res = match self.get_body(Endpoint::Jwks, &url).await {
            Ok(body) => KeySet::parse(&body).map_err(|e| IdpError::Garbage {
                endpoint: "jwks",
                reason: e.to_string(),
            }),
            Err(e) => Err(e),
        };
        self.metrics
            .idp_call(self.name(), "jwks", res.is_ok(), start.elapsed());
        let set = Arc::new(res?);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(set.clone());
        self.ready.store(true, Ordering::Release);
        tracing::info!(provider = %self.name(), keys = set.len(), "loaded signing keys");
        Ok(set)
    }

    /// Loads discovery and keys (startup and periodic refresh), whatever the gates say; the outcome sets them.
    pub async fn refresh(&self) -> Result<(), IdpError> {
        let mut gate = self.fetch.lock().await;
        let res = self.fetch_keys(true).await;
        match &res {
            Ok(_) => gate.reset(),
            Err(e) => gate.failed(
                Instant::now(),
                Some(e.clone()),
                self.config.jwks_min_refetch,
            ),
        }
        res.map(|_| ())
    }

    /// Keys that may verify a token with this `kid` and `alg`. An unknown `kid` causes one JWKS refetch: concurrent
    /// callers wait for the same fetch, and fetches are at least `jwks_min_refetch` apart.
    pub async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: jsonwebtoken::Algorithm,
    ) -> Result<Vec<Arc<VerifyKey>>, KeyError> {
        let known = |set: &KeySet| kid.is_none_or(|k| set.has_kid(k));
        if let Some(set) = self.current_keys()
            && known(&set)
        {
            self.metrics.cache_lookup("jwks", true);
            return Ok(set.candidates(kid, alg));
        }
        self.metrics.cache_lookup("jwks", false);
        let mut gate = self.fetch.lock().await;
        // Someone else may have fetched while we waited.
        let current = self.current_keys();
        if let Some(set) = &current
            && known(set)
        {
            return Ok(set.candidates(kid, alg));
        }
        let now = Instant::now();
        if gate.closed(now) {
            // Within `jwks_min_refetch` of a fetch, or the backoff after a failed one: no call. Without keys, or
            // after a failure, we cannot tell: 503; after a fetch that worked, the kid is unknown: 401.
            return Err(match (gate.error(), &current) {
                (Some(e), _) => KeyError::Idp(e.clone()),
                (None, Some(_)) => KeyError::Unknown,
                (None, None) => KeyError::Idp(IdpError::NoEndpoint("signing keys")),
            });
        }
        // Across replicas: the refetch lock of this provider for the window; another replica holding it means it
        // refetched within the window: answer as this replica's own closed gate would (a store that fails is
        // skipped: this replica's gate alone).
        let window = self.config.jwks_min_refetch;
        if let Some(shared) = &self.shared {
            let lock = crate::cache::key(&["jwks-refetch", self.name()]);
            if shared.put_new("jwks-refetch", &lock, window).await == Some(false) {
                gate.succeeded(now, window);
                tracing::debug!(provider = %self.name(), "another replica refetched the signing keys within jwks_min_refetch; not refetching");
                return Err(match &current {
                    Some(_) => KeyError::Unknown,
                    None => KeyError::Idp(IdpError::NoEndpoint("signing keys")),
                });
            }
        }
        let res = self.fetch_keys(false).await;
        match res {
            Ok(set) => {
                gate.succeeded(now, self.config.jwks_min_refetch);
                if known(&set) {
                    Ok(set.candidates(kid, alg))
                } else {
                    Err(KeyError::Unknown)
                }
            }
            // Keys in hand or not, the token names a key we cannot get: fail closed with 503.
            Err(e) => {
                let retry =
                    backoff(gate.failures.saturating_add(1)).max(self.config.jwks_min_refetch);
                tracing::warn!(provider = %self.name(), error = %e, retry_in_ms = retry.as_millis() as u64, "signing key fetch failed");
                gate.failed(now, Some(e.clone()), self.config.jwks_min_refetch);
                Err(KeyError::Idp(e))
            }
        }
    }

    /// Background loop: load at start (retrying with backoff until it works), then refresh periodically.
    pub async fn run_refresh(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.refresh().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(provider = %self.name(), error = %e, retry_in_ms = backoff.as_millis() as u64, "provider not loaded yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let mut tick = tokio::time::interval(self.config.jwks_refresh);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(provider = %self.name(), error = %e, "periodic JWKS refresh failed; keeping the keys in hand");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_is_bounded() {
        let secs: Vec<u64> = (1..=8).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        assert_eq!(backoff(0), BACKOFF_FIRST);
    }

    #[test]
    fn gate_closes_after_failures_and_remembers_the_error() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut g = Gate::default();
        assert!(!g.closed(t0), "a fresh gate is open");
        let down = IdpError::Status {
            endpoint: "discovery",
            status: 503,
        };
        g.failed(t0, Some(down.clone()), Duration::ZERO);
        assert!(g.closed(t0 + ms(999)));
        assert!(matches!(
            g.error(),
            Some(IdpError::Status { status: 503, .. })
        ));
        assert!(!g.closed(t0 + ms(1000)));
        let t1 = t0 + ms(1000);
        g.failed(t1, Some(down.clone()), Duration::ZERO);
        assert!(g.closed(t1 + ms(1999)) && !g.closed(t1 + ms(2000)));
        // the minimum refetch interval wins over a shorter backoff
        let mut slow = Gate::default();
        slow.failed(t0, Some(down), Duration::from_secs(5));
        assert!(slow.closed(t0 + ms(4999)) && !slow.closed(t0 + ms(5000)));
        // a success forgets the failures: open again, or closed for the minimum interval only, without an error
        g.succeeded(t1, Duration::ZERO);
        assert!(!g.closed(t1) && g.error().is_none());
        g.succeeded(t1, Duration::from_secs(5));
        assert!(g.closed(t1 + ms(4999)) && g.error().is_none());
        g.failed(t1, None, Duration::ZERO);
        assert!(
            g.closed(t1 + ms(999)) && !g.closed(t1 + ms(1000)),
            "counted from zero again"
        );
    }

    fn provider_with(lines: &str) -> (Provider, Arc<fake::FakeIdp>) {
        let toml = format!(
            "[providers.okta]\nissuer = \"https://idp.test\"\nclient_id = \"svc\"\naudiences = [\"api\"]\n{lines}\n"
        );
        let cfg = crate::config::Config::from_toml(&toml).unwrap();
        let fake = Arc::new(fake::FakeIdp::for_issuer("https://idp.test"));
        let p = Provider::new(
            cfg.providers[0].clone(),
            fake.clone(),
            Arc::new(Metrics::new()),
        )
        .with_seams(
            Arc::new(crate::clock::ManualClock::new(1_000)),
            Arc::new(crate::rng::SequenceRng::new(0)),
        );
        (p, fake)
    }

    fn claims_of(
        jwt: &str,
        key: &jsonwebtoken::DecodingKey,
        alg: jsonwebtoken::Algorithm,
        aud: &str,
    ) -> serde_json::Value {
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_audience(&[aud]);
        v.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(jwt, key, &v)
            .unwrap()
            .claims
    }

    /// private_key_jwt: every call of this service's own client (token, introspection, revocation) carries a fresh
    /// assertion for the endpoint called, and no secret; a caller's client (client credentials) cannot sign with
    /// this key and sends its secret as discovery asks.
    #[tokio::test]
    async fn private_key_jwt_signs_every_call_of_the_own_client() {
        let path = format!(
            "{}/tests/data/client-keys/rsa.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let (p, fake) = provider_with(&format!(
            "client_auth = \"private_key_jwt\"\nclient_jwk_file = \"{path}\""
        ));
        let jwk: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let public = jsonwebtoken::DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        let meta = p.metadata().await.unwrap();
        let own = p.own_client().expect("no client_secret needed");
        let auth = p.token_auth(&meta);
        assert_eq!(auth, TokenEndpointAuth::PrivateKeyJwt);
        let mut jtis = std::collections::HashSet::new();
        for (endpoint, path) in [
            (Endpoint::Token, "/token"),
            (Endpoint::Introspection, "/introspect"),
            (Endpoint::Revocation, "/revoke"),
            (Endpoint::Token, "/token"),
        ] {
            let url = Url::parse(&format!("https://idp.test{path}")).unwrap();
            p.post_form(endpoint, &url, &[("token", "t")], own, auth)
                .await
                .unwrap();
            let call = fake.last(endpoint).unwrap();
            let sent = call.client.unwrap();
            assert_eq!((sent.id.as_str(), sent.secret.as_str()), ("svc", ""));
            let jwt = sent.assertion.unwrap();
            let header = jsonwebtoken::decode_header(&jwt).unwrap();
            assert_eq!(
                (header.alg, header.kid.as_deref()),
                (jsonwebtoken::Algorithm::RS256, Some("test-rsa-1"))
            );
            let c = claims_of(&jwt, &public, jsonwebtoken::Algorithm::RS256, url.as_str());
            assert_eq!(
                (c["iss"].as_str(), c["sub"].as_str()),
                (Some("svc"), Some("svc"))
            );
            assert_eq!(
                (c["iat"].as_u64(), c["exp"].as_u64()),
                (Some(1000), Some(1060))
            );
            assert!(
                jtis.insert(c["jti"].as_str().unwrap().to_string()),
                "a jti used twice"
            );
        }
        // a caller's client: its secret, by basic (discovery lists basic)
        let caller = Secret::new("caller-secret");
        let url = meta.token_endpoint.clone().unwrap();
        let grant = [("grant_type", "client_credentials")];
        p.post_form(Endpoint::Token, &url, &grant, ("caller", &caller), auth)
            .await
            .unwrap();
        let sent = fake.last(Endpoint::Token).unwrap().client.unwrap();
        assert_eq!(sent.method, TokenEndpointAuth::ClientSecretBasic);
        assert_eq!(
            (sent.id.as_str(), sent.secret.as_str(), sent.assertion),
            ("caller", "caller-secret", None)
        );
    }

    /// client_secret_jwt signs with the secret of whichever client calls; basic and post are as before.
    #[tokio::test]
    async fn client_secret_jwt_and_the_secret_methods() {
        let (p, fake) = provider_with(
            "client_secret = \"own-secret-0123456789\"\nclient_auth = \"client_secret_jwt\"",
        );
        let meta = p.metadata().await.unwrap();
        let url = meta.introspection_endpoint.clone().unwrap();
        let auth = p.token_auth(&meta);
        p.post_form(
            Endpoint::Introspection,
            &url,
            &[],
            p.own_client().unwrap(),
            auth,
        )
        .await
        .unwrap();
        let sent = fake.last(Endpoint::Introspection).unwrap().client.unwrap();
        let key = jsonwebtoken::DecodingKey::from_secret(b"own-secret-0123456789");
        let c = claims_of(
            sent.assertion.as_deref().unwrap(),
            &key,
            jsonwebtoken::Algorithm::HS256,
            url.as_str(),
        );
        assert_eq!(c["iss"], "svc");
        assert_eq!(sent.secret, "", "the secret itself is not sent");
        let caller = Secret::new("caller-secret");
        p.post_form(Endpoint::Token, &url, &[], ("caller", &caller), auth)
            .await
            .unwrap();
        let sent = fake.last(Endpoint::Token).unwrap().client.unwrap();
        let key = jsonwebtoken::DecodingKey::from_secret(b"caller-secret");
        let c = claims_of(
            sent.assertion.as_deref().unwrap(),
            &key,
            jsonwebtoken::Algorithm::HS256,
            url.as_str(),
        );
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str()),
            (Some("caller"), Some("caller"))
        );

        for (lines, method) in [
            (
                "client_secret = \"own\"",
                TokenEndpointAuth::ClientSecretBasic,
            ),
            (
                "client_secret = \"own\"\nclient_auth = \"client_secret_post\"",
                TokenEndpointAuth::ClientSecretPost,
            ),
        ] {
            let (p, fake) = provider_with(lines);
            let meta = p.metadata().await.unwrap();
            let auth = p.token_auth(&meta);
            p.post_form(Endpoint::Token, &url, &[], p.own_client().unwrap(), auth)
                .await
                .unwrap();
            let sent = fake.last(Endpoint::Token).unwrap().client.unwrap();
            assert_eq!(
                (sent.method, sent.secret.as_str(), sent.assertion),
                (method, "own", None)
            );
        }
        // basic or post without a secret: no own client, as before
        let (p, _) = provider_with("client_auth = \"client_secret_post\"");
        assert!(p.own_client().is_none());
    }
}
