//! `userinfo` (Kong's auth method): an opaque token is valid when the provider's userinfo endpoint answers it,
//! and that answer's claims feed access control and upstream headers as a JWT's do.
//!
//! The call is a GET with `Authorization: Bearer <token>` (RFC 6750 2.1, no client authentication) and
//! `Accept: application/json`. A 200 JSON object with a `sub` is the identity; 401 or 403 says the token is not
//! valid (401 `invalid_token`, kept `cache_ttl_neg_secs`); anything else (another status, a transport failure, a
//! body that is not a JSON object with `sub`, a signed or encrypted `application/jwt` answer) is an outage of the
//! provider as far as the caller is concerned: 503, never cached. Answers are cached by a hash of (provider,
//! policy, token) for `cache_user_info_secs` (a userinfo answer has no `exp`, so a revoked token is honoured at
//! most that long); concurrent misses for one token make one call; with a shared store (Redis) answers are also
//! kept there, sealed, under the same hash, exactly as [`super::introspection`] does.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cache::{self, Expires};
use crate::clock::Clock;
use crate::config::Policy;
use crate::flow::bearer::Verified;
use crate::flow::{NoAnswer, Shared, Standing, cached_idp_answer};
use crate::provider::{Endpoint, IdpError, Provider};
use crate::telemetry::Metrics;

/// Why a token was refused by the `userinfo` method.
#[derive(Debug, thiserror::Error)]
pub enum UserinfoError {
    /// Too long, empty or not a token.
    #[error("the token is malformed")]
    Malformed,
    /// The userinfo endpoint refused the token (401 or 403), or it is a JWT that says it is no access token.
    #[error("the token is not valid at the userinfo endpoint")]
    Invalid,
    /// The provider could not answer, or answered something we cannot use.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
}

/// A userinfo answer, kept until `until` (seconds since the epoch on the [`Clock`]).
#[derive(Debug)]
enum Answer {
    /// 200 with a JSON object holding `sub`.
    Valid { verified: Arc<Verified>, until: u64 },
    /// 401 or 403: the token is not valid.
    Refused { until: u64 },
}

impl Standing for Answer {
    fn until(&self) -> u64 {
        match self {
            Answer::Valid { until, .. } | Answer::Refused { until } => *until,
        }
    }
}

impl Expires for Answer {
    fn ttl(&self, now: u64) -> Duration {
        Duration::from_secs(self.until().saturating_sub(now))
    }
}

/// An answer as the shared store keeps it (JSON, sealed by the store; never the token).
#[derive(Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "lowercase")]
enum Stored {
    Valid {
        claims: Map<String, Value>,
        until: u64,
    },
    Refused {
        until: u64,
    },
}

impl Stored {
    fn of(a: &Answer) -> Self {
        match a {
            Answer::Valid { verified, until } => Stored::Valid {
                claims: verified.claims.clone(),
                until: *until,
            },
            Answer::Refused { until } => Stored::Refused { until: *until },
        }
    }

    /// The answer, unless it is one this replica would not have made (a `Valid` without `sub`).
    fn answer(self) -> Option<Answer> {
        match self {
            Stored::Valid { claims, until } => has_sub(&claims).then(|| Answer::Valid {
                verified: Arc::new(Verified {
                    claims,
                    exp: u64::MAX,
                }),
                until,
            }),
            Stored::Refused { until } => Some(Answer::Refused { until }),
        }
    }
}

/// The store's kind for userinfo answers.
const SHARED_KIND: &str = "userinfo";

/// The userinfo client and its answer cache.
pub struct UserinfoClient {
    cache: moka::future::Cache<cache::Key, Arc<Answer>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// The second level shared with the other replicas (Redis), if any.
    shared: Option<Shared>,
}

impl std::fmt::Debug for UserinfoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserinfoClient")
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

