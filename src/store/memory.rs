//! The store in this process's memory: the zero-setup default for a single replica (nothing is shared with
//! another process). Entries expire by their own lifetime; events go to this process's subscribers only.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::{Backend, StoreError};

/// Most entries kept (each is small: a marker, a counter, a sealed session).
const MAX_ENTRIES: u64 = 1_000_000;

#[derive(Clone)]
struct Entry {
    value: Vec<u8>,
    ttl: Duration,
    /// Set: the entry's lifetime starts again; a counter's increment keeps the lifetime it has.
    restart: bool,
}

struct ByTtl;

impl moka::Expiry<String, Entry> for ByTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        left: Option<Duration>,
    ) -> Option<Duration> {
        if value.restart { Some(value.ttl) } else { left }
    }
}

/// A set and when it expires.
#[derive(Clone)]
struct SetEntry {
    members: Arc<Mutex<BTreeSet<Vec<u8>>>>,
    expires: Instant,
}

struct SetExpiry;

impl moka::Expiry<String, SetEntry> for SetExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &SetEntry,
        now: Instant,
    ) -> Option<Duration> {
        Some(value.expires.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &SetEntry,
        now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires.saturating_duration_since(now))
    }
}

/// Who listens on which channel.
type Subscribers = Arc<Mutex<Vec<(String, broadcast::Sender<Vec<u8>>)>>>;

/// Entries in a bounded in-memory map. A clone is the same store (tests keep one to look at what is at rest).
#[derive(Clone)]
pub struct MemoryBackend {
    entries: moka::sync::Cache<String, Entry>,
    sets: moka::sync::Cache<String, SetEntry>,
    subscribers: Subscribers,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        MemoryBackend {
            entries: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(ByTtl)
                .build(),
            sets: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .expire_after(SetExpiry)
                .build(),
            subscribers: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl Backend for MemoryBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        ready(Ok(self.entries.get(key).map(|e| e.value)))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let entry = Entry {
            value: value.to_vec(),
            ttl,
            restart: true,
        };
        self.entries.insert(key.to_string(), entry);
        ready(Ok(()))
    }

    fn set_new<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let entry = self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| Entry {
                value: value.to_vec(),
                ttl,
                restart: true,
            });
        ready(Ok(entry.is_fresh()))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.entries.invalidate(key);
        ready(Ok(()))
    }

    fn incr<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<u64, StoreError>> {
        let entry = self
            .entries
            .entry(key.to_string())
            .and_upsert_with(|old| match old {
                Some(old) => {
                    let old = old.into_value();
                    let n = std::str::from_utf8(&old.value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0);
                    Entry {
                        value: n.saturating_add(1).to_string().into_bytes(),
                        ttl: old.ttl,
                        restart: false,
                    }
                }
                None => Entry {
                    value: b"1".to_vec(),
                    ttl,
                    restart: true,
                },
            });
        let n = std::str::from_utf8(&entry.value().value)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        ready(Ok(n))
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        for (c, to) in subscribers.iter() {
            if c == channel {
                // No receiver right now is fine: nobody is waiting for this event.
                let _ = to.send(message.to_vec());
            }
        }
        ready(Ok(()))
    }

    fn subscribe(&self, channel: String, to: broadcast::Sender<Vec<u8>>) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((channel, to));
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(()))
    }

    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let until = Instant::now() + ttl;
        self.sets.entry(key.to_string()).and_upsert_with(|old| {
            let entry = match old {
                Some(old) => {
                    let old = old.into_value();
                    SetEntry {
                        expires: old.expires.max(until),
                        members: old.members,
                    }
                }
                None => SetEntry {
                    members: Arc::default(),
                    expires: until,
                },
            };
            entry
                .members
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(member.to_vec());
            entry
        });
        ready(Ok(()))
    }

    fn remove_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        if let Some(set) = self.sets.get(key) {
            set.members
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(member);
        }
        ready(Ok(()))
    }

    fn members<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Vec<u8>>, StoreError>> {
        let members = self
            .sets
            .get(key)
            .map(|set| {
                set.members
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(members))
    }
}
