//! Writing: batches of resources stored by writer tasks, each on its own connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{LoadError, BATCH_BYTES, BATCH_SIZE};
use crate::db::resources::{upsert_resources, NewResource};
use crate::db::Pool;

/// What a writer task is sent.
enum WriterMsg {
    Batch(Vec<NewResource>),
    /// Answered once every batch sent before it is stored.
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// One writer: its own connection, batches in the order they were sent.
struct Writer {
    tx: tokio::sync::mpsc::Sender<WriterMsg>,
    task: tokio::task::JoinHandle<Result<(), LoadError>>,
}

impl Writer {
    /// A writer storing batches on its own connection, adding what it stored to `loaded`.
    fn spawn(pool: Pool, loaded: Arc<AtomicU64>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<WriterMsg>(2);
        let task = tokio::spawn(async move {
            // Batches are stored as new resources without looking them up while they are (a
            // first load); after a batch that replaced some, they are looked up.
            let mut assume_new = true;
            while let Some(msg) = rx.recv().await {
                match msg {
                    WriterMsg::Batch(batch) => {
                        let done = upsert_resources(&pool, batch, assume_new).await?;
                        assume_new = !done.replaced;
                        loaded.fetch_add(done.stored, Ordering::Relaxed);
                    }
                    WriterMsg::Sync(done) => {
                        let _ = done.send(());
                    }
                }
            }
            Ok(())
        });
        Writer { tx, task }
    }
}

/// How many writers by default: one per core, at least two (one stores while the other waits
/// on I/O). Each keeps about one of the database server's cores busy.
pub fn writer_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// The writers of a load and the batches they are being sent. A resource always goes to the
/// same writer (by a hash of its type and id), so a later line for the same resource is stored
/// after an earlier one, and no two writers touch the same rows (no lock waits, no deadlocks).
pub(super) struct Writers {
    batches: Vec<Vec<NewResource>>,
    /// Bytes of resource text in each of `batches`.
    batch_bytes: Vec<usize>,
    writers: Vec<Writer>,
    /// Resources stored so far, by all writers.
    loaded: Arc<AtomicU64>,
}

impl Writers {
    /// `count` writers (at least one) on `pool`'s connections; none without a pool.
    pub(super) fn spawn(pool: Option<&Pool>, count: usize) -> Self {
        let loaded = Arc::new(AtomicU64::new(0));
        let writers: Vec<Writer> = match pool {
            Some(pool) => (0..count.max(1))
                .map(|_| Writer::spawn(pool.clone(), loaded.clone()))
                .collect(),
            None => Vec::new(),
        };
        Writers {
            batches: (0..writers.len()).map(|_| Vec::new()).collect(),
            batch_bytes: vec![0; writers.len()],
            writers,
            loaded,
        }
    }

    /// No writer: a check (or the writers have stopped).
    pub(super) fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }

    /// Resources the writers have stored so far.
    pub(super) fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Adds `resource` to its writer's batch, and sends the batch once it is full: whether it
    /// sent one.
    pub(super) async fn push(&mut self, resource: NewResource) -> Result<bool, LoadError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&resource.resource_type, &resource.id).hash(&mut h);
        let w = (h.finish() % self.writers.len() as u64) as usize;
        self.batch_bytes[w] += resource.text.len();
        self.batches[w].push(resource);
        if self.batches[w].len() < BATCH_SIZE && self.batch_bytes[w] < BATCH_BYTES {
            return Ok(false);
        }
        self.batch_bytes[w] = 0;
        let batch = std::mem::take(&mut self.batches[w]);
        self.send(w, WriterMsg::Batch(batch)).await?;
        Ok(true)
    }

    /// Sends to writer `w`; if it stopped, its error.
    async fn send(&mut self, w: usize, msg: WriterMsg) -> Result<(), LoadError> {
        if self.writers[w].tx.send(msg).await.is_err() {
            return Err(self.stop().await.err().unwrap_or(LoadError::WriterStopped));
        }
        Ok(())
    }

    /// Stores everything pushed so far and waits until it is stored.
    pub(super) async fn flush(&mut self) -> Result<(), LoadError> {
        let mut waits = Vec::new();
        for w in 0..self.writers.len() {
            self.batch_bytes[w] = 0;
            let batch = std::mem::take(&mut self.batches[w]);
            if !batch.is_empty() {
                self.send(w, WriterMsg::Batch(batch)).await?;
            }
            let (done, wait) = tokio::sync::oneshot::channel();
            self.send(w, WriterMsg::Sync(done)).await?;
            waits.push(wait);
        }
        for wait in waits {
            if wait.await.is_err() {
                self.stop().await?;
            }
        }
        Ok(())
    }

    /// Ends the writers; the first error any of them met.
    pub(super) async fn stop(&mut self) -> Result<(), LoadError> {
        let mut first = Ok(());
        for w in std::mem::take(&mut self.writers) {
            drop(w.tx);
            let result = match w.task.await {
                Ok(r) => r,
                Err(e) => Err(LoadError::WriterFailed(e)),
            };
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}
