//! Request bodies are bounded per route and in all (issue 28 item 7): small limits where no
//! token is needed, and a budget for every body in memory at once (SERVE_BODY_BUDGET_BYTES).

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the server sends until it closes (or `within` passes).
async fn answer(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bodies in memory at once share the budget: a kick-off body that does not fit while others
/// are arriving gets 503 with Retry-After (an OperationOutcome), and fits once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_budget_get_503_until_it_frees() {
    let (server, _) = server_with(&[
        ("SERVE_BODY_BUDGET_BYTES", "1048576"),
        ("SERVE_BODY_TIMEOUT_SECONDS", "2"),
    ])
    .await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let head = |len: usize| {
        format!(
            "POST /$export HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nPrefer: respond-async\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // One body of 900 kB arriving slowly holds most of the budget.
    let mut slow = TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(format!("{}{{\"resourceType\"", head(900_000)).as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = TcpStream::connect(&addr).await.expect("connect");
    other
        .write_all(format!("{}{{\"resourceType\"", head(200_000)).as_bytes())
        .await
        .expect("write");
    let got = answer(&mut other, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.to_ascii_lowercase().contains("retry-after"), "{got}");
    assert!(got.contains("OperationOutcome"), "{got}");
    // The slow body is cut off (408), and its share of the budget is free again.
    let got = answer(&mut slow, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    let params = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"}]});
    let resp = post_kickoff(
        &http_client(),
        &format!("{}/$export", server.base),
        "respond-async",
        params,
    )
    .await;
    assert_eq!(resp.status(), 202);
}

/// Routes that take no kick-off have a small body limit, declared or chunked: 413.
#[tokio::test]
async fn routes_without_a_kickoff_body_take_small_bodies_only() {
    let (server, _) = server_with(&[]).await;
    let c = http_client();
    let big = "a".repeat(100 * 1024);
    let resp = c
        .post(format!("{}/metadata", server.base))
        .body(big.clone())
        .send()
        .await
        .expect("req");
    outcome(resp, 413).await;
    // Chunked (no Content-Length): cut off as it arrives.
    let chunks = futures::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 16 * 1024]))),
    );
    let resp = c
        .post(format!("{}/metadata", server.base))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("req");
    outcome(resp, 413).await;
    // A kick-off may be larger (authorization is off here).
    let params = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"},
        {"name": "padding", "valueString": big}]});
    let resp = post_kickoff(
        &c,
        &format!("{}/$export", server.base),
        "respond-async",
        params,
    )
    .await;
    assert_ne!(resp.status(), 413);
}
