//! Claim-based access control with Kong's semantics: each `*_required` entry is an OR-alternative, and the
//! space-separated words inside one entry are AND-ed.

use serde_json::{Map, Value};

/// One requirement: a claim and the alternatives that satisfy it.
#[derive(Debug, Clone)]
pub struct Requirement {
    /// What is being required (`scopes`, `groups`, `roles`, `audience`), for the deny reason.
    pub what: String,
    /// Claim path: keys into nested objects.
    pub claim: Vec<String>,
    /// Alternatives; each a set of words that must all be present.
    pub alternatives: Vec<Vec<String>>,
}

impl Requirement {
    /// Builds a requirement from Kong-style entries (`["a b", "c"]` = (a AND b) OR c).
    pub fn new(what: &str, claim: Vec<String>, required: &[String]) -> Self {
        let alternatives = required
            .iter()
            .map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|words| !words.is_empty())
            .collect();
        Requirement {
            what: what.to_string(),
            claim,
            alternatives,
        }
    }

    /// Whether the claims satisfy one of the alternatives.
    pub fn satisfied_by(&self, claims: &Map<String, Value>) -> bool {
        let Some(value) = claim_value(claims, &self.claim) else {
            return false;
        };
        let have = claim_words(value);
        self.alternatives
            .iter()
            .any(|alt| alt.iter().all(|w| have.iter().any(|h| h == w)))
    }
}

/// A deny reason: which requirement was not met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token does not meet the {what} requirement")]
pub struct AccessDenied {
    /// `scopes`, `groups`, `roles` or `audience`.
    pub what: String,
}

/// All requirements of a policy; every one must hold.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    requirements: Vec<Requirement>,
}

impl AccessRules {
    /// Wraps a policy's requirements.
    pub fn new(requirements: Vec<Requirement>) -> Self {
        AccessRules { requirements }
    }

    /// The requirements, in the order they are checked.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether there is no requirement at all.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Checks every requirement; the first unmet one is the reason.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), AccessDenied> {
        for r in &self.requirements {
            if !r.satisfied_by(claims) {
                return Err(AccessDenied {
                    what: r.what.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Follows a claim path through nested objects.
pub fn claim_value<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for key in rest {
        v = v.as_object()?.get(key)?;
    }
    Some(v)
}

/// The words of a claim value: an array's string (or number) items, or a space-separated string.
pub fn claim_words(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => s.split_whitespace().collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A claim as one header value: strings as they are, arrays joined with `,` (as Kong does), numbers and booleans
/// as text; objects and nulls give nothing. An array item that could change the list's meaning or the header
/// (a `,`, a control character, an empty string, a nested array or object) is dropped, so a claim
/// `["users", "admins,superusers"]` reaches the upstream as `users`, never as three groups.
pub fn claim_header_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let mut out = String::new();
            for item in items {
                let text = match item {
                    Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
                    Value::Number(n) => std::borrow::Cow::Owned(n.to_string()),
                    Value::Bool(b) => std::borrow::Cow::Owned(b.to_string()),
                    _ => {
                        tracing::debug!(
                            "claim array item that is not a string, number or boolean left out of the header"
                        );
                        continue;
                    }
                };
                if !safe_list_item(&text) {
                    tracing::debug!(
                        "claim array item with ',' or a character unsafe in a header left out of the header"
                    );
                    continue;
                }
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(&text);
            }
            Some(out)
        }
        _ => None,
    }
}

/// An item of a `,`-joined header list: not empty, no `,`, visible characters and spaces only (no control
/// characters; non-ASCII UTF-8 as a string claim would be), no surrounding spaces.
fn safe_list_item(s: &str) -> bool {
    !s.is_empty()
        && s.trim() == s
        && s.chars().all(|c| c != ',' && (c == ' ' || !c.is_control()))
        && http::HeaderValue::from_str(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn req(claim: &[&str], required: &[&str]) -> Requirement {
        Requirement::new(
            "scopes",
            claim.iter().map(|s| s.to_string()).collect(),
            &required.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn or_of_ands() {
        let r = req(&["scp"], &["a b", "c"]);
        assert!(r.satisfied_by(&claims(json!({"scp": ["a", "b"]}))));
        assert!(r.satisfied_by(&claims(json!({"scp": ["c"]}))));
        assert!(!r.satisfied_by(&claims(json!({"scp": ["a"]}))));
        assert!(!r.satisfied_by(&claims(json!({"scp": []}))));
        assert!(!r.satisfied_by(&claims(json!({}))));
    }

    #[test]
    fn space_separated_string_claim() {
        let r = req(&["scope"], &["read write"]);
        assert!(r.satisfied_by(&claims(json!({"scope": "openid read write"}))));
        assert!(!r.satisfied_by(&claims(json!({"scope": "openid read"}))));
        // no substring matching
        assert!(!r.satisfied_by(&claims(json!({"scope": "reader writer"}))));
    }

    #[test]
    fn nested_claim_path() {
        let r = req(&["realm_access", "roles"], &["admin"]);
        assert!(r.satisfied_by(&claims(
            json!({"realm_access": {"roles": ["user", "admin"]}})
        )));
        assert!(!r.satisfied_by(&claims(json!({"realm_access": {"roles": ["user"]}}))));
        assert!(!r.satisfied_by(&claims(json!({"realm_access": "admin"}))));
    }

    #[test]
    fn rules_report_first_failure() {
        let rules = AccessRules::new(vec![
            req(&["scp"], &["api:read"]),
            Requirement::new("groups", vec!["groups".into()], &["admins".into()]),
        ]);
        assert!(
            rules
                .check(&claims(json!({"scp": ["api:read"], "groups": ["admins"]})))
                .is_ok()
        );
        let err = rules
            .check(&claims(json!({"scp": ["api:read"], "groups": ["users"]})))
            .unwrap_err();
        assert_eq!(err.what, "groups");
        assert!(AccessRules::default().check(&claims(json!({}))).is_ok());
    }

    #[test]
    fn header_values() {
        assert_eq!(claim_header_value(&json!("x")), Some("x".into()));
        assert_eq!(claim_header_value(&json!(["a", "b"])), Some("a,b".into()));
        assert_eq!(claim_header_value(&json!(42)), Some("42".into()));
        assert_eq!(claim_header_value(&json!({"a": 1})), None);
    }

    #[test]
    fn header_lists_cannot_be_split_by_an_item() {
        // an item with ',' would become two list entries upstream: dropped, the rest kept
        assert_eq!(
            claim_header_value(&json!(["users", "admins,superusers"])),
            Some("users".into())
        );
        assert_eq!(
            claim_header_value(
                &json!(["a", "", " b", "c\r\nx-evil: 1", ["d", "e"], {"f": 1}, 7, true])
            ),
            Some("a,7,true".into())
        );
        assert_eq!(claim_header_value(&json!(["x,y"])), Some(String::new()));
        // a single string claim is one value, as it is
        assert_eq!(
            claim_header_value(&json!("Doe, Jane")),
            Some("Doe, Jane".into())
        );
    }
}
