//! `client_credentials`: the client's id and secret arrive (`Authorization: Basic`, or request headers where the
//! policy allows); we run the client-credentials grant at the provider's token endpoint with them and forward the
//! access token upstream. Tokens are cached per (provider, client_id, secret, scopes) by a SHA-256 of those, never
//! by the secret in clear, until shortly before `expires_in`; concurrent misses make one token request; refused
//! credentials are cached for a short time. Guessing cannot drive the IdP: a client id whose grants keep being
//! refused is locked out for a cool-down (answered here, the IdP not asked), and each provider's grants pass a
//! token bucket, so no client can spend the organisation's rate limit at the IdP.
//!
//! With a shared store (Redis) the replicas share, under the same hashes and sealed: the tokens and remembered
//! refusals (a token one replica got is served by every other without a grant), the refusal count of each client
//! id (counted with the store's `incr` over the lock-out window) and its lock-out, and the known-good secret's
//! hash. The grant bucket stays per replica (each replica spends at most its own rate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use prometheus_client::metrics::counter::Counter;

use crate::cache::{self, Expires};
use crate::clock::Clock;
use crate::config::{Policy, ProviderConfig, Secret};
use crate::flow::Shared;
use crate::provider::token::TokenAnswer;
use crate::provider::{IdpError, Provider};
use crate::request::CheckView;
use crate::telemetry::{Metrics, ProviderLabels};

/// Largest credential accepted from a request (id or secret), in bytes.
const MAX_CREDENTIAL: usize = 1024;

/// Client credentials read from a request. The secret is wrapped so it never prints.
#[derive(Debug)]
pub struct ClientCreds {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub secret: Secret,
}

/// Why credentials could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredsError {
    /// Not base64, no `:`, empty id, too long.
    #[error("the client credentials are malformed")]
    Malformed,
}

/// Decodes `Authorization: Basic base64(client_id:client_secret)`.
pub fn from_basic(b64: &str) -> Result<ClientCreds, CredsError> {
    if b64.len() > 4 * MAX_CREDENTIAL {
        return Err(CredsError::Malformed);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| CredsError::Malformed)?;
    let text = String::from_utf8(raw).map_err(|_| CredsError::Malformed)?;
    let (id, secret) = text.split_once(':').ok_or(CredsError::Malformed)?;
    if id.is_empty() || secret.is_empty() || id.chars().any(char::is_control) {
        return Err(CredsError::Malformed);
    }
    Ok(ClientCreds {
        client_id: id.to_string(),
        secret: Secret::new(secret),
    })
}

/// Reads the id/secret request headers a policy names; `None` when the client sent neither.
pub fn from_headers(
    view: &CheckView<'_>,
    policy: &Policy,
) -> Option<Result<ClientCreds, CredsError>> {
    let (id_h, secret_h) = policy.client_credential_headers.as_ref()?;
    let mut ids = view.header_values(id_h.as_str());
    let mut secrets = view.header_values(secret_h.as_str());
    let id = (ids.next(), ids.next());
    let secret = (secrets.next(), secrets.next());
    if id.0.is_none() && secret.0.is_none() {
        return None;
    }
    Some(match (id, secret) {
        ((Some(Some(id)), None), (Some(Some(secret)), None))
            if !id.is_empty()
                && !secret.is_empty()
                && id.len() <= MAX_CREDENTIAL
                && secret.len() <= MAX_CREDENTIAL =>
        {
            Ok(ClientCreds {
                client_id: id.to_string(),
                secret: Secret::new(secret),
            })
        }
        _ => Err(CredsError::Malformed),
    })
}

/// The outcome of one grant, as cached.
#[derive(Debug)]
enum Grant {
    /// An access token, valid until `expires_at` (seconds since the epoch).
    Token {
        access_token: Arc<str>,
        expires_at: u64,
        ttl: Duration,
    },
    /// The IdP refused the credentials or the scopes; cached for the policy's negative TTL.
    Refused { reason: GrantRefusal, ttl: Duration },
}

impl Grant {
    /// The token of a grant that issued one still valid at `now`.
    fn live_token(&self, now: u64) -> Option<Arc<str>> {
        match self {
            Grant::Token {
                access_token,
                expires_at,
                ..
            } if *expires_at > now => Some(access_token.clone()),
            _ => None,
        }
    }
}

/// A grant is kept for the TTL it was given when it was made.
impl Expires for Grant {
    fn ttl(&self, _now: u64) -> Duration {
        match self {
            Grant::Token { ttl, .. } | Grant::Refused { ttl, .. } => *ttl,
        }
    }
}

