//! `bearer`: JWT access tokens verified locally against the provider's JWKS, with a cache of verified tokens
//! (keyed by a hash of the token, living until `exp`) so a repeated token costs no signature check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::Algorithm;
use moka::Expiry;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::MAX_TOKEN_BYTES;
use crate::provider::jwks::ALLOWED_ALGS;
use crate::provider::{IdpError, KeyError, Provider};
use crate::telemetry::Metrics;

/// A verified token's claims.
#[derive(Debug)]
pub struct Verified {
    /// Every claim of the token.
    pub claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
}

/// Why a bearer token was refused. Texts are fixed: nothing from the token is echoed.
#[derive(Debug, thiserror::Error)]
pub enum BearerError {
    /// Too long to be a token.
    #[error("the token is too large")]
    TooLarge,
    /// Not a compact JWS.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `alg` is none, HMAC, or otherwise not accepted.
    #[error("the token's signing algorithm is not accepted")]
    Algorithm,
    /// No key of the provider can verify it.
    #[error("no signing key of the provider matches the token")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token signature is invalid")]
    Signature,
    /// `iss` is not the provider's issuer.
    #[error("the token was issued by another issuer")]
    Issuer,
    /// `aud` names none of the accepted audiences.
    #[error("the token is not meant for this audience")]
    Audience,
    /// `exp` is missing or not a number.
    #[error("the token has no valid expiry")]
    NoExpiry,
    /// `exp` is in the past (beyond leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future (beyond leeway).
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// The keys could not be loaded.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
}

/// base64url, padding optional (some issuers pad).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

struct UntilExp;

impl Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Verified>,
        _now: Instant,
    ) -> Option<Duration> {
        let now = crate::clock::SystemClock.now();
        Some(Duration::from_secs(
            value.exp.saturating_sub(now).clamp(1, 24 * 3600),
        ))
    }
}

/// Verifies bearer JWTs and remembers the verified ones.
pub struct BearerVerifier {
    cache: Option<moka::future::Cache<[u8; 32], Arc<Verified>>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for BearerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerVerifier")
            .field("cached", &self.cache.as_ref().map(|c| c.entry_count()))
            .finish()
    }
}

/// Cheap shape check before any parsing: three base64url parts (a JWE has five and is refused).
fn looks_like_jws(token: &str) -> bool {
    // One pass: base64url characters and exactly two dots, header and payload non-empty.
    let mut dots = 0;
    let mut segment_len = 0;
    for b in token.bytes() {
        match b {
            b'.' => {
                if segment_len == 0 && dots < 2 {
                    return false;
                }
                dots += 1;
                segment_len = 0;
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'=' => segment_len += 1,
            _ => return false,
        }
    }
    dots == 2
}

impl BearerVerifier {
    /// A verifier with a cache of at most `max_entries` tokens (0: no cache).
    pub fn new(max_entries: u64, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        let cache = (max_entries > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExp)
                .build()
        });
        BearerVerifier {
            cache,
            clock,
            metrics,
        }
    }

    /// Whether the token has the shape of a JWT (used to tell JWTs from opaque tokens).
    pub fn is_jwt(token: &str) -> bool {
        token.len() <= MAX_TOKEN_BYTES && looks_like_jws(token)
    }

    /// Verifies a token for a provider: cache first, then signature and claims.
    pub async fn verify(
        &self,
        provider: &Provider,
        token: &str,
    ) -> Result<Arc<Verified>, BearerError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(BearerError::TooLarge);
        }
        // Shape and signature are checked in verify_signature; the cache holds only verified tokens.
        let Some(cache) = &self.cache else {
            return Ok(Arc::new(self.verify_uncached(provider, token).await?));
        };
        let key = cache_key(provider.name(), token);
        {
            if let Some(v) = cache.get(&key).await {
                self.metrics.cache_lookup("token", true);
                // The cache's own expiry is approximate; the clock decides.
                if self.clock.now() > v.exp.saturating_add(provider.config.leeway_secs) {
                    cache.invalidate(&key).await;
                    return Err(BearerError::Expired);
                }
                return Ok(v);
            }
            self.metrics.cache_lookup("token", false);
        }
        let verified = Arc::new(self.verify_uncached(provider, token).await?);
        cache.insert(key, verified.clone()).await;
        Ok(verified)
    }

    async fn verify_uncached(
        &self,
        provider: &Provider,
        token: &str,
    ) -> Result<Verified, BearerError> {
        let claims = verify_signature(provider, token).await?;
        let exp = check_claims(&claims, provider, self.clock.now())?;
        Ok(Verified { claims, exp })
    }
}

