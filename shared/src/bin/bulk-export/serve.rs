//! `bulk-export serve`: every HTTP route and the exporters in this process
//! (`shared::serve::assemble` builds them, as it does for the tests' server).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use shared::config::AuthMode;
use shared::{auth, storage, Config};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 8080, env = "PORT")]
    port: u16,
    #[arg(long, default_value = "127.0.0.1", env = "HOST")]
    host: IpAddr,
    /// No authorization at all (one machine only): same as AUTH=off.
    #[arg(long)]
    insecure: bool,
    /// Exporters run in this process; they share every export's work items (default: the
    /// number of cores).
    #[arg(long, env = "EXPORT_WORKERS")]
    workers: Option<usize>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let workers = shared::serve::worker_count(args.workers);
    // The HTTP routes' connections plus about three per exporter worker (a page read ahead, a
    // lease renewal, a checkpoint).
    let (mut config, pool) =
        crate::open_database(|c| c.database_pool_size.unwrap_or(8 + 3 * workers)).await?;
    choose_auth(&mut config, args.insecure);
    let (listener, addr) = shared::serve::bind(SocketAddr::new(args.host, args.port))
        .await
        .map_err(|e| anyhow::anyhow!(bind_error(&e, args.host, args.port)))?;
    if let Some(warning) = shared::serve::default_base_url(&mut config, addr) {
        let _ = writeln!(std::io::stderr(), "WARNING: {warning}");
    }
    let config = Arc::new(config);
    let store = storage::from_config(&config).await?;
    let app = shared::serve::assemble(config.clone(), pool, store, workers, addr);
    print_base(config.public_base_url.as_deref().unwrap_or_default());
    shared::serve::run(listener, app).await?;
    Ok(ExitCode::SUCCESS)
}

/// Authorization as configured (off with --insecure), said on stderr; a SMART configuration
/// without a signing key gets a random one: one process signs and checks its own tokens, which
/// end with it.
fn choose_auth(config: &mut Config, insecure: bool) {
    if insecure {
        config.auth = AuthMode::Off;
    }
    let said = match &config.auth {
        AuthMode::Off => "WARNING: authorization is off (--insecure or AUTH=off): anyone who can reach this port can export every record",
        AuthMode::Smart { signing_key: None } => {
            config.auth = AuthMode::Smart {
                signing_key: Some(auth::random_key()),
            };
            "authorization: SMART Backend Services (random token signing key; set TOKEN_SIGNING_KEY to keep tokens across restarts)"
        }
        AuthMode::Smart { .. } => "authorization: SMART Backend Services",
    };
    let _ = writeln!(std::io::stderr(), "{said}");
}

/// The FHIR base and the kick-off URLs on stdout. A closed stdout (`serve | head -1`, a
/// supervisor that reads one line) must not take the server down: these writes ignore errors,
/// unlike println!.
fn print_base(base: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "FHIR base URL: {base}");
    let _ = writeln!(
        out,
        "  kick-off: {base}/$export  {base}/Patient/$export  {base}/Group/{{id}}/$export"
    );
    let _ = out.flush();
}

/// The message for a `serve` port that cannot be bound.
fn bind_error(err: &std::io::Error, host: IpAddr, port: u16) -> String {
    match err.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "port {port} on {host} is already in use (another `bulk-export serve`?): stop that \
             process or choose another port: PORT=9000 (scripts/run-local.sh, or the environment) \
             or --port 9000"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "not allowed to listen on {host}:{port} (ports below 1024 need root): choose another \
             port with PORT= or --port"
        ),
        _ => format!("cannot listen on {host}:{port}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_names_the_port_and_the_setting() {
        let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let msg = bind_error(&e, "127.0.0.1".parse().expect("ip"), 8080);
        assert!(msg.contains("port 8080") && msg.contains("PORT="), "{msg}");
    }
}
