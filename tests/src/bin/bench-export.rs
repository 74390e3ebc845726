//! Benchmark: wall time of a system export from kick-off to the last byte downloaded, and the
//! exporter's peak memory, against a real `bulk-export serve` process (release build).
//!
//! ```text
//! cargo build --release -p shared --bin bulk-export
//! cargo run --release -p integration-tests --bin bench-export -- [--data DIR] [--copies N] [--runs N] [--query Q]
//! ```
//! `--query Q` appends kick-off parameters (e.g. `_typeFilter=Observation%3Fcategory%3Dlaboratory`),
//! to measure the cost of parsing and filtering rows instead of copying them.
//! `--storage URL` exports to that storage path instead of a temp directory (e.g.
//! `s3://bench/exports`; the S3 endpoint and keys come from the usual AWS variables, which the
//! serve process inherits, as does `S3_GZIP_COPIES`). `--gzip` downloads with
//! `Accept-Encoding: gzip` and reports the compressed bytes transferred.
//! `--path P` exports from another kick-off route (e.g. `Patient/$export`; default `$export`).
//! `--compare P` also exports from route P after each export of `--path`, on the same data and
//! server, and prints its manifest time as a multiple of the other's (e.g. `--compare
//! 'Patient/$export'`: Patient level against system level for the same rows, in one run).
//! `--group N` loads a Group of the first N patients and exports `Group/bench-group/$export`.
//! `--workers N` runs `serve --workers N` (default 1: the ratio to raw COPY is per worker).
//! After the load the database is brought to the state a running one is in: `VACUUM` (what
//! autovacuum does after a bulk insert: sets every row's commit hint bits and the visibility map)
//! and a `CHECKPOINT` (the load's dirty pages written out). Otherwise the first reads of the
//! loaded rows dirty every page they touch and the writeback of gigabytes shares the disk with
//! the measured exports' commits. `--fresh` skips both, to measure right after a load.
//! `--cluster` rewrites `resources` in key order after the load (`CLUSTER … USING resources_pkey`).
//! `--view` also measures `$viewdefinition-export` after the exports: a flat 10-column Observation
//! view to Parquet, beside (a) the plain `$export?_type=Observation` ndjson export and (b) DuckDB
//! (the Python package, from `BENCH_PYTHON`, default the tools venv of scripts/setup-tools.sh)
//! turning that export's ndjson files into the same Parquet (`read_ndjson_objects` +
//! `json_extract_string`), in the same run; (a) + (b) is the end-to-end alternative. Beside
//! them it prints the view export's CPU bound: serve's and Postgres's CPU seconds for it spread
//! over every core, the least wall time any schedule of that work could take, as a multiple of (a).
//! `--copies N` loads the data set N times with suffixed ids (same shape, N× the size), to show
//! that memory does not grow with the export. Peak memory is the serve process's VmHWM (peak RSS,
//! /proc/<pid>/status), which includes the HTTP server, the exporter and the pool.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;

struct Args {
    data: PathBuf,
    copies: usize,
    runs: usize,
    bin: PathBuf,
    query: Option<String>,
    storage: Option<String>,
    gzip: bool,
    path: String,
    compare: Option<String>,
    workers: usize,
    group: Option<usize>,
    cluster: bool,
    fresh: bool,
    view: bool,
}

const USAGE: &str = "usage: bench-export [--data DIR] [--copies N] [--runs N] [--bin PATH] [--workers N] [--query Q]\n\
    [--path P] [--compare P] [--group N] [--storage URL] [--gzip] [--cluster] [--fresh] [--view]\n\
(what each does: the doc comment at the top of tests/src/bin/bench-export.rs, and docs/BENCHMARKS.md)";

fn args() -> anyhow::Result<Args> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let default_data = integration_tests::shared_data("synthea-bulk-data-server-100")
        .unwrap_or_else(|| root.join("infra/sample-data/synthea-10"));
    let mut a = Args {
        data: default_data,
        copies: 1,
        runs: 3,
        bin: root.join("target/release/bulk-export"),
        query: None,
        storage: None,
        gzip: false,
        path: "$export".into(),
        compare: None,
        workers: 1,
        group: None,
        cluster: false,
        fresh: false,
        view: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--gzip" {
            a.gzip = true;
            continue;
        }
        if flag == "--cluster" {
            a.cluster = true;
            continue;
        }
        if flag == "--view" {
            a.view = true;
            continue;
        }
        if flag == "--fresh" {
            a.fresh = true;
            continue;
        }
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--data" => a.data = value()?.into(),
            "--copies" => a.copies = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--bin" => a.bin = value()?.into(),
            "--query" => a.query = Some(value()?),
            "--storage" => a.storage = Some(value()?),
            "--path" => a.path = value()?,
            "--compare" => a.compare = Some(value()?),
            "--workers" => a.workers = value()?.parse()?,
            "--group" => a.group = Some(value()?.parse()?),
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(a)
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

