//! The HTTP contract over real HTTP (`bulk-export serve` in-process): errors are 4xx with an
//! OperationOutcome, headers and bodies follow the Bulk Data IG and Firely.

use std::time::Duration;

use integration_tests::{
    download_counts, http_client, kickoff, manifest_of, poll, temp_dir, Server, TestDb, TestServer,
};
use reqwest::Method;

async fn server_with(
    extra: &[(&'static str, &'static str)],
) -> (Server, integration_tests::data::DataSet) {
    let (db, data) = TestDb::with_generated(10).await;
    (TestServer::on(db).envs(extra).start().await, data)
}

async fn outcome(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(body["issue"][0]["diagnostics"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    body
}

#[tokio::test]
async fn kickoff_refuses_bad_parameters_with_400_operation_outcomes() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    for (query, needle) in [
        ("_type=Patient,Foo", "Foo"),
        ("_since=2020-01-01", "instant"),
        ("_since=yesterday", "instant"),
        ("_outputFormat=text/csv", "_outputFormat"),
        ("_count=5", "_count"),
        (
            "_typeFilter=Observation%3Fstatus%3Dfinal%26_sort%3Ddate",
            "_typeFilter",
        ),
        ("_elements=Patient.nope", "_elements"),
        ("_until=2020-01-01", "_until"),
        ("organizeOutputBy=Patient", "organizeOutputBy"),
        ("patient=Patient/pat-1", "patient"),
        ("_type=", "_type"),
    ] {
        let resp = kickoff(&c, &format!("{}/$export?{query}", server.base)).await;
        let oo = outcome(resp, 400).await;
        let diag = oo["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        assert!(diag.contains(needle), "{query}: {diag}");
    }
    let resp = kickoff(
        &c,
        &format!("{}/Patient/$export?_type=Practitioner", server.base),
    )
    .await;
    outcome(resp, 400).await;
}

#[tokio::test]
async fn kickoff_checks_its_headers() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    let url = format!("{}/$export", server.base);
    let no_prefer = c
        .get(&url)
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .expect("req");
    outcome(no_prefer, 400).await;
    let wrong_accept = c
        .get(&url)
        .header("Accept", "text/html")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("req");
    outcome(wrong_accept, 406).await;
    // Prefer is a list; a missing Accept is tolerated.
    let ok = c
        .get(&url)
        .header("Prefer", "handling=lenient, respond-async")
        .send()
        .await
        .expect("req");
    assert_eq!(ok.status(), 202);
    let put = c
        .put(&url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("req");
    assert_eq!(
        put.headers()["allow"],
        "GET, POST",
        "a 405 says what the path has"
    );
    outcome(put, 405).await;
}

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
async fn files_are_served_as_fhir_ndjson_and_other_accept_headers_get_406() {
    let (server, data) = server_with(&[]).await;
    let c = http_client();
    let manifest = integration_tests::kick_off_and_wait(
        &c,
        &format!("{}/$export?_type=Patient&_type=Condition", server.base),
    )
    .await;
    let counts = download_counts(&c, &manifest, "output").await;
    assert_eq!(
        counts.get("Patient").copied(),
        Some(data.patient_ids().len())
    );
    assert_eq!(
        counts.get("Condition").copied(),
        Some(data.count_by_type()["Condition"])
    );
    assert_eq!(counts.len(), 2, "repeated _type parameters are joined");

    let url = manifest["output"][0]["url"].as_str().expect("url");
    let plain = c.get(url).send().await.expect("req");
    assert_eq!(plain.status(), 200, "no Accept header is fine");
    assert_eq!(plain.headers()["content-type"], "application/fhir+ndjson");
    let wrong = c
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
        .expect("req");
    outcome(wrong, 406).await;
    let traversal = c
        .get(format!(
            "{}&filename=../../etc/passwd",
            url.split("&filename=").next().expect("base")
        ))
        .send()
        .await
        .expect("req");
    outcome(traversal, 404).await;
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
async fn metadata_is_a_bulk_data_capability_statement() {
    let (server, _) = server_with(&[]).await;
    let cs =
        integration_tests::fhir_json(http_client().get(format!("{}/metadata", server.base)), 200)
            .await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(
        cs["instantiates"][0],
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    );
    let rest = &cs["rest"][0];
    assert_eq!(
        rest["operation"][0]["definition"],
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    );
    let op_of = |t: &str| {
        rest["resource"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["type"] == t)
            .map(|r| r["operation"][0]["definition"].clone())
    };
    assert_eq!(
        op_of("Patient"),
        Some(serde_json::json!(
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
        ))
    );
    assert_eq!(
        op_of("Group"),
        Some(serde_json::json!(
            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
        ))
    );
    // The search parameters _typeFilter can use, per type, from the R4 definitions.
    let params_of = |t: &str| -> Vec<(String, String)> {
        rest["resource"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["type"] == t)
            .and_then(|r| r["searchParam"].as_array())
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or("").to_string(),
                            p["type"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let obs = params_of("Observation");
    for (name, kind) in [
        ("category", "token"),
        ("date", "date"),
        ("subject", "reference"),
        ("value-quantity", "quantity"),
        ("value-string", "string"),
        ("_lastUpdated", "date"),
    ] {
        assert!(
            obs.contains(&(name.to_string(), kind.to_string())),
            "Observation {name}"
        );
    }
    assert!(
        !obs.iter().any(|(n, _)| n == "code-value-quantity"),
        "composite parameters are not listed"
    );
    assert!(params_of("Patient")
        .iter()
        .any(|(n, _)| n == "_lastUpdated"));
    let doc = rest["documentation"].as_str().unwrap_or("");
    for word in [
        "_typeFilter",
        "_elements",
        "includeAssociatedData",
        "SUBSETTED",
    ] {
        assert!(doc.contains(word), "documentation mentions {word}");
    }
}

async fn post_kickoff(
    c: &reqwest::Client,
    url: &str,
    prefer: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    c.post(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", prefer)
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST kick-off")
}

#[tokio::test]
async fn post_kickoff_takes_a_parameters_body_at_every_level() {
    let (server, data) = server_with(&[]).await;
    let c = http_client();
    let url = format!("{}/$export", server.base);
    let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}]});
    let manifest = manifest_of(&c, post_kickoff(&c, &url, "respond-async", body).await).await;
    assert_eq!(
        manifest["request"], url,
        "POST: the kick-off URL without the body's parameters"
    );
    let counts = download_counts(&c, &manifest, "output").await;
    assert_eq!(counts.len(), 1);
    assert_eq!(counts["Patient"], data.patient_ids().len());

    // Group level with `patient`: only that member's compartment.
    let group_url = format!("{}/Group/group-even/$export", server.base);
    let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/pat-2"}}]});
    let manifest = manifest_of(
        &c,
        post_kickoff(&c, &group_url, "respond-async", body).await,
    )
    .await;
    let counts = download_counts(&c, &manifest, "output").await;
    let one: std::collections::BTreeSet<String> = ["pat-2".to_string()].into();
    let expected: std::collections::BTreeMap<String, usize> = data
        .expected_compartment_export(&one)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(counts, expected);
    assert_eq!(counts["Patient"], 1);

    // Patient level with two patients, GET form of `patient` accepted too.
    let resp = kickoff(
        &c,
        &format!(
            "{}/Patient/$export?patient=Patient/pat-1,pat-3&_type=Patient",
            server.base
        ),
    )
    .await;
    let manifest = manifest_of(&c, resp).await;
    assert_eq!(download_counts(&c, &manifest, "output").await["Patient"], 2);
}

#[tokio::test]
async fn patients_that_are_unknown_or_outside_the_group_are_refused_unless_lenient() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    let group_url = format!("{}/Group/group-even/$export", server.base);
    let odd = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/pat-1"}},
        {"name": "patient", "valueReference": {"reference": "Patient/pat-2"}}]});
    let oo = outcome(
        post_kickoff(&c, &group_url, "respond-async", odd.clone()).await,
        400,
    )
    .await;
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .contains("pat-1"));
    let ghost = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/ghost"}}]});
    outcome(
        post_kickoff(
            &c,
            &format!("{}/Patient/$export", server.base),
            "respond-async",
            ghost,
        )
        .await,
        400,
    )
    .await;

    // Lenient: the export goes on with pat-2 and reports pat-1 in error[].
    let resp = post_kickoff(&c, &group_url, "respond-async, handling=lenient", odd).await;
    let manifest = manifest_of(&c, resp).await;
    assert_eq!(download_counts(&c, &manifest, "output").await["Patient"], 1);
    let errors = manifest["error"].as_array().expect("error[]");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["type"], "OperationOutcome");
    let text = c
        .get(errors[0]["url"].as_str().expect("url"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    let oo: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .contains("pat-1"));
}

