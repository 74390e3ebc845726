//! Clients' JWKS: inline, or fetched from the registered URL and cached as its `Cache-Control`
//! allows (`max-age`, `no-store`/`no-cache`; 5 minutes when the header says nothing, at most an
//! hour). The cache is per process, so a warm Lambda does not fetch on every token request.
//!
//! A fetch is bounded: at most one per URL (= per client) every [`MIN_REFETCH`] whatever the
//! JWKS's Cache-Control says (forged assertions cannot make the server fetch on each request),
//! the body is read in chunks and abandoned past [`MAX_JWKS_BYTES`], and redirects are
//! followed only on the same host, https, at most 3.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
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

struct Cached {
    /// Reusable until (per Cache-Control).
    fresh_until: Instant,
    fetched_at: Instant,
    set: JwkSet,
}

static CACHE: LazyLock<Mutex<HashMap<String, Cached>>> =
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
/// than [`MIN_REFETCH`] old; else fetched.
pub async fn fetch(url: &str) -> Result<JwkSet, JwksError> {
    if let Ok(cache) = CACHE.lock() {
        if let Some(c) = cache.get(url) {
            let now = Instant::now();
            if now < c.fresh_until || now < c.fetched_at + MIN_REFETCH {
                return Ok(c.set.clone());
            }
        }
    }
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
    if let Ok(mut cache) = CACHE.lock() {
        let now = Instant::now();
        cache.insert(
            url.to_string(),
            Cached {
                fresh_until: now + ttl,
                fetched_at: now,
                set: set.clone(),
            },
        );
    }
    Ok(set)
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
}
