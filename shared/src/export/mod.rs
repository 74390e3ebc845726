//! The export domain: kick-off parameters, job states, manifest, and the exporter engine.

pub mod engine;
pub mod job;
pub mod manifest;
pub mod params;
pub mod transform;

pub use job::{ExportLevel, Job, JobStatus};
pub use params::ExportParams;
