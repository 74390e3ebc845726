//! What bulk-export says when a command cannot run: one clean error with the fix.

use super::*;

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
