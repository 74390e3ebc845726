//! A real client: `smart-fetch` (PyPI, SMART on FHIR team), unmodified, against
//! `bulk-export serve`. scripts/test.sh installs it and sets SMART_FETCH.
//!
//! Flags used: `--no-compression` (plain files to count), `--since-mode updated`, and
//! `--type`/`--type-filter` for the `_typeFilter` run. Its default filters stay on: they send
//! `_typeFilter=Observation?category=social-history%2Cvital-signs%2C…` (a URL-encoded comma list
//! inside one query). smart-fetch has no Patient-level flag; it appends `/$export` to
//! `--fhir-url`, so `<base>/Patient` gives one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use integration_tests::{config, temp_dir, Server, TestDb};
use shared::config::StoragePath;
use shared::storage::local::LocalStore;
use shared::storage::ObjectStore;

fn smart_fetch() -> String {
    std::env::var("SMART_FETCH").expect(
        "SMART_FETCH is not set: run the tests with scripts/test.sh, which installs smart-fetch",
    )
}

/// Runs `smart-fetch bulk` and returns resource counts per type from the files it wrote.
async fn run(args: &[&str]) -> BTreeMap<String, usize> {
    run_with(args, &[]).await
}

pub(crate) async fn run_with(args: &[&str], extra: &[&str]) -> BTreeMap<String, usize> {
    let out = temp_dir().join("out");
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new(smart_fetch())
            .arg("bulk")
            .args(args)
            .args(extra)
            .arg("--no-compression")
            .arg(&out)
            .output(),
    )
    .await
    .expect("smart-fetch finished in time")
    .expect("smart-fetch runs");
    assert!(
        output.status.success(),
        "smart-fetch {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    count_files(&out)
}

fn count_files(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("output dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        // Data files are <Type>.<NNN>.ndjson; log.ndjson and the error/ and deleted/ folders are not.
        let Some((rtype, rest)) = name.split_once('.') else {
            continue;
        };
        if !rest.ends_with(".ndjson") || !path.is_file() || rtype == "log" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            assert_eq!(v["resourceType"], rtype);
        }
        *counts.entry(rtype.to_string()).or_default() += text.lines().count();
    }
    counts
}

