//! Migrate Lambda: the CloudFormation custom resource that applies the database migrations during
//! a deploy, before the other functions of the new version are updated (they depend on it, and
//! refuse a database with pending migrations at cold start).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            shared::migrate_resource::handle(event.payload).await
        },
    ))
    .await
}
