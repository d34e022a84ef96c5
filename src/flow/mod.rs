//! The token methods: `bearer` (JWTs verified locally), `introspection` (RFC 7662), `userinfo` (the provider's
//! userinfo endpoint) and `client_credentials` (the grant run for the client, its token then verified like any
//! other; [`token_chain`] says which method checks a token). [`TokenMethods::authenticate`] turns a
//! request's credentials into an [`Identity`] or a [`Refusal`]; each method's own errors become a refusal here.
//! With a shared store (Redis), [`Shared`] is the second level of their caches, under each replica's own.

pub mod bearer;
pub mod claims;
pub mod client_credentials;
pub mod introspection;
pub mod issuer;
pub mod userinfo;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::authn::{Claims, Identity, Refusal, RefusalKind};
use crate::clock::Clock;
use crate::config::{AuthMethod, Config};
use crate::credentials::{Authorization, Credentials};
use crate::flow::bearer::{BearerVerifier, Verified};
use crate::flow::client_credentials::{ClientCredentials, ClientCreds, CredsError};
use crate::flow::introspection::{IntrospectionError, Introspector};
use crate::flow::userinfo::UserinfoClient;
use crate::policy::runtime::PolicyRuntime;
use crate::provider::IdpError;
use crate::store::Store;
use crate::telemetry::Metrics;

/// The token methods and their caches (shared by every policy).
#[derive(Debug)]
pub struct TokenMethods {
    bearer: BearerVerifier,
    cc: ClientCredentials,
    introspector: Introspector,
    /// The `userinfo` method's client and cache.
    userinfo: UserinfoClient,
}

impl TokenMethods {
    /// Empty caches sized by `config`; token times checked against `clock`; `shared`: the store the replicas
    /// share (Redis) as the caches' second level, `None` to keep everything in this process.
    pub fn new(
        config: &Config,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shared: Option<Shared>,
    ) -> Self {
        TokenMethods {
            bearer: BearerVerifier::new(
                config.server.token_cache_entries,
                clock.clone(),
                metrics.clone(),
            ),
            cc: ClientCredentials::new(
                10_000,
                &config.providers,
                clock.clone(),
                metrics.clone(),
                shared.clone(),
            ),
            introspector: Introspector::new(
                100_000,
                clock.clone(),
                metrics.clone(),
                shared.clone(),
            ),
            userinfo: UserinfoClient::new(100_000, clock, metrics, shared),
        }
    }

    /// Authenticates a request that carries no session the login took: a bearer token, client credentials
    /// (Basic or the policy's headers), or nothing usable (401 naming what the policy accepts).
    pub async fn authenticate(
        &self,
        rt: &PolicyRuntime,
        creds: &Credentials<'_>,
    ) -> Result<Identity, Refusal> {
        let policy = &rt.policy;
        let cc_allowed = policy.allows(AuthMethod::ClientCredentials);
        let header_client = creds.header_client.as_ref().filter(|_| cc_allowed);
        match (&creds.authorization, header_client) {
            (Authorization::Bearer(token), _) if takes_tokens(policy) => {
                self.token(rt, token).await
            }
            (Authorization::Basic(b64), _) if cc_allowed => {
                let client = client_credentials::from_basic(b64);
                self.client_credentials(rt, client.as_ref().map_err(|e| *e))
                    .await
            }
            (Authorization::None, Some(client)) => {
                self.client_credentials(rt, client.as_ref().map_err(|e| *e))
                    .await
            }
            (Authorization::Malformed(why), _) => {
                Err(Refusal::unauthenticated("invalid_token", *why))
            }
            (Authorization::None, None) => Err(Refusal::unauthenticated(
                "invalid_token",
                if cc_allowed {
                    "no credentials in the request"
                } else {
                    "no access token in the request"
                },
            )),
            (Authorization::Bearer(_) | Authorization::Basic(_), _) => {
                Err(Refusal::unauthenticated(
                    "invalid_token",
                    "this route does not accept these credentials",
                ))
            }
        }
    }

