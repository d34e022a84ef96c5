//! `client_credentials`: the client's id and secret arrive (`Authorization: Basic`, or request headers where the
//! policy allows); we run the client-credentials grant at the provider's token endpoint with them and forward the
//! access token upstream. Tokens are cached per (provider, client_id, secret, scopes) by a SHA-256 of those, never
//! by the secret in clear, until shortly before `expires_in`; concurrent misses make one token request; refused
//! credentials are cached for a short time so a guessing loop cannot hammer the IdP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use moka::Expiry;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::{Policy, Secret};
use crate::provider::{IdpError, Provider};
use crate::request::CheckView;
use crate::telemetry::Metrics;

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
    let id = view.header_values(id_h.as_str());
    let secret = view.header_values(secret_h.as_str());
    if id.is_empty() && secret.is_empty() {
        return None;
    }
    Some(match (id.as_slice(), secret.as_slice()) {
        ([Some(id)], [Some(secret)])
            if !id.is_empty()
                && !secret.is_empty()
                && id.len() <= MAX_CREDENTIAL
                && secret.len() <= MAX_CREDENTIAL =>
        {
            Ok(ClientCreds {
                client_id: id.to_string(),
                secret: Secret::new(*secret),
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
    Refused { reason: Refusal, ttl: Duration },
}

/// Why the IdP refused a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
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
    Refused(Refusal),
    /// The IdP could not be asked, or answered 5xx or garbage.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
}

struct GrantExpiry;

impl Expiry<[u8; 32], Arc<Grant>> for GrantExpiry {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<Grant>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(match v.as_ref() {
            Grant::Token { ttl, .. } | Grant::Refused { ttl, .. } => *ttl,
        })
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

/// The token cache and the grant.
pub struct ClientCredentials {
    cache: moka::future::Cache<[u8; 32], Arc<Grant>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
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
    /// A cache bounded to `max_entries` credentials.
    pub fn new(max_entries: u64, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(max_entries.max(1))
            .expire_after(GrantExpiry)
            .build();
        ClientCredentials {
            cache,
            clock,
            metrics,
        }
    }

    fn key(provider: &Provider, creds: &ClientCreds, scopes: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            provider.name(),
            creds.client_id.as_str(),
            creds.secret.expose(),
            scopes,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// An access token for these credentials: from the cache, or one grant shared by every concurrent caller.
    pub async fn token(
        &self,
        provider: &Provider,
        policy: &Policy,
        creds: &ClientCreds,
    ) -> Result<Arc<str>, CcError> {
        let scopes = policy.scopes.join(" ");
        let key = Self::key(provider, creds, &scopes);
        let now = self.clock.now();
        let cached = self.cache.get(&key).await;
        let fresh = |g: &Grant| match g {
            Grant::Token { expires_at, .. } => *expires_at > now,
            Grant::Refused { .. } => true,
        };
        let grant = match cached {
            Some(g) if fresh(&g) => {
                self.metrics.cache_lookup("client_credentials", true);
                g
            }
            stale => {
                if stale.is_some() {
                    self.cache.invalidate(&key).await;
                }
                self.metrics.cache_lookup("client_credentials", false);
                let neg_ttl = Duration::from_secs(policy.cache_ttl_neg_secs.max(1));
                self.cache
                    .try_get_with(key, self.grant(provider, creds, &scopes, neg_ttl))
                    .await
                    .map_err(|e: Arc<IdpError>| CcError::Idp((*e).clone()))?
            }
        };
        match grant.as_ref() {
            Grant::Token { access_token, .. } => Ok(access_token.clone()),
            Grant::Refused { reason, .. } => Err(CcError::Refused(*reason)),
        }
    }

    async fn grant(
        &self,
        provider: &Provider,
        creds: &ClientCreds,
        scopes: &str,
        neg_ttl: Duration,
    ) -> Result<Arc<Grant>, IdpError> {
        let meta = provider.metadata().await?;
        let url = meta
            .token_endpoint
            .clone()
            .ok_or(IdpError::NoEndpoint("token_endpoint"))?;
        let mut form = vec![("grant_type", "client_credentials")];
        if !scopes.is_empty() {
            form.push(("scope", scopes));
        }
        let auth = provider.token_auth(&meta);
        let (status, body) = provider
            .post_form(
                "token",
                &url,
                &form,
                (&creds.client_id, &creds.secret),
                auth,
            )
            .await?;
        if status == 200 {
            let t: TokenResponse =
                serde_json::from_slice(&body).map_err(|e| IdpError::Garbage {
                    endpoint: "token",
                    reason: e.to_string(),
                })?;
            if t.access_token.is_empty() {
                return Err(IdpError::Garbage {
                    endpoint: "token",
                    reason: "empty access_token".into(),
                });
            }
            let expires_in = match t.expires_in {
                Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(300),
                Some(serde_json::Value::String(s)) => s.parse().unwrap_or(300),
                _ => 300,
            };
            let life = expires_in.saturating_sub(margin(expires_in)).max(1);
            return Ok(Arc::new(Grant::Token {
                access_token: t.access_token.into(),
                expires_at: self.clock.now().saturating_add(life),
                ttl: Duration::from_secs(life),
            }));
        }
        // Server trouble, rate limiting and timeouts are the IdP's state, not a verdict on the credentials.
        if status >= 500 || status == 429 || status == 408 {
            return Err(IdpError::Status {
                endpoint: "token",
                status,
            });
        }
        let error = serde_json::from_slice::<ErrorResponse>(&body)
            .map(|e| e.error)
            .unwrap_or_default();
        let reason = match (status, error.as_str()) {
            (_, "invalid_client" | "unauthorized_client") | (401, _) => Refusal::InvalidClient,
            (_, "invalid_scope") => Refusal::InvalidScope,
            _ => Refusal::Other,
        };
        tracing::info!(provider = %provider.name(), status, error = %error, client_id = %creds.client_id, "token endpoint refused client credentials");
        Ok(Arc::new(Grant::Refused {
            reason,
            ttl: neg_ttl,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn margins() {
        assert_eq!(margin(3600), 30);
        assert_eq!(margin(100), 10);
        assert_eq!(margin(3), 0);
    }
}
