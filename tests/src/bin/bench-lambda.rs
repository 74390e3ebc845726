//! Benchmark: cold start and warm latency of the Lambda functions, each the shipped bootstrap
//! (`bulk-export-lambda`, release build) under AWS's Runtime Interface Emulator behind the
//! harness's API Gateway stand-in (integration_tests::lambda_rig), beside `bulk-export serve`
//! (release build) answering the same routes on the same database.
//!
//! ```text
//! cargo build --release -p bulk-export-lambda -p shared --bin bulk-export
//! cargo run --release -p integration-tests --bin bench-lambda -- [--runs N]
//! ```
//! Per function: the init duration (the emulator's `INIT REPORT` line) and the first invoke's
//! wall time; then the warm p50/p99 over N requests (default 200) of token, kick-off, status
//! and file through the front door (real HTTP), the same functions invoked directly (the
//! emulator's Invoke API, no front door), the time inside the function (the emulator's REPORT
//! `Duration`), and the exporter's cost per scheduled invocation with nothing to do.
//!
//! What the environment does not provide is started here and stopped at the end: a moto server
//! (S3/SQS/Secrets Manager stand-in) unless `TEST_AWS_ENDPOINT_URL` is set, s3s-fs unless
//! `TEST_S3S_ENDPOINT_URL` is set (both from `${TOOLS_DIR:-~/.cache/fhir-bulk-tools}`, which
//! scripts/setup-tools.sh fills). Postgres: `TEST_DATABASE_URL` or the local one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use integration_tests::lambda_rig::{Emulator, Stack, StackOptions};
use integration_tests::TestDb;
use serde_json::{json, Value};

/// Kick-offs per client: under MAX_CONCURRENT_EXPORTS (10), so that no timed kick-off is a 429.
const JOBS_PER_CLIENT: usize = 9;

/// Processes this benchmark started, killed when it ends (also on a panic).
struct Started(Vec<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wait_tcp(port: u16, what: &str, child: &mut Child) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited: {status}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not listen on {port}")
}

