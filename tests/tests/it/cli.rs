//! What a newcomer sees from `bulk-export` when something is wrong: one clear line naming what
//! failed and what to do, no backtrace (even with RUST_BACKTRACE set), no colour escapes when
//! the output is not a terminal, and each subcommand's --help naming its environment.

use integration_tests::{bulk_export_bin, free_port, local_server, wait_listening, TestDb};

/// Runs `bulk-export args` with `env`, as a developer machine would (RUST_BACKTRACE=1).
async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bulk_export_bin())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("bulk-export runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_clean_error(stderr: &str) {
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour escapes: {stderr:?}");
}

#[tokio::test]
async fn an_unreachable_database_is_named_once_with_the_fix() {
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/fhir_bulk");
    let (code, _, err) = run(&["migrate"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(code, 1);
    assert_one_clean_error(&err);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("\"fhir_bulk\""),
        "{err}"
    );
    assert!(
        err.contains("Is PostgreSQL running") && err.contains("run-local.sh"),
        "{err}"
    );
    assert_eq!(err.matches("connection refused").count(), 1, "{err}");

    let admin = integration_tests::admin_url();
    let missing = format!(
        "{}/bulkt_missing_{}",
        admin.rsplit_once('/').expect("db path").0,
        uuid::Uuid::new_v4().simple()
    );
    let (code, _, err) = run(&["client", "list"], &[("DATABASE_URL", &missing)]).await;
    assert_eq!(code, 1);
    assert_one_clean_error(&err);
    assert!(
        err.contains("does not exist") && err.contains("createdb"),
        "{err}"
    );
}

#[tokio::test]
async fn migrate_is_quiet_when_up_to_date() {
    let db = TestDb::new().await;
    let (code, out, err) = run(&["migrate"], &[("DATABASE_URL", &db.url)]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "database is up to date");
    assert!(!err.contains("NOTICE"), "{err}");
}

#[tokio::test]
async fn a_port_in_use_names_the_port_and_how_to_choose_another() {
    let db = TestDb::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let (code, _, err) = run(
        &["serve", "--port", &port, "--insecure"],
        &[("DATABASE_URL", &db.url)],
    )
    .await;
    assert_eq!(code, 1);
    assert_one_clean_error(&err);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("PORT="),
        "{err}"
    );
}

