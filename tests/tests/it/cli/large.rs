//! Large resources: a load refuses one over its limit by file and line without reading it into
//! memory, and a resource within the limit is loaded and exported holding a few copies at most
//! (peak resident memory of each process, from /proc).

use std::time::Duration;

use integration_tests::{bulk_export_bin, TestDb};

use super::{run, spawn_serve};

/// The peak resident memory (VmHWM) of process `pid` so far, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    kb.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// A Binary resource of about `bytes` bytes, on one line, whose data does not compress away.
fn binary_line(id: &str, bytes: usize) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: String = (0..bytes / 4 * 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            B64[(x % 64) as usize] as char
        })
        .collect();
    format!(
        r#"{{"resourceType":"Binary","id":"{id}","contentType":"application/octet-stream","data":"{data}"}}"#
    )
}

/// Runs `bulk-export args` to its end, sampling its peak memory: (exit code, stdout, stderr,
/// peak bytes).
async fn run_measured(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String, u64) {
    let child = tokio::process::Command::new(bulk_export_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bulk-export runs");
    let pid = child.id().expect("pid");
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while let Some(p) = peak_rss(pid) {
            peak = peak.max(p);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        peak
    });
    let out = child.wait_with_output().await.expect("bulk-export ends");
    let peak = sampler.await.expect("sampler");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        peak,
    )
}

#[tokio::test]
async fn load_refuses_a_resource_over_the_limit_by_file_and_line_and_loads_the_rest() {
    let db = TestDb::new().await;
    let dir = integration_tests::temp_dir();
    let big = binary_line("big", 3 << 20);
    let ndjson = dir.join("mixed.ndjson");
    std::fs::write(
        &ndjson,
        format!(
            "{}\n{big}\n{}\n",
            r#"{"resourceType":"Patient","id":"p1"}"#, r#"{"resourceType":"Patient","id":"p2"}"#
        ),
    )
    .expect("write");
    // A Bundle is read whole: the limit applies to its file.
    let bundle = dir.join("bundle.json");
    std::fs::write(
        &bundle,
        format!(
            r#"{{"resourceType":"Bundle","type":"collection","entry":[{{"resource":{big}}}]}}"#
        ),
    )
    .expect("write");
    let (code, stdout, stderr) = run(
        &[
            "load",
            "--max-resource-mb",
            "2",
            &ndjson.display().to_string(),
            &bundle.display().to_string(),
        ],
        &[("DATABASE_URL", &db.url)],
    )
    .await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    let limit = 2u64 << 20;
    assert!(
        stderr.contains(&format!(
            "rejected {}:2: the line is {} bytes, over the limit of {limit} bytes for a resource \
             (`bulk-export load --max-resource-mb` sets it)",
            ndjson.display(),
            big.len()
        )),
        "{stderr}"
    );
    let bundle_len = std::fs::metadata(&bundle).expect("size").len();
    assert!(
        stderr.contains(&format!(
            "rejected {}:1: the file is {bundle_len} bytes, over the limit of {limit} bytes",
            bundle.display()
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains("loaded 2 resources from 2 files"),
        "{stdout}"
    );
    assert!(stdout.contains("2 rejected"), "{stdout}");
    let ids: Vec<String> = db
        .pool
        .get()
        .await
        .expect("conn")
        .query(
            "SELECT resource_type || '/' || id FROM resources ORDER BY 1",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["Patient/p1", "Patient/p2"]);

    // `--check` refuses the same lines, without a database.
    let (code, _, stderr) = run(
        &[
            "load",
            "--check",
            "--max-resource-mb",
            "2",
            &ndjson.display().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(":2: the line is "), "{stderr}");
}

/// A resource of 40 MiB: `load` and `serve` each take at most about three times its size over
/// what they take for a small one (measured: load 3.2x, where it took 5.1x when each stage held
/// a copy; serve 3.0x, where it took 3.4x), and the exported line is the stored one, exactly.
#[tokio::test]
async fn a_large_resource_is_loaded_and_exported_within_a_few_copies_of_its_size() {
    let db = TestDb::new().await;
    let dir = integration_tests::temp_dir();
    let size: u64 = 40 << 20;
    let small = dir.join("small.ndjson");
    std::fs::write(&small, "{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n").expect("write");
    let large = dir.join("large.ndjson");
    std::fs::write(&large, binary_line("big", size as usize) + "\n").expect("write");
    let env = [("DATABASE_URL", db.url.as_str())];

    // The same load of one small resource: what the process takes whatever it loads.
    let (code, _, stderr, base) = run_measured(&["load", &small.display().to_string()], &env).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr, peak) =
        run_measured(&["load", &large.display().to_string()], &env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("loaded 1 resources"), "{stdout}");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "load: {:.0} MiB for a {:.0} MiB resource, {:.0} MiB for a small one",
        mib(peak),
        mib(size),
        mib(base)
    );
    assert!(
        peak.saturating_sub(base) <= size * 7 / 2,
        "load took {:.0} MiB over its {:.0} MiB base for a {:.0} MiB resource",
        mib(peak - base),
        mib(base),
        mib(size)
    );

    let storage = integration_tests::temp_dir();
    let (child, base_url) = spawn_serve(
        &["--insecure", "--workers", "1"],
        &[
            ("DATABASE_URL", &db.url),
            ("STORAGE_PATH", &storage.display().to_string()),
            ("MIN_POLL_INTERVAL_MS", "50"),
        ],
        false,
    )
    .await;
    let pid = child.id().expect("pid");
    let http = integration_tests::http_client();
    // Its footprint serving, before the export.
    http.get(format!("{base_url}/metadata"))
        .send()
        .await
        .expect("metadata");
    let serve_base = peak_rss(pid).expect("serve runs");
    let resp = integration_tests::kickoff(&http, &format!("{base_url}/$export?_type=Binary")).await;
    assert_eq!(resp.status(), 202);
    let status_url = integration_tests::status_url_of(resp).await;
    let done = integration_tests::poll(&http, &status_url, Duration::from_secs(120)).await;
    assert_eq!(done.status(), 200);
    let serve_peak = peak_rss(pid).expect("serve runs");
    let manifest: serde_json::Value = done.json().await.expect("manifest");
    let lines = integration_tests::download_lines(&http, &manifest).await;
    let stored: String = db
        .pool
        .get()
        .await
        .expect("conn")
        .query_one("SELECT resource FROM resources WHERE id = 'big'", &[])
        .await
        .expect("stored")
        .get(0);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0] == stored,
        "the exported line is the stored resource, byte for byte"
    );
    eprintln!(
        "serve: {:.0} MiB exporting a {:.0} MiB resource, {:.0} MiB before",
        mib(serve_peak),
        mib(size),
        mib(serve_base)
    );
    assert!(
        serve_peak.saturating_sub(serve_base) <= size * 13 / 4,
        "serve took {:.0} MiB over its {:.0} MiB base to export a {:.0} MiB resource",
        mib(serve_peak - serve_base),
        mib(serve_base),
        mib(size)
    );
    drop(child);
}
