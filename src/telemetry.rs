//! Logs (tracing, JSON or pretty), Prometheus metrics (one registry per server instance), and the record of each
//! Check ([`CheckRecord`]: its log line, counters and latency).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::{AuthMethod, LogFormat};
use crate::decision::{Decision, DenyStatus};
use crate::request::CheckView;

/// Keeps the log writer's thread alive; dropping it writes out every line still queued (hold it until exit).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _worker: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the global tracing subscriber (`RUST_LOG` filters; default `info`). Safe to call twice.
///
/// Lines go to stderr from a writer thread of their own (tracing-appender's non-blocking writer), so a Check
/// never waits on the write: the thread writes them through a buffer, flushed whenever the queue is empty. The
/// queue is not lossy: when 128k lines are waiting, a Check waits rather than a line being dropped.
pub fn init_logging(format: LogFormat) -> LogGuard {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, worker) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("oidc-authz-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .event_format(crate::json_log::JsonLine::new())
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    LogGuard { _worker: worker }
}

/// Labels of one decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Policy name, or `-` when none was selected.
    pub policy: String,
    /// Auth method used, or `-`.
    pub method: &'static str,
    /// `allow`, `deny_401`, `deny_403`, `deny_503`, `redirect`, or `cancelled` (Envoy reset the stream before
    /// the answer: its own timeout, or the client went away).
    pub result: &'static str,
}

/// The `method` label values: `-` first (no method reached), then the names of [`AuthMethod::ALL`].
const METHODS: [&str; 1 + AuthMethod::ALL.len()] = {
    let mut out = ["-"; 1 + AuthMethod::ALL.len()];
    let mut i = 0;
    while i < AuthMethod::ALL.len() {
        out[i + 1] = AuthMethod::ALL[i].1;
        i += 1;
    }
    out
};
/// The `result` label values.
const RESULTS: [&str; 8] = [
    "allow",
    "deny_400",
    "deny_401",
    "deny_403",
    "deny_503",
    "redirect",
    "answered",
    "cancelled",
];

/// The metrics and the log line of one Check. Created when the Check starts (in flight), finished with its
/// outcome; a Check whose future is dropped before it is answered (Envoy reset the stream: its own timeout, the
/// client went away) is recorded on drop as `cancelled`, so the in-flight gauge, the counters, the latency
/// histogram and the log stay true.
pub struct CheckRecord<'a> {
    metrics: &'a Metrics,
    view: &'a CheckView<'a>,
    start: Instant,
    /// The selected policy's name, `-` until one is selected, and its counters.
    policy: &'a str,
    counters: &'a PolicyCounters,
    /// The issuer of the verified token or session (`iss`), once authenticated: the provider actually used.
    issuer: Option<String>,
    finished: bool,
}

impl<'a> CheckRecord<'a> {
    /// A Check starts (in flight), counted in `unselected` until a policy is selected.
    pub fn start(
        metrics: &'a Metrics,
        unselected: &'a PolicyCounters,
        view: &'a CheckView<'a>,
    ) -> Self {
        metrics.in_flight.inc();
        CheckRecord {
            metrics,
            view,
            start: Instant::now(),
            policy: "-",
            counters: unselected,
            issuer: None,
            finished: false,
        }
    }

    /// The Check selected the policy `name`, counted in `counters`.
    pub fn selected(&mut self, name: &'a str, counters: &'a PolicyCounters) {
        self.policy = name;
        self.counters = counters;
    }

    /// The request authenticated with a token or session of this issuer (its verified `iss`).
    pub fn issuer(&mut self, iss: Option<String>) {
        self.issuer = iss;
    }

    /// The Check is answered: `decision`, by `method`, for `sub`.
    pub fn finish(&mut self, decision: &Decision, method: Option<AuthMethod>, sub: Option<&str>) {
        let (result, reason) = match decision {
            Decision::Allow(_) => ("allow", ""),
            Decision::Redirect(_) => ("redirect", ""),
            Decision::Answered(_) => ("answered", ""),
            Decision::Deny(d) => match d.status {
                DenyStatus::BadRequest => ("deny_400", d.log_reason()),
                DenyStatus::Unauthorized => ("deny_401", d.log_reason()),
                DenyStatus::Forbidden => ("deny_403", d.log_reason()),
                DenyStatus::Unavailable => ("deny_503", d.log_reason()),
            },
        };
        let method = method.map_or("-", AuthMethod::as_str);
        self.record(method, sub.unwrap_or(""), result, reason);
        self.finished = true;
    }

    fn record(&self, method: &'static str, sub: &str, result: &'static str, reason: &str) {
        self.metrics.in_flight.dec();
        self.counters.inc(method, result);
        self.metrics
            .check_seconds
            .observe(self.start.elapsed().as_secs_f64());
        let view = self.view;
        tracing::info!(
            policy.name = self.policy,
            auth.method = method,
            auth.sub = sub,
            auth.iss = self.issuer.as_deref().unwrap_or(""),
            decision = result,
            reason,
            request.id = view.request_id,
            request.method = view.method,
            request.path = view.path,
            "check"
        );
    }
}

impl Drop for CheckRecord<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(
                "-",
                "",
                "cancelled",
                "the Check was cancelled before it was answered",
            );
        }
    }
}

/// One policy's decision counters (every method x result), resolved once when the policy is compiled, so counting
/// a Check takes no allocation, no lock and no lookup by name.
#[derive(Debug, Clone, Default)]
pub struct PolicyCounters {
    counters: Vec<Counter>,
}

