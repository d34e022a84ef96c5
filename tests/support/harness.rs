//! oidc-authz under test: the standard config against the mock IdP (edited per test through [`Setup`]), the real
//! server on port 0, metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use oidc_authz::clock::{Clock, ManualClock, SystemClock};
use oidc_authz::config::Config;
use oidc_authz::server::Server;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::answer::Answer;
use super::idp::MockIdp;
use super::request::Req;

/// The standard config against `idp`: a few policies over one provider, `okta`.
fn config_toml(idp: &MockIdp) -> String {
    format!(
        r#"
[server]
grpc_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
log_format = "pretty"
shutdown_grace_secs = 5
check_timeout_ms = 60000

[providers.okta]
issuer = "{issuer}"
client_id = "oidc-authz"
client_secret = "oidc-authz-secret"
audiences = ["api://default"]
leeway_secs = 0
http_timeout_ms = 30000
jwks_min_refetch_secs = 0

[policies.api]
provider = "okta"
auth_methods = ["bearer"]
display_errors = true   # these tests read the detailed error_description
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["iss", "sub", "groups"]
upstream_headers_names = ["X-Issuer", "x-user", "x-groups"]

[policies.admins]
provider = "okta"
auth_methods = ["bearer"]
groups_claim = ["groups"]
groups_required = ["admins", "ops oncall"]

[policies.cc]
provider = "okta"
auth_methods = ["client_credentials", "bearer"]
scopes = ["api:read"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
cache_ttl_neg_secs = 30
client_credentials_param_type = ["header"]
upstream_headers_claims = ["iss", "cid"]
upstream_headers_names = ["Issuer_Header", "x-client-id"]

[policies.intro]
provider = "okta"
auth_methods = ["introspection", "bearer"]
display_errors = true   # these tests read the detailed error_description
cache_introspection_secs = 300
cache_ttl_neg_secs = 30
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["sub", "client_id"]
upstream_headers_names = ["x-user", "x-client-id"]

[policies.intro_nocache]
provider = "okta"
auth_methods = ["introspection"]
cache_introspection_secs = 0
cache_ttl_neg_secs = 0

[policies.intro_jwt]
provider = "okta"
auth_methods = ["introspection", "bearer"]
introspect_jwt_tokens = true
cache_introspection_secs = 2

[policies.login]
provider = "okta"
auth_methods = ["bearer", "authorization_code", "session"]
display_errors = true   # these tests read the detailed error_description
scopes = ["openid", "profile", "offline_access"]
redirect_uri = "https://app.example.com/oauth2/callback"
logout_path = "/oauth2/logout"
post_logout_redirect_uri = "https://app.example.com/bye"
session_secret = ["fJfkZusK6AM6PHtnD6Ew4TnBmJQNhuiVxOTv7w0voXg=", "YgkhMaR/YTZqwk13q1w36bx3iMsjriSao8q4VdYNeSs="]
session_idle_timeout_secs = 600
session_absolute_timeout_secs = 3600
refresh_leeway_secs = 0
upstream_id_token_header = "x-id-token"
upstream_headers_claims = ["sub", "email"]
upstream_headers_names = ["x-user", "x-email"]

[policies.group]
provider = "okta"
auth_methods = ["authorization_code", "session"]
display_errors = true   # these tests read the detailed error_description
# its own callback: it shares the session cookie with `login` but not all of its secrets (rotation tests)
redirect_uri = "https://app.example.com/oauth2/group-callback"
session_secret = "YgkhMaR/YTZqwk13q1w36bx3iMsjriSao8q4VdYNeSs="
scopes_claim = ["groups"]
scopes_required = ["kong_group"]

[policies.cc_only]
provider = "okta"
auth_methods = ["client_credentials"]
scopes = ["api:read", "api:write"]

[[routes]]
path_prefix = "/routed"
policy = "api"

[[routes]]
hosts = ["*.example.com"]
path_prefix = "/admin"
methods = ["GET"]
policy = "admins"
"#,
        issuer = idp.issuer
    )
}

/// The standard config against an IdP, edited before the server starts on it:
/// `serve(&idp).edit("check_timeout_ms = 60000", "check_timeout_ms = 300").ready().await`.
pub struct Setup {
    toml: String,
}

/// The standard config against `idp`, to edit (see [`Setup`]).
pub fn serve(idp: &MockIdp) -> Setup {
    Setup {
        toml: config_toml(idp),
    }
}

impl Setup {
    /// Replaces every `from` in the config with `to`; panics if the config has no `from`, so a test never runs
    /// on the standard config believing it edited it.
    pub fn edit(mut self, from: &str, to: &str) -> Setup {
        assert!(
            self.toml.contains(from),
            "the config has no {from:?} to edit:\n{}",
            self.toml
        );
        self.toml = self.toml.replace(from, to);
        self
    }

    /// Adds TOML lines to the `okta` provider's table.
    pub fn okta(self, lines: &str) -> Setup {
        self.edit(
            "\njwks_min_refetch_secs = 0",
            &format!("\njwks_min_refetch_secs = 0\n{lines}"),
        )
    }

    /// Appends TOML (more providers, policies) after the standard config.
    pub fn extra(mut self, toml: &str) -> Setup {
        self.toml.push_str(toml);
        self.toml.push('\n');
        self
    }

    /// State shared through the Redis at `url` (`[store] backend = "redis"`): servers set up alike on one Redis
    /// are replicas of one service.
    pub fn redis(self, url: &str) -> Setup {
        self.extra(&format!(
            r#"
[store]
backend = "redis"
url = "{url}"
key_prefix = "oidc-authz-test:"
secret = "YgkhMaR/YTZqwk13q1w36bx3iMsjriSao8q4VdYNeSs="
timeout_ms = 2000
"#
        ))
    }

    /// A 300 ms HTTP timeout, for tests that hold the IdP (`Mode::Held`) to see a timeout: the IdP never answers
    /// while held, so the timeout fires however slow the machine is.
    pub fn short_http_timeout(self) -> Setup {
        self.edit("http_timeout_ms = 30000", "http_timeout_ms = 300")
    }

    /// The server, started but not waited for (an IdP that is down at start).
    pub async fn start(self) -> TestServer {
        TestServer::start(&self.toml, Arc::new(SystemClock)).await
    }

    /// The server, started and ready.
    pub async fn ready(self) -> TestServer {
        let s = self.start().await;
        s.wait_ready().await;
        s
    }

    /// The server, ready, its time moving only when the test says so: a manual clock set 2 s ahead of the
    /// IdP's (real) clock.
    pub async fn ready_with_clock(self) -> (TestServer, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(super::now() + 2));
        let s = TestServer::start(&self.toml, clock.clone()).await;
        s.wait_ready().await;
        (s, clock)
    }
}

