//! TLS to Postgres through DATABASE_URL's `sslmode`/`sslrootcert`, against the local server
//! (Debian's PostgreSQL serves TLS with its snakeoil certificate for `localhost`).

use integration_tests::admin_url;
use shared::db::{self, DbError};

/// Whether the pool's connection is encrypted (pg_stat_ssl).
async fn ssl_in_use(url: &str) -> Result<bool, DbError> {
    let pool = db::pool(url, 1)?;
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The server's certificate file, after checking that it serves TLS at all.
async fn server_certificate() -> String {
    let plain = admin_url();
    let pool = db::pool(&plain, 1).expect("pool");
    let client = pool.get().await.expect("connect");
    let ssl: String = client
        .query_one("SHOW ssl", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(
        ssl, "on",
        "the test Postgres must have ssl = on (Debian's default, with its snakeoil certificate)"
    );
    client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .expect("show")
        .get(0)
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

#[tokio::test]
async fn sslmode_in_database_url_decides_tls_and_verification() {
    let cert = server_certificate().await;
    let admin = admin_url();
    // The certificate names `localhost`.
    let localhost = admin.replace("127.0.0.1", "localhost");

    assert!(
        !ssl_in_use(&admin).await.expect("plain"),
        "no sslmode: plain TCP"
    );
    assert!(ssl_in_use(&with_query(&admin, "sslmode=require"))
        .await
        .expect("require: encrypted without verification"));
    assert!(ssl_in_use(&with_query(
        &localhost,
        &format!("sslmode=verify-full&sslrootcert={cert}")
    ))
    .await
    .expect("verify-full against the server's own certificate"));

    // Roots that did not sign the server's certificate (a self-signed snakeoil one): refused.
    // (tests/fixtures/tls/other-ca.pem: a self-signed test CA that signed nothing.)
    let other_roots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls/other-ca.pem");
    let untrusted = ssl_in_use(&with_query(
        &localhost,
        &format!("sslmode=verify-full&sslrootcert={}", other_roots.display()),
    ))
    .await;
    assert!(
        untrusted.is_err(),
        "a certificate from an unknown CA must be refused"
    );
    // 127.0.0.1 is not the certificate's name.
    let wrong_name = ssl_in_use(&with_query(
        &admin,
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    ))
    .await;
    assert!(
        wrong_name.is_err(),
        "a certificate for another host must be refused"
    );
    // require + sslrootcert verifies (the libpq rule).
    let require_checked = ssl_in_use(&with_query(
        &admin,
        &format!("sslmode=require&sslrootcert={cert}"),
    ))
    .await;
    assert!(
        require_checked.is_err(),
        "require with a root certificate verifies the host"
    );
}
