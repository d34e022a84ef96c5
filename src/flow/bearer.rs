//! `bearer`: JWT access tokens verified locally against the provider's JWKS, with a cache of verified tokens
//! (keyed by a hash of the token, living until `exp`) so a repeated token costs no signature check.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use crate::cache::{self, Expires};
use crate::clock::Clock;
use crate::config::MAX_TOKEN_BYTES;
use crate::flow::claims::{self, TimeError, str_or_list};
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
    /// The JWS header has `crit` (RFC 7515 4.1.11): extensions this service does not understand.
    #[error("the token requires header extensions this service does not support")]
    Critical,
    /// An ID token, a logout token or another JWT of the issuer that is not an access token.
    #[error("the token is not an access token")]
    NotAccessToken,
    /// The keys could not be loaded.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
}

/// base64url, padding optional (some issuers pad).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// In the token cache a verified token lives until its `exp` (at least a second, at most a day).
impl Expires for Verified {
    fn ttl(&self, now: u64) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(now).clamp(1, 24 * 3600))
    }
}

/// Verifies bearer JWTs and remembers the verified ones.
pub struct BearerVerifier {
    cache: Option<moka::future::Cache<cache::Key, Arc<Verified>>>,
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
        let cache = (max_entries > 0).then(|| cache::until_deadline(max_entries, clock.clone()));
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
            return Ok(Arc::new(
                Box::pin(self.verify_uncached(provider, token)).await?,
            ));
        };
        let key = cache::key(&[provider.name(), token]);
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
        // Boxed: verifying (maybe fetching the keys) makes a large future, which inline would be part of (and
        // copied with) every Check's, cache hits included.
        let verified = Arc::new(Box::pin(self.verify_uncached(provider, token)).await?);
        cache.insert(key, verified.clone()).await;
        Ok(verified)
    }

    async fn verify_uncached(
        &self,
        provider: &Provider,
        token: &str,
    ) -> Result<Verified, BearerError> {
        let (header, claims) = verify_jws(provider, token).await?;
        check_access_typ(header.typ.as_deref())?;
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
    verify_jws(provider, token).await.map(|(_, claims)| claims)
}

/// [`verify_signature`], also returning the JWS header (for checks of the token's kind).
pub async fn verify_jws(
    provider: &Provider,
    token: &str,
) -> Result<(jsonwebtoken::Header, Map<String, Value>), BearerError> {
    {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(BearerError::TooLarge);
        }
        if !looks_like_jws(token) {
            return Err(BearerError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| BearerError::Malformed)?;
        // RFC 7515 4.1.11: a recipient must refuse a JWS whose `crit` names an extension it does not understand;
        // we understand none (and an empty `crit` is itself invalid).
        if header.crit.is_some() {
            return Err(BearerError::Critical);
        }
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
        Ok((header, claims))
    }
}

/// JWS header `typ` values of access tokens: none, `JWT` (Okta and most issuers) or RFC 9068's `at+jwt`. Anything
/// else (`logout+jwt`, `token-introspection+jwt`, `secevent+jwt`, `dpop+jwt`, ...) is another kind of JWT.
pub fn check_access_typ(typ: Option<&str>) -> Result<(), BearerError> {
    match typ {
        None => Ok(()),
        Some(t)
            if ["JWT", "at+jwt", "application/at+jwt"]
                .iter()
                .any(|ok| t.eq_ignore_ascii_case(ok)) =>
        {
            Ok(())
        }
        Some(_) => Err(BearerError::NotAccessToken),
    }
}

