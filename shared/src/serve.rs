//! `bulk-export serve`: every route in one process (same handlers as the Lambdas) plus an
//! exporter loop woken by new jobs and every RepeatPeriod.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::net::TcpListener;

use crate::export::engine::Exporter;
use crate::http::{router, AppState, Body};
use crate::queue::LocalQueue;

use crate::http::MAX_BODY_BYTES;

async fn dispatch(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return into_axum(
                crate::http::ApiError::TooLarge(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {MAX_BODY_BYTES} bytes"),
                )
                .into_response(),
            )
            .await
        }
    };
    let req = http::Request::from_parts(parts, bytes);
    let resp = match crate::http::check_limits(&req) {
        None => router::handle(&state, req).await,
        Some(refused) => refused.into_response(),
    };
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

/// Serves HTTP on `listener` and runs the exporter loop until ctrl-c.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    exporter: Exporter,
    wake: LocalQueue,
    repeat_period: Duration,
) -> std::io::Result<()> {
    let exporter_task = tokio::spawn(exporter_loop(exporter, wake, repeat_period));
    let app = axum::Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(state));
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    exporter_task.abort();
    result
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
