//! Exporter Lambda: woken by SQS (partial batch failures) and by an EventBridge schedule.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    let exporter = shared::http::AppState::for_exporter().await?.exporter();
    shared::lambda::run_exporter(exporter).await
}
