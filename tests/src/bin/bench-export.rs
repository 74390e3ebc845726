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
}

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
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--gzip" {
            a.gzip = true;
            continue;
        }
        let value = it.next().context("flag without value")?;
        match flag.as_str() {
            "--data" => a.data = value.into(),
            "--copies" => a.copies = value.parse()?,
            "--runs" => a.runs = value.parse()?,
            "--bin" => a.bin = value.into(),
            "--query" => a.query = Some(value),
            "--storage" => a.storage = Some(value),
            "--path" => a.path = value,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
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
    if !args.bin.exists() {
        bail!(
            "{:?} not found: cargo build --release -p shared --bin bulk-export",
            args.bin
        );
    }
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
    println!(
        "loaded {resources} resources ({:.1} MB) in {:.1} s: {:.0} resources/s",
        input_bytes as f64 / 1e6,
        load.as_secs_f64(),
        resources as f64 / load.as_secs_f64()
    );

    let serve_log = integration_tests::temp_dir().join("serve.log");
    let mut child = Command::new(&args.bin)
        .args(["serve", "--port", "0"])
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
        let started = Instant::now();
        let url = match &args.query {
            Some(q) => format!("{base}/{}?{q}", args.path),
            None => format!("{base}/{}", args.path),
        };
        let resp = integration_tests::kickoff(&http, &url).await;
        if resp.status() != 202 {
            bail!("kick-off {url}: {}", resp.status());
        }
        let status_url = resp.headers()["content-location"].to_str()?.to_string();
        let manifest: serde_json::Value = loop {
            let r = http.get(&status_url).send().await?;
            if r.status() == 200 {
                break r.json().await?;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let exported = started.elapsed();
        let (mut lines, mut bytes) = (0usize, 0u64);
        for entry in manifest["output"].as_array().context("output")? {
            let mut req = http.get(entry["url"].as_str().context("url")?);
            if args.gzip {
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
        let total = started.elapsed();
        if args.query.is_none() && args.path == "$export" && lines != resources {
            bail!("exported {lines} resources, expected {resources}");
        }
        println!(
            "raw COPY of the rows: {:.1} MB in {copy:.2} s; export: {lines} lines, {:.1} MB; manifest ready after {:.2} s (COPY / export = {:.2}), last byte downloaded after {:.2} s",
            copy_bytes as f64 / 1e6,
            bytes as f64 / 1e6,
            exported.as_secs_f64(),
            copy / exported.as_secs_f64(),
            total.as_secs_f64()
        );
        times.push(total.as_secs_f64());
        ratios.push(copy / exported.as_secs_f64());
    }
    let peak = vm_kib(pid, "VmHWM:");
    child.kill().ok();
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
