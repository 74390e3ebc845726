//! _typeFilter: matching resources, refused parameters, deletions, and the output not the traversal.

use super::*;

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
