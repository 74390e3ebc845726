//! Lambda's SQS event source mapping for one exporter instance: long-polls the queue for up to
//! `BatchSize` messages, invokes the function with them as an SQS event, and deletes the
//! messages the function did not list in `batchItemFailures` (`ReportBatchItemFailures`). A
//! function error or timeout deletes none. Messages not deleted come back after the queue's
//! visibility timeout, and the queue's redrive policy moves one to the dead-letter queue after
//! `maxReceiveCount` receives (moto applies it, as SQS does).

use std::collections::BTreeSet;
use std::sync::Arc;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde_json::{json, Value};

use super::emulator::Emulator;

pub struct Poller {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Poller {
    pub fn start(
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        batch_size: usize,
        exporter: Arc<Emulator>,
    ) -> Poller {
        let task = tokio::spawn(async move {
            loop {
                let received = sqs
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(batch_size as i32)
                    .wait_time_seconds(1)
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .send()
                    .await;
                let messages = match received {
                    Ok(out) => out.messages.unwrap_or_default(),
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue;
                    }
                };
                if messages.is_empty() {
                    continue;
                }
                let event = sqs_event(&queue_url, &messages);
                let invocation = exporter.invoke(&event).await;
                let failed: BTreeSet<String> = if invocation.is_error() {
                    messages
                        .iter()
                        .filter_map(|m| m.message_id().map(str::to_string))
                        .collect()
                } else {
                    invocation.json()["batchItemFailures"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_string))
                        .collect()
                };
                for m in &messages {
                    if failed.contains(m.message_id().unwrap_or_default()) {
                        continue;
                    }
                    if let Some(handle) = m.receipt_handle() {
                        let _ = sqs
                            .delete_message()
                            .queue_url(&queue_url)
                            .receipt_handle(handle)
                            .send()
                            .await;
                    }
                }
            }
        });
        Poller { task }
    }
}

/// The SQS event Lambda builds from received messages.
pub fn sqs_event(queue_url: &str, messages: &[aws_sdk_sqs::types::Message]) -> Value {
    let queue_name = queue_url.rsplit('/').next().unwrap_or_default();
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attrs = m.attributes();
            let attr = |name: MessageSystemAttributeName| {
                attrs
                    .and_then(|a| a.get(&name))
                    .cloned()
                    .unwrap_or_default()
            };
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": {
                    "ApproximateReceiveCount": attr(MessageSystemAttributeName::ApproximateReceiveCount),
                    "SentTimestamp": attr(MessageSystemAttributeName::SentTimestamp),
                    "SenderId": attr(MessageSystemAttributeName::SenderId),
                    "ApproximateFirstReceiveTimestamp": attr(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp),
                },
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:us-east-1:123456789012:{queue_name}"),
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({ "Records": records })
}
