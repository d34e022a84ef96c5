//! OpenID Connect Back-Channel Logout 1.0: the provider POSTs a `logout_token` (form-encoded) to the policy's
//! `backchannel_logout_path`; it is verified as the spec says (2.6: signature with the provider's keys, `iss`,
//! `aud`, `iat`, `exp`, the `events` claim, `sub` and/or `sid`, no `nonce`, an explicit type if any, and `jti`
//! not seen before) and names the sessions to end.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::cache;
use crate::flow::bearer::{BearerError, verify_jws};
use crate::flow::claims::{self, TimeRules};
use crate::provider::{IdpError, Provider};
use crate::store::{Store, StoreError};

/// The store kind of used `jti`s.
const JTI_KIND: &str = "logout-jti";
/// The member of `events` that makes a JWT a logout token.
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// The largest body accepted (a logout token is a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// How old a logout token may be (by `iat`) before it is refused as stale, in seconds.
pub const MAX_AGE_SECS: u64 = 300;
/// How long a `jti` is remembered against replay with no leeway (longer than any token may be accepted).
const JTI_TTL: Duration = Duration::from_secs(2 * MAX_AGE_SECS + 60);

/// How long a `jti` is remembered against replay under the provider's `leeway` (seconds): longer than its token
/// may be accepted. A token is accepted up to [`MAX_AGE_SECS`] past its `iat`, which may lie up to the leeway
/// ahead of its first use: the guard outlives that by [`JTI_TTL`] less [`MAX_AGE_SECS`] (clock skew).
fn jti_ttl(leeway: u64) -> Duration {
    JTI_TTL.saturating_add(Duration::from_secs(leeway))
}

/// Logout tokens: `iat` required-ish (checked when present), `exp` read when present (spec 1.0 requires it; some
/// providers omit it: `iat` then bounds the token's age).
const LOGOUT_TOKEN: TimeRules = TimeRules {
    exp_required: false,
    nbf: true,
    iat_well_formed: true,
    iat_not_future: true,
};

/// Whom a verified logout token logs out: at least one of them is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutTarget {
    /// The user (`sub`): every session of theirs at this provider.
    pub sub: Option<String>,
    /// The provider's session (`sid`): the sessions logged in through it.
    pub sid: Option<String>,
    /// The key of the token's `jti` in the replay guard (see [`release`]).
    jti_key: Option<cache::Key>,
}

/// What the replay guard holds while a token's sessions are being ended: a token found in this state is not a
/// replay (its first use did not finish: the store failed, or the replica stopped), and is honoured again.
const PENDING: &[u8] = b"pending";
/// What the replay guard holds once every session a token names has ended: the token is used.
const DONE: &[u8] = b"done";

/// Forgets a verified token's `jti` again: its sessions could not all be ended (503), so the provider's retry of the
/// same token must be honoured, not refused as a replay. When this fails too, the guard stays [`PENDING`], which
/// honours the retry as well.
pub async fn release(store: &Store, target: &LogoutTarget) -> Result<(), StoreError> {
    match &target.jti_key {
        Some(id) => store.delete(JTI_KIND, id).await,
        None => Ok(()),
    }
}

/// Marks a verified token used, once every session it names has ended: from now on it is a replay.
pub async fn done(
    provider: &Provider,
    store: &Store,
    target: &LogoutTarget,
) -> Result<(), StoreError> {
    match &target.jti_key {
        Some(id) => {
            let ttl = jti_ttl(provider.config.leeway_secs);
            store.put(JTI_KIND, id, DONE, ttl).await
        }
        None => Ok(()),
    }
}