/// Starts moto and s3s-fs when the environment names none, and sets the variables the harness
/// reads. Runs before any other thread exists (environment changes are then safe).
fn environment(started: &mut Started) -> anyhow::Result<()> {
    let tools = std::env::var("TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/fhir-bulk-tools")
        });
    let logs = integration_tests::temp_dir();
    if std::env::var("TOOLS_VENV").is_err() {
        std::env::set_var("TOOLS_VENV", tools.join("venv"));
    }
    if std::env::var("LAMBDA_BOOTSTRAP").is_err() {
        std::env::set_var(
            "LAMBDA_BOOTSTRAP",
            root().join("target/release/bulk-export-lambda"),
        );
    }
    let bootstrap = PathBuf::from(std::env::var("LAMBDA_BOOTSTRAP")?);
    if !bootstrap.exists() {
        bail!("{bootstrap:?} not found: cargo build --release -p bulk-export-lambda");
    }
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    if std::env::var("TEST_AWS_ENDPOINT_URL").is_err() {
        let port = integration_tests::free_port();
        let mut child = Command::new(tools.join("venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::fs::File::create(logs.join("moto.log"))?)
            .stderr(std::fs::File::create(logs.join("moto.err.log"))?)
            .spawn()
            .context("start moto_server (scripts/setup-tools.sh installs it)")?;
        wait_tcp(port, "moto_server", &mut child)?;
        started.0.push(child);
        std::env::set_var("TEST_AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    }
    if std::env::var("TEST_S3S_ENDPOINT_URL").is_err() {
        let port = integration_tests::free_port();
        let (key, secret) = ("s3s-bench-access", "s3s-bench-secret");
        let dir = integration_tests::temp_dir();
        let mut child = Command::new(tools.join("cargo/bin/s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", key, "--secret-key", secret])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(logs.join("s3s.log"))?)
            .spawn()
            .context("start s3s-fs (scripts/setup-tools.sh installs it)")?;
        wait_tcp(port, "s3s-fs", &mut child)?;
        started.0.push(child);
        std::env::set_var("TEST_S3S_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
        std::env::set_var("TEST_S3S_ACCESS_KEY", key);
        std::env::set_var("TEST_S3S_SECRET_KEY", secret);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut runs = 200usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            other => bail!("unknown flag {other} (usage: bench-lambda [--runs N])"),
        }
    }
    let serve_bin = root().join("target/release/bulk-export");
    integration_tests::bench::require_binary(&serve_bin)?;
    let mut started = Started(Vec::new());
    environment(&mut started)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(bench(runs, &serve_bin));
    drop(rt);
    drop(started);
    result
}

/// Milliseconds of a duration.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Clone, Copy, Default)]
struct Stats {
    p50: f64,
    p99: f64,
    n: usize,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Stats {
            p50: at(0.5),
            p99: at(0.99),
            n: v.len(),
        }
    }

    fn cell(&self) -> String {
        if self.n == 0 {
            "–".into()
        } else {
            format!("{:.1} / {:.1}", self.p50, self.p99)
        }
    }
}

/// The `Duration` of each REPORT line of an emulator so far (time inside the function), ms.
fn report_durations(e: &Emulator) -> Vec<f64> {
    e.log()
        .lines()
        .filter(|l| l.starts_with("REPORT RequestId"))
        .filter_map(|l| {
            l.split('\t')
                .find_map(|f| f.trim().strip_prefix("Duration: "))
                .and_then(|d| d.trim_end_matches(" ms").parse().ok())
        })
        .collect()
}

/// An HTTP client without proxies, keeping connections alive (as a bulk-data client does).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// A client assertion (fixture RS384 key) for `client` at `token_url`.
fn assertion(client: &str, token_url: &str) -> String {
    let pem = std::fs::read(integration_tests::auth_fixture("rs384.pem")).expect("pem");
    shared::auth::keys::client_assertion(&pem, client, token_url, Some("test-rs384"))
        .expect("assertion")
}

/// One timed request: its status, body and wall time (until the whole body is read).
async fn timed(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String, f64) {
    let started = Instant::now();
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("body");
    (status, headers, body, ms(started.elapsed()))
}

/// A token request for `client` (the assertion is made before the clock starts).
async fn token(http: &reqwest::Client, base: &str, client: &str) -> (String, f64) {
    let url = format!("{base}/auth/token");
    let a = assertion(client, &url);
    let (status, _, body, t) = timed(http.post(&url).form(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", shared::auth::token::ASSERTION_TYPE),
        ("client_assertion", &a),
        ("scope", "system/*.read"),
    ]))
    .await;
    assert_eq!(status, 200, "token: {body}");
    let v: Value = serde_json::from_str(&body).expect("token json");
    (v["access_token"].as_str().expect("token").to_string(), t)
}

/// A kick-off (`GET /$export?_type=Patient`); the status URL and the wall time.
async fn kickoff(http: &reqwest::Client, base: &str, token: &str) -> (String, f64) {
    let (status, headers, body, t) = timed(
        http.get(format!("{base}/$export?_type=Patient"))
            .bearer_auth(token)
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async"),
    )
    .await;
    assert_eq!(status, 202, "kick-off: {body}");
    let url = headers["content-location"]
        .to_str()
        .expect("url")
        .to_string();
    (url, t)
}

async fn status(http: &reqwest::Client, url: &str, token: &str, expect: u16) -> (String, f64) {
    let (status, _, body, t) = timed(http.get(url).bearer_auth(token)).await;
    assert_eq!(status, expect, "status: {body}");
    (body, t)
}

