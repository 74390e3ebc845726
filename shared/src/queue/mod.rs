//! Queue port: wakes the exporter when a job is created or needs attention. The job table is the
//! source of truth, so a lost message costs at most one RepeatPeriod, never a job.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
#[error("could not send wake-up for job {job_id} to {queue}: {message}")]
pub struct QueueError {
    pub job_id: Uuid,
    pub queue: String,
    pub message: String,
}

#[async_trait]
pub trait JobQueue: Send + Sync {
    async fn send(&self, job_id: Uuid) -> Result<(), QueueError>;

    /// `count` wake-ups for one job: one per work item, so that as many exporters as the queue
    /// allows (the exporter function's maximum concurrency in AWS) share it.
    async fn send_many(&self, job_id: Uuid, count: usize) -> Result<(), QueueError> {
        for _ in 0..count {
            self.send(job_id).await?;
        }
        Ok(())
    }
}

/// The message body the exporter receives from SQS.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WakeMessage {
    pub job_id: Uuid,
}

/// aws-sdk-sqs adapter.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    pub async fn from_env(queue_url: String) -> Self {
        let shared = crate::aws::shared_config().await;
        Self::new(aws_sdk_sqs::Client::new(&shared), queue_url)
    }

    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        SqsQueue { client, queue_url }
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    /// Ten messages per call (SQS's batch limit).
    async fn send_many(&self, job_id: Uuid, count: usize) -> Result<(), QueueError> {
        let body = serde_json::to_string(&WakeMessage { job_id }).unwrap_or_default();
        let mut left = count;
        while left > 0 {
            let n = left.min(10);
            let mut batch = self.client.send_message_batch().queue_url(&self.queue_url);
            for i in 0..n {
                let entry = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(body.clone())
                    .build()
                    .map_err(|e| QueueError {
                        job_id,
                        queue: self.queue_url.clone(),
                        message: e.to_string(),
                    })?;
                batch = batch.entries(entry);
            }
            let out = batch.send().await.map_err(|e| QueueError {
                job_id,
                queue: self.queue_url.clone(),
                message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
            })?;
            if let Some(failed) = out.failed().first() {
                return Err(QueueError {
                    job_id,
                    queue: self.queue_url.clone(),
                    message: format!(
                        "{} of {n} messages refused: {}",
                        out.failed().len(),
                        failed.message().unwrap_or(failed.code())
                    ),
                });
            }
            left -= n;
        }
        Ok(())
    }

    async fn send(&self, job_id: Uuid) -> Result<(), QueueError> {
        let body = serde_json::to_string(&WakeMessage { job_id }).unwrap_or_default();
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| QueueError {
                job_id,
                queue: self.queue_url.clone(),
                message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
            })
    }
}

/// In-process wake-up for `bulk-export serve`: the exporter loop waits on the same [`Notify`].
#[derive(Clone, Default)]
pub struct LocalQueue {
    pub notify: Arc<Notify>,
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn send(&self, _job_id: Uuid) -> Result<(), QueueError> {
        self.notify.notify_one();
        Ok(())
    }
}

/// No queue configured: the scheduled exporter run finds new jobs.
pub struct NoQueue;

#[async_trait]
impl JobQueue for NoQueue {
    async fn send(&self, _job_id: Uuid) -> Result<(), QueueError> {
        Ok(())
    }
}

pub async fn from_config(queue_url: Option<&str>) -> Arc<dyn JobQueue> {
    match queue_url {
        Some(url) => Arc::new(SqsQueue::from_env(url.to_string()).await),
        None => Arc::new(NoQueue),
    }
}
