//! The view writer of `$viewdefinition-export`: one work item's key range of a type, read as
//! `typed` reads it (the same phases, snapshots and checkpoints, so a view export is exact at
//! its transaction time), each resource turned into the rows of every view of its type, each
//! view's rows encoded (ndjson, CSV or Parquet) into files of its own of about `MAX_FILE_BYTES`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sink::FileSink;
use super::{Exporter, Failure, ItemOutcome, Unexportable, PAGE_BYTES};
use crate::db::reads::{self, Selection, StreamedRow};
use crate::db::work_items::{self, Checkpointed, Phase, WorkItem};
use crate::db::DbError;
use crate::export::manifest::{ExportFile, FileKind};
use crate::export::params::{NamedView, ViewFormat};
use crate::export::JobStatus;

/// Bytes the open Parquet files of one item hold between them in row groups in progress (each
/// view's row groups end at its share: at most 16 MiB, at least 1 MiB).
const VIEW_MEMORY: usize = 32 << 20;

/// How often the writer checks its lease and its job's status (cancellation).
const RENEW_EVERY: Duration = Duration::from_millis(500);

/// A view of the item's type, ready to run.
pub(super) struct ItemView {
    name: String,
    view: Arc<sof::View>,
}

/// The views of `views` over `resource_type` (validated at kick-off; a stored job that no
/// longer validates fails for good).
pub(super) fn item_views(
    views: &[NamedView],
    resource_type: &str,
) -> Result<Vec<ItemView>, Failure> {
    let mut out = Vec::new();
    for v in views {
        let view = sof::View::from_json(&v.definition).map_err(|e| {
            Failure::Permanent(Unexportable::View(format!(
                "view {}: {}: {}",
                v.name,
                e.expression(),
                e.message()
            )))
        })?;
        if view.resource_type() == resource_type {
            out.push(ItemView {
                name: v.name.clone(),
                view: Arc::new(view),
            });
        }
    }
    Ok(out)
}

/// The format of the job's files.
pub(super) fn file_format(format: Option<&ViewFormat>) -> Result<sof_files::Format, Failure> {
    let (code, header) = format.map_or(("ndjson", true), |f| (f.code.as_str(), f.header));
    sof_files::Format::parse(code, header)
        .map_err(|e| Failure::Permanent(Unexportable::View(format!("_format: {e}"))))
}

/// One file of each view: its encoder and the object its bytes go to.
struct ViewFile {
    view: Arc<sof::View>,
    encoder: sof_files::Encoder,
    sink: FileSink,
}

/// The files of one step of an item: one per view of its type.
struct ViewFiles {
    files: Vec<ViewFile>,
    /// Rows of one resource, flattened (reused).
    flat: Vec<serde_json::Value>,
    /// Encoded bytes on their way to a file (reused).
    out: Vec<u8>,
}

impl ViewFiles {
    async fn open(
        ex: &Exporter,
        item: &WorkItem,
        views: &[ItemView],
        format: &sof_files::Format,
    ) -> Result<ViewFiles, Failure> {
        let mut files: Vec<ViewFile> = Vec::with_capacity(views.len());
        // The views of a type share one budget for their Parquet row groups in progress.
        let options = sof_files::Options::sharing(VIEW_MEMORY, views.len());
        for v in views {
            let encoder =
                match sof_files::Encoder::with_options(*format, v.view.columns(), &options) {
                    Ok(e) => e,
                    Err(e) => {
                        let failure =
                            Failure::Permanent(Unexportable::View(format!("view {}: {e}", v.name)));
                        return Err(abort_all(files, failure).await);
                    }
                };
            let name = view_file_name(item, &v.name, item.next_file_seq, format.extension());
            let sink = match FileSink::open(
                ex.store.as_ref(),
                item.job_id,
                name,
                FileKind::Output,
                &v.name,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => return Err(abort_all(files, e).await),
            };
            files.push(ViewFile {
                view: v.view.clone(),
                encoder,
                sink,
            });
        }
        Ok(ViewFiles {
            files,
            flat: Vec::new(),
            out: Vec::new(),
        })
    }

