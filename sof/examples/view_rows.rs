//! Applies ViewDefinitions to NDJSON files and writes the rows as JSON, for comparing with
//! another implementation (see tools/compare-with-sof-js.sh).
//!
//!     cargo run --release -p sof --example view_rows -- VIEWS.json DATA_DIR OUT.json
//!
//! VIEWS.json is an array of ViewDefinitions; DATA_DIR holds `<ResourceType>.000.ndjson`
//! files. OUT.json is an array with, per view, `{"view": i, "rows": [{column: value}, …]}` or
//! `{"view": i, "error": "…"}`.

use serde_json::{json, Map, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [views, dir, out_path] = args.as_slice() else {
        return Err("usage: view_rows VIEWS.json DATA_DIR OUT.json".into());
    };
    let views: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(views)?)?;
    let mut out = Vec::new();
    for (i, v) in views.iter().enumerate() {
        let view = match sof::View::from_json(v) {
            Ok(view) => view,
            Err(e) => {
                out.push(json!({"view": i, "error": e.to_string()}));
                continue;
            }
        };
        for w in view.warnings() {
            eprintln!("view {i}: warning: {w}");
        }
        let file = format!("{dir}/{}.000.ndjson", view.resource_type());
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let names: Vec<&str> = view.columns().iter().map(|c| c.name()).collect();
        let mut rows = Vec::new();
        let mut error = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // Read as the exporter reads stored resources.
            match view.json_rows(&sof::Json::parse(line.as_bytes())?) {
                Ok(rs) => {
                    rows.extend(rs.into_iter().map(|row| {
                        Value::Object(names.iter().map(|n| n.to_string()).zip(row).collect::<Map<
                            String,
                            Value,
                        >>(
                        ))
                    }))
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        out.push(match error {
            Some(e) => json!({"view": i, "error": e}),
            None => json!({"view": i, "rows": rows}),
        });
    }
    std::fs::write(out_path, serde_json::to_string(&out)?)?;
    Ok(())
}
