//! Clients' JWKS: inline, or fetched from the registered URL and cached as its `Cache-Control`
//! allows (`max-age`, `no-store`/`no-cache`; 5 minutes when the header says nothing, at most an
//! hour). The cache is per process, so a warm Lambda does not fetch on every token request.
//!
//! A fetch is bounded: at most one per URL (= per client) every [`MIN_REFETCH`] whatever the
//! JWKS's Cache-Control says and whether the last one succeeded or failed (forged assertions
//! cannot make the server fetch on each request; concurrent ones wait for the fetch under way),
//! the body is read in chunks and abandoned past [`MAX_JWKS_BYTES`], and redirects are
//! followed only on the same host, https, at most 3.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

/// A client's JWK Set that cannot be fetched or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JwksError(pub String);

const DEFAULT_TTL: Duration = Duration::from_secs(300);
const MAX_TTL: Duration = Duration::from_secs(3600);
/// A JWKS larger than this is refused (a key set is a few KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The shortest time between two fetches of one JWKS URL.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

/// What is known of one JWKS URL: the last attempt to fetch it and how it went.
struct Entry {
    /// When the last fetch started (None: never).
    attempted_at: Option<Instant>,
    /// Whether the last fetch failed, and why (answered again until [`MIN_REFETCH`] has passed).
    failed: Option<JwksError>,
    /// The last key set fetched and until when it may be reused (per Cache-Control).
    set: Option<(JwkSet, Instant)>,
}

/// One entry per URL, each behind its own async lock: concurrent requests for one URL wait for
/// the fetch under way instead of starting their own.
static CACHE: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

static HTTP: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let first = attempt.previous().first().cloned();
            let same_host = first
                .as_ref()
                .is_some_and(|f| f.host_str() == attempt.url().host_str());
            let downgrade = first.as_ref().is_some_and(|f| f.scheme() == "https")
                && attempt.url().scheme() != "https";
            if attempt.previous().len() > 3 || !same_host || downgrade {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .build()
        .unwrap_or_default()
});

/// Checks a JWKS URL to register: `https://` on a host that is not this machine nor a link-local
/// address (`localhost`, 127.0.0.0/8, ::1, 169.254.0.0/16, fe80::/10, 0.0.0.0, ::): the server
/// fetches it, so such a URL makes it request its own or the cloud's metadata services, and
/// plain http lets anyone on the path swap the client's keys. `allow_insecure` (development
/// only) accepts any http(s) URL.
pub fn check_url(url: &str, allow_insecure: bool) -> Result<(), JwksError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| JwksError(format!("the JWKS URL {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(JwksError(format!(
            "the JWKS URL must be an https URL, not {}:",
            parsed.scheme()
        )));
    }
    if allow_insecure {
        return Ok(());
    }
    const HINT: &str = "(for development only: --allow-insecure-jwks-url)";
    if parsed.scheme() != "https" {
        return Err(JwksError(format!(
            "the JWKS URL must be https: over http anyone on the way can swap the client's keys {HINT}"
        )));
    }
    let local = match parsed.host() {
        None => true,
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_link_local() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => {
            let mapped = ip.to_ipv4_mapped();
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || mapped
                    .is_some_and(|v4| v4.is_loopback() || v4.is_link_local() || v4.is_unspecified())
        }
    };
    if local {
        return Err(JwksError(format!(
            "the JWKS URL must not name this machine or a link-local address (the server would fetch it) {HINT}"
        )));
    }
    Ok(())
}

/// How long a response may be reused, from its Cache-Control header.
pub fn cache_ttl(cache_control: Option<&str>) -> Duration {
    let Some(cc) = cache_control else {
        return DEFAULT_TTL;
    };
    let mut ttl = DEFAULT_TTL;
    for directive in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(v) = directive.strip_prefix("max-age=") {
            if let Ok(secs) = v.trim_matches('"').parse::<u64>() {
                ttl = Duration::from_secs(secs);
            }
        }
    }
    ttl.min(MAX_TTL)
}

/// The key set at `url`: from the cache while it is fresh, or while the last fetch is less
/// than [`MIN_REFETCH`] old, whether it succeeded or failed (a failure is answered again without
/// fetching: forged assertions naming a client whose JWKS URL answers 500, junk or too much cost
/// one fetch per [`MIN_REFETCH`]); else fetched.
pub async fn fetch(url: &str) -> Result<JwkSet, JwksError> {
    let entry = {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(url.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Entry {
                    attempted_at: None,
                    failed: None,
                    set: None,
                }))
            })
            .clone()
    };
    let mut entry = entry.lock().await;
    let now = Instant::now();
    let recent = entry.attempted_at.is_some_and(|at| now < at + MIN_REFETCH);
    if let Some((set, fresh_until)) = &entry.set {
        if entry.failed.is_none() && (now < *fresh_until || recent) {
            return Ok(set.clone());
        }
    }
    if recent {
        if let Some(e) = &entry.failed {
            return Err(JwksError(format!(
                "{} (not fetched again within {} s of the last attempt)",
                e.0,
                MIN_REFETCH.as_secs()
            )));
        }
    }
    entry.attempted_at = Some(now);
    match fetch_now(url).await {
        Ok((set, ttl)) => {
            entry.failed = None;
            entry.set = Some((set.clone(), Instant::now() + ttl));
            Ok(set)
        }
        Err(e) => {
            entry.failed = Some(e.clone());
            Err(e)
        }
    }
}