/// A grant as the shared store keeps it (JSON, sealed by the store): the token, or why it was refused, and until
/// when (seconds since the epoch).
#[derive(Serialize, Deserialize)]
#[serde(tag = "grant", rename_all = "lowercase")]
enum StoredGrant {
    Token { access_token: String, until: u64 },
    Refused { reason: GrantRefusal, until: u64 },
}

impl StoredGrant {
    fn of(g: &Grant, now: u64) -> Self {
        match g {
            Grant::Token {
                access_token,
                expires_at,
                ..
            } => StoredGrant::Token {
                access_token: access_token.to_string(),
                until: *expires_at,
            },
            Grant::Refused { reason, ttl } => StoredGrant::Refused {
                reason: *reason,
                until: now.saturating_add(ttl.as_secs()),
            },
        }
    }

    /// The grant, if it still stands at `now`.
    fn grant(self, now: u64) -> Option<Grant> {
        match self {
            StoredGrant::Token {
                access_token,
                until,
            } if until > now && !access_token.is_empty() => Some(Grant::Token {
                access_token: access_token.into(),
                expires_at: until,
                ttl: Duration::from_secs(until - now),
            }),
            StoredGrant::Refused { reason, until } if until > now => Some(Grant::Refused {
                reason,
                ttl: Duration::from_secs(until - now),
            }),
            _ => None,
        }
    }
}

/// The store's kinds: grants (by the hash of provider, client id, secret and scopes), and by the hash of provider
/// and client id: the refusal count, the lock-out (its end), the known-good secret's hash.
const KIND_GRANT: &str = "cc";
const KIND_REFUSALS: &str = "cc-refusals";
const KIND_LOCKOUT: &str = "cc-lockout";
const KIND_GOOD: &str = "cc-good";

/// How long the shared store remembers the known-good secret's hash (at least the lock-out).
const SHARED_GOOD_SECS: u64 = 3600;

/// The shared key of a client id at a provider.
fn client_key(provider: &str, client_id: &str) -> cache::Key {
    cache::key(&["client", provider, client_id])
}

/// Why the IdP refused a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantRefusal {
    /// `invalid_client` / `unauthorized_client` / 401: wrong id or secret, or the grant is not allowed.
    InvalidClient,
    /// `invalid_scope`: the client may not have the policy's scopes.
    InvalidScope,
    /// Any other 4xx answer.
    Other,
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum CcError {
    /// The IdP refused.
    #[error("the identity provider refused the client credentials")]
    Refused(GrantRefusal),
    /// The IdP could not be asked, or answered 5xx or garbage.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
    /// The client id is locked out after too many refused grants; the IdP was not asked.
    #[error("too many refused attempts for this client id")]
    LockedOut {
        /// Seconds until the cool-down ends.
        retry_after: u64,
    },
    /// The provider's grant bucket is empty; the IdP was not asked.
    #[error("the token endpoint's grant rate is spent")]
    Throttled {
        /// Seconds until a grant may be sent again.
        retry_after: u64,
    },
}

impl CcError {
    /// The refusal the client gets (an IdP outage logged).
    pub fn refusal(self, provider: &str) -> crate::authn::Refusal {
        use crate::authn::Refusal;
        match self {
            CcError::Refused(GrantRefusal::InvalidScope) => {
                Refusal::insufficient("the client may not have the scopes this route requests")
            }
            CcError::Refused(_) => Refusal::unauthenticated(
                "invalid_client",
                "the identity provider refused the client credentials",
            ),
            CcError::Idp(e) => Refusal::idp(provider, &e),
            CcError::LockedOut { retry_after } => Refusal::unauthenticated(
                "invalid_client",
                "too many refused attempts for this client; try again later",
            )
            .retry_after(retry_after),
            CcError::Throttled { retry_after } => {
                Refusal::unavailable("the identity provider is busy; try again later")
                    .retry_after(retry_after)
            }
        }
    }
}

/// Why a grant was not made (shared by every caller of one coalesced grant).
#[derive(Debug, Clone)]
enum GrantError {
    Idp(IdpError),
    LockedOut(u64),
    Throttled(u64),
}

impl From<IdpError> for GrantError {
    fn from(e: IdpError) -> Self {
        GrantError::Idp(e)
    }
}

impl From<&GrantError> for CcError {
    fn from(e: &GrantError) -> Self {
        match e {
            GrantError::Idp(e) => CcError::Idp(e.clone()),
            GrantError::LockedOut(s) => CcError::LockedOut { retry_after: *s },
            GrantError::Throttled(s) => CcError::Throttled { retry_after: *s },
        }
    }
}

