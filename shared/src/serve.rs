//! `bulk-export serve`: every route in one process (same handlers as the Lambdas) plus an
//! exporter loop woken by new jobs and every RepeatPeriod.

use crate::app::{AppState, Function};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::net::TcpListener;

use crate::db::Pool;
use crate::export::engine::Exporter;
use crate::http::{router, Body};
use crate::queue::{JobQueue, LocalQueue};
use crate::storage::ObjectStore;
use crate::Config;

use crate::config::MetricsEndpoint;
use crate::http::routes::Handler;
use crate::http::{ApiError, MAX_BODY_BYTES};

/// Largest body of a request that is not an authorized kick-off (the token form is a few KB;
/// the other routes take none): read before anyone is authenticated, so kept small.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// What `serve`'s handlers share: the application, and the bytes of request bodies that may be
/// in memory at once (`SERVE_BODY_BUDGET_BYTES`).
struct Serving {
    app: AppState,
    bodies: Arc<tokio::sync::Semaphore>,
}

async fn dispatch(
    State(serving): State<Arc<Serving>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let started = Instant::now();
    let state = &serving.app;
    let (parts, body) = req.into_parts();
    // The head first: what the route is, and whose the token is, before any body is read.
    let head = http::Request::from_parts(parts, Bytes::new());
    let method = head.method().clone();
    // The request's one normalised path: the metrics, the route label and the router use it.
    let path = crate::http::normalized_path(&head);
    let metrics_here =
        state.config.metrics == MetricsEndpoint::Base && path == metrics_path(&state.config);
    let route = if metrics_here {
        "/metrics"
    } else {
        crate::http::routes::label(&path)
    };
    let (resp, client) = match crate::http::check_limits(&head) {
        Some(refused) => (refused.into_response(), None),
        None if metrics_here && method == http::Method::GET => (metrics(), None),
        None => {
            let routed = router::route(Function::Api, state, &head, &path).await;
            let client = routed.client_id.clone();
            (answer(&serving, head, body, routed).await, client)
        }
    };
    // The access log: one line per request (never a token, a query string or an id in the
    // route; the job id of a status poll is in the handler's own lines).
    tracing::info!(
        target: "access",
        method = %method,
        route,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        client_id = client.as_deref().unwrap_or("-"),
        "request"
    );
    into_axum(resp).await
}

/// Reads the body of `head` within its limits, then answers the request.
///
/// Bodies are bounded by what the router found from the head: a kick-off it let in (a valid
/// token of a registered client, or authorization off) may send `MAX_BODY_BYTES`; a kick-off
/// without one is answered (401) without its body being read; every other route may send
/// `SMALL_BODY_BYTES`. A larger declared `Content-Length` is refused (413) before any of it is
/// read, and all bodies in memory at once share `SERVE_BODY_BUDGET_BYTES`: beyond it, 503 with
/// Retry-After.
async fn answer(
    serving: &Serving,
    head: crate::http::Request,
    body: axum::body::Body,
    routed: router::Routed,
) -> crate::http::Response {
    let state = &serving.app;
    let (parts, _) = head.into_parts();
    let token_route = routed.handler == Some(Handler::Token);
    let limit = match routed.handler {
        // The router let it in: a valid token of a registered client, or authorization off.
        Some(Handler::Export(_)) if !routed.is_answered() => MAX_BODY_BYTES,
        // Refused (401, or not under the base) before a body would be looked at.
        Some(Handler::Export(_)) => 0,
        _ => SMALL_BODY_BYTES,
    };
    if limit == 0 {
        let req = http::Request::from_parts(parts, Bytes::new());
        return routed.answer(state, &req).await;
    }
    let refuse = |e: BodyRefused| e.into_response(token_route);
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse(BodyRefused::TooLarge(limit));
    }
    // A body that trickles in is cut off: its connection is not held for as long as the
    // client likes (the headers have their own timeout in `run`).
    let read = tokio::time::timeout(
        state.config.body_read_timeout,
        read_body(body, limit, declared.unwrap_or(0) as usize, &serving.bodies),
    )
    .await;
    let (bytes, _held) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(refused)) => return refuse(refused),
        Err(_) => {
            return refuse(BodyRefused::Timeout(
                state.config.body_read_timeout.as_secs(),
            ))
        }
    };
    // `_held` (the body's share of the budget) is given back once the request is answered.
    routed
        .answer(state, &http::Request::from_parts(parts, bytes))
        .await
}

