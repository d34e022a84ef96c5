//! The token methods: `bearer` (JWTs verified locally), `introspection` (RFC 7662) and `client_credentials`
//! (the grant run for the client, its token then verified like any other). [`TokenMethods::authenticate`] turns a
//! request's credentials into an [`Identity`] or a [`Refusal`]; each method's own errors become a refusal here.

pub mod bearer;
pub mod claims;
pub mod client_credentials;
pub mod introspection;

use std::sync::Arc;

use crate::authn::{Claims, Identity, Refusal, RefusalKind};
use crate::clock::Clock;
use crate::config::{AuthMethod, Config};
use crate::credentials::{Authorization, Credentials};
use crate::flow::bearer::{BearerVerifier, Verified};
use crate::flow::client_credentials::{ClientCredentials, ClientCreds, CredsError};
use crate::flow::introspection::Introspector;
use crate::policy::runtime::PolicyRuntime;
use crate::provider::IdpError;
use crate::telemetry::Metrics;

/// The token methods and their caches (shared by every policy).
#[derive(Debug)]
pub struct TokenMethods {
    bearer: BearerVerifier,
    cc: ClientCredentials,
    introspector: Introspector,
}

impl TokenMethods {
    /// Empty caches sized by `config`; token times checked against `clock`.
    pub fn new(config: &Config, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        TokenMethods {
            bearer: BearerVerifier::new(
                config.server.token_cache_entries,
                clock.clone(),
                metrics.clone(),
            ),
            cc: ClientCredentials::new(10_000, &config.providers, clock.clone(), metrics.clone()),
            introspector: Introspector::new(100_000, clock, metrics),
        }
    }

    /// Authenticates a request that carries no session the login took: a bearer token, client credentials
    /// (Basic or the policy's headers), or nothing usable (401 naming what the policy accepts).
    pub async fn authenticate(
        &self,
        rt: &PolicyRuntime,
        creds: &Credentials<'_>,
    ) -> Result<Identity, Refusal> {
        let policy = &rt.policy;
        let cc_allowed = policy.allows(AuthMethod::ClientCredentials);
        let header_client = creds.header_client.as_ref().filter(|_| cc_allowed);
        match (creds.authorization, header_client) {
            (Authorization::Bearer(token), _)
                if policy.allows(AuthMethod::Bearer)
                    || policy.allows(AuthMethod::Introspection) =>
            {
                self.token(rt, token).await
            }
            (Authorization::Basic(b64), _) if cc_allowed => {
                let client = client_credentials::from_basic(b64);
                self.client_credentials(rt, client.as_ref().map_err(|e| *e))
                    .await
            }
            (Authorization::None, Some(client)) => {
                self.client_credentials(rt, client.as_ref().map_err(|e| *e))
                    .await
            }
            (Authorization::Malformed(why), _) => {
                Err(Refusal::unauthenticated("invalid_token", why))
            }
            (Authorization::None, None) => Err(Refusal::unauthenticated(
                "invalid_token",
                if cc_allowed {
                    "no credentials in the request"
                } else {
                    "no access token in the request"
                },
            )),
            (Authorization::Bearer(_) | Authorization::Basic(_), _) => {
                Err(Refusal::unauthenticated(
                    "invalid_token",
                    "this route does not accept these credentials",
                ))
            }
        }
    }

    /// Client credentials read from the request: runs (or reuses) the grant, then verifies the token the IdP
    /// issued exactly like a token the client sent (locally or by introspection); that token goes upstream.
    async fn client_credentials(
        &self,
        rt: &PolicyRuntime,
        client: Result<&ClientCreds, CredsError>,
    ) -> Result<Identity, Refusal> {
        let client =
            client.map_err(|e| Refusal::unauthenticated("invalid_client", e.to_string()))?;
        let method = AuthMethod::ClientCredentials;
        let provider = rt.provider.as_ref();
        let token = self
            .cc
            .token(provider, &rt.policy, client)
            .await
            .map_err(|e| e.refusal(provider.name()).during(method))?;
        let mut id = self.token(rt, &token).await.map_err(|r| {
            if r.kind != RefusalKind::Unavailable {
                tracing::warn!(policy.name = %rt.policy.name, reason = %r.description, "the token the provider issued was refused (check issuer, audiences, introspection)");
            }
            r.during(method)
        })?;
        id.method = method;
        id.upstream_token = Some(token);
        Ok(id)
    }

    /// A token from `Authorization: Bearer`: verified locally when it is a JWT and the policy allows `bearer`
    /// (unless `introspect_jwt_tokens`), else introspected when the policy allows `introspection`.
    async fn token(&self, rt: &PolicyRuntime, token: &str) -> Result<Identity, Refusal> {
        let (policy, provider) = (&rt.policy, rt.provider.as_ref());
        let jwt = BearerVerifier::is_jwt(token);
        let introspect = policy.allows(AuthMethod::Introspection)
            && (!jwt || policy.introspect_jwt_tokens || !policy.allows(AuthMethod::Bearer));
        let name = provider.name();
        let (method, verified) = if introspect {
            let verified = self.introspector.introspect(provider, policy, token).await;
            (
                AuthMethod::Introspection,
                verified.map_err(|e| token_refusal(name, e)),
            )
        } else {
            let verified = self.bearer.verify(provider, token).await;
            (
                AuthMethod::Bearer,
                verified.map_err(|e| token_refusal(name, e)),
            )
        };
        match verified {
            Ok(verified) => Ok(token_identity(method, verified)),
            Err(refusal) => Err(refusal.during(method)),
        }
    }
}

/// A refused token: 401 `invalid_token` with the reason, or 503 (logged) when the reason is an IdP outage (the
/// error's source: only the `Idp` variants of the token methods' errors have one).
fn token_refusal(provider: &str, e: impl std::error::Error) -> Refusal {
    match e.source().and_then(|s| s.downcast_ref::<IdpError>()) {
        Some(outage) => Refusal::idp(provider, outage),
        None => Refusal::unauthenticated("invalid_token", e.to_string()),
    }
}

fn token_identity(method: AuthMethod, verified: Arc<Verified>) -> Identity {
    Identity {
        method,
        claims: Claims::Token(verified),
        upstream_token: None,
        id_token: None,
        set_cookies: Vec::new(),
    }
}