/// The refusals of one client id at one provider.
#[derive(Debug, Default)]
struct ClientAttempts {
    /// Held across each grant of this client id, so every refusal is counted before the next attempt starts: a
    /// burst of distinct wrong secrets makes at most `threshold` token requests, not one per secret.
    gate: tokio::sync::Mutex<RefusalWindow>,
    /// End of the lock-out (seconds since the epoch; 0 or past: not locked). Read without the gate.
    locked_until: AtomicU64,
    /// SHA-256 of the last secret that got a token for this client id: that secret is known good, so it skips the
    /// lock-out, the gate and the grant bucket (guessing cannot produce it; a refusal of it forgets it).
    good: Mutex<Option<cache::Key>>,
}

impl ClientAttempts {
    fn secret_hash(secret: &str) -> cache::Key {
        cache::key(&[secret])
    }

    /// Whether `secret` is the last secret that got a token (constant-time compare of the hashes).
    fn is_good(&self, secret: &str) -> bool {
        use subtle::ConstantTimeEq;
        let h = Self::secret_hash(secret);
        let good = self.good.lock().unwrap_or_else(|e| e.into_inner());
        good.as_ref().is_some_and(|g| bool::from(g.ct_eq(&h)))
    }

    fn set_good(&self, secret: Option<&str>) {
        *self.good.lock().unwrap_or_else(|e| e.into_inner()) = secret.map(Self::secret_hash);
    }
}

/// Longest wait for a client id's gate (another grant of the same id in flight); past it the request is answered
/// 503 `Throttled` without asking the IdP, so a flood of guesses cannot queue a request until the check timeout.
const GATE_WAIT: Duration = Duration::from_secs(2);

/// `invalid_client` refusals counted since `since`.
#[derive(Debug, Default)]
struct RefusalWindow {
    refusals: u32,
    since: u64,
}

/// A token bucket refilled once per second (the clock seam has whole seconds).
#[derive(Debug)]
struct Bucket {
    tokens: u64,
    last: u64,
}

/// The token-endpoint guard of one provider: the lock-out of client ids and the grant bucket.
#[derive(Debug)]
struct ProviderGuard {
    threshold: u32,
    lockout_secs: u64,
    rate: u64,
    burst: u64,
    /// Refusal counts by a SHA-256 of the client id (attacker-chosen, up to 1 KB: only its hash is kept). The lock
    /// check looks up without inserting; a grant attempt still makes an entry (residual: a flood of random ids can
    /// evict entries, not yet fixed).
    clients: moka::sync::Cache<cache::Key, Arc<ClientAttempts>>,
    bucket: Mutex<Bucket>,
    lockouts: Counter,
    throttled: Counter,
}

impl ProviderGuard {
    fn new(p: &ProviderConfig, metrics: &Metrics) -> Self {
        let labels = ProviderLabels {
            provider: p.name.clone(),
        };
        let lockout_secs = p.client_lockout.as_secs().max(1);
        ProviderGuard {
            threshold: p.client_lockout_threshold,
            lockout_secs,
            rate: u64::from(p.client_credentials_rate.max(1)),
            burst: u64::from(p.client_credentials_burst.max(1)),
            // An entry untouched for the window has nothing left to remember: its refusals and lock-out are over.
            clients: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(lockout_secs + 1))
                .build(),
            bucket: Mutex::new(Bucket {
                tokens: u64::from(p.client_credentials_burst.max(1)),
                last: 0,
            }),
            lockouts: metrics.client_lockouts.get_or_create(&labels).clone(),
            throttled: metrics
                .token_grants_throttled
                .get_or_create(&labels)
                .clone(),
        }
    }

    fn client(&self, client_id: &str) -> Arc<ClientAttempts> {
        self.clients
            .get_with(cache::key(&[client_id]), Default::default)
    }

    /// The entry of a client id, if one exists (never inserts).
    fn existing(&self, client_id: &str) -> Option<Arc<ClientAttempts>> {
        self.clients.get(&cache::key(&[client_id]))
    }

    /// Seconds left of the client's lock-out, if it is locked out now.
    fn locked(client: &ClientAttempts, now: u64) -> Option<u64> {
        let until = client.locked_until.load(Ordering::SeqCst);
        (until > now).then(|| until - now)
    }

    /// Takes one grant from the bucket, or says how long until one is there.
    fn take(&self, now: u64) -> Result<(), u64> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        if b.last == 0 {
            b.last = now;
        }
        let elapsed = now.saturating_sub(b.last);
        if elapsed > 0 {
            b.tokens = b
                .tokens
                .saturating_add(elapsed.saturating_mul(self.rate))
                .min(self.burst);
            b.last = now;
        }
        if b.tokens == 0 {
            self.throttled.inc();
            return Err(1);
        }
        b.tokens -= 1;
        Ok(())
    }

    /// Counts one `invalid_client` refusal; the one that reaches the threshold starts the lock-out.
    fn refused(&self, client: &ClientAttempts, window: &mut RefusalWindow, now: u64) -> bool {
        if self.threshold == 0 {
            return false;
        }
        if now >= window.since.saturating_add(self.lockout_secs) {
            *window = RefusalWindow {
                refusals: 0,
                since: now,
            };
        }
        window.refusals += 1;
        if window.refusals < self.threshold {
            return false;
        }
        *window = RefusalWindow::default();
        client
            .locked_until
            .store(now.saturating_add(self.lockout_secs), Ordering::SeqCst);
        self.lockouts.inc();
        true
    }
}

