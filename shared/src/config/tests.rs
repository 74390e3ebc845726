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
    assert_eq!(c.cancelled_status, CancelledStatus::NotFound);
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

#[test]
fn every_default_parses_and_every_number_is_within_its_range() {
    // Values::read reads each default as if it were set: an unparsable default would fail here.
    let c = config(&[("DATABASE_URL", "postgres://x")]).expect("defaults");
    assert_eq!(c.additional_resources, DEFAULT_ADDITIONAL_RESOURCES);
    assert_eq!(c.storage_path, StoragePath::Local("./exports".into()));
    assert_eq!(c.max_connections_per_peer, 64);
    assert_eq!(c.metrics, MetricsEndpoint::Base);
    assert!(c.s3.gzip_copies && !c.s3.force_path_style && !c.trust_forwarded_headers);
    assert_eq!(c.database_pool_size, None);
    for s in table::SETTINGS {
        if let (table::Default::Value(v, _), table::Parser::Number { min, max }) =
            (&s.default, &s.parser)
        {
            let n: u64 = v.parse().expect("a number");
            assert!(n >= *min && max.is_none_or(|m| n <= m), "{}", s.name);
        }
    }
}

#[test]
fn values_out_of_range_are_errors_naming_the_variable_never_clamped() {
    for (name, bad) in [
        ("REPEAT_PERIOD", "99"),
        ("LEASE_SECONDS", "4"),
        ("MAX_ATTEMPTS", "0"),
        ("RETRY_AFTER_SECONDS", "0"),
        ("MAX_CONCURRENT_EXPORTS", "0"),
        ("MAX_STORED_EXPORTS", "0"),
        ("SERVE_HEADER_TIMEOUT_SECONDS", "0"),
        ("SERVE_MAX_CONNECTIONS", "0"),
        ("SERVE_BODY_BUDGET_BYTES", "1024"),
        ("SERVE_BODY_BUDGET_BYTES", "2147483648"),
        ("S3_MIN_UPLOAD_RATE_BYTES", "1023"),
        ("DATABASE_POOL_SIZE", "0"),
        ("EXPORT_ITEM_BYTES", "0"),
        ("MAX_ATTEMPTS", "4294967296"),
        ("EXPORT_SCAN_MAX_PATIENTS", "18446744073709551615"),
        ("JOB_RETENTION_HOURS", "18446744073709551615"),
        ("TRUST_FORWARDED_HEADERS", "maybe"),
        ("S3_GZIP_COPIES", "nope"),
        ("METRICS", "sometimes"),
        ("LOG_FORMAT", "xml"),
        ("METRICS_ADDR", "localhost"),
    ] {
        match config(&[("DATABASE_URL", "x"), (name, bad)]) {
            Err(ConfigError::Invalid { name: named, .. }) => assert_eq!(named, name, "{bad}"),
            other => panic!("{name}={bad}: {other:?}"),
        }
    }
    // Per peer: at most SERVE_MAX_CONNECTIONS when set; its default follows a lower maximum.
    assert!(config(&[
        ("DATABASE_URL", "x"),
        ("SERVE_MAX_CONNECTIONS", "10"),
        ("SERVE_MAX_CONNECTIONS_PER_PEER", "11"),
    ])
    .is_err());
    let c = config(&[("DATABASE_URL", "x"), ("SERVE_MAX_CONNECTIONS", "10")]).unwrap();
    assert_eq!(c.max_connections_per_peer, 10);
}

#[test]
fn one_boolean_parser_reads_every_flag() {
    for (text, value) in [("true", true), ("1", true), ("Yes", true), ("ON", true)] {
        assert_eq!(table::parse_bool(text), Ok(value), "{text}");
    }
    for (text, value) in [
        ("false", false),
        ("0", false),
        ("no", false),
        ("Off", false),
    ] {
        assert_eq!(table::parse_bool(text), Ok(value), "{text}");
    }
    let c = config(&[
        ("DATABASE_URL", "x"),
        ("TRUST_FORWARDED_HEADERS", "yes"),
        ("S3_GZIP_COPIES", "0"),
        ("S3_FORCE_PATH_STYLE", "false"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ("METRICS", "off"),
        ("CANCELLED_STATUS_CODE", "410"),
    ])
    .unwrap();
    assert!(c.trust_forwarded_headers && !c.s3.gzip_copies && !c.s3.force_path_style);
    assert_eq!(c.metrics, MetricsEndpoint::Off);
    assert_eq!(c.cancelled_status, CancelledStatus::Gone);
    let c = config(&[("DATABASE_URL", "x"), ("AWS_ENDPOINT_URL", "http://h:1")]).unwrap();
    assert!(
        c.s3.force_path_style,
        "an emulator endpoint implies path style"
    );
}

/// README.md's table of environment variables is the one `table::markdown` renders: change
/// the table in config/table.rs, then paste `bulk-export env --markdown` into the README.
#[test]
fn the_readme_lists_every_setting_as_the_table_says() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let rendered = table::markdown();
    let start = readme
        .find("| Variable | Default | Meaning |")
        .expect("the README's table of variables");
    let in_readme: String = readme[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        in_readme == rendered,
        "README.md's table of variables differs from config/table.rs: replace it with the \
         output of `cargo run -p shared --bin bulk-export -- env --markdown`"
    );
}
