//! The integration tests, one binary: the real server on port 0, driven by a tonic client, against the in-process
//! mock IdP of `tests/support`. One binary rather than one per file, so every support item is used by some test (an
//! unused one is dead code and warns) and the dependency tree is linked once.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod client_auth;
mod client_credentials;
mod grpc;
mod introspection;
mod issuers;
mod login;
mod provider;
mod rules;
mod sessions;
mod shared_caches;
mod store;
mod token_places;
mod userinfo;