    /// Runs every view over the rows of `pending`, taking them from its front, until they are
    /// all taken or a file reaches `max` bytes; writes what the encoders have ready. The last
    /// row taken's id goes to `cursor` (when the read is in id order). Whether a file is full.
    async fn push(
        &mut self,
        pending: &mut VecDeque<StreamedRow>,
        max: u64,
        mut cursor: Option<&mut String>,
    ) -> Result<bool, Failure> {
        let mut full = false;
        while let Some(row) = pending.pop_front() {
            if let Some(c) = cursor.as_deref_mut() {
                c.clear();
                c.push_str(row.id());
            }
            let resource: serde_json::Value = serde_json::from_slice(row.resource_bytes())
                .map_err(|e| {
                    Failure::Permanent(Unexportable::View(format!(
                        "stored resource {} is not JSON: {e}",
                        row.id()
                    )))
                })?;
            for f in &mut self.files {
                self.flat.clear();
                f.view.append_rows(&resource, &mut self.flat).map_err(|e| {
                    Failure::Permanent(Unexportable::View(format!(
                        "resource {}: {}: {}",
                        row.id(),
                        e.expression(),
                        e.message()
                    )))
                })?;
                if !self.flat.is_empty() {
                    f.encoder
                        .push(&self.flat)
                        .map_err(|e| Failure::Permanent(Unexportable::View(e.to_string())))?;
                }
            }
            if self.full(max) {
                full = true;
                break;
            }
        }
        for f in &mut self.files {
            self.out.clear();
            f.encoder.drain_ready(&mut self.out);
            if !self.out.is_empty() {
                f.sink.write(&self.out, 0).await?;
            }
        }
        Ok(full)
    }

    /// Whether a file has reached `max` bytes.
    fn full(&self, max: u64) -> bool {
        self.files.iter().any(|f| f.encoder.bytes_so_far() >= max)
    }

    /// Finishes the files that hold rows (and aborts the others): their manifest rows.
    async fn finish(self) -> Result<Vec<ExportFile>, Failure> {
        let mut done = Vec::new();
        let mut files = self.files.into_iter();
        while let Some(mut f) = files.next() {
            let rows = f.encoder.rows() as i64;
            if rows == 0 {
                f.sink.abort().await;
                continue;
            }
            let mut out = Vec::new();
            let finished = match f.encoder.finish(&mut out) {
                Ok(()) => f.sink.write(&out, rows).await,
                Err(e) => Err(Failure::Permanent(Unexportable::View(e.to_string()))),
            };
            if let Err(e) = finished {
                f.sink.abort().await;
                return Err(abort_all(files.collect(), e).await);
            }
            match f.sink.finish().await {
                Ok(file) => done.push(file),
                Err(e) => return Err(abort_all(files.collect(), e).await),
            }
        }
        Ok(done)
    }

    async fn abandon(self, failure: Failure) -> Failure {
        abort_all(self.files, failure).await
    }

    async fn abort(self) {
        for f in self.files {
            f.sink.abort().await;
        }
    }
}

/// Discards `files` and passes `failure` on.
async fn abort_all(files: Vec<ViewFile>, failure: Failure) -> Failure {
    for f in files {
        f.sink.abort().await;
    }
    failure
}

/// `patients-0001.parquet`, or for a type split into parts `observations-003-0001.parquet`.
fn view_file_name(item: &WorkItem, view: &str, seq: i32, extension: &str) -> String {
    if item.whole_type() {
        format!("{view}-{seq:04}.{extension}")
    } else {
        format!("{view}-{:03}-{seq:04}.{extension}", item.part)
    }
}

/// How a step of the item ended.
#[derive(PartialEq, Eq)]
enum StepEnd {
    Full,
    Exhausted,
    Deadline,
    Stop(ItemOutcome),
}

