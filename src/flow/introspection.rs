//! `introspection`: RFC 7662. The token goes to the provider's introspection endpoint with this service's client
//! authentication; `active: true` answers feed access control and upstream headers exactly as JWT claims do.
//! Answers are cached by a hash of (provider, policy, token): active ones for `cache_introspection_secs` but never
//! beyond the token's `exp`, inactive ones for `cache_ttl_neg_secs`; concurrent misses for one token make one
//! call; IdP errors are never cached. With a shared store (Redis) the answers are also kept there under the same
//! hash, sealed, until the same moment: a replica missing its own cache looks in the store before asking the IdP,
//! so a new token costs the IdP at most one call per replica, and none once one replica's answer is stored.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cache::{self, Expires};
use crate::clock::Clock;
use crate::config::Policy;
use crate::flow::bearer::{Verified, not_access_token};
use crate::flow::claims::{self, TimeError};
use crate::flow::{NoAnswer, Shared, Standing, cached_idp_answer};
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
    /// Active, but not an access token this provider config accepts (another issuer or audience, a refresh or
    /// ID token, a malformed or past `exp`).
    #[error("the token is not an access token valid for this provider")]
    Invalid,
    /// The provider could not answer.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
}

/// An introspection answer, kept until `until` (seconds since the epoch on the [`Clock`]; `until` = when it came:
/// not kept).
#[derive(Debug)]
enum Answer {
    Active {
        verified: Arc<Verified>,
        until: u64,
    },
    Inactive {
        until: u64,
    },
    /// Active, but not an access token this configuration accepts.
    Refused {
        until: u64,
    },
}

impl Standing for Answer {
    /// Until when the answer is kept.
    fn until(&self) -> u64 {
        match self {
            Answer::Active { until, .. }
            | Answer::Inactive { until }
            | Answer::Refused { until } => *until,
        }
    }
}

/// An answer as the shared store keeps it (JSON, sealed by the store; never the token).
#[derive(Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "lowercase")]
enum Stored {
    Active {
        claims: Map<String, Value>,
        exp: u64,
        until: u64,
    },
    Inactive {
        until: u64,
    },
    Refused {
        until: u64,
    },
}

impl Stored {
    fn of(a: &Answer) -> Self {
        match a {
            Answer::Active { verified, until } => Stored::Active {
                claims: verified.claims.clone(),
                exp: verified.exp,
                until: *until,
            },
            Answer::Inactive { until } => Stored::Inactive { until: *until },
            Answer::Refused { until } => Stored::Refused { until: *until },
        }
    }

    fn answer(self) -> Answer {
        match self {
            Stored::Active { claims, exp, until } => Answer::Active {
                verified: Arc::new(Verified { claims, exp }),
                until,
            },
            Stored::Inactive { until } => Answer::Inactive { until },
            Stored::Refused { until } => Answer::Refused { until },
        }
    }
}

/// The store's kind for introspection answers.
const SHARED_KIND: &str = "introspection";

impl Expires for Answer {
    fn ttl(&self, now: u64) -> Duration {
        Duration::from_secs(self.until().saturating_sub(now))
    }
}

/// The introspection client and its answer cache.
pub struct Introspector {
    cache: moka::future::Cache<cache::Key, Arc<Answer>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// The second level shared with the other replicas (Redis), if any.
    shared: Option<Shared>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

impl Introspector {
    /// A cache bounded to `max_entries` answers, over `shared` when the replicas share a store.
    pub fn new(
        max_entries: u64,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shared: Option<Shared>,
    ) -> Self {
        let cache = cache::until_deadline(max_entries.max(1), clock.clone());
        Introspector {
            cache,
            clock,
            metrics,
            shared,
        }
    }

