//! _elements, includeAssociatedData and _until.

use super::*;

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