/// Whether claims (of a JWT, or of an introspection answer) are those of an ID token, a refresh token or another
/// token that is not an access token:
/// - `at_hash`, `c_hash`, `s_hash`: ID-token-only claims (OpenID Connect Core 3.1.3.6, 3.3.2.11);
/// - `nonce`: an ID token's, unless Keycloak's `typ: Bearer` says access token (Keycloak before 25 copied the
///   nonce into access tokens);
/// - `typ` (Keycloak) `ID`, `Refresh`, `Offline` or `Logout`; `token_use` (Cognito) other than `access`;
/// - `aud` that is exactly this service's own `client_id` (and nothing else) while `audiences` does not list it,
///   and no `typ: Bearer` / `token_use: access` says otherwise: an ID token of our login.
pub fn not_access_token(claims: &Map<String, Value>, provider: &Provider) -> bool {
    let s = |k: &str| claims.get(k).and_then(Value::as_str);
    if ["at_hash", "c_hash", "s_hash"]
        .iter()
        .any(|k| claims.contains_key(*k))
    {
        return true;
    }
    let typ = s("typ");
    if claims.contains_key("nonce") && !typ.is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
        return true;
    }
    if typ.is_some_and(|t| {
        ["id", "refresh", "offline", "logout"]
            .iter()
            .any(|x| t.eq_ignore_ascii_case(x))
    }) {
        return true;
    }
    if s("token_use").is_some_and(|u| !u.eq_ignore_ascii_case("access"))
        || claims.get("token_use").is_some_and(|u| !u.is_string())
    {
        return true;
    }
    // Only `aud` = exactly our client_id: Keycloak adds our client_id to real access tokens' `aud` next to the
    // API's when the user has roles on our client, and a token that says it is an access token is taken at its word.
    let audiences = &provider.config.audiences;
    let says_access = typ.is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
        || s("token_use").is_some_and(|u| u.eq_ignore_ascii_case("access"));
    if let Some(client_id) = provider.config.client_id.as_deref()
        && !says_access
        && !audiences.iter().any(|a| a == client_id)
        && str_or_list(claims.get("aud")) == [client_id]
    {
        return true;
    }
    false
}

/// Checks an access token's claims: iss, aud, that it is an access token, exp, nbf and iat; returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    provider: &Provider,
    now: u64,
) -> Result<u64, BearerError> {
    let config = &provider.config;
    if !claims::issuer_is(claims, &config.issuer) {
        return Err(BearerError::Issuer);
    }
    if !config.audiences.is_empty() && !claims::audience_in(claims.get("aud"), &config.audiences) {
        return Err(BearerError::Audience);
    }
    if not_access_token(claims, provider) {
        return Err(BearerError::NotAccessToken);
    }
    let exp = claims::check_times(claims, now, config.leeway_secs, claims::ACCESS_TOKEN).map_err(
        |e| match e {
            TimeError::MalformedExp | TimeError::NoExpiry => BearerError::NoExpiry,
            TimeError::Expired => BearerError::Expired,
            TimeError::MalformedNbf | TimeError::MalformedIat => BearerError::Malformed,
            TimeError::NotYetValid => BearerError::NotYetValid,
            TimeError::IssuedInFuture => BearerError::IssuedInFuture,
        },
    )?;
    exp.ok_or(BearerError::NoExpiry)
}

/// A pre-filter for tokens about to be sent elsewhere (introspection): a JWT whose header or claims, read without
/// any signature check, say it is not an access token. Only ever used to refuse, never to accept.
pub fn unverified_not_access_token(token: &str, provider: &Provider) -> bool {
    if token.len() > MAX_TOKEN_BYTES || !looks_like_jws(token) {
        return false;
    }
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return false;
    };
    if check_access_typ(header.typ.as_deref()).is_err() {
        return true;
    }
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| B64URL.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok());
    claims.is_some_and(|c| not_access_token(&c, provider))
}

#[cfg(test)]
pub(crate) mod tests {
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

    pub(crate) fn provider(audiences: &str) -> Provider {
        let toml = format!(
            r#"
[providers.okta]
issuer = "https://idp.example.com/oauth2/default"
client_id = "oidc-authz"
audiences = {audiences}
[policies.api]
provider = "okta"
auth_methods = ["bearer"]
allow_any_audience = {any}
"#,
            any = audiences == "[]"
        );
        let cfg = crate::config::Config::from_toml(&toml).unwrap();
        Provider::new(
            cfg.providers[0].clone(),
            Arc::new(crate::provider::fake::FakeIdp::new()),
            Arc::new(Metrics::new()),
        )
    }

    const NOW: u64 = 1_800_000_000;

    fn claims(extra: Value) -> Map<String, Value> {
        let base = serde_json::json!({
            "iss": "https://idp.example.com/oauth2/default", "aud": "api://default", "sub": "alice",
            "iat": NOW, "exp": NOW + 3600, "scp": ["api:read"],
        });
        crate::flow::claims::tests::with(base, extra)
    }