    /// Introspects a token for a policy (cache first).
    pub async fn introspect(
        &self,
        provider: &Provider,
        policy: &Policy,
        token: &str,
    ) -> Result<Arc<Verified>, IntrospectionError> {
        // An ID token (or another JWT that says it is no access token) is never sent to be introspected: some
        // providers would call it active.
        let caching = policy.cache_introspection_secs > 0 || policy.cache_ttl_neg_secs > 0;
        let answer = cached_idp_answer(
            &self.cache,
            &*self.clock,
            &self.metrics,
            "introspection",
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
            NoAnswer::Malformed => IntrospectionError::Malformed,
            NoAnswer::NotAccessToken => IntrospectionError::Invalid,
            NoAnswer::Idp(e) => IntrospectionError::Idp(e),
        })?;
        match answer.as_ref() {
            Answer::Inactive { .. } => Err(IntrospectionError::Inactive),
            Answer::Refused { .. } => Err(IntrospectionError::Invalid),
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
        // An active answer is checked again against this replica's provider config (another replica may run
        // another config during a rollout): one it would not accept is no answer, and the IdP is asked.
        let now = self.clock.now();
        let stored = shared
            .get(SHARED_KIND, k)
            .await
            .and_then(|v| serde_json::from_slice::<Stored>(&v).ok())
            .map(Stored::answer)
            .filter(|a| a.stands(now))
            .filter(|a| match a {
                Answer::Active { verified, .. } => refusal(&verified.claims, provider, now).is_ok(),
                Answer::Inactive { .. } | Answer::Refused { .. } => true,
            });
        self.metrics
            .cache_lookup("introspection_shared", stored.is_some());
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
        let Some(client) = provider.own_client() else {
            return Err(IdpError::NoEndpoint(
                "client_id and client_secret for introspection",
            ));
        };
        let form = [("token", token), ("token_type_hint", "access_token")];
        let auth = provider.token_auth(&meta);
        let (status, body) = provider
            .post_form(
                crate::provider::Endpoint::Introspection,
                &url,
                &form,
                client,
                auth,
            )
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
        let mut claims: Map<String, Value> =
            serde_json::from_slice(&body).map_err(|e| IdpError::Garbage {
                endpoint: "introspection",
                reason: e.to_string(),
            })?;
        let now = self.clock.now();
        let neg = now.saturating_add(policy.cache_ttl_neg_secs);
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
            return Ok(Arc::new(Answer::Inactive { until: neg }));
        }
        let exp = match refusal(&claims, provider, now) {
            Ok(exp) => exp,
            Err(why) => {
                tracing::warn!(provider = %provider.name(), reason = why, "introspection said active for a token this provider config does not accept; refusing");
                return Ok(Arc::new(Answer::Refused { until: neg }));
            }
        };
        // An answer without `iss` (RFC 7662 makes it optional): the provider that vouched for the token is its issuer,
        // so headers, metadata and the decision log show the issuer actually used (a policy may have several).
        claims
            .entry("iss")
            .or_insert_with(|| Value::String(provider.config.issuer.clone()));
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
            until: now.saturating_add(ttl),
        }))
    }
}

/// Whether an access token's `token_type` (RFC 7662 2.2) names an access token: `Bearer`, `DPoP`, `access_token`
/// or RFC 8693's access-token URN.
fn access_token_type(t: &str) -> bool {
    [
        "bearer",
        "dpop",
        "access_token",
        "urn:ietf:params:oauth:token-type:access_token",
    ]
    .iter()
    .any(|ok| t.eq_ignore_ascii_case(ok))
}

