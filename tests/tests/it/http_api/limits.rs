//! Limits at the door: over-polling, running and kept exports per client, hostile and slow requests.

use super::*;

#[tokio::test]
async fn over_polling_and_too_many_running_exports_get_429_with_retry_after() {
    let (server, _) = server_with(&[
        ("MIN_POLL_INTERVAL_MS", "60000"),
        ("MAX_CONCURRENT_EXPORTS", "2"),
    ])
    .await;
    let c = http_client();
    let url = format!("{}/$export", server.base);
    let first = kickoff(&c, &url).await;
    assert_eq!(first.status(), 202);
    let status_url = first.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let second = kickoff(&c, &url).await;
    assert_eq!(second.status(), 202);
    // Both may already be done: make them running again, leased to an exporter elsewhere.
    let pool = &server.state.pool;
    let client = pool.get().await.expect("conn");
    client
        .execute(
            "UPDATE export_jobs SET status = 'Active', lease_owner = 'elsewhere',
                 lease_expires_at = now() + interval '1 hour', completed_at = NULL, expires_at = NULL
             WHERE true",
            &[],
        )
        .await
        .expect("hold jobs");
    let third = kickoff(&c, &url).await;
    let retry: u64 = third.headers()["retry-after"]
        .to_str()
        .expect("ra")
        .parse()
        .expect("int");
    assert!(retry > 0);
    let oo = outcome(third, 429).await;
    assert_eq!(oo["issue"][0]["code"], "throttled");

    let poll1 = c.get(&status_url).send().await.expect("poll");
    assert_eq!(poll1.status(), 202);
    let poll2 = c.get(&status_url).send().await.expect("poll");
    assert_eq!(poll2.headers()["retry-after"], "2");
    outcome(poll2, 429).await;
}

#[tokio::test]
async fn oversized_and_hostile_requests_get_4xx_operation_outcomes() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    let base = &server.base;
    let big_body = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,".repeat(200_000)}]})
    .to_string();
    let resp = c
        .post(format!("{base}/$export"))
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(big_body)
        .send()
        .await
        .expect("req");
    outcome(resp, 413).await;
    let long_uri = format!("{base}/$export?_type={}", "Patient,".repeat(3_000));
    outcome(kickoff(&c, &long_uri).await, 414).await;
    let resp = c
        .get(format!("{base}/$export"))
        .header("Prefer", "respond-async")
        .header("X-Padding", "x".repeat(20_000))
        .send()
        .await
        .expect("req");
    outcome(resp, 431).await;

    // Injection and traversal attempts never reach SQL or storage keys as such.
    for query in [
        "_type=Patient';DROP TABLE resources;--",
        "_since=2020-01-01T00:00:00Z';--",
        "_typeFilter=Patient%3Fname%3D'%20OR%201%3D1--%26_sort%3Dx",
        "_elements=id;DROP",
    ] {
        let resp = kickoff(&c, &format!("{base}/$export?{query}")).await;
        outcome(resp, 400).await;
    }
    let resp = kickoff(&c, &format!("{base}/$export?_type=Patient")).await;
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let id = status_url.rsplit('=').next().expect("id").to_string();
    for file in [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "Patient-0001.ndjson%00",
        "",
    ] {
        let resp = c
            .get(format!(
                "{base}/$exportfilerequest?_id={id}&filename={file}"
            ))
            .send()
            .await
            .expect("req");
        assert!(
            resp.status() == 404 || resp.status() == 400,
            "{file}: {}",
            resp.status()
        );
    }
    for bad_id in ["../x", "1 OR 1=1", "00000000-0000-0000-0000-000000000000"] {
        let resp = c
            .get(format!("{base}/$exportstatus?_id={bad_id}"))
            .send()
            .await
            .expect("req");
        outcome(resp, 404).await;
    }
    // The data is all still there.
    let n: i64 = server
        .state
        .pool
        .get()
        .await
        .expect("conn")
        .query_one("SELECT count(*) FROM resources", &[])
        .await
        .expect("count")
        .get(0);
    assert!(n > 0);
}

/// The running-exports limit is exact under concurrent kick-offs: the count and the insert
/// share one transaction under the client's lock (before, each kick-off counted, then
/// inserted, and a burst got past the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_running_exports_limit_holds_under_concurrent_kickoffs() {
    let db = TestDb::new().await;
    let params = shared::export::ExportParams::default();
    let limits = shared::db::jobs::JobLimits {
        running: 3,
        stored: 100,
    };
    let attempts = (0..16).map(|_| {
        let pool = db.pool.clone();
        let params = params.clone();
        tokio::spawn(async move {
            shared::db::jobs::insert_job(
                &pool,
                shared::db::jobs::NewJob {
                    level: shared::export::ExportLevel::System,
                    group_id: None,
                    params: &params,
                    request_url: "http://test/$export",
                    client_id: Some("burst"),
                },
                limits,
            )
            .await
            .expect("db")
            .is_ok()
        })
    });
    let accepted = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().expect("task"))
        .count();
    assert_eq!(accepted, 3);
}

/// Kept exports count too: a client at MAX_STORED_EXPORTS gets 429 until it deletes one.
#[tokio::test]
async fn kept_exports_are_capped_per_client_until_one_is_deleted() {
    let (server, _) = server_with(&[("MAX_STORED_EXPORTS", "2")]).await;
    let c = http_client();
    let url = format!("{}/$export?_type=Patient", server.base);
    let mut status_urls = Vec::new();
    for _ in 0..2 {
        let resp = kickoff(&c, &url).await;
        assert_eq!(resp.status(), 202);
        let status_url = resp.headers()["content-location"]
            .to_str()
            .expect("loc")
            .to_string();
        assert_eq!(
            poll(&c, &status_url, Duration::from_secs(60))
                .await
                .status(),
            200
        );
        status_urls.push(status_url);
    }
    let third = kickoff(&c, &url).await;
    let oo = outcome(third, 429).await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("DELETE")),
        "{oo}"
    );
    let deleted = c.delete(&status_urls[0]).send().await.expect("delete");
    assert_eq!(deleted.status(), 202);
    assert_eq!(kickoff(&c, &url).await.status(), 202);
}

/// Slow clients cannot hold `serve`: request headers and bodies have deadlines, and
/// connections beyond the cap are closed at once instead of exhausting file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let (server, _) = server_with(&[
        ("SERVE_HEADER_TIMEOUT_SECONDS", "1"),
        ("SERVE_BODY_TIMEOUT_SECONDS", "1"),
        ("SERVE_MAX_CONNECTIONS", "4"),
    ])
    .await;
    let addr = server.base.trim_start_matches("http://").to_string();
    // What the server sends before closing (empty: closed without an answer).
    async fn answer(s: &mut TcpStream, within: Duration) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Err(_) => panic!("the server kept the connection open: {out:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET /metadata HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("half a request");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /metadata HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(
        answer(&mut extra, Duration::from_secs(2)).await,
        "",
        "a fifth connection is closed at once"
    );
    for s in &mut slow {
        let got = answer(s, Duration::from_secs(5)).await;
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 408"),
            "header deadline: {got}"
        );
    }
    // The slots are free again.
    let ok = http_client()
        .get(format!("{}/metadata", server.base))
        .send()
        .await
        .expect("metadata");
    assert_eq!(ok.status(), 200);

    // A body that never completes gets 408 with an OperationOutcome.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(
        b"POST /$export HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\nPrefer: respond-async\r\n\r\n{\"resou",
    )
    .await
    .expect("partial body");
    let got = answer(&mut s, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("OperationOutcome"), "{got}");
}
