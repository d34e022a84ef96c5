//! Where sessions live: the [`SessionStore`] seam with its two implementations, the encrypted session cookie
//! ([`CookieStore`]) and the shared store behind a cookie that only names the session ([`StoreSessions`]), and the
//! set of sessions ended by a logout ([`EndedSessions`], kept in the shared store: [`SharedEndedSessions`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::cache::{self, Expires, Lifetime};
use crate::clock::Clock;
use crate::config::LoginSettings;
use crate::login::cookie::{
    CookieAttrs, CookieCodec, RequestCookies, SetCookie, clear_cookie_headers, set_cookie_headers,
};
use crate::store::{Store, StoreError};

/// What a session holds. `Debug` shows no token.
#[derive(Serialize, Deserialize, Clone)]
pub struct SessionData {
    /// Random session id, kept across refreshes; logout remembers a hash of it so copies of the cookie die too.
    /// Required: a cookie without one cannot be ended, so it is no session.
    pub sid: String,
    /// The provider that issued the tokens.
    pub provider: String,
    /// Access token.
    pub at: String,
    /// ID token.
    #[serde(default)]
    pub it: Option<String>,
    /// Refresh token.
    #[serde(default)]
    pub rt: Option<String>,
    /// When the access token expires (seconds since the epoch).
    pub at_exp: u64,
    /// When the user logged in.
    pub created: u64,
    /// When the session was last used (to the login's last-seen granularity).
    pub seen: u64,
}

/// Stores a policy's sessions and says which one a request carries: the whole session in an encrypted cookie
/// ([`CookieStore`]), or server-side in the shared store behind a cookie that names it ([`StoreSessions`]).
/// Nothing read from a store is trusted until the login has verified its tokens.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// The reference to a session the request carries: `None` when it carries none at all, `Some(None)` when it
    /// carries a broken one (the browser should forget it).
    fn find(&self, cookies: &RequestCookies<'_>) -> Option<Option<String>>;
    /// The session behind a reference; `Ok(None)` when there is none (it does not open, parse, or has no id).
    fn load<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionData>, StoreError>>;
    /// Stores a session (`now` in seconds since the epoch); the `Set-Cookie` values that give it to the browser.
    fn save<'a>(
        &'a self,
        data: &'a SessionData,
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<SetCookie>, StoreError>>;
    /// Removes a session that ended (logout) from where it is kept (nothing to do for a cookie).
    fn remove<'a>(&'a self, data: &'a SessionData) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The `Set-Cookie` values that make the browser forget its session.
    fn forget(&self) -> Vec<SetCookie>;
    /// Whether the session lives outside the cookie (so another replica may change it: a local copy of it must
    /// be short-lived).
    fn server_side(&self) -> bool;
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

/// The whole session sealed (AES-256-GCM) in the session cookie, chunked when large; it lives as long as the
/// session's absolute timeout.
#[derive(Debug)]
pub struct CookieStore {
    name: String,
    codec: CookieCodec,
    secure: bool,
    absolute_timeout: u64,
}

impl CookieStore {
    /// Sessions in the cookie `name` (and its chunks), sealed with `codec`, `Secure` when `secure`.
    pub fn new(name: &str, codec: CookieCodec, secure: bool, absolute_timeout: u64) -> Self {
        CookieStore {
            name: name.to_string(),
            codec,
            secure,
            absolute_timeout,
        }
    }

    fn attrs(&self, max_age_secs: Option<u64>) -> CookieAttrs {
        CookieAttrs {
            secure: self.secure,
            max_age_secs,
        }
    }
}

impl SessionStore for CookieStore {
    fn find(&self, cookies: &RequestCookies<'_>) -> Option<Option<String>> {
        if !cookies.has(&self.name) {
            return None;
        }
        Some(cookies.read_chunked(&self.name))
    }

    fn load<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionData>, StoreError>> {
        let data = self
            .codec
            .open(&self.name, reference)
            .and_then(|b| serde_json::from_slice::<SessionData>(&b).ok())
            .filter(|d| !d.sid.is_empty());
        ready(Ok(data))
    }

    fn save<'a>(
        &'a self,
        data: &'a SessionData,
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<SetCookie>, StoreError>> {
        let sealed = self
            .codec
            .seal(&self.name, &serde_json::to_vec(data).unwrap_or_default());
        let remaining = (data.created + self.absolute_timeout).saturating_sub(now);
        let cookies = set_cookie_headers(&self.name, &sealed, &self.attrs(Some(remaining.max(1))))
            .unwrap_or_else(|| self.forget());
        ready(Ok(cookies))
    }

    fn remove<'a>(&'a self, _data: &'a SessionData) -> BoxFuture<'a, Result<(), StoreError>> {
        ready(Ok(()))
    }

    fn forget(&self) -> Vec<SetCookie> {
        clear_cookie_headers(&self.name, &self.attrs(None))
    }

    fn server_side(&self) -> bool {
        false
    }
}

/// The store kind of server-side sessions.
pub const SESSION_KIND: &str = "session";
/// What the session cookie of a server-side session holds before sealing: this tag, then the session id (so a
/// cookie-session cookie sealed with the same secret is no reference).
const SID_TAG: &str = "sid:";

/// The id of a server-side session in the store: a hash of its session id.
pub fn session_key(sid: &str) -> cache::Key {
    cache::key(&["oidc-authz session", sid])
}

/// Sessions in the shared store (`session_storage = "store"`): the cookie holds only the session id, sealed with
/// the policy's codec (small and of constant size, under the same name and attributes as a cookie session); the
/// session itself is in the store under a hash of that id (sealed at rest by the store), living until the idle
/// or the absolute timeout, whichever comes first, counted again at every save. A view over the Authorizer's
/// store and a policy's settings, built per Check (no allocation).
pub struct StoreSessions<'a> {
    store: &'a Store,
    settings: &'a LoginSettings,
}

