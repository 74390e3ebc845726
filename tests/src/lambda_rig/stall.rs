//! A TCP relay in front of an endpoint that can be made to hang: while `hang` is on it accepts
//! connections and reads requests but forwards nothing either way, as a storage service that
//! stops answering does. It can also be made slow: at most so many bytes a second each way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct StallRelay {
    pub endpoint: String,
    hang: Arc<AtomicBool>,
    /// Bytes a second each way; 0: as fast as it goes.
    rate: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StallRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StallRelay {
    /// Relays to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> StallRelay {
        let target = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let hang = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(0));
        let (flag, limit) = (hang.clone(), rate.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let (flag, limit) = (flag.clone(), limit.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(
                            pipe(cr, sw, flag.clone(), limit.clone()),
                            pipe(sr, cw, flag, limit)
                        );
                    }
                });
            }
        });
        StallRelay {
            endpoint,
            hang,
            rate,
            task,
        }
    }

    pub fn hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    /// At most `bytes_per_second` each way from now on (0: no limit).
    pub fn throttle(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding every chunk while the relay hangs, at most at its rate.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hang: Arc<AtomicBool>,
    rate: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let rate = rate.load(Ordering::SeqCst);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
    let _ = to.shutdown().await;
}