impl PolicyCounters {
    /// Counts one decision (`method` from the method table, `result` one of the result labels).
    pub fn inc(&self, method: &'static str, result: &'static str) {
        let slot = METHODS
            .iter()
            .position(|m| *m == method)
            .zip(RESULTS.iter().position(|r| *r == result))
            .and_then(|(m, r)| self.counters.get(m * RESULTS.len() + r));
        if let Some(counter) = slot {
            counter.inc();
        }
    }
}

/// Labels of one call to an identity provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdpLabels {
    /// Provider name.
    pub provider: String,
    /// `discovery`, `jwks`, `token`, `introspection`.
    pub endpoint: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of a call's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdpEndpointLabels {
    /// Provider name.
    pub provider: String,
    /// Endpoint kind.
    pub endpoint: &'static str,
}

/// Labels of a cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// Which cache (`token`, `jwks`).
    pub cache: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// Labels of a per-provider counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider name.
    pub provider: String,
}

/// Labels of one store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `get`, `set`, `set_new`, `delete`, `incr`, `publish`, `ping`.
    pub op: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of a store operation's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    /// The operation.
    pub op: &'static str,
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Decisions by policy, method and result.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Time spent in Check.
    pub check_seconds: Histogram,
    /// Calls to identity providers.
    pub idp_requests: Family<IdpLabels, Counter>,
    /// Latency of calls to identity providers.
    pub idp_seconds: Family<IdpEndpointLabels, Histogram>,
    /// Cache lookups.
    pub cache: Family<CacheLabels, Counter>,
    /// Checks in flight.
    pub in_flight: Gauge,
    /// Client ids locked out after too many refused client-credentials grants.
    pub client_lockouts: Family<ProviderLabels, Counter>,
    /// Client-credentials grants not sent because the provider's grant bucket was empty.
    pub token_grants_throttled: Family<ProviderLabels, Counter>,
    /// Operations on the shared store.
    pub store_requests: Family<StoreLabels, Counter>,
    /// Latency of operations on the shared store.
    pub store_seconds: Family<StoreOpLabels, Histogram>,
    /// Pre-resolved (cache, hit, miss) counters of `cache`.
    cache_counters: Vec<(&'static str, Counter, Counter)>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("oidc_authz");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Check decisions by policy, auth method and result",
            decisions.clone(),
        );
        let check_seconds = latency_histogram();
        registry.register(
            "check_duration_seconds",
            "Time to answer one Check",
            check_seconds.clone(),
        );
        let idp_requests = Family::<IdpLabels, Counter>::default();
        registry.register(
            "idp_requests",
            "HTTP calls to identity providers",
            idp_requests.clone(),
        );
        let idp_seconds = Family::<IdpEndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "idp_request_duration_seconds",
            "Latency of calls to identity providers",
            idp_seconds.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by cache and result",
            cache.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "checks_in_flight",
            "Checks being answered now",
            in_flight.clone(),
        );
        let client_lockouts = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "client_lockouts",
            "Client ids locked out after too many refused client-credentials grants",
            client_lockouts.clone(),
        );
        let token_grants_throttled = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "token_grants_throttled",
            "Client-credentials grants refused locally because the provider's grant rate was spent",
            token_grants_throttled.clone(),
        );
        let store_requests = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_requests",
            "Operations on the shared store (memory or Redis) by operation and outcome",
            store_requests.clone(),
        );
        let store_seconds = Family::<StoreOpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "store_request_duration_seconds",
            "Latency of operations on the shared store",
            store_seconds.clone(),
        );
        let cache_counters = [
            "token",
            "jwks",
            "client_credentials",
            "introspection",
            "session",
        ]
        .into_iter()
        .map(|c| {
            let get = |result| {
                cache
                    .get_or_create(&CacheLabels { cache: c, result })
                    .clone()
            };
            (c, get("hit"), get("miss"))
        })
        .collect();
        Metrics {
            cache_counters,
            registry: Mutex::new(registry),
            decisions,
            check_seconds,
            idp_requests,
            idp_seconds,
            cache,
            in_flight,
            client_lockouts,
            token_grants_throttled,
            store_requests,
            store_seconds,
        }
    }

    /// Records one store operation.
    pub fn store_op(&self, op: &'static str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.store_requests
            .get_or_create(&StoreLabels { op, outcome })
            .inc();
        self.store_seconds
            .get_or_create(&StoreOpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    /// Resolves the decision counters of one policy (`-`: no policy selected).
    pub fn policy_counters(&self, policy: &str) -> PolicyCounters {
        let mut counters = Vec::with_capacity(METHODS.len() * RESULTS.len());
        for method in METHODS {
            for result in RESULTS {
                let labels = DecisionLabels {
                    policy: policy.to_string(),
                    method,
                    result,
                };
                counters.push(self.decisions.get_or_create(&labels).clone());
            }
        }
        PolicyCounters { counters }
    }

    /// Records one IdP call.
    pub fn idp_call(&self, provider: &str, endpoint: &'static str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.idp_requests
            .get_or_create(&IdpLabels {
                provider: provider.to_string(),
                endpoint,
                outcome,
            })
            .inc();
        self.idp_seconds
            .get_or_create(&IdpEndpointLabels {
                provider: provider.to_string(),
                endpoint,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one cache lookup.
    pub fn cache_lookup(&self, cache: &'static str, hit: bool) {
        // The hot caches have their counters resolved once: no label hashing or lock per Check.
        if let Some((_, h, m)) = self
            .cache_counters
            .iter()
            .find(|(name, _, _)| *name == cache)
        {
            if hit {
                h.inc()
            } else {
                m.inc()
            };
            return;
        }
        self.cache
            .get_or_create(&CacheLabels {
                cache,
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}