impl fmt::Debug for StoreSessions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSessions")
            .field("cookie", &self.settings.cookie_name)
            .finish()
    }
}

impl<'a> StoreSessions<'a> {
    /// The sessions of the policy with `settings`, in `store`.
    pub fn new(store: &'a Store, settings: &'a LoginSettings) -> Self {
        StoreSessions { store, settings }
    }

    fn attrs(&self, max_age_secs: Option<u64>) -> CookieAttrs {
        CookieAttrs {
            secure: self.settings.redirect_uri.scheme() == "https",
            max_age_secs,
        }
    }
}

impl SessionStore for StoreSessions<'_> {
    fn find(&self, cookies: &RequestCookies<'_>) -> Option<Option<String>> {
        let name = &self.settings.cookie_name;
        if !cookies.has(name) {
            return None;
        }
        Some(cookies.read_chunked(name))
    }

    fn load<'b>(
        &'b self,
        reference: &'b str,
    ) -> BoxFuture<'b, Result<Option<SessionData>, StoreError>> {
        Box::pin(async move {
            let sid = self
                .settings
                .codec
                .open(&self.settings.cookie_name, reference)
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix(SID_TAG).map(str::to_string))
                .filter(|s| !s.is_empty());
            let Some(sid) = sid else { return Ok(None) };
            let Some(bytes) = self.store.get(SESSION_KIND, &session_key(&sid)).await? else {
                return Ok(None);
            };
            Ok(serde_json::from_slice::<SessionData>(&bytes)
                .ok()
                .filter(|d| d.sid == sid))
        })
    }

    fn save<'b>(
        &'b self,
        data: &'b SessionData,
        now: u64,
    ) -> BoxFuture<'b, Result<Vec<SetCookie>, StoreError>> {
        Box::pin(async move {
            let s = self.settings;
            let remaining = data
                .created
                .saturating_add(s.absolute_timeout)
                .saturating_sub(now)
                .max(1);
            let ttl = remaining.min(s.idle_timeout.max(1));
            let value = serde_json::to_vec(data).unwrap_or_default();
            self.store
                .put(
                    SESSION_KIND,
                    &session_key(&data.sid),
                    &value,
                    Duration::from_secs(ttl),
                )
                .await?;
            let sealed = s
                .codec
                .seal(&s.cookie_name, format!("{SID_TAG}{}", data.sid).as_bytes());
            Ok(
                set_cookie_headers(&s.cookie_name, &sealed, &self.attrs(Some(remaining)))
                    .unwrap_or_else(|| self.forget()),
            )
        })
    }

    fn remove<'b>(&'b self, data: &'b SessionData) -> BoxFuture<'b, Result<(), StoreError>> {
        Box::pin(async move {
            self.store
                .delete(SESSION_KIND, &session_key(&data.sid))
                .await
        })
    }

    fn forget(&self) -> Vec<SetCookie> {
        clear_cookie_headers(&self.settings.cookie_name, &self.attrs(None))
    }

    fn server_side(&self) -> bool {
        true
    }
}