    #[test]
    fn exp_nbf_iat_out_of_range_are_refused() {
        use serde_json::json;
        let p = provider(r#"["api://default"]"#);
        assert_eq!(
            check_claims(&claims(json!({})), &p, NOW).unwrap(),
            NOW + 3600
        );
        for (extra, want) in [
            (json!({"exp": 1e300}), "NoExpiry"),
            (json!({"exp": -5}), "NoExpiry"),
            (json!({"exp": "9999999999"}), "NoExpiry"),
            (json!({"exp": null}), "NoExpiry"),
            (json!({"nbf": 1e300}), "Malformed"),
            (json!({"nbf": -1}), "Malformed"),
            (json!({"nbf": "0"}), "Malformed"),
            (json!({"iat": 1e300}), "Malformed"),
            (json!({"iat": -1}), "Malformed"),
            (json!({"iat": "now"}), "Malformed"),
        ] {
            let e = check_claims(&claims(extra.clone()), &p, NOW).unwrap_err();
            assert_eq!(format!("{e:?}"), want, "{extra}");
        }
    }

    #[test]
    fn only_access_token_headers_pass() {
        for ok in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt"),
            Some("application/at+JWT"),
        ] {
            assert!(check_access_typ(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "logout+jwt",
            "token-introspection+jwt",
            "secevent+jwt",
            "dpop+jwt",
            "id_token+jwt",
            "",
        ] {
            assert!(
                matches!(
                    check_access_typ(Some(bad)),
                    Err(BearerError::NotAccessToken)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn id_and_refresh_token_claims_are_not_access_tokens() {
        use serde_json::json;
        let p = provider(r#"["api://default"]"#);
        let any = provider("[]");
        for extra in [
            json!({"nonce": "n-0S6_WzA2Mj"}),
            json!({"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"}),
            json!({"c_hash": "LDktKdoQak3Pk0cnXxCltA"}),
            json!({"s_hash": "x"}),
            json!({"typ": "ID"}),
            json!({"typ": "Refresh"}),
            json!({"typ": "Offline"}),
            json!({"token_use": "id"}),
            json!({"token_use": 1}),
        ] {
            for prov in [&p, &any] {
                let e = check_claims(&claims(extra.clone()), prov, NOW).unwrap_err();
                assert!(matches!(e, BearerError::NotAccessToken), "{extra}: {e:?}");
            }
        }
        // with no audiences configured, an ID token of our own login (aud = our client_id) still does not pass
        let id_token = claims(json!({"aud": "oidc-authz", "email": "alice@example.com"}));
        assert!(matches!(
            check_claims(&id_token, &any, NOW),
            Err(BearerError::NotAccessToken)
        ));
        // real access tokens pass: Okta's (ver, cid, uid, scp, auth_time), oidc-provider's (client_id, scope),
        // Keycloak's before 25 (nonce next to typ Bearer), Cognito's (token_use access)
        for extra in [
            json!({"ver": 1, "cid": "0oa1", "uid": "00u1", "auth_time": NOW - 10, "jti": "AT.x"}),
            json!({"client_id": "cc-app", "scope": "api:read", "jti": "x"}),
            json!({"typ": "Bearer", "nonce": "abc", "azp": "web", "session_state": "s"}),
            json!({"token_use": "access"}),
        ] {
            for prov in [&p, &any] {
                assert!(
                    check_claims(&claims(extra.clone()), prov, NOW).is_ok(),
                    "{extra}"
                );
            }
        }
        // Keycloak adds our client_id to a real access token's aud next to the API's when the user has roles on our
        // client: that is an access token, not an ID token
        for kc in [
            json!({"aud": ["api://default", "oidc-authz", "account"], "typ": "Bearer", "azp": "web"}),
            json!({"aud": ["api://default", "oidc-authz"]}),
        ] {
            for prov in [&p, &any] {
                assert!(check_claims(&claims(kc.clone()), prov, NOW).is_ok(), "{kc}");
            }
        }
        // our client_id is an audience when the config says so
        let own = provider(r#"["api://default", "oidc-authz"]"#);
        assert!(check_claims(&claims(json!({"aud": "oidc-authz"})), &own, NOW).is_ok());
    }

    #[test]
    fn unverified_pre_filter_only_refuses() {
        let p = provider(r#"["api://default"]"#);
        let enc =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let jwt = |h: Value, c: Value| format!("{}.{}.c2ln", enc(&h), enc(&c));
        let at = jwt(
            serde_json::json!({"alg": "RS256", "typ": "at+jwt"}),
            Value::Object(claims(serde_json::json!({}))),
        );
        assert!(!unverified_not_access_token(&at, &p));
        let id = jwt(
            serde_json::json!({"alg": "RS256"}),
            Value::Object(claims(serde_json::json!({"nonce": "n"}))),
        );
        assert!(unverified_not_access_token(&id, &p));
        let logout = jwt(
            serde_json::json!({"alg": "RS256", "typ": "logout+jwt"}),
            Value::Object(claims(serde_json::json!({}))),
        );
        assert!(unverified_not_access_token(&logout, &p));
        assert!(!unverified_not_access_token("opaque-token", &p));
    }
}
