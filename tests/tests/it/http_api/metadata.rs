//! The CapabilityStatement and the OperationDefinitions.

use super::*;

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
