//! Real Redis for the tests: Debian's `redis-server` started on a free loopback port (no persistence, its own
//! temporary directory), stopped and started again on the same port, and killed when dropped; and a three-node Redis
//! Cluster on loopback (`redis-cli --cluster create`). `scripts/test-deps.sh` installs `redis-server`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free port for a Redis Cluster node: Redis refuses a cluster node on a port above 55535 ("Redis port number
/// too high": its cluster bus listens on port + 10000), and the bus port must be free too. The kernel hands out
/// ports up to 60999 here, so about one in five picks would fail without this. No two nodes of one cluster share
/// a port or a bus port (`taken`).
fn free_cluster_port(taken: &mut Vec<u16>) -> u16 {
    loop {
        let port = free_port();
        let clash = taken
            .iter()
            .any(|&t| [t, t + 10000].contains(&port) || [t, t + 10000].contains(&(port + 10000)));
        if port <= 55535
            && !clash
            && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        {
            taken.push(port);
            return port;
        }
    }
}

fn redis_server() -> &'static str {
    for path in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(path).exists() {
            return path;
        }
    }
    panic!(
        "redis-server not found: run scripts/test-deps.sh (Debian: apt-get install redis-server)"
    )
}

/// Asks `port` for PING until it answers PONG (and, for a cluster node, until the cluster is ok), within a
/// generous budget.
async fn wait_ready(port: u16, cluster: bool) {
    let url = format!("redis://127.0.0.1:{port}/");
    for _ in 0..300 {
        if let Ok(client) = redis::Client::open(url.as_str())
            && let Ok(mut c) = client.get_multiplexed_async_connection().await
        {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            let ok = if cluster {
                let info: redis::RedisResult<String> =
                    redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await;
                info.is_ok_and(|i| i.contains("cluster_state:ok"))
            } else {
                true
            };
            if pong.is_ok() && ok {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("redis on port {port} did not become ready in 30 s");
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Self {
        let s = Self::spawn(free_port(), false);
        wait_ready(s.port, false).await;
        s
    }

    fn spawn(port: u16, cluster: bool) -> Self {
        let dir =
            std::env::temp_dir().join(format!("oidc-authz-redis-{port}-{}", super::rand_u64()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut s = RedisServer {
            port,
            dir,
            cluster,
            child: None,
        };
        s.run();
        s
    }

    fn run(&mut self) {
        let mut cmd = Command::new(redis_server());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        self.child = Some(cmd.spawn().expect("redis-server starts"));
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: nothing is saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        self.run();
        wait_ready(self.port, false).await;
    }

    /// Every key in the server, with its raw value (strings only).
    pub async fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let client = redis::Client::open(self.url()).expect("a client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .expect("KEYS");
        let mut out = Vec::new();
        for k in keys {
            let v: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap_or(None);
            out.push((k, v.unwrap_or_default()));
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-node Redis Cluster (masters only) on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut taken = Vec::new();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::spawn(free_cluster_port(&mut taken), true))
            .collect();
        for n in &nodes {
            wait_ready(n.port, false).await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let status = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        for n in &nodes {
            wait_ready(n.port, true).await;
        }
        RedisCluster { nodes }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