/// Checks a compact JWS's shape, algorithm and signature against the provider's keys; returns its claims
/// (not yet checked: the caller checks them for its kind of token).
pub async fn verify_signature(
    provider: &Provider,
    token: &str,
) -> Result<Map<String, Value>, BearerError> {
    {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(BearerError::TooLarge);
        }
        if !looks_like_jws(token) {
            return Err(BearerError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| BearerError::Malformed)?;
        let alg = header.alg;
        if !ALLOWED_ALGS.contains(&alg) {
            return Err(BearerError::Algorithm);
        }
        let keys = match provider.keys_for(header.kid.as_deref(), alg).await {
            Ok(k) => k,
            Err(KeyError::Unknown) => return Err(BearerError::UnknownKey),
            Err(KeyError::Idp(e)) => return Err(BearerError::Idp(e)),
        };
        if keys.is_empty() {
            // The kid exists but its key may not sign with this alg: alg confusion or a pinned alg.
            return Err(if header.kid.is_some() {
                BearerError::Algorithm
            } else {
                BearerError::UnknownKey
            });
        }
        // Verify the signature over `header.payload` once, then parse the payload once: the claim checks are ours
        // (check_claims), so jsonwebtoken's second parse for its own validation is not needed.
        let (message, signature) = token.rsplit_once('.').ok_or(BearerError::Malformed)?;
        let payload_b64 = message
            .split_once('.')
            .map(|(_, p)| p)
            .ok_or(BearerError::Malformed)?;
        let signature = B64URL
            .decode(signature)
            .map_err(|_| BearerError::Malformed)?;
        let verified = keys
            .iter()
            .any(|k| k.verify(alg, message.as_bytes(), &signature));
        if !verified {
            return Err(BearerError::Signature);
        }
        let payload = B64URL
            .decode(payload_b64)
            .map_err(|_| BearerError::Malformed)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| BearerError::Malformed)?;
        Ok(claims)
    }
}

fn cache_key(provider: &str, token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(provider.as_bytes());
    h.update([0u8]);
    h.update(token.as_bytes());
    h.finalize().into()
}

fn num(claims: &Map<String, Value>, name: &str) -> Option<Option<u64>> {
    match claims.get(name) {
        None => Some(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some),
        Some(_) => None,
    }
}

/// Checks iss, aud, exp, nbf and iat; returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    provider: &Provider,
    now: u64,
) -> Result<u64, BearerError> {
    let leeway = provider.config.leeway_secs;
    if claims.get("iss").and_then(Value::as_str) != Some(provider.config.issuer.as_str()) {
        return Err(BearerError::Issuer);
    }
    let audiences = &provider.config.audiences;
    if !audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(BearerError::Audience);
        }
    }
    let exp = num(claims, "exp").flatten().ok_or(BearerError::NoExpiry)?;
    if now > exp.saturating_add(leeway) {
        return Err(BearerError::Expired);
    }
    match num(claims, "nbf") {
        None => return Err(BearerError::Malformed),
        Some(Some(nbf)) if nbf > now.saturating_add(leeway) => {
            return Err(BearerError::NotYetValid);
        }
        _ => {}
    }
    match num(claims, "iat") {
        None => return Err(BearerError::Malformed),
        Some(Some(iat)) if iat > now.saturating_add(leeway) => {
            return Err(BearerError::IssuedInFuture);
        }
        _ => {}
    }
    Ok(exp)
}

/// Algorithms named for documentation and tests.
pub fn allowed_algorithms() -> &'static [Algorithm] {
    ALLOWED_ALGS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        assert!(looks_like_jws("a.b.c"));
        assert!(looks_like_jws("a.b."));
        assert!(!looks_like_jws("a.b"));
        assert!(!looks_like_jws("a.b.c.d.e"));
        assert!(!looks_like_jws("a.b.c d"));
        assert!(!looks_like_jws(".b.c"));
        assert!(!BearerVerifier::is_jwt(&"a".repeat(MAX_TOKEN_BYTES + 1)));
    }

    #[test]
    fn cache_key_depends_on_provider() {
        assert_ne!(cache_key("a", "t"), cache_key("b", "t"));
        assert_ne!(cache_key("a", "t1"), cache_key("a", "t2"));
    }
}