    /// Client credentials read from the request: runs (or reuses) the grant, then verifies the token the IdP
    /// issued exactly like a token the client sent (locally or by introspection); that token goes upstream.
    async fn client_credentials(
        &self,
        rt: &PolicyRuntime,
        client: Result<&ClientCreds, CredsError>,
    ) -> Result<Identity, Refusal> {
        let client =
            client.map_err(|e| Refusal::unauthenticated("invalid_client", e.to_string()))?;
        let method = AuthMethod::ClientCredentials;
        let provider = rt.provider.as_ref();
        let token = self
            .cc
            .token(provider, &rt.policy, client)
            .await
            .map_err(|e| e.refusal(provider.name()).during(method))?;
        let mut id = self.token(rt, &token).await.map_err(|r| {
            if r.kind != RefusalKind::Unavailable {
                tracing::warn!(policy.name = %rt.policy.name, reason = %r.description, "the token the provider issued was refused (check issuer, audiences, introspection)");
            }
            r.during(method)
        })?;
        id.method = method;
        id.upstream_authorization = Some(format!("Bearer {token}"));
        Ok(id)
    }

    /// A token from `Authorization: Bearer`, checked by the methods of [`token_chain`] in its order: a method
    /// that finds the token invalid (401) hands it to the next one; the last one's refusal, or any method's
    /// outage (503, fail closed), is the answer.
    async fn token(&self, rt: &PolicyRuntime, token: &str) -> Result<Identity, Refusal> {
        let (policy, provider) = (&rt.policy, &rt.provider);
        let jwt = BearerVerifier::is_jwt(token);
        let (methods, n) = chain_for(policy, jwt);
        let chain = &methods[..n];
        // Several issuers: a JWT's `iss` picks its provider (locally verified or introspected there); one naming no
        // listed issuer is refused before any call. Opaque tokens go to the first provider.
        let provider = if jwt {
            let Some(picked) = rt.issuers.for_jwt(token) else {
                let method = chain.first().copied().unwrap_or(AuthMethod::Bearer);
                let why = bearer::BearerError::Issuer.to_string();
                return Err(Refusal::unauthenticated("invalid_token", why).during(method));
            };
            picked
        } else {
            provider
        };
        let (vouching, provider) = (provider, provider.as_ref());
        let name = provider.name();
        let mut refusal = None;
        for &method in chain {
            // Only a token the provider does not know as active goes on to the next method: one introspection found
            // active but refused (another audience or issuer, not an access token) or malformed is refused here, so
            // a method that checks less (userinfo checks no audience) can never let it in.
            let mut last = false;
            let verified = match method {
                AuthMethod::Introspection => self
                    .introspector
                    .introspect(provider, policy, token)
                    .await
                    .map_err(|e| {
                        last = !matches!(e, IntrospectionError::Inactive);
                        token_refusal(name, e)
                    }),
                AuthMethod::Userinfo => self
                    .userinfo
                    .userinfo(provider, policy, token)
                    .await
                    .map_err(|e| token_refusal(name, e)),
                _ => self
                    .bearer
                    .verify(provider, token)
                    .await
                    .map_err(|e| token_refusal(name, e)),
            };
            match verified {
                Ok(verified) => {
                    let mut id = token_identity(method, verified);
                    id.vouched_by = Some(vouching.clone());
                    return Ok(id);
                }
                Err(r) => {
                    let unavailable = r.kind == RefusalKind::Unavailable;
                    refusal = Some(r.during(method));
                    if unavailable || last {
                        break;
                    }
                }
            }
        }
        Err(refusal.unwrap_or_else(|| {
            Refusal::unauthenticated("invalid_token", "this route does not accept bearer tokens")
        }))
    }
}

/// Whether a policy takes `Authorization: Bearer` tokens (`bearer`, `introspection` or `userinfo`).
pub fn takes_tokens(policy: &crate::config::Policy) -> bool {
    policy.allows(AuthMethod::Bearer)
        || policy.allows(AuthMethod::Introspection)
        || policy.allows(AuthMethod::Userinfo)
}

