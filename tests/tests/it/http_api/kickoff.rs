//! Kick-off requests: parameters, headers, POST bodies, patients, lenient handling.

use super::*;

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
async fn post_kickoff_takes_a_parameters_body_at_every_level() {
    let (server, data) = server_with(&[]).await;
    let c = http_client();
    let url = format!("{}/$export", server.base);
    let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
        // The IG's type, what bulk-data-client --post sends.
        {"name": "allowPartialManifests", "valueBoolean": true}]});
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

/// A NUL (`%00`) in a parameter was a 500 (Postgres refuses U+0000 in the stored parameters):
/// a 400 naming the parameter, at GET and POST, strict and lenient, and nothing is stored.
#[tokio::test]
async fn a_nul_in_a_parameter_is_a_400_naming_it_at_get_and_post() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    let url = format!("{}/$export", server.base);
    for prefer in ["respond-async", "respond-async, handling=lenient"] {
        let resp = c
            .get(format!(
                "{url}?_type=Observation&_typeFilter=Observation%3Fcode%3Da%00b"
            ))
            .header("Accept", "application/fhir+json")
            .header("Prefer", prefer)
            .send()
            .await
            .expect("GET kick-off");
        let oo = outcome(resp, 400).await;
        let d = oo["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        assert!(
            d.contains("_typeFilter") && d.contains("NUL"),
            "GET {prefer}: {d}"
        );
        let body = serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "_typeFilter", "valueString": "Observation?code=a\u{0}b"}]});
        let oo = outcome(post_kickoff(&c, &url, prefer, body).await, 400).await;
        let d = oo["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        assert!(
            d.contains("_typeFilter") && d.contains("NUL"),
            "POST {prefer}: {d}"
        );
        // An unknown parameter's name would be stored in error[] when lenient.
        let resp = kickoff(&c, &format!("{url}?x%00y=1")).await;
        outcome(resp, 400).await;
    }
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
