//! The session index: every login's session, findable by its user (`sub`) for the admin API (list, revoke), and by
//! its provider's session (`sid`) for back-channel logout.
//!
//! A session is known by a **public id**: the hex of a hash of its secret id (`sid`) under its own label, so the
//! id shown to an operator neither opens the session nor is the key of its entry in the ended-session set (that
//! key, another hash of the `sid`, is kept inside the sealed record, so a revoke can end the session). Records
//! are sealed store values (`session-index` kind, keyed by a hash of the public id) living until the session's
//! absolute expiry; each user's set of public ids (`user-sessions` kind, keyed by a hash of the `sub`) lives as
//! long as its longest-lived session (a session without a `sub` is in no user's set). When a replica last opened a
//! session is a value of its own (`session-seen` kind), written without reading the record, so it can never bring
//! back a record a revoke removed. No token is ever in the index.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache;
use crate::login::authcode::Login;
use crate::login::cookie::{RequestCookies, SetCookie};
use crate::store::{Store, StoreError};

const RECORD: &str = "session-index";
const BY_SUB: &str = "user-sessions";
const BY_OP_SESSION: &str = "provider-session-sessions";
const SEEN: &str = "session-seen";

/// One indexed session. No token, no secret id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The public id (hex of a hash of the session id).
    pub id: String,
    /// The policy the user logged in through.
    pub policy: String,
    /// The user.
    pub sub: String,
    /// When the user logged in (seconds since the epoch).
    pub created: u64,
    /// When a replica last opened the session (seconds since the epoch).
    pub seen: u64,
    /// The session's absolute expiry (seconds since the epoch).
    pub until: u64,
    /// The session's key in the ended-session set, hex.
    ended_key: String,
    /// The provider the session's tokens come from.
    #[serde(default)]
    pub provider: String,
    /// The provider's own session id (the ID token's `sid`), for back-channel logout.
    #[serde(default)]
    op_sid: Option<String>,
}

impl SessionRecord {
    /// The record of a session with secret id `sid` (kept only as hashes) whose ended-session key is
    /// `ended_key`.
    pub fn new(
        sid: &str,
        ended_key: &cache::Key,
        policy: &str,
        sub: &str,
        created: u64,
        until: u64,
    ) -> Self {
        SessionRecord {
            id: public_id(sid),
            policy: policy.to_string(),
            sub: sub.to_string(),
            created,
            seen: created,
            until,
            ended_key: hex(ended_key),
            provider: String::new(),
            op_sid: None,
        }
    }

    /// The same record, of a session whose tokens come from `provider`, within its session `op_sid` (the ID
    /// token's `sid`) if it names one.
    pub fn at_provider(mut self, provider: &str, op_sid: Option<&str>) -> Self {
        self.provider = provider.to_string();
        self.op_sid = op_sid.filter(|s| !s.is_empty()).map(str::to_string);
        self
    }