/// Why a body was not read.
enum BodyRefused {
    TooLarge(usize),
    OverBudget,
    Timeout(u64),
    Broken,
}

impl BodyRefused {
    /// An OperationOutcome, or an OAuth error at the token endpoint.
    fn into_response(self, token_route: bool) -> crate::http::Response {
        let e = match self {
            BodyRefused::TooLarge(limit) => ApiError::TooLarge(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {limit} bytes"),
            ),
            BodyRefused::OverBudget => ApiError::Unavailable(
                "request bodies in memory reached SERVE_BODY_BUDGET_BYTES".into(),
            ),
            BodyRefused::Timeout(seconds) => ApiError::Timeout(format!(
                "the request body was not received within {seconds} s"
            )),
            BodyRefused::Broken => {
                ApiError::BadRequest("the request body could not be read".into())
            }
        };
        if !token_route {
            return e.into_response();
        }
        // RFC 6749 5.2: the token endpoint answers in its own terms.
        let status = e.status();
        let (code, description) = match &e {
            ApiError::Unavailable(_) => ("temporarily_unavailable", e.to_string()),
            _ => ("invalid_request", e.to_string()),
        };
        tracing::warn!(status = status.as_u16(), error = %crate::error_chain(&e), "token request body refused");
        let mut resp = crate::http::json_response(
            status,
            "application/json",
            serde_json::json!({"error": code, "error_description": description}).to_string(),
        );
        let h = resp.headers_mut();
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        h.insert(
            http::header::PRAGMA,
            http::HeaderValue::from_static("no-cache"),
        );
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(5));
        }
        resp
    }
}

/// Reads `body` (at most `limit` bytes), taking its size from `budget` as it arrives (the
/// declared length up front, so that a body that cannot fit is refused before it is read).
/// The bytes, and the budget they hold until dropped.
async fn read_body(
    body: axum::body::Body,
    limit: usize,
    declared: usize,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyRefused> {
    use futures::StreamExt;
    let take = |n: usize, held: &mut Option<tokio::sync::OwnedSemaphorePermit>| {
        if n == 0 {
            return Ok(());
        }
        let more = budget
            .clone()
            .try_acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
            .map_err(|_| BodyRefused::OverBudget)?;
        match held {
            Some(p) => p.merge(more),
            None => *held = Some(more),
        }
        Ok(())
    };
    let mut held = None;
    take(declared.min(limit), &mut held)?;
    let mut reserved = declared.min(limit);
    let mut buf = bytes::BytesMut::with_capacity(reserved);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyRefused::Broken)?;
        let len = buf.len() + chunk.len();
        if len > limit {
            return Err(BodyRefused::TooLarge(limit));
        }
        if len > reserved {
            take(len - reserved, &mut held)?;
            reserved = len;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), held))
}