/// Why a logout request is refused (400, or 503 for `Idp`/`Store`). The texts are fixed: nothing from the token.
#[derive(Debug, thiserror::Error)]
pub enum BackchannelError {
    /// Not a form with one `logout_token`, or too large.
    #[error("the request carries no logout_token")]
    NoToken,
    /// The token does not verify or is not a logout token.
    #[error("the logout token is not valid: {0}")]
    Invalid(&'static str),
    /// This token was already used.
    #[error("the logout token was already used")]
    Replayed,
    /// The provider's keys could not be loaded.
    #[error("the identity provider is unavailable")]
    Idp(#[source] IdpError),
    /// The replay guard could not be asked.
    #[error("the session store is unavailable")]
    Store(#[source] StoreError),
}

/// The `logout_token` of a form-encoded body (exactly one).
pub fn token_of(body: &[u8]) -> Result<String, BackchannelError> {
    if body.is_empty() || body.len() > MAX_BODY {
        return Err(BackchannelError::NoToken);
    }
    let mut tokens = url::form_urlencoded::parse(body)
        .filter(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned());
    match (tokens.next(), tokens.next()) {
        (Some(t), None) if !t.is_empty() => Ok(t),
        _ => Err(BackchannelError::NoToken),
    }
}

/// Verifies a logout token from `provider` at `now`; remembers its `jti` in `store` so it is used once: a token
/// whose first use finished ([`done`]) is a replay; one whose first use did not is honoured again.
pub async fn verify(
    provider: &Provider,
    store: &Store,
    token: &str,
    now: u64,
) -> Result<LogoutTarget, BackchannelError> {
    let (header, claims) = verify_jws(provider, token).await.map_err(|e| match e {
        BearerError::Idp(e) => BackchannelError::Idp(e),
        _ => BackchannelError::Invalid("signature"),
    })?;
    // 2.3: explicitly typed logout tokens say `logout+jwt`; refuse any other explicit type (an access token's
    // `at+jwt`), so no other kind of JWT can pass for one.
    if let Some(typ) = header.typ.as_deref() {
        let typ = typ.to_ascii_lowercase();
        if !matches!(
            typ.as_str(),
            "logout+jwt" | "application/logout+jwt" | "jwt"
        ) {
            return Err(BackchannelError::Invalid("typ"));
        }
    }
    let mut target = check_claims(provider, &claims, now)?;
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .ok_or(BackchannelError::Invalid("jti"))?;
    let id = cache::key(&["oidc-authz logout token", provider.name(), jti]);
    let first = store
        .put_new(JTI_KIND, &id, PENDING, jti_ttl(provider.config.leeway_secs))
        .await
        .map_err(BackchannelError::Store)?;
    if !first {
        let state = store
            .get(JTI_KIND, &id)
            .await
            .map_err(BackchannelError::Store)?;
        if state.as_deref() != Some(PENDING) {
            return Err(BackchannelError::Replayed);
        }
    }
    target.jti_key = Some(id);
    Ok(target)
}

/// The claim checks of 2.6 (everything but the signature and `jti`).
fn check_claims(
    provider: &Provider,
    claims: &Map<String, Value>,
    now: u64,
) -> Result<LogoutTarget, BackchannelError> {
    let config = &provider.config;
    if !claims::issuer_is(claims, &config.issuer) {
        return Err(BackchannelError::Invalid("issuer"));
    }
    let client_id = config.client_id.as_deref().unwrap_or_default();
    if client_id.is_empty() || !claims::str_or_list(claims.get("aud")).contains(&client_id) {
        return Err(BackchannelError::Invalid("audience"));
    }
    claims::check_times(claims, now, config.leeway_secs, LOGOUT_TOKEN)
        .map_err(|e| BackchannelError::Invalid(e.reason()))?;
    let iat = claims::numeric_date(claims.get("iat"), true)
        .ok()
        .flatten()
        .ok_or(BackchannelError::Invalid("iat"))?;
    if iat.saturating_add(MAX_AGE_SECS) < now {
        return Err(BackchannelError::Invalid("too old"));
    }
    let is_logout = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !is_logout {
        return Err(BackchannelError::Invalid("events"));
    }
    if claims.contains_key("nonce") {
        return Err(BackchannelError::Invalid("nonce"));
    }
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let target = LogoutTarget {
        sub: text("sub"),
        sid: text("sid"),
        jti_key: None,
    };
    if target.sub.is_none() && target.sid.is_none() {
        return Err(BackchannelError::Invalid("no sub or sid"));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::telemetry::Metrics;

    /// Whatever the provider's leeway, a token's `jti` is remembered at least as long as the token is accepted
    /// (from its first use to the last second `check_claims` accepts it), so it can never be replayed.
    #[test]
    fn the_jti_guard_outlives_every_acceptable_token() {
        const NOW: u64 = 1_800_000_000;
        for leeway in [0u64, 30, 360, 3_600, 86_400] {
            let toml = format!(
                r#"
[providers.idp]
issuer = "https://idp.test"
client_id = "oidc-authz"
audiences = ["api"]
leeway_secs = {leeway}
[policies.api]
provider = "idp"
auth_methods = ["bearer"]
"#
            );
            let cfg = crate::config::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}"));
            let provider = Provider::new(
                cfg.providers[0].clone(),
                Arc::new(crate::provider::fake::FakeIdp::new()),
                Arc::new(Metrics::new()),
            );
            // issued as far ahead of its first use as the leeway allows, with no `exp` bounding it sooner
            let iat = NOW + leeway;
            let claims = json!({
                "iss": "https://idp.test", "aud": "oidc-authz", "sub": "alice", "jti": "j", "iat": iat,
                "events": {LOGOUT_EVENT: {}},
            });
            let claims = claims.as_object().expect("an object");
            assert!(check_claims(&provider, claims, NOW).is_ok(), "{leeway}");
            let mut last = NOW;
            let mut step = 1 << 40;
            while step > 0 {
                if check_claims(&provider, claims, last + step).is_ok() {
                    last += step;
                }
                step /= 2;
            }
            assert!(check_claims(&provider, claims, last + 1).is_err());
            assert!(
                jti_ttl(leeway) > Duration::from_secs(last - NOW),
                "leeway {leeway}: accepted for {} s",
                last - NOW
            );
        }
    }

    #[test]
    fn the_body_carries_exactly_one_token() {
        assert_eq!(token_of(b"logout_token=a.b.c").unwrap(), "a.b.c");
        assert!(matches!(token_of(b""), Err(BackchannelError::NoToken)));
        assert!(matches!(token_of(b"x=1"), Err(BackchannelError::NoToken)));
        assert!(matches!(
            token_of(b"logout_token=a&logout_token=b"),
            Err(BackchannelError::NoToken)
        ));
        assert!(matches!(
            token_of(&vec![b'a'; MAX_BODY + 1]),
            Err(BackchannelError::NoToken)
        ));
    }
}