/// The token cache and the grant.
pub struct ClientCredentials {
    cache: moka::future::Cache<cache::Key, Arc<Grant>>,
    /// One per provider, in config order (a policy's `provider` index).
    guards: Vec<ProviderGuard>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// The second level shared with the other replicas (Redis), if any.
    shared: Option<Shared>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

/// How long before `expires_in` a cached token is dropped: 10 % of its life, at most 30 s.
fn margin(expires_in: u64) -> u64 {
    (expires_in / 10).min(30)
}

impl ClientCredentials {
    /// A cache bounded to `max_entries` credentials, and the lock-out and grant bucket of each provider; over
    /// `shared` when the replicas share a store.
    pub fn new(
        max_entries: u64,
        providers: &[ProviderConfig],
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shared: Option<Shared>,
    ) -> Self {
        let cache = cache::until_deadline(max_entries.max(1), clock.clone());
        ClientCredentials {
            cache,
            guards: providers
                .iter()
                .map(|p| ProviderGuard::new(p, &metrics))
                .collect(),
            clock,
            metrics,
            shared,
        }
    }

    /// The grant another replica stored for `key`, if any still stands (then kept here too).
    async fn shared_grant(&self, key: &cache::Key) -> Option<Arc<Grant>> {
        let shared = self.shared.as_ref()?;
        let grant = shared
            .get(KIND_GRANT, key)
            .await
            .and_then(|v| serde_json::from_slice::<StoredGrant>(&v).ok())
            .and_then(|g| g.grant(self.clock.now()))
            .map(Arc::new);
        self.metrics
            .cache_lookup("client_credentials_shared", grant.is_some());
        if let Some(g) = &grant {
            self.cache.insert(*key, g.clone()).await;
        }
        grant
    }

    /// Stores a grant this replica made for the others (until its token's expiry, or the negative TTL).
    async fn share_grant(&self, key: &cache::Key, grant: &Grant) {
        let Some(shared) = &self.shared else {
            return;
        };
        let now = self.clock.now();
        if let Ok(v) = serde_json::to_vec(&StoredGrant::of(grant, now)) {
            shared.put(KIND_GRANT, key, &v, grant.ttl(now)).await;
        }
    }

    /// Whether the shared store knows `secret` as the one that last got a token for this client id.
    async fn shared_good(&self, provider: &str, creds: &ClientCreds) -> bool {
        use subtle::ConstantTimeEq;
        let Some(shared) = &self.shared else {
            return false;
        };
        let h = ClientAttempts::secret_hash(creds.secret.expose());
        shared
            .get(KIND_GOOD, &client_key(provider, &creds.client_id))
            .await
            .is_some_and(|g| g.len() == h.len() && bool::from(g.as_slice().ct_eq(&h)))
    }

    /// Seconds left of a lock-out of this client id another replica started, if any (then kept here too).
    async fn shared_lockout(
        &self,
        provider: &str,
        client_id: &str,
        client: &ClientAttempts,
        now: u64,
    ) -> Option<u64> {
        let shared = self.shared.as_ref()?;
        let raw = shared
            .get(KIND_LOCKOUT, &client_key(provider, client_id))
            .await?;
        let until: u64 = std::str::from_utf8(&raw).ok()?.parse().ok()?;
        if until <= now {
            return None;
        }
        client.locked_until.fetch_max(until, Ordering::SeqCst);
        Some(until - now)
    }

