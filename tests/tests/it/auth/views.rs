//! SQL on FHIR views under the authorization of `$export` (issue 29 item 2): the token's scopes
//! must cover the resource type of every view of a `$viewdefinition-export` (else 403 and no
//! job), and of a `$viewdefinition-run`.

use super::*;
use crate::views::{
    expected_patients, files_of, kick_off, ndjson_rows, observations_view, patients_view,
    view_param,
};

/// A client registered for Patient only (`.rs`, the SMART v2 spelling of read).
const PATIENTS_ONLY: &str = "client-patients-only";

async fn jobs_of(server: &Server, client: &str) -> i64 {
    server
        .state
        .pool
        .get()
        .await
        .expect("conn")
        .query_one(
            "SELECT count(*) FROM export_jobs WHERE client_id = $1",
            &[&client],
        )
        .await
        .expect("count")
        .get(0)
}

async fn forbidden(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 403, "{what}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/fhir+json",
        "{what}"
    );
    let oo: Value = resp.json().await.expect("json");
    assert_eq!(oo["resourceType"], "OperationOutcome", "{what}: {oo}");
    let diagnostics = oo["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(
        diagnostics.contains("Observation"),
        "{what}: names the type: {oo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_over_a_type_outside_the_tokens_scopes_is_refused_and_one_inside_runs() {
    let (server, data) = server().await;
    let base = &server.base;
    register_fixture_client(&server.state.pool, PATIENTS_ONLY, "system/Patient.rs").await;
    let token = access_token(base, PATIENTS_ONLY, "system/Patient.rs").await;
    let c = bearer_client(&token);

    // An Observation view, alone or beside a Patient one, at either kick-off route: 403.
    for (path, views) in [
        (
            "$viewdefinition-export",
            json!([view_param(observations_view())]),
        ),
        (
            "ViewDefinition/$viewdefinition-export",
            json!([view_param(observations_view())]),
        ),
        (
            "$viewdefinition-export",
            json!([view_param(patients_view()), view_param(observations_view())]),
        ),
    ] {
        let resp = kick_off(&c, &format!("{base}/{path}"), views).await;
        forbidden(resp, path).await;
    }
    // Lenient handling does not narrow a view export to the views it may run: still 403.
    let lenient = c
        .post(format!("{base}/$viewdefinition-export"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .header("Content-Type", "application/fhir+json")
        .body(
            json!({"resourceType": "Parameters", "parameter": [
                view_param(patients_view()), view_param(observations_view())]})
            .to_string(),
        )
        .send()
        .await
        .expect("kick-off");
    forbidden(lenient, "lenient").await;
    assert_eq!(
        jobs_of(&server, PATIENTS_ONLY).await,
        0,
        "no job was queued"
    );

    // `$viewdefinition-run` answers the same.
    let run = |view: Value| {
        c.post(format!("{base}/$viewdefinition-run"))
            .header("Content-Type", "application/fhir+json")
            .body(
                json!({"resourceType": "Parameters", "parameter": [
                    {"name": "viewResource", "resource": view}]})
                .to_string(),
            )
            .send()
    };
    forbidden(run(observations_view()).await.expect("run"), "run").await;
    let rows = run(patients_view()).await.expect("run");
    assert_eq!(rows.status(), 200);
    let rows: Vec<Value> = rows.json().await.expect("rows");
    assert_eq!(rows.len(), expected_patients(&data).len());

    // A Patient view with the same token: accepted, and its rows are the data's.
    let resp = kick_off(
        &c,
        &format!("{base}/$viewdefinition-export"),
        json!([view_param(patients_view())]),
    )
    .await;
    assert_eq!(resp.status(), 202);
    let status_url = integration_tests::status_url_of(resp).await;
    let manifest = wait_manifest(&status_url, &token).await;
    assert!(
        manifest["error"].as_array().is_some_and(Vec::is_empty),
        "{manifest}"
    );
    let rows = ndjson_rows(&files_of(&c, &manifest, "patients").await);
    assert_eq!(rows, expected_patients(&data));
    let counted: i64 = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .map(|e| e["count"].as_i64().expect("count"))
        .sum();
    assert_eq!(counted as usize, rows.len());
    assert_eq!(jobs_of(&server, PATIENTS_ONLY).await, 1);

    // The Observation view is refused for the scopes, not for itself: a client whose token
    // covers Observation gets its export.
    let all = bearer_client(&access_token(base, ALL, "system/*.read").await);
    let resp = kick_off(
        &all,
        &format!("{base}/$viewdefinition-export"),
        json!([view_param(observations_view())]),
    )
    .await;
    assert_eq!(resp.status(), 202);
}
