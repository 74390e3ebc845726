//! Service metrics, recorded where things happen: exports started, completed and failed,
//! resources and bytes exported, job duration and queue latency. Kept in-process for `serve`'s
//! `GET /metrics` (Prometheus/OpenMetrics text), and in Lambda also written to stdout in the
//! CloudWatch embedded metric format, which CloudWatch Logs turns into metrics (namespace
//! `FhirBulkExport`, dimension `Service`) without an API call; template.yaml's alarms read them.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The CloudWatch namespace of the embedded metrics.
pub const NAMESPACE: &str = "FhirBulkExport";
/// The value of their `Service` dimension.
pub const SERVICE: &str = "fhir-bulk-export";

struct Metrics {
    registry: Registry,
    started: Family<Vec<(String, String)>, Counter>,
    completed: Counter,
    failed: Counter,
    resources: Counter,
    bytes: Counter,
    duration: Histogram,
    queue_latency: Histogram,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("bulk");
        let started = Family::<Vec<(String, String)>, Counter>::default();
        let (completed, failed, resources, bytes) = (
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
        );
        // 1 s … about 4.5 h.
        let duration = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        // 10 ms … about 5.5 min.
        let queue_latency = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "exports_started",
            "Exports kicked off, by level",
            started.clone(),
        );
        registry.register("exports_completed", "Exports completed", completed.clone());
        registry.register("exports_failed", "Exports failed", failed.clone());
        registry.register(
            "resources_exported",
            "Resources written to output files",
            resources.clone(),
        );
        registry.register(
            "bytes_exported",
            "Bytes written to output files",
            bytes.clone(),
        );
        registry.register(
            "export_duration_seconds",
            "Kick-off to completion of completed exports",
            duration.clone(),
        );
        registry.register(
            "export_queue_latency_seconds",
            "Kick-off to the start of planning (an exporter took the job)",
            queue_latency.clone(),
        );
        Metrics {
            registry,
            started,
            completed,
            failed,
            resources,
            bytes,
            duration,
            queue_latency,
        }
    })
}

/// Whether this process is a Lambda function (then metrics also go out as EMF lines).
fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

/// One EMF document: `values` as metrics of the given units, with the Service dimension.
pub fn emf_line(values: &[(&str, f64, &str)]) -> String {
    let timestamp = chrono::Utc::now().timestamp_millis();
    let definitions: Vec<serde_json::Value> = values
        .iter()
        .map(|(name, _, unit)| serde_json::json!({"Name": name, "Unit": unit}))
        .collect();
    let mut doc = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Service"]],
                "Metrics": definitions,
            }]
        },
        "Service": SERVICE,
    });
    for (name, value, _) in values {
        doc[*name] = serde_json::json!(value);
    }
    doc.to_string()
}

fn emit(values: &[(&str, f64, &str)]) {
    if in_lambda() {
        // stdout, one line: the Lambda log agent ships it to CloudWatch Logs as it is.
        println!("{}", emf_line(values));
    }
}

pub fn export_started(level: &str) {
    metrics()
        .started
        .get_or_create(&vec![("level".to_string(), level.to_string())])
        .inc();
    emit(&[("ExportsStarted", 1.0, "Count")]);
}

pub fn export_completed(duration: Duration) {
    let m = metrics();
    m.completed.inc();
    m.duration.observe(duration.as_secs_f64());
    emit(&[
        ("ExportsCompleted", 1.0, "Count"),
        ("ExportDuration", duration.as_secs_f64(), "Seconds"),
    ]);
}

pub fn export_failed() {
    metrics().failed.inc();
    emit(&[("ExportsFailed", 1.0, "Count")]);
}

/// A file of output written (resources and bytes of it).
pub fn file_written(resources: u64, bytes: u64) {
    let m = metrics();
    m.resources.inc_by(resources);
    m.bytes.inc_by(bytes);
    emit(&[
        ("ResourcesExported", resources as f64, "Count"),
        ("BytesExported", bytes as f64, "Bytes"),
    ]);
}

/// An exporter took a queued job (kick-off to planning).
pub fn job_picked_up(latency: Duration) {
    metrics().queue_latency.observe(latency.as_secs_f64());
    emit(&[("QueueLatency", latency.as_secs_f64(), "Seconds")]);
}

/// Every metric in the Prometheus/OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stack's ExportsFailed alarm reads the metric these functions write.
    #[test]
    fn the_stack_alarms_on_the_metric_the_code_writes() {
        let template = include_str!("../../template.yaml");
        let alarm = &template[template.find("ExportsFailedAlarm:").unwrap()..];
        let alarm = &alarm[..alarm.find("AlarmActions").unwrap()];
        assert!(alarm.contains(&format!("Namespace: {NAMESPACE}\n")));
        assert!(alarm.contains("MetricName: ExportsFailed\n"));
        assert!(alarm.contains(&format!("Value: {SERVICE}\n")));
    }

    #[test]
    fn emf_documents_name_their_metrics_and_dimension() {
        let line = emf_line(&[
            ("ExportsCompleted", 1.0, "Count"),
            ("ExportDuration", 2.5, "Seconds"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], NAMESPACE);
        assert_eq!(cw["Dimensions"], serde_json::json!([["Service"]]));
        assert_eq!(
            cw["Metrics"][1],
            serde_json::json!({"Name": "ExportDuration", "Unit": "Seconds"})
        );
        assert_eq!(v["Service"], SERVICE);
        assert_eq!(v["ExportsCompleted"], 1.0);
        assert_eq!(v["ExportDuration"], 2.5);
        assert!(v["_aws"]["Timestamp"].as_i64().unwrap() > 1_700_000_000_000);
        assert!(!line.contains('\n'));
    }
}
