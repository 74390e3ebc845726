//! Storage calls the heartbeat can see: every call of the exporter's store is timed, so that a
//! heartbeat stops renewing its lease when a call runs past the store's deadline
//! ([`ObjectStore::call_deadline`]) and another exporter takes the item once storage answers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::storage::{Download, ObjectStore, ObjectWriter, StorageError, Written};

/// The storage calls in flight and when each began.
#[derive(Default)]
pub(super) struct CallClock {
    next: AtomicU64,
    running: Mutex<HashMap<u64, Instant>>,
}

impl CallClock {
    async fn time<T>(&self, call: impl Future<Output = T>) -> T {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Instant::now());
        struct Done<'a>(&'a CallClock, u64);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&self.1);
            }
        }
        let _done = Done(self, id);
        call.await
    }

    /// How long the oldest call in flight has been running.
    pub(super) fn longest(&self) -> Option<Duration> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .min()
            .map(|t| t.elapsed())
    }
}

/// A store whose calls are timed by a [`CallClock`].
pub(super) struct Watched {
    pub(super) inner: Arc<dyn ObjectStore>,
    pub(super) clock: Arc<CallClock>,
}

#[async_trait]
impl ObjectStore for Watched {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let inner = self.clock.time(self.inner.writer(key)).await?;
        Ok(Box::new(WatchedWriter {
            inner,
            clock: self.clock.clone(),
        }))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        self.clock.time(self.inner.delete_prefix(prefix)).await
    }

    async fn download(&self, key: &str, ttl: Duration) -> Result<Download, StorageError> {
        self.inner.download(key, ttl).await
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        self.clock.time(self.inner.read(key)).await
    }

    fn call_deadline(&self) -> Option<Duration> {
        self.inner.call_deadline()
    }
}

struct WatchedWriter {
    inner: Box<dyn ObjectWriter>,
    clock: Arc<CallClock>,
}

#[async_trait]
impl ObjectWriter for WatchedWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.clock.time(self.inner.write(data)).await
    }

    async fn finish(self: Box<Self>) -> Result<Written, StorageError> {
        let WatchedWriter { inner, clock } = *self;
        clock.time(inner.finish()).await
    }

    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        let WatchedWriter { inner, clock } = *self;
        clock.time(inner.abort()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_clock_sees_a_call_only_while_it_runs() {
        let clock = CallClock::default();
        assert_eq!(clock.longest(), None);
        clock
            .time(async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                assert!(clock
                    .longest()
                    .is_some_and(|d| d >= Duration::from_millis(20)));
            })
            .await;
        assert_eq!(clock.longest(), None);
    }
}
