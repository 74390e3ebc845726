//! What a newcomer sees from `bulk-export` when something is wrong: one clear line naming what
//! failed and what to do, no backtrace (even with RUST_BACKTRACE set), no colour escapes when
//! the output is not a terminal, and each subcommand's --help naming its environment.

use integration_tests::{bulk_export_bin, free_port, local_server, wait_listening, TestDb};

/// Runs `bulk-export args` with `env`, as a developer machine would (RUST_BACKTRACE=1).
async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bulk_export_bin())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("bulk-export runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bulk-export serve args` as a process of its own on a free port with `env` (stderr piped
/// when `logs`): the child, and its base URL once it listens.
async fn spawn_serve(
    args: &[&str],
    env: &[(&str, &str)],
    logs: bool,
) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = tokio::process::Command::new(bulk_export_bin())
        .args(["serve", "--port", &port.to_string()])
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(if logs {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("serve");
    wait_listening(port).await;
    (child, format!("http://127.0.0.1:{port}"))
}

fn assert_one_clean_error(stderr: &str) {
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour escapes: {stderr:?}");
}

mod bodies;
mod errors;
mod large;
mod operate;
