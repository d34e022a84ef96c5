//! Where sessions live: the [`SessionStore`] seam with its first implementation, the encrypted session cookie
//! ([`CookieStore`]), and the set of sessions ended by a logout ([`EndedSessions`]).

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::cache::{self, Expires, Lifetime};
use crate::clock::Clock;
use crate::login::cookie::{
    CookieAttrs, CookieCodec, RequestCookies, SetCookie, clear_cookie_headers, set_cookie_headers,
};

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

/// Stores a policy's sessions and says which one a request carries. The first implementation keeps the whole
/// session in an encrypted cookie ([`CookieStore`]); a shared store keeps it server-side behind a cookie that
/// names it. Nothing read from a store is trusted until the login has verified its tokens.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// The reference to a session the request carries: `None` when it carries none at all, `Some(None)` when it
    /// carries a broken one (the browser should forget it).
    fn find(&self, cookies: &RequestCookies<'_>) -> Option<Option<String>>;
    /// The session behind a reference; `None` when there is none (it does not open, parse, or has no id).
    fn load<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Option<SessionData>>;
    /// Stores a session (`now` in seconds since the epoch); the `Set-Cookie` values that give it to the browser.
    fn save<'a>(&'a self, data: &'a SessionData, now: u64) -> BoxFuture<'a, Vec<SetCookie>>;
    /// The `Set-Cookie` values that make the browser forget its session.
    fn forget(&self) -> Vec<SetCookie>;
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

    fn load<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Option<SessionData>> {
        let data = self
            .codec
            .open(&self.name, reference)
            .and_then(|b| serde_json::from_slice::<SessionData>(&b).ok())
            .filter(|d| !d.sid.is_empty());
        Box::pin(std::future::ready(data))
    }

    fn save<'a>(&'a self, data: &'a SessionData, now: u64) -> BoxFuture<'a, Vec<SetCookie>> {
        let sealed = self
            .codec
            .seal(&self.name, &serde_json::to_vec(data).unwrap_or_default());
        let remaining = (data.created + self.absolute_timeout).saturating_sub(now);
        let cookies = set_cookie_headers(&self.name, &sealed, &self.attrs(Some(remaining.max(1))))
            .unwrap_or_else(|| self.forget());
        Box::pin(std::future::ready(cookies))
    }

    fn forget(&self) -> Vec<SetCookie> {
        clear_cookie_headers(&self.name, &self.attrs(None))
    }
}

/// Sessions ended by a logout, by a hash of their session id, remembered until the session would have expired
/// anyway, so a copy of the cookie made before the logout is no session after it. A seam: this process keeps
/// them in memory ([`MemoryEndedSessions`]); a shared store can implement the same trait.
pub trait EndedSessions: Send + Sync + fmt::Debug {
    /// Remembers `key` as ended until `until` (seconds since the epoch).
    fn end(&self, key: [u8; 32], until: u64) -> BoxFuture<'_, ()>;
    /// Whether `key` was ended.
    fn is_ended(&self, key: [u8; 32]) -> BoxFuture<'_, bool>;
}

/// Ended sessions in this process's memory. Never evicted for size (an evicted entry would bring a copied cookie
/// back): each entry is a logout of a real login and lives until that session's absolute expiry.
pub struct MemoryEndedSessions {
    /// Key -> the session's absolute expiry.
    ended: moka::sync::Cache<cache::Key, Until>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for MemoryEndedSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryEndedSessions")
            .field("ended", &self.ended.entry_count())
            .finish()
    }
}

/// An ended session's absolute expiry (seconds since the epoch): its entry stays a second past it.
#[derive(Debug, Clone, Copy)]
struct Until(u64);

impl Expires for Until {
    fn ttl(&self, now: u64) -> std::time::Duration {
        std::time::Duration::from_secs(self.0.saturating_sub(now).saturating_add(1))
    }
}

impl MemoryEndedSessions {
    /// An empty set on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryEndedSessions {
            ended: moka::sync::Cache::builder()
                .expire_after(Lifetime(clock.clone()))
                .build(),
            clock,
        }
    }
}

impl EndedSessions for MemoryEndedSessions {
    fn end(&self, key: [u8; 32], until: u64) -> BoxFuture<'_, ()> {
        self.ended.insert(key, Until(until));
        Box::pin(std::future::ready(()))
    }

    fn is_ended(&self, key: [u8; 32]) -> BoxFuture<'_, bool> {
        let now = self.clock.now();
        let ended = self.ended.get(&key).is_some_and(|until| until.0 >= now);
        Box::pin(std::future::ready(ended))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ended_sessions_stay_ended_until_their_expiry() {
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let ended = MemoryEndedSessions::new(clock.clone());
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(!ended.is_ended(a).await);
        ended.end(a, 1_100).await;
        assert!(ended.is_ended(a).await);
        assert!(!ended.is_ended(b).await, "only the ended session");
        clock.set(1_100);
        assert!(ended.is_ended(a).await, "up to its absolute expiry");
        clock.set(1_101);
        assert!(!ended.is_ended(a).await, "the session is expired anyway");
    }
}