/// Sessions ended by a logout, by a hash of their session id, remembered until the session would have expired
/// anyway, so a copy of the cookie made before the logout is no session after it, on any replica.
pub trait EndedSessions: Send + Sync + fmt::Debug {
    /// Remembers `key` as ended until `until` (seconds since the epoch), and tells every replica.
    fn end(&self, key: [u8; 32], until: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether `key` was ended.
    fn is_ended(&self, key: [u8; 32]) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Takes in the ended events other replicas published since the last call: whether any arrived (so local
    /// copies of sessions may be stale).
    fn sync(&self) -> bool;
}

/// The store kind of ended sessions.
pub const ENDED_KIND: &str = "ended";
/// What starts an ended event: then the hex of the ended key, `:`, and the session's absolute expiry.
const ENDED_EVENT: &str = "ended:";
/// How long this replica trusts its own "checked, not ended" answer.
pub const NOT_ENDED_FOR: Duration = Duration::from_secs(1);
/// The most entries each of this replica's copies of the ended sessions holds.
pub const LOCAL_ENTRIES: u64 = 100_000;

/// Ended sessions in the shared store (`ended` entries: the absolute expiry, living until then), with two local
/// copies in front: the sessions known ended (ended here, or heard of through an event; at most
/// [`LOCAL_ENTRIES`]: one evicted for size is asked of the store again, which keeps it until its expiry) and the
/// sessions checked and found not ended, trusted for at most [`NOT_ENDED_FOR`] (the Checks of one session that
/// find no answer share one store read). The sessions known ended are looked at first, so an ended event outranks
/// any "not ended" answer at once. With the memory backend the store is this process's memory, so nothing is lost
/// there either.
pub struct SharedEndedSessions {
    store: Arc<Store>,
    /// Key -> the session's absolute expiry.
    ended: moka::sync::Cache<cache::Key, Until>,
    /// Keys checked against the store and not ended, with when that read was sent: trusted for [`NOT_ENDED_FOR`]
    /// counted from the read's start, not from its answer, so a slow read cannot stretch the second (an ended one
    /// goes to `ended`).
    not_ended: moka::future::Cache<cache::Key, std::time::Instant>,
    /// The store's events (ended sessions of every replica).
    events: Mutex<broadcast::Receiver<Vec<u8>>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SharedEndedSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedEndedSessions")
            .field("ended", &self.ended.entry_count())
            .finish()
    }
}

/// An ended session's absolute expiry (seconds since the epoch): its entry stays a second past it.
#[derive(Debug, Clone, Copy)]
struct Until(u64);

impl Expires for Until {
    fn ttl(&self, now: u64) -> Duration {
        Duration::from_secs(self.0.saturating_sub(now).saturating_add(1))
    }
}

fn hex(key: &cache::Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_ended_event(event: &[u8]) -> Option<(cache::Key, u64)> {
    let rest = std::str::from_utf8(event).ok()?.strip_prefix(ENDED_EVENT)?;
    let (hex_key, until) = rest.split_once(':')?;
    if hex_key.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex_key.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((key, until.parse().ok()?))
}

impl SharedEndedSessions {
    /// The ended sessions of `store`, on `clock`.
    pub fn new(store: Arc<Store>, clock: Arc<dyn Clock>) -> Self {
        Self::with_capacity(store, clock, LOCAL_ENTRIES)
    }

    /// The same, each local copy holding at most `entries`.
    fn with_capacity(store: Arc<Store>, clock: Arc<dyn Clock>, entries: u64) -> Self {
        SharedEndedSessions {
            events: Mutex::new(store.events()),
            store,
            ended: moka::sync::Cache::builder()
                .max_capacity(entries)
                .expire_after(Lifetime(clock.clone()))
                .build(),
            not_ended: moka::future::Cache::builder()
                .max_capacity(entries)
                .time_to_live(NOT_ENDED_FOR)
                .build(),
            clock,
        }
    }

    fn remember(&self, key: cache::Key, until: u64) {
        self.ended.insert(key, Until(until));
    }

    fn known_ended(&self, key: &cache::Key) -> bool {
        // `contains_key` first: it is no read for the eviction policy (the common answer is "not there").
        if !self.ended.contains_key(key) {
            return false;
        }
        let now = self.clock.now();
        self.ended.get(key).is_some_and(|until| until.0 >= now)
    }
}

impl EndedSessions for SharedEndedSessions {
    fn end(&self, key: [u8; 32], until: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.remember(key, until);
            self.not_ended.invalidate(&key).await;
            let ttl = Until(until).ttl(self.clock.now());
            self.store
                .put(ENDED_KIND, &key, until.to_string().as_bytes(), ttl)
                .await?;
            let event = format!("{ENDED_EVENT}{}:{until}", hex(&key));
            self.store.publish(event.as_bytes()).await
        })
    }

