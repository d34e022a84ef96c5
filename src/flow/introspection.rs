//! `introspection`: RFC 7662. The token goes to the provider's introspection endpoint with this service's client
//! authentication; `active: true` answers feed access control and upstream headers exactly as JWT claims do.
//! Answers are cached by a hash of (provider, policy, token): active ones for `cache_introspection_secs` but never
//! beyond the token's `exp`, inactive ones for `cache_ttl_neg_secs`; concurrent misses for one token make one
//! call; IdP errors are never cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::{MAX_TOKEN_BYTES, Policy};
use crate::flow::bearer::Verified;
use crate::provider::{IdpError, Provider};
use crate::telemetry::Metrics;

/// Why an introspected token was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    /// Too long, empty or not a token.
    #[error("the token is malformed")]
    Malformed,
    /// The provider says `active: false`.
    #[error("the token is not active")]
    Inactive,
    /// Active, but issued by another issuer or already expired.
    #[error("the token is not valid for this provider")]
    Invalid,
    /// The provider could not answer.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
}

#[derive(Debug)]
enum Answer {
    Active {
        verified: Arc<Verified>,
        ttl: Duration,
    },
    Inactive {
        ttl: Duration,
    },
}

struct AnswerExpiry;

impl Expiry<[u8; 32], Arc<Answer>> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<Answer>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(match v.as_ref() {
            Answer::Active { ttl, .. } | Answer::Inactive { ttl } => *ttl,
        })
    }
}

/// The introspection client and its answer cache.
pub struct Introspector {
    cache: moka::future::Cache<[u8; 32], Arc<Answer>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

fn key(provider: &Provider, policy: &Policy, token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [provider.name(), policy.name.as_str(), token] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

fn num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

impl Introspector {
    /// A cache bounded to `max_entries` answers.
    pub fn new(max_entries: u64, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(max_entries.max(1))
            .expire_after(AnswerExpiry)
            .build();
        Introspector {
            cache,
            clock,
            metrics,
        }
    }

    /// Introspects a token for a policy (cache first).
    pub async fn introspect(
        &self,
        provider: &Provider,
        policy: &Policy,
        token: &str,
    ) -> Result<Arc<Verified>, IntrospectionError> {
        if token.is_empty()
            || token.len() > MAX_TOKEN_BYTES
            || token.bytes().any(|b| !b.is_ascii_graphic())
        {
            return Err(IntrospectionError::Malformed);
        }
        let caching = policy.cache_introspection_secs > 0 || policy.cache_ttl_neg_secs > 0;
        let answer = if !caching {
            self.ask(provider, policy, token)
                .await
                .map_err(IntrospectionError::Idp)?
        } else {
            let k = key(provider, policy, token);
            match self.cache.get(&k).await {
                Some(a) => {
                    self.metrics.cache_lookup("introspection", true);
                    a
                }
                None => {
                    self.metrics.cache_lookup("introspection", false);
                    let answer = self
                        .cache
                        .try_get_with(k, self.ask(provider, policy, token))
                        .await
                        .map_err(|e: Arc<IdpError>| IntrospectionError::Idp((*e).clone()))?;
                    // A zero TTL means "do not keep": drop what try_get_with stored for the waiters.
                    if matches!(answer.as_ref(), Answer::Active { ttl, .. } | Answer::Inactive { ttl } if ttl.is_zero())
                    {
                        self.cache.invalidate(&k).await;
                    }
                    answer
                }
            }
        };
        match answer.as_ref() {
            Answer::Inactive { .. } => Err(IntrospectionError::Inactive),
            Answer::Active { verified, .. } => {
                // The cache may keep an entry a moment past `exp`; the clock decides.
                if verified.exp != u64::MAX
                    && self.clock.now() > verified.exp.saturating_add(provider.config.leeway_secs)
                {
                    return Err(IntrospectionError::Inactive);
                }
                Ok(verified.clone())
            }
        }
    }

    async fn ask(
        &self,
        provider: &Provider,
        policy: &Policy,
        token: &str,
    ) -> Result<Arc<Answer>, IdpError> {
        let meta = provider.metadata().await?;
        let url = meta
            .introspection_endpoint
            .clone()
            .ok_or(IdpError::NoEndpoint("introspection_endpoint"))?;
        let (client_id, secret) = match (&provider.config.client_id, &provider.config.client_secret)
        {
            (Some(id), Some(secret)) => (id.as_str(), secret),
            _ => {
                return Err(IdpError::NoEndpoint(
                    "client_id and client_secret for introspection",
                ));
            }
        };
        let form = [("token", token), ("token_type_hint", "access_token")];
        let auth = provider.token_auth(&meta);
        let (status, body) = provider
            .post_form("introspection", &url, &form, (client_id, secret), auth)
            .await?;
        if status != 200 {
            // 401 here means *our* client is refused: a configuration problem, not the caller's.
            if status == 401 || status == 403 {
                tracing::error!(provider = %provider.name(), status, "the introspection endpoint refused this service's client credentials");
            }
            return Err(IdpError::Status {
                endpoint: "introspection",
                status,
            });
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(&body).map_err(|e| IdpError::Garbage {
                endpoint: "introspection",
                reason: e.to_string(),
            })?;
        let neg = Duration::from_secs(policy.cache_ttl_neg_secs);
        let active = match claims.get("active") {
            Some(Value::Bool(b)) => *b,
            _ => {
                return Err(IdpError::Garbage {
                    endpoint: "introspection",
                    reason: "no boolean `active`".into(),
                });
            }
        };
        if !active {
            return Ok(Arc::new(Answer::Inactive { ttl: neg }));
        }
        let now = self.clock.now();
        let exp = num(claims.get("exp"));
        let expired = exp.is_some_and(|e| now > e.saturating_add(provider.config.leeway_secs));
        let wrong_issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .is_some_and(|i| i != provider.config.issuer);
        // An access token for another API of the same issuer, or a refresh/ID token, is not a credential here.
        let audiences = &provider.config.audiences;
        let wrong_audience = !audiences.is_empty()
            && match claims.get("aud") {
                None => false,
                Some(Value::String(a)) => !audiences.iter().any(|x| x == a),
                Some(Value::Array(v)) => !v
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| audiences.iter().any(|x| x == a)),
                Some(_) => true,
            };
        let wrong_type = claims
            .get("token_type")
            .and_then(Value::as_str)
            .is_some_and(|t| {
                !(t.eq_ignore_ascii_case("bearer")
                    || t.eq_ignore_ascii_case("access_token")
                    || t.eq_ignore_ascii_case("dpop"))
            });
        if expired || wrong_issuer || wrong_audience || wrong_type {
            tracing::warn!(provider = %provider.name(), expired, wrong_issuer, wrong_audience, wrong_type, "introspection said active for a token this provider config does not accept; refusing");
            return Ok(Arc::new(Answer::Inactive { ttl: neg }));
        }
        let mut ttl = policy.cache_introspection_secs;
        if let Some(e) = exp {
            ttl = ttl.min(e.saturating_sub(now));
        }
        let verified = Arc::new(Verified {
            claims,
            exp: exp.unwrap_or(u64::MAX),
        });
        Ok(Arc::new(Answer::Active {
            verified,
            ttl: Duration::from_secs(ttl),
        }))
    }
}