/// The mock IdP and a ready server with the standard config.
pub async fn world() -> (MockIdp, TestServer) {
    world_with(|c| c).await
}

/// The mock IdP and a ready server with the standard config edited by `edit`.
pub async fn world_with(edit: impl FnOnce(Setup) -> Setup) -> (MockIdp, TestServer) {
    let idp = MockIdp::start().await;
    let server = edit(serve(&idp)).ready().await;
    (idp, server)
}

/// The mock IdP and a ready server with the standard config edited by `edit`, on a manual clock
/// ([`Setup::ready_with_clock`]).
pub async fn world_with_clock(
    edit: impl FnOnce(Setup) -> Setup,
) -> (MockIdp, TestServer, Arc<ManualClock>) {
    let idp = MockIdp::start().await;
    let (server, clock) = edit(serve(&idp)).ready_with_clock().await;
    (idp, server, clock)
}

/// One Check, read back.
pub async fn ask(server: &TestServer, r: Req) -> Answer {
    Answer::from(server.check(r.build()).await)
}

/// The value of one series in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub authorizer: Arc<oidc_authz::authz::Authorizer>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), oidc_authz::server::ServeError>>>,
}

impl TestServer {
    /// The server on `toml`, checking token and session times against `clock`; not waited for.
    async fn start(toml: &str, clock: Arc<dyn Clock>) -> TestServer {
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::bind_with_clock(config, clock).await.unwrap();
        let grpc_addr = server.grpc_addr();
        let admin_addr = server.admin_addr();
        let authorizer = server.authorizer();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            grpc_addr,
            admin_addr,
            authorizer,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Waits until the server's store answers (a Redis connection is made in the background), within 30 s.
    pub async fn wait_store(&self) {
        for _ in 0..300 {
            if self.authorizer.store().ping().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the store never answered");
    }

    /// Waits until the server says it is ready.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.authorizer.is_ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server never became ready");
    }

    pub async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .unwrap()
    }

    pub async fn check(&self, req: CheckRequest) -> CheckResponse {
        self.client().await.check(req).await.unwrap().into_inner()
    }

    /// Sends `n` copies of `r` at once over 8 connections; returns every answer's HTTP status.
    pub async fn concurrent(&self, n: usize, r: CheckRequest) -> Vec<u16> {
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(self.client().await);
        }
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut c = clients[i % clients.len()].clone();
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                Answer::from(c.check(r).await.unwrap().into_inner()).status
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    /// One series of /metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.admin_get("/metrics").await.1, series)
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.admin_addr))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
