//! `_typeFilter`, `_elements` and `includeAssociatedData` over real HTTP (`bulk-export serve`
//! in-process) against the generated data set, whose expected results are computed here from
//! the data, independently of the server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::data::{provenance_targets, DataSet};
use integration_tests::{
    download_counts, http_client, kick_off_and_wait, kickoff, load_json, manifest_of, Server,
};
use serde_json::{json, Value};

const PATIENTS: usize = 10;

async fn server() -> (Server, DataSet) {
    integration_tests::local_server(PATIENTS, &[]).await
}

async fn export(c: &reqwest::Client, url: &str) -> Value {
    kick_off_and_wait(c, url).await
}

async fn post_export(c: &reqwest::Client, url: &str, params: Value) -> Value {
    let resp = c
        .post(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
        .send()
        .await
        .expect("POST kick-off");
    manifest_of(c, resp).await
}

/// Every exported resource of the manifest's output, by type.
async fn download_all(c: &reqwest::Client, manifest: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in manifest["output"].as_array().expect("output") {
        let text = c
            .get(entry["url"].as_str().expect("url"))
            .send()
            .await
            .expect("download")
            .text()
            .await
            .expect("body");
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("json line");
            out.entry(entry["type"].as_str().expect("type").to_string())
                .or_default()
                .push(v);
        }
    }
    out
}

/// After an `_until`: pat-0 changes, pat-new arrives, obs-0-0-0 is deleted.
pub(crate) fn changes_after_until() -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "pat-0", "gender": "other"},
         "request": {"method": "PUT", "url": "Patient/pat-0"}},
        {"resource": {"resourceType": "Patient", "id": "pat-new", "gender": "other"},
         "request": {"method": "PUT", "url": "Patient/pat-new"}},
        {"request": {"method": "DELETE", "url": "Observation/obs-0-0-0"}}]})
}

fn category(r: &Value) -> &str {
    r["category"][0]["coding"][0]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn type_filter_exports_only_matching_resources_of_the_filtered_types() {
    let (server, data) = server().await;
    let c = http_client();
    // GET: one query; its `=` and `?` are URL-encoded as the IG says.
    let manifest = export(
        &c,
        &format!(
            "{}/Patient/$export?_type=Observation,Encounter&_typeFilter=Observation%3Fcategory%3Dlaboratory",
            server.base
        ),
    )
    .await;
    let counts = download_counts(&c, &manifest, "output").await;
    let labs = data.count_where("Observation", |r| category(r) == "laboratory");
    assert!(labs > 0 && labs < data.count_by_type()["Observation"]);
    assert_eq!(counts["Observation"], labs);
    assert_eq!(
        counts["Encounter"],
        data.count_by_type()["Encounter"],
        "types without a filter are whole"
    );

    // POST: two queries for one type are OR'd; parameters within a query are AND'd; a comma in
    // a value (URL-encoded inside the query) ORs values. Token with system, quantity, date.
    let manifest = post_export(
        &c,
        &format!("{}/$export", server.base),
        json!([
            {"name": "_type", "valueString": "Observation"},
            {"name": "_typeFilter", "valueString": "Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs&date=ge2020-01-02"},
            {"name": "_typeFilter", "valueString": "Observation?value-quantity=ge63&status=final%2Camended"},
        ]),
    )
    .await;
    let expected = data.count_where("Observation", |r| {
        let vital_late = category(r) == "vital-signs"
            && r["effectiveDateTime"].as_str().unwrap_or("") >= "2020-01-02";
        let high = r["valueQuantity"]["value"].as_f64().unwrap_or(0.0) >= 63.0;
        vital_late || high
    });
    let counts = download_counts(&c, &manifest, "output").await;
    assert_eq!(counts["Observation"], expected);

    // A string search on Patient at the system level, and `_lastUpdated`.
    let manifest = export(
        &c,
        &format!(
            "{}/$export?_type=Patient&_typeFilter=Patient%3Fgender%3Dfemale%26_lastUpdated%3Dgt2000-01-01",
            server.base
        ),
    )
    .await;
    let counts = download_counts(&c, &manifest, "output").await;
    assert_eq!(
        counts["Patient"],
        data.count_where("Patient", |r| r["gender"] == "female")
    );
}

#[tokio::test]
async fn type_filter_refuses_include_sort_and_unknown_parameters_unless_lenient() {
    let (server, data) = server().await;
    let c = http_client();
    for filter in [
        "Observation%3F_include%3DObservation:subject",
        "Observation%3F_sort%3Ddate",
        "Observation%3Fnot-a-param%3Dx",
        "Observation%3Fsubject.name%3Dx",
        "Observation%3Fdate%3Dyesterday",
        "NotAType%3Fx%3D1",
    ] {
        let resp = kickoff(&c, &format!("{}/$export?_typeFilter={filter}", server.base)).await;
        assert_eq!(resp.status(), 400, "{filter}");
        let oo: Value = resp.json().await.expect("json");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .contains("_typeFilter"));
    }
    let resp = c
        .get(format!(
            "{}/$export?_type=Observation&_typeFilter=Observation%3F_sort%3Ddate",
            server.base
        ))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .send()
        .await
        .expect("req");
    let manifest = manifest_of(&c, resp).await;
    assert_eq!(
        download_counts(&c, &manifest, "output").await["Observation"],
        data.count_by_type()["Observation"],
        "the ignored filter filters nothing"
    );
    assert_eq!(manifest["error"][0]["count"], 1);
}

