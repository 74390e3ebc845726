//! Status, cancellation and deletions: what a client is told about its job.

use super::*;

#[tokio::test]
async fn unknown_groups_jobs_and_files_are_404() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    outcome(
        kickoff(&c, &format!("{}/Group/nope/$export", server.base)).await,
        404,
    )
    .await;
    outcome(
        kickoff(&c, &format!("{}/Group/..%2F..%2Fx/$export", server.base)).await,
        404,
    )
    .await;
    let unknown = uuid::Uuid::new_v4();
    let file = "filename=Patient-0001.ndjson";
    for (method, path, status) in [
        (Method::GET, format!("/$exportstatus?_id={unknown}"), 404),
        (
            Method::GET,
            "/$exportstatus?_id=not-a-uuid".to_string(),
            404,
        ),
        (Method::GET, "/$exportstatus".to_string(), 400),
        (Method::DELETE, format!("/$exportstatus?_id={unknown}"), 404),
        (
            Method::GET,
            format!("/$exportfilerequest?_id={unknown}&{file}"),
            404,
        ),
        (Method::GET, "/nothing/here".to_string(), 404),
    ] {
        let url = format!("{}{path}", server.base);
        outcome(c.request(method, url).send().await.expect("req"), status).await;
    }
}

#[tokio::test]
async fn a_since_in_the_future_gives_an_empty_manifest_with_error_and_deleted_arrays() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    let resp = kickoff(
        &c,
        &format!("{}/$export?_since=2999-01-01T00:00:00Z", server.base),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let manifest: serde_json::Value = poll(&c, &status_url, Duration::from_secs(60))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(manifest["output"], serde_json::json!([]));
    assert_eq!(manifest["error"], serde_json::json!([]));
    assert_eq!(manifest["deleted"], serde_json::json!([]));
}

#[tokio::test]
async fn firely_compatibility_setting_answers_410_after_cancel() {
    let (server, _) = server_with(&[("CANCELLED_STATUS_CODE", "410")]).await;
    let c = http_client();
    let resp = kickoff(&c, &format!("{}/$export", server.base)).await;
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    assert_eq!(
        c.delete(&status_url).send().await.expect("req").status(),
        202
    );
    outcome(c.get(&status_url).send().await.expect("req"), 410).await;
}

#[tokio::test]
async fn since_exports_list_deletions_in_deleted_and_never_in_output() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // After `since`: pat-0 is updated, one of its Observations deleted by a Bundle DELETE entry,
    // and one Condition deleted through the CLI's library call.
    let dir = temp_dir();
    std::fs::write(
        dir.join("changes.json"),
        serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": "pat-0", "gender": "other"},
             "request": {"method": "PUT", "url": "Patient/pat-0"}},
            {"request": {"method": "DELETE", "url": "Observation/obs-0-0-0"}}]})
        .to_string(),
    )
    .expect("write");
    let report = shared::load::load_paths(&server.state.pool, &[dir], |_| {})
        .await
        .expect("load");
    assert_eq!((report.loaded, report.deleted), (1, 1));
    let n = shared::db::resources::delete_resources(
        &server.state.pool,
        &[
            ("Condition".into(), "cond-0".into()),
            ("Condition".into(), "missing".into()),
        ],
    )
    .await
    .expect("delete");
    assert_eq!(n, 1);

    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for path in ["/$export", "/Patient/$export"] {
        let resp = kickoff(&c, &format!("{}{path}?_since={since}", server.base)).await;
        let manifest = manifest_of(&c, resp).await;
        let output = download_counts(&c, &manifest, "output").await;
        assert_eq!(
            output,
            [("Patient".to_string(), 1)].into(),
            "{path}: only the updated Patient"
        );
        let deleted = manifest["deleted"].as_array().expect("deleted[]");
        let mut urls = Vec::new();
        for entry in deleted {
            assert_eq!(entry["type"], "Bundle");
            let text = c
                .get(entry["url"].as_str().expect("url"))
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("body");
            for line in text.lines() {
                let b: serde_json::Value = serde_json::from_str(line).expect("json");
                assert_eq!(b["type"], "transaction");
                assert_eq!(b["entry"][0]["request"]["method"], "DELETE");
                urls.push(
                    b["entry"][0]["request"]["url"]
                        .as_str()
                        .expect("url")
                        .to_string(),
                );
            }
        }
        urls.sort();
        assert_eq!(
            urls,
            vec!["Condition/cond-0", "Observation/obs-0-0-0"],
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_polling_hard_never_holds_up_its_export() {
    // RepeatPeriod of a minute: only the kick-off's wake-up can start these exports in time.
    let (server, data) =
        server_with(&[("REPEAT_PERIOD", "60000"), ("MIN_POLL_INTERVAL_MS", "1")]).await;
    let c = http_client();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let resp = kickoff(&c, &format!("{}/$export?_type=Patient", server.base)).await;
        assert_eq!(resp.status(), 202);
        let status_url = resp.headers()["content-location"]
            .to_str()
            .expect("loc")
            .to_string();
        // Poll as fast as possible, as impatient clients would (three at once).
        let pollers: Vec<_> = (0..2)
            .map(|_| {
                let (c, url) = (c.clone(), status_url.clone());
                tokio::spawn(async move {
                    for _ in 0..200 {
                        if c.get(&url)
                            .send()
                            .await
                            .map(|r| r.status() == 200)
                            .unwrap_or(true)
                        {
                            break;
                        }
                    }
                })
            })
            .collect();
        let manifest: serde_json::Value = loop {
            let r = c.get(&status_url).send().await.expect("poll");
            if r.status() == 200 {
                break r.json().await.expect("manifest");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the export waited for the RepeatPeriod"
            );
        };
        for p in pollers {
            p.abort();
        }
        assert_eq!(
            download_counts(&c, &manifest, "output").await["Patient"],
            data.patient_ids().len()
        );
    }
}
