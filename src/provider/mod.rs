//! One OpenID provider at run time: discovery, the JWKS cache (refetch on unknown `kid`, coalesced and
//! rate-limited; old keys keep serving while the IdP is down; periodic refresh), over one shared HTTP client.

pub mod jwks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use url::Url;

use crate::config::{ProviderConfig, Secret, TokenEndpointAuth};
use crate::telemetry::Metrics;
use jwks::{KeySet, VerifyKey};

/// Largest IdP answer we read (discovery, JWKS, token, introspection).
const MAX_BODY: usize = 1024 * 1024;

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
}

/// The provider's endpoints: configured overrides win over discovery.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// Issuer as the provider states it.
    pub issuer: String,
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
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    metadata: RwLock<Option<Arc<Metadata>>>,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When an unknown `kid` last caused a JWKS fetch; the lock also serialises every fetch, so concurrent
    /// misses make one call. Startup and periodic loads do not count against the rate limit.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Serialises discovery.
    discovering: tokio::sync::Mutex<()>,
    ready: AtomicBool,
}

/// The process's one HTTP client for identity providers: no redirects, bounded connect time.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("oidc-authz/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

impl Provider {
    /// A provider with nothing loaded yet.
    pub fn new(config: ProviderConfig, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        Provider {
            config,
            http,
            metrics,
            metadata: RwLock::new(None),
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(None),
            discovering: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
        }
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
        endpoint: &'static str,
        url: &Url,
    ) -> Result<T, IdpError> {
        let start = Instant::now();
        let res = self.get_body(endpoint, url).await.and_then(|body| {
            serde_json::from_slice::<T>(&body).map_err(|e| IdpError::Garbage {
                endpoint,
                reason: e.to_string(),
            })
        });
        self.metrics
            .idp_call(self.name(), endpoint, res.is_ok(), start.elapsed());
        res
    }

    async fn get_body(&self, endpoint: &'static str, url: &Url) -> Result<Vec<u8>, IdpError> {
        let (status, body) = self.send(endpoint, self.http.get(url.clone())).await?;
        if !(200..300).contains(&status) {
            return Err(IdpError::Status { endpoint, status });
        }
        Ok(body)
    }

    /// Sends one request to the IdP with the provider's timeout; the status and the (capped) body.
    async fn send(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), IdpError> {
        let resp = req
            .header(http::header::ACCEPT, "application/json")
            .timeout(self.config.http_timeout)
            .send()
            .await
            .map_err(|e| IdpError::Unreachable {
                endpoint,
                reason: transport_reason(&e),
            })?;
        let status = resp.status().as_u16();
        Ok((status, read_capped(resp, endpoint).await?))
    }

    /// How to authenticate this client at the token endpoint: configured, else basic unless discovery lists only
    /// `client_secret_post`.
    pub fn token_auth(&self, meta: &Metadata) -> TokenEndpointAuth {
        if let Some(m) = self.config.token_endpoint_auth_method {
            return m;
        }
        let methods = &meta.token_endpoint_auth_methods;
        let has = |m: &str| methods.iter().any(|x| x == m);
        if !has("client_secret_basic") && has("client_secret_post") {
            TokenEndpointAuth::ClientSecretPost
        } else {
            TokenEndpointAuth::ClientSecretBasic
        }
    }

