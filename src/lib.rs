//! oidc-authz: OpenID Connect for any Envoy, as an ext_authz gRPC service.
//!
//! # Layout
//!
//! A Check arrives at [`server`] (tonic), is viewed through [`request::CheckView`] (no copies of the
//! protobuf), and goes to [`authz::Authorizer::check`], which
//!
//! 1. selects a [`config::Policy`]: Envoy's `context_extensions.policy`, else the best [`policy::routes`] match,
//!    else 403;
//! 2. authenticates with one of the policy's auth methods in [`flow`]: [`flow::bearer`] (JWTs verified against
//!    keys that [`provider`] discovers and caches), [`flow::introspection`] (RFC 7662),
//!    [`flow::client_credentials`] (the grant run for the client, token cached), or the browser login in
//!    [`flow::authcode`] with its encrypted cookies in [`flow::session`];
//! 3. applies [`policy::access`] (scopes, groups, roles, audience, Kong semantics);
//! 4. builds the upstream headers (and strips every client-sent spelling of them), then returns a
//!    [`decision::Decision`], which the [`envoy`] adapter alone turns into a `CheckResponse`.
//!
//! [`config`] turns figment input into validated types once; [`telemetry`] holds logs and metrics; [`clock`] and
//! [`rng`] are the time and randomness seams for tests.

pub mod authn;
pub mod authz;
pub mod cache;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod envoy;
pub mod flow;
pub mod login;
#[cfg(test)]
mod offline_tests;
pub mod policy;
pub mod provider;
pub mod request;
pub mod rng;
pub mod server;
pub mod telemetry;
