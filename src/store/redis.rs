//! The store on Redis (the `redis` crate): one node through its `ConnectionManager` (reconnects by itself), or a
//! Redis Cluster through its async cluster connection (connected in the background, retried until it answers).
//! Events use Redis pub/sub on a connection of their own that resubscribes after any loss; an event missed while
//! it was down is covered by the short life of every local copy that events invalidate.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use tokio::sync::{broadcast, watch};

use super::{Backend, StoreError};

/// How long to wait before connecting again after a failure.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Redis, single node or cluster.
pub struct RedisBackend {
    conn: Arc<RwLock<Option<Conn>>>,
    /// The node URLs (for pub/sub: any node of a cluster carries every channel).
    nodes: Vec<String>,
    cluster: bool,
    /// Dropped with the backend: its background tasks see the channel close and end.
    stop: watch::Sender<()>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("nodes", &self.nodes.len())
            .field("cluster", &self.cluster)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisBackend {
    /// A backend for `nodes` (validated `redis://` or `rediss://` URLs), each command bounded by `timeout`. Must
    /// be called inside a Tokio runtime; it connects in the background.
    pub fn new(nodes: Vec<String>, cluster: bool, timeout: Duration) -> Self {
        let conn = Arc::new(RwLock::new(None));
        let (stop, stopped) = watch::channel(());
        let backend = RedisBackend {
            conn: conn.clone(),
            nodes: nodes.clone(),
            cluster,
            stop,
        };
        if cluster {
            tokio::spawn(connect_cluster(nodes, timeout, conn, stopped));
        } else {
            let single = nodes
                .first()
                .ok_or_else(|| unavailable("no Redis URL"))
                .and_then(|url| redis::Client::open(url.as_str()).map_err(unavailable))
                .and_then(|client| {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_secs(2));
                    ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)
                });
            match single {
                Ok(m) => *conn.write().unwrap_or_else(|e| e.into_inner()) = Some(Conn::Single(m)),
                Err(e) => tracing::error!(error = %e, "the Redis store cannot be used"),
            }
        }
        backend
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| unavailable("not connected to Redis yet"))
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        match self.conn()? {
            Conn::Single(mut c) => script.invoke_async(&mut c).await.map_err(unavailable),
            Conn::Cluster(mut c) => script.invoke_async(&mut c).await.map_err(unavailable),
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        match self.conn()? {
            Conn::Single(mut c) => cmd.query_async(&mut c).await.map_err(unavailable),
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await.map_err(unavailable),
        }
    }
}

/// Connects to the cluster, retrying until it answers.
async fn connect_cluster(
    nodes: Vec<String>,
    timeout: Duration,
    slot: Arc<RwLock<Option<Conn>>>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let client = redis::cluster::ClusterClient::builder(nodes.clone())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build();
        let res = match client {
            Ok(c) => c.get_async_connection().await,
            Err(e) => Err(e),
        };
        match res {
            Ok(c) => {
                *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(Conn::Cluster(c));
                tracing::info!("connected to the Redis Cluster");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to the Redis Cluster yet");
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

/// Delivers `channel`'s messages to `to`, reconnecting (to the next node, round robin) after any loss, until the
/// backend is dropped.
async fn pump(
    nodes: Vec<String>,
    channel: String,
    to: broadcast::Sender<Vec<u8>>,
    mut stopped: watch::Receiver<()>,
) {
    let mut i = 0usize;
    loop {
        let Some(url) = nodes.get(i % nodes.len().max(1)) else {
            return;
        };
        i = i.wrapping_add(1);
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            // No receiver right now is fine: nobody is waiting for this event.
                            Some(msg) => { let _ = to.send(msg.get_payload_bytes().to_vec()); }
                            None => break,
                        },
                        _ = stopped.changed() => return,
                    }
                }
                tracing::warn!("lost the Redis subscription; resubscribing");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis events yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            _ = stopped.changed() => return,
        }
    }
}

impl Backend for RedisBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move { self.query(redis::cmd("GET").arg(key).clone()).await })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let ms = ttl.as_millis().max(1) as u64;
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value).arg("PX").arg(ms);
            self.query::<()>(cmd).await
        })
    }

    fn set_new<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let ms = ttl.as_millis().max(1) as u64;
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value).arg("NX").arg("PX").arg(ms);
            let set: Option<String> = self.query(cmd).await?;
            Ok(set.is_some())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.query::<()>(redis::cmd("DEL").arg(key).clone()).await })
    }

    fn incr<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<u64, StoreError>> {
        let ms = ttl.as_millis().max(1) as u64;
        Box::pin(async move {
            // INCR, and a lifetime for a counter that has none (its first count): one script, so a counter can
            // never be left without one.
            let script = redis::Script::new(
                "local n = redis.call('INCR', KEYS[1]) \
                 if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
                 return n",
            );
            let mut invocation = script.key(key);
            invocation.arg(ms);
            self.invoke(invocation).await
        })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.query::<()>(redis::cmd("PUBLISH").arg(channel).arg(message).clone())
                .await
        })
    }

    fn subscribe(&self, channel: String, to: broadcast::Sender<Vec<u8>>) {
        if self.nodes.is_empty() {
            return;
        }
        tokio::spawn(pump(self.nodes.clone(), channel, to, self.stop.subscribe()));
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let pong: String = self.query(redis::cmd("PING")).await?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(unavailable("unexpected answer to PING"))
            }
        })
    }

    fn add_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let ms = ttl.as_millis().max(1) as u64;
        Box::pin(async move {
            // SADD, and the set's lifetime extended to `ttl` when it has less: one script, so a set is never left
            // without a lifetime.
            let script = redis::Script::new(
                "redis.call('SADD', KEYS[1], ARGV[1]) \
                 if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
                 return 1",
            );
            let mut invocation = script.key(key);
            invocation.arg(member).arg(ms);
            self.invoke::<i64>(invocation).await.map(|_| ())
        })
    }

    fn remove_member<'a>(
        &'a self,
        key: &'a str,
        member: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.query::<()>(redis::cmd("SREM").arg(key).arg(member).clone())
                .await
        })
    }

    fn members<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Vec<u8>>, StoreError>> {
        Box::pin(async move { self.query(redis::cmd("SMEMBERS").arg(key).clone()).await })
    }
}
