//! The core: `Authorizer::check(&CheckView) -> Decision`. Selects the policy, authenticates with the policy's
//! methods, applies access control and builds the upstream headers. No protobuf and no network framing here.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::{AuthMethod, Config, Policy};
use crate::decision::{Allow, Decision, Deny, DenyStatus};
use crate::flow::bearer::{BearerError, BearerVerifier};
use crate::flow::{Credential, authorization};
use crate::policy::access::{claim_header_value, claim_value};
use crate::provider::{Provider, http_client};
use crate::request::CheckView;
use crate::telemetry::{DecisionLabels, Metrics};

/// Answers Checks for one configuration.
#[derive(Debug)]
pub struct Authorizer {
    config: Arc<Config>,
    providers: Arc<[Arc<Provider>]>,
    bearer: BearerVerifier,
    metrics: Arc<Metrics>,
}

/// A decision with what led to it, for logs and metrics.
struct Outcome {
    decision: Decision,
    method: Option<AuthMethod>,
    sub: Option<String>,
}

impl Outcome {
    fn deny(deny: Deny) -> Self {
        Outcome {
            decision: Decision::Deny(deny),
            method: None,
            sub: None,
        }
    }
}

impl Authorizer {
    /// Builds the authorizer: one HTTP client and one provider object per configured provider (nothing fetched yet).
    pub fn new(config: Config, metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Self {
        let http = http_client();
        let providers: Arc<[Arc<Provider>]> = config
            .providers
            .iter()
            .map(|p| Arc::new(Provider::new(p.clone(), http.clone(), metrics.clone())))
            .collect();
        for p in config.policies.iter() {
            for m in &p.auth_methods {
                if !m.implemented() {
                    tracing::warn!(policy.name = %p.name, auth.method = m.as_str(), "auth method not available in this version; requests that need it are refused");
                }
            }
        }
        Authorizer {
            bearer: BearerVerifier::new(config.server.token_cache_entries, clock, metrics.clone()),
            config: Arc::new(config),
            providers,
            metrics,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The providers, in config order.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// Ready once every provider has loaded its discovery document and keys.
    pub fn is_ready(&self) -> bool {
        self.providers.iter().all(|p| p.is_ready())
    }

    /// Answers one Check: never panics, never fails open.
    pub async fn check(&self, view: &CheckView<'_>) -> Decision {
        let start = Instant::now();
        self.metrics.in_flight.inc();
        let (policy, outcome) = match self.select(view) {
            Ok(policy) => (Some(policy), self.check_policy(policy, view).await),
            Err(deny) => (None, Outcome::deny(deny)),
        };
        self.metrics.in_flight.dec();
        let result = match &outcome.decision {
            Decision::Allow(_) => "allow",
            Decision::Deny(d) => match d.status {
                DenyStatus::Unauthorized => "deny_401",
                DenyStatus::Forbidden => "deny_403",
                DenyStatus::Unavailable => "deny_503",
            },
        };
        let policy_name = policy.map_or("-", |p| p.name.as_str());
        let method = outcome.method.map_or("-", AuthMethod::as_str);
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                policy: policy_name.to_string(),
                method,
                result,
            })
            .inc();
        self.metrics
            .check_seconds
            .observe(start.elapsed().as_secs_f64());
        let reason = match &outcome.decision {
            Decision::Deny(d) => d.description.as_str(),
            Decision::Allow(_) => "",
        };
        tracing::info!(
            policy.name = policy_name,
            auth.method = method,
            auth.sub = outcome.sub.as_deref().unwrap_or(""),
            decision = result,
            reason,
            request.id = view.request_id,
            request.method = view.method,
            request.path = view.path,
            "check"
        );
        outcome.decision
    }

    /// `context_extensions.policy`, else the best `[[routes]]` match, else 403.
    fn select(&self, view: &CheckView<'_>) -> Result<&Policy, Deny> {
        if let Some(name) = view.policy_hint() {
            return match self.config.policy_index(name) {
                Some(i) => Ok(&self.config.policies[i]),
                None => {
                    let shown: String = name.chars().take(64).collect();
                    tracing::error!(policy.hint = %shown, "Envoy named a policy that is not configured; denying");
                    Err(Deny::forbidden(
                        "access_denied",
                        "no policy is configured for this route",
                    ))
                }
            };
        }
        match self.config.routes.find(view.host, view.path, view.method) {
            Some(route) => Ok(&self.config.policies[route.policy]),
            None => Err(Deny::forbidden(
                "access_denied",
                "no policy is configured for this route",
            )),
        }
    }

    async fn check_policy(&self, policy: &Policy, view: &CheckView<'_>) -> Outcome {
        let realm = policy.name.as_str();
        let provider = &self.providers[policy.provider];
        let (method, claims) = match authorization(view) {
            Credential::Bearer(token) if policy.allows(AuthMethod::Bearer) => {
                match self.bearer.verify(provider, token).await {
                    Ok(v) => (AuthMethod::Bearer, v),
                    Err(e) => {
                        return Outcome {
                            method: Some(AuthMethod::Bearer),
                            ..Outcome::deny(bearer_deny(realm, &e, provider))
                        };
                    }
                }
            }
            Credential::Malformed(why) => {
                return Outcome::deny(Deny::unauthorized(realm, "invalid_token", why));
            }
            Credential::None => {
                return Outcome::deny(Deny::unauthorized(
                    realm,
                    "invalid_token",
                    "no access token in the request",
                ));
            }
            Credential::Bearer(_) | Credential::Basic(_) => {
                return Outcome::deny(Deny::unauthorized(
                    realm,
                    "invalid_token",
                    "this route does not accept these credentials",
                ));
            }
        };
        let sub = claims
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Err(denied) = policy.access.check(&claims.claims) {
            return Outcome {
                decision: Decision::Deny(Deny::insufficient(realm, denied.to_string())),
                method: Some(method),
                sub,
            };
        }
        Outcome {
            decision: Decision::Allow(allow(policy, method, &claims.claims)),
            method: Some(method),
            sub,
        }
    }
}

fn bearer_deny(realm: &str, e: &BearerError, provider: &Provider) -> Deny {
    match e {
        BearerError::Idp(err) => {
            tracing::warn!(provider = %provider.name(), error = %err, "identity provider needed and unavailable");
            Deny::unavailable("the identity provider is unavailable")
        }
        other => Deny::unauthorized(realm, "invalid_token", other.to_string()),
    }
}

/// The upstream headers and metadata of an allowed request.
fn allow(policy: &Policy, method: AuthMethod, claims: &Map<String, Value>) -> Allow {
    let mut out = Allow::default();
    for h in &policy.upstream_headers {
        let value = claim_value(claims, &h.claim)
            .and_then(claim_header_value)
            .filter(|v| HeaderValue::from_str(v).is_ok() && !v.is_empty());
        match value {
            Some(v) => out.set_headers.push((h.name.clone(), v)),
            None => out.remove_headers.push(h.name.clone()),
        }
    }
    dedup_headers(&mut out);
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(sub) = s("sub") {
        out.metadata.push(("sub", sub));
    }
    if let Some(iss) = s("iss") {
        out.metadata.push(("iss", iss));
    }
    if let Some(cid) = s("client_id").or_else(|| s("cid")).or_else(|| s("azp")) {
        out.metadata.push(("client_id", cid));
    }
    out.metadata.push(("policy", policy.name.clone()));
    out.metadata
        .push(("auth_method", method.as_str().to_string()));
    out
}

/// A header configured twice keeps its first value; a name never appears both set and removed.
fn dedup_headers(a: &mut Allow) {
    let mut seen: Vec<HeaderName> = Vec::new();
    a.set_headers.retain(|(k, _)| {
        if seen.contains(k) {
            false
        } else {
            seen.push(k.clone());
            true
        }
    });
    a.remove_headers.retain(|k| !seen.contains(k));
    a.remove_headers.dedup();
}
