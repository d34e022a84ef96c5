//! `claims`: the checks every kind of token shares (bearer JWTs, introspection answers, ID tokens): the issuer,
//! the audience, and the time claims `exp`, `nbf` and `iat` read as RFC 7519 NumericDates with the provider's
//! leeway. Each kind calls them in its own order between its own checks, and words the refusals its own way.

use serde_json::{Map, Value};

/// The largest accepted NumericDate (`exp`, `nbf`, `iat`): 9999-12-31T23:59:59Z. Beyond it a value is not a date
/// any issuer means (`exp = 1e300` would never expire), so the token is refused.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Why a NumericDate claim is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadDate;

/// A NumericDate claim (RFC 7519 2): absent is `Ok(None)`; a JSON number in `0..=MAX_NUMERIC_DATE` (fractions
/// allowed) is its whole seconds, rounded towards the safe side (`round_up` for `nbf`/`iat`, down for `exp`);
/// anything else (a string, a negative or too large number) is an error.
pub fn numeric_date(v: Option<&Value>, round_up: bool) -> Result<Option<u64>, BadDate> {
    let Some(v) = v else { return Ok(None) };
    let Value::Number(n) = v else {
        return Err(BadDate);
    };
    let secs = match n.as_u64() {
        Some(u) => u,
        None => {
            let f = n.as_f64().ok_or(BadDate)?;
            if !f.is_finite() || f < 0.0 || f > MAX_NUMERIC_DATE as f64 {
                return Err(BadDate);
            }
            (if round_up { f.ceil() } else { f.floor() }) as u64
        }
    };
    if secs > MAX_NUMERIC_DATE {
        return Err(BadDate);
    }
    Ok(Some(secs))
}

/// A claim that is a string or a list of strings (`aud`), as a list; anything else is an empty list.
pub fn str_or_list(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether `iss` is a string equal to `issuer`.
pub fn issuer_is(claims: &Map<String, Value>, issuer: &str) -> bool {
    claims.get("iss").and_then(Value::as_str) == Some(issuer)
}

/// Whether `aud` (a string or a list) names one of the `accepted` audiences.
pub fn audience_in(aud: Option<&Value>, accepted: &[String]) -> bool {
    str_or_list(aud)
        .iter()
        .any(|a| accepted.iter().any(|x| x == a))
}

/// Why an ID token is not meant for this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForUs {
    /// `aud` does not name our `client_id`.
    Audience,
    /// `aud` names others too, and `azp` is not our `client_id`.
    AuthorizedParty,
}

/// The audience of an ID token (OpenID Connect Core 3.1.3.7, 3-5): `aud` names `client_id`, and when it names
/// others too, `azp` is `client_id`.
pub fn id_token_audience(claims: &Map<String, Value>, client_id: &str) -> Result<(), NotForUs> {
    let auds = str_or_list(claims.get("aud"));
    if !auds.contains(&client_id) {
        return Err(NotForUs::Audience);
    }
    if auds.len() > 1 && claims.get("azp").and_then(Value::as_str) != Some(client_id) {
        return Err(NotForUs::AuthorizedParty);
    }
    Ok(())
}

/// Which time claims a kind of token must have and which are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRules {
    /// A token without `exp` is refused; else it has no expiry.
    pub exp_required: bool,
    /// `nbf` is checked: a malformed one is refused, and so is one in the future.
    pub nbf: bool,
    /// A malformed `iat` is refused (else it is ignored).
    pub iat_well_formed: bool,
    /// An `iat` in the future is refused.
    pub iat_not_future: bool,
}

/// Access tokens (JWT bearer tokens): `exp` required, `nbf` and `iat` checked.
pub const ACCESS_TOKEN: TimeRules = TimeRules {
    exp_required: true,
    nbf: true,
    iat_well_formed: true,
    iat_not_future: true,
};

/// Introspection answers (RFC 7662 2.2): every time claim optional; `iat` only has to be a date.
pub const INTROSPECTION: TimeRules = TimeRules {
    exp_required: false,
    nbf: true,
    iat_well_formed: true,
    iat_not_future: false,
};

