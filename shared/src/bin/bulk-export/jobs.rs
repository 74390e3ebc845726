//! `bulk-export jobs [ID]`: the newest jobs, or one with its progress, counts and errors; or
//! cancel or retry one.

use std::process::ExitCode;

use anyhow::bail;
use shared::db;

#[derive(clap::Args)]
pub struct Args {
    /// A job id: show this job; without: list the newest jobs.
    id: Option<uuid::Uuid>,
    /// How many jobs to list.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Cancel the job (a running one stops at its exporters' next lease check; its files
    /// are deleted), as a client's DELETE would.
    #[arg(long, requires = "id", conflicts_with = "retry")]
    cancel: bool,
    /// Export a Failed job again from where it stopped (same transaction time; finished
    /// parts kept), before its files expire.
    #[arg(long, requires = "id")]
    retry: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (_, pool) = crate::open_database(crate::default_pool_size).await?;
    match args.id {
        Some(id) if args.cancel => {
            if !db::jobs::request_cancellation(&pool, id).await? {
                bail!("job {id} is unknown, already cancelled or deleted");
            }
            println!("job {id}: cancellation requested (an exporter finishes it)");
        }
        Some(id) if args.retry => {
            if !db::jobs::retry_failed(&pool, id).await? {
                bail!("job {id} is not a Failed job whose files are still kept");
            }
            println!("job {id}: queued again (an exporter resumes it)");
        }
        Some(id) => show_job(&pool, id).await?,
        None => list_jobs(&pool, args.limit).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("-".to_string(), |t| {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    })
}

async fn list_jobs(pool: &db::Pool, limit: i64) -> anyhow::Result<()> {
    println!("id\tstatus\tlevel\tclient\tcreated\tcompleted\terror");
    let now = chrono::Utc::now();
    for j in db::jobs::list_jobs(pool, limit.clamp(1, 10_000)).await? {
        let status = match job_state(j.status.as_str(), j.deleted_at, j.expires_at, now) {
            (_, true) if j.deleted_at.is_some() => format!("{} (deleted)", j.status.as_str()),
            (_, true) => format!("{} (expired)", j.status.as_str()),
            (_, false) => j.status.as_str().to_string(),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            j.id,
            status,
            j.level.as_str(),
            j.client_id.as_deref().unwrap_or("-"),
            time(Some(j.created_at)),
            time(j.completed_at),
            j.error.as_deref().unwrap_or("").replace(['\n', '\t'], " ")
        );
    }
    Ok(())
}

async fn show_job(pool: &db::Pool, id: uuid::Uuid) -> anyhow::Result<()> {
    let Some(j) = db::jobs::get_job(pool, id).await? else {
        bail!("no export job {id}");
    };
    let progress = match db::jobs::select_progress(pool, id).await? {
        db::jobs::JobProgress::Items { done, all } => format!("{done} of {all} parts"),
        db::jobs::JobProgress::Patients { done, all } => format!("{done} of {all} patients"),
    };
    println!("id:             {}", j.id);
    let (state, files_gone) = job_state(
        j.status.as_str(),
        j.deleted_at,
        j.expires_at,
        chrono::Utc::now(),
    );
    println!("status:         {state}");
    println!("level:          {}", j.level.as_str());
    println!("request:        {}", j.request_url);
    println!("client:         {}", j.client_id.as_deref().unwrap_or("-"));
    println!("created:        {}", time(Some(j.created_at)));
    println!("completed:      {}", time(j.completed_at));
    println!("expires:        {}", time(j.expires_at));
    let end = j.completed_at.unwrap_or_else(chrono::Utc::now);
    println!(
        "duration:       {:.1} s{}",
        (end - j.created_at).num_milliseconds() as f64 / 1000.0,
        if j.completed_at.is_none() {
            " so far"
        } else {
            ""
        }
    );
    println!("attempts:       {}", j.attempts);
    println!("progress:       {progress}");
    if files_gone {
        // Its files are no longer served (and purged): nothing of it is kept to count.
        println!("exported:       - (the files were removed)");
    } else {
        let files = db::files::select_files(pool, id).await?;
        println!(
            "exported:       {} resources, {} bytes in {} files",
            files.iter().map(|f| f.resource_count).sum::<i64>(),
            files.iter().map(|f| f.byte_count).sum::<i64>(),
            files.len()
        );
    }
    println!("error:          {}", j.error.as_deref().unwrap_or("-"));
    println!(
        "client is told: {}",
        j.public_error.as_deref().unwrap_or("-")
    );
    Ok(())
}

/// Whether a finished job's files are gone: deleted (a client's DELETE or `jobs --cancel`) or
/// expired, and its state as `bulk-export jobs ID` shows it: `Complete, deleted <time> — files
/// removed` (the files are no longer served, and the purge removes them), else the status.
pub fn job_state(
    status: &str,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> (String, bool) {
    let finished = matches!(status, "Complete" | "Failed");
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    match (deleted_at, expires_at) {
        (Some(d), _) if finished => (
            format!("{status}, deleted {} — files removed", time(d)),
            true,
        ),
        (None, Some(e)) if finished && e <= now => (
            format!("{status}, expired {} — files removed", time(e)),
            true,
        ),
        _ => (status.to_string(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_expired_finished_job_says_its_files_are_gone() {
        use chrono::TimeZone;
        let t = chrono::Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        let later = t + chrono::Duration::hours(1);
        assert_eq!(
            job_state("Complete", Some(t), Some(later), t),
            (
                "Complete, deleted 2024-05-01 12:00:00 — files removed".to_string(),
                true
            )
        );
        assert_eq!(
            job_state("Failed", None, Some(t), later),
            (
                "Failed, expired 2024-05-01 12:00:00 — files removed".to_string(),
                true
            )
        );
        assert_eq!(
            job_state("Complete", None, Some(later), t),
            ("Complete".to_string(), false)
        );
        // A cancelled running job is not "deleted with its files": it had none to serve.
        assert_eq!(
            job_state("Cancelled", Some(t), None, later),
            ("Cancelled".to_string(), false)
        );
    }
}