/// CPU seconds of every `postgres` process (the server's backends and workers) so far.
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(cpu_seconds)
        .sum()
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    integration_tests::bench::require_binary(&args.bin)?;
    let (data_dir, resources, input_bytes) =
        integration_tests::bench::replicate(&args.data, args.copies)?;
    let db = format!("bulkbench_{}", uuid::Uuid::new_v4().simple());
    let admin = integration_tests::admin_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    let url = format!("{}/{db}", admin.rsplit_once('/').context("admin url")?.0);
    let storage = match &args.storage {
        Some(s) => s.clone(),
        None => integration_tests::temp_dir().display().to_string(),
    };
    let run = |cmd: &[&str]| -> anyhow::Result<Duration> {
        let started = Instant::now();
        let status = Command::new(&args.bin)
            .args(cmd)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("bulk-export {cmd:?} failed");
        }
        Ok(started.elapsed())
    };
    run(&["migrate"])?;
    let load = run(&["load", data_dir.to_str().context("path")?])?;
    if args.cluster {
        // Heap order = key order: a read of a type in id order becomes sequential.
        let started = Instant::now();
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.batch_execute("CLUSTER resources USING resources_pkey; ANALYZE resources")
            .await?;
        println!(
            "CLUSTER resources USING resources_pkey: {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let mut path = args.path.clone();
    if let Some(n) = args.group {
        let patient_file = std::fs::read_dir(&data_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("Patient") && n.ends_with(".ndjson"))
            })
            .context("no Patient ndjson in the data")?;
        let patients = std::fs::read_to_string(patient_file)?;
        let members: Vec<serde_json::Value> = patients
            .lines()
            .take(n)
            .map(|l| -> anyhow::Result<serde_json::Value> {
                let p: serde_json::Value = serde_json::from_str(l)?;
                Ok(serde_json::json!({"entity": {"reference": format!("Patient/{}", p["id"].as_str().context("id")?)}}))
            })
            .collect::<anyhow::Result<_>>()?;
        let group_dir = integration_tests::temp_dir();
        std::fs::write(
            group_dir.join("Group.ndjson"),
            serde_json::json!({"resourceType": "Group", "id": "bench-group", "type": "person",
                "actual": true, "member": members})
            .to_string(),
        )?;
        run(&["load", group_dir.to_str().context("path")?])?;
        std::fs::remove_dir_all(&group_dir).ok();
        path = "Group/bench-group/$export".into();
    }
    println!(
        "loaded {resources} resources ({:.1} MB) in {:.1} s: {:.0} resources/s",
        input_bytes as f64 / 1e6,
        load.as_secs_f64(),
        resources as f64 / load.as_secs_f64()
    );
    // The state of a running database (see the module comment), unless `--fresh`.
    if !args.fresh {
        let started = Instant::now();
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.batch_execute("VACUUM").await?;
        let vacuum = started.elapsed();
        client.batch_execute("CHECKPOINT").await?;
        println!(
            "after the load: VACUUM {:.1} s, CHECKPOINT {:.1} s",
            vacuum.as_secs_f64(),
            (started.elapsed() - vacuum).as_secs_f64()
        );
    }

    let serve_log = integration_tests::temp_dir().join("serve.log");
    let mut child = Command::new(&args.bin)
        .args([
            "serve",
            "--port",
            "0",
            "--workers",
            &args.workers.to_string(),
        ])
        .env("DATABASE_URL", &url)
        .env("STORAGE_PATH", &storage)
        // The benchmark measures the export path, not token handling.
        .env("AUTH", "off")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&serve_log)?)
        .spawn()?;
    println!("serve log (warnings): {}", serve_log.display());
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix("FHIR base URL: ")
        .context("base url line")?
        .to_string();
    let idle_rss = vm_kib(pid, "VmRSS:");

    let http = reqwest::Client::new();
    // The physical limit, measured in the same run: Postgres streaming the same rows out.
    let (raw, raw_conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(raw_conn);
    let mut times = Vec::new();
    let mut ratios = Vec::new();
    let mut compared: Vec<f64> = Vec::new();
    for _ in 0..args.runs {
        let copy_started = Instant::now();
        let copy_bytes = {
            let stream = raw
                .copy_out("COPY (SELECT resource FROM resources WHERE NOT deleted) TO STDOUT")
                .await?;
            futures::pin_mut!(stream);
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                n += chunk?.len() as u64;
            }
            n
        };
        let copy = copy_started.elapsed().as_secs_f64();
        let Exported {
            exported,
            total,
            serve_cpu,
            pg_cpu,
            lines,
            bytes,
            ..
        } = export_once(&http, &base, &path, &args.query, args.gzip, pid).await?;
        if args.query.is_none() && path == "$export" && lines != resources {
            bail!("exported {lines} resources, expected {resources}");
        }
        println!(
            "raw COPY of the rows: {:.1} MB in {copy:.2} s; export: {lines} lines, {:.1} MB; manifest ready after {:.2} s (CPU until then: serve {serve_cpu:.1} s, Postgres {pg_cpu:.1} s; COPY / export = {:.2}), last byte downloaded after {:.2} s",
            copy_bytes as f64 / 1e6,
            bytes as f64 / 1e6,
            exported.as_secs_f64(),
            copy / exported.as_secs_f64(),
            total.as_secs_f64()
        );
        times.push(total.as_secs_f64());
        ratios.push(copy / exported.as_secs_f64());
        // --compare: another export of the same rows in the same run, right after this one.
        if let Some(other) = &args.compare {
            let o = export_once(&http, &base, other, &args.query, args.gzip, pid).await?;
            let ratio = o.exported.as_secs_f64() / exported.as_secs_f64();
            println!(
                "{other}: {} lines, {:.1} MB; manifest ready after {:.2} s (CPU until then: serve {:.1} s, Postgres {:.1} s) = {ratio:.2} × the {path} export above",
                o.lines,
                o.bytes as f64 / 1e6,
                o.exported.as_secs_f64(),
                o.serve_cpu,
                o.pg_cpu
            );
            compared.push(ratio);
        }
    }
    if !compared.is_empty() {
        compared.sort_by(f64::total_cmp);
        println!(
            "{} / {path}, manifest times (median of {}): {:.2}",
            args.compare.as_deref().unwrap_or_default(),
            compared.len(),
            compared[compared.len() / 2]
        );
    }
    if args.view {
        if args.storage.is_some() {
            bail!("--view reads the ndjson export's files from local storage: no --storage");
        }
        view_comparison(&http, &base, pid, &storage, args.runs).await?;
    }
    let peak = vm_kib(pid, "VmHWM:");
    child.kill().ok();
    // BENCH_HOLD_SECONDS: keep the database that long for a look with psql (EXPLAIN).
    if let Some(hold) = std::env::var("BENCH_HOLD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        println!("database {db} kept for {hold} s");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    times.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    println!(
        "export rate / raw COPY rate (median of {}): {:.2}",
        ratios.len(),
        ratios[ratios.len() / 2]
    );
    println!(
        "| {} | {resources} | {:.1} MB | {:.2} s | {:.1} MiB | {:.1} MiB |",
        args.data
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string()
            + &if args.copies > 1 {
                format!(" ×{}", args.copies)
            } else {
                String::new()
            }
            + &format!(", {path}, {} worker(s)", args.workers)
            + &args
                .query
                .as_ref()
                .map(|q| format!(", `{q}`"))
                .unwrap_or_default(),
        input_bytes as f64 / 1e6,
        times[times.len() / 2],
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    client
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .ok();
    // The replicated data and the exported files (gigabytes at ×32) go with the run.
    std::fs::remove_dir_all(&data_dir).ok();
    if args.storage.is_none() {
        std::fs::remove_dir_all(&storage).ok();
    }
    Ok(())
}

