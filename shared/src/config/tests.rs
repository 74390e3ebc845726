use super::*;

fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn storage_path_parses_s3_and_local() {
    assert_eq!(
        StoragePath::parse("s3://bucket/a/b/").unwrap(),
        StoragePath::S3 {
            bucket: "bucket".into(),
            prefix: "a/b".into()
        }
    );
    assert_eq!(
        StoragePath::parse("s3://bucket").unwrap(),
        StoragePath::S3 {
            bucket: "bucket".into(),
            prefix: "".into()
        }
    );
    assert_eq!(
        StoragePath::parse("/tmp/x").unwrap(),
        StoragePath::Local("/tmp/x".into())
    );
    assert!(StoragePath::parse("s3:///x").is_err());
}

#[test]
fn config_defaults_follow_firely() {
    let c = config(&[("DATABASE_URL", "postgres://x")]).unwrap();
    assert_eq!(c.additional_resources.len(), 7);
    assert_eq!(c.cancelled_status_code, 404);
    assert_eq!(c.repeat_period, Duration::from_secs(60));
    assert_eq!(c.presign_ttl, Duration::from_secs(300));
    assert_eq!(
        c.auth,
        AuthMode::Smart { signing_key: None },
        "auth is on by default"
    );
    assert_eq!(c.access_token_ttl, Duration::from_secs(300));
}

#[test]
fn auth_settings_are_checked_and_the_key_never_printed() {
    let c = config(&[("DATABASE_URL", "x"), ("AUTH", "off")]).unwrap();
    assert_eq!(c.auth, AuthMode::Off);
    let key = "k".repeat(32);
    let c = config(&[("DATABASE_URL", "x"), ("TOKEN_SIGNING_KEY", &key)]).unwrap();
    assert!(!format!("{c:?}").contains(&key));
    assert!(config(&[("DATABASE_URL", "x"), ("TOKEN_SIGNING_KEY", "short")]).is_err());
    assert!(config(&[("DATABASE_URL", "x"), ("AUTH", "maybe")]).is_err());
    assert!(config(&[("DATABASE_URL", "x"), ("ACCESS_TOKEN_TTL_SECONDS", "3600")]).is_err());
}

#[test]
fn presigned_urls_live_at_most_an_hour_and_the_base_url_is_checked() {
    let ok = config(&[("DATABASE_URL", "x"), ("PRESIGN_TTL_SECONDS", "3600")]).unwrap();
    assert_eq!(ok.presign_ttl, Duration::from_secs(3600));
    for bad in ["3601", "604800", "0"] {
        assert!(
            config(&[("DATABASE_URL", "x"), ("PRESIGN_TTL_SECONDS", bad)]).is_err(),
            "{bad}"
        );
    }
    let c = config(&[
        ("DATABASE_URL", "x"),
        ("PUBLIC_BASE_URL", "https://fhir.example/r4/"),
    ])
    .unwrap();
    assert_eq!(
        c.public_base_url.as_deref(),
        Some("https://fhir.example/r4")
    );
    for bad in [
        "javascript://x",
        "fhir.example",
        "https://h/x?y=1",
        "https:///x",
    ] {
        assert!(
            config(&[("DATABASE_URL", "x"), ("PUBLIC_BASE_URL", bad)]).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn config_rejects_bad_values() {
    assert!(matches!(
        config(&[]),
        Err(ConfigError::Missing {
            name: "DATABASE_URL"
        })
    ));
    assert!(config(&[("DATABASE_URL", "x"), ("ADDITIONAL_RESOURCES", "Nope")]).is_err());
    assert!(config(&[("DATABASE_URL", "x"), ("CANCELLED_STATUS_CODE", "500")]).is_err());
    assert!(config(&[("DATABASE_URL", "x"), ("REPEAT_PERIOD", "soon")]).is_err());
}

#[test]
fn debug_never_prints_the_database_password_or_the_signing_key() {
    let key = "k".repeat(40);
    let c = config(&[
        (
            "DATABASE_URL",
            "postgres://app:s3cr3t-pw@db.internal:5432/fhir?sslmode=require",
        ),
        ("TOKEN_SIGNING_KEY", &key),
    ])
    .unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cr3t-pw"), "{shown}");
    assert!(!shown.contains(&key), "{shown}");
    assert!(
        shown.contains("postgres://app:***@db.internal:5432/fhir?sslmode=require"),
        "{shown}"
    );
    assert_eq!(redact_url("postgres://app@h/db"), "postgres://app@h/db");
    assert_eq!(redact_url("not a url"), "not a url");
}

#[test]
fn s3_timeouts_are_settings_and_an_upload_gets_time_for_its_size() {
    let c = config(&[("DATABASE_URL", "postgres://x")]).expect("defaults");
    assert_eq!(c.s3.timeouts, crate::aws::S3Timeouts::default());
    let c = config(&[
        ("DATABASE_URL", "postgres://x"),
        ("S3_CONNECT_TIMEOUT_SECONDS", "2"),
        ("S3_FIRST_BYTE_TIMEOUT_SECONDS", "3"),
        ("S3_MIN_UPLOAD_RATE_BYTES", "1048576"),
    ])
    .expect("valid");
    let t = c.s3.timeouts;
    assert_eq!(t.attempt(0), Duration::from_secs(5));
    assert_eq!(t.attempt(8 * 1024 * 1024), Duration::from_secs(13));
    assert_eq!(t.config(0).connect_timeout(), Some(Duration::from_secs(2)));
    assert_eq!(
        t.config(1024 * 1024).operation_attempt_timeout(),
        Some(Duration::from_secs(6))
    );
    assert!(config(&[
        ("DATABASE_URL", "postgres://x"),
        ("S3_FIRST_BYTE_TIMEOUT_SECONDS", "soon"),
    ])
    .is_err());
}
