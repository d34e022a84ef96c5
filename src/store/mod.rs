//! State shared between replicas: [`Store`] keeps small values under hashed keys with a lifetime, counts, takes
//! locks and tells every replica about events (a session ended). Its backend is this process's memory
//! ([`memory::MemoryBackend`], the zero-setup default) or Redis, single node or cluster ([`redis::RedisBackend`]).
//! Keys are `key_prefix` + a kind + the hex of a hash (never a token, secret or code); with Redis every value is
//! sealed at rest with `store.secret` (AES-256-GCM, bound to its key).

pub mod memory;
pub mod redis;
pub mod sessions;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::broadcast;

use crate::cache;
use crate::config::{StoreBackendConfig, StoreConfig};
use crate::login::cookie::CookieCodec;
use crate::telemetry::Metrics;

/// Why the store could not answer. The text names the operation and the cause, never a key or value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Not connected, timed out, or the backend refused the command.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

/// The channel every replica listens on.
pub const EVENTS_CHANNEL: &str = "events";

/// What the backends do: bytes under full key strings. Implemented by [`memory::MemoryBackend`] and
/// [`redis::RedisBackend`]; [`Store`] adds the key scheme, sealing and metrics above it.
pub trait Backend: Send + Sync + fmt::Debug {
    /// The value under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// Sets `key` to `value` for `ttl`.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Sets `key` only when it holds nothing: whether it was set.
    fn set_new<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Removes `key`.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Adds one to the counter under `key` (created with lifetime `ttl`): the new count.
    fn incr<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Sends `message` to every replica's subscription (this one's too).
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Starts delivering the messages of `channel` to `to` (reconnecting as needed) until `to` has no receivers.
    fn subscribe(&self, channel: String, to: broadcast::Sender<Vec<u8>>);
    /// Whether the backend answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Adds `member` to the set under `key`; the set lives at least `ttl` from now (a longer lifetime is kept).
    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Removes `member` from the set under `key`.
    fn remove_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The members of the set under `key` (none when there is no set).
    fn members<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Vec<u8>>, StoreError>>;
}

/// The store every shared piece of state goes through.
pub struct Store {
    backend: Box<dyn Backend>,
    prefix: String,
    /// Seals values at rest (required with Redis; the memory backend keeps values in this process).
    codec: Option<CookieCodec>,
    timeout: Duration,
    events: broadcast::Sender<Vec<u8>>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("prefix", &self.prefix)
            .field("sealed", &self.codec.is_some())
            .finish()
    }
}

impl Store {
    /// The store `config` describes. Nothing is connected yet: the Redis backend connects (and reconnects) in
    /// the background, and answers `Unavailable` until it is connected.
    pub fn new(config: &StoreConfig, metrics: Arc<Metrics>) -> Self {
        let backend: Box<dyn Backend> = match &config.backend {
            StoreBackendConfig::Memory => Box::new(memory::MemoryBackend::new()),
            StoreBackendConfig::Redis { nodes, cluster } => Box::new(redis::RedisBackend::new(
                nodes.clone(),
                *cluster,
                config.timeout,
            )),
        };
        Self::with_backend(
            backend,
            &config.key_prefix,
            config.codec.clone(),
            config.timeout,
            metrics,
        )
    }

    /// A store over `backend` (tests).
    pub fn with_backend(
        backend: Box<dyn Backend>,
        prefix: &str,
        codec: Option<CookieCodec>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        backend.subscribe(format!("{prefix}{EVENTS_CHANNEL}"), events.clone());
        Store {
            backend,
            prefix: prefix.to_string(),
            codec,
            timeout,
            events,
            metrics,
        }
    }

