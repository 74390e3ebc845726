//! Exporter Lambda: woken by SQS (partial batch failures) and by an EventBridge schedule.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    let exporter = shared::app::state_for(shared::app::Function::Exporter)
        .await?
        .exporter();
    shared::lambda::run_exporter(exporter).await
}
