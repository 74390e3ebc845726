//! `GET /metrics` is a route like the others (issue 28 item 11): under the FHIR base's path,
//! with the same size checks; or on a listener of its own (METRICS_ADDR); or off (METRICS=off).

use super::*;

async fn get(url: &str, padding: usize) -> reqwest::Response {
    let mut req = http_client().get(url);
    if padding > 0 {
        req = req.header("X-Padding", "x".repeat(padding));
    }
    req.send().await.expect("GET")
}

#[tokio::test]
async fn metrics_are_under_the_base_with_the_size_checks() {
    // The canonical base has a path: every route, metrics included, is under it.
    let (server, _) = server_with(&[("PUBLIC_BASE_URL", "http://127.0.0.1:1/fhir")]).await;
    let ok = get(&format!("{}/fhir/metrics", server.base), 0).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("application/openmetrics-text"));
    assert!(ok.text().await.expect("body").contains("# EOF"));
    assert_eq!(
        get(&format!("{}/metrics", server.base), 0).await.status(),
        404
    );
    outcome(
        get(&format!("{}/fhir/metrics", server.base), 20_000).await,
        431,
    )
    .await;
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let (server, _) = server_with(&[("METRICS", "off")]).await;
    outcome(get(&format!("{}/metrics", server.base), 0).await, 404).await;
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let port = integration_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let (server, _) =
        server_with(&[("METRICS_ADDR", Box::leak(addr.clone().into_boxed_str()))]).await;
    integration_tests::wait_listening(port).await;
    outcome(get(&format!("{}/metrics", server.base), 0).await, 404).await;
    let ok = get(&format!("http://{addr}/metrics"), 0).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.expect("body").contains("# EOF"));
    outcome(get(&format!("http://{addr}/metrics"), 20_000).await, 431).await;
    outcome(get(&format!("http://{addr}/metadata"), 0).await, 404).await;
}
