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

/// Keeps the log writer's thread alive; dropping it writes out every line still buffered (hold it until exit).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    sink: std::sync::Arc<LineSink>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.sink.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Installs the global tracing subscriber (`RUST_LOG` filters; default `info`). Safe to call twice.
///
/// Lines go to stderr through a [`LineSink`]: a Check appends its line to a shared buffer and returns; a thread
/// of its own writes the buffer out every [`LOG_FLUSH_EVERY`], so a Check makes no system call for its line and
/// wakes no thread. Nothing is dropped: past [`LOG_BUFFER_MAX`] bytes a Check writes the buffer out itself.
pub fn init_logging(format: LogFormat) -> LogGuard {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let sink = std::sync::Arc::new(LineSink::new(Box::new(std::io::stderr())));
    let thread = {
        let sink = sink.clone();
        std::thread::Builder::new()
            .name("oidc-authz-log".into())
            .spawn(move || sink.run(LOG_FLUSH_EVERY))
            .ok()
    };
    let builder = fmt().with_env_filter(filter).with_writer(sink.clone());
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .event_format(crate::json_log::JsonLine::new())
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    LogGuard { sink, thread }
}

/// How often the log thread writes the buffered lines out.
pub const LOG_FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Buffered log bytes past which the thread is woken at once, and past which a Check writes them out itself
/// (twice this) rather than let the buffer grow: a stalled stderr slows Checks down, it never loses a line.
pub const LOG_BUFFER_MAX: usize = 1 << 20;

/// Where log lines wait for the log thread: one buffer behind a mutex (tracing's formatter hands over each line
/// whole, in one `write`), written to `out` by [`LineSink::run`] every interval, when it grows past
/// [`LOG_BUFFER_MAX`], and at [`LineSink::close`].
///
/// tracing-appender's non-blocking writer (used before) sent each line through a channel whose receiving thread
/// was woken for every line: a futex wake and two context switches per Check, 15 % of the server's CPU one Check
/// at a time on one core.
pub struct LineSink {
    buf: Mutex<Vec<u8>>,
    /// Serialises writes to `out` (the log thread's and a Check's when the buffer is full), keeping lines whole
    /// and in order.
    out: Mutex<Box<dyn std::io::Write + Send>>,
    wake: std::sync::Condvar,
    closed: std::sync::atomic::AtomicBool,
}

impl LineSink {
    /// A sink writing to `out`.
    pub fn new(out: Box<dyn std::io::Write + Send>) -> Self {
        LineSink {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            out: Mutex::new(out),
            wake: std::sync::Condvar::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Appends one line (or any bytes); writes everything out itself when the buffer is over twice
    /// [`LOG_BUFFER_MAX`].
    pub fn append(&self, bytes: &[u8]) {
        let len = {
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(bytes);
            buf.len()
        };
        if len > 2 * LOG_BUFFER_MAX {
            self.write_out();
        } else if len > LOG_BUFFER_MAX {
            self.wake.notify_one();
        }
    }

    /// Writes every buffered byte to `out` and flushes it.
    pub fn write_out(&self) {
        // The output lock first: whoever holds it writes what was buffered up to then, in order.
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let pending = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            let _ = out.write_all(&pending);
            let _ = out.flush();
            // Keep the allocation: give the (emptied) larger buffer back if nothing came in meanwhile.
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            if buf.is_empty() && buf.capacity() < pending.capacity() {
                let mut pending = pending;
                pending.clear();
                *buf = pending;
            }
        }
    }

    /// The log thread: writes the buffer out every `every` (sooner when it is large) until [`LineSink::close`],
    /// then once more.
    pub fn run(&self, every: Duration) {
        loop {
            {
                let buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
                if !self.closed.load(std::sync::atomic::Ordering::Acquire)
                    && buf.len() <= LOG_BUFFER_MAX
                {
                    let _ = self.wake.wait_timeout(buf, every);
                }
            }
            self.write_out();
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                self.write_out();
                return;
            }
        }
    }

    /// Asks the log thread to write out what is left and stop.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }
}

impl std::io::Write for &LineSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineSink {
    type Writer = &'a LineSink;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
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

#[cfg(test)]
mod line_sink_tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{LOG_BUFFER_MAX, LineSink};

    /// An output the test can read while the sink owns it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_waits_in_the_buffer_until_written_out() {
        let out = Shared::default();
        let sink = LineSink::new(Box::new(out.clone()));
        (&sink).write_all(b"one\n").unwrap();
        (&sink).write_all(b"two\n").unwrap();
        // No system call, no thread: the lines wait in the buffer.
        assert!(out.0.lock().unwrap().is_empty());
        sink.write_out();
        assert_eq!(&*out.0.lock().unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn a_full_buffer_is_written_by_the_check_itself_never_dropped() {
        let out = Shared::default();
        let sink = LineSink::new(Box::new(out.clone()));
        let line = vec![b'x'; 1024];
        let mut sent = 0;
        // No log thread runs: past twice LOG_BUFFER_MAX the writer writes the buffer out itself.
        while sent <= 2 * LOG_BUFFER_MAX {
            (&sink).write_all(&line).unwrap();
            sent += line.len();
        }
        assert_eq!(out.0.lock().unwrap().len(), sent);
    }

    #[test]
    fn the_log_thread_writes_lines_out_in_order_and_everything_at_close() {
        let out = Shared::default();
        let sink = Arc::new(LineSink::new(Box::new(out.clone())));
        let thread = {
            let sink = sink.clone();
            std::thread::spawn(move || sink.run(Duration::from_millis(1)))
        };
        (&*sink).write_all(b"first\n").unwrap();
        // Written out by the thread on its own (polled, generous budget: no timing assumption).
        let mut seen = false;
        for _ in 0..6000 {
            if out.0.lock().unwrap().as_slice() == b"first\n" {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(seen, "the log thread never wrote the line out");
        let expected: Vec<u8> = (0..1000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for i in 0..1000 {
            (&*sink)
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        sink.close();
        thread.join().unwrap();
        let got = out.0.lock().unwrap();
        assert_eq!(&got[b"first\n".len()..], expected.as_slice());
    }
}
