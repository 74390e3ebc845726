//! FHIR Bulk Data `$export`: everything that is not a Lambda entry point.
//!
//! - [`fhir`]: R4 Patient compartment, references, OperationOutcome, instants.
//! - [`export`]: kick-off parameters, job states, manifest and the exporter engine.
//! - [`db`]: Postgres pool, migrations and one module per table.
//! - [`storage`] and [`queue`]: ports with S3/SQS and local adapters.
//! - [`auth`]: SMART Backend Services tokens, scopes and client keys.
//! - [`http`]: handlers over `http::Request`, shared by the Lambdas and `bulk-export serve`.

pub mod app;
pub mod auth;
pub mod aws;
pub mod config;
pub mod db;
pub mod export;
pub mod fhir;
pub mod http;
pub mod lambda;
pub mod load;
pub mod metrics;
pub mod migrate_resource;
pub mod queue;
pub mod serve;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod views;

pub use config::Config;

/// An error with its sources, `a: b: c` (tokio-postgres and the AWS SDK keep the useful message in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