impl Exporter {
    /// Exports one item of a view job: every view of its type, step by step (a step's files
    /// are one per view), checkpointing as `export_range` does.
    pub(super) async fn export_view_range(
        &self,
        mut item: WorkItem,
        sel: &Selection<'_>,
        views: &[ItemView],
        format: &sof_files::Format,
        deadline: Instant,
    ) -> Result<ItemOutcome, Failure> {
        let mut client = self.pool.get().await.map_err(DbError::from)?;
        let mut renewed = Instant::now();
        let fetch = self.page_rows.max(1) as usize;
        loop {
            let mut read = reads::read_range(&mut client, sel, item.phase, &item.cursor_id).await?;
            // Phase 0 reads in table order: its files are held back until the range is
            // exhausted, then recorded with its snapshot (see `typed`).
            let ordered = item.phase != Phase::Current;
            let mut held: Vec<ExportFile> = Vec::new();
            // Rows fetched and not yet taken (a full file leaves the rest for the next one).
            let mut pending: VecDeque<StreamedRow> = VecDeque::new();
            loop {
                let mut files = ViewFiles::open(self, &item, views, format).await?;
                let end = loop {
                    if pending.is_empty() {
                        match read.fetch(fetch, PAGE_BYTES as usize).await {
                            Ok(rows) if rows.is_empty() => break StepEnd::Exhausted,
                            Ok(rows) => pending.extend(rows),
                            Err(e) => return Err(files.abandon(e.into()).await),
                        }
                    }
                    let cursor = ordered.then_some(&mut item.cursor_id);
                    let full = match files
                        .push(&mut pending, self.config.max_file_bytes, cursor)
                        .await
                    {
                        Ok(full) => full,
                        Err(e) => return Err(files.abandon(e).await),
                    };
                    if renewed.elapsed() >= RENEW_EVERY {
                        renewed = Instant::now();
                        match work_items::renew_lease(
                            &self.pool,
                            &item,
                            &self.owner,
                            self.config.lease,
                        )
                        .await
                        {
                            Ok(Some(JobStatus::Active)) => {}
                            Ok(Some(JobStatus::CancellationRequested)) => {
                                break StepEnd::Stop(ItemOutcome::Cancelled)
                            }
                            Ok(_) => break StepEnd::Stop(ItemOutcome::LeaseLost),
                            Err(e) => return Err(files.abandon(e.into()).await),
                        }
                    }
                    if full {
                        break StepEnd::Full;
                    }
                    if self.deadline_reached(deadline) {
                        break StepEnd::Deadline;
                    }
                };
                if let StepEnd::Stop(stop) = end {
                    files.abort().await;
                    read.close().await.ok();
                    return Ok(stop);
                }
                if !ordered && end != StepEnd::Exhausted {
                    if end == StepEnd::Deadline {
                        // Nothing of phase 0 is recorded: the item starts it again.
                        files.abort().await;
                        read.close().await.ok();
                        return Ok(ItemOutcome::Deadline);
                    }
                    let finished = files.finish().await?;
                    if !finished.is_empty() {
                        item.next_file_seq += 1;
                    }
                    held.extend(finished);
                    continue;
                }
                let ranges: Vec<reads::ReadRange> = read
                    .snapshot
                    .iter()
                    .map(|snap| reads::ReadRange {
                        after_id: item.cursor_id.clone(),
                        upto_id: item.hi_id.clone(),
                        snapshot: snap.clone(),
                    })
                    .collect();
                let step = files.finish().await?;
                if !step.is_empty() {
                    item.next_file_seq += 1;
                }
                let mut finished: Vec<ExportFile> = std::mem::take(&mut held);
                finished.extend(step);
                let exhausted = end == StepEnd::Exhausted;
                let phase_one = exhausted
                    && item.phase == Phase::Current
                    && reads::range_changed_since(&self.pool, sel, &item.lo_id).await?;
                if phase_one {
                    item.phase = Phase::History;
                    item.cursor_id.clone_from(&item.lo_id);
                } else if exhausted {
                    item.done = true;
                }
                match self.checkpoint(&item, &finished, &ranges).await? {
                    Checkpointed::Saved => {}
                    Checkpointed::Completed => {
                        read.close().await.ok();
                        return Ok(ItemOutcome::Finished { completed: true });
                    }
                    Checkpointed::LeaseLost => {
                        read.close().await.ok();
                        return Ok(ItemOutcome::LeaseLost);
                    }
                }
                if item.done {
                    read.close().await.ok();
                    return Ok(ItemOutcome::Finished { completed: false });
                }
                if end == StepEnd::Deadline || self.deadline_reached(deadline) {
                    read.close().await.ok();
                    return Ok(ItemOutcome::Deadline);
                }
                if exhausted {
                    break;
                }
            }
            read.close().await?;
        }
    }
}