impl UserinfoClient {
    /// A cache bounded to `max_entries` answers, over `shared` when the replicas share a store.
    pub fn new(
        max_entries: u64,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shared: Option<Shared>,
    ) -> Self {
        UserinfoClient {
            cache: cache::until_deadline(max_entries.max(1), clock.clone()),
            clock,
            metrics,
            shared,
        }
    }

    /// The userinfo claims of a token for a policy (cache first).
    pub async fn userinfo(
        &self,
        provider: &Provider,
        policy: &Policy,
        token: &str,
    ) -> Result<Arc<Verified>, UserinfoError> {
        // An ID token (or a JWT that says it is no access token) is never sent: the userinfo endpoint takes access
        // tokens only.
        let caching = policy.cache_user_info_secs > 0 || policy.cache_ttl_neg_secs > 0;
        let answer = cached_idp_answer(
            &self.cache,
            &*self.clock,
            &self.metrics,
            "userinfo",
            (provider, policy, token),
            caching,
            |k| async move {
                match k {
                    Some(k) => self.ask_shared(&k, provider, policy, token).await,
                    None => self.ask(provider, policy, token).await,
                }
            },
        )
        .await
        .map_err(|e| match e {
            NoAnswer::Malformed => UserinfoError::Malformed,
            NoAnswer::NotAccessToken => UserinfoError::Invalid,
            NoAnswer::Idp(e) => UserinfoError::Idp(e),
        })?;
        match answer.as_ref() {
            Answer::Refused { .. } => Err(UserinfoError::Invalid),
            Answer::Valid { verified, .. } => Ok(verified.clone()),
        }
    }

    /// The store's answer for `k` when the replicas share one and it still stands, else the IdP's (then stored
    /// for the others until it expires). A store that fails is skipped ([`Shared`]).
    async fn ask_shared(
        &self,
        k: &cache::Key,
        provider: &Provider,
        policy: &Policy,
        token: &str,
    ) -> Result<Arc<Answer>, IdpError> {
        let Some(shared) = &self.shared else {
            return self.ask(provider, policy, token).await;
        };
        let now = self.clock.now();
        let stored = shared
            .get(SHARED_KIND, k)
            .await
            .and_then(|v| serde_json::from_slice::<Stored>(&v).ok())
            .and_then(Stored::answer)
            .filter(|a| a.stands(now));
        self.metrics
            .cache_lookup("userinfo_shared", stored.is_some());
        if let Some(a) = stored {
            return Ok(Arc::new(a));
        }
        let answer = self.ask(provider, policy, token).await?;
        let ttl = answer.ttl(self.clock.now());
        if let Ok(v) = serde_json::to_vec(&Stored::of(&answer)) {
            shared.put(SHARED_KIND, k, &v, ttl).await;
        }
        Ok(answer)
    }

    /// One call to the userinfo endpoint.
    async fn ask(
        &self,
        provider: &Provider,
        policy: &Policy,
        token: &str,
    ) -> Result<Arc<Answer>, IdpError> {
        let meta = provider.metadata().await?;
        let Some(url) = meta.userinfo_endpoint.clone() else {
            tracing::error!(provider = %provider.name(), "the `userinfo` auth method needs a userinfo_endpoint: neither discovered nor configured");
            return Err(IdpError::NoEndpoint("userinfo_endpoint"));
        };
        let (status, body) = provider.get_bearer(Endpoint::Userinfo, &url, token).await?;
        let now = self.clock.now();
        match status {
            200 => {}
            401 | 403 => {
                return Ok(Arc::new(Answer::Refused {
                    until: now.saturating_add(policy.cache_ttl_neg_secs),
                }));
            }
            _ => {
                return Err(IdpError::Status {
                    endpoint: "userinfo",
                    status,
                });
            }
        }
        let claims = parse(&body).inspect_err(|e| {
            tracing::error!(provider = %provider.name(), error = %e, "the userinfo endpoint answered something this service cannot use");
        })?;
        Ok(Arc::new(Answer::Valid {
            verified: Arc::new(Verified {
                claims,
                exp: u64::MAX,
            }),
            until: now.saturating_add(policy.cache_user_info_secs),
        }))
    }
}