/// ID tokens (OpenID Connect Core 3.1.3.7, 9-10): `exp` required, `iat` not in the future, `nbf` not read.
pub const ID_TOKEN: TimeRules = TimeRules {
    exp_required: true,
    nbf: false,
    iat_well_formed: false,
    iat_not_future: true,
};

/// Why a token's time claims refuse it; checked in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    /// `exp` is not a NumericDate.
    MalformedExp,
    /// `exp` is required and absent.
    NoExpiry,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is not a NumericDate.
    MalformedNbf,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iat` is not a NumericDate.
    MalformedIat,
    /// `iat` is in the future (beyond the leeway).
    IssuedInFuture,
}

impl TimeError {
    /// A short reason, for logs and refusal details.
    pub fn reason(self) -> &'static str {
        match self {
            TimeError::MalformedExp => "malformed exp",
            TimeError::NoExpiry => "expiry",
            TimeError::Expired => "expired",
            TimeError::MalformedNbf => "malformed nbf",
            TimeError::NotYetValid => "not valid yet",
            TimeError::MalformedIat => "malformed iat",
            TimeError::IssuedInFuture => "issued in the future",
        }
    }
}

/// Checks `exp`, `nbf` and `iat` at `now` with `leeway` seconds by `rules`; returns `exp`.
pub fn check_times(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
    rules: TimeRules,
) -> Result<Option<u64>, TimeError> {
    let exp = numeric_date(claims.get("exp"), false).map_err(|BadDate| TimeError::MalformedExp)?;
    if exp.is_none() && rules.exp_required {
        return Err(TimeError::NoExpiry);
    }
    if exp.is_some_and(|e| now > e.saturating_add(leeway)) {
        return Err(TimeError::Expired);
    }
    if rules.nbf {
        match numeric_date(claims.get("nbf"), true) {
            Err(BadDate) => return Err(TimeError::MalformedNbf),
            Ok(Some(nbf)) if nbf > now.saturating_add(leeway) => {
                return Err(TimeError::NotYetValid);
            }
            Ok(_) => {}
        }
    }
    match numeric_date(claims.get("iat"), true) {
        Err(BadDate) if rules.iat_well_formed => return Err(TimeError::MalformedIat),
        Ok(Some(iat)) if rules.iat_not_future && iat > now.saturating_add(leeway) => {
            return Err(TimeError::IssuedInFuture);
        }
        _ => {}
    }
    Ok(exp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// `base` with the keys of `extra` set (a `null` removes the key).
    pub(crate) fn with(base: Value, extra: Value) -> Map<String, Value> {
        let mut c = base;
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.as_object().unwrap().clone()
    }

    #[test]
    fn numeric_dates_are_numbers_in_range() {
        let d = |v: Value| numeric_date(Some(&v), false);
        assert_eq!(d(json!(1_800_000_000)), Ok(Some(1_800_000_000)));
        assert_eq!(d(json!(1_800_000_000.9)), Ok(Some(1_800_000_000)));
        assert_eq!(numeric_date(Some(&json!(1.2)), true), Ok(Some(2)));
        assert_eq!(d(json!(0)), Ok(Some(0)));
        assert_eq!(d(json!(MAX_NUMERIC_DATE)), Ok(Some(MAX_NUMERIC_DATE)));
        assert_eq!(numeric_date(None, false), Ok(None));
        for bad in [
            json!(1e300),
            json!(MAX_NUMERIC_DATE + 1),
            json!(u64::MAX),
            json!(-1),
            json!(-0.5),
            json!("1800000000"),
            json!(null),
            json!(true),
            json!([1]),
        ] {
            assert_eq!(d(bad.clone()), Err(BadDate), "{bad}");
        }
    }

    #[test]
    fn audiences() {
        let accepted = ["api://default".to_string(), "other".to_string()];
        assert!(audience_in(Some(&json!("api://default")), &accepted));
        assert!(audience_in(Some(&json!(["x", "other"])), &accepted));
        assert!(!audience_in(Some(&json!(["x", 1])), &accepted));
        assert!(!audience_in(Some(&json!(7)), &accepted));
        assert!(!audience_in(None, &accepted));
        let id = |v: Value| id_token_audience(&with(json!({}), v), "web");
        assert_eq!(id(json!({"aud": "web"})), Ok(()));
        assert_eq!(id(json!({"aud": ["web"]})), Ok(()));
        assert_eq!(id(json!({"aud": ["web", "api"], "azp": "web"})), Ok(()));
        assert_eq!(
            id(json!({"aud": ["web", "api"]})),
            Err(NotForUs::AuthorizedParty)
        );
        assert_eq!(
            id(json!({"aud": ["web", "api"], "azp": "api"})),
            Err(NotForUs::AuthorizedParty)
        );
        assert_eq!(id(json!({"aud": "api"})), Err(NotForUs::Audience));
        assert_eq!(id(json!({})), Err(NotForUs::Audience));
        assert!(issuer_is(&with(json!({"iss": "i"}), json!({})), "i"));
        assert!(!issuer_is(&with(json!({"iss": ["i"]}), json!({})), "i"));
        assert!(!issuer_is(&with(json!({}), json!({})), "i"));
    }

    #[test]
    fn time_rules_by_kind() {
        const NOW: u64 = 1_800_000_000;
        let t = |v: Value, rules| check_times(&with(json!({}), v), NOW, 30, rules);
        use TimeError::*;
        // exp: required or not; malformed is refused before it is missed
        assert_eq!(t(json!({}), ACCESS_TOKEN), Err(NoExpiry));
        assert_eq!(t(json!({}), ID_TOKEN), Err(NoExpiry));
        assert_eq!(t(json!({}), INTROSPECTION), Ok(None));
        for rules in [ACCESS_TOKEN, ID_TOKEN, INTROSPECTION] {
            assert_eq!(t(json!({"exp": "soon"}), rules), Err(MalformedExp));
            assert_eq!(t(json!({"exp": NOW - 31}), rules), Err(Expired));
            assert_eq!(t(json!({"exp": NOW - 30}), rules), Ok(Some(NOW - 30)));
        }
        let exp = NOW + 60;
        // nbf: not read for ID tokens
        for rules in [ACCESS_TOKEN, INTROSPECTION] {
            assert_eq!(t(json!({"exp": exp, "nbf": -1}), rules), Err(MalformedNbf));
            assert_eq!(
                t(json!({"exp": exp, "nbf": NOW + 31}), rules),
                Err(NotYetValid)
            );
            assert_eq!(
                t(json!({"exp": exp, "nbf": NOW + 30}), rules),
                Ok(Some(exp))
            );
        }
        assert_eq!(
            t(json!({"exp": exp, "nbf": NOW + 31}), ID_TOKEN),
            Ok(Some(exp))
        );
        // iat: malformed refused for access tokens and answers; in the future refused for tokens only
        let late = json!({"exp": exp, "iat": NOW + 31});
        let bad = json!({"exp": exp, "iat": "now"});
        assert_eq!(t(late.clone(), ACCESS_TOKEN), Err(IssuedInFuture));
        assert_eq!(t(late.clone(), ID_TOKEN), Err(IssuedInFuture));
        assert_eq!(t(late, INTROSPECTION), Ok(Some(exp)));
        assert_eq!(t(bad.clone(), ACCESS_TOKEN), Err(MalformedIat));
        assert_eq!(t(bad.clone(), INTROSPECTION), Err(MalformedIat));
        assert_eq!(t(bad, ID_TOKEN), Ok(Some(exp)));
        // the first refusal wins: exp before nbf before iat
        assert_eq!(
            t(
                json!({"exp": NOW - 100, "nbf": -1, "iat": "x"}),
                ACCESS_TOKEN
            ),
            Err(Expired)
        );
        assert_eq!(
            t(
                json!({"exp": exp, "nbf": NOW + 100, "iat": "x"}),
                ACCESS_TOKEN
            ),
            Err(NotYetValid)
        );
    }
}