/// The methods that check a bearer token, in the order they are asked:
/// - a JWT goes to `bearer` alone when the policy allows `bearer`, unless `introspect_jwt_tokens` is set and the
///   policy allows `introspection` (a JWT that fails local verification is refused, never sent to the IdP);
/// - any other token (opaque, or a JWT the rule above does not keep) goes to `introspection` and `userinfo`, those
///   of them the policy allows, in the order of its `auth_methods`;
/// - with neither of those allowed, to `bearer` (which refuses what is not a JWT).
pub fn token_chain(policy: &crate::config::Policy, token: &str) -> Vec<AuthMethod> {
    let (methods, n) = chain_for(policy, BearerVerifier::is_jwt(token));
    methods[..n].to_vec()
}

/// [`token_chain`] for a token already known to be a JWT or not (the shape scan is one pass over the token: done
/// once per Check), as the first `n` entries of an array: no allocation on the Check path (at most two methods,
/// introspection and userinfo, ever follow one another).
fn chain_for(policy: &crate::config::Policy, jwt: bool) -> ([AuthMethod; 2], usize) {
    const BEARER: ([AuthMethod; 2], usize) = ([AuthMethod::Bearer; 2], 1);
    let local = policy.allows(AuthMethod::Bearer)
        && !(policy.introspect_jwt_tokens && policy.allows(AuthMethod::Introspection));
    if jwt && local {
        return BEARER;
    }
    let mut methods = [AuthMethod::Bearer; 2];
    let mut n = 0;
    let remote = policy
        .auth_methods
        .iter()
        .copied()
        .filter(|m| matches!(m, AuthMethod::Introspection | AuthMethod::Userinfo));
    for m in remote {
        if n < methods.len() && !methods[..n].contains(&m) {
            methods[n] = m;
            n += 1;
        }
    }
    if n == 0 { BEARER } else { (methods, n) }
}

/// How long the store is left alone after it failed: the token methods answer from this replica's caches and
/// the IdP meanwhile, then try it again (so sharing resumes by itself when Redis is back).
const SHARED_PAUSE: Duration = Duration::from_secs(1);

/// An identity provider's answer about a token (introspection, userinfo) that a cache keeps until `until`.
pub(crate) trait Standing {
    /// Until when (Unix seconds) the answer may be reused.
    fn until(&self) -> u64;

    /// Whether the answer still stands at `now`.
    fn stands(&self, now: u64) -> bool {
        now < self.until()
    }
}

/// Why [`cached_idp_answer`] has no answer.
pub(crate) enum NoAnswer {
    /// Empty, too long or not visible ASCII: no token at all, never sent.
    Malformed,
    /// A JWT that says it is no access token (an ID token, say): never sent to the provider.
    NotAccessToken,
    /// The provider could not answer.
    Idp(IdpError),
}