/// Polls a status URL as a client should (Retry-After honoured, at most every 600 ms: over
/// MIN_POLL_INTERVAL_MS) until its manifest; untimed.
async fn manifest(http: &reqwest::Client, url: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let resp = http.get(url).bearer_auth(token).send().await.expect("poll");
        match resp.status().as_u16() {
            200 => return resp.json().await.expect("manifest"),
            202 | 429 => {}
            other => panic!("status {other}: {}", resp.text().await.unwrap_or_default()),
        }
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

/// A payload 2.0 event as the front door (API Gateway) builds it, for a direct invoke.
fn http_api_event(
    host: &str,
    route_key: &str,
    path: &str,
    query: &[(&str, &str)],
    token: &str,
) -> Value {
    let raw_query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let params: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": {
            "host": host,
            "accept": "application/fhir+json",
            "prefer": "respond-async",
            "authorization": format!("Bearer {token}"),
        },
        "queryStringParameters": params,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": "local",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "bench-lambda"},
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": route_key,
            "stage": "$default",
            "time": chrono::Utc::now().format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": chrono::Utc::now().timestamp_millis(),
        },
        "isBase64Encoded": false,
    })
}

/// A function's answer to a direct invoke: its statusCode, and the invoke's wall time.
async fn direct(f: &Emulator, event: &Value) -> (u16, f64) {
    let inv = f.invoke(event).await;
    assert!(
        !inv.is_error(),
        "{}: {}",
        f.spec.name,
        String::from_utf8_lossy(&inv.body)
    );
    let code = inv.json()["statusCode"].as_u64().unwrap_or(0) as u16;
    (code, ms(inv.elapsed))
}

/// One SendMessage to the stack's queue, timed.
async fn send_message(stack: &Stack) -> anyhow::Result<f64> {
    let started = Instant::now();
    stack
        .sqs
        .send_message()
        .queue_url(&stack.queue_url)
        .message_body(uuid::Uuid::new_v4().to_string())
        .send()
        .await?;
    Ok(ms(started.elapsed()))
}

/// Takes every message off the stack's queue (untimed).
async fn drain(stack: &Stack) -> anyhow::Result<()> {
    loop {
        let out = stack
            .sqs
            .receive_message()
            .queue_url(&stack.queue_url)
            .max_number_of_messages(10)
            .send()
            .await?;
        if out.messages().is_empty() {
            return Ok(());
        }
        for m in out.messages() {
            if let Some(handle) = m.receipt_handle() {
                stack
                    .sqs
                    .delete_message()
                    .queue_url(&stack.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await?;
            }
        }
    }
}

/// `n` clients `prefix-0…` registered with the fixture keys.
async fn clients(db: &TestDb, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        integration_tests::register_fixture_client(&db.pool, &id, "system/*.read").await;
        ids.push(id);
    }
    ids
}

/// Tokens for `ids`, each used for at most JOBS_PER_CLIENT kick-offs (untimed).
async fn tokens(http: &reqwest::Client, base: &str, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(token(http, base, id).await.0);
    }
    out
}

/// Warm measurements of one system (Lambda or serve) through HTTP.
#[derive(Default)]
struct Warm {
    token: Stats,
    kickoff: Stats,
    status: Stats,
    file: Stats,
}

struct Row {
    function: String,
    init_ms: Option<f64>,
    /// The first invoke's wall time, when measured here (not the migrate function's, invoked
    /// by the deploy), and what it was.
    first: Option<(f64, String)>,
    /// The first invoke's time inside the function (its REPORT line).
    first_inside_ms: Option<f64>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine(pg_version: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, m)| m.trim().to_string()))
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
        / 1024.0;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {mem_gib:.1} GiB memory, PostgreSQL {pg_version} (local, TCP)")
}