    /// A grant's outcome told to the shared store: a token makes its secret known good and ends the refusal
    /// count; a refusal of the known-good secret forgets it.
    async fn share_outcome(
        &self,
        provider: &str,
        guard: &ProviderGuard,
        creds: &ClientCreds,
        grant: &Grant,
    ) {
        let Some(shared) = &self.shared else {
            return;
        };
        let id = client_key(provider, &creds.client_id);
        match grant {
            Grant::Token { .. } => {
                let ttl = Duration::from_secs(SHARED_GOOD_SECS.max(guard.lockout_secs));
                let h = ClientAttempts::secret_hash(creds.secret.expose());
                shared.put(KIND_GOOD, &id, &h, ttl).await;
                shared.delete(KIND_REFUSALS, &id).await;
            }
            Grant::Refused {
                reason: GrantRefusal::InvalidClient,
                ..
            } => {
                if self.shared_good(provider, creds).await {
                    shared.delete(KIND_GOOD, &id).await;
                }
            }
            Grant::Refused { .. } => {}
        }
    }

    /// Counts one `invalid_client` refusal in the shared store (over the lock-out window); the count that reaches
    /// the threshold locks the client id out on every replica. `false` when the store did not count it (no shared
    /// store, or it failed): the caller counts here.
    async fn shared_refusal(
        &self,
        provider: &str,
        guard: &ProviderGuard,
        client: &ClientAttempts,
        client_id: &str,
    ) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        if guard.threshold == 0 {
            return true;
        }
        let id = client_key(provider, client_id);
        let window = Duration::from_secs(guard.lockout_secs);
        let Some(count) = shared.incr(KIND_REFUSALS, &id, window).await else {
            return false;
        };
        if count >= u64::from(guard.threshold) {
            let until = self.clock.now().saturating_add(guard.lockout_secs);
            client.locked_until.fetch_max(until, Ordering::SeqCst);
            shared
                .put(KIND_LOCKOUT, &id, until.to_string().as_bytes(), window)
                .await;
            shared.delete(KIND_REFUSALS, &id).await;
            if count == u64::from(guard.threshold) {
                guard.lockouts.inc();
                tracing::warn!(provider = %provider, client_id = %client_id, threshold = guard.threshold, lockout_secs = guard.lockout_secs, "client id locked out (on every replica) after repeated refused client credentials");
            }
        }
        true
    }

    /// An access token for these credentials: from the cache, or one grant shared by every concurrent caller.
    ///
    /// A token cached for exactly these credentials is served even while the client id is locked out: it was
    /// granted for the right secret and costs the IdP nothing, and refusing it would let anyone who knows a client
    /// id (they are not secret) cut off a working client with a few wrong secrets a minute. Everything else of a
    /// locked-out client id (a new grant, even with the right secret, or a remembered refusal) is answered
    /// `LockedOut` until the cool-down ends.
    pub async fn token(
        &self,
        provider: &Provider,
        policy: &Policy,
        creds: &ClientCreds,
    ) -> Result<Arc<str>, CcError> {
        let key = grant_key(provider.name(), creds, &policy.scopes);
        let now = self.clock.now();
        let local = self.cache.get(&key).await;
        if let Some(token) = local.as_ref().and_then(|g| g.live_token(now)) {
            self.metrics.cache_lookup("client_credentials", true);
            return Ok(token);
        }
        // Boxed: the grant's future is large, and inline it would be part of (and copied with) every Check's.
        Box::pin(self.token_not_cached_here(provider, policy, creds, (key, local), now)).await
    }

