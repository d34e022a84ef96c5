//! Load generator for oidc-authz's Check API, and the benchmark that fills BENCHMARKS.md.
//!
//! `cargo run --release --example loadgen -- bench` starts, on loopback:
//!   * a tiny issuer (discovery + JWKS) in this process, signing RS256 tokens with a test key;
//!   * the no-op Check server (this binary, `noop` subcommand) as the ceiling: it answers OK without looking;
//!   * the release `oidc-authz serve` binary, once with its verified-token cache on and once with it off;
//!
//! then drives each with N concurrent gRPC streams for a fixed time, counting allows and denies separately
//! (an ext_authz deny is a gRPC OK, so only the answer's status tells), and prints one summary line per
//! scenario plus a markdown table of throughput, p50/p99 and the ratio to the no-op ceiling.
//!
//! `loadgen run --addr 127.0.0.1:9191 --token T --policy api` drives any running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use clap::{Parser, Subcommand};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(about = "Load generator and benchmark for oidc-authz")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every scenario and print the summary table.
    Bench {
        /// Seconds of measured load per scenario (after a 1 s warm-up).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent in-flight Checks.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// HTTP/2 connections the streams are spread over.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// The oidc-authz binary to measure.
        #[arg(long, default_value = "target/release/oidc-authz")]
        bin: PathBuf,
        /// Only these scenarios (comma-separated): noop, same-jwt, fresh-jwt, cc-cached, intro-cached, session, session-redis, session-store (the last two start a redis-server of their own).
        /// Run only when named: noop-as-S for S one of those (the no-op answering with oidc-authz's own answer to
        /// S's request: what the answer alone costs), routes-1, routes-1000-p1, routes-1000-p10, routes-1000-p100 (route selection:
        /// no policy hint, 1 or 1000 `[[routes]]` over 1, 10 or 100 policies) and rss-valid, rss-garbage (the
        /// server's memory after --rss-tokens distinct valid or garbage tokens).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Distinct tokens the rss-* scenarios send.
        #[arg(long, default_value_t = 1_000_000)]
        rss_tokens: u64,
        /// The rss-* scenarios also read the server's memory after this many tokens.
        #[arg(long, default_value_t = 100_000)]
        rss_checkpoint: u64,
        /// Rounds of all scenarios; each scenario reports its median round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Pin the server processes to these CPUs (taskset -c); run the loadgen itself under taskset on the others.
        #[arg(long)]
        server_cpus: Option<String>,
    },
    /// Serve a Check API that allows everything without looking (the ceiling).
    Noop {
        #[arg(long)]
        addr: SocketAddr,
        /// What every OK carries (still without looking): `nothing`; `api`, as oidc-authz answers the benchmark's
        /// `api` policy (three claim headers, the five dynamic metadata fields); `headers` or `metadata`, only
        /// that part of it. What Envoy pays to apply an answer, apart from what the Check server pays to decide it.
        #[arg(long, default_value = "nothing", value_parser = ["nothing", "api", "headers", "metadata"])]
        answer: String,
        /// Answer every Check with this CheckResponse instead (protobuf, as `bench` saves oidc-authz's own answer
        /// for the `noop-as-*` scenarios): a server whose deciding costs nothing, answering exactly as oidc-authz.
        #[arg(long, conflicts_with = "answer")]
        answer_file: Option<PathBuf>,
    },
    /// Serve the benchmark's fake identity provider (discovery, JWKS, token, introspection) until killed; prints
    /// its issuer URL. For benchmarks through Envoy (scripts/bench_envoy.py).
    Idp {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Write the credentials of the benchmark through Envoy into DIR, signed for ISSUER (the key `idp` serves):
    /// same.token, distinct.tokens (one a line), bad.token (signed by another key), session.cookie,
    /// bad-session.cookie, cc.basic, bad-cc.basic (a wrong secret), intro.token, bad-intro.token (inactive),
    /// jwks.json.
    Kit {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        dir: PathBuf,
        /// How many distinct bearer tokens.
        #[arg(long, default_value_t = 2000)]
        distinct: u64,
    },
    /// Print the benchmark's oidc-authz configuration (policies api, intro, web, cc) for ISSUER.
    Config {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        grpc: SocketAddr,
        #[arg(long)]
        admin: SocketAddr,
        /// Verified-token cache size (1: every distinct token misses it, as a never-seen token does).
        #[arg(long, default_value_t = 100_000)]
        cache_entries: u64,
        /// Share the Redis on this loopback port (`[store] backend = "redis"`), as the session-store scenario needs.
        #[arg(long)]
        redis: Option<u16>,
    },
    /// Send exactly N Checks of one scenario to a running server, one at a time over one connection, and fail
    /// unless every one is allowed: a fixed amount of work to count instructions per Check under callgrind
    /// (scripts/callgrind_checks.sh). The server runs `config`'s configuration for ISSUER (`idp`).
    Count {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        issuer: String,
        /// same-jwt, fresh-jwt (a never-seen token each Check), session, session-store (needs --redis),
        /// cc-cached, intro-cached.
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        n: u64,
        /// fresh-jwt: the number of the first token (runs against one server must not repeat tokens).
        #[arg(long, default_value_t = 1)]
        first: u64,
        /// The Redis port the server shares (session-store).
        #[arg(long)]
        redis: Option<u16>,
        /// The server runs under callgrind with this pid: send `warmup` Checks first (the same credentials, so
        /// caches are warm), then zero its counters (`callgrind_control -z`), send the N Checks, and dump them
        /// (`callgrind_control -d`): the dump holds exactly the N Checks.
        #[arg(long)]
        callgrind_pid: Option<u32>,
        /// Warm-up Checks before the counted ones (with --callgrind-pid).
        #[arg(long, default_value_t = 50)]
        warmup: u64,
        /// Save the last answer here (protobuf; what `noop --answer-file` replays).
        #[arg(long)]
        save_answer: Option<PathBuf>,
    },
    /// Drive a running server with one token.
    Run {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        token: String,
        #[arg(long, default_value = "api")]
        policy: String,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
}

// ------------------------------------------------------------------------------------------------
// No-op server
// ------------------------------------------------------------------------------------------------

struct Noop {
    /// The answer to every Check (cloned, as a server builds one per Check).
    answer: CheckResponse,
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _r: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.answer.clone()))
    }
}

/// An OK answer carrying `what` (`noop --answer`) of what oidc-authz's allow of the `api` policy carries for the
/// benchmark's token (claim headers `x-issuer`, `x-user`, `x-client-id`; metadata `sub`, `iss`, `client_id`,
/// `policy`, `auth_method`), the values as long as the real ones.
fn noop_answer(what: &str) -> CheckResponse {
    use envoy_types::ext_authz::v3::pb::{HeaderAppendAction, HeaderValue, HeaderValueOption};
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let mut ok = OkHttpResponse::default();
    let mut metadata = None;
    let iss = "http://127.0.0.1:40000/oauth2/default";
    let (sub, cid) = ("user-0@example.com", "0oabench");
    if what == "api" || what == "headers" {
        ok.headers = [("x-issuer", iss), ("x-user", sub), ("x-client-id", cid)]
            .into_iter()
            .map(|(k, v)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: k.into(),
                    value: v.into(),
                    raw_value: Vec::new(),
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            })
            .collect();
    }
    if what == "api" || what == "metadata" {
        let fields = [
            ("sub", sub),
            ("iss", iss),
            ("client_id", cid),
            ("policy", "api"),
            ("auth_method", "bearer"),
        ];
        metadata = Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(Kind::StringValue(v.into())),
                    };
                    (k.to_string(), value)
                })
                .collect(),
        });
    }
    CheckResponse {
        status: Some(envoy_types::pb::google::rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(ok)),
        dynamic_metadata: metadata,
    }
}