#[tokio::test]
async fn elements_subset_resources_keep_required_elements_and_are_tagged() {
    let (server, data) = server().await;
    let c = http_client();
    let manifest = export(
        &c,
        &format!(
            "{}/Patient/$export?_type=Patient,Observation&_elements=Patient.gender,identifier",
            server.base
        ),
    )
    .await;
    let all = download_all(&c, &manifest).await;
    assert_eq!(all["Patient"].len(), data.patient_ids().len());
    assert_eq!(
        all["Observation"].len(),
        data.count_by_type()["Observation"]
    );
    let subsetted = |r: &Value| {
        r["meta"]["tag"].as_array().is_some_and(|tags| {
            tags.iter().any(|t| {
                t["code"] == "SUBSETTED"
                    && t["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
            })
        })
    };
    for p in &all["Patient"] {
        let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["gender", "id", "meta", "resourceType"].into());
        assert!(subsetted(p));
    }
    for o in &all["Observation"] {
        // `identifier` (untyped) applies to every type; status and code are required (1..1).
        let keys: BTreeSet<&str> = o.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["code", "id", "meta", "resourceType", "status"].into()
        );
        assert!(subsetted(o));
    }

    // A typed element only subsets its own type.
    let manifest = export(
        &c,
        &format!(
            "{}/$export?_type=Patient,Observation&_elements=Patient.gender",
            server.base
        ),
    )
    .await;
    let all = download_all(&c, &manifest).await;
    assert!(all["Patient"]
        .iter()
        .all(|p| p.get("managingOrganization").is_none() && subsetted(p)));
    assert!(all["Observation"]
        .iter()
        .all(|o| o.get("subject").is_some() && !subsetted(o)));

    let resp = kickoff(
        &c,
        &format!("{}/$export?_elements=Patient.name.family", server.base),
    )
    .await;
    assert_eq!(resp.status(), 400);
}

