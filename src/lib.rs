//! oidc-authz: OpenID Connect for any Envoy, as an ext_authz gRPC service.
//!
//! # The request path
//!
//! A Check arrives at [`server`] (tonic) and is viewed through [`request::CheckView`] (no copies of the
//! protobuf). [`authz::Authorizer::check`] then reads top-down:
//!
//! 1. **select** a [`policy::runtime::PolicyRuntime`]: Envoy's `context_extensions.policy`, else the best
//!    [`policy::routes`] match, else 403. Each policy was compiled at start into one object holding its provider
//!    handle, its login flow (if any), its access rules and header plan, and its metric handles;
//! 2. **parse the credentials once** into [`credentials::Credentials`]: the `Authorization` header, the policy's
//!    client-credential headers, the cookies, and whether the request is the login's callback or logout;
//! 3. **authenticate**: a login policy's [`login::Logins::step`] first (callback, logout, a session from the
//!    [`login::store::SessionStore`], or the redirect to log in), unless the request carries a token; else
//!    [`flow::TokenMethods`]: [`flow::bearer`] (JWTs verified against keys that [`provider`] discovers and caches),
//!    [`flow::introspection`] (RFC 7662), [`flow::client_credentials`] (the grant run for the client, its token
//!    verified like any other). Every method answers an [`authn::Identity`], a redirect, or an
//!    [`authn::Refusal`], and [`authn::Refusal::deny`] alone turns a refusal into the 401/403/503;
//! 4. **authorize** with [`policy::access`] (scopes, groups, roles, audience; Kong semantics);
//! 5. **build the headers** with [`policy::headers`]: claims, tokens, metadata, and every client-sent spelling of a
//!    header the policy controls removed;
//! 6. **record** it ([`telemetry::CheckRecord`]: one log line, counters, latency), and return a
//!    [`decision::Decision`], which the [`envoy`] adapter alone turns into a `CheckResponse`.
//!
//! [`store`] keeps what replicas share (ended sessions, `store` sessions, refresh results, token caches, counters,
//! the session index) in memory or in Redis, sealed under hashed keys; [`admin`] serves the admin gRPC API (list
//! and revoke sessions, explain a request) on the admin address; [`login::backchannel`] verifies the provider's
//! back-channel logout tokens.
//!
//! [`kong`] imports a Kong declarative config (`openid-connect` plugins) into a config and Envoy routes.
//!
//! [`config`] turns figment input into validated types once. The I/O seams are [`provider::client::IdpClient`]
//! (every call to an identity provider; [`provider::fake::FakeIdp`] in tests), [`clock`] and [`rng`]; [`cache`]
//! gives every cache one key function and one per-entry lifetime.
//!
//! [`envoy_config`] prints the Envoy side of a config (`oidc-authz envoy-config`): the ext_authz filter sending only
//! the headers the policies read, per-route snippets, and with [`envoy_offload`] jwt_authn + RBAC for bearer-only
//! policies.

pub mod admin;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod envoy;
pub mod envoy_config;
pub mod envoy_offload;
pub mod flow;
pub mod json_log;
pub mod kong;
pub mod login;
#[cfg(test)]
mod offline_tests;
pub mod policy;
pub mod provider;
pub mod request;
pub mod rng;
pub mod server;
pub mod store;
pub mod telemetry;