async fn serve_noop(addr: SocketAddr, answer: &str, answer_file: Option<PathBuf>) {
    let answer = match answer_file {
        Some(f) => {
            use prost::Message;
            let bytes = std::fs::read(&f).expect("read --answer-file");
            CheckResponse::decode(bytes.as_slice()).expect("--answer-file holds a CheckResponse")
        }
        None => noop_answer(answer),
    };
    // Built exactly like oidc-authz's listener (own TcpListener, TCP_NODELAY on the incoming stream), so the two
    // differ only in what Check does.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind noop");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Noop { answer }))
        .serve_with_incoming(incoming)
        .await
        .expect("noop server");
}

// ------------------------------------------------------------------------------------------------
// Load
// ------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    allow: u64,
    deny: u64,
    errors: u64,
    hist: Option<Histogram<u64>>,
}

/// A benchmark scenario: name, token cache size, requests, the issuer counter whose calls it reports, and whether
/// the server shares a Redis (`[store] backend = "redis"`, whose round trips per Check it reports).
type Scenario<'a> = (
    &'static str,
    u64,
    Arc<Vec<CheckRequest>>,
    Option<&'a std::sync::atomic::AtomicUsize>,
    bool,
);

struct Summary {
    name: String,
    rps: f64,
    /// Ratio to the same round's no-op (the median over rounds in the final table).
    ratio: Option<f64>,
    p50_us: u64,
    p99_us: u64,
    allow: u64,
    deny: u64,
    errors: u64,
}

fn check_request(token: &str, policy: &str) -> CheckRequest {
    check_request_auth(&format!("Bearer {token}"), policy)
}

fn check_request_auth(authorization: &str, policy: &str) -> CheckRequest {
    let mut http = HttpRequest {
        id: "bench".into(),
        method: "GET".into(),
        host: "api.example.com".into(),
        path: "/api/orders?limit=10".into(),
        scheme: "https".into(),
        protocol: "HTTP/2".into(),
        ..Default::default()
    };
    for (k, v) in [
        ("authorization", authorization.to_string()),
        (":authority", "api.example.com".into()),
        (":method", "GET".into()),
        (":path", "/api/orders?limit=10".into()),
        ("user-agent", "loadgen/1".into()),
        ("accept", "application/json".into()),
        (
            "x-request-id",
            "0b6f6d2e-5f0e-4b43-9b51-5c0b0a2b6f10".into(),
        ),
    ] {
        http.headers.insert(k.to_string(), v);
    }
    let mut ext = std::collections::HashMap::new();
    ext.insert("policy".to_string(), policy.to_string());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

async fn connect(addr: SocketAddr, n: usize) -> Vec<AuthorizationClient<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await;
        out.push(AuthorizationClient::new(ch.expect("connect")));
    }
    out
}

