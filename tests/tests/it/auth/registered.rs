//! Registered clients: the CLI, removal, and the README flow end to end.

use super::*;

/// Removing a client stops its tokens at once, not when they expire.
#[tokio::test]
async fn a_removed_clients_tokens_stop_working_at_once() {
    let (server, _) = server().await;
    let token = access_token(&server.base, LIMITED, "system/*.read").await;
    let c = integration_tests::bearer_client(&token);
    let url = format!("{}/$export?_type=Patient", server.base);
    let resp = c
        .get(&url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("loc")
        .to_string();
    assert!(clients::delete_client(&server.state.pool, LIMITED)
        .await
        .expect("remove"));
    for resp in [
        c.get(&url)
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .send()
            .await
            .expect("kick-off"),
        c.get(&status_url).send().await.expect("status"),
    ] {
        assert_eq!(resp.status(), 401);
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .expect("challenge")
            .contains("invalid_token"));
    }
}

#[tokio::test]
async fn clients_are_registered_with_the_cli() {
    let db = TestDb::new().await;
    let run = |args: &[&str]| {
        std::process::Command::new(bulk_export_bin())
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("AUTH", "off")
            .output()
            .expect("run")
    };
    let jwks = auth_fixture("public.jwks");
    let out = run(&[
        "client",
        "add",
        "--jwks",
        jwks.to_str().expect("path"),
        "--scope",
        "system/Patient.read,system/Observation.rs",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stored = clients::get_client(&db.pool, &id)
        .await
        .expect("db")
        .expect("client");
    assert_eq!(stored.scopes, "system/Patient.read system/Observation.rs");
    assert_eq!(stored.jwks, Some(fixture_public_jwks()));
    let list = run(&["client", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));

    // Private keys, unsupported scopes and non-URLs are refused.
    let private = auth_fixture("rs384.jwks");
    let out = run(&["client", "add", "--jwks", private.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("private"));
    let out = run(&[
        "client",
        "add",
        "--jwks",
        jwks.to_str().expect("path"),
        "--scope",
        "user/*.read",
    ]);
    assert!(!out.status.success());
    let out = run(&["client", "add", "--jwks-url", "file:///etc/passwd"]);
    assert!(!out.status.success());
    // Plain http, this machine and link-local addresses only with the development flag.
    for url in [
        "http://client.example/jwks.json",
        "https://127.0.0.1:5432/",
        "https://169.254.169.254/latest/meta-data/",
    ] {
        let out = run(&["client", "add", "--jwks-url", url]);
        assert!(!out.status.success(), "{url}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--allow-insecure-jwks-url"),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&[
        "client",
        "add",
        "--jwks-url",
        "http://127.0.0.1:8081/jwks.json",
        "--allow-insecure-jwks-url",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "client",
        "add",
        "--jwks-url",
        "https://client.example/jwks.json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["client", "remove", &id]);
    assert!(out.status.success());
    assert!(clients::get_client(&db.pool, &id)
        .await
        .expect("db")
        .is_none());
}

// Multi-threaded: the CLI's blocking runs must not stall the in-process server it talks to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_flow_keygen_register_token_export_works_from_the_cli() {
    let (server, data) = server().await;
    let dir = temp_dir().join("my-client");
    let bin = bulk_export_bin();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .env("DATABASE_URL", server_db_url(&server))
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let d = dir.to_str().expect("path");
    run(&["client", "keygen", "--out", d]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("private.pem"))
            .expect("pem")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by its owner only"
        );
    }
    let id = run(&["client", "add", "--jwks", &format!("{d}/public.jwks")]);
    let token_url = format!("{}/auth/token", server.base);
    // The token helper needs no database.
    let out = std::process::Command::new(&bin)
        .args([
            "client",
            "token",
            "--client-id",
            &id,
            "--key",
            &format!("{d}/private.pem"),
            "--token-url",
            &token_url,
        ])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let status_url = kickoff(&format!("{}/$export?_type=Patient", server.base), &token).await;
    let manifest = wait_manifest(&status_url, &token).await;
    assert_eq!(manifest["output"][0]["count"], data.patient_ids().len());
}
