//! `bulk-export jobs [ID]`: the newest jobs, or one with its progress, counts and errors.

use anyhow::bail;
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
        for j in db::jobs::list_jobs(pool, limit.clamp(1, 10_000)).await? {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                j.id,
                j.status.as_str(),
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
    println!("status:         {}", j.status.as_str());
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
    let files = db::files::select_files(pool, id).await?;
    println!(
        "exported:       {} resources, {} bytes in {} files",
        files.iter().map(|f| f.resource_count).sum::<i64>(),
        files.iter().map(|f| f.byte_count).sum::<i64>(),
        files.len()
    );
    println!("error:          {}", j.error.as_deref().unwrap_or("-"));
    println!(
        "client is told: {}",
        j.public_error.as_deref().unwrap_or("-")
    );
    Ok(())
}