pub(crate) fn assert_matches(
    got: &BTreeMap<String, usize>,
    expected: &BTreeMap<String, usize>,
    what: &str,
) {
    for core in ["Patient", "Encounter", "Observation", "Condition"] {
        assert!(
            got.contains_key(core),
            "{what}: smart-fetch exported no {core}: {got:?}"
        );
    }
    for (t, n) in got {
        assert_eq!(Some(n), expected.get(t), "{what}: {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_fetch_exports_system_patient_group_and_since_unmodified() {
    let (db, data) = TestDb::from_template().await;
    let dir = temp_dir();
    let cfg = config(&db, StoragePath::Local(dir.clone()));
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir).expect("store"));
    let server = Server::start(cfg, db.pool.clone(), store).await;

    let system = run(&["--fhir-url", &server.base]).await;
    assert_matches(&system, &data.count_by_type(), "system");

    let patient = run(&["--fhir-url", &format!("{}/Patient", server.base)]).await;
    assert_matches(
        &patient,
        &data.expected_compartment_export(&data.patient_ids()),
        "Patient",
    );

    let group = run(&["--fhir-url", &server.base, "--group", &data.group_id]).await;
    assert_matches(
        &group,
        &data.expected_compartment_export(&data.group_members()),
        "Group",
    );

    // Its own filters: a comma list within one query, and queries for two types.
    let filtered = run(&[
        "--fhir-url",
        &server.base,
        "--type",
        "Observation,Condition",
        "--type-filter",
        "Observation?category=laboratory,vital-signs",
        "--type-filter",
        "Condition?clinical-status=http://terminology.hl7.org/CodeSystem/condition-clinical|active",
    ])
    .await;
    let coded = |r: &serde_json::Value, field: &str, codes: &[&str]| {
        let concepts = match &r[field] {
            serde_json::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        concepts.iter().any(|c| {
            c["coding"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|x| codes.iter().any(|code| x["code"] == *code))
            })
        })
    };
    let labs_and_vitals = data.count_where("Observation", |r| {
        coded(r, "category", &["laboratory", "vital-signs"])
    });
    let active = data.count_where("Condition", |r| coded(r, "clinicalStatus", &["active"]));
    assert!(labs_and_vitals > 0 && labs_and_vitals < data.count_by_type()["Observation"]);
    assert!(active > 0 && active < data.count_by_type()["Condition"]);
    assert_eq!(
        filtered,
        [
            ("Condition".to_string(), active),
            ("Observation".to_string(), labs_and_vitals)
        ]
        .into()
    );

    // --since: only what changed after it.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let patient_id = data.patient_ids().into_iter().next().expect("a patient");
    let changes = temp_dir().join("changes.ndjson");
    std::fs::write(
        &changes,
        format!("{{\"resourceType\":\"Patient\",\"id\":\"{patient_id}\",\"gender\":\"other\"}}\n"),
    )
    .expect("write");
    shared::load::load_paths(&db.pool, &[changes], |_| {})
        .await
        .expect("load");
    let since_args = ["--since", &since, "--since-mode", "updated"];
    let changed = run_with(&["--fhir-url", &server.base], &since_args).await;
    assert_eq!(changed, [("Patient".to_string(), 1)].into());

    // The same at Patient level: smart-fetch takes `[base]/Patient` as its FHIR URL and reads
    // the CapabilityStatement under it to decide that it may send `_since`.
    let patient_level = format!("{}/Patient", server.base);
    let changed = run_with(&["--fhir-url", &patient_level], &since_args).await;
    assert_eq!(changed, [("Patient".to_string(), 1)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_fetch_exports_with_smart_backend_services_authorization() {
    let (db, data) = TestDb::from_template().await;
    let dir = temp_dir();
    let mut cfg = config(&db, StoragePath::Local(dir.clone()));
    cfg.auth = shared::config::AuthMode::Smart {
        signing_key: Some(b"smart-fetch-test-signing-key-0123456789abcdef".to_vec()),
    };
    integration_tests::register_fixture_client(&db.pool, "smart-fetch", "system/*.read").await;
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir).expect("store"));
    let server = Server::start(cfg, db.pool.clone(), store).await;

    // Without credentials it gets nowhere.
    let out = temp_dir().join("denied");
    let denied = tokio::process::Command::new(smart_fetch())
        .args(["bulk", "--fhir-url", &server.base, "--no-compression"])
        .arg(&out)
        .output()
        .await
        .expect("smart-fetch runs");
    assert!(
        !denied.status.success(),
        "an export without a token must fail"
    );

    // RS384 key, system level; ES384 key, Group level.
    let rs = integration_tests::auth_fixture("rs384.jwks")
        .display()
        .to_string();
    let system = run_with(
        &["--fhir-url", &server.base],
        &["--smart-client-id", "smart-fetch", "--smart-key", &rs],
    )
    .await;
    assert_matches(&system, &data.count_by_type(), "system (RS384)");
    // Patient level: smart-fetch takes `<base>/Patient` as its FHIR URL (and discovers the
    // token endpoint there); its token is for the server's one canonical base.
    let patient = run_with(
        &["--fhir-url", &format!("{}/Patient", server.base)],
        &["--smart-client-id", "smart-fetch", "--smart-key", &rs],
    )
    .await;
    assert_matches(
        &patient,
        &data.expected_compartment_export(&data.patient_ids()),
        "Patient (RS384)",
    );
    let es = integration_tests::auth_fixture("es384.jwks")
        .display()
        .to_string();
    let group = run_with(
        &["--fhir-url", &server.base, "--group", &data.group_id],
        &["--smart-client-id", "smart-fetch", "--smart-key", &es],
    )
    .await;
    assert_matches(
        &group,
        &data.expected_compartment_export(&data.group_members()),
        "Group (ES384)",
    );
}

/// Keys from `bulk-export client keygen` work with smart-fetch as it is: given private.pem it
/// names the key by its RFC 7638 thumbprint, which keygen uses as the kid (issue 28 item 3);
/// given private.jwks it uses the kid written there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_fetch_gets_a_token_with_the_keys_of_client_keygen() {
    let (db, data) = TestDb::from_template().await;
    let dir = temp_dir();
    let mut cfg = config(&db, StoragePath::Local(dir.clone()));
    cfg.auth = shared::config::AuthMode::Smart {
        signing_key: Some(b"smart-fetch-keygen-signing-key-0123456789abcdef".to_vec()),
    };
    let keys = temp_dir().join("keys");
    let out = std::process::Command::new(integration_tests::bulk_export_bin())
        .args(["client", "keygen", "--out"])
        .arg(&keys)
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public: serde_json::Value =
        serde_json::from_slice(&std::fs::read(keys.join("public.jwks")).expect("public.jwks"))
            .expect("json");
    shared::db::clients::insert_client(
        &db.pool,
        &shared::db::clients::Client {
            client_id: "keygen-client".into(),
            jwks: Some(public),
            jwks_url: None,
            scopes: "system/*.read".into(),
        },
    )
    .await
    .expect("register");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir).expect("store"));
    let server = Server::start(cfg, db.pool.clone(), store).await;
    let patients = [("Patient".to_string(), data.count_by_type()["Patient"])].into();
    for key in ["private.pem", "private.jwks"] {
        let key = keys.join(key).display().to_string();
        let got = run_with(
            &["--fhir-url", &server.base, "--type", "Patient"],
            &["--smart-client-id", "keygen-client", "--smart-key", &key],
        )
        .await;
        assert_eq!(got, patients, "{key}");
    }
}