    /// The full key of an entry: the prefix, its kind, and the hex of its id (a hash).
    fn key(&self, kind: &str, id: &cache::Key) -> String {
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + 1 + 64);
        key.push_str(&self.prefix);
        key.push_str(kind);
        key.push(':');
        for b in id {
            key.push_str(&format!("{b:02x}"));
        }
        key
    }

    /// Runs one backend operation with the store's timeout, recording its latency and outcome.
    async fn timed<T>(
        &self,
        op: &'static str,
        f: BoxFuture<'_, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let res = match tokio::time::timeout(self.timeout, f).await {
            Ok(res) => res,
            Err(_) => Err(StoreError::Unavailable(format!("{op} timed out"))),
        };
        self.metrics.store_op(op, res.is_ok(), start.elapsed());
        if let Err(e) = &res {
            tracing::warn!(op, error = %e, "store operation failed");
        }
        res
    }

    /// The value of `kind`/`id`; a value that does not open with the store secret is no value (logged).
    pub async fn get(&self, kind: &str, id: &cache::Key) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(kind, id);
        let raw = self.timed("get", self.backend.get(&key)).await?;
        Ok(raw.and_then(|v| self.open(&key, v)))
    }

    /// Sets `kind`/`id` to `value` for `ttl` (sealed).
    pub async fn put(
        &self,
        kind: &str,
        id: &cache::Key,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.key(kind, id);
        let sealed = self.seal(&key, value);
        self.timed("set", self.backend.set(&key, &sealed, ttl))
            .await
    }

    /// Sets `kind`/`id` only when it holds nothing (a lock, a replay guard): whether it was set.
    pub async fn put_new(
        &self,
        kind: &str,
        id: &cache::Key,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.key(kind, id);
        let sealed = self.seal(&key, value);
        self.timed("set_new", self.backend.set_new(&key, &sealed, ttl))
            .await
    }

    /// Removes `kind`/`id`.
    pub async fn delete(&self, kind: &str, id: &cache::Key) -> Result<(), StoreError> {
        let key = self.key(kind, id);
        self.timed("delete", self.backend.delete(&key)).await
    }

    /// Adds one to the counter `kind`/`id` (which lives `ttl` from its first count): the new count.
    pub async fn incr(
        &self,
        kind: &str,
        id: &cache::Key,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        let key = self.key(kind, id);
        self.timed("incr", self.backend.incr(&key, ttl)).await
    }

    /// Tells every replica (this one too) `event`.
    pub async fn publish(&self, event: &[u8]) -> Result<(), StoreError> {
        let channel = format!("{}{EVENTS_CHANNEL}", self.prefix);
        self.timed("publish", self.backend.publish(&channel, event))
            .await
    }

    /// The events every replica publishes, from now on.
    pub fn events(&self) -> broadcast::Receiver<Vec<u8>> {
        self.events.subscribe()
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.backend.ping()).await
    }

    /// Adds `member` to the set `kind`/`id`, which lives at least `ttl` from now. Members are kept as they are
    /// (a set needs equal members to be equal): only ever ids that are hashes, never a secret.
    pub async fn add_member(
        &self,
        kind: &str,
        id: &cache::Key,
        member: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.key(kind, id);
        self.timed("add_member", self.backend.add_member(&key, member, ttl))
            .await
    }

    /// Removes `member` from the set `kind`/`id`.
    pub async fn remove_member(
        &self,
        kind: &str,
        id: &cache::Key,
        member: &[u8],
    ) -> Result<(), StoreError> {
        let key = self.key(kind, id);
        self.timed("remove_member", self.backend.remove_member(&key, member))
            .await
    }

    /// The members of the set `kind`/`id`.
    pub async fn members(&self, kind: &str, id: &cache::Key) -> Result<Vec<Vec<u8>>, StoreError> {
        let key = self.key(kind, id);
        self.timed("members", self.backend.members(&key)).await
    }

    fn seal(&self, key: &str, value: &[u8]) -> Vec<u8> {
        match &self.codec {
            Some(codec) => codec.seal(key, value).into_bytes(),
            None => value.to_vec(),
        }
    }

    fn open(&self, key: &str, stored: Vec<u8>) -> Option<Vec<u8>> {
        let Some(codec) = &self.codec else {
            return Some(stored);
        };
        let opened = std::str::from_utf8(&stored)
            .ok()
            .and_then(|s| codec.open(key, s));
        if opened.is_none() {
            tracing::warn!(
                "a store value does not open with store.secret (another secret, or tampered); ignored"
            );
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryBackend;
    use super::*;
    use base64::Engine as _;

    fn codec() -> CookieCodec {
        let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        CookieCodec::new(&[crate::config::Secret::new(secret)]).expect("a valid secret")
    }

    /// A store over a memory backend, and the backend itself, to look at what is at rest.
    fn store(codec: Option<CookieCodec>) -> (Store, MemoryBackend) {
        let raw = MemoryBackend::new();
        let store = Store::with_backend(
            Box::new(raw.clone()),
            "t:",
            codec,
            Duration::from_secs(5),
            Arc::new(Metrics::new()),
        );
        (store, raw)
    }

    /// Keys are the prefix, the kind and a hash; values at rest are sealed to their key: nothing readable, and a
    /// value moved to another key (or changed) is no value.
    #[tokio::test]
    async fn keys_are_hashes_and_values_are_sealed_to_their_key() {
        let (store, raw) = store(Some(codec()));
        let id = cache::key(&["a-token-value"]);
        store
            .put("session", &id, b"secret-token", Duration::from_secs(60))
            .await
            .expect("put");
        let key = store.key("session", &id);
        let at_rest = raw.get(&key).await.expect("get").expect("stored");
        assert!(!String::from_utf8_lossy(&at_rest).contains("secret-token"));
        assert!(!key.contains("a-token-value"));
        assert_eq!(
            store.get("session", &id).await.expect("get").as_deref(),
            Some(&b"secret-token"[..])
        );
        let other = cache::key(&["another"]);
        let moved = store.key("session", &other);
        assert!(key.starts_with("t:session:") && key.len() == "t:session:".len() + 64);
        raw.set(&moved, &at_rest, Duration::from_secs(60))
            .await
            .expect("set");
        assert_eq!(store.get("session", &other).await.expect("get"), None);
    }

    #[tokio::test]
    async fn put_new_takes_once_and_counters_count() {
        let (store, _) = store(None);
        let id = cache::key(&["lock"]);
        let ttl = Duration::from_secs(60);
        assert!(store.put_new("lock", &id, b"a", ttl).await.expect("first"));
        assert!(!store.put_new("lock", &id, b"b", ttl).await.expect("second"));
        assert_eq!(
            store.get("lock", &id).await.expect("get").as_deref(),
            Some(&b"a"[..])
        );
        store.delete("lock", &id).await.expect("delete");
        assert!(
            store
                .put_new("lock", &id, b"c", ttl)
                .await
                .expect("after delete")
        );
        let n = cache::key(&["counter"]);
        for want in 1..=3 {
            assert_eq!(store.incr("count", &n, ttl).await.expect("incr"), want);
        }
    }

    /// Sets hold each member once, forget removed ones, and live as long as their longest-lived addition.
    #[tokio::test]
    async fn sets_add_remove_and_list_members() {
        let (store, _) = store(Some(codec()));
        let id = cache::key(&["a-user"]);
        assert!(store.members("set", &id).await.expect("none").is_empty());
        store
            .add_member("set", &id, b"a", Duration::from_secs(60))
            .await
            .expect("add a");
        store
            .add_member("set", &id, b"b", Duration::from_secs(60))
            .await
            .expect("add b");
        store
            .add_member("set", &id, b"a", Duration::from_secs(60))
            .await
            .expect("add a again");
        let mut members = store.members("set", &id).await.expect("members");
        members.sort();
        assert_eq!(members, vec![b"a".to_vec(), b"b".to_vec()]);
        store
            .remove_member("set", &id, b"a")
            .await
            .expect("remove a");
        assert_eq!(
            store.members("set", &id).await.expect("members"),
            vec![b"b".to_vec()]
        );
        let other = cache::key(&["another-user"]);
        assert!(store.members("set", &other).await.expect("none").is_empty());
    }

    #[tokio::test]
    async fn events_reach_every_subscriber() {
        let (store, _) = store(None);
        let mut a = store.events();
        let mut b = store.events();
        store.publish(b"ended:x").await.expect("publish");
        assert_eq!(a.recv().await.expect("a"), b"ended:x");
        assert_eq!(b.recv().await.expect("b"), b"ended:x");
    }
}