#[tokio::test]
async fn token_url_that_is_no_token_endpoint_says_what_was_expected() {
    let (server, _data) = local_server(
        1,
        &[
            ("AUTH", "smart"),
            ("TOKEN_SIGNING_KEY", "cli-test-signing-key-0123456789abcdef"),
        ],
    )
    .await;
    let keys = integration_tests::temp_dir().join("k");
    let (code, _, err) = run(
        &["client", "keygen", "--out", keys.to_str().expect("utf8")],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let key = keys.join("private.pem");
    let key = key.to_str().expect("utf8");
    // The FHIR base instead of its token endpoint: the server's smart-configuration names it.
    let (code, _, err) = run(
        &[
            "client",
            "token",
            "--client-id",
            "c",
            "--key",
            key,
            "--token-url",
            &server.base,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1);
    assert_one_clean_error(&err);
    assert!(
        err.contains(&format!("use --token-url {}/auth/token", server.base)),
        "{err}"
    );
    // Something that is no FHIR server at all.
    let (code, _, err) = run(
        &[
            "client",
            "token",
            "--client-id",
            "c",
            "--key",
            key,
            "--token-url",
            &format!("http://127.0.0.1:{}/", free_port()),
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1);
    assert_one_clean_error(&err);
    assert!(
        err.contains("must be the server's token endpoint") && err.contains("/auth/token"),
        "{err}"
    );
}

#[tokio::test]
async fn every_subcommand_help_lists_the_environment_it_reads() {
    for args in [
        &["migrate", "--help"][..],
        &["load", "--help"],
        &["delete", "--help"],
        &["serve", "--help"],
        &["client", "add", "--help"],
        &["client", "list", "--help"],
        &["client", "remove", "--help"],
    ] {
        let (code, out, _) = run(args, &[]).await;
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("DATABASE_URL"), "{args:?}: {out}");
    }
    let (_, out, _) = run(&["serve", "--help"], &[]).await;
    for var in ["STORAGE_PATH", "PUBLIC_BASE_URL", "AUTH", "PORT"] {
        assert!(out.contains(var), "serve --help lists {var}: {out}");
    }
}

/// Operators see what clients are not told: `bulk-export jobs` lists jobs with their internal
/// error, and `bulk-export jobs ID` shows both messages.
#[tokio::test]
async fn jobs_lists_and_shows_the_internal_error_of_a_failed_export() {
    let db = TestDb::new().await;
    let id = uuid::Uuid::new_v4();
    db.pool
        .get()
        .await
        .expect("conn")
        .execute(
            "INSERT INTO export_jobs (id, level, params, request_url, client_id, transaction_time,
                 status, attempts, error, public_error, completed_at)
             VALUES ($1, 'system', '{\"_outputFormat\": \"ndjson\"}', 'http://h/$export', 'c1',
                     now(), 'Failed', 3, 'local storage I/O on \"/srv/exports/x\": Not a directory',
                     'writing the export files failed', now())",
            &[&id],
        )
        .await
        .expect("insert");
    let (code, out, err) = run(&["jobs"], &[("DATABASE_URL", &db.url)]).await;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .expect("the job is listed");
    assert!(
        line.contains("Failed") && line.contains("c1") && line.contains("/srv/exports/x"),
        "{line}"
    );
    let (code, out, err) = run(&["jobs", &id.to_string()], &[("DATABASE_URL", &db.url)]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Not a directory"), "{out}");
    assert!(
        out.contains("client is told: writing the export files failed"),
        "{out}"
    );
}

/// `serve` writes one access-log line per request: method, route pattern, status, duration and
/// the client id of a valid token (`-` without one), never the token or the job id.
#[tokio::test]
async fn serve_logs_one_access_line_per_request_without_tokens() {
    let db = TestDb::new().await;
    let port = free_port();
    let key = "access-log-test-signing-key-0123456789abcdef";
    let mut child = tokio::process::Command::new(bulk_export_bin())
        .args(["serve", "--port", &port.to_string(), "--workers", "1"])
        .env("DATABASE_URL", &db.url)
        .env("AUTH", "smart")
        .env("TOKEN_SIGNING_KEY", key)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("serve");
    wait_listening(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let metadata = http
        .get(format!("{base}/metadata"))
        .send()
        .await
        .expect("metadata");
    assert_eq!(metadata.status(), 200);
    let token = shared::auth::issue_access_token(
        key.as_bytes(),
        &base,
        "log-client",
        "system/*.read",
        std::time::Duration::from_secs(60),
    )
    .expect("token");
    let job = uuid::Uuid::new_v4();
    let with_token = http
        .get(format!("{base}/$exportstatus?_id={job}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("status");
    // An unregistered client: its token is valid, the client is not (401), and the log says who.
    assert_eq!(with_token.status(), 401);
    let without = http
        .get(format!("{base}/Group/g-secret-id/$export"))
        .send()
        .await
        .expect("kickoff");
    assert_eq!(without.status(), 401);
    child.start_kill().expect("kill");
    let out = child.wait_with_output().await.expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let access: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    let line = |route: &str| {
        access
            .iter()
            .find(|v| v["fields"]["route"] == route)
            .unwrap_or_else(|| panic!("no access line for {route}: {stderr}"))
            .clone()
    };
    let status = line("/$exportstatus");
    assert_eq!(status["fields"]["method"], "GET");
    assert_eq!(status["fields"]["status"], 401);
    assert_eq!(status["fields"]["client_id"], "log-client");
    assert!(status["fields"]["duration_ms"].is_u64());
    let kickoff = line("/Group/{id}/$export");
    assert_eq!(kickoff["fields"]["client_id"], "-");
    assert_eq!(kickoff["fields"]["status"], 401);
    assert!(line("/metadata")["fields"]["status"] == 200);
    assert!(!stderr.contains(&token), "a token in the log");
    // Routes are patterns: no id of the request's path in an access line.
    assert!(!access.iter().any(|v| v.to_string().contains("g-secret-id")));
    assert!(!access
        .iter()
        .any(|v| v.to_string().contains(&job.to_string())));
}

/// An operator's view of jobs: `bulk-export jobs ID` shows the state, client, progress, counts,
/// duration and the internal error of a failed job; `--retry` resumes a Failed job (same
/// transaction time, exported in full afterwards); `--cancel` cancels one.
#[tokio::test]
async fn jobs_shows_retries_and_cancels_an_export() {
    use std::sync::Arc;
    use std::time::Duration;

    let (db, data) = TestDb::with_generated(2).await;
    let dir = integration_tests::temp_dir();
    let store: Arc<dyn shared::storage::ObjectStore> =
        Arc::new(shared::storage::local::LocalStore::new(dir.clone()).expect("store"));
    let cfg = integration_tests::config(&db, shared::config::StoragePath::Local(dir));
    // No exporter yet: jobs stay Queued.
    let idle = integration_tests::Server::start_with_workers(
        cfg.clone(),
        db.pool.clone(),
        store.clone(),
        0,
    )
    .await;
    let http = integration_tests::http_client();
    let started = integration_tests::kickoff(&http, &format!("{}/$export", idle.base)).await;
    assert_eq!(started.status(), 202);
    let status_url = started.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let id: uuid::Uuid = status_url
        .rsplit('=')
        .next()
        .expect("id")
        .parse()
        .expect("uuid");
    let failed = shared::db::jobs::fail_job(
        &db.pool,
        id,
        None,
        &shared::db::jobs::JobError {
            internal: "S3 PutObject: connection reset by peer".into(),
            public: "the export could not be written".into(),
        },
        Duration::from_secs(3600),
    )
    .await
    .expect("fail");
    assert!(failed);

    let env = [("DATABASE_URL", db.url.as_str())];
    let (code, out, err) = run(&["jobs", &id.to_string()], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("status:         Failed"), "{out}");
    assert!(
        out.contains("error:          S3 PutObject: connection reset by peer"),
        "{out}"
    );
    assert!(
        out.contains("client is told: the export could not be written"),
        "{out}"
    );
    assert!(out.contains("duration:"), "{out}");
    let (code, out, _) = run(&["jobs"], &env).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id.to_string()) && l.contains("Failed")),
        "{out}"
    );

    let (code, out, err) = run(&["jobs", &id.to_string(), "--retry"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued again"), "{out}");
    // Only a Failed job can be retried.
    let (code, _, err) = run(&["jobs", &id.to_string(), "--retry"], &env).await;
    assert_eq!(code, 1);
    assert!(err.contains("is not a Failed job"), "{err}");

    // An exporter picks the retried job up; it completes with every resource.
    let worker =
        integration_tests::Server::start_with_workers(cfg, db.pool.clone(), store, 1).await;
    let done = integration_tests::poll(&http, &status_url, Duration::from_secs(60)).await;
    assert_eq!(done.status(), 200);
    let (code, out, err) = run(&["jobs", &id.to_string()], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("status:         Complete"), "{out}");
    assert!(out.contains("error:          -"), "{out}");
    let total: usize = data.count_by_type().values().sum();
    assert!(
        out.contains(&format!("exported:       {total} resources")),
        "{out}"
    );

    // --cancel: a finished job is deleted (its files purged later), as a client's DELETE does.
    let (code, out, err) = run(&["jobs", &id.to_string(), "--cancel"], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancellation requested"), "{out}");
    let gone = http.get(&status_url).send().await.expect("status");
    assert_eq!(gone.status(), 404);
    let (code, _, err) = run(&["jobs", &id.to_string(), "--cancel"], &env).await;
    assert_eq!(code, 1);
    assert!(err.contains("already cancelled or deleted"), "{err}");
    drop((idle, worker));
}

/// `serve`'s `GET /metrics`: the service metrics in the OpenMetrics text format, exact after one
/// export (a process of its own, so nothing else counts).
#[tokio::test]
async fn serve_metrics_count_an_export_exactly() {
    let (db, data) = TestDb::with_generated(3).await;
    let port = free_port();
    let dir = integration_tests::temp_dir();
    let mut child = tokio::process::Command::new(bulk_export_bin())
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--insecure",
            "--workers",
            "2",
        ])
        .env("DATABASE_URL", &db.url)
        .env("STORAGE_PATH", &dir)
        .env("REPEAT_PERIOD", "200")
        // poll() asks every 100 ms.
        .env("MIN_POLL_INTERVAL_MS", "50")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("serve");
    wait_listening(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = integration_tests::http_client();
    let resp = integration_tests::kickoff(&http, &format!("{base}/$export")).await;
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let done =
        integration_tests::poll(&http, &status_url, std::time::Duration::from_secs(60)).await;
    assert_eq!(done.status(), 200);
    let manifest: serde_json::Value = done.json().await.expect("manifest");
    let id: uuid::Uuid = status_url
        .rsplit('=')
        .next()
        .expect("id")
        .parse()
        .expect("uuid");
    let files = shared::db::files::select_files(&db.pool, id)
        .await
        .expect("files");
    let output = files
        .iter()
        .filter(|f| f.kind == shared::export::manifest::FileKind::Output);
    let bytes: i64 = output.clone().map(|f| f.byte_count).sum();
    let total: usize = data.count_by_type().values().sum();
    assert_eq!(
        manifest["output"].as_array().expect("output").len(),
        output.count()
    );

    let resp = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("application/openmetrics-text"));
    let text = resp.text().await.expect("text");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .expect("number")
    };
    assert_eq!(value("bulk_exports_started_total{level=\"system\"}"), 1.0);
    assert_eq!(value("bulk_exports_completed_total"), 1.0);
    assert_eq!(value("bulk_exports_failed_total"), 0.0);
    assert_eq!(value("bulk_resources_exported_total"), total as f64);
    assert_eq!(value("bulk_bytes_exported_total"), bytes as f64);
    assert_eq!(value("bulk_export_duration_seconds_count"), 1.0);
    assert_eq!(value("bulk_export_queue_latency_seconds_count"), 1.0);
    assert!(text.ends_with("# EOF\n"));
    child.start_kill().expect("kill");
}