/// Fetches the key set at `url` and how long it may be reused.
async fn fetch_now(url: &str) -> Result<(JwkSet, Duration), JwksError> {
    let mut resp = HTTP
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| JwksError(format!("fetching the client's JWKS failed: {e}")))?;
    if !resp.status().is_success() {
        return Err(JwksError(format!(
            "the client's JWKS URL answered {}",
            resp.status()
        )));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(JwksError("the client's JWKS is too large".into()));
    }
    let ttl = cache_ttl(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
    );
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| JwksError(format!("reading the client's JWKS failed: {e}")))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(JwksError("the client's JWKS is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    let set: JwkSet = serde_json::from_slice(&body)
        .map_err(|e| JwksError(format!("the client's JWKS is not a JWK Set: {e}")))?;
    Ok((set, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_decides_how_long_a_jwks_is_reused() {
        assert_eq!(cache_ttl(None), DEFAULT_TTL);
        assert_eq!(
            cache_ttl(Some("public, max-age=60")),
            Duration::from_secs(60)
        );
        assert_eq!(cache_ttl(Some("max-age=999999")), MAX_TTL);
        assert_eq!(cache_ttl(Some("no-store")), Duration::ZERO);
        assert_eq!(cache_ttl(Some("max-age=60, no-cache")), Duration::ZERO);
    }

    #[test]
    fn only_https_urls_off_this_machine_are_registered_without_the_development_flag() {
        for ok in [
            "https://client.example/jwks.json",
            "https://203.0.113.7:8443/keys",
            "https://[2001:db8::1]/jwks",
        ] {
            assert!(check_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "http://client.example/jwks.json",
            "https://127.0.0.1/jwks",
            "https://127.1.2.3:5432/",
            "https://localhost/jwks",
            "https://a.localhost./jwks",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/jwks",
            "https://[fe80::1]/jwks",
            "https://[::ffff:127.0.0.1]/jwks",
            "https://0.0.0.0/jwks",
        ] {
            let e = check_url(bad, false).unwrap_err();
            assert!(e.0.contains("--allow-insecure-jwks-url"), "{bad}: {e}");
            assert!(check_url(bad, true).is_ok(), "{bad}");
        }
        for never in ["file:///etc/passwd", "ftp://h/x", "not a url"] {
            assert!(check_url(never, true).is_err(), "{never}");
        }
    }

    /// A JWKS URL that answers 500, junk, too much, or a good key set, counting its fetches.
    async fn jwks_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let count = |hits: &std::sync::Arc<AtomicUsize>| {
            let hits = hits.clone();
            move || hits.fetch_add(1, Ordering::SeqCst)
        };
        let (a, b, c, d) = (count(&hits), count(&hits), count(&hits), count(&hits));
        let app = axum::Router::new()
            .route(
                "/500",
                axum::routing::get(move || async move {
                    a();
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "boom")
                }),
            )
            .route(
                "/junk",
                axum::routing::get(move || async move {
                    b();
                    "this is not a JWK Set"
                }),
            )
            .route(
                "/huge",
                axum::routing::get(move || async move {
                    c();
                    vec![b' '; 2 * MAX_JWKS_BYTES]
                }),
            )
            .route(
                "/good",
                axum::routing::get(move || async move {
                    d();
                    (
                        [("cache-control", "no-store")],
                        r#"{"keys":[{"kty":"EC","crv":"P-384","kid":"k","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), hits)
    }

    /// Ten forged assertions at once, then ten more, naming a client whose JWKS URL fails: one
    /// fetch (issue 28 item 9); a good one no-store: one fetch per MIN_REFETCH too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_fetches_are_rate_limited_like_good_ones() {
        use std::sync::atomic::Ordering;
        let (base, hits) = jwks_server().await;
        for path in ["/500", "/junk", "/huge", "/good"] {
            let url = format!("{base}{path}");
            let before = hits.load(Ordering::SeqCst);
            for _ in 0..2 {
                let results = futures::future::join_all((0..10).map(|_| fetch(&url))).await;
                for r in results {
                    assert_eq!(r.is_ok(), path == "/good", "{path}: {r:?}");
                }
            }
            assert_eq!(hits.load(Ordering::SeqCst) - before, 1, "{path}");
        }
    }
}
