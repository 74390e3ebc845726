//! Throughput of the encoders on a flat Observation view (11 columns).
//!
//! ```sh
//! cargo run --release -p sof-files --example bench -- ../shared/data/synthea-bulk-data-server-100/Observation.000.ndjson
//! cargo run --release -p sof-files --example bench -- FILE.ndjson --repeat 10 --only parquet
//! ```
//!
//! Each line is parsed into a `sof::Json` and run through the view (`append_json_rows`); the rows
//! go to an encoder whose ready bytes are drained (and dropped, as after an upload) every 8 MiB.
//! The baseline is parsing and `append_json_rows` alone (`parse`: the parse alone, rows =
//! resources). `--repeat N` streams the file N times into one
//! file, the ids made unique in each pass (memory must stay flat); `--only FORMAT` runs one
//! format (for its peak RSS, printed at the end: the high-water mark of the whole process);
//! `--row-group-mib N` sets the Parquet row group byte limit; `--save DIR` writes the files
//! there (`observation_flat.ndjson` …) for other readers.

use std::io::{BufRead, BufReader};
use std::time::Instant;

use serde_json::{json, Value};
use sof_files::{Encoder, Format, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut repeat = 1usize;
    let mut only: Option<String> = None;
    let mut options = Options::default();
    let mut save: Option<std::path::PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => repeat = args.next().ok_or("--repeat N")?.parse()?,
            "--only" => only = Some(args.next().ok_or("--only FORMAT")?),
            "--save" => save = Some(args.next().ok_or("--save DIR")?.into()),
            "--row-group-mib" => {
                options.row_group_bytes =
                    args.next().ok_or("--row-group-mib N")?.parse::<usize>()? << 20
            }
            _ => path = Some(a),
        }
    }
    let path =
        path.ok_or("usage: bench FILE.ndjson [--repeat N] [--only baseline|ndjson|csv|parquet]")?;
    let view = sof::View::from_json(&json!({
        "resourceType": "ViewDefinition", "resource": "Observation", "name": "observation_flat",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "status", "path": "status"},
            {"name": "code_system", "path": "code.coding.first().system"},
            {"name": "code", "path": "code.coding.first().code"},
            {"name": "display", "path": "code.coding.first().display"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
            {"name": "encounter", "path": "encounter.getReferenceKey(Encounter)"},
            {"name": "effective", "path": "effective.ofType(dateTime)"},
            {"name": "issued", "path": "issued"},
            {"name": "value", "path": "value.ofType(Quantity).value"},
            {"name": "unit", "path": "value.ofType(Quantity).unit"}
        ]}]
    }))?;
    let exact = serde_json::to_string(&serde_json::from_str::<Value>("1.50")?)? == "1.50";
    println!(
        "{path} ×{repeat}; serde_json number text kept (arbitrary_precision): {exact}; columns {}",
        view.columns().len()
    );
    let formats: [(&str, Option<Format>); 5] = [
        ("parse", None),
        ("baseline", None),
        ("ndjson", Some(Format::Ndjson)),
        ("csv", Some(Format::Csv { header: true })),
        ("parquet", Some(Format::Parquet)),
    ];
    let mut baseline_secs = None;
    for (name, format) in formats {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let started = Instant::now();
        let mut encoder = format
            .map(|f| Encoder::with_options(f, view.columns(), &options))
            .transpose()?;
        let mut flat = Vec::new();
        let mut out = Vec::new();
        let (mut input_bytes, mut output_bytes, mut rows, mut parts) = (0u64, 0u64, 0u64, 0u64);
        let mut line = String::new();
        for pass in 0..repeat {
            let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    break;
                }
                input_bytes += line.len() as u64;
                if pass > 0 {
                    // Unique ids in every pass, as in a larger data set (no free compression):
                    // the first `"id":"` of a line is the resource's.
                    line = line.replacen("\"id\":\"", &format!("\"id\":\"{pass}-"), 1);
                }
                let resource = sof::Json::parse(line.as_bytes())?;
                flat.clear();
                if name == "parse" {
                    rows += 1;
                    continue;
                }
                rows += view.append_json_rows(&resource, &mut flat)? as u64;
                if let Some(e) = encoder.as_mut() {
                    e.push(&flat)?;
                    e.drain_ready(&mut out);
                    if out.len() >= 8 << 20 {
                        output_bytes += out.len() as u64;
                        parts += 1;
                        if let (Some(dir), Some(f)) = (&save, format) {
                            save_part(dir, f, &out, parts == 1)?;
                        }
                        // Uploaded: the buffer goes with the part.
                        drop(std::mem::take(&mut out));
                    }
                }
            }
        }
        if let Some(e) = encoder {
            e.finish(&mut out)?;
            output_bytes += out.len() as u64;
            parts += 1;
            if let (Some(dir), Some(f)) = (&save, format) {
                save_part(dir, f, &out, parts == 1)?;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let vs = match baseline_secs {
            Some(b) => format!("{:.2}× baseline time", secs / b),
            None => String::new(),
        };
        if name == "baseline" {
            baseline_secs = Some(secs);
        }
        println!(
            "{name:>8}: {rows} rows in {secs:.2} s = {:.0} rows/s, {:.1} MB/s of input; output {:.1} MB in {parts} parts {vs}",
            rows as f64 / secs,
            input_bytes as f64 / secs / 1e6,
            output_bytes as f64 / 1e6,
        );
    }
    if only.is_none() {
        encode_only(&view, &path)?;
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for l in status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        {
            println!("{l}");
        }
    }
    Ok(())
}

/// Appends a part to DIR/observation_flat.EXT (the first part creates the file).
fn save_part(
    dir: &std::path::Path,
    format: Format,
    part: &[u8],
    first: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(format!("observation_flat.{}", format.extension()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!first)
        .truncate(first)
        .open(path)?;
    file.write_all(part)
}

/// The encoders alone: the file's rows computed first, then pushed (best of 5 runs).
fn encode_only(view: &sof::View, path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut flat = Vec::new();
    for line in std::fs::read_to_string(path)?.lines() {
        view.append_json_rows(&sof::Json::parse(line.as_bytes())?, &mut flat)?;
    }
    let width = view.columns().len();
    let rows = flat.len() / width;
    for format in [
        Format::Ndjson,
        Format::Csv { header: true },
        Format::Parquet,
    ] {
        let mut best = f64::MAX;
        let mut size = 0;
        for _ in 0..5 {
            let started = Instant::now();
            let mut encoder = Encoder::new(format, view.columns())?;
            let mut out = Vec::new();
            for row in flat.chunks(width) {
                encoder.push(row)?;
            }
            encoder.finish(&mut out)?;
            best = best.min(started.elapsed().as_secs_f64());
            size = out.len();
        }
        println!(
            "encoding only, {:>7}: {rows} rows in {best:.3} s = {:.2} µs/row, {:.1} MB",
            format.code(),
            best * 1e6 / rows as f64,
            size as f64 / 1e6
        );
    }
    Ok(())
}