/// A 200 answer's claims: a JSON object with a non-empty string `sub`. A signed or encrypted answer
/// (`application/jwt`, OpenID Connect Core 5.3.2) is refused as unsupported: it is the client registration's
/// choice (`userinfo_signed_response_alg`), not the caller's fault, so it is a provider error (503), not a 401.
fn parse(body: &[u8]) -> Result<Map<String, Value>, IdpError> {
    let garbage = |reason: &str| IdpError::Garbage {
        endpoint: "userinfo",
        reason: reason.to_string(),
    };
    let claims: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(garbage("not a JSON object")),
        Err(_) if looks_like_jwt(body) => {
            return Err(garbage(
                "a signed or encrypted (application/jwt) answer, which is not supported: register the client without userinfo_signed_response_alg",
            ));
        }
        Err(_) => return Err(garbage("not JSON")),
    };
    if !has_sub(&claims) {
        return Err(garbage("no `sub`"));
    }
    Ok(claims)
}

/// Whether the claims hold a non-empty string `sub`.
fn has_sub(claims: &Map<String, Value>) -> bool {
    claims
        .get("sub")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

/// Whether a body reads as a compact JWS (3 parts) or JWE (5 parts) of base64url characters.
fn looks_like_jwt(body: &[u8]) -> bool {
    let body = body.trim_ascii();
    let parts = body.split(|b| *b == b'.').count();
    (parts == 3 || parts == 5)
        && body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_json_object_with_sub_is_an_answer_anything_else_is_garbage() {
        let ok = parse(br#"{"sub": "alice", "email": "a@example.com"}"#).unwrap();
        assert_eq!(ok["email"], "a@example.com");
        for (body, why) in [
            (&br#"{"email": "a@example.com"}"#[..], "no `sub`"),
            (br#"{"sub": 7}"#, "no `sub`"),
            (br#"{"sub": ""}"#, "no `sub`"),
            (br#"["sub"]"#, "not a JSON object"),
            (b"<html>", "not JSON"),
            (
                b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln\n",
                "application/jwt",
            ),
            (b"eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "application/jwt"),
        ] {
            match parse(body) {
                Err(IdpError::Garbage { endpoint, reason }) => {
                    assert_eq!(endpoint, "userinfo");
                    assert!(reason.contains(why), "{reason} for {body:?}");
                }
                other => panic!("{other:?} for {body:?}"),
            }
        }
        assert!(!looks_like_jwt(b"a.b"));
        assert!(!looks_like_jwt(b"a b.c.d"));
    }

    /// An answer read back from the store is the one stored; one without `sub` is no answer.
    #[test]
    fn stored_answers_read_back() {
        let claims = json!({"sub": "alice", "groups": ["a"]});
        let valid = Answer::Valid {
            verified: Arc::new(Verified {
                claims: claims.as_object().unwrap().clone(),
                exp: u64::MAX,
            }),
            until: 500,
        };
        for a in [valid, Answer::Refused { until: 30 }] {
            let json = serde_json::to_vec(&Stored::of(&a)).unwrap();
            let back = serde_json::from_slice::<Stored>(&json)
                .unwrap()
                .answer()
                .unwrap();
            assert_eq!(back.until(), a.until());
            assert!(back.stands(a.until() - 1) && !back.stands(a.until()));
            match (&a, &back) {
                (Answer::Valid { verified: x, .. }, Answer::Valid { verified: y, .. }) => {
                    assert_eq!(x.claims, y.claims);
                }
                (Answer::Refused { .. }, Answer::Refused { .. }) => {}
                _ => panic!("{a:?} came back as {back:?}"),
            }
        }
        let no_sub = br#"{"answer": "valid", "claims": {"email": "x"}, "until": 9}"#;
        assert!(
            serde_json::from_slice::<Stored>(no_sub)
                .unwrap()
                .answer()
                .is_none()
        );
    }
}