/// Drives `addr` with `requests` (round-robin) for warm-up + `duration`; only the measured part is counted.
async fn drive(
    name: &str,
    addr: SocketAddr,
    requests: Arc<Vec<CheckRequest>>,
    duration: Duration,
    concurrency: usize,
    connections: usize,
) -> Summary {
    let clients = connect(addr, connections).await;
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = clients[i % clients.len()].clone();
        let requests = requests.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally {
                hist: Some(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()),
                ..Default::default()
            };
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                let req = requests[n % requests.len()].clone();
                n += concurrency;
                let sent = Instant::now();
                let res = client.check(req).await;
                let done = Instant::now();
                if done < measure_from || done > stop_at {
                    if done > stop_at {
                        break;
                    }
                    continue;
                }
                match res {
                    Ok(r) => {
                        let ok = matches!(r.into_inner().status, Some(s) if s.code == 0);
                        if ok {
                            t.allow += 1
                        } else {
                            t.deny += 1
                        }
                        let us = done.duration_since(sent).as_micros() as u64;
                        let _ = t.hist.as_mut().unwrap().record(us.max(1));
                    }
                    Err(_) => t.errors += 1,
                }
            }
            t
        }));
    }
    tokio::time::sleep_until((stop_at + Duration::from_millis(5)).into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally {
        hist: Some(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()),
        ..Default::default()
    };
    for t in tasks {
        let t = t.await.unwrap();
        total.allow += t.allow;
        total.deny += t.deny;
        total.errors += t.errors;
        total.hist.as_mut().unwrap().add(t.hist.unwrap()).unwrap();
    }
    let h = total.hist.unwrap();
    let s = Summary {
        ratio: None,
        name: name.to_string(),
        rps: (total.allow + total.deny) as f64 / duration.as_secs_f64(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        allow: total.allow,
        deny: total.deny,
        errors: total.errors,
    };
    println!(
        "scenario={} checks_per_sec={:.0} p50_us={} p99_us={} allow={} deny={} errors={} concurrency={} connections={} duration_s={}",
        s.name,
        s.rps,
        s.p50_us,
        s.p99_us,
        s.allow,
        s.deny,
        s.errors,
        concurrency,
        connections,
        duration.as_secs()
    );
    s
}

// ------------------------------------------------------------------------------------------------
// Bench world
// ------------------------------------------------------------------------------------------------

struct Issuer {
    issuer: String,
    key: Arc<EncodingKey>,
    /// An Ed25519 key the JWKS also publishes (kid "bench-ed"): signing a million distinct tokens with it takes
    /// seconds, with RSA minutes.
    ed_key: Arc<EncodingKey>,
    /// Calls to the token endpoint (client credentials).
    token_hits: Arc<std::sync::atomic::AtomicUsize>,
    /// Calls to the introspection endpoint.
    introspect_hits: Arc<std::sync::atomic::AtomicUsize>,
}

fn sign(issuer: &str, key: &EncodingKey, n: u64, sub: &str) -> String {
    sign_as(issuer, key, (Algorithm::RS256, "bench"), n, sub)
}

/// [`sign`] with another algorithm and kid.
fn sign_as(
    issuer: &str,
    key: &EncodingKey,
    (alg, kid): (Algorithm, &str),
    n: u64,
    sub: &str,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let claims = json!({
        "iss": issuer, "aud": "api://default", "sub": sub, "cid": "0oabench",
        "uid": format!("00u{n}"), "scp": ["api:read", "api:write"], "groups": ["Everyone", "admins"],
        "iat": now, "exp": now + 3600, "jti": format!("jti-{n}"),
    });
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

/// The benchmark's signing key (RSA 2048, test value), and the one signing the "bad" tokens the checks refuse.
fn bench_key(file: &str) -> EncodingKey {
    let path = format!("{}/tests/support/keys/{file}", env!("CARGO_MANIFEST_DIR"));
    EncodingKey::from_rsa_pem(&std::fs::read(path).unwrap()).unwrap()
}

/// The benchmark's Ed25519 key (test value).
fn bench_ed_key() -> EncodingKey {
    let path = format!(
        "{}/tests/support/keys/ed25519.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    EncodingKey::from_ed_pem(&std::fs::read(path).unwrap()).unwrap()
}

/// The JWKS the benchmark's issuer serves: `key` as kid "bench" and `ed` as kid "bench-ed".
fn served_jwks(key: &EncodingKey, ed: &EncodingKey) -> String {
    let mut keys: serde_json::Value = serde_json::from_str(&jwks(key)).unwrap();
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(ed, Algorithm::EdDSA).unwrap()).unwrap();
    jwk["kid"] = json!("bench-ed");
    jwk["use"] = json!("sig");
    keys["keys"].as_array_mut().unwrap().push(jwk);
    keys.to_string()
}

/// The JWKS publishing `key` as kid "bench".
fn jwks(key: &EncodingKey) -> String {
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(key, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!("bench");
    jwk["use"] = json!("sig");
    json!({"keys": [jwk]}).to_string()
}

/// The benchmark issuer's introspection latency (50 ms; the rss-* scenarios set 0 to get through a million).
static INTROSPECT_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(50);

/// The benchmark client's secret at the token endpoint; any other secret is refused (401 invalid_client).
const CLIENT_SECRET: &str = "bench-secret";

/// Whether a token-endpoint request authenticates with [`CLIENT_SECRET`] (Basic or form post).
fn client_secret_ok(headers: &axum::http::HeaderMap, body: &str) -> bool {
    use base64::Engine;
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|pair| pair.ends_with(&format!(":{CLIENT_SECRET}")));
    let form = url::form_urlencoded::parse(body.as_bytes())
        .any(|(k, v)| k == "client_secret" && v == CLIENT_SECRET);
    basic || form
}

/// The form field `name` of an urlencoded body.
fn form_field(body: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Issuer {
    async fn start() -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Issuer::serve(listener)
    }

    /// The issuer's signing side alone (no server): tokens and cookies for an issuer served elsewhere.
    fn offline(issuer: String) -> Issuer {
        Issuer {
            issuer,
            key: Arc::new(bench_key("rsa1.pem")),
            ed_key: Arc::new(bench_ed_key()),
            token_hits: Default::default(),
            introspect_hits: Default::default(),
        }
    }

    /// Serves discovery, JWKS, token and introspection endpoints on `listener`.
    fn serve(listener: tokio::net::TcpListener) -> Issuer {
        let key = Arc::new(bench_key("rsa1.pem"));
        let issuer = format!("http://{}/oauth2/default", listener.local_addr().unwrap());
        let disc = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/v1/keys"),
            "token_endpoint": format!("{issuer}/v1/token"),
            "introspection_endpoint": format!("{issuer}/v1/introspect"),
        })
        .to_string();
        let ed_key = Arc::new(bench_ed_key());
        let keys = served_jwks(&key, &ed_key);
        let token_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (hits, k, iss) = (token_hits.clone(), key.clone(), issuer.clone());
        // Client credentials: any client id with the secret `bench-secret` gets a token (the benchmark measures the
        // cache, not the IdP); another secret is refused, so a wrong one can be shown to be refused.
        let token = move |headers: axum::http::HeaderMap, body: String| {
            let reply = if client_secret_ok(&headers, &body) {
                let n = hits.fetch_add(1, Ordering::SeqCst) as u64;
                let t = sign(&iss, &k, n, "bench-client");
                let body = json!({"access_token": t, "token_type": "Bearer", "expires_in": 3600})
                    .to_string();
                (axum::http::StatusCode::OK, body)
            } else {
                let body = json!({"error": "invalid_client"}).to_string();
                (axum::http::StatusCode::UNAUTHORIZED, body)
            };
            async move { reply }
        };
        let introspect_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (ihits, iss2) = (introspect_hits.clone(), issuer.clone());
        // Introspection: any token is active, with Okta-like claims, except those starting `bad-`; 50 ms of IdP
        // latency so a cold burst overlaps.
        let introspect = move |body: String| {
            ihits.fetch_add(1, Ordering::SeqCst);
            let bad = form_field(&body, "token").is_some_and(|t| t.starts_with("bad-"));
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let body = if bad {
                json!({"active": false})
            } else {
                json!({
                "active": true, "iss": iss2, "aud": "api://default", "sub": "bench-client", "client_id": "0oabench", "cid": "0oabench",
                "scp": ["api:read"], "scope": "api:read", "token_type": "Bearer", "iat": now, "exp": now + 3600,
            })
            }
            .to_string();
            async move {
                let ms = INTROSPECT_DELAY_MS.load(Ordering::Relaxed);
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                body
            }
        };
        let app = Router::new()
            .route(
                "/oauth2/default/v1/introspect",
                axum::routing::post(introspect),
            )
            .route(
                "/oauth2/default/.well-known/openid-configuration",
                get(move || async move { disc }),
            )
            .route("/oauth2/default/v1/keys", get(move || async move { keys }))
            .route("/oauth2/default/v1/token", axum::routing::post(token));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer {
            issuer,
            key,
            ed_key,
            token_hits,
            introspect_hits,
        }
    }

    fn token(&self, n: u64) -> String {
        sign(&self.issuer, &self.key, n, &format!("user-{n}@example.com"))
    }

    /// A distinct valid access token signed with the Ed25519 key (fast to sign).
    fn ed_token(&self, n: u64) -> String {
        sign_as(
            &self.issuer,
            &self.ed_key,
            (Algorithm::EdDSA, "bench-ed"),
            n,
            &format!("user-{n}@example.com"),
        )
    }

    /// An ID token for the benchmark's client (sessions verify its audience).
    fn id_token(&self, n: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("bench".into());
        let claims = json!({
            "iss": self.issuer, "aud": "oidc-authz", "sub": format!("user-{n}@example.com"),
            "email": format!("user-{n}@example.com"), "iat": now, "exp": now + 3600,
        });
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A command for a server process, pinned to `cpus` with taskset when given (so client and server each own
/// a core instead of fighting over both).
fn server_command(bin: &std::path::Path, cpus: &Option<String>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_port(addr: SocketAddr) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on {addr}");
}

async fn wait_ready(admin: SocketAddr) {
    for _ in 0..500 {
        if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("oidc-authz never became ready");
}

fn start_authz(
    cpus: &Option<String>,
    bin: &std::path::Path,
    dir: &std::path::Path,
    issuer: &str,
    cache_entries: u64,
    redis: Option<u16>,
) -> (Proc, SocketAddr, SocketAddr) {
    let grpc = free_addr();
    let admin = free_addr();
    let mut cfg = authz_config(grpc, admin, issuer, cache_entries);
    if let Some(port) = redis {
        cfg.push_str(&store_config(port));
    }
    let name = format!("authz-{cache_entries}-{}", redis.unwrap_or(0));
    let child = start_with_config(cpus, bin, dir, &name, &cfg);
    (child, grpc, admin)
}

/// Starts `bin serve` on the configuration `cfg` (written to DIR/NAME.toml).
fn start_with_config(
    cpus: &Option<String>,
    bin: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    cfg: &str,
) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let child = server_command(bin, cpus)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it: cargo build --release)",
                bin.display()
            )
        });
    Proc(child)
}