/// The flat Observation view of `--view`: ten columns, one row per Observation.
fn observation_view() -> serde_json::Value {
    serde_json::json!({
        "resourceType": "ViewDefinition", "name": "observations", "resource": "Observation",
        "status": "active",
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
    })
}

/// The same ten columns in DuckDB, from ndjson files, written as Snappy Parquet; prints the
/// rows and the seconds of the COPY alone.
const DUCKDB_CONVERT: &str = r#"
import sys, time, duckdb
src, dst = sys.argv[1], sys.argv[2]
con = duckdb.connect()
# Its progress bar (for queries over 2 s) would print to stdout, which carries the result.
con.execute("SET enable_progress_bar = false")
started = time.monotonic()
con.execute(f"""COPY (SELECT
    json_extract_string(json, '$.id') AS id,
    json_extract_string(json, '$.status') AS status,
    regexp_extract(json_extract_string(json, '$.subject.reference'), 'Patient/([^/]+)$', 1) AS patient,
    regexp_extract(json_extract_string(json, '$.encounter.reference'), 'Encounter/([^/]+)$', 1) AS encounter,
    json_extract_string(json, '$.effectiveDateTime') AS effective,
    json_extract_string(json, '$.issued') AS issued,
    json_extract_string(json, '$.code.coding[0].code') AS code,
    json_extract_string(json, '$.code.coding[0].system') AS system,
    CAST(json_extract_string(json, '$.valueQuantity.value') AS DECIMAL(38, 18)) AS value,
    json_extract_string(json, '$.valueQuantity.unit') AS unit
  FROM read_ndjson_objects('{src}')) TO '{dst}' (FORMAT parquet, COMPRESSION snappy)""")