    /// POSTs a form with client authentication; returns the status and body (any status: the caller reads OAuth
    /// errors). Transport failures and oversized bodies are errors. Neither the secret nor the form is ever logged.
    pub async fn post_form(
        &self,
        endpoint: &'static str,
        url: &Url,
        form: &[(&str, &str)],
        client: (&str, &Secret),
        auth: TokenEndpointAuth,
    ) -> Result<(u16, Vec<u8>), IdpError> {
        let start = Instant::now();
        let (client_id, secret) = client;
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.http.post(url.clone());
        match auth {
            TokenEndpointAuth::ClientSecretBasic => {
                // RFC 6749 2.3.1: form-encode id and secret, then base64 the pair.
                use base64::Engine;
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", enc(client_id), enc(secret.expose()));
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                req = req.header(http::header::AUTHORIZATION, format!("Basic {b64}"));
            }
            TokenEndpointAuth::ClientSecretPost => {
                fields.push(("client_id", client_id));
                fields.push(("client_secret", secret.expose()));
            }
        }
        let res = self.send(endpoint, req.form(&fields)).await;
        let ok = matches!(&res, Ok((s, _)) if *s < 500 && *s != 429 && *s != 408);
        self.metrics
            .idp_call(self.name(), endpoint, ok, start.elapsed());
        res
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

    /// The provider's endpoints, discovering them on first use (concurrent callers share one discovery).
    pub async fn metadata(&self) -> Result<Arc<Metadata>, IdpError> {
        if let Some(m) = self
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(m);
        }
        let _guard = self.discovering.lock().await;
        if let Some(m) = self
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(m);
        }
        let (m, lasting) = self.discover().await?;
        let m = Arc::new(m);
        // Endpoints from configuration alone (discovery failed) are used, not kept: the next call tries again.
        if lasting {
            *self.metadata.write().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
        }
        Ok(m)
    }

    async fn discover(&self) -> Result<(Metadata, bool), IdpError> {
        let c = &self.config;
        let mut last_err = IdpError::NoEndpoint("discovery document");
        let mut raw = None;
        for url in self.discovery_urls() {
            match self.get_json::<RawMetadata>("discovery", &url).await {
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
            issuer,
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
            token_endpoint_auth_methods: raw.token_endpoint_auth_methods_supported,
        };
        Ok((m, true))
    }

    fn overrides_only(&self) -> Metadata {
        let c = &self.config;
        Metadata {
            issuer: c.issuer.clone(),
            jwks_uri: c.jwks_uri.clone(),
            token_endpoint: c.token_endpoint.clone(),
            introspection_endpoint: c.introspection_endpoint.clone(),
            authorization_endpoint: c.authorization_endpoint.clone(),
            end_session_endpoint: c.end_session_endpoint.clone(),
            revocation_endpoint: None,
            token_endpoint_auth_methods: Vec::new(),
        }
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches the JWKS now and swaps it in; old keys stay if the fetch fails.
    async fn fetch_keys(&self) -> Result<Arc<KeySet>, IdpError> {
        let meta = self.metadata().await?;
        let url = meta
            .jwks_uri
            .clone()
            .ok_or(IdpError::NoEndpoint("jwks_uri"))?;
        let start = Instant::now();
        let res = match self.get_body("jwks", &url).await {
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

    /// Loads discovery and keys (startup and periodic refresh).
    pub async fn refresh(&self) -> Result<(), IdpError> {
        let _serialised = self.fetch.lock().await;
        self.fetch_keys().await.map(|_| ())
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
        let mut last = self.fetch.lock().await;
        // Someone else may have fetched while we waited.
        let current = self.current_keys();
        if let Some(set) = &current
            && known(set)
        {
            return Ok(set.candidates(kid, alg));
        }
        if let (Some(at), Some(_)) = (*last, &current)
            && at.elapsed() < self.config.jwks_min_refetch
        {
            return Err(KeyError::Unknown);
        }
        let res = self.fetch_keys().await;
        *last = Some(Instant::now());
        match res {
            Ok(set) if known(&set) => Ok(set.candidates(kid, alg)),
            Ok(_) => Err(KeyError::Unknown),
            // Keys in hand or not, the token names a key we cannot get: fail closed with 503.
            Err(e) => {
                tracing::warn!(provider = %self.name(), error = %e, "signing key refetch failed");
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

/// Reads a response body up to [`MAX_BODY`].
pub async fn read_capped(
    mut resp: reqwest::Response,
    endpoint: &'static str,
) -> Result<Vec<u8>, IdpError> {
    if resp.content_length().is_some_and(|l| l as usize > MAX_BODY) {
        return Err(IdpError::Garbage {
            endpoint,
            reason: "answer too large".into(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| IdpError::Unreachable {
        endpoint,
        reason: transport_reason(&e),
    })? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(IdpError::Garbage {
                endpoint,
                reason: "answer too large".into(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A short reason for a transport failure, without URLs' query strings.
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "bad response body".into()
    } else {
        "request failed".into()
    }
}