#[tokio::test]
async fn lenient_handling_ignores_unknown_parameters_and_types_and_reports_each() {
    let (server, data) = server_with(&[]).await;
    let c = http_client();
    let url = format!(
        "{}/$export?_type=Patient,Unicorn&_count=5&_typeFilter=Unicorn%3Fx%3D1",
        server.base
    );
    outcome(kickoff(&c, &url).await, 400).await;
    let resp = c
        .get(&url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .send()
        .await
        .expect("req");
    let manifest = manifest_of(&c, resp).await;
    assert_eq!(
        download_counts(&c, &manifest, "output").await["Patient"],
        data.patient_ids().len()
    );
    let errors = manifest["error"].as_array().expect("error[]");
    assert_eq!(errors.len(), 1, "one file");
    assert_eq!(
        errors[0]["count"], 3,
        "one OperationOutcome per ignored parameter or type"
    );
}

#[tokio::test]
async fn post_kickoff_refuses_bodies_that_are_not_parameters() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    let url = format!("{}/$export", server.base);
    outcome(
        post_kickoff(
            &c,
            &url,
            "respond-async",
            serde_json::json!({"resourceType": "Patient"}),
        )
        .await,
        400,
    )
    .await;
    let not_json = c
        .post(&url)
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body("{oops")
        .send()
        .await
        .expect("req");
    outcome(not_json, 400).await;
    let xml = c
        .post(&url)
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+xml")
        .body("<Parameters/>")
        .send()
        .await
        .expect("req");
    outcome(xml, 415).await;
    let system_patient = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/pat-1"}}]});
    outcome(
        post_kickoff(&c, &url, "respond-async", system_patient).await,
        400,
    )
    .await;
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
async fn operation_definitions_are_served_for_the_three_export_operations() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    for id in ["export", "patient-export", "group-export"] {
        let def = integration_tests::fhir_json(
            c.get(format!("{}/OperationDefinition/{id}", server.base)),
            200,
        )
        .await;
        assert_eq!(def["resourceType"], "OperationDefinition");
        assert_eq!(
            def["url"],
            format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{id}")
        );
    }
    outcome(
        c.get(format!("{}/OperationDefinition/nope", server.base))
            .send()
            .await
            .expect("req"),
        404,
    )
    .await;
}