/// The benchmark store secret (base64 of 32 bytes; test value).
const STORE_SECRET: &str = "q2pU5hQ8ZyYzq8oYb9pM6dVY3vJ8XGmJ7eZb0v3bR9w=";

/// The `[store]` of a server sharing the Redis on `port`.
fn store_config(port: u16) -> String {
    format!(
        "\n[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}/0\"\nsecret = \"{STORE_SECRET}\"\n"
    )
}

/// The benchmark server's configuration.
fn authz_config(grpc: SocketAddr, admin: SocketAddr, issuer: &str, cache_entries: u64) -> String {
    let session_secret = SESSION_SECRET;
    format!(
        r#"
[server]
grpc_addr = "{grpc}"
admin_addr = "{admin}"
token_cache_entries = {cache_entries}

[providers.okta]
issuer = "{issuer}"
audiences = ["api://default"]
client_id = "oidc-authz"
client_secret = "bench-secret"

[policies.api]
provider = "okta"
auth_methods = ["bearer"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
groups_claim = ["groups"]
groups_required = ["admins"]
upstream_headers_claims = ["iss", "sub", "cid"]
upstream_headers_names = ["x-issuer", "x-user", "x-client-id"]

[policies.intro]
provider = "okta"
auth_methods = ["introspection"]
cache_introspection_secs = 300
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["sub", "client_id"]
upstream_headers_names = ["x-user", "x-client-id"]

[policies.web]
provider = "okta"
auth_methods = ["authorization_code", "session"]
redirect_uri = "https://app.example.com/oauth2/callback"
session_secret = "{session_secret}"
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["sub", "email"]
upstream_headers_names = ["x-user", "x-email"]

[policies.cc]
provider = "okta"
auth_methods = ["client_credentials"]
scopes = ["api:read"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["iss", "sub"]
upstream_headers_names = ["issuer_header", "x-user"]

[policies.web_store]
provider = "okta"
auth_methods = ["authorization_code", "session"]
redirect_uri = "https://store.example.com/oauth2/callback"
session_secret = "{session_secret}"
session_storage = "store"
session_cookie_name = "oidc_authz_store_session"
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["sub", "email"]
upstream_headers_names = ["x-user", "x-email"]
"#
    )
}

/// A `redis-server` of the benchmark's own on a free loopback port (Debian's; scripts/test-deps.sh installs it).
fn start_redis() -> (Proc, u16) {
    let port = free_addr().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server: {e} (run scripts/test-deps.sh)"));
    (Proc(child), port)
}

/// The sum of the samples of `admin`'s /metrics lines starting with `prefix`.
async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The benchmark policy's session secret (base64 of 32 bytes; test value).
const SESSION_SECRET: &str = "rFF/tGf4PbpRp0tBLQQMbnJ5NYYv2H+pNIhhq1prps4=";

/// The session the benchmark's browser holds.
fn session_data(issuer: &Issuer) -> oidc_authz::login::store::SessionData {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    oidc_authz::login::store::SessionData {
        sid: "bench-session".into(),
        provider: "okta".into(),
        at: issuer.token(7),
        it: Some(issuer.id_token(8)),
        rt: Some("rt-bench".into()),
        at_exp: now + 3600,
        created: now,
        seen: now,
    }
}

/// A Check on `policy` from a browser sending `cookie`.
fn browser_request(policy: &str, cookie: &str) -> CheckRequest {
    let mut r = check_request_auth("", policy);
    if let Some(http) = r
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|q| q.http.as_mut())
    {
        http.headers.remove("authorization");
        http.headers.insert("accept".into(), "text/html".into());
        http.headers.insert(
            "cookie".into(),
            format!("{cookie}; _ga=GA1.1.123; theme=dark"),
        );
    }
    r
}

/// A Check from a browser holding a `session_storage = "store"` session: the session saved in the benchmark's
/// Redis exactly as oidc-authz saves it at login (the same store config), the cookie its sealed id.
async fn store_session_request(issuer: &Issuer, redis: u16) -> CheckRequest {
    use oidc_authz::config::Config;
    use oidc_authz::login::store::{SessionStore, StoreSessions};
    use oidc_authz::store::Store;
    let mut text = authz_config(free_addr(), free_addr(), &issuer.issuer, 1);
    text.push_str(&store_config(redis));
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    let store = Store::new(
        &config.store,
        Arc::new(oidc_authz::telemetry::Metrics::new()),
    );
    let policy = config
        .policies
        .iter()
        .find(|p| p.name == "web_store")
        .unwrap();
    let settings = policy.login.as_ref().unwrap();
    let sessions = StoreSessions::new(&store, settings);
    let data = session_data(issuer);
    let mut set_cookies = Err(());
    for _ in 0..100 {
        if let Ok(c) = sessions.save(&data, data.created).await {
            set_cookies = Ok(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let set_cookies = set_cookies.expect("the benchmark's Redis answers");
    let cookie: Vec<String> = set_cookies
        .into_iter()
        .map(|c| c.into_header())
        .filter(|h| !h.contains("Max-Age=0"))
        .filter_map(|h| h.split(';').next().map(str::to_string))
        .collect();
    browser_request("web_store", &cookie.join("; "))
}

/// A valid session cookie (`name=value`), sealed exactly as oidc-authz seals it at login.
fn session_cookie(issuer: &Issuer) -> String {
    use oidc_authz::config::Secret;
    use oidc_authz::login::cookie::CookieCodec;
    let data = session_data(issuer);
    let codec = CookieCodec::new(&[Secret::new(SESSION_SECRET)]).unwrap();
    let sealed = codec.seal("oidc_authz_session", &serde_json::to_vec(&data).unwrap());
    format!("oidc_authz_session={sealed}")
}

/// A Check from a browser holding a valid session cookie.
fn session_request(issuer: &Issuer) -> CheckRequest {
    browser_request("web", &session_cookie(issuer))
}

/// Writes the credentials of the benchmark through Envoy (see `Cmd::Kit`).
fn write_kit(issuer: String, dir: &std::path::Path, distinct: u64) -> std::io::Result<()> {
    use base64::Engine;
    let issuer = Issuer::offline(issuer);
    std::fs::create_dir_all(dir)?;
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text + "\n");
    write("same.token", issuer.token(0))?;
    let tokens: Vec<String> = (1..=distinct).map(|n| issuer.token(n)).collect();
    write("distinct.tokens", tokens.join("\n"))?;
    // The same claims as same.token, signed by another key under the same kid: only the signature is wrong.
    let other = bench_key("rsa2.pem");
    write(
        "bad.token",
        sign(&issuer.issuer, &other, 0, "user-0@example.com"),
    )?;
    let cookie = session_cookie(&issuer);
    // The valid cookie with its last characters changed: the AEAD tag no longer matches.
    let tail = if cookie.ends_with("AAAA") {
        "BBBB"
    } else {
        "AAAA"
    };
    let bad_cookie = format!("{}{tail}", &cookie[..cookie.len() - 4]);
    write("session.cookie", cookie)?;
    write("bad-session.cookie", bad_cookie)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    write("cc.basic", b64(&format!("0oabench:{CLIENT_SECRET}")))?;
    write("bad-cc.basic", b64("0oabench:wrong-secret"))?;
    write("intro.token", "opq-bench-warm".into())?;
    write("bad-intro.token", "bad-opq-bench".into())?;
    write("jwks.json", jwks(&issuer.key))?;
    Ok(())
}

/// A cold oidc-authz receives bursts of simultaneous Checks; the issuer counts the introspection calls they cause.
async fn cold_burst(
    issuer: &Issuer,
    cpus: &Option<String>,
    bin: &std::path::Path,
    dir: &std::path::Path,
) -> String {
    let (_p, grpc, admin) = start_authz(cpus, bin, dir, &issuer.issuer, 100_000, None);
    wait_ready(admin).await;
    let clients = connect(grpc, 8).await;
    let mut lines = Vec::new();
    for (label, tokens) in [("1 new token", 1usize), ("100 new tokens", 100)] {
        let before = issuer.introspect_hits.load(Ordering::SeqCst);
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let mut c = clients[i % clients.len()].clone();
            let r = check_request(&format!("opq-burst-{tokens}-{}", i % tokens), "intro");
            tasks.push(tokio::spawn(async move {
                matches!(c.check(r).await.map(|r| r.into_inner().status), Ok(Some(s)) if s.code == 0)
            }));
        }
        let mut allowed = 0;
        for t in tasks {
            allowed += t.await.unwrap() as usize;
        }
        let calls = issuer.introspect_hits.load(Ordering::SeqCst) - before;
        lines.push(format!("cold burst: 1000 simultaneous Checks, {label}: {calls} introspection call(s), {allowed} allowed"));
    }
    lines.join("\n")
}

// ------------------------------------------------------------------------------------------------
// Route selection and memory
// ------------------------------------------------------------------------------------------------

/// The route-selection scenarios: (name, `[[routes]]` entries, policies). Each sends the same 1000 requests,
/// with no policy hint, so the server selects the policy by route.
const ROUTE_SCENARIOS: &[(&str, usize, usize)] = &[
    ("routes-1", 1, 1),
    ("routes-1000-p1", 1000, 1),
    ("routes-1000-p10", 1000, 10),
    ("routes-1000-p100", 1000, 100),
];

/// Entry `k` of the 1000-route table (its matcher lines) and a request (host, path, method) it answers. The
/// kinds cycle: exact host + prefix, wildcard host + regex, any host + prefix, exact host + exact path +
/// methods, any host + regex (200 regexes in the any-host group).
fn bench_route(k: usize) -> (String, (String, String, &'static str)) {
    match k % 5 {
        0 => (
            format!("hosts = [\"h{k}.example.com\"]\npath_prefix = \"/p{k}\""),
            (format!("h{k}.example.com"), format!("/p{k}/orders"), "GET"),
        ),
        1 => (
            format!("hosts = [\"*.t{k}.example.com\"]\npath_regex = \"/r{k}/[0-9]+\""),
            (
                format!("eu.t{k}.example.com:443"),
                format!("/r{k}/42"),
                "GET",
            ),
        ),
        2 => (
            format!("path_prefix = \"/any{k}/api\""),
            (
                "api.example.com".into(),
                format!("/any{k}/api/orders"),
                "GET",
            ),
        ),
        3 => (
            format!(
                "hosts = [\"h{k}.example.com\"]\npath_exact = \"/e{k}\"\nmethods = [\"GET\", \"POST\"]"
            ),
            (format!("h{k}.example.com"), format!("/e{k}"), "POST"),
        ),
        _ => (
            format!("path_regex = \"/q{k}/[a-z]+/[0-9]+\""),
            ("api.example.com".into(), format!("/q{k}/items/7"), "GET"),
        ),
    }
}

/// A configuration with `policies` bearer policies (p0, p1, ...) and `routes` `[[routes]]` entries spreading
/// over them (with 1 route: `/` to p0).
fn routes_config(
    grpc: SocketAddr,
    admin: SocketAddr,
    issuer: &str,
    routes: usize,
    policies: usize,
) -> String {
    let mut cfg = format!(
        r#"
[server]
grpc_addr = "{grpc}"
admin_addr = "{admin}"

[providers.okta]
issuer = "{issuer}"
audiences = ["api://default"]
client_id = "oidc-authz"
client_secret = "bench-secret"
"#
    );
    for p in 0..policies {
        cfg.push_str(&format!(
            r#"
[policies.p{p}]
provider = "okta"
auth_methods = ["bearer"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["iss", "sub", "cid"]
upstream_headers_names = ["x-issuer", "x-user", "x-client-id"]
"#
        ));
    }
    if routes == 1 {
        cfg.push_str("\n[[routes]]\npath_prefix = \"/\"\npolicy = \"p0\"\n");
    } else {
        for k in 0..routes {
            let (matcher, _) = bench_route(k);
            cfg.push_str(&format!(
                "\n[[routes]]\n{matcher}\npolicy = \"p{}\"\n",
                k % policies.max(1)
            ));
        }
    }
    cfg
}

/// A Check with `token` for `method host path` and no policy hint (route selection decides).
fn route_request(token: &str, host: &str, path: &str, method: &str) -> CheckRequest {
    let mut r = check_request(token, "");
    let attrs = r.attributes.as_mut().unwrap();
    attrs.context_extensions.clear();
    let http = attrs.request.as_mut().unwrap().http.as_mut().unwrap();
    http.host = host.into();
    http.path = path.into();
    http.method = method.into();
    for (k, v) in [(":authority", host), (":path", path), (":method", method)] {
        http.headers.insert(k.into(), v.into());
    }
    r
}

/// In-process cost of `RouteTable::find` (no server, one thread): ns per call over the 1000 route requests, for
/// each route-selection configuration.
fn route_find_timing(issuer: &str) {
    for &(name, routes, policies) in ROUTE_SCENARIOS {
        let text = routes_config(free_addr(), free_addr(), issuer, routes, policies);
        let config = oidc_authz::config::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
        let reqs: Vec<(String, String, &str)> = (0..1000).map(|k| bench_route(k).1).collect();
        let mut found = 0usize;
        let start = Instant::now();
        let passes = 200;
        for _ in 0..passes {
            for (host, path, method) in &reqs {
                found += config.routes.find(host, path, method).is_some() as usize;
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / (passes * reqs.len()) as f64;
        println!(
            "{name}: RouteTable::find in-process: {ns:.0} ns per call ({found} of {} requests matched a route)",
            passes * reqs.len()
        );
    }
}

/// The server's resident memory now and at its peak, from /proc/PID/status.
fn memory(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| format!("{:.1} MiB", kb as f64 / 1024.0))
            .unwrap_or_else(|| "?".into())
    };
    format!("VmRSS={} VmHWM={}", field("VmRSS:"), field("VmHWM:"))
}

/// Sends one Check per `n` in `range` (each built by `make(n)`) over `concurrency` streams; answers
/// (allow, deny, errors) and the Checks per second.
async fn send_each(
    addr: SocketAddr,
    range: std::ops::Range<u64>,
    concurrency: usize,
    connections: usize,
    make: Arc<dyn Fn(u64) -> CheckRequest + Send + Sync>,
) -> ((u64, u64, u64), f64) {
    let clients = connect(addr, connections).await;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(range.start));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let mut client = clients[i % clients.len()].clone();
        let (next, make, end) = (next.clone(), make.clone(), range.end);
        tasks.push(tokio::spawn(async move {
            let mut t = (0, 0, 0);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    break t;
                }
                match client.check(make(n)).await {
                    Ok(r) if matches!(r.get_ref().status, Some(ref s) if s.code == 0) => t.0 += 1,
                    Ok(_) => t.1 += 1,
                    Err(_) => t.2 += 1,
                }
            }
        }));
    }
    let mut total = (0, 0, 0);
    for t in tasks {
        let t = t.await.unwrap();
        total = (total.0 + t.0, total.1 + t.1, total.2 + t.2);
    }
    let secs = start.elapsed().as_secs_f64();
    (total, (range.end - range.start) as f64 / secs.max(1e-9))
}

