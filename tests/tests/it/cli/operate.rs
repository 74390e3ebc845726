//! Operating serve: jobs (list, show, retry, cancel), the access log and metrics.

use super::*;

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
    let key = "access-log-test-signing-key-0123456789abcdef";
    let (mut child, base) = spawn_serve(
        &["--workers", "1"],
        &[
            ("DATABASE_URL", &db.url),
            ("AUTH", "smart"),
            ("TOKEN_SIGNING_KEY", key),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ],
        true,
    )
    .await;
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
    let id = integration_tests::job_id_of(&status_url);
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
    // The deleted export is shown as deleted, its files as gone, not counted.
    let (code, out, err) = run(&["jobs", &id.to_string()], &env).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("status:         Complete, deleted ") && out.contains("files removed"),
        "{out}"
    );
    assert!(
        out.contains("exported:       - (the files were removed)") && !out.contains(" files\n"),
        "{out}"
    );
    let (code, out, _) = run(&["jobs"], &env).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id.to_string()) && l.contains("Complete (deleted)")),
        "{out}"
    );
    drop((idle, worker));
}

/// `serve`'s `GET /metrics`: the service metrics in the OpenMetrics text format, exact after one
/// export (a process of its own, so nothing else counts).
#[tokio::test]
async fn serve_metrics_count_an_export_exactly() {
    let (db, data) = TestDb::with_generated(3).await;
    let dir = integration_tests::temp_dir();
    let (mut child, base) = spawn_serve(
        &["--insecure", "--workers", "2"],
        &[
            ("DATABASE_URL", &db.url),
            ("STORAGE_PATH", &dir.display().to_string()),
            ("REPEAT_PERIOD", "200"),
            // poll() asks every 100 ms.
            ("MIN_POLL_INTERVAL_MS", "50"),
        ],
        false,
    )
    .await;
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
    let id = integration_tests::job_id_of(&status_url);
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
