//! Test support: an in-process mock IdP (discovery + JWKS with keys it mints tokens with, switchable to
//! down/slow/garbage/rotated keys), the real oidc-authz server on port 0, and a Check request builder.
//!
//! - [`keys`]: the test signing keys (`keys/*.pem`).
//! - [`idp`]: the mock IdP, its state and failure modes; its HTTP endpoints in `idp/endpoints.rs`.
//! - [`harness`]: oidc-authz under test (the standard config and its per-test edits, server on port 0, metrics).
//! - [`request`]: Check requests built the way Envoy sends them.
//! - [`answer`]: Check answers read back the way Envoy reads them.
//! - [`redis`]: real `redis-server` processes (one node, or a three-node cluster) on loopback.

mod answer;
mod harness;
mod idp;
mod keys;
mod redis;
mod request;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use answer::*;
pub use harness::*;
pub use idp::*;
pub use keys::*;
pub use redis::*;
pub use request::*;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(N.fetch_add(1, Ordering::SeqCst));
    h.finish()
}
