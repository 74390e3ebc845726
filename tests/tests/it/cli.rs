//! What a newcomer sees from `bulk-export` when something is wrong: one clear line naming what
//! failed and what to do, no backtrace (even with RUST_BACKTRACE set), no colour escapes when
//! the output is not a terminal, and each subcommand's --help naming its environment.

use integration_tests::{bulk_export_bin, local_server, TestDb};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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