fn ids(resources: Option<&Vec<Value>>) -> BTreeSet<String> {
    resources
        .map(|rs| {
            rs.iter()
                .map(|r| r["id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn include_associated_data_brings_the_provenance_of_exported_resources() {
    let (server, data) = server().await;
    let c = http_client();
    let encounters = data.keys_of("Encounter");
    assert!(data.count_by_type()["Provenance"] > 0);

    // Patient level, default: the compartment's Provenance and those of exported resources.
    let manifest = export(
        &c,
        &format!("{}/Patient/$export?_type=Encounter,Provenance", server.base),
    )
    .await;
    let all = download_all(&c, &manifest).await;
    let mut expected = data.associated_provenance(&encounters, false);
    expected.extend(
        data.resources
            .iter()
            .filter(|r| r["resourceType"] == "Provenance")
            .filter(|r| provenance_targets(r).iter().any(|(t, _)| t == "Patient"))
            .map(|r| r["id"].as_str().unwrap_or("").to_string()),
    );
    assert_eq!(ids(all.get("Provenance")), expected);

    // Latest: only the newest Provenance of each exported Encounter, though _type omits it.
    let manifest = export(
        &c,
        &format!(
            "{}/Patient/$export?_type=Encounter&includeAssociatedData=LatestProvenanceResources",
            server.base
        ),
    )
    .await;
    let all = download_all(&c, &manifest).await;
    let latest = data.associated_provenance(&encounters, true);
    let relevant = data.associated_provenance(&encounters, false);
    assert!(
        latest.len() < relevant.len(),
        "the data has superseded Provenance"
    );
    assert_eq!(ids(all.get("Provenance")), latest);

    // Relevant, at the system level, with a _type without Provenance: every Provenance of an
    // exported Encounter, none of other resources.
    let manifest = export(
        &c,
        &format!(
            "{}/$export?_type=Encounter&includeAssociatedData=RelevantProvenanceResources",
            server.base
        ),
    )
    .await;
    let all = download_all(&c, &manifest).await;
    assert_eq!(ids(all.get("Provenance")), relevant);
    assert_eq!(all["Encounter"].len(), encounters.len());

    // Without the parameter a system export has every Provenance when it exports the type.
    let manifest = export(&c, &format!("{}/$export?_type=Provenance", server.base)).await;
    assert_eq!(
        download_counts(&c, &manifest, "output").await["Provenance"],
        data.count_by_type()["Provenance"]
    );

    let resp = kickoff(
        &c,
        &format!("{}/$export?includeAssociatedData=_custom", server.base),
    )
    .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn until_exports_the_data_as_it_was_at_that_instant() {
    let (server, data) = server().await;
    let c = http_client();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // After `until`: pat-0 changes, one Observation is deleted, a new Patient arrives.
    load_json(&server.state.pool, &changes_after_until()).await;

    let until = until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let manifest = export(
        &c,
        &format!(
            "{}/$export?_type=Patient,Observation&_until={until}",
            server.base
        ),
    )
    .await;
    let all = download_all(&c, &manifest).await;
    assert_eq!(ids(all.get("Patient")), data.patient_ids(), "no pat-new");
    let pat0 = all["Patient"]
        .iter()
        .find(|p| p["id"] == "pat-0")
        .expect("pat-0");
    assert_eq!(pat0["gender"], "female", "the version current at _until");
    assert_eq!(
        all["Observation"].len(),
        data.count_by_type()["Observation"]
    );
    assert!(all["Observation"].iter().any(|o| o["id"] == "obs-0-0-0"));

    // Without _until: today's data.
    let manifest = export(&c, &format!("{}/$export?_type=Patient", server.base)).await;
    let all = download_all(&c, &manifest).await;
    assert_eq!(all["Patient"].len(), data.patient_ids().len() + 1);
}

/// `deleted[]` lists the deletions that "match the kick-off request criteria" (IG): with a
/// `_typeFilter`, a deleted resource is listed only when its last content matched; types without
/// a filter list every deletion.
#[tokio::test]
async fn type_filter_also_selects_the_deletions_listed_in_deleted() {
    let (server, data) = server().await;
    let c = http_client();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Three laboratory and three other Observations, and two Encounters, are deleted.
    let observations: Vec<&Value> = data
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .collect();
    let labs: Vec<String> = observations
        .iter()
        .filter(|r| category(r) == "laboratory")
        .take(3)
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    let others: Vec<String> = observations
        .iter()
        .filter(|r| category(r) != "laboratory")
        .take(3)
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    let encounters: Vec<String> = data
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Encounter")
        .take(2)
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!((labs.len(), others.len(), encounters.len()), (3, 3, 2));
    let mut keys: Vec<(String, String)> = Vec::new();
    for id in labs.iter().chain(&others) {
        keys.push(("Observation".into(), id.clone()));
    }
    for id in &encounters {
        keys.push(("Encounter".into(), id.clone()));
    }
    let n = shared::db::resources::delete_resources(&server.state.pool, &keys)
        .await
        .expect("delete");
    assert_eq!(n, 8);

    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let deleted_urls = |manifest: Value| {
        let c = c.clone();
        async move {
            let mut urls = BTreeSet::new();
            for entry in manifest["deleted"].as_array().expect("deleted[]") {
                let text = c
                    .get(entry["url"].as_str().expect("url"))
                    .send()
                    .await
                    .expect("get")
                    .text()
                    .await
                    .expect("body");
                let mut lines = 0;
                for line in text.lines() {
                    let b: Value = serde_json::from_str(line).expect("json");
                    assert_eq!(b["entry"][0]["request"]["method"], "DELETE");
                    urls.insert(
                        b["entry"][0]["request"]["url"]
                            .as_str()
                            .expect("url")
                            .to_string(),
                    );
                    lines += 1;
                }
                assert_eq!(entry["count"], lines, "count = lines");
            }
            urls
        }
    };
    let expect = |obs: &[&String], enc: &[String]| -> BTreeSet<String> {
        obs.iter()
            .map(|id| format!("Observation/{id}"))
            .chain(enc.iter().map(|id| format!("Encounter/{id}")))
            .collect()
    };

    for level in ["/$export", "/Patient/$export"] {
        let filtered = export(
            &c,
            &format!(
                "{}{level}?_since={since}&_type=Observation,Encounter&_typeFilter=Observation%3Fcategory%3Dlaboratory",
                server.base
            ),
        )
        .await;
        assert_eq!(
            deleted_urls(filtered).await,
            expect(&labs.iter().collect::<Vec<_>>(), &encounters),
            "{level}: lab Observations (filtered) and every Encounter (no filter)"
        );

        let unfiltered = export(
            &c,
            &format!(
                "{}{level}?_since={since}&_type=Observation,Encounter",
                server.base
            ),
        )
        .await;
        assert_eq!(
            deleted_urls(unfiltered).await,
            expect(&labs.iter().chain(&others).collect::<Vec<_>>(), &encounters),
            "{level}: without _typeFilter every deletion"
        );
    }
}

/// `_type` filters the output, not the traversal: the AdditionalResources of a Patient or
/// Group export are those the compartment references, whichever other types were requested.
#[tokio::test]
async fn type_filters_the_output_not_the_traversal_for_additional_resources() {
    let (server, data) = server().await;
    let c = http_client();
    let all = data.expected_compartment_export(&data.patient_ids());
    let orgs = all.get("Organization").copied().unwrap_or(0);
    assert!(orgs > 0, "the data set has referenced Organizations");
    for query in ["_type=Organization", "_type=Patient,Condition,Organization"] {
        let m = export(&c, &format!("{}/Patient/$export?{query}", server.base)).await;
        let got = download_counts(&c, &m, "output").await;
        assert_eq!(got.get("Organization").copied(), Some(orgs), "{query}");
        for (t, n) in &got {
            assert_eq!(Some(n), all.get(t), "{query}: {t}");
        }
    }
    let group = data.expected_compartment_export(&data.group_members());
    let m = export(
        &c,
        &format!(
            "{}/Group/{}/$export?_type=Organization",
            server.base, data.group_id
        ),
    )
    .await;
    let got = download_counts(&c, &m, "output").await;
    assert_eq!(
        got.get("Organization").copied(),
        group.get("Organization").copied()
    );
    // Per-patient blocks too: each block holds the Organizations its compartment references.
    let m = export(
        &c,
        &format!(
            "{}/Patient/$export?organizeOutputBy=Patient&_type=Organization",
            server.base
        ),
    )
    .await;
    let mut in_blocks: BTreeSet<String> = BTreeSet::new();
    for line in integration_tests::download_lines(&c, &m).await {
        let v: Value = serde_json::from_str(&line).expect("json");
        if v["resourceType"] == "Organization" {
            in_blocks.insert(v["id"].as_str().expect("id").to_string());
        }
    }
    assert_eq!(in_blocks.len(), orgs);
}
