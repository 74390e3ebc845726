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

/// AWS Lambda's limit on what a synchronous invocation returns: the JSON the runtime sends,
/// status, headers and (base64 or JSON-escaped) body together.
pub const RESPONSE_LIMIT: usize = 6 * 1024 * 1024;
/// Room kept within [`RESPONSE_LIMIT`] for the status, the headers and the JSON around the body.
const RESPONSE_FRAMING: usize = 64 * 1024;

/// The handlers' response as a lambda_http response. An answer Lambda would refuse to return
/// (over [`RESPONSE_LIMIT`]: a very large manifest, a local-storage file) is never attempted:
/// the client gets a 500 OperationOutcome that says so instead of API Gateway's bare 502, and a
/// file is read no further than the limit.
pub async fn to_lambda_response(
    resp: Response,
) -> Result<lambda_http::Response<lambda_http::Body>, lambda_http::Error> {
    let (parts, body) = resp.into_parts();
    let budget = RESPONSE_LIMIT - RESPONSE_FRAMING;
    let body = match body {
        Body::Full(b) if b.is_empty() => lambda_http::Body::Empty,
        Body::Full(b) => match String::from_utf8(b.to_vec()) {
            Ok(s) if json_escaped_len(&s) <= budget => lambda_http::Body::Text(s),
            Ok(s) => return over_limit(format!("this answer ({} bytes)", s.len())),
            Err(e) if base64_len(e.as_bytes().len()) <= budget => {
                lambda_http::Body::Binary(e.into_bytes())
            }
            Err(e) => return over_limit(format!("this answer ({} bytes)", e.as_bytes().len())),
        },
        // Local storage inside Lambda is only for `sam local`; files go out base64-encoded.
        Body::File { path, gzip } => {
            let cap = budget / 4 * 3;
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(
                &mut tokio::io::AsyncReadExt::take(
                    crate::http::file_reader(&path, gzip).await?,
                    cap as u64 + 1,
                ),
                &mut bytes,
            )
            .await?;
            if bytes.len() > cap {
                return over_limit(
                    "this file (served from local storage)".to_string()
                        + "; with S3 storage (STORAGE_PATH=s3://…) downloads are presigned URLs",
                );
            }
            lambda_http::Body::Binary(bytes)
        }
    };
    Ok(lambda_http::Response::from_parts(parts, body))
}

fn over_limit(
    what: String,
) -> Result<lambda_http::Response<lambda_http::Body>, lambda_http::Error> {
    let error = crate::http::ApiError::OverLambdaLimit(format!(
        "{what} is larger than AWS Lambda can return (6 MB); `bulk-export serve` has no such limit"
    ));
    let (parts, body) = error.into_response().into_parts();
    let Body::Full(b) = body else {
        unreachable!("an OperationOutcome is a full body")
    };
    Ok(lambda_http::Response::from_parts(
        parts,
        lambda_http::Body::Text(String::from_utf8_lossy(&b).into_owned()),
    ))
}

/// The length of `s` as a JSON string (quotes and escapes included).
fn json_escaped_len(s: &str) -> usize {
    // Escaping at most multiplies by 6 (`\u00XX`): only a body that could pass the limit
    // escaped is measured exactly.
    if s.len() * 6 + 2 <= RESPONSE_LIMIT - RESPONSE_FRAMING {
        return s.len();
    }
    serde_json::to_string(s)
        .map(|j| j.len())
        .unwrap_or(usize::MAX)
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
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
/// crate, instead of again in each of the six binaries.
pub fn main(function: Function) -> Result<(), lambda_runtime::Error> {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_function(function));
    if let Err(e) = result {
        exit_with(&format!("{}: {}", function.name(), crate::error_chain(&*e)));
    }
    Ok(())
}

/// Ends a cold start that cannot work with its reason in words (the emulator's and CloudWatch's
/// log show it beside `Init failed`), not as a Debug dump of the error.
fn exit_with(reason: &str) -> ! {
    tracing::error!(error = %reason, "the function cannot start");
    eprintln!("error: {reason}");
    std::process::exit(1)
}

/// The `main` of the one binary every function of template.yaml runs (`sam build` compiles and
/// links it once): the function named by its Handler, which Lambda passes as `_HANDLER`.
pub fn main_from_handler() -> Result<(), lambda_runtime::Error> {
    let handler = std::env::var("_HANDLER").unwrap_or_default();
    match Function::from_name(&handler) {
        Some(function) => main(function),
        None => exit_with(&format!(
            "_HANDLER is {handler:?}: set the function's Handler to one of {}",
            Function::ALL.map(Function::name).join(", ")
        )),
    }
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

    fn body_len(resp: &lambda_http::Response<lambda_http::Body>) -> usize {
        match resp.body() {
            lambda_http::Body::Text(t) => t.len(),
            lambda_http::Body::Binary(b) => b.len(),
            _ => 0,
        }
    }

    #[tokio::test]
    async fn an_answer_over_lambdas_limit_is_an_operation_outcome_not_an_attempt() {
        // A manifest of ~7 MB of JSON: refused with a 500 OperationOutcome that says why.
        let big = format!("{{\"output\":\"{}\"}}", "x".repeat(7 * 1024 * 1024));
        let resp = crate::http::json_response(http::StatusCode::OK, "application/json", big);
        let out = to_lambda_response(resp).await.expect("response");
        assert_eq!(out.status(), 500);
        let lambda_http::Body::Text(text) = out.body() else {
            panic!("text")
        };
        assert!(text.contains("too-costly"), "{text}");
        assert!(text.contains("larger than AWS Lambda can return"), "{text}");
        // Quotes double when escaped: 3.5 MB of them is over the limit as JSON, and refused.
        let quotes = "\"".repeat(3_500_000);
        let resp = crate::http::json_response(http::StatusCode::OK, "application/json", quotes);
        assert_eq!(
            to_lambda_response(resp).await.expect("response").status(),
            500
        );
        // Just under: returned whole.
        let fits = "y".repeat(RESPONSE_LIMIT - RESPONSE_FRAMING - 2);
        let resp = crate::http::json_response(http::StatusCode::OK, "application/json", fits);
        let out = to_lambda_response(resp).await.expect("response");
        assert_eq!(out.status(), 200);
        assert_eq!(body_len(&out), RESPONSE_LIMIT - RESPONSE_FRAMING - 2);
    }

    #[tokio::test]
    async fn a_local_file_over_lambdas_limit_is_refused_without_reading_it_whole() {
        let dir = std::env::temp_dir().join(format!("lambda-limit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let small = dir.join("small.ndjson");
        std::fs::write(&small, "{}\n".repeat(1000)).expect("write");
        let large = dir.join("large.ndjson");
        std::fs::write(&large, vec![b'a'; 5 * 1024 * 1024]).expect("write");
        let file = |path: &std::path::Path| {
            let mut r = http::Response::new(Body::File {
                path: path.to_path_buf(),
                gzip: false,
            });
            *r.status_mut() = http::StatusCode::OK;
            r
        };
        let out = to_lambda_response(file(&small)).await.expect("response");
        assert_eq!(out.status(), 200);
        assert_eq!(body_len(&out), 3000);
        // 5 MiB is 6.7 MiB base64-encoded: over the limit.
        let out = to_lambda_response(file(&large)).await.expect("response");
        assert_eq!(out.status(), 500);
        let lambda_http::Body::Text(text) = out.body() else {
            panic!("text")
        };
        assert!(text.contains("STORAGE_PATH=s3://"), "{text}");
        std::fs::remove_dir_all(dir).ok();
    }

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