/// The provider's answer about `token` for `policy`, as introspection and userinfo share it: a token of the wrong
/// shape is refused first, and one that says it is no access token is never sent. Without `caching` every Check
/// asks (`fetch(None)`); with it the key is a hash of (provider, policy, token). With it: the cached answer while it stands (the clock decides; the cache may keep it
/// a moment longer), counted under `label`; on a miss, one question for every Check waiting on the same key
/// (`fetch(Some(key))`, which may find it in the shared store), and an answer that does not stand (a zero TTL) is
/// dropped once handed out. `not_access_token` is decided on a miss only: such a token is never cached (the key
/// holds the whole token), so a hit is a token that passed it.
pub(crate) async fn cached_idp_answer<A, F, Fut>(
    cache: &moka::future::Cache<crate::cache::Key, Arc<A>>,
    clock: &dyn Clock,
    metrics: &Metrics,
    label: &'static str,
    (provider, policy, token): (&crate::provider::Provider, &crate::config::Policy, &str),
    caching: bool,
    fetch: F,
) -> Result<Arc<A>, NoAnswer>
where
    A: Standing + Send + Sync + 'static,
    F: FnOnce(Option<crate::cache::Key>) -> Fut,
    Fut: std::future::Future<Output = Result<Arc<A>, IdpError>>,
{
    if token.is_empty()
        || token.len() > crate::config::MAX_TOKEN_BYTES
        || token.bytes().any(|b| !b.is_ascii_graphic())
    {
        return Err(NoAnswer::Malformed);
    }
    let not_access_token = || bearer::unverified_not_access_token(token, provider);
    let key = caching.then(|| crate::cache::key(&[provider.name(), policy.name.as_str(), token]));
    let Some(k) = key else {
        if not_access_token() {
            return Err(NoAnswer::NotAccessToken);
        }
        return Box::pin(fetch(None)).await.map_err(NoAnswer::Idp);
    };
    let now = clock.now();
    let hit = match cache.get(&k).await {
        Some(a) if !a.stands(now) => {
            cache.invalidate(&k).await;
            None
        }
        other => other,
    };
    if let Some(a) = hit {
        metrics.cache_lookup(label, true);
        return Ok(a);
    }
    if not_access_token() {
        return Err(NoAnswer::NotAccessToken);
    }
    metrics.cache_lookup(label, false);
    // Boxed: the call's future is large, and inline it would be part of (and copied with) every Check's.
    let answer = Box::pin(cache.try_get_with(k, fetch(Some(k))))
        .await
        .map_err(|e: Arc<IdpError>| NoAnswer::Idp((*e).clone()))?;
    // A zero TTL means "do not keep": drop what try_get_with stored for the waiters.
    if !answer.stands(clock.now()) {
        cache.invalidate(&k).await;
    }
    Ok(answer)
}

/// The store as the second level of the token methods' caches (and the JWKS refetch limiter): best effort. A
/// failed or slow store operation (bounded by the store's timeout; logged and counted by [`Store`]) is no answer,
/// and the store is then skipped for `SHARED_PAUSE` (1 s): the caller goes on with its local cache and the IdP, so a
/// Redis outage never refuses a token. Keys are hashes ([`crate::cache::key`]); values are sealed by the store.
#[derive(Debug, Clone)]
pub struct Shared {
    store: Arc<Store>,
    /// How long a failed store is left alone ([`SHARED_PAUSE`]).
    pause: Duration,
    /// When the pause began counting: `paused_until` is measured from it.
    base: Instant,
    /// No store operation before `base` + this many nanoseconds (after a failure; 0: never failed). An atomic,
    /// so a store operation takes no lock to know.
    paused_until: Arc<AtomicU64>,
}