seconds = time.monotonic() - started
rows = con.execute(f"SELECT count(*) FROM '{dst}'").fetchone()[0]
print(rows, seconds)
"#;

/// `--view`: the view export to Parquet beside the plain ndjson export of its type and DuckDB
/// converting that ndjson, `runs` times; prints each run and the medians.
async fn view_comparison(
    http: &reqwest::Client,
    base: &str,
    pid: u32,
    storage: &str,
    runs: usize,
) -> anyhow::Result<()> {
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| {
        let tools = std::env::var("TOOLS_DIR").unwrap_or_else(|_| {
            format!(
                "{}/.cache/fhir-bulk-tools",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        format!("{tools}/venv/bin/python")
    });
    let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "view", "part": [{"name": "viewResource", "resource": observation_view()}]},
        {"name": "_format", "valueCode": "parquet"}
    ]})
    .to_string();
    let (mut to_ndjson, mut to_duckdb, mut bounds) = (Vec::new(), Vec::new(), Vec::new());
    // No schedule runs the view export faster than its CPU time spread over every core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for _ in 0..runs {
        let nd = export_once(
            http,
            base,
            "$export",
            &Some("_type=Observation".into()),
            false,
            pid,
        )
        .await?;
        let view = view_export_once(http, base, &body, pid).await?;
        let out = integration_tests::temp_dir().join("duckdb.parquet");
        let src = format!("{storage}/{}/Observation*.ndjson", nd.job);
        let started = Instant::now();
        let converted = Command::new(&python)
            .args(["-c", DUCKDB_CONVERT, &src, out.to_str().context("path")?])
            .output()
            .with_context(|| format!("{python} (BENCH_PYTHON) with duckdb"))?;
        let duck_wall = started.elapsed().as_secs_f64();
        if !converted.status.success() {
            bail!("duckdb: {}", String::from_utf8_lossy(&converted.stderr));
        }
        let text = String::from_utf8_lossy(&converted.stdout);
        let mut parts = text.split_whitespace();
        let duck_rows: usize = parts.next().context("rows")?.parse()?;
        let duck_copy: f64 = parts.next().context("seconds")?.parse()?;
        if duck_rows != view.lines || nd.lines != view.lines {
            bail!(
                "rows differ: view {}, ndjson export {}, DuckDB {duck_rows}",
                view.lines,
                nd.lines
            );
        }
        let (v, n) = (view.total.as_secs_f64(), nd.total.as_secs_f64());
        let bound = (view.serve_cpu + view.pg_cpu) / cores;
        println!(
            "view to Parquet: {} rows, {:.1} MB, {v:.2} s (CPU serve {:.1} s, Postgres {:.1} s); \
             Observation ndjson export: {:.1} MB, {n:.2} s; DuckDB ndjson -> Parquet: COPY \
             {duck_copy:.2} s ({duck_wall:.2} s with Python's start); view / ndjson export = \
             {:.2}; view / (ndjson export + DuckDB COPY) = {:.2}; the view's CPU over {cores} \
             cores = {bound:.2} s = {:.2} × the ndjson export",
            view.lines,
            view.bytes as f64 / 1e6,
            view.serve_cpu,
            view.pg_cpu,
            nd.bytes as f64 / 1e6,
            v / n,
            v / (n + duck_copy),
            bound / n
        );
        bounds.push(bound / n);
        to_ndjson.push(v / n);
        to_duckdb.push(v / (n + duck_copy));
        std::fs::remove_file(&out).ok();
    }
    to_ndjson.sort_by(f64::total_cmp);
    to_duckdb.sort_by(f64::total_cmp);
    bounds.sort_by(f64::total_cmp);
    println!(
        "view to Parquet / ndjson export (median of {runs}): {:.2}; / (ndjson export + DuckDB): {:.2}; \
         the view's CPU bound / ndjson export: {:.2}",
        to_ndjson[to_ndjson.len() / 2],
        to_duckdb[to_duckdb.len() / 2],
        bounds[bounds.len() / 2]
    );
    Ok(())
}

