//! `bulk-export jobs [ID]`: the newest jobs, or one with its progress, counts and errors.

use anyhow::bail;
use shared::cli::job_state;
use shared::db;

pub async fn jobs_command(
    pool: &db::Pool,
    id: Option<uuid::Uuid>,
    limit: i64,
) -> anyhow::Result<()> {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_string(), |t| {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        })
    };
    let Some(id) = id else {
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
        return Ok(());
    };
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
