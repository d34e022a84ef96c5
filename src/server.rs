//! The tonic adapter (ext_authz Check + grpc.health.v1), the admin listener (/healthz, /readyz, /metrics over
//! HTTP/1, and the [`crate::admin`] gRPC service over HTTP/2 on the same port) and graceful shutdown: stop accepting, let in-flight Checks finish (up to `shutdown_grace_secs`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Request, Response, Status};

use crate::admin::AdminService;
use crate::authz::Authorizer;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::envoy::check_response;
use crate::request::CheckView;
use crate::rng::SystemRng;
use crate::telemetry::Metrics;

/// The ext_authz gRPC service: a thin adapter over [`Authorizer`].
#[derive(Debug, Clone)]
pub struct CheckService {
    authorizer: Arc<Authorizer>,
}

impl CheckService {
    /// Wraps an authorizer.
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        CheckService { authorizer }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let req = request.into_inner();
        let view = CheckView::new(&req);
        let decision = self.authorizer.check(&view).await;
        Ok(Response::new(check_response(decision)))
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

#[derive(Clone)]
struct AdminState {
    authorizer: Arc<Authorizer>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
}

/// A server with its listeners bound (so tests can bind port 0 and read the ports).
pub struct Server {
    grpc: TcpListener,
    admin: TcpListener,
    authorizer: Arc<Authorizer>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Binds both listeners with the system clock.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        Self::bind_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Binds both listeners; the authorizer checks token times against `clock`.
    pub async fn bind_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Server, ServeError> {
        let grpc_addr = config.server.grpc_addr;
        let admin_addr = config.server.admin_addr;
        let grpc = TcpListener::bind(grpc_addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: grpc_addr,
                source,
            })?;
        let admin = TcpListener::bind(admin_addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: admin_addr,
                source,
            })?;
        let metrics = Arc::new(Metrics::new());
        let authorizer = Arc::new(Authorizer::new(
            config,
            metrics.clone(),
            clock,
            Arc::new(SystemRng),
        ));
        Ok(Server {
            grpc,
            admin,
            authorizer,
            metrics,
        })
    }

    /// Where gRPC listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where the admin HTTP listener is.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The authorizer (tests call it directly).
    pub fn authorizer(&self) -> Arc<Authorizer> {
        self.authorizer.clone()
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            grpc,
            admin,
            authorizer,
            metrics,
        } = self;
        let grace = authorizer.config().server.shutdown_grace;
        let draining = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

        let refreshers: Vec<_> = authorizer
            .providers()
            .iter()
            .map(|p| tokio::spawn(p.clone().run_refresh()))
            .collect();

        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_not_serving::<AuthorizationServer<CheckService>>()
            .await;
        let ready_watch = {
            let authorizer = authorizer.clone();
            let reporter = reporter.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    if authorizer.is_ready() {
                        reporter
                            .set_serving::<AuthorizationServer<CheckService>>()
                            .await;
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = stop.changed() => break,
                    }
                }
            })
        };

        let admin_state = AdminState {
            authorizer: authorizer.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
        };
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(admin_state)
            .merge(
                tonic::service::Routes::new(AdminService::server(authorizer.clone()))
                    .into_axum_router(),
            );
        let mut admin_stop = stop_rx.clone();
        let admin_task = tokio::spawn(async move {
            let _ = axum::serve(admin, app)
                .with_graceful_shutdown(async move {
                    let _ = admin_stop.changed().await;
                })
                .await;
        });

        tracing::info!(grpc_addr = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving ext_authz");

        let mut grpc_stop = stop_rx.clone();
        // With our own listener, tonic's `tcp_nodelay` does not apply: set it on the incoming stream, or every
        // small answer waits ~40 ms for Nagle + delayed ACK.
        let incoming = tonic::transport::server::TcpIncoming::from(grpc)
            .with_nodelay(Some(true))
            .map(|conn| conn.map(Unvectored::new));
        let service = AuthorizationServer::new(CheckService::new(authorizer.clone()))
            .max_decoding_message_size(8 * 1024 * 1024);
        let grpc_server = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.changed().await;
            });
        let mut grpc_server = std::pin::pin!(grpc_server);

        let result = tokio::select! {
            r = &mut grpc_server => r.map_err(ServeError::from),
            _ = shutdown => {
                tracing::info!(grace_secs = grace.as_secs(), "shutting down: draining in-flight checks");
                draining.store(true, Ordering::SeqCst);
                reporter.set_not_serving::<AuthorizationServer<CheckService>>().await;
                let _ = stop_tx.send(true);
                match tokio::time::timeout(grace, &mut grpc_server).await {
                    Ok(r) => r.map_err(ServeError::from),
                    Err(_) => {
                        tracing::warn!("grace period over; stopping with checks still in flight");
                        Ok(())
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        for r in refreshers {
            r.abort();
        }
        ready_watch.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
        tracing::info!("stopped");
        result
    }
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string());
    }
    let pending: Vec<&str> = s
        .authorizer
        .providers()
        .iter()
        .filter(|p| !p.is_ready())
        .map(|p| p.name())
        .collect();
    if pending.is_empty() {
        // The store is reported, not required: token methods work without it, and a replica that left the
        // endpoints whenever Redis blinked would take them down too (store-backed answers are 503 meanwhile).
        let store = match s.authorizer.store().ping().await {
            Ok(()) => "store: ok",
            Err(_) => "store: unavailable (store-backed sessions and logouts answer 503)",
        };
        (StatusCode::OK, format!("ready\n{store}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for providers: {}\n", pending.join(", ")),
        )
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// A Check connection that tells h2 it has no vectored writes, and gathers h2's writes until it flushes.
///
/// With vectored writes h2 keeps every DATA frame of 256 bytes or more out of its write buffer and writes it on
/// its own (`writev` of the buffer and the frame), and must flush before it can buffer the next frame: an answer
/// with claim headers (a few hundred bytes of protobuf) took two `writev`s, the second for its 10-byte trailers,
/// and no answer after it could share the write. Without them h2 copies frames of up to 1 KiB into its buffer, so
/// an answer and the ones queued behind it go out in one `write` (measured: 2 writes per Check down to 1 for a
/// bearer allow one at a time). A larger frame h2 still writes in two pieces (its buffer, then the frame); the
/// `BufWriter` joins them, so such an answer costs the two writes it did before, not three. h2 flushes at the end
/// of every round of writes, and the `BufWriter` writes out then: nothing waits in it past a flush.
struct Unvectored(tokio::io::BufWriter<TcpStream>);

impl Unvectored {
    fn new(tcp: TcpStream) -> Self {
        // h2's own write buffer is 16 KiB: a write of that size or more goes straight to the socket.
        Unvectored(tokio::io::BufWriter::with_capacity(16 * 1024, tcp))
    }
}

impl tonic::transport::server::Connected for Unvectored {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl AsyncRead for Unvectored {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Unvectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
