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

/// A deny reason: which requirement was not met (`what`), or which forbidden claim or consumer rule refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDenied {
    /// `scopes`, `groups`, `roles`, `audience`, `claims_forbidden` or `consumer_claim`.
    pub what: String,
    /// The claim path concerned (`claims_forbidden`, `consumer_claim`), dot-joined; empty for a requirement.
    pub claim: String,
}

/// The reason for the log line (and the client with `display_errors = true`): names the rule and the claim, never
/// a claim's value.
impl std::fmt::Display for AccessDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.what.as_str() {
            "claims_forbidden" => write!(f, "the token carries the forbidden claim {}", self.claim),
            "consumer_claim" => write!(
                f,
                "the token's consumer claim {} is missing or not a usable consumer name",
                self.claim
            ),
            what => write!(f, "the token does not meet the {what} requirement"),
        }
    }
}

impl std::error::Error for AccessDenied {}

/// All requirements of a policy; every one must hold.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    requirements: Vec<Requirement>,
    /// `claims_forbidden`: claim paths whose presence (any value, null included) denies.
    forbidden: Vec<Vec<String>>,
    /// `consumer_claim` and `consumer_optional`.
    consumer: Option<ConsumerRule>,
}

/// Kong's `consumer_claim`: the claim whose value names the consumer (for `dynamic_metadata` and
/// `upstream_consumer_header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRule {
    /// Claim path (nested object keys).
    pub claim: Vec<String>,
    /// `consumer_optional`: a token without the claim is allowed (without a consumer) instead of refused 403.
    pub optional: bool,
}

/// The longest consumer name accepted, in bytes.
pub const MAX_CONSUMER_BYTES: usize = 256;

/// What a consumer claim holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumer {
    /// No consumer claim in the token (or no `consumer_claim` configured).
    Absent,
    /// A usable consumer name.
    Named(String),
    /// A value that cannot name a consumer safely: not a string or an integer, empty, longer than
    /// [`MAX_CONSUMER_BYTES`], with surrounding spaces or a control character.
    Unusable,
}

impl ConsumerRule {
    /// The consumer the claims name. A string is taken as it is, an integer as its decimal text (ids are often
    /// numbers); anything else (`true`, `1.5`, a list, an object, `null`) names no one.
    pub fn consumer(&self, claims: &Map<String, Value>) -> Consumer {
        let text = match claim_value(claims, &self.claim) {
            None => return Consumer::Absent,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(_) => return Consumer::Unusable,
        };
        let safe = !text.is_empty()
            && text.len() <= MAX_CONSUMER_BYTES
            && text.trim() == text
            && !text.chars().any(char::is_control)
            && http::HeaderValue::from_str(&text).is_ok();
        if safe {
            Consumer::Named(text)
        } else {
            Consumer::Unusable
        }
    }
}

impl AccessRules {
    /// Wraps a policy's requirements.
    pub fn new(requirements: Vec<Requirement>) -> Self {
        AccessRules {
            requirements,
            ..AccessRules::default()
        }
    }

    /// The same rules with `claims_forbidden` (claim paths) and the consumer rule.
    pub fn with_claim_rules(
        mut self,
        forbidden: Vec<Vec<String>>,
        consumer: Option<ConsumerRule>,
    ) -> Self {
        self.forbidden = forbidden;
        self.consumer = consumer;
        self
    }

    /// The `claims_forbidden` paths.
    pub fn forbidden(&self) -> &[Vec<String>] {
        &self.forbidden
    }

    /// The consumer rule, when `consumer_claim` is set.
    pub fn consumer_rule(&self) -> Option<&ConsumerRule> {
        self.consumer.as_ref()
    }

    /// The consumer the claims name (`Absent` without a `consumer_claim`).
    pub fn consumer(&self, claims: &Map<String, Value>) -> Consumer {
        self.consumer
            .as_ref()
            .map_or(Consumer::Absent, |c| c.consumer(claims))
    }