/// `GET /metrics`: the service metrics (crate::metrics) for Prometheus, in the OpenMetrics text
/// format. Counts only: no client, job or resource is named.
fn metrics() -> crate::http::Response {
    let mut resp = http::Response::new(Body::Full(Bytes::from(crate::metrics::render())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}

/// The path of the metrics on the main listener (`METRICS=on` without `METRICS_ADDR`): under
/// the FHIR base's path, like every other route.
fn metrics_path(config: &crate::Config) -> String {
    let base = config.public_base_url.as_deref().unwrap_or("");
    format!("{}/metrics", crate::http::base_path(base))
}

/// The listener of `METRICS_ADDR`: `GET /metrics` only, with the same size checks, header
/// deadline and access log as the main one.
async fn dispatch_metrics(req: axum::extract::Request) -> axum::response::Response {
    let started = Instant::now();
    let (parts, _body) = req.into_parts();
    let head = http::Request::from_parts(parts, Bytes::new());
    let resp = match crate::http::check_limits(&head) {
        Some(refused) => refused.into_response(),
        None if head.uri().path() != "/metrics" => crate::http::not_found_route(&head),
        None if head.method() != http::Method::GET => {
            let mut resp =
                ApiError::MethodNotAllowed(format!("/metrics supports GET, not {}", head.method()))
                    .into_response();
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
            resp
        }
        None => metrics(),
    };
    tracing::info!(
        target: "access",
        method = %head.method(),
        route = "/metrics",
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        client_id = "-",
        "request"
    );
    into_axum(resp).await
}

async fn into_axum(resp: crate::http::Response) -> axum::response::Response {
    let (parts, body) = resp.into_parts();
    let body = match body {
        Body::Full(b) => axum::body::Body::from(b),
        Body::File { path, gzip } => match crate::http::file_reader(&path, gzip).await {
            Ok(reader) => axum::body::Body::from_stream(
                tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024)
                    .map_err(axum::Error::new),
            ),
            Err(e) => {
                return Box::pin(into_axum(
                    crate::http::ApiError::Internal(Box::new(e)).into_response(),
                ))
                .await
            }
        },
    };
    axum::response::Response::from_parts(parts, body)
}

/// `serve`'s canonical FHIR base: PUBLIC_BASE_URL, or `http://<bind address>` (never the
/// request's Host). Returns a warning when the bind address cannot be a base (0.0.0.0, ::),
/// then `http://127.0.0.1:<port>` is used: set PUBLIC_BASE_URL to the URL clients use.
pub fn default_base_url(config: &mut crate::Config, addr: SocketAddr) -> Option<String> {
    if config.public_base_url.is_some() {
        return None;
    }
    if addr.ip().is_unspecified() {
        config.public_base_url = Some(format!("http://127.0.0.1:{}", addr.port()));
        return Some(format!(
            "listening on {addr} without PUBLIC_BASE_URL: URLs in responses use http://127.0.0.1:{}; \
             set PUBLIC_BASE_URL to the URL clients reach this server at",
            addr.port()
        ));
    }
    config.public_base_url = Some(format!("http://{addr}"));
    None
}

/// Binds the listener; returns it with its local address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// What `serve` runs: the routes' state and the exporters, woken in-process.
pub struct App {
    pub state: AppState,
    pub exporters: Vec<Exporter>,
    pub wake: LocalQueue,
}

/// The one place `serve` is put together (`bulk-export serve` and the tests' server): the
/// state of every route (the api function's, [`crate::app::assemble`]) over `pool` and `store`
/// with an in-process wake-up queue, and `workers` exporters over the same clients, named after
/// this host and `addr`'s port and their number, so that a restarted serve resumes its own
/// work at once.
pub fn assemble(
    config: Arc<Config>,
    pool: Pool,
    store: Arc<dyn ObjectStore>,
    workers: usize,
    addr: SocketAddr,
) -> App {
    let wake = LocalQueue::default();
    let queue: Arc<dyn JobQueue> = Arc::new(wake.clone());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let exporters = (1..=workers)
        .map(|n| {
            Exporter::new(pool.clone(), store.clone(), queue.clone(), config.clone())
                .with_owner(format!("serve@{host}:{}#{n}", addr.port()))
        })
        .collect();
    let state = crate::app::assemble(Function::Api, config, pool, store, queue);
    App {
        state,
        exporters,
        wake,
    }
}

/// How many exporters `serve` runs: `--workers`, or the number of cores.
pub fn worker_count(workers: Option<usize>) -> usize {
    workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 64)
}

