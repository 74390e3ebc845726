//! Request bodies are bounded before authentication (issue 28 item 7): many concurrent large
//! bodies to the token endpoint, without a token, are refused before they are read, and the
//! memory of a `bulk-export serve` process stays bounded (its peak RSS, VmHWM).

use super::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A field of /proc/<pid>/status in KiB (VmHWM: the peak resident set).
fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .expect("a /proc status field")
}

/// POST /auth/token with a `body.len()`-byte form from `from`: the status line's code (None:
/// the connection closed without one, as when the server stops reading).
async fn post_token_form(server: SocketAddr, from: Ipv4Addr, body: Arc<Vec<u8>>) -> Option<u16> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind a loopback address");
    let mut s = socket.connect(server).await.ok()?;
    let head = format!(
        "POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.ok()?;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&body).await;
        w
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_unauthenticated_bodies_are_refused_before_they_are_read() {
    let db = TestDb::new().await;
    let dir = integration_tests::temp_dir();
    let (child, base) = spawn_serve(
        &["--workers", "1"],
        &[
            ("DATABASE_URL", &db.url),
            ("STORAGE_PATH", &dir.display().to_string()),
            ("AUTH", "smart"),
        ],
        false,
    )
    .await;
    let pid = child.id().expect("pid");
    let server: SocketAddr = base.trim_start_matches("http://").parse().expect("addr");
    let before = vm_kib(pid, "VmHWM:");

    // 300 connections without a token, 1 MiB − 1 B each, at once (from ten loopback
    // addresses: each within the per-peer connection cap).
    let body = Arc::new(vec![b'a'; 1024 * 1024 - 1]);
    let answers = futures::future::join_all((0..300).map(|i| {
        post_token_form(
            server,
            Ipv4Addr::new(127, 0, 3, 1 + (i % 10) as u8),
            body.clone(),
        )
    }))
    .await;
    let after = vm_kib(pid, "VmHWM:");
    eprintln!("serve VmHWM: {before} KiB before, {after} KiB after");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "serve's peak RSS went from {before} KiB to {after} KiB"
    );
    let refused = answers.iter().filter(|a| **a == Some(413)).count();
    assert!(
        answers.iter().all(|a| a.is_none() || *a == Some(413)),
        "only 413s: {answers:?}"
    );
    assert!(refused > 0, "{answers:?}");

    // A token form of the usual size still reaches the token endpoint (its own OAuth error).
    let resp = reqwest::Client::new()
        .post(format!("{base}/auth/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 400);
    let err: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(err["error"], "invalid_request", "{err}");
}
