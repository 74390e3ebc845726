//! Lambda adapters: lambda_http requests into the shared handlers, and SQS / EventBridge events
//! into the exporter engine.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use bytes::Bytes;
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tracing::{info_span, warn, Instrument};

use crate::app::{AppState, Function};
use crate::export::engine::Exporter;
use crate::http::{Body, Request, Response};
use crate::queue::WakeMessage;

/// Runs `function`'s routes under lambda_http. A request on a route that is not the function's
/// (a function URL, `cargo lambda watch`) is answered 404 from the route table, as `serve` would,
/// without reaching a handler.
pub async fn run_http(function: Function, state: AppState) -> Result<(), lambda_http::Error> {
    let state = Arc::new(state);
    lambda_http::run(lambda_http::service_fn(move |req: lambda_http::Request| {
        let state = state.clone();
        async move {
            let req = from_lambda_request(req);
            let resp = match crate::http::check_limits(&req) {
                None => crate::http::router::handle_as(function, &state, req).await,
                Some(refused) => refused.into_response(),
            };
            to_lambda_response(resp).await
        }
    }))
    .await
}

/// A lambda_http request (API Gateway, ALB, Function URL) as the handlers' request type.
pub fn from_lambda_request(req: lambda_http::Request) -> Request {
    let (parts, body) = req.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Bytes::new(),
        lambda_http::Body::Text(t) => Bytes::from(t),
        lambda_http::Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    http::Request::from_parts(parts, bytes)
}

/// The handlers' response as a lambda_http response.
pub async fn to_lambda_response(
    resp: Response,
) -> Result<lambda_http::Response<lambda_http::Body>, lambda_http::Error> {
    let (parts, body) = resp.into_parts();
    let body = match body {
        Body::Full(b) if b.is_empty() => lambda_http::Body::Empty,
        Body::Full(b) => match String::from_utf8(b.to_vec()) {
            Ok(s) => lambda_http::Body::Text(s),
            Err(e) => lambda_http::Body::Binary(e.into_bytes()),
        },
        // Local storage inside Lambda is only for `sam local`; the payload limit applies.
        Body::File { path, gzip } => {
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(
                &mut crate::http::file_reader(&path, gzip).await?,
                &mut bytes,
            )
            .await?;
            lambda_http::Body::Binary(bytes)
        }
    };
    Ok(lambda_http::Response::from_parts(parts, body))
}

/// Time kept in reserve before the Lambda deadline: at most this, and at most a fifth of the
/// invocation's time, so a short timeout still gets work done.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(60);

/// When the exporter must stop reading new pages in this invocation.
fn deadline_of(ctx: &lambda_runtime::Context) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Instant::now() + work_time(ctx.deadline, now_ms)
}

/// The time to work given the runtime's deadline (ms since the epoch). Emulators such as
/// `cargo lambda watch` send the timeout itself (e.g. 600000); values before 2001 are read so.
fn work_time(deadline_ms: u64, now_ms: u64) -> Duration {
    const EPOCH_2001_MS: u64 = 978_307_200_000;
    let remaining = if deadline_ms < EPOCH_2001_MS {
        Duration::from_millis(deadline_ms)
    } else {
        Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    };
    remaining - DEADLINE_MARGIN.min(remaining / 5)
}

/// Handles one exporter invocation: an SQS batch (partial batch failures reported per message)
/// or a scheduled event (EventBridge). Both run the engine until no job is claimable.
pub async fn handle_exporter_event(
    exporter: &Exporter,
    event: LambdaEvent<Value>,
) -> Result<Value, lambda_runtime::Error> {
    let deadline = deadline_of(&event.context);
    tracing::info!(
        seconds_to_work = deadline.saturating_duration_since(Instant::now()).as_secs(),
        "exporter invocation"
    );
    if event.payload.get("Records").is_some() {
        let sqs: SqsEvent = serde_json::from_value(event.payload)?;
        let mut response = SqsBatchResponse::default();
        for record in sqs.records {
            let message_id = record.message_id.clone().unwrap_or_default();
            let prefer = record
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<WakeMessage>(b).ok())
                .map(|m| m.job_id);
            if prefer.is_none() {
                // A malformed message is not retried: the job table is the source of truth.
                warn!(message_id = %message_id, "ignoring SQS message without a job_id");
            }
            let span = info_span!("sqs_message", message_id = %message_id);
            if let Err(e) = exporter
                .run_until_idle(prefer, deadline)
                .instrument(span)
                .await
            {
                warn!(message_id = %message_id, error = %e, "export run failed; message will be retried");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                response.batch_item_failures.push(failure);
            }
        }
        Ok(serde_json::to_value(response)?)
    } else {
        let summary = exporter.run_until_idle(None, deadline).await?;
        Ok(serde_json::json!({
            "completed": summary.completed.len(),
            "failed": summary.failed.len(),
            "cancelled": summary.cancelled.len(),
            "handedOff": summary.handed_off.len(),
            "purged": summary.purged,
        }))
    }
}

/// Runs the exporter under lambda_runtime.
pub async fn run_exporter(exporter: Exporter) -> Result<(), lambda_runtime::Error> {
    let exporter = Arc::new(exporter);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<Value>| {
            let exporter = exporter.clone();
            async move { handle_exporter_event(&exporter, event).await }
        },
    ))
    .await
}

/// The whole of every function binary's `main`: a Tokio runtime, telemetry, the function's state
/// from the composition root, and its Lambda loop. A plain function that starts the runtime
/// itself, so the code of the handlers, lambda_http and lambda_runtime is generated once, in this
/// crate, instead of again in each of the six binaries (a release `sam build` spent about 75 s of
/// code generation per function before).
pub fn main(function: Function) -> Result<(), lambda_runtime::Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_function(function))
}

/// The `main` of the one binary every function of template.yaml runs (`sam build` compiles and
/// links it once): the function named by its Handler, which Lambda passes as `_HANDLER`.
pub fn main_from_handler() -> Result<(), lambda_runtime::Error> {
    let handler = std::env::var("_HANDLER").unwrap_or_default();
    let function = Function::from_name(&handler).ok_or_else(|| {
        format!(
            "_HANDLER is {handler:?}: set the function's Handler to one of {}",
            Function::ALL.map(Function::name).join(", ")
        )
    })?;
    main(function)
}

/// [`main`] within a runtime.
pub async fn run_function(function: Function) -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init(crate::config::LogFormat::from_env());
    match function {
        Function::Exporter => {
            let exporter = crate::app::state_for(function).await?.exporter();
            run_exporter(exporter).await
        }
        Function::Migrate => {
            lambda_runtime::run(lambda_runtime::service_fn(
                |event: LambdaEvent<Value>| async move {
                    crate::migrate_resource::handle(event.payload).await
                },
            ))
            .await
        }
        Function::Kickoff | Function::Status | Function::File | Function::Token | Function::Api => {
            run_http(function, crate::app::state_for(function).await?).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_time_keeps_a_margin_before_the_lambda_deadline() {
        let now = 1_795_000_000_000;
        // 15 minutes left: stop 60 s early.
        assert_eq!(work_time(now + 900_000, now), Duration::from_secs(840));
        // 30 s left: keep a fifth in reserve, not 60 s.
        assert_eq!(work_time(now + 30_000, now), Duration::from_secs(24));
        // Past the deadline: nothing.
        assert_eq!(work_time(now - 1, now), Duration::ZERO);
        // An emulator's relative timeout (cargo lambda watch sends 600000).
        assert_eq!(work_time(600_000, now), Duration::from_secs(540));
    }
}
