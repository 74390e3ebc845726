//! Migrations as a deploy step: the handler of the `Custom::DatabaseMigrations` resource of
//! template.yaml (the `migrate` function). CloudFormation sends Create, Update (a new
//! `SchemaVersion`, i.e. a version with new migrations) and Delete requests; Create and Update
//! apply the pending migrations (`bulk-export migrate`, with the database credentials from
//! DATABASE_SECRET), Delete does nothing (the data outlives the stack). The outcome is PUT to
//! the request's presigned `ResponseURL`, as the custom resource protocol requires: a failed
//! migration fails the deploy, which CloudFormation then rolls back.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Config;

/// A custom resource request (the members this handler reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CustomResourceRequest {
    pub request_type: String,
    #[serde(rename = "ResponseURL")]
    pub response_url: String,
    pub stack_id: String,
    pub request_id: String,
    pub logical_resource_id: String,
    #[serde(default)]
    pub physical_resource_id: Option<String>,
}

/// The physical id of the migrations resource: one per database, whatever the version.
const PHYSICAL_ID: &str = "database-migrations";

/// Handles one request with the configuration of the environment and reports its outcome to
/// CloudFormation. Returns the response sent.
pub async fn handle(event: Value) -> Result<Value, lambda_runtime::Error> {
    handle_with(event, Config::from_env()).await
}

/// Why the migrations could not be applied (the reason CloudFormation shows: never a secret).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// [`handle`] with a configuration at hand (or the reason there is none, reported as FAILED).
pub async fn handle_with(
    event: Value,
    config: Result<Config, crate::config::ConfigError>,
) -> Result<Value, lambda_runtime::Error> {
    let request: CustomResourceRequest = serde_json::from_value(event)?;
    let outcome = match (request.request_type.as_str(), config) {
        ("Create" | "Update", Ok(config)) => migrate(config).await,
        ("Create" | "Update", Err(e)) => Err(e.into()),
        // Deleting the stack keeps the database and its schema.
        _ => Ok(Vec::new()),
    };
    let response = response_body(&request, outcome);
    send_response(&request.response_url, &response).await?;
    Ok(response)
}

/// Applies pending migrations to DATABASE_URL (credentials from DATABASE_SECRET when set).
async fn migrate(mut config: Config) -> Result<Vec<&'static str>, MigrateError> {
    crate::db::credentials::resolve(&mut config, None).await?;
    let pool = crate::db::pool(&config.database_url, 1)?;
    let applied = crate::db::migrate(&pool).await?;
    tracing::info!(applied = ?applied, "migrations applied");
    Ok(applied)
}

/// The body CloudFormation expects, for an outcome.
pub fn response_body(
    request: &CustomResourceRequest,
    outcome: Result<Vec<&'static str>, MigrateError>,
) -> Value {
    let physical = request
        .physical_resource_id
        .clone()
        .unwrap_or_else(|| PHYSICAL_ID.to_string());
    let (status, reason, data) = match outcome {
        Ok(applied) => (
            "SUCCESS",
            format!("{} migration(s) applied", applied.len()),
            json!({ "Applied": applied.join(",") }),
        ),
        Err(e) => {
            let chain = crate::error_chain(&e);
            tracing::error!(error = %chain, "migrations failed");
            // CloudFormation shows the reason; it holds no secret (credentials are never in it).
            ("FAILED", format!("migrations failed: {chain}"), json!({}))
        }
    };
    json!({
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical,
        "StackId": request.stack_id,
        "RequestId": request.request_id,
        "LogicalResourceId": request.logical_resource_id,
        "Data": data,
    })
}

/// PUTs the response to the presigned URL (S3 in AWS): no content type, as the URL was signed
/// without one.
async fn send_response(url: &str, body: &Value) -> Result<(), lambda_runtime::Error> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let resp = client
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, "")
        .body(serde_json::to_vec(body)?)
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(format!("CloudFormation response URL answered {}", resp.status()).into());
    }
    Ok(())
}
