//! `bulk-export check [--repair]`: every stored resource's text must be a JSON resource with its
//! row's resourceType and id.

use std::process::ExitCode;

use shared::db;

#[derive(clap::Args)]
pub struct Args {
    /// Remove the failing rows (with their compartment, reference and Provenance rows),
    /// printing each, then record the check as holding. Load a correct version of each
    /// afterwards if it should exist.
    #[arg(long)]
    repair: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (_, pool) = crate::open_database(crate::default_pool_size).await?;
    let check = db::resources::check_stored_keys(&pool, 1000, args.repair).await?;
    if check.validated && !check.removed {
        println!("every stored resource has its key's resourceType and id");
        return Ok(ExitCode::SUCCESS);
    }
    let what = if check.removed {
        "removed (not a JSON resource with this resourceType and id)"
    } else {
        "not a JSON resource with this resourceType and id"
    };
    for (t, id) in &check.bad {
        println!("{t}/{id}: {what}");
    }
    let more = check.bad_count - check.bad.len() as i64;
    if more > 0 {
        println!("... and {more} more");
    }
    if check.removed {
        println!(
            "removed {} row(s); every stored resource now has its key's resourceType and id",
            check.bad_count
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{} stored row(s) fail the key check; an export copies them as they are. \
         Store a correct version of each (bulk-export load) or delete the row \
         (bulk-export check --repair removes every failing row), then run \
         bulk-export check again.",
        check.bad_count
    );
    Ok(ExitCode::from(2))
}