async fn bench(runs: usize, serve_bin: &Path) -> anyhow::Result<()> {
    // The database: the 10-patient sample, clients with the fixture keys.
    let db = TestDb::new().await;
    let data = root().join("infra/sample-data/synthea-10");
    let report = shared::load::load_paths(&db.pool, std::slice::from_ref(&data), |_| {}).await?;
    anyhow::ensure!(report.rejected.is_empty(), "{:?}", report.rejected);
    let pg_version: String = db
        .pool
        .get()
        .await?
        .query_one("SHOW server_version", &[])
        .await?
        .get(0);
    println!("machine: {}", machine(&pg_version));
    println!("load average at the start: {}", loadavg());
    println!(
        "data: {} resources (infra/sample-data/synthea-10); {runs} warm requests per route",
        report.loaded
    );
    // Lambda: through the front door, then directly; serve: through HTTP.
    let per_run = runs.div_ceil(JOBS_PER_CLIENT);
    let lambda_clients = clients(&db, "bench-lambda", 1 + 2 * per_run).await;
    let serve_clients = clients(&db, "bench-serve", 1 + per_run).await;

    let stack = Stack::deploy(
        &db,
        StackOptions {
            poll_queue: false,
            schedule_every: None,
            ..Default::default()
        },
    )
    .await;
    let base = stack.base_url.clone();
    let host = base.trim_start_matches("http://").to_string();
    let http = http();
    let mut rows = Vec::new();
    let mut first = |function: &str, t: f64, what: &str| {
        rows.push((function.to_string(), t, what.to_string()));
    };

    // First invokes, each function cold: the exporter's schedule with nothing to do, a token, a
    // kick-off, its status (202, queued), then the export run by the queue's exporter, a file.
    let sweep = stack.schedule().await;
    assert!(!sweep.is_error(), "schedule: {}", stack.sweeper.log());
    first(
        "exporter",
        ms(sweep.elapsed),
        "scheduled event (direct invoke)",
    );
    let (tok0, t) = token(&http, &base, &lambda_clients[0]).await;
    first("token", t, "POST /auth/token");
    let (job0, t) = kickoff(&http, &base, &tok0).await;
    first("kickoff", t, "GET /$export?_type=Patient");
    let (_, t) = status(&http, &job0, &tok0, 202).await;
    first("status", t, "GET /$exportstatus (queued: 202)");
    let mut stack = stack;
    stack.start_pollers();
    let done = manifest(&http, &job0, &tok0).await;
    stack.stop_pollers();
    let file_url = done["output"][0]["url"]
        .as_str()
        .context("an output file")?
        .to_string();
    let (code, _, body, t) = timed(http.get(&file_url).bearer_auth(&tok0)).await;
    assert_eq!(code, 307, "file: {body}");
    first("file", t, "GET /$exportfilerequest (307)");

    let firsts: std::collections::BTreeMap<String, (f64, String)> = rows
        .into_iter()
        .map(|(f, t, what)| (f, (t, what)))
        .collect();

    // Warm, through the front door. Where each function's REPORT lines start, to read the time
    // spent inside the function over the same requests.
    let mut lambda = Warm::default();
    let mut inside = std::collections::BTreeMap::new();
    let mark = |name: &str, e: &Emulator| (name.to_string(), report_durations(e).len());

    let m = mark("token", stack.function("token"));
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(token(&http, &base, &lambda_clients[0]).await.1);
    }
    lambda.token = Stats::of(v);
    inside.insert(
        "token",
        Stats::of(report_durations(stack.function("token"))[m.1..].to_vec()),
    );

    let m = mark("status", stack.function("status"));
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(status(&http, &job0, &tok0, 200).await.1);
    }
    lambda.status = Stats::of(v);
    inside.insert(
        "status",
        Stats::of(report_durations(stack.function("status"))[m.1..].to_vec()),
    );

    let m = mark("file", stack.function("file"));
    let mut v = Vec::new();
    for _ in 0..runs {
        let (code, _, body, t) = timed(http.get(&file_url).bearer_auth(&tok0)).await;
        assert_eq!(code, 307, "file: {body}");
        v.push(t);
    }
    lambda.file = Stats::of(v);
    inside.insert(
        "file",
        Stats::of(report_durations(stack.function("file"))[m.1..].to_vec()),
    );

    // The exporter with nothing to do (before the kick-offs below queue jobs nobody runs).
    let m = mark("exporter", &stack.sweeper);
    let mut v = Vec::new();
    for _ in 0..runs {
        let inv = stack.schedule().await;
        assert!(
            !inv.is_error(),
            "schedule: {}",
            String::from_utf8_lossy(&inv.body)
        );
        v.push(ms(inv.elapsed));
    }
    let exporter = Stats::of(v);
    inside.insert(
        "exporter",
        Stats::of(report_durations(&stack.sweeper)[m.1..].to_vec()),
    );

    // Kick-offs, at most JOBS_PER_CLIENT per client (no 429); the jobs stay queued (nothing
    // polls the queue), so the exporter's work does not share the cores with the kick-offs. Each
    // kick-off's message is taken off the queue (untimed), as the exporter's event source
    // mapping would: moto's SendMessage slows down as messages pile up in a queue.
    let lambda_tokens = tokens(&http, &base, &lambda_clients[1..]).await;
    let m = mark("kickoff", stack.function("kickoff"));
    let mut v = Vec::new();
    for i in 0..runs {
        v.push(
            kickoff(&http, &base, &lambda_tokens[i / JOBS_PER_CLIENT])
                .await
                .1,
        );
        drain(&stack).await?;
    }
    lambda.kickoff = Stats::of(v);
    inside.insert(
        "kickoff",
        Stats::of(report_durations(stack.function("kickoff"))[m.1..].to_vec()),
    );

    // Direct invokes (the emulator's Invoke API, no front door): status and kick-off.
    let job_id = job0.rsplit('=').next().context("job id")?.to_string();
    let mut v = Vec::new();
    for _ in 0..runs {
        let ev = http_api_event(
            &host,
            "GET /$exportstatus",
            "/$exportstatus",
            &[("_id", &job_id)],
            &tok0,
        );
        let (code, t) = direct(stack.function("status"), &ev).await;
        assert_eq!(code, 200);
        v.push(t);
    }
    let direct_status = Stats::of(v);
    let mut v = Vec::new();
    let offset = runs.div_ceil(JOBS_PER_CLIENT);
    for i in 0..runs {
        let tok = &lambda_tokens[offset + i / JOBS_PER_CLIENT];
        let ev = http_api_event(
            &host,
            "GET /$export",
            "/$export",
            &[("_type", "Patient")],
            tok,
        );
        let (code, t) = direct(stack.function("kickoff"), &ev).await;
        assert_eq!(code, 202);
        v.push(t);
        drain(&stack).await?;
    }
    let direct_kickoff = Stats::of(v);

    let mut inits = Vec::new();
    for (name, e) in stack
        .functions
        .iter()
        .map(|(n, e)| (n.as_str(), e))
        .chain(std::iter::once(("exporter", &stack.sweeper)))
    {
        inits.push(Row {
            function: name.to_string(),
            init_ms: e.init_durations_ms().first().copied(),
            first: firsts.get(name).cloned(),
            first_inside_ms: report_durations(e).first().copied(),
        });
    }
    // What the kick-off function's SendMessage to the queue (moto) costs on its own: into the
    // emptied queue, then with the messages left in it.
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(send_message(&stack).await?);
        drain(&stack).await?;
    }
    let send_empty = Stats::of(v);
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(send_message(&stack).await?);
    }
    let send_piling = Stats::of(v);
    let timeouts: usize = stack.all_exporters().map(|e| e.timeouts()).sum();
    anyhow::ensure!(timeouts == 0, "exporter timeouts");
    drop(stack);

    // serve (release binary), same database, authorization on, one exporter worker.
    let serve_log = integration_tests::temp_dir().join("serve.log");
    let storage = integration_tests::temp_dir();
    let mut child = Command::new(serve_bin)
        .args(["serve", "--port", "0", "--workers", "1"])
        .env("DATABASE_URL", &db.url)
        .env("STORAGE_PATH", &storage)
        .env("AUTH", "smart")
        .env(
            "TOKEN_SIGNING_KEY",
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&serve_log)?)
        .spawn()?;
    let serve = async {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        )?;
        let sbase = line
            .trim()
            .strip_prefix("FHIR base URL: ")
            .context("base url line")?
            .to_string();
        let mut w = Warm::default();
        let (stok0, _) = token(&http, &sbase, &serve_clients[0]).await;
        let (sjob, _) = kickoff(&http, &sbase, &stok0).await;
        manifest(&http, &sjob, &stok0).await;
        let mut v = Vec::new();
        for _ in 0..runs {
            v.push(token(&http, &sbase, &serve_clients[0]).await.1);
        }
        w.token = Stats::of(v);
        let mut v = Vec::new();
        for _ in 0..runs {
            v.push(status(&http, &sjob, &stok0, 200).await.1);
        }
        w.status = Stats::of(v);
        let stokens = tokens(&http, &sbase, &serve_clients[1..]).await;
        let mut v = Vec::new();
        for i in 0..runs {
            v.push(
                kickoff(&http, &sbase, &stokens[i / JOBS_PER_CLIENT])
                    .await
                    .1,
            );
        }
        w.kickoff = Stats::of(v);
        anyhow::Ok(w)
    }
    .await;
    child.kill().ok();
    child.wait().ok();
    let serve = serve?;

    // The table.
    println!();
    println!("cold start per function (init: the emulator's INIT REPORT; first invoke: wall time at the client, and inside the function from its REPORT line):");
    println!("| function | init ms | first invoke ms | inside the function ms | first invoke |");
    println!("|---|---:|---:|---:|---|");
    for r in &inits {
        let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        let (wall, what) = match &r.first {
            Some((t, what)) => (format!("{t:.1}"), what.clone()),
            None if r.function == "migrate" => {
                ("–".into(), "CloudFormation Create (the deploy)".into())
            }
            None => ("–".into(), "not invoked".into()),
        };
        println!(
            "| {} | {} | {wall} | {} | {what} |",
            r.function,
            f(r.init_ms),
            f(r.first_inside_ms)
        );
    }
    println!();
    println!("warm latency, ms p50 / p99 over {runs} requests (HTTP: wall time at the client, keep-alive):");
    println!("| route | Lambda via front door | Lambda direct invoke | inside the function (REPORT) | serve |");
    println!("|---|---:|---:|---:|---:|");
    let none = Stats::default();
    for (route, name, front, dir, srv) in [
        ("POST /auth/token", "token", lambda.token, none, serve.token),
        (
            "GET /$export?_type=Patient",
            "kickoff",
            lambda.kickoff,
            direct_kickoff,
            serve.kickoff,
        ),
        (
            "GET /$exportstatus (complete)",
            "status",
            lambda.status,
            direct_status,
            serve.status,
        ),
        (
            "SQS SendMessage to moto, emptied queue",
            "",
            none,
            send_empty,
            none,
        ),
        (
            "SQS SendMessage to moto, messages left in the queue",
            "",
            none,
            send_piling,
            none,
        ),
        (
            "GET /$exportfilerequest (307)",
            "file",
            lambda.file,
            none,
            none,
        ),
        (
            "exporter, scheduled, nothing to do",
            "exporter",
            none,
            exporter,
            none,
        ),
    ] {
        println!(
            "| {route} | {} | {} | {} | {} |",
            front.cell(),
            dir.cell(),
            inside.get(name).copied().unwrap_or_default().cell(),
            srv.cell()
        );
    }
    println!();
    println!("load average at the end: {}", loadavg());
    let worst_init = inits
        .iter()
        .filter_map(|r| r.init_ms.map(|i| (i, r.function.clone())))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    if let Some((i, f)) = worst_init {
        println!(
            "goal init < 100 ms per function: {} (slowest: {f}, {i:.1} ms)",
            verdict(i < 100.0)
        );
    }
    println!(
        "goal warm kick-off p99 < 25 ms: {} ({:.1} ms)",
        verdict(lambda.kickoff.p99 < 25.0),
        lambda.kickoff.p99
    );
    println!(
        "goal warm status p99 < 10 ms: {} ({:.1} ms)",
        verdict(lambda.status.p99 < 10.0),
        lambda.status.p99
    );
    Ok(())
}