    /// The requirements, in the order they are checked.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether there is no requirement at all (no forbidden claim, no required consumer either).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
            && self.forbidden.is_empty()
            && self.consumer.as_ref().is_none_or(|c| c.optional)
    }

    /// Checks every rule: a forbidden claim first, then each requirement, then the consumer; the first failure
    /// is the reason.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), AccessDenied> {
        if let Some(path) = self
            .forbidden
            .iter()
            .find(|p| claim_value(claims, p).is_some())
        {
            return Err(AccessDenied {
                what: "claims_forbidden".into(),
                claim: path.join("."),
            });
        }
        for r in &self.requirements {
            if !r.satisfied_by(claims) {
                return Err(AccessDenied {
                    what: r.what.clone(),
                    claim: String::new(),
                });
            }
        }
        if let Some(rule) = &self.consumer {
            match rule.consumer(claims) {
                Consumer::Named(_) => {}
                Consumer::Absent if rule.optional => {}
                Consumer::Absent | Consumer::Unusable => {
                    return Err(AccessDenied {
                        what: "consumer_claim".into(),
                        claim: rule.claim.join("."),
                    });
                }
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

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_forbidden_claim_denies_whatever_its_value() {
        let rules = AccessRules::new(vec![req(&["scp"], &["read"])])
            .with_claim_rules(vec![path(&["act"]), path(&["realm", "admin"])], None);
        let ok = json!({"scp": ["read"], "realm": {"user": true}, "admin": 1});
        assert!(rules.check(&claims(ok)).is_ok());
        for v in [
            json!(null),
            json!(false),
            json!(""),
            json!([]),
            json!({}),
            json!(0),
        ] {
            let err = rules
                .check(&claims(json!({"scp": ["read"], "act": v.clone()})))
                .unwrap_err();
            assert_eq!(err.what, "claims_forbidden", "{v}");
            assert_eq!(err.to_string(), "the token carries the forbidden claim act");
        }
        // checked before the requirements: the reason names the forbidden claim, and the nested path
        let err = rules
            .check(&claims(json!({"realm": {"admin": null}})))
            .unwrap_err();
        assert_eq!(err.claim, "realm.admin");
        assert!(!rules.is_empty());
    }

    #[test]
    fn consumer_values() {
        let rule = ConsumerRule {
            claim: path(&["cid"]),
            optional: false,
        };
        let of = |v: Value| rule.consumer(&claims(json!({ "cid": v })));
        assert_eq!(of(json!("shop")), Consumer::Named("shop".into()));
        assert_eq!(of(json!("Doe, Jane")), Consumer::Named("Doe, Jane".into()));
        assert_eq!(of(json!(42)), Consumer::Named("42".into()));
        assert_eq!(of(json!(-7)), Consumer::Named("-7".into()));
        assert_eq!(
            of(json!("x".repeat(MAX_CONSUMER_BYTES))),
            Consumer::Named("x".repeat(256))
        );
        for bad in [
            json!(""),
            json!(" a"),
            json!("a\r\nx-admin: 1"),
            json!("a\u{0}b"),
            json!("tab\t"),
            json!("x".repeat(MAX_CONSUMER_BYTES + 1)),
            json!(1.5),
            json!(true),
            json!(null),
            json!(["a"]),
            json!({"a": 1}),
        ] {
            assert_eq!(of(bad.clone()), Consumer::Unusable, "{bad}");
        }
        assert_eq!(rule.consumer(&claims(json!({}))), Consumer::Absent);
    }

    #[test]
    fn the_consumer_is_required_unless_optional_and_never_unusable() {
        let required = AccessRules::default().with_claim_rules(
            Vec::new(),
            Some(ConsumerRule {
                claim: path(&["ext", "consumer"]),
                optional: false,
            }),
        );
        let optional = AccessRules::default().with_claim_rules(
            Vec::new(),
            Some(ConsumerRule {
                claim: path(&["ext", "consumer"]),
                optional: true,
            }),
        );
        let named = claims(json!({"ext": {"consumer": "p7"}}));
        let absent = claims(json!({"ext": {}}));
        let unusable = claims(json!({"ext": {"consumer": "a\nb"}}));
        assert!(required.check(&named).is_ok() && optional.check(&named).is_ok());
        assert_eq!(required.consumer(&named), Consumer::Named("p7".into()));
        let err = required.check(&absent).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the token's consumer claim ext.consumer is missing or not a usable consumer name"
        );
        assert!(optional.check(&absent).is_ok());
        assert!(required.check(&unusable).is_err() && optional.check(&unusable).is_err());
        assert!(!required.is_empty() && optional.is_empty());
        assert_eq!(AccessRules::default().consumer(&named), Consumer::Absent);
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