    /// [`ClientCredentials::token`] past this replica's cache (`local`: what it holds, a refusal or an expired
    /// token): the shared store, the lock-out, the grant.
    async fn token_not_cached_here(
        &self,
        provider: &Provider,
        policy: &Policy,
        creds: &ClientCreds,
        (key, local): (cache::Key, Option<Arc<Grant>>),
        now: u64,
    ) -> Result<Arc<str>, CcError> {
        let cached = match local {
            Some(g) => Some(g),
            None => self.shared_grant(&key).await,
        };
        if let Some(token) = cached.as_ref().and_then(|g| g.live_token(now)) {
            self.metrics.cache_lookup("client_credentials", true);
            return Ok(token);
        }
        let guard = self
            .guards
            .get(policy.provider)
            .ok_or(CcError::Idp(IdpError::NoEndpoint("token_endpoint")))?;
        let client = guard.existing(&creds.client_id);
        let mut good = client
            .as_ref()
            .is_some_and(|c| c.is_good(creds.secret.expose()));
        if !good && self.shared_good(provider.name(), creds).await {
            guard
                .client(&creds.client_id)
                .set_good(Some(creds.secret.expose()));
            good = true;
        }
        if !good
            && let Some(c) = &client
            && let Some(retry_after) = ProviderGuard::locked(c, now)
        {
            return Err(CcError::LockedOut { retry_after });
        }
        let grant = match cached {
            Some(g) if matches!(g.as_ref(), Grant::Refused { .. }) => {
                self.metrics.cache_lookup("client_credentials", true);
                g
            }
            stale => {
                if stale.is_some() {
                    self.cache.invalidate(&key).await;
                }
                self.metrics.cache_lookup("client_credentials", false);
                let scopes = policy.scopes.join(" ");
                let neg_ttl = Duration::from_secs(policy.cache_ttl_neg_secs.max(1));
                let grant = async {
                    let g = self
                        .guarded_grant(provider, creds, &scopes, neg_ttl, guard, good)
                        .await?;
                    self.share_grant(&key, &g).await;
                    Ok(g)
                };
                self.cache
                    .try_get_with(key, grant)
                    .await
                    .map_err(|e: Arc<GrantError>| CcError::from(e.as_ref()))?
            }
        };
        match grant.as_ref() {
            Grant::Token { access_token, .. } => Ok(access_token.clone()),
            Grant::Refused { reason, .. } => Err(CcError::Refused(*reason)),
        }
    }

    /// One grant, made only when the client id is not locked out and the provider's bucket has a grant left;
    /// its outcome moves the client's refusal count (a token resets it, `invalid_client` adds one).
    async fn guarded_grant(
        &self,
        provider: &Provider,
        creds: &ClientCreds,
        scopes: &str,
        neg_ttl: Duration,
        guard: &ProviderGuard,
        good: bool,
    ) -> Result<Arc<Grant>, GrantError> {
        if good {
            // The known-good secret: no gate, no lock-out, no bucket (guesses cannot make it wait or spend it).
            let grant = self.grant(provider, creds, scopes, neg_ttl).await?;
            let client = guard.client(&creds.client_id);
            self.share_outcome(provider.name(), guard, creds, &grant)
                .await;
            match grant.as_ref() {
                Grant::Token { .. } => client.set_good(Some(creds.secret.expose())),
                Grant::Refused {
                    reason: GrantRefusal::InvalidClient,
                    ..
                } => {
                    // rotated or revoked: no longer known good, and counted like any refusal
                    client.set_good(None);
                    if !self
                        .shared_refusal(provider.name(), guard, &client, &creds.client_id)
                        .await
                        && let Ok(mut window) =
                            tokio::time::timeout(GATE_WAIT, client.gate.lock()).await
                        && guard.refused(&client, &mut window, self.clock.now())
                    {
                        tracing::warn!(provider = %provider.name(), client_id = %creds.client_id, threshold = guard.threshold, lockout_secs = guard.lockout_secs, "client id locked out after repeated refused client credentials");
                    }
                }
                Grant::Refused { .. } => {}
            }
            return Ok(grant);
        }
        let client = guard.client(&creds.client_id);
        let Ok(mut window) = tokio::time::timeout(GATE_WAIT, client.gate.lock()).await else {
            return Err(GrantError::Throttled(1));
        };
        let now = self.clock.now();
        if let Some(retry_after) = ProviderGuard::locked(&client, now) {
            return Err(GrantError::LockedOut(retry_after));
        }
        if let Some(retry_after) = self
            .shared_lockout(provider.name(), &creds.client_id, &client, now)
            .await
        {
            return Err(GrantError::LockedOut(retry_after));
        }
        if let Err(retry_after) = guard.take(now) {
            tracing::warn!(provider = %provider.name(), "client-credentials grant rate spent; answering 503 without asking the identity provider");
            return Err(GrantError::Throttled(retry_after));
        }
        let grant = self.grant(provider, creds, scopes, neg_ttl).await?;
        self.share_outcome(provider.name(), guard, creds, &grant)
            .await;
        match grant.as_ref() {
            Grant::Token { .. } => {
                *window = RefusalWindow::default();
                client.set_good(Some(creds.secret.expose()));
            }
            Grant::Refused {
                reason: GrantRefusal::InvalidClient,
                ..
            } => {
                if !self
                    .shared_refusal(provider.name(), guard, &client, &creds.client_id)
                    .await
                    && guard.refused(&client, &mut window, self.clock.now())
                {
                    tracing::warn!(provider = %provider.name(), client_id = %creds.client_id, threshold = guard.threshold, lockout_secs = guard.lockout_secs, "client id locked out after repeated refused client credentials");
                }
            }
            Grant::Refused { .. } => {}
        }
        Ok(grant)
    }