    /// The session's key in the ended-session set.
    pub fn ended_key(&self) -> Option<cache::Key> {
        let bytes = self.ended_key.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            key[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(key)
    }
}

/// The public id of the session with secret id `sid`: 128 bits of a labelled hash, hex.
pub fn public_id(sid: &str) -> String {
    hex(&cache::key(&["oidc-authz public session id", sid])[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The index over the shared store.
#[derive(Debug, Clone)]
pub struct SessionIndex {
    store: Arc<Store>,
}

impl SessionIndex {
    /// The index kept in `store`.
    pub fn new(store: Arc<Store>) -> Self {
        SessionIndex { store }
    }

    fn ttl(record: &SessionRecord, now: u64) -> Duration {
        Duration::from_secs(record.until.saturating_sub(now).max(1))
    }

    /// Records a new session (at `now`, seconds since the epoch); by its user only when it has one.
    pub async fn record(&self, record: &SessionRecord, now: u64) -> Result<(), StoreError> {
        let ttl = Self::ttl(record, now);
        let value = serde_json::to_vec(record).unwrap_or_default();
        self.store
            .put(RECORD, &record_key(&record.id), &value, ttl)
            .await?;
        if let Some(op_sid) = &record.op_sid {
            self.store
                .add_member(
                    BY_OP_SESSION,
                    &op_session_key(&record.provider, op_sid),
                    record.id.as_bytes(),
                    ttl,
                )
                .await?;
        }
        if record.sub.is_empty() {
            return Ok(());
        }
        self.store
            .add_member(BY_SUB, &sub_key(&record.sub), record.id.as_bytes(), ttl)
            .await
    }

    /// Records the session a login's callback just made, read back from the cookies it sets (the opened-session
    /// cache and its metrics are left alone); nothing when they hold no session.
    pub async fn record_login(
        &self,
        login: &Login<'_>,
        set_cookies: &[SetCookie],
        now: u64,
    ) -> Result<(), StoreError> {
        let pairs: Vec<String> = set_cookies
            .iter()
            .filter_map(|c| {
                c.clone()
                    .into_header()
                    .split(';')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        let pairs: Vec<&str> = pairs.iter().map(String::as_str).collect();
        let Some(reference) = login.store.find(&RequestCookies::parse(&pairs)).flatten() else {
            return Ok(());
        };
        let opened = match login.open_session(&reference).await {
            Ok(opened) => opened,
            // The store failed: the login answers 503 rather than hand out a session no revoke could reach.
            Err(crate::login::authcode::SessionError::Store(e)) => return Err(e),
            Err(_) => {
                tracing::warn!(policy.name = %login.policy.name, "a new session did not open again to be indexed");
                return Ok(());
            }
        };
        let data = &opened.data;
        let sub = opened
            .claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let until = data.created.saturating_add(login.settings.absolute_timeout);
        let op_sid = opened.claims.get("sid").and_then(|v| v.as_str());
        let record = SessionRecord::new(
            &data.sid,
            &opened.ended_key,
            &login.policy.name,
            sub,
            data.created,
            until,
        )
        .at_provider(login.provider.name(), op_sid);
        self.record(&record, now).await
    }

    /// Notes that the session with secret id `sid` (absolute expiry `until`) was opened at `now`: one write of
    /// its own value, the record untouched (a revoked session's record is never brought back; a time noted after
    /// a revoke names nothing and lives until `until` at most).
    pub async fn seen(&self, sid: &str, until: u64, now: u64) -> Result<(), StoreError> {
        let ttl = Duration::from_secs(until.saturating_sub(now).max(1));
        self.store
            .put(
                SEEN,
                &seen_key(&public_id(sid)),
                now.to_string().as_bytes(),
                ttl,
            )
            .await
    }

    /// The session with public id `id` (with the last time a replica noted it was opened).
    pub async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let raw = self.store.get(RECORD, &record_key(id)).await?;
        let Some(mut record) = raw.and_then(|v| serde_json::from_slice::<SessionRecord>(&v).ok())
        else {
            return Ok(None);
        };
        let seen = self.store.get(SEEN, &seen_key(id)).await?;
        if let Some(seen) = seen.and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok()) {
            record.seen = record.seen.max(seen);
        }
        Ok(Some(record))
    }

    /// The indexed sessions of `sub`, oldest first (ids of expired sessions are dropped from its set); none for
    /// the empty `sub` (sessions without one are in no user's set).
    pub async fn of_sub(&self, sub: &str) -> Result<Vec<SessionRecord>, StoreError> {
        if sub.is_empty() {
            return Ok(Vec::new());
        }
        let key = sub_key(sub);
        let mut out = Vec::new();
        for member in self.store.members(BY_SUB, &key).await? {
            let id = String::from_utf8_lossy(&member).into_owned();
            match self.get(&id).await? {
                Some(record) if record.sub == sub => out.push(record),
                _ => self.store.remove_member(BY_SUB, &key, &member).await?,
            }
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// The sessions a back-channel logout token from `provider` names: those logged in within the provider's
    /// session `op_sid` when it names one, else every session of `sub` at that provider.
    pub async fn of_logout(
        &self,
        provider: &str,
        sub: Option<&str>,
        op_sid: Option<&str>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut out = Vec::new();
        if let Some(op_sid) = op_sid {
            let key = op_session_key(provider, op_sid);
            for member in self.store.members(BY_OP_SESSION, &key).await? {
                let id = String::from_utf8_lossy(&member).into_owned();
                match self.get(&id).await? {
                    Some(r) if r.op_sid.as_deref() == Some(op_sid) && r.provider == provider => {
                        if sub.is_none_or(|s| !r.sub.is_empty() && s == r.sub) {
                            out.push(r);
                        }
                    }
                    _ => {
                        self.store
                            .remove_member(BY_OP_SESSION, &key, &member)
                            .await?
                    }
                }
            }
        } else if let Some(sub) = sub {
            out = self
                .of_sub(sub)
                .await?
                .into_iter()
                .filter(|r| r.provider == provider)
                .collect();
        }
        Ok(out)
    }

    /// Forgets a session (it was revoked, or logged out).
    pub async fn remove(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.store.delete(RECORD, &record_key(&record.id)).await?;
        self.store.delete(SEEN, &seen_key(&record.id)).await?;
        if let Some(op_sid) = &record.op_sid {
            self.store
                .remove_member(
                    BY_OP_SESSION,
                    &op_session_key(&record.provider, op_sid),
                    record.id.as_bytes(),
                )
                .await?;
        }
        if record.sub.is_empty() {
            return Ok(()); // in no user's set (see `record`)
        }
        self.store
            .remove_member(BY_SUB, &sub_key(&record.sub), record.id.as_bytes())
            .await
    }
}

fn record_key(id: &str) -> cache::Key {
    cache::key(&["oidc-authz session record", id])
}

fn seen_key(id: &str) -> cache::Key {
    cache::key(&["oidc-authz session seen", id])
}

fn op_session_key(provider: &str, op_sid: &str) -> cache::Key {
    cache::key(&["oidc-authz sessions of provider session", provider, op_sid])
}

fn sub_key(sub: &str) -> cache::Key {
    cache::key(&["oidc-authz sessions of", sub])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::telemetry::Metrics;

    fn index() -> SessionIndex {
        let config = StoreConfig::default();
        SessionIndex::new(Arc::new(Store::new(&config, Arc::new(Metrics::new()))))
    }

    /// Sessions are found by their user, seen times move forward, removed ones are gone; the public id is
    /// neither the session id nor its ended-session key.
    #[tokio::test]
    async fn sessions_are_found_by_user_and_removed() {
        let index = index();
        let ended = cache::key(&["ended", "sid-1"]);
        let a = SessionRecord::new("sid-1", &ended, "web", "alice", 1_000, 4_600);
        let b = SessionRecord::new("sid-2", &[2u8; 32], "web", "alice", 1_010, 4_610);
        let c = SessionRecord::new("sid-3", &[3u8; 32], "web", "bob", 1_020, 4_620);
        for r in [&a, &b, &c] {
            index.record(r, 1_020).await.expect("record");
        }
        assert!(!a.id.contains("sid-1") && a.id.len() == 32 && a.id != hex(&ended));
        assert_eq!(a.ended_key(), Some(ended));
        let alice = index.of_sub("alice").await.expect("alice");
        assert_eq!(alice, vec![a.clone(), b.clone()]);
        index.seen("sid-1", 4_600, 2_000).await.expect("seen");
        assert_eq!(
            index.get(&a.id).await.expect("get").map(|r| r.seen),
            Some(2_000)
        );
        index.remove(&a).await.expect("remove");
        assert_eq!(index.of_sub("alice").await.expect("alice"), vec![b]);
        index.seen("sid-1", 4_600, 3_000).await.expect("seen");
        assert_eq!(
            index.get(&a.id).await.expect("get"),
            None,
            "not brought back"
        );
        assert_eq!(index.of_sub("bob").await.expect("bob"), vec![c]);
    }
}
