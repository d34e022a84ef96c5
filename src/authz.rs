//! The core: `Authorizer::check(&CheckView) -> Decision`, top-down: select the compiled policy, parse the
//! request's credentials once, authenticate (the login, else the token methods), authorize (access rules), build
//! the upstream headers, record. No protobuf and no network framing here.

use std::sync::Arc;

use crate::authn::{Authenticated, Refusal};
use crate::clock::Clock;
use crate::config::{AuthMethod, Config, StoreBackendConfig};
use crate::credentials::Credentials;
use crate::decision::Decision;
use crate::flow::{Shared, TokenMethods};
use crate::login::Logins;
use crate::policy::headers;
use crate::policy::runtime::{self, PolicyRuntime};
use crate::provider::{IdpClient, Provider, ReqwestIdp};
use crate::request::CheckView;
use crate::rng::Rng;
use crate::store::Store;
use crate::store::sessions::SessionIndex;
use crate::telemetry::{CheckRecord, Metrics, PolicyCounters};

/// Answers Checks for one configuration.
#[derive(Debug)]
pub struct Authorizer {
    config: Arc<Config>,
    providers: Arc<[Arc<Provider>]>,
    /// The policies, compiled, in config order (route and hint indexes point here).
    policies: Vec<PolicyRuntime>,
    tokens: TokenMethods,
    logins: Logins,
    /// Decision counters of Checks that selected no policy.
    unselected: PolicyCounters,
    /// State shared with the other replicas (or kept in this process).
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

/// A decision with what led to it, for logs and metrics.
struct Outcome {
    decision: Decision,
    method: Option<AuthMethod>,
    sub: Option<String>,
    /// The verified `iss` of the identity (for the log line): the issuer actually used.
    iss: Option<String>,
}

impl Outcome {
    /// A refusal as the client gets it: the one place a [`Refusal`] becomes a `Deny`.
    fn refused(rt: Option<&PolicyRuntime>, refusal: Refusal) -> Self {
        Outcome {
            method: refusal.method,
            decision: Decision::Deny(refusal.deny(rt.map(|rt| &rt.policy))),
            sub: None,
            iss: None,
        }
    }
}

impl Authorizer {
    /// Builds the authorizer: one HTTP client and one provider object per configured provider (nothing fetched yet),
    /// and every policy compiled. Token and session times are checked against `clock`; the login's random values
    /// come from `rng`.
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Self {
        Self::with_idp(config, metrics, clock, rng, Arc::new(ReqwestIdp::new()))
    }

    /// [`Authorizer::new`] with every provider calling its IdP through `idp` (tests: [`crate::provider::fake`]).
    pub fn with_idp(
        config: Config,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        idp: Arc<dyn IdpClient>,
    ) -> Self {
        let store = Arc::new(Store::new(&config.store, metrics.clone()));
        Self::with_store(config, metrics, clock, rng, idp, store)
    }