    async fn grant(
        &self,
        provider: &Provider,
        creds: &ClientCreds,
        scopes: &str,
        neg_ttl: Duration,
    ) -> Result<Arc<Grant>, IdpError> {
        let mut form = vec![("grant_type", "client_credentials")];
        if !scopes.is_empty() {
            form.push(("scope", scopes));
        }
        let client = (creds.client_id.as_str(), &creds.secret);
        let (status, error) = match provider.token_grant(&form, Some(client)).await? {
            TokenAnswer::Tokens(t) => {
                if t.access_token.is_empty() {
                    return Err(IdpError::Garbage {
                        endpoint: "token",
                        reason: "empty access_token".into(),
                    });
                }
                let expires_in = t.expires_in();
                let life = expires_in.saturating_sub(margin(expires_in)).max(1);
                return Ok(Arc::new(Grant::Token {
                    access_token: t.access_token.into(),
                    expires_at: self.clock.now().saturating_add(life),
                    ttl: Duration::from_secs(life),
                }));
            }
            TokenAnswer::Refused { status, error } => (status, error),
        };
        let reason = match (status, error.as_str()) {
            (_, "invalid_client" | "unauthorized_client") | (401, _) => GrantRefusal::InvalidClient,
            (_, "invalid_scope") => GrantRefusal::InvalidScope,
            _ => GrantRefusal::Other,
        };
        tracing::info!(provider = %provider.name(), status, error = %error, client_id = %creds.client_id, "token endpoint refused client credentials");
        Ok(Arc::new(Grant::Refused {
            reason,
            ttl: neg_ttl,
        }))
    }
}

