//! `bulk-export delete Type/id…`: deletes resources (tombstones: `_since` exports list them in
//! deleted[]).

use std::process::ExitCode;

use shared::{db, load};

#[derive(clap::Args)]
pub struct Args {
    /// `Type/id` of each resource to delete.
    #[arg(required = true)]
    resources: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (_, pool) = crate::open_database(crate::default_pool_size).await?;
    let keys = args
        .resources
        .iter()
        .map(|r| load::parse_type_id(r).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let n = db::resources::delete_resources(&pool, &keys).await?;
    println!("deleted {n} of {} resources", keys.len());
    Ok(ExitCode::SUCCESS)
}
