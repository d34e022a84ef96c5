//! `cache`: what the in-memory caches share: entries that live until their own deadline ([`Expires`],
//! [`Lifetime`], [`until_deadline`]) and the one way to make a cache key from secrets or tokens ([`key`]).

use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::clock::Clock;

/// A cache key: a SHA-256, so no token or secret is kept in clear.
pub type Key = [u8; 32];

/// The key of a list of parts: a SHA-256 over each part's length (8 bytes, big-endian) and bytes, so two
/// different lists never share their hashed input (a part may contain any byte, NUL included).
pub fn key(parts: &[&str]) -> Key {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// A cached value that knows how long it may stay.
pub trait Expires {
    /// How long the value lives from its insertion, `now` being the clock's seconds since the epoch.
    fn ttl(&self, now: u64) -> Duration;
}

impl<T: Expires + ?Sized> Expires for Arc<T> {
    fn ttl(&self, now: u64) -> Duration {
        T::ttl(self, now)
    }
}

/// The moka expiry of values that say their own lifetime, read against the clock seam.
#[derive(Debug, Clone)]
pub struct Lifetime(pub Arc<dyn Clock>);

impl<K, V: Expires> moka::Expiry<K, V> for Lifetime {
    fn expire_after_create(&self, _key: &K, value: &V, _created: Instant) -> Option<Duration> {
        Some(value.ttl(self.0.now()))
    }
}

/// An async cache of at most `max_entries` values, each dropped when its own [`Expires::ttl`] has passed.
pub fn until_deadline<K, V>(max_entries: u64, clock: Arc<dyn Clock>) -> moka::future::Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Expires + Clone + Send + Sync + 'static,
{
    moka::future::Cache::builder()
        .max_capacity(max_entries)
        .expire_after(Lifetime(clock))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn keys_frame_their_parts() {
        assert_eq!(key(&["a", "t"]), key(&["a", "t"]));
        assert_ne!(key(&["a", "t"]), key(&["b", "t"]));
        assert_ne!(key(&["a", "t1"]), key(&["a", "t2"]));
        // the same bytes cut differently are different keys
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        assert_ne!(key(&["a\0", "b"]), key(&["a", "\0b"]));
        assert_ne!(key(&["ab"]), key(&["a", "b"]));
        assert_ne!(key(&[""]), key(&[]));
    }

    struct Until(u64);

    impl Expires for Until {
        fn ttl(&self, now: u64) -> Duration {
            Duration::from_secs(self.0.saturating_sub(now))
        }
    }

    #[test]
    fn lifetime_reads_the_clock() {
        let clock = Arc::new(ManualClock::new(1_000));
        let expiry = Lifetime(clock.clone());
        let ttl = |v: &Arc<Until>| {
            moka::Expiry::<u8, Arc<Until>>::expire_after_create(&expiry, &0, v, Instant::now())
        };
        assert_eq!(ttl(&Arc::new(Until(1_060))), Some(Duration::from_secs(60)));
        clock.advance(50);
        assert_eq!(ttl(&Arc::new(Until(1_060))), Some(Duration::from_secs(10)));
    }
}
