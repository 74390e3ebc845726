//! `export_job_polls`: when each running job's status was last polled (the over-polling limit).
//! Kept apart from `export_jobs`, so that a poll never locks the row an exporter claims.

use std::time::Duration;

use uuid::Uuid;

use super::{DbError, Pool};

/// Records a status poll of a running job. Returns false when the previous poll was less than
/// `min_interval` ago (the client is polling too often). Never touches the job's own row, so a
/// poll can never make an exporter's claim skip the job.
pub async fn record_poll(pool: &Pool, id: Uuid, min_interval: Duration) -> Result<bool, DbError> {
    let client = pool.get().await?;
    record_poll_with(&client, id, min_interval).await
}

/// [`record_poll`] on a given connection or transaction.
pub async fn record_poll_with(
    client: &impl deadpool_postgres::GenericClient,
    id: Uuid,
    min_interval: Duration,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "INSERT INTO export_job_polls AS p (job_id, last_polled_at) VALUES ($1, now())
             ON CONFLICT (job_id) DO UPDATE SET last_polled_at = now()
             WHERE p.last_polled_at <= now() - make_interval(secs => $2)",
            &[&id, &min_interval.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}
