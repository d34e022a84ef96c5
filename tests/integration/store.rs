//! The shared store on a real Redis (single node and a three-node cluster): what two replicas see of each other,
//! what is at rest, and what happens when Redis goes away and comes back.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use oidc_authz::cache;
use oidc_authz::config::{Secret, StoreBackendConfig, StoreConfig};
use oidc_authz::login::cookie::CookieCodec;
use oidc_authz::store::{Store, StoreError};
use oidc_authz::telemetry::Metrics;

use crate::support::{RedisCluster, RedisServer};

fn config(nodes: Vec<String>, cluster: bool) -> StoreConfig {
    let secret = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    StoreConfig {
        backend: StoreBackendConfig::Redis { nodes, cluster },
        key_prefix: "test:".into(),
        codec: Some(CookieCodec::new(&[Secret::new(secret)]).expect("a valid secret")),
        timeout: Duration::from_secs(2),
    }
}

/// A replica's store.
fn replica(cfg: &StoreConfig) -> Store {
    Store::new(cfg, Arc::new(Metrics::new()))
}

/// Retries `f` until it answers (the background connection may not be up yet), within a generous budget.
async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    for _ in 0..300 {
        if let Ok(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store did not answer in 30 s");
}

/// Publishes `event` on `from` until `to`'s subscription delivers it (subscribing takes a moment after start or
/// reconnect), within a generous budget.
async fn delivered(from: &Store, to: &Store, event: &[u8]) {
    let mut events = to.events();
    for _ in 0..150 {
        from.publish(event).await.expect("publish");
        if let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            assert_eq!(e, event);
            return;
        }
    }
    panic!("the event did not arrive in 30 s");
}

async fn shared_between_replicas(a: &Store, b: &Store) {
    let id = cache::key(&["the-session-id"]);
    let ttl = Duration::from_secs(60);
    eventually(|| a.ping()).await;
    eventually(|| b.ping()).await;
    a.put("session", &id, b"access-token-value", ttl)
        .await
        .expect("put on A");
    assert_eq!(
        b.get("session", &id).await.expect("get on B").as_deref(),
        Some(&b"access-token-value"[..]),
        "B reads what A wrote"
    );
    let lock = cache::key(&["refresh-lock"]);
    assert!(a.put_new("lock", &lock, b"a", ttl).await.expect("A locks"));
    assert!(!b.put_new("lock", &lock, b"b", ttl).await.expect("B waits"));
    let counter = cache::key(&["client-id"]);
    assert_eq!(a.incr("refused", &counter, ttl).await.expect("A counts"), 1);
    assert_eq!(b.incr("refused", &counter, ttl).await.expect("B counts"), 2);
    let set = cache::key(&["a-user"]);
    a.add_member("set", &set, b"one", ttl)
        .await
        .expect("A adds");
    b.add_member("set", &set, b"two", ttl)
        .await
        .expect("B adds");
    let mut members = a.members("set", &set).await.expect("members on A");
    members.sort();
    assert_eq!(members, vec![b"one".to_vec(), b"two".to_vec()]);
    b.remove_member("set", &set, b"one")
        .await
        .expect("B removes");
    assert_eq!(
        a.members("set", &set).await.expect("members on A"),
        vec![b"two".to_vec()]
    );
}

#[tokio::test]
async fn two_replicas_share_values_locks_counters_and_events() {
    let redis = RedisServer::start().await;
    let cfg = config(vec![redis.url()], false);
    let (a, b) = (replica(&cfg), replica(&cfg));
    shared_between_replicas(&a, &b).await;
    // An event A publishes reaches B.
    delivered(&a, &b, b"ended:1").await;
    // Nothing readable at rest: keys are hashes, values sealed.
    let at_rest = redis.dump().await;
    assert!(!at_rest.is_empty());
    for (k, v) in &at_rest {
        assert!(k.starts_with("test:"), "{k}");
        assert!(
            !k.contains("the-session-id") && !k.contains("client-id"),
            "{k}"
        );
        assert!(
            !String::from_utf8_lossy(v).contains("access-token-value"),
            "{k}"
        );
    }
}

/// Redis down: every operation fails (never a stale answer), quickly; Redis back (empty): the same store answers
/// again by itself, and its events flow again.
#[tokio::test]
async fn redis_down_fails_and_redis_back_recovers() {
    let mut redis = RedisServer::start().await;
    let cfg = config(vec![redis.url()], false);
    let a = replica(&cfg);
    let id = cache::key(&["x"]);
    eventually(|| a.ping()).await;
    a.put("ended", &id, b"1", Duration::from_secs(60))
        .await
        .expect("put");
    redis.stop();
    assert!(
        a.get("ended", &id).await.is_err(),
        "no answer without Redis"
    );
    assert!(a.ping().await.is_err());
    redis.restart().await;
    eventually(|| a.ping()).await;
    assert_eq!(
        a.get("ended", &id).await.expect("get"),
        None,
        "an empty Redis"
    );
    delivered(&a, &a, b"back").await;
}

#[tokio::test]
async fn a_redis_cluster_is_one_store() {
    let cluster = RedisCluster::start().await;
    let cfg = config(cluster.urls(), true);
    let (a, b) = (replica(&cfg), replica(&cfg));
    shared_between_replicas(&a, &b).await;
    // Keys spread over the nodes: many ids, every one readable from the other replica.
    for i in 0..50 {
        let id = cache::key(&[&format!("id-{i}")]);
        a.put(
            "k",
            &id,
            format!("v{i}").as_bytes(),
            Duration::from_secs(60),
        )
        .await
        .expect("put");
    }
    for i in 0..50 {
        let id = cache::key(&[&format!("id-{i}")]);
        assert_eq!(
            b.get("k", &id).await.expect("get"),
            Some(format!("v{i}").into_bytes())
        );
    }
    let spread = {
        let mut with_keys = 0;
        for n in &cluster.nodes {
            if !n.dump().await.is_empty() {
                with_keys += 1;
            }
        }
        with_keys
    };
    assert!(spread >= 2, "keys on {spread} node(s)");
    delivered(&a, &b, b"ended:2").await;
}