    /// [`Authorizer::with_idp`] over `store` (tests: a store whose backend fails on cue).
    pub fn with_store(
        config: Config,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        idp: Arc<dyn IdpClient>,
        store: Arc<Store>,
    ) -> Self {
        // The token methods' caches and the JWKS refetch limiter go through the store only when it is shared.
        let shared = matches!(config.store.backend, StoreBackendConfig::Redis { .. })
            .then(|| Shared::new(store.clone()));
        let providers: Arc<[Arc<Provider>]> = config
            .providers
            .iter()
            .map(|p| {
                let p = Provider::new(p.clone(), idp.clone(), metrics.clone());
                Arc::new(
                    p.with_shared(shared.clone())
                        .with_seams(clock.clone(), rng.clone()),
                )
            })
            .collect();
        // A token policy on a provider without `audiences` is a config error unless it says
        // `allow_any_audience = true` (config validation), so no warning is needed here.
        Authorizer {
            policies: runtime::compile(&config, &providers, &metrics),
            tokens: TokenMethods::new(&config, clock.clone(), metrics.clone(), shared),
            logins: Logins::new(
                clock,
                rng,
                metrics.clone(),
                config.server.check_timeout / 2,
                store.clone(),
            )
            .with_index(SessionIndex::new(store.clone())),
            unselected: metrics.policy_counters("-"),
            store,
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

    /// The shared store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The logins (sessions, ended sessions, the session index).
    pub fn logins(&self) -> &Logins {
        &self.logins
    }

    /// Ready once every provider has loaded its discovery document and keys.
    pub fn is_ready(&self) -> bool {
        self.providers.iter().all(|p| p.is_ready())
    }

    /// Answers one Check: never panics, never fails open.
    pub async fn check(&self, view: &CheckView<'_>) -> Decision {
        let mut record = CheckRecord::start(&self.metrics, &self.unselected, view);
        let outcome = match self.select(view) {
            Ok(rt) => {
                record.selected(&rt.policy.name, &rt.decisions);
                let deadline = self.config.server.check_timeout;
                match tokio::time::timeout(deadline, self.check_policy(rt, view)).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        tracing::warn!(policy.name = %rt.policy.name, timeout_ms = deadline.as_millis() as u64, "check deadline passed waiting for the identity provider");
                        let slow = Refusal::unavailable("the identity provider is too slow");
                        Outcome::refused(Some(rt), slow)
                    }
                }
            }
            Err(refusal) => Outcome::refused(None, refusal),
        };
        record.issuer(outcome.iss);
        record.finish(&outcome.decision, outcome.method, outcome.sub.as_deref());
        outcome.decision
    }

    /// `context_extensions.policy`, else the best `[[routes]]` match, else 403.
    pub(crate) fn select(&self, view: &CheckView<'_>) -> Result<&PolicyRuntime, Refusal> {
        let none = || Refusal::forbidden("no policy is configured for this route");
        if let Some(name) = view.policy_hint() {
            return match self.config.policy_index(name) {
                Some(i) => self.policies.get(i).ok_or_else(none),
                None => {
                    let shown: String = name.chars().take(64).collect();
                    tracing::error!(policy.hint = %shown, "Envoy named a policy that is not configured; denying");
                    Err(none())
                }
            };
        }
        let route = self.config.routes.find(view.host, view.path, view.method);
        route
            .and_then(|route| self.policies.get(route.policy))
            .ok_or_else(none)
    }

    /// One selected policy: credentials -> authenticate -> authorize -> headers.
    async fn check_policy(&self, rt: &PolicyRuntime, view: &CheckView<'_>) -> Outcome {
        let creds = Credentials::parse(view, rt);
        let login = match &rt.login {
            Some(flow) => {
                self.logins
                    .step(&rt.policy, flow, &rt.provider, view, &creds)
                    .await
            }
            None => None,
        };
        let authenticated = match login {
            Some(step) => step,
            None => self
                .tokens
                .authenticate(rt, &creds)
                .await
                .map(Authenticated::Identity),
        };
        let id = match authenticated {
            Ok(Authenticated::Identity(id)) => id,
            Ok(Authenticated::Redirect(r)) => {
                return Outcome {
                    decision: Decision::Redirect(r),
                    method: Some(AuthMethod::AuthorizationCode),
                    sub: None,
                    iss: None,
                };
            }
            Ok(Authenticated::Answered(a)) => {
                return Outcome {
                    decision: Decision::Answered(a),
                    method: Some(AuthMethod::Session),
                    sub: None,
                    iss: None,
                };
            }
            Err(refusal) => return Outcome::refused(Some(rt), refusal),
        };
        let (method, sub) = (id.method, id.sub());
        let iss = id.iss().map(str::to_string);
        if let Err(denied) = rt.policy.access.check(id.claims()) {
            let refusal = Refusal::insufficient(denied.to_string())
                .during(method)
                .with_cookies(id.set_cookies);
            return Outcome {
                sub,
                iss,
                ..Outcome::refused(Some(rt), refusal)
            };
        }
        Outcome {
            decision: Decision::Allow(headers::allow(rt, view, &creds, id)),
            method: Some(method),
            sub,
            iss,
        }
    }
}
