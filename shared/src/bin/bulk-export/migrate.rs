//! `bulk-export migrate`: applies pending database migrations.

use std::process::ExitCode;

pub async fn run() -> anyhow::Result<ExitCode> {
    let (_, pool) = crate::connect(crate::default_pool_size).await?;
    let applied = shared::db::migrate(&pool).await?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        println!("applied migrations: {}", applied.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
