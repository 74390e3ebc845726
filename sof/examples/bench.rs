//! Rough throughput of view evaluation on NDJSON resources (JSON parsing measured apart, into
//! `sof::Json` as the exporter reads resources and into `serde_json::Value` for comparison).
//!
//!     cargo run --release -p sof --example bench -- Observation.000.ndjson [repeats]
//!
//! Uses the flat view of `bench-export --view` for Observation and one with `forEach` for Patient (by the file's
//! resource type); other types get a two-column view.

use std::time::Instant;

use serde_json::{json, Value};
use sof::{Json, View};

fn view_for(resource_type: &str) -> Value {
    match resource_type {
        // The ten columns of `bench-export --view`.
        "Observation" => json!({
            "resource": "Observation",
            "select": [{"column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "status", "path": "status"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                {"name": "encounter", "path": "encounter.getReferenceKey(Encounter)"},
                {"name": "effective", "path": "effective.ofType(dateTime)"},
                {"name": "issued", "path": "issued"},
                {"name": "code", "path": "code.coding.first().code"},
                {"name": "system", "path": "code.coding.first().system"},
                {"name": "value", "path": "value.ofType(Quantity).value"},
                {"name": "unit", "path": "value.ofType(Quantity).unit"}
            ]}]
        }),
        "Patient" => json!({
            "resource": "Patient",
            "select": [
                {"column": [
                    {"name": "id", "path": "getResourceKey()"},
                    {"name": "gender", "path": "gender"},
                    {"name": "birth_date", "path": "birthDate"},
                    {"name": "deceased", "path": "deceased.exists()"}
                ]},
                {"forEachOrNull": "name.where(use = 'official')", "column": [
                    {"name": "family", "path": "family"},
                    {"name": "given", "path": "given.join(' ')"}
                ]},
                {"forEachOrNull": "address", "column": [
                    {"name": "city", "path": "city"},
                    {"name": "postal_code", "path": "postalCode"}
                ]}
            ]
        }),
        other => json!({
            "resource": other,
            "select": [{"column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "last_updated", "path": "meta.lastUpdated"}
            ]}]
        }),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: bench FILE.ndjson [repeats]")?;
    let repeats: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let text = std::fs::read_to_string(&path)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // For comparison: the same resources read into serde_json::Value.
    let t = Instant::now();
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let value_parse = t.elapsed();
    let t = Instant::now();
    let resources: Vec<Json> = lines
        .iter()
        .map(|l| Json::parse(l.as_bytes()))
        .collect::<Result<_, _>>()?;
    let parse = t.elapsed();
    let rt = values
        .first()
        .and_then(|r| r["resourceType"].as_str())
        .ok_or("no resources")?
        .to_string();
    let view = View::from_json(&view_for(&rt))?;
    let mut out = Vec::new();
    let mut rows = 0usize;
    let t = Instant::now();
    for _ in 0..repeats {
        for r in &resources {
            out.clear();
            rows += view.append_json_rows(r, &mut out)?;
        }
    }
    let eval = t.elapsed();
    let n = resources.len() * repeats;
    // The exporter's parse: only the top-level elements the view reads.
    let projection = sof::Projection::of([&view]);
    let t = Instant::now();
    let mut kept = 0usize;
    for line in &lines {
        kept += projection
            .parse(line.as_bytes())?
            .as_object()
            .map_or(0, |o| o.len());
    }
    let projected = t.elapsed();
    let per_s = |d: std::time::Duration| resources.len() as f64 / d.as_secs_f64();
    println!(
        "{rt}: {} resources ({:.1} MB), serde_json::Value parse {:.0} resources/s, JSON parse \
         {:.0} resources/s, projected parse {:.0} resources/s ({kept} elements kept); view: {} \
         columns, {rows} rows from {n} resources in {:.2}s = {:.0} resources/s, {:.0} rows/s",
        resources.len(),
        text.len() as f64 / 1e6,
        per_s(value_parse),
        per_s(parse),
        per_s(projected),
        view.columns().len(),
        eval.as_secs_f64(),
        n as f64 / eval.as_secs_f64(),
        rows as f64 / eval.as_secs_f64(),
    );
    Ok(())
}