impl Shared {
    /// The second level over `store` (a shared one: Redis).
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_pause(store, SHARED_PAUSE)
    }

    /// The second level over `store`, left alone for `pause` after a failure.
    pub fn with_pause(store: Arc<Store>, pause: Duration) -> Self {
        Shared {
            store,
            pause,
            base: Instant::now(),
            paused_until: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Nanoseconds since `base`, at least 1 (0 is "never paused").
    fn since_base(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn paused(&self) -> bool {
        let until = self.paused_until.load(Ordering::Relaxed);
        until != 0 && self.since_base() < until
    }

    /// The outcome of one store operation: its value, or `None` (and a pause) when it failed.
    fn outcome<T>(&self, res: Result<T, crate::store::StoreError>) -> Option<T> {
        match res {
            Ok(v) => Some(v),
            Err(_) => {
                let now = self.since_base();
                let until =
                    now.saturating_add(u64::try_from(self.pause.as_nanos()).unwrap_or(u64::MAX));
                let before = self.paused_until.swap(until, Ordering::Relaxed);
                if before == 0 || now >= before {
                    tracing::warn!(
                        pause_ms = self.pause.as_millis() as u64,
                        "the shared store failed; token methods use this replica's caches and the identity provider"
                    );
                }
                None
            }
        }
    }

    /// The value of `kind`/`id`, if the store has one and answers.
    pub async fn get(&self, kind: &str, id: &crate::cache::Key) -> Option<Vec<u8>> {
        if self.paused() {
            return None;
        }
        let res = self.store.get(kind, id).await;
        self.outcome(res).flatten()
    }

    /// Stores `value` under `kind`/`id` for `ttl` (nothing for a zero TTL).
    pub async fn put(&self, kind: &str, id: &crate::cache::Key, value: &[u8], ttl: Duration) {
        if ttl.is_zero() || self.paused() {
            return;
        }
        let res = self.store.put(kind, id, value, ttl).await;
        self.outcome(res);
    }

    /// Takes `kind`/`id` for `ttl` if nobody holds it: whether it was taken; `None` when the store did not answer.
    pub async fn put_new(&self, kind: &str, id: &crate::cache::Key, ttl: Duration) -> Option<bool> {
        if ttl.is_zero() || self.paused() {
            return None;
        }
        let res = self.store.put_new(kind, id, b"1", ttl).await;
        self.outcome(res)
    }

    /// Counts one under `kind`/`id` (the count lives `ttl` from its first): the new count.
    pub async fn incr(&self, kind: &str, id: &crate::cache::Key, ttl: Duration) -> Option<u64> {
        if ttl.is_zero() || self.paused() {
            return None;
        }
        let res = self.store.incr(kind, id, ttl).await;
        self.outcome(res)
    }

    /// Removes `kind`/`id`.
    pub async fn delete(&self, kind: &str, id: &crate::cache::Key) {
        if self.paused() {
            return;
        }
        let res = self.store.delete(kind, id).await;
        self.outcome(res);
    }
}

/// A refused token: 401 `invalid_token` with the reason, or 503 (logged) when the reason is an IdP outage (the
/// error's source: only the `Idp` variants of the token methods' errors have one).
fn token_refusal(provider: &str, e: impl std::error::Error) -> Refusal {
    match e.source().and_then(|s| s.downcast_ref::<IdpError>()) {
        Some(outage) => Refusal::idp(provider, outage),
        None => Refusal::unauthenticated("invalid_token", e.to_string()),
    }
}

fn token_identity(method: AuthMethod, verified: Arc<Verified>) -> Identity {
    Identity {
        method,
        claims: Claims::Token(verified),
        upstream_authorization: None,
        id_token: None,
        set_cookies: Vec::new(),
        vouched_by: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;
    use tokio::sync::broadcast;

    use super::*;
    use crate::cache;
    use crate::store::{Backend, StoreError};

    /// The order of the token methods: a JWT to `bearer` alone when the policy allows it (unless
    /// `introspect_jwt_tokens` with `introspection`), anything else to `introspection` and `userinfo` in config order.
    #[test]
    fn token_chain_follows_the_rule() {
        use AuthMethod::{Bearer, Introspection, Userinfo};
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let opaque = "opaque-token";
        let toml = |methods: &str, ijt: bool| {
            format!(
                "[providers.idp]\nissuer = \"https://idp.test\"\nclient_id = \"c\"\nclient_secret = \"s\"\naudiences = [\"a\"]\n[policies.p]\nprovider = \"idp\"\nauth_methods = {methods}\nintrospect_jwt_tokens = {ijt}\n"
            )
        };
        let cases: &[(&str, bool, &str, &[AuthMethod])] = &[
            (
                r#"["bearer", "introspection", "userinfo"]"#,
                false,
                jwt,
                &[Bearer],
            ),
            (
                r#"["bearer", "introspection", "userinfo"]"#,
                false,
                opaque,
                &[Introspection, Userinfo],
            ),
            (
                r#"["userinfo", "bearer", "introspection"]"#,
                false,
                opaque,
                &[Userinfo, Introspection],
            ),
            (
                r#"["userinfo", "bearer", "introspection"]"#,
                true,
                jwt,
                &[Userinfo, Introspection],
            ),
            (r#"["bearer", "userinfo"]"#, true, jwt, &[Bearer]),
            (r#"["userinfo"]"#, false, jwt, &[Userinfo]),
            (r#"["bearer"]"#, false, opaque, &[Bearer]),
            (r#"["introspection"]"#, false, jwt, &[Introspection]),
        ];
        for (methods, ijt, token, want) in cases {
            let config = crate::config::Config::from_toml(&toml(methods, *ijt)).unwrap();
            let policy = &config.policies[0];
            assert!(takes_tokens(policy));
            assert_eq!(
                token_chain(policy, token),
                want.to_vec(),
                "{methods} ijt={ijt} jwt={}",
                *token == jwt
            );
        }
    }

    /// A Redis that hangs: every operation is counted and never answers.
    #[derive(Debug)]
    struct Hung(Arc<AtomicUsize>);

    impl Hung {
        fn hang<'a, T: Send + 'a>(&'a self) -> BoxFuture<'a, Result<T, StoreError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(futures::future::pending())
        }
    }

    impl Backend for Hung {
        fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
            self.hang()
        }
        fn set<'a>(
            &'a self,
            _: &'a str,
            _: &'a [u8],
            _: Duration,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.hang()
        }
        fn set_new<'a>(
            &'a self,
            _: &'a str,
            _: &'a [u8],
            _: Duration,
        ) -> BoxFuture<'a, Result<bool, StoreError>> {
            self.hang()
        }
        fn delete<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
            self.hang()
        }
        fn incr<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<u64, StoreError>> {
            self.hang()
        }
        fn publish<'a>(&'a self, _: &'a str, _: &'a [u8]) -> BoxFuture<'a, Result<(), StoreError>> {
            self.hang()
        }
        fn subscribe(&self, _: String, _: broadcast::Sender<Vec<u8>>) {}
        fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.hang()
        }
        fn add_member<'a>(
            &'a self,
            _: &'a str,
            _: &'a [u8],
            _: Duration,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.hang()
        }
        fn remove_member<'a>(
            &'a self,
            _: &'a str,
            _: &'a [u8],
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.hang()
        }
        fn members<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<Vec<u8>>, StoreError>> {
            self.hang()
        }
    }

    fn hung(pause: Duration) -> (Shared, Arc<AtomicUsize>, Arc<Metrics>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::new());
        let store = Store::with_backend(
            Box::new(Hung(calls.clone())),
            "t:",
            None,
            Duration::from_millis(20),
            metrics.clone(),
        );
        (Shared::with_pause(Arc::new(store), pause), calls, metrics)
    }

    /// A hung store is no answer (after the store's timeout, counted as an error), and is then left alone: the
    /// next operations do not wait for it.
    #[tokio::test]
    async fn a_failed_store_is_no_answer_and_is_left_alone_for_the_pause() {
        let (shared, calls, metrics) = hung(Duration::from_secs(3600));
        let id = cache::key(&["x"]);
        assert_eq!(shared.get("k", &id).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(
            metrics
                .render()
                .contains("oidc_authz_store_requests_total{op=\"get\",outcome=\"error\"} 1"),
            "{}",
            metrics.render()
        );
        let ttl = Duration::from_secs(60);
        shared.put("k", &id, b"v", ttl).await;
        assert_eq!(shared.put_new("k", &id, ttl).await, None);
        assert_eq!(shared.incr("k", &id, ttl).await, None);
        shared.delete("k", &id).await;
        assert_eq!(shared.get("k", &id).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "paused: not asked again");
    }

    /// Past the pause the store is asked again (so sharing resumes by itself); a zero TTL is never stored.
    #[tokio::test]
    async fn past_the_pause_the_store_is_asked_again() {
        let (shared, calls, _) = hung(Duration::ZERO);
        let id = cache::key(&["x"]);
        assert_eq!(shared.get("k", &id).await, None);
        assert_eq!(shared.get("k", &id).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        shared.put("k", &id, b"v", Duration::ZERO).await;
        assert_eq!(shared.put_new("k", &id, Duration::ZERO).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a zero TTL stores nothing");
    }
}