/// Checks an `active: true` answer: `Ok(exp)` when it is an access token this provider accepts, else why not.
/// - `iss`, when given, is the provider's issuer;
/// - `exp`, `nbf` and `iat`, when given, are valid NumericDates (a malformed or negative `exp` is refused, not
///   read as "no expiry"); `exp` is not past and `nbf` not in the future (with leeway);
/// - `token_type`, when given, is an access-token type, and the claims do not mark an ID or refresh token;
/// - with `audiences`, `aud` is present and names one of them; without (`allow_any_audience`), the answer must
///   still show an access token by a `token_type` or an `aud` (oidc-provider answers a refresh token with neither).
fn refusal(
    claims: &Map<String, Value>,
    provider: &Provider,
    now: u64,
) -> Result<Option<u64>, &'static str> {
    let config = &provider.config;
    if claims.contains_key("iss") && !claims::issuer_is(claims, &config.issuer) {
        return Err("issuer");
    }
    let exp = claims::check_times(claims, now, config.leeway_secs, claims::INTROSPECTION)
        .map_err(TimeError::reason)?;
    let token_type = match claims.get("token_type") {
        None => None,
        Some(Value::String(t)) if access_token_type(t) => Some(t.as_str()),
        Some(_) => return Err("not an access token (token_type)"),
    };
    if not_access_token(claims, provider) {
        return Err("not an access token");
    }
    let audiences = &config.audiences;
    if !audiences.is_empty() {
        if !claims::audience_in(claims.get("aud"), audiences) {
            return Err("audience");
        }
    } else if token_type.is_none() && claims.get("aud").is_none() {
        return Err("neither token_type nor aud: cannot tell an access token");
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::bearer::tests::provider;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn answer(extra: Value) -> Map<String, Value> {
        let base = json!({
            "active": true, "iss": "https://idp.example.com/oauth2/default", "sub": "alice", "client_id": "cc-app",
            "scope": "api:read", "iat": NOW, "exp": NOW + 3600,
        });
        crate::flow::claims::tests::with(base, extra)
    }

    /// An answer read back from the store is the one stored, and stands until the same moment.
    #[test]
    fn stored_answers_read_back() {
        let active = Answer::Active {
            verified: Arc::new(Verified {
                claims: answer(json!({})),
                exp: NOW + 3600,
            }),
            until: NOW + 300,
        };
        for a in [
            active,
            Answer::Inactive { until: NOW + 30 },
            Answer::Refused { until: NOW + 30 },
        ] {
            let json = serde_json::to_vec(&Stored::of(&a)).unwrap();
            let back = serde_json::from_slice::<Stored>(&json).unwrap().answer();
            assert_eq!(back.until(), a.until());
            assert!(back.stands(a.until() - 1) && !back.stands(a.until()));
            match (&a, &back) {
                (Answer::Active { verified: x, .. }, Answer::Active { verified: y, .. }) => {
                    assert_eq!(x.claims, y.claims);
                    assert_eq!(x.exp, y.exp);
                }
                (Answer::Inactive { .. }, Answer::Inactive { .. })
                | (Answer::Refused { .. }, Answer::Refused { .. }) => {}
                _ => panic!("{a:?} came back as {back:?}"),
            }
        }
    }

    #[test]
    fn refresh_and_id_token_answers_are_refused() {
        let p = provider(r#"["api://default"]"#);
        let any = provider("[]");
        // oidc-provider's answer for a refresh token: no aud, no token_type
        let refresh = answer(json!({}));
        assert_eq!(refusal(&refresh, &p, NOW), Err("audience"));
        assert!(refusal(&refresh, &any, NOW).is_err());
        for extra in [
            json!({"aud": "api://default", "token_type": "refresh_token"}),
            json!({"aud": "api://default", "token_type": "urn:ietf:params:oauth:token-type:id_token"}),
            json!({"aud": "api://default", "token_type": 7}),
            json!({"aud": "api://default", "typ": "Refresh"}),
            json!({"aud": "oidc-authz", "nonce": "n", "token_type": "Bearer"}),
            json!({"aud": ["api://default"], "at_hash": "x", "token_type": "Bearer"}),
        ] {
            for prov in [&p, &any] {
                assert!(
                    refusal(&answer(extra.clone()), prov, NOW).is_err(),
                    "{extra}"
                );
            }
        }
        // access tokens: Okta's and oidc-provider's answers
        let okta = answer(json!({"aud": "api://default", "token_type": "Bearer", "uid": "00u1"}));
        assert_eq!(refusal(&okta, &p, NOW), Ok(Some(NOW + 3600)));
        assert_eq!(refusal(&okta, &any, NOW), Ok(Some(NOW + 3600)));
        let no_aud = answer(json!({"token_type": "Bearer"}));
        assert_eq!(refusal(&no_aud, &p, NOW), Err("audience"));
        assert!(refusal(&no_aud, &any, NOW).is_ok(), "allow_any_audience");
        assert!(
            refusal(
                &answer(json!({"aud": "api://default", "token_type": "DPoP"})),
                &p,
                NOW
            )
            .is_ok()
        );
    }

    #[test]
    fn malformed_times_are_refused_not_ignored() {
        let p = provider(r#"["api://default"]"#);
        let ok = json!({"aud": "api://default", "token_type": "Bearer"});
        assert!(refusal(&answer(ok.clone()), &p, NOW).is_ok());
        let mut no_exp = ok.clone();
        no_exp["exp"] = Value::Null;
        assert_eq!(
            refusal(&answer(no_exp), &p, NOW),
            Ok(None),
            "exp is optional in RFC 7662"
        );
        for (k, v) in [
            ("exp", json!(-1)),
            ("exp", json!("1800003600")),
            ("exp", json!(1e300)),
            ("exp", json!(NOW - 100)),
            ("nbf", json!(-1)),
            ("nbf", json!(NOW + 100)),
            ("iat", json!("yesterday")),
            ("iat", json!(1e300)),
        ] {
            let mut a = ok.clone();
            a[k] = v.clone();
            assert!(refusal(&answer(a), &p, NOW).is_err(), "{k} = {v}");
        }
    }
}