#[tokio::test]
async fn downloads_are_gzip_compressed_only_for_clients_that_accept_it() {
    let (server, data) = server_with(&[]).await;
    let c = http_client();
    let resp = kickoff(&c, &format!("{}/$export?_type=Observation", server.base)).await;
    let manifest = manifest_of(&c, resp).await;
    let url = manifest["output"][0]["url"]
        .as_str()
        .expect("url")
        .to_string();

    let plain = c.get(&url).send().await.expect("get");
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.expect("body");
    assert_eq!(
        plain.iter().filter(|b| **b == b'\n').count(),
        data.count_by_type()["Observation"]
    );

    let zipped = c
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["content-type"], "application/fhir+ndjson");
    let compressed = zipped.bytes().await.expect("body");
    assert!(compressed.len() * 3 < plain.len(), "ndjson compresses well");
    let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(&compressed[..]);
    let mut unzipped = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut decoder, &mut unzipped)
        .await
        .expect("gunzip");
    assert_eq!(unzipped, plain.to_vec());
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

/// Bounded work per request: a huge parameter list is refused at once, even with lenient
/// handling, instead of being stored and re-read on every poll.
#[tokio::test]
async fn oversized_parameter_lists_are_refused_even_when_lenient() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    let many = "A,".repeat(500_000);
    let body = serde_json::json!({"resourceType": "Parameters",
        "parameter": [{"name": "_type", "valueString": many}]})
    .to_string();
    assert!(body.len() < shared::http::MAX_BODY_BYTES);
    let started = std::time::Instant::now();
    let resp = c
        .post(format!("{}/$export", server.base))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .header("Content-Type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .expect("kick-off");
    let oo = outcome(resp, 400).await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("more than")),
        "{oo}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let jobs: i64 = server
        .state
        .pool
        .get()
        .await
        .expect("conn")
        .query_one("SELECT count(*) FROM export_jobs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(jobs, 0, "nothing stored");
}

/// bulk-data-client URL-encodes each `_typeFilter` query whole, so a comma inside one arrives
/// as a plain comma in the value: it stays inside its query (FHIR OR), also in strict mode.
/// And `allowPartialManifests` is a hint this server may ignore: accepted, strict or not.
#[tokio::test]
async fn a_comma_inside_a_type_filter_query_and_allow_partial_manifests_are_understood() {
    let (server, data) = server_with(&[]).await;
    let c = http_client();
    let query = form_urlencoded::byte_serialize(b"Observation?category=laboratory,vital-signs")
        .collect::<String>();
    let resp = kickoff(
        &c,
        &format!(
            "{}/$export?_type=Observation&_typeFilter={query}&allowPartialManifests=true",
            server.base
        ),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    let done = poll(&c, &status_url, Duration::from_secs(60)).await;
    assert_eq!(done.status(), 200);
    let manifest: serde_json::Value = done.json().await.expect("manifest");
    assert_eq!(manifest["error"], serde_json::json!([]));
    let expected = data.count_where("Observation", |r| {
        matches!(
            r["category"][0]["coding"][0]["code"].as_str(),
            Some("laboratory" | "vital-signs")
        )
    });
    assert!(expected > 0 && expected < data.count_by_type()["Observation"]);
    let counts = download_counts(&c, &manifest, "output").await;
    assert_eq!(counts["Observation"], expected);
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