/// Serves HTTP on `listener` and runs the exporter loops (one per worker; they share the work
/// items of every export) until ctrl-c.
///
/// HTTP/1.1 connections, each with a deadline for its request headers (`SERVE_HEADER_TIMEOUT_
/// SECONDS`; the body has `SERVE_BODY_TIMEOUT_SECONDS` in `dispatch`), at most
/// `SERVE_MAX_CONNECTIONS` open at once and `SERVE_MAX_CONNECTIONS_PER_PEER` from one peer (see
/// [`Connections`]). Slow or idle clients cannot hold the server, nor can one peer lock others out.
pub async fn run(listener: TcpListener, app: App) -> std::io::Result<()> {
    let App {
        state,
        exporters,
        wake,
    } = app;
    let config = state.config.clone();
    let exporter_tasks: Vec<_> = exporters
        .into_iter()
        .map(|e| tokio::spawn(exporter_loop(e, wake.clone(), config.repeat_period)))
        .collect();
    // METRICS_ADDR: the metrics on a listener of their own (a few connections suffice).
    let metrics_task = match config.metrics {
        MetricsEndpoint::Addr(addr) => {
            let (listener, local) = bind(addr).await?;
            tracing::info!(%local, "metrics listener");
            let app = axum::Router::new().fallback(dispatch_metrics);
            let connections = Arc::new(Connections::new(16, 16));
            let header_timeout = config.header_read_timeout;
            Some(tokio::spawn(async move {
                let graceful = hyper_util::server::graceful::GracefulShutdown::new();
                accept_loop(
                    &listener,
                    app,
                    &connections,
                    header_timeout,
                    &graceful,
                    std::future::pending(),
                )
                .await
            }))
        }
        _ => None,
    };
    let app = axum::Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(Serving {
            app: state,
            bodies: Arc::new(tokio::sync::Semaphore::new(config.body_budget_bytes)),
        }));
    let connections = Arc::new(Connections::new(
        config.max_connections,
        config.max_connections_per_peer,
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    accept_loop(
        &listener,
        app,
        &connections,
        config.header_read_timeout,
        &graceful,
        shutdown_signal(),
    )
    .await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    for task in exporter_tasks {
        task.abort();
    }
    // Requests in flight finish (at most 30 s); idle connections close now.
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
    Ok(())
}

/// Accepts connections on `listener` and serves `app` on them (see [`Connections`]) until
/// `shutdown`.
async fn accept_loop(
    listener: &TcpListener,
    app: axum::Router,
    connections: &Arc<Connections>,
    header_timeout: Duration,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let guard = match connections.admit(peer.ip()) {
            Admission::Admitted(guard) => guard,
            Admission::PeerFull => {
                tracing::debug!(%peer, limit = connections.per_peer, "connection refused: too many open connections from this peer");
                drop(stream);
                continue;
            }
            Admission::Full => {
                tracing::warn!(%peer, limit = connections.max, "connection refused: too many open connections, all of them answering requests");
                drop(stream);
                continue;
            }
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let busy = guard.busy.clone();
        let service = hyper::service::service_fn(move |req| {
            // Busy from the request's headers to the end of its response body (a download).
            let busy = Busy::enter(busy.clone());
            let answer = hyper::service::Service::call(&svc, req);
            async move {
                let resp = answer.await?;
                Ok::<_, std::convert::Infallible>(resp.map(|inner| BusyBody { inner, _busy: busy }))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended");
                },
                // Shed for a newer connection while it sent no request (closed at once).
                _ = guard.shed.notified() => {
                    tracing::debug!(%peer, "idle connection shed for a new one");
                }
            }
            drop(guard);
        });
    }
}

