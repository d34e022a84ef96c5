//! A policy compiled for the hot path: at load, each configured policy becomes one [`PolicyRuntime`] holding
//! its provider handle, its login flow (settings, session store) if it has one, its access rules and header plan
//! (in the policy), and its metric handles. A Check reaches all of it through the one selected object: no arrays
//! parallel to the config, no lookups by name or pointer.

use std::sync::Arc;

use crate::config::{Config, Policy};
use crate::flow::issuer::Issuers;
use crate::login::{LoginFlow, MAX_REVOCATIONS_PER_PROVIDER};
use crate::provider::Provider;
use crate::telemetry::{Metrics, PolicyCounters};

/// One compiled policy.
#[derive(Debug)]
pub struct PolicyRuntime {
    /// The configured policy: methods, access rules, header plan. Its login settings are not here but in
    /// [`PolicyRuntime::login`] (taken out at compile time, so they live in one place).
    pub policy: Policy,
    /// Its provider (the first of `providers`): introspection of opaque tokens, client credentials, the login.
    pub provider: Arc<Provider>,
    /// Every provider whose tokens it accepts (`providers`, or just `provider`): a JWT's `iss` picks one.
    pub issuers: Issuers,
    /// Its browser login, when it allows `authorization_code` or `session`.
    pub login: Option<LoginFlow>,
    /// Its decision counters.
    pub decisions: PolicyCounters,
}

/// Compiles every policy of `config`, in config order (so route and policy indexes stay valid), against
/// `providers`, one per configured provider in config order (validation guarantees each policy's provider index).
pub fn compile(
    config: &Config,
    providers: &[Arc<Provider>],
    metrics: &Metrics,
) -> Vec<PolicyRuntime> {
    let revocations: Vec<Arc<tokio::sync::Semaphore>> = providers
        .iter()
        .map(|_| Arc::new(tokio::sync::Semaphore::new(MAX_REVOCATIONS_PER_PROVIDER)))
        .collect();
    config
        .policies
        .iter()
        .map(|p| {
            let mut policy = p.clone();
            let login = policy
                .login
                .take()
                .map(|settings| LoginFlow::new(settings, revocations[p.provider].clone()));
            PolicyRuntime {
                decisions: metrics.policy_counters(&policy.name),
                provider: providers[p.provider].clone(),
                issuers: Issuers::new(p.providers.iter().map(|&i| providers[i].clone()).collect()),
                policy,
                login,
            }
        })
        .collect()
}