/// One `$viewdefinition-export` (POST `body`): kick-off, manifest, every file downloaded; rows
/// from the manifest's counts.
async fn view_export_once(
    http: &reqwest::Client,
    base: &str,
    body: &str,
    pid: u32,
) -> anyhow::Result<Exported> {
    let (serve_cpu, pg_cpu) = (cpu_seconds(pid), postgres_cpu_seconds());
    let started = Instant::now();
    let resp = http
        .post(format!("{base}/$viewdefinition-export"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await?;
    if resp.status() != 202 {
        bail!("view kick-off: {} {}", resp.status(), resp.text().await?);
    }
    let status_url = resp.headers()["content-location"].to_str()?.to_string();
    let manifest = wait_for_manifest(http, &status_url).await?;
    let exported = started.elapsed();
    let (serve_cpu, pg_cpu) = (
        cpu_seconds(pid) - serve_cpu,
        postgres_cpu_seconds() - pg_cpu,
    );
    let (mut lines, mut bytes) = (0usize, 0u64);
    for entry in manifest["output"].as_array().context("output")? {
        lines += entry["count"].as_u64().unwrap_or(0) as usize;
        let resp = http
            .get(entry["url"].as_str().context("url")?)
            .send()
            .await?;
        bytes += resp.bytes().await?.len() as u64;
    }
    Ok(Exported {
        exported,
        total: started.elapsed(),
        serve_cpu,
        pg_cpu,
        lines,
        bytes,
        job: job_of(&status_url),
    })
}

/// The job id of a status URL.
fn job_of(status_url: &str) -> String {
    status_url
        .rsplit_once("_id=")
        .map_or_else(String::new, |(_, id)| id.to_string())
}

/// Polls a status URL until its manifest.
async fn wait_for_manifest(
    http: &reqwest::Client,
    status_url: &str,
) -> anyhow::Result<serde_json::Value> {
    loop {
        let r = http.get(status_url).send().await?;
        if r.status() == 200 {
            return Ok(r.json().await?);
        }
        // 202 while in progress (429 if polled too fast); anything else is the export's end.
        if r.status() != 202 && r.status() != 429 {
            bail!("export {status_url}: {} {}", r.status(), r.text().await?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One export of `path` (with `query`): kick-off, polling until the manifest, every file
/// downloaded.
struct Exported {
    /// Kick-off to manifest.
    exported: Duration,
    /// Kick-off to the last byte downloaded.
    total: Duration,
    serve_cpu: f64,
    pg_cpu: f64,
    lines: usize,
    bytes: u64,
    /// The job's id.
    job: String,
}

async fn export_once(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    query: &Option<String>,
    gzip: bool,
    pid: u32,
) -> anyhow::Result<Exported> {
    let (serve_cpu, pg_cpu) = (cpu_seconds(pid), postgres_cpu_seconds());
    let started = Instant::now();
    let url = match &query {
        Some(q) => format!("{base}/{path}?{q}"),
        None => format!("{base}/{path}"),
    };
    let resp = integration_tests::kickoff(http, &url).await;
    if resp.status() != 202 {
        bail!("kick-off {url}: {}", resp.status());
    }
    let status_url = resp.headers()["content-location"].to_str()?.to_string();
    let manifest = wait_for_manifest(http, &status_url).await?;
    let exported = started.elapsed();
    let (serve_cpu, pg_cpu) = (
        cpu_seconds(pid) - serve_cpu,
        postgres_cpu_seconds() - pg_cpu,
    );
    let (mut lines, mut bytes) = (0usize, 0u64);
    for entry in manifest["output"].as_array().context("output")? {
        let mut req = http.get(entry["url"].as_str().context("url")?);
        if gzip {
            req = req.header("Accept-Encoding", "gzip");
        }
        let resp = req.send().await?;
        let gzipped = resp
            .headers()
            .get("content-encoding")
            .is_some_and(|v| v == "gzip");
        let mut stream = resp.bytes_stream();
        let mut inflate = flate2::write::GzDecoder::new(LineCounter(0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            if gzipped {
                inflate.write_all(&chunk)?;
            } else {
                lines += chunk.iter().filter(|b| **b == b'\n').count();
            }
        }
        if gzipped {
            lines += inflate.finish()?.0;
        }
    }
    Ok(Exported {
        exported,
        total: started.elapsed(),
        serve_cpu,
        pg_cpu,
        lines,
        bytes,
        job: job_of(&status_url),
    })
}

/// Counts the newlines written to it (lines of an inflated download).
struct LineCounter(usize);

impl Write for LineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.iter().filter(|b| **b == b'\n').count();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