/// The cache key of a grant: [`cache::key`] of (provider, client id, secret, the scopes joined by spaces), made
/// without joining them (a cached token costs no allocation for it).
fn grant_key(provider: &str, creds: &ClientCreds, scopes: &[String]) -> cache::Key {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [provider, &creds.client_id, creds.secret.expose()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let joined = scopes.iter().map(String::len).sum::<usize>() + scopes.len().saturating_sub(1);
    h.update((joined as u64).to_be_bytes());
    for (i, scope) in scopes.iter().enumerate() {
        if i > 0 {
            h.update(b" ");
        }
        h.update(scope.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grant key is the key of the scopes joined by spaces, as it was (the store's shared grants keep their
    /// keys across versions).
    #[test]
    fn the_grant_key_is_the_key_of_the_joined_scopes() {
        let creds = ClientCreds {
            client_id: "app".into(),
            secret: Secret::new("s3cret"),
        };
        for scopes in [vec![], vec!["a"], vec!["read", "write:all", ""]] {
            let scopes: Vec<String> = scopes.into_iter().map(String::from).collect();
            let joined = scopes.join(" ");
            assert_eq!(
                grant_key("p", &creds, &scopes),
                cache::key(&["p", "app", "s3cret", &joined]),
                "{scopes:?}"
            );
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn basic_decoding() {
        let c = from_basic(&b64("cc-app:s3cr:et")).unwrap();
        assert_eq!(c.client_id, "cc-app");
        assert_eq!(c.secret.expose(), "s3cr:et");
        assert!(!format!("{c:?}").contains("s3cr"));
        for bad in [
            b64("nocolon"),
            b64(":secret"),
            b64("id:"),
            "%%%".to_string(),
            "a".repeat(5000),
        ] {
            assert_eq!(
                from_basic(&bad).unwrap_err(),
                CredsError::Malformed,
                "{bad}"
            );
        }
    }

    fn guard(threshold: u32, lockout_secs: u64, rate: u32, burst: u32) -> (ProviderGuard, Metrics) {
        let toml = format!(
            "[providers.okta]\nissuer = \"https://idp.example.com\"\naudiences = [\"api\"]\n\
             client_lockout_threshold = {threshold}\nclient_lockout_secs = {lockout_secs}\n\
             client_credentials_rate = {rate}\nclient_credentials_burst = {burst}\n"
        );
        let cfg = crate::config::Config::from_toml(&toml).unwrap();
        let metrics = Metrics::new();
        (ProviderGuard::new(&cfg.providers[0], &metrics), metrics)
    }

    #[test]
    fn bucket_gives_the_burst_then_the_rate_per_second() {
        let (g, m) = guard(5, 60, 2, 3);
        let t = 1_000;
        assert!((0..3).all(|_| g.take(t).is_ok()), "the burst");
        assert_eq!(g.take(t), Err(1), "empty: retry after a second");
        assert_eq!(g.take(t), Err(1));
        assert!(g.take(t + 1).is_ok() && g.take(t + 1).is_ok(), "the rate");
        assert_eq!(g.take(t + 1), Err(1));
        assert!(
            (0..3).all(|_| g.take(t + 100).is_ok()),
            "refilled to the burst"
        );
        assert_eq!(g.take(t + 100), Err(1), "never past the burst");
        assert!(
            m.render()
                .contains("oidc_authz_token_grants_throttled_total{provider=\"okta\"} 4"),
            "{}",
            m.render()
        );
    }

    #[test]
    fn threshold_refusals_in_the_window_lock_out_for_the_cool_down() {
        let (g, m) = guard(3, 60, 10, 20);
        let c = g.client("cc-app");
        let mut w = RefusalWindow::default();
        let t = 1_000;
        assert!(!g.refused(&c, &mut w, t) && !g.refused(&c, &mut w, t + 1));
        assert_eq!(ProviderGuard::locked(&c, t + 1), None);
        assert!(g.refused(&c, &mut w, t + 2), "the third refusal locks");
        assert_eq!(ProviderGuard::locked(&c, t + 2), Some(60));
        assert_eq!(ProviderGuard::locked(&c, t + 61), Some(1));
        assert_eq!(
            ProviderGuard::locked(&c, t + 62),
            None,
            "the cool-down is over"
        );
        assert!(
            !g.refused(&c, &mut w, t + 62),
            "a lock-out starts a fresh count"
        );
        // refusals older than the window are forgotten
        let c = g.client("other");
        let mut w = RefusalWindow::default();
        assert!(!g.refused(&c, &mut w, t) && !g.refused(&c, &mut w, t + 1));
        assert!(!g.refused(&c, &mut w, t + 60), "a new window");
        assert_eq!(ProviderGuard::locked(&c, t + 60), None);
        assert!(
            m.render()
                .contains("oidc_authz_client_lockouts_total{provider=\"okta\"} 1")
        );
        // the same client id is the same entry, another is not
        assert!(Arc::ptr_eq(&g.client("cc-app"), &g.client("cc-app")));
        assert!(!Arc::ptr_eq(&g.client("cc-app"), &g.client("cc-ap")));
    }

    #[test]
    fn threshold_zero_never_locks() {
        let (g, _) = guard(0, 60, 10, 20);
        let c = g.client("cc-app");
        let mut w = RefusalWindow::default();
        assert!((0..100).all(|i| !g.refused(&c, &mut w, 1_000 + i)));
        assert_eq!(ProviderGuard::locked(&c, 1_100), None);
    }

    /// What another replica reads back is what was granted, with the time left; nothing past its end.
    #[test]
    fn stored_grants_read_back_until_their_end() {
        let token = Grant::Token {
            access_token: "at".into(),
            expires_at: 1_100,
            ttl: Duration::from_secs(100),
        };
        let json = serde_json::to_vec(&StoredGrant::of(&token, 1_000)).unwrap();
        let back = |now| {
            serde_json::from_slice::<StoredGrant>(&json)
                .unwrap()
                .grant(now)
        };
        match back(1_040) {
            Some(Grant::Token {
                access_token,
                expires_at: 1_100,
                ttl,
            }) => {
                assert_eq!(&*access_token, "at");
                assert_eq!(ttl, Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        assert!(back(1_100).is_none(), "expired");
        let refused = Grant::Refused {
            reason: GrantRefusal::InvalidClient,
            ttl: Duration::from_secs(30),
        };
        let json = serde_json::to_vec(&StoredGrant::of(&refused, 1_000)).unwrap();
        let back = |now| {
            serde_json::from_slice::<StoredGrant>(&json)
                .unwrap()
                .grant(now)
        };
        assert!(matches!(
            back(1_010),
            Some(Grant::Refused { reason: GrantRefusal::InvalidClient, ttl }) if ttl == Duration::from_secs(20)
        ));
        assert!(back(1_030).is_none());
    }

    #[test]
    fn margins() {
        assert_eq!(margin(3600), 30);
        assert_eq!(margin(100), 10);
        assert_eq!(margin(3), 0);
    }
}
