//! One function instance: the shipped bootstrap under AWS's Runtime Interface Emulator (RIE).
//!
//! The RIE serves Lambda's Invoke API on one port and the Runtime API the bootstrap polls on
//! another; it starts the bootstrap on the first invoke (the cold start, its `Init Duration` in
//! the REPORT line), keeps it warm across invokes, and SIGKILLs it at the function timeout. It
//! takes one invoke at a time (a concurrent one crashes it), so each instance has a lock, and a
//! function that runs concurrently gets one emulator per instance, as Lambda gives it one
//! execution environment per concurrent invoke.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// The RIE binary: `LAMBDA_RIE`, or the one the aws-sam-cli wheel ships in the tools venv
/// (`TOOLS_VENV`, set by scripts/test.sh).
pub fn rie_binary() -> PathBuf {
    if let Ok(path) = std::env::var("LAMBDA_RIE") {
        return PathBuf::from(path);
    }
    let venv = std::env::var("TOOLS_VENV").expect(
        "LAMBDA_RIE or TOOLS_VENV must be set: run the tests with scripts/test.sh, which installs \
         aws-sam-cli (it ships AWS's Lambda Runtime Interface Emulator)",
    );
    let lib = Path::new(&venv).join("lib");
    for entry in std::fs::read_dir(&lib).expect("venv lib") {
        let rie = entry
            .expect("entry")
            .path()
            .join("site-packages/samcli/local/rapid/aws-lambda-rie-x86_64");
        if rie.exists() {
            return rie;
        }
    }
    panic!("no aws-lambda-rie-x86_64 under {lib:?}");
}

/// The one binary every function of template.yaml runs (`bulk-export-lambda`), built for this
/// machine beside the test binary (target/<profile>/), or `LAMBDA_BOOTSTRAP`.
pub fn bootstrap_binary() -> PathBuf {
    if let Ok(path) = std::env::var("LAMBDA_BOOTSTRAP") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("exe");
    let mut dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let bin = dir.join("bulk-export-lambda");
    assert!(
        bin.exists(),
        "{bin:?} missing: cargo build --workspace --bins (scripts/test.sh does)"
    );
    bin
}

/// What the Invoke API answered.
#[derive(Debug)]
pub struct Invocation {
    /// The Invoke API's HTTP status: 200 for a result or a function error, 502 for an init
    /// failure or a crash.
    pub status: u16,
    pub body: bytes::Bytes,
    pub elapsed: Duration,
}

impl Invocation {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `{"errorMessage", "errorType"}` (a function error, a timeout) or a 5xx from the emulator.
    pub fn is_error(&self) -> bool {
        self.status != 200 || self.json().get("errorMessage").is_some()
    }
}

/// A function's deployment as the harness runs it: its Handler, timeout, memory and environment.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub handler: String,
    pub timeout_seconds: u64,
    pub memory_mb: u64,
    pub env: BTreeMap<String, String>,
}

pub struct Emulator {
    pub spec: FunctionSpec,
    pub invoke_url: String,
    pub log_path: PathBuf,
    child: std::sync::Mutex<Option<std::process::Child>>,
    busy: Mutex<()>,
    client: reqwest::Client,
}

impl Emulator {
    /// Starts the RIE for `spec` with exactly its environment (plus what Lambda itself sets:
    /// `_HANDLER`, the `AWS_LAMBDA_*` variables, region and credentials, and `PATH`).
    pub async fn start(spec: FunctionSpec, aws: &BTreeMap<String, String>) -> Emulator {
        let invoke_port = crate::free_port();
        let runtime_port = crate::free_port();
        let log_path = crate::temp_dir().join(format!("{}.log", spec.name));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = std::process::Command::new(rie_binary());
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("_HANDLER", &spec.handler)
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
            .env(
                "AWS_LAMBDA_FUNCTION_TIMEOUT",
                spec.timeout_seconds.to_string(),
            )
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            )
            .envs(aws)
            .envs(&spec.env)
            .arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{invoke_port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{runtime_port}"))
            .arg(bootstrap_binary())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // A group of its own, so that stopping the emulator also stops the bootstrap it started.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start aws-lambda-rie");
        wait_listening(invoke_port).await;
        Emulator {
            spec,
            invoke_url: format!(
                "http://127.0.0.1:{invoke_port}/2015-03-31/functions/function/invocations"
            ),
            log_path,
            child: std::sync::Mutex::new(Some(child)),
            busy: Mutex::new(()),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    /// Invokes the function with `payload` (RequestResponse), one invoke at a time.
    pub async fn invoke(&self, payload: &serde_json::Value) -> Invocation {
        let _one_at_a_time = self.busy.lock().await;
        let started = Instant::now();
        let resp = self
            .client
            .post(&self.invoke_url)
            .timeout(Duration::from_secs(self.spec.timeout_seconds + 60))
            .body(payload.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("invoke {}: {e}\n{}", self.spec.name, self.log()));
        let status = resp.status().as_u16();
        let body = resp.bytes().await.expect("invoke body");
        Invocation {
            status,
            body,
            elapsed: started.elapsed(),
        }
    }

    /// Everything the emulator and the function printed so far (START/END/REPORT lines and the
    /// function's own log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The duration of each cold start's init phase, in ms (the emulator's `INIT REPORT` lines;
    /// the near-zero ones it prints for an invoke after a failed init are left out).
    pub fn init_durations_ms(&self) -> Vec<f64> {
        self.log()
            .lines()
            .filter_map(|l| l.split("INIT REPORT(durationMs: ").nth(1))
            .filter_map(|rest| rest.trim_end_matches(')').parse::<f64>().ok())
            .filter(|ms| *ms >= 1.0)
            .collect()
    }

    /// Invocations the emulator ended at the function timeout (it SIGKILLs the runtime).
    pub fn timeouts(&self) -> usize {
        self.log().matches("Reset initiated: Timeout").count()
    }

    /// Invocations so far (their START lines: failed ones have no REPORT line).
    pub fn invocations(&self) -> usize {
        self.log().matches("START RequestId").count()
    }

    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("child").take() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("aws-lambda-rie did not listen on {port}");
}