/// Check `n` of the rss-valid scenario: a distinct valid token, a JWT (Ed25519) on the bearer policy for even
/// `n`, an opaque token the issuer calls active on the introspection policy for odd `n`.
fn valid_check(issuer: &Issuer, n: u64) -> CheckRequest {
    if n.is_multiple_of(2) {
        check_request(&issuer.ed_token(n), "api")
    } else {
        check_request(&format!("opq-rss-{n}"), "intro")
    }
}

/// Check `n` of the rss-garbage scenario: a distinct token that must be refused, in four kinds: a valid JWT with
/// its signature changed, a non-JWT string, a JWT naming an unknown key (bearer policy), and an opaque token the
/// issuer calls inactive (introspection policy: its negative cache).
fn garbage_check(issuer: &Issuer, n: u64) -> CheckRequest {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    match n % 4 {
        0 => {
            let token = issuer.ed_token(n);
            let (head, sig) = token.rsplit_once('.').unwrap();
            let first = if sig.starts_with('A') { 'B' } else { 'A' };
            check_request(&format!("{head}.{first}{}", &sig[1..]), "api")
        }
        1 => check_request(
            &format!("garbage-{n}-{:x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            "api",
        ),
        2 => {
            let head = b64(&format!(r#"{{"alg":"EdDSA","kid":"k{n}"}}"#));
            check_request(
                &format!("{head}.{}.{}", b64("{}"), b64(&n.to_string())),
                "api",
            )
        }
        _ => check_request(&format!("bad-rss-{n}"), "intro"),
    }
}

/// The rss-* scenario `name`: a fresh server (default cache sizes) gets `tokens` distinct tokens; its memory is
/// printed after start, after `checkpoint` tokens and after all. Whether every answer was the expected one.
async fn rss_scenario(
    name: &str,
    issuer: &Arc<Issuer>,
    (cpus, bin, dir): (&Option<String>, &std::path::Path, &std::path::Path),
    tokens: u64,
    checkpoint: u64,
    concurrency: usize,
    connections: usize,
) -> bool {
    // The issuer answers introspection at once, so a million calls fit in minutes.
    INTROSPECT_DELAY_MS.store(0, Ordering::Relaxed);
    let (p, grpc, admin) = start_authz(cpus, bin, dir, &issuer.issuer, 100_000, None);
    wait_ready(admin).await;
    let pid = p.0.id();
    println!("{name}: after start: {}", memory(pid));
    let valid = name == "rss-valid";
    let iss = issuer.clone();
    let make: Arc<dyn Fn(u64) -> CheckRequest + Send + Sync> = if valid {
        Arc::new(move |n| valid_check(&iss, n))
    } else {
        Arc::new(move |n| garbage_check(&iss, n))
    };
    let mut ok = true;
    let mut sent = 0;
    for upto in [checkpoint.min(tokens), tokens] {
        if upto <= sent {
            continue;
        }
        let ((allow, deny, errors), rate) =
            send_each(grpc, sent..upto, concurrency, connections, make.clone()).await;
        sent = upto;
        println!(
            "{name}: after {upto} distinct tokens: {} (this stretch: allow={allow} deny={deny} errors={errors}, {rate:.0} Checks/s)",
            memory(pid)
        );
        ok &= errors == 0 && if valid { deny == 0 } else { allow == 0 };
    }
    INTROSPECT_DELAY_MS.store(50, Ordering::Relaxed);
    ok
}

#[allow(clippy::too_many_arguments)]
async fn bench(
    duration: u64,
    concurrency: usize,
    connections: usize,
    bin: PathBuf,
    only: Vec<String>,
    rounds: usize,
    server_cpus: Option<String>,
    (rss_tokens, rss_checkpoint): (u64, u64),
) -> bool {
    let wanted = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let named = |s: &str| only.iter().any(|o| o == s);
    let mut ok = true;
    let duration = Duration::from_secs(duration);
    let issuer = Arc::new(Issuer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let same = Arc::new(vec![check_request(&issuer.token(0), "api")]);
    // A pool of distinct tokens, signed before the clock starts (RS256 signing is far slower than verifying).
    let pool: Arc<Vec<CheckRequest>> = Arc::new(
        (1..=2000)
            .map(|n| check_request(&issuer.token(n), "api"))
            .collect(),
    );
    // The Redis of the session-redis and session-store scenarios, and a store session saved in it.
    let redis_wanted = wanted("session-redis")
        || wanted("session-store")
        || named("noop-as-session-redis")
        || named("noop-as-session-store");
    let redis = redis_wanted.then(start_redis);
    let store_session = match &redis {
        Some((_, port)) => Some(Arc::new(vec![store_session_request(&issuer, *port).await])),
        None => None,
    };
    // The route-selection scenarios' requests: one per entry of the 1000-route table, all with the same token.
    let route_reqs: Arc<Vec<CheckRequest>> = {
        let token = issuer.token(0);
        Arc::new(
            (0..1000)
                .map(|k| {
                    let (_, (host, path, method)) = bench_route(k);
                    route_request(&token, &host, &path, method)
                })
                .collect(),
        )
    };
    let mut route_ratios: Vec<(&str, f64)> = Vec::new();
    if ROUTE_SCENARIOS.iter().any(|(n, ..)| named(n)) {
        route_find_timing(&issuer.issuer);
    }
    // Scenarios run in rounds (noop, same-jwt, fresh-jwt, cc-cached, then again), so a slow spell of the machine
    // does not land on one scenario only; each scenario reports its median round.
    let mut all: Vec<Summary> = Vec::new();
    for round in 1..=rounds {
        println!("round {round}/{rounds}");
        let mut results = Vec::new();
        if wanted("noop") {
            let addr = free_addr();
            let me = std::env::current_exe().unwrap();
            let _p = Proc(
                server_command(&me, &server_cpus)
                    .args(["noop", "--addr", &addr.to_string()])
                    .spawn()
                    .unwrap(),
            );
            wait_port(addr).await;
            results.push(
                drive(
                    "noop",
                    addr,
                    same.clone(),
                    duration,
                    concurrency,
                    connections,
                )
                .await,
            );
        }
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode("0oabench:bench-secret");
        // (name, token cache size, requests, the issuer counter whose calls to report)
        let mut scenarios: Vec<Scenario<'_>> = vec![
            ("same-jwt", 100_000, same.clone(), None, false),
            // A one-entry token cache and 2000 tokens in rotation: every Check misses the cache (hash, lookup,
            // insert) and verifies an RS256 signature and the claims, as a never-seen token does.
            ("fresh-jwt", 1, pool.clone(), None, false),
            // A browser session cookie: AES-GCM open (once per cookie value), idle/absolute times, claims, headers,
            // the cookie stripped upstream.
            (
                "session",
                100_000,
                Arc::new(vec![session_request(&issuer)]),
                None,
                false,
            ),
            // Client credentials with a warm token cache: Basic in, the cached token out.
            (
                "cc-cached",
                100_000,
                Arc::new(vec![check_request_auth(&format!("Basic {basic}"), "cc")]),
                Some(&issuer.token_hits),
                false,
            ),
            // Introspection with a warm cache: the token was introspected once during warm-up.
            (
                "intro-cached",
                100_000,
                Arc::new(vec![check_request("opq-bench-warm", "intro")]),
                Some(&issuer.introspect_hits),
                false,
            ),
        ];
        if let Some(store_session) = &store_session {
            // The same browser session with the servers sharing a Redis: its ended-session check (cookie storage),
            // and its session kept in Redis (store storage).
            scenarios.push((
                "session-redis",
                100_000,
                Arc::new(vec![session_request(&issuer)]),
                None,
                true,
            ));
            scenarios.push(("session-store", 100_000, store_session.clone(), None, true));
        }
        for (name, cache_entries, reqs, idp_calls, shares) in scenarios {
            let redis_port = redis.as_ref().map(|(_, p)| *p).filter(|_| shares);
            let start = || {
                let dir = dir.path();
                start_authz(
                    &server_cpus,
                    &bin,
                    dir,
                    &issuer.issuer,
                    cache_entries,
                    redis_port,
                )
            };
            // `noop-as-S` (only when named): the no-op answering every Check with oidc-authz's own answer to S's
            // request (taken from the server once), driven with S's requests: the ceiling for any server giving
            // that answer with this gRPC stack, so S's ratio to it is the cost of deciding alone.
            let replay = format!("noop-as-{name}");
            if named(&replay) {
                let (p, grpc, admin) = start();
                wait_ready(admin).await;
                let mut client = connect(grpc, 1).await.remove(0);
                let answer = client
                    .check(reqs[0].clone())
                    .await
                    .expect("oidc-authz answers")
                    .into_inner();
                // The ceiling of an allow: a refusal replayed would measure something else.
                assert!(
                    answer.status.as_ref().is_some_and(|s| s.code == 0),
                    "{replay}: oidc-authz did not allow {name}'s request"
                );
                drop(p);
                let file = dir.path().join(format!("{replay}.pb"));
                std::fs::write(&file, prost::Message::encode_to_vec(&answer)).unwrap();
                let addr = free_addr();
                let me = std::env::current_exe().unwrap();
                let _p = Proc(
                    server_command(&me, &server_cpus)
                        .args(["noop", "--addr", &addr.to_string(), "--answer-file"])
                        .arg(&file)
                        .spawn()
                        .unwrap(),
                );
                wait_port(addr).await;
                let summary = drive(
                    &replay,
                    addr,
                    reqs.clone(),
                    duration,
                    concurrency,
                    connections,
                );
                results.push(summary.await);
            }
            if !wanted(name) {
                continue;
            }
            let (_p, grpc, admin) = start();
            wait_ready(admin).await;
            let before = idp_calls.map(|c| c.load(Ordering::SeqCst));
            let store_before = metric(admin, "oidc_authz_store_requests_total").await;
            let checks_before = metric(admin, "oidc_authz_decisions_total").await;
            results.push(drive(name, grpc, reqs, duration, concurrency, connections).await);
            if redis_port.is_some() {
                let ops = metric(admin, "oidc_authz_store_requests_total").await - store_before;
                let checks = metric(admin, "oidc_authz_decisions_total").await - checks_before;
                println!(
                    "{name}: Redis round trips per Check = {:.5} ({ops} store operations for {checks} Checks)",
                    ops / checks.max(1.0)
                );
            }
            if let (Some(c), Some(before)) = (idp_calls, before) {
                let calls = c.load(Ordering::SeqCst) - before;
                println!(
                    "{name}: IdP calls (token or introspection endpoint) during the run, warm-up included = {calls}"
                );
            }
        }
        for &(name, routes, policies) in ROUTE_SCENARIOS {
            if !named(name) {
                continue;
            }
            let (grpc, admin) = (free_addr(), free_addr());
            let cfg = routes_config(grpc, admin, &issuer.issuer, routes, policies);
            let _p = start_with_config(&server_cpus, &bin, dir.path(), name, &cfg);
            wait_ready(admin).await;
            results.push(
                drive(
                    name,
                    grpc,
                    route_reqs.clone(),
                    duration,
                    concurrency,
                    connections,
                )
                .await,
            );
        }
        if let Some(one) = results.iter().find(|r| r.name == "routes-1").map(|r| r.rps) {
            for &(name, ..) in &ROUTE_SCENARIOS[1..] {
                if let Some(r) = results.iter().find(|r| r.name == name) {
                    println!(
                        "{name}: round {round} ratio to routes-1 = {:.3}",
                        r.rps / one
                    );
                    route_ratios.push((name, r.rps / one));
                }
            }
        }
        let round_noop = results.iter().find(|r| r.name == "noop").map(|r| r.rps);
        for r in &mut results {
            r.ratio = round_noop.map(|c| r.rps / c);
        }
        all.extend(results);
    }
    let mut results: Vec<Summary> = Vec::new();
    let deciding = [
        "same-jwt",
        "fresh-jwt",
        "cc-cached",
        "intro-cached",
        "session",
        "session-redis",
        "session-store",
    ];
    let replays = deciding.iter().map(|s| format!("noop-as-{s}"));
    let names = std::iter::once("noop".to_string())
        .chain(replays)
        .chain(deciding.iter().map(|s| s.to_string()))
        .chain(ROUTE_SCENARIOS.iter().map(|(n, ..)| n.to_string()));
    for name in names {
        let mut runs: Vec<&Summary> = all.iter().filter(|r| r.name == name).collect();
        if runs.is_empty() {
            continue;
        }
        runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let m = runs[runs.len() / 2];
        let mut ratios: Vec<f64> = runs.iter().filter_map(|r| r.ratio).collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = ratios.get(ratios.len() / 2).copied();
        let spread = match (ratios.first(), ratios.last()) {
            (Some(lo), Some(hi)) => format!("{lo:.2}-{hi:.2}"),
            _ => "-".into(),
        };
        println!(
            "{name}: ratio to the same round's no-op per round: {ratios:.2?} (range {spread})"
        );
        let (allow, deny, errors) = runs.iter().fold((0, 0, 0), |t, r| {
            (t.0 + r.allow, t.1 + r.deny, t.2 + r.errors)
        });
        results.push(Summary {
            ratio,
            name: m.name.clone(),
            rps: m.rps,
            p50_us: m.p50_us,
            p99_us: m.p99_us,
            allow,
            deny,
            errors,
        });
    }
    for &(name, ..) in &ROUTE_SCENARIOS[1..] {
        let mut rs: Vec<f64> = route_ratios
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .collect();
        if rs.is_empty() {
            continue;
        }
        rs.sort_by(f64::total_cmp);
        println!(
            "{name}: ratio to routes-1 per round {rs:.3?}, median {:.3}",
            rs[rs.len() / 2]
        );
    }
    for name in ["rss-valid", "rss-garbage"] {
        if named(name) {
            ok &= rss_scenario(
                name,
                &issuer,
                (&server_cpus, &bin, dir.path()),
                rss_tokens,
                rss_checkpoint,
                concurrency,
                connections,
            )
            .await;
        }
    }
    if wanted("intro-cached") {
        println!(
            "{}",
            cold_burst(&issuer, &server_cpus, &bin, dir.path()).await
        );
    }

    println!();
    println!(
        "| scenario | Checks/s (median round) | p50 (µs) | p99 (µs) | ratio to no-op (median of per-round ratios) | allow | deny | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.name, r.rps, r.p50_us, r.p99_us, ratio, r.allow, r.deny, r.errors
        );
        if r.deny > 0 || r.errors > 0 || r.allow == 0 {
            ok = false;
        }
    }
    if !ok {
        eprintln!("some scenario had denies or errors: the figures do not measure what they claim");
    }
    ok
}

/// The requests of `count`: `n` of them, for the scenario `name` (`None`: an unknown scenario).
async fn count_requests(
    issuer: &Issuer,
    name: &str,
    n: u64,
    first: u64,
    redis: Option<u16>,
) -> Option<Vec<CheckRequest>> {
    use base64::Engine;
    let one = match name {
        "same-jwt" => check_request(&issuer.token(0), "api"),
        "fresh-jwt" => {
            return Some(
                (first..first + n)
                    .map(|i| check_request(&issuer.token(i), "api"))
                    .collect(),
            );
        }
        "session" => session_request(issuer),
        "session-store" => store_session_request(issuer, redis?).await,
        "cc-cached" => {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("0oabench:{CLIENT_SECRET}"));
            check_request_auth(&format!("Basic {basic}"), "cc")
        }
        "intro-cached" => check_request("opq-bench-warm", "intro"),
        _ => return None,
    };
    Some(vec![one; n as usize])
}

/// Runs `callgrind_control ARG PID` and waits for callgrind to have done it.
fn callgrind_control(arg: &str, pid: u32) -> bool {
    Command::new("callgrind_control")
        .args([arg, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `n` Checks of `scenario` to `addr` one after another; fails unless every one is allowed. With
/// `callgrind` (pid, warm-up Checks): warm-up first, then the `n` Checks between a zero and a dump of its counters.
async fn count(
    addr: SocketAddr,
    issuer: String,
    scenario: &str,
    (n, first, callgrind): (u64, u64, Option<(u32, u64)>),
    redis: Option<u16>,
    save_answer: Option<PathBuf>,
) -> std::process::ExitCode {
    let issuer = Issuer::offline(issuer);
    let warmup = callgrind.map_or(0, |(_, w)| w);
    // The warm-up's fresh tokens are never the counted ones.
    let Some(mut requests) = count_requests(&issuer, scenario, warmup + n, first, redis).await
    else {
        eprintln!("unknown scenario {scenario} (or session-store without --redis)");
        return std::process::ExitCode::FAILURE;
    };
    let counted = requests.split_off(warmup as usize);
    let mut client = connect(addr, 1).await.remove(0);
    for r in requests {
        let _ = client.check(r).await;
    }
    if let Some((pid, _)) = callgrind
        && !callgrind_control("-z", pid)
    {
        eprintln!("callgrind_control -z {pid} failed");
        return std::process::ExitCode::FAILURE;
    }
    let mut allowed = 0u64;
    let mut last = None;
    for r in counted {
        let answer = client.check(r).await.map(|r| r.into_inner());
        if matches!(&answer, Ok(a) if a.status.as_ref().is_some_and(|s| s.code == 0)) {
            allowed += 1;
        }
        last = answer.ok();
    }
    // Only an answer of a run where every Check was allowed (the replay is the ceiling of an allow).
    if let (Some(path), Some(answer), true) = (&save_answer, &last, allowed == n) {
        std::fs::write(path, prost::Message::encode_to_vec(answer)).expect("write --save-answer");
    }
    if let Some((pid, _)) = callgrind
        && !callgrind_control("-d", pid)
    {
        eprintln!("callgrind_control -d {pid} failed");
        return std::process::ExitCode::FAILURE;
    }
    println!("scenario={scenario} checks={n} allowed={allowed}");
    if allowed == n {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Noop {
                addr,
                answer,
                answer_file,
            } => {
                serve_noop(addr, &answer, answer_file).await;
                std::process::ExitCode::SUCCESS
            }
            Cmd::Idp { addr } => {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("cannot listen on {addr}: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                };
                let issuer = Issuer::serve(listener);
                println!("{}", issuer.issuer);
                std::future::pending::<()>().await;
                std::process::ExitCode::SUCCESS
            }
            Cmd::Kit {
                issuer,
                dir,
                distinct,
            } => match write_kit(issuer, &dir, distinct) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write the kit into {}: {e}", dir.display());
                    std::process::ExitCode::FAILURE
                }
            },
            Cmd::Config {
                issuer,
                grpc,
                admin,
                cache_entries,
                redis,
            } => {
                print!("{}", authz_config(grpc, admin, &issuer, cache_entries));
                if let Some(port) = redis {
                    print!("{}", store_config(port));
                }
                std::process::ExitCode::SUCCESS
            }
            Cmd::Count {
                addr,
                issuer,
                scenario,
                n,
                first,
                redis,
                callgrind_pid,
                warmup,
                save_answer,
            } => {
                let callgrind = callgrind_pid.map(|pid| (pid, warmup));
                let counting = (n, first, callgrind);
                count(addr, issuer, &scenario, counting, redis, save_answer).await
            }
            Cmd::Run {
                addr,
                token,
                policy,
                duration,
                concurrency,
                connections,
            } => {
                let reqs = Arc::new(vec![check_request(&token, &policy)]);
                drive(
                    "run",
                    addr,
                    reqs,
                    Duration::from_secs(duration),
                    concurrency,
                    connections,
                )
                .await;
                std::process::ExitCode::SUCCESS
            }
            Cmd::Bench {
                duration,
                concurrency,
                connections,
                bin,
                only,
                rounds,
                server_cpus,
                rss_tokens,
                rss_checkpoint,
            } => {
                if bench(
                    duration,
                    concurrency,
                    connections,
                    bin,
                    only,
                    rounds.max(1),
                    server_cpus,
                    (rss_tokens, rss_checkpoint),
                )
                .await
                {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                }
            }
        }
    })
}
