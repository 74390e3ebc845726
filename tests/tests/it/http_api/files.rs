//! Downloads: content types, Accept and gzip.

use super::*;

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