    fn is_ended(&self, key: [u8; 32]) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            self.sync();
            if self.known_ended(&key) {
                return Ok(true);
            }
            let fresh = |asked: std::time::Instant| asked.elapsed() < NOT_ENDED_FOR;
            match self.not_ended.get(&key).await {
                Some(asked) if fresh(asked) => return Ok(false),
                Some(_) => self.not_ended.invalidate(&key).await,
                None => {}
            }
            // The Checks of one session share one read; only a "not ended" answer is kept.
            let read = async {
                let asked = std::time::Instant::now();
                let stored = self.store.get(ENDED_KIND, &key).await.map_err(Some)?;
                match stored.and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok()) {
                    Some(until) => {
                        self.remember(key, until);
                        Err(None::<StoreError>)
                    }
                    None => Ok(asked),
                }
            };
            // An answer older than the second (a read that took longer) is used for this Check, which waited for
            // it, and not trusted by the next ones: the next Check reads again.
            match self.not_ended.try_get_with(key, read).await {
                Ok(_) => Ok(false),
                Err(e) => match &*e {
                    Some(store_error) => Err(store_error.clone()),
                    None => Ok(self.known_ended(&key)),
                },
            }
        })
    }

    fn sync(&self) -> bool {
        // One Check drains the events at a time; the others do not wait for it (it drops the local copies for
        // them), so no session Check queues on this lock.
        let mut events = match self.events.try_lock() {
            Ok(events) => events,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let mut any = false;
        loop {
            match events.try_recv() {
                Ok(event) => {
                    if let Some((key, until)) = parse_ended_event(&event) {
                        self.remember(key, until);
                        any = true;
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    // Events were lost: no local "not ended" answer can be trusted.
                    self.not_ended.invalidate_all();
                    any = true;
                }
                Err(_) => return any,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::telemetry::Metrics;

    fn memory_store() -> Arc<Store> {
        Arc::new(Store::new(
            &StoreConfig::default(),
            Arc::new(Metrics::new()),
        ))
    }

    #[tokio::test]
    async fn ended_sessions_stay_ended_until_their_expiry() {
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let ended = SharedEndedSessions::new(memory_store(), clock.clone());
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(!ended.is_ended(a).await.expect("store"));
        ended.end(a, 1_100).await.expect("store");
        assert!(ended.is_ended(a).await.expect("store"));
        assert!(
            !ended.is_ended(b).await.expect("store"),
            "only the ended session"
        );
        clock.set(1_100);
        assert!(
            ended.is_ended(a).await.expect("store"),
            "up to its absolute expiry"
        );
        clock.set(1_101);
        assert!(
            !ended.is_ended(a).await.expect("store"),
            "the session is expired anyway"
        );
    }

    /// Two replicas on one store: a session checked (not ended) on B and then ended on A is ended on B at once:
    /// the event drops B's "not ended" copy, and the ended key is known without asking the store again.
    #[tokio::test]
    async fn an_ended_event_reaches_the_other_replica_at_once() {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::ManualClock::new(1_000));
        let store = memory_store();
        let a = SharedEndedSessions::new(store.clone(), clock.clone());
        let b = SharedEndedSessions::new(store, clock);
        let key = [3u8; 32];
        assert!(!b.is_ended(key).await.expect("store"));
        a.end(key, 2_000).await.expect("store");
        assert!(b.sync(), "B heard of the logout");
        assert!(b.known_ended(&key));
        assert!(b.is_ended(key).await.expect("store"));
    }

    /// The local copy of the ended sessions is bounded; a session evicted from it is still ended (the store
    /// keeps it), and comes back into the copy.
    #[tokio::test]
    async fn the_local_ended_copy_is_bounded_and_loses_no_ended_session() {
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let ended = SharedEndedSessions::with_capacity(memory_store(), clock, 8);
        let keys: Vec<[u8; 32]> = (0..64u8).map(|i| [i; 32]).collect();
        for key in &keys {
            ended.end(*key, 5_000).await.expect("store");
        }
        ended.ended.run_pending_tasks();
        assert!(ended.ended.entry_count() <= 8, "bounded");
        let evicted = keys
            .iter()
            .find(|k| !ended.ended.contains_key(*k))
            .copied()
            .expect("some entry was evicted");
        assert!(ended.is_ended(evicted).await.expect("store"), "still ended");
        assert!(ended.ended.contains_key(&evicted), "known again");
        for key in &keys {
            assert!(ended.is_ended(*key).await.expect("store"), "every one");
        }
        assert!(!ended.is_ended([200u8; 32]).await.expect("store"));
        ended.ended.run_pending_tasks();
        assert!(ended.ended.entry_count() <= 8, "still bounded");
    }

    #[test]
    fn ended_events_round_trip() {
        let key = [0xabu8; 32];
        let event = format!("{ENDED_EVENT}{}:{}", hex(&key), 42);
        assert_eq!(parse_ended_event(event.as_bytes()), Some((key, 42)));
        assert_eq!(parse_ended_event(b"ended:zz:1"), None);
        assert_eq!(parse_ended_event(b"other"), None);
    }
}