/// The open connections of `serve`: at most `max` in all and `per_peer` from one peer (an IPv4
/// address, or an IPv6 /64: one host's share). A peer at its share gets its new connections
/// closed at once; when all `max` are open, a new connection from another peer is taken in
/// place of an idle one (one that is not answering a request: still sending its headers, or
/// kept alive between requests), from the peer with the most connections, its oldest first.
/// Only when every connection is answering a request is a new one refused. So one peer holding
/// half-sent requests cannot lock the others out, and neither can a few.
pub struct Connections {
    max: usize,
    per_peer: usize,
    table: std::sync::Mutex<ConnectionTable>,
}

#[derive(Default)]
struct ConnectionTable {
    next_id: u64,
    open: HashMap<u64, Open>,
    per_peer: HashMap<IpAddr, usize>,
}

struct Open {
    peer: IpAddr,
    opened: Instant,
    busy: Arc<AtomicUsize>,
    shed: Arc<tokio::sync::Notify>,
}

/// What [`Connections::admit`] decided.
pub enum Admission {
    Admitted(ConnectionGuard),
    /// The peer has its share open.
    PeerFull,
    /// Every connection is answering a request.
    Full,
}

/// An admitted connection: its slot is freed on drop.
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    id: u64,
    /// Requests this connection is answering now.
    pub busy: Arc<AtomicUsize>,
    /// Notified when the connection is shed for a newer one.
    pub shed: Arc<tokio::sync::Notify>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut table = self.connections.lock();
        table.remove(self.id);
    }
}

impl ConnectionTable {
    fn remove(&mut self, id: u64) -> Option<Open> {
        let open = self.open.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&open.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&open.peer);
            }
        }
        Some(open)
    }
}

/// The peer a connection counts against: its IPv4 address, or its IPv6 address's /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Connections {
    pub fn new(max: usize, per_peer: usize) -> Connections {
        Connections {
            max: max.max(1),
            per_peer: per_peer.clamp(1, max.max(1)),
            table: std::sync::Mutex::new(ConnectionTable::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Takes in a connection from `peer`, shedding an idle one when all are open.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        let peer = peer_key(peer);
        let mut table = self.lock();
        if table.per_peer.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            return Admission::PeerFull;
        }
        if table.open.len() >= self.max {
            let victim = table
                .open
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
                .max_by_key(|(_, c)| {
                    (
                        table.per_peer.get(&c.peer).copied().unwrap_or(0),
                        std::cmp::Reverse(c.opened),
                    )
                })
                .map(|(id, _)| *id);
            match victim.and_then(|id| table.remove(id)) {
                Some(shed) => shed.shed.notify_one(),
                None => return Admission::Full,
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let shed = Arc::new(tokio::sync::Notify::new());
        table.open.insert(
            id,
            Open {
                peer,
                opened: Instant::now(),
                busy: busy.clone(),
                shed: shed.clone(),
            },
        );
        *table.per_peer.entry(peer).or_insert(0) += 1;
        Admission::Admitted(ConnectionGuard {
            connections: self.clone(),
            id,
            busy,
            shed,
        })
    }
}

/// A request being answered on a connection (see [`Connections`]): counted while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(count)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its connection busy until it is sent (or dropped).
struct BusyBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Ctrl-C or SIGTERM (containers, systemd).
async fn shutdown_signal() {
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

pub async fn exporter_loop(exporter: Exporter, wake: LocalQueue, repeat_period: Duration) {
    loop {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        // A job whose attempt failed is retried after the backoff, not a whole RepeatPeriod.
        let pause = match exporter.run_until_idle(None, far).await {
            Ok(summary) if !summary.retrying.is_empty() || !summary.handed_off.is_empty() => {
                exporter.retry_backoff.min(repeat_period)
            }
            Ok(_) => repeat_period,
            Err(e) => {
                tracing::error!(error = %e, "exporter run failed; retrying after the backoff");
                exporter.retry_backoff.min(repeat_period)
            }
        };
        tokio::select! {
            _ = wake.notify.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
