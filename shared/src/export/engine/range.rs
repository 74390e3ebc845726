//! The reading of one work item, shared by the ndjson writer (`typed`) and the view writer
//! (`views`): one streamed statement per phase (`reads::read_range`), fetched in batches; the
//! next batch is fetched while the current one is written, so Postgres and the exporter work at
//! the same time, and a row is read once (a row that does not fit in a step's files starts the
//! next step). What a step writes is the writer's business ([`StepFiles`]).
//!
//! Phase 0 (`Phase::Current`) reads the range in the order its rows lie in the table, not in id order (through the
//! primary key, a row in id order costs a random page access). Its files are therefore recorded
//! in one checkpoint when the range is exhausted, with the one snapshot it was read under; an
//! item interrupted in phase 0 starts it again and writes the same file names (items are sized
//! to take seconds). Phase 1 (`Phase::History`: what changed since, usually little) is read
//! in id order and checkpointed after each step, resuming from its cursor.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Exporter, Failure, ItemOutcome, PAGE_BYTES};
use crate::db::reads::{self, RangeRead, ReadRange, Selection, StreamedRow};
use crate::db::work_items::{self, Checkpointed, Phase, WorkItem};
use crate::db::DbError;
use crate::export::manifest::ExportFile;
use crate::export::JobStatus;

/// How often the item's writer checks its lease and its job's status (cancellation).
const RENEW_EVERY: Duration = Duration::from_millis(500);

/// The files of one step of an item: an ndjson file, or one file per view.
pub(super) trait StepFiles: Sized {
    /// Takes rows from the front of `pending` into the step's files (buffered until
    /// [`StepFiles::write`]), stopping before a row that would overfill a file. The id of the
    /// last row taken goes to `cursor` when the read is in id order. Whether a file is full.
    fn take(
        &mut self,
        pending: &mut VecDeque<StreamedRow>,
        cursor: Option<&mut String>,
    ) -> Result<bool, Failure>;

    /// Writes what [`StepFiles::take`] buffered.
    async fn write(&mut self) -> Result<(), Failure>;

    /// Whether a file has reached the size at which the step ends.
    fn full(&self) -> bool;

    /// Finishes the files that hold rows (discarding the others): their manifest rows. On
    /// error every file is discarded.
    async fn finish(self) -> Result<Vec<ExportFile>, Failure>;

    /// Discards every file.
    async fn abort(self);
}

/// What writes an item's rows: opens each step's files, and adds the files a type gets once
/// its last item is read.
pub(super) trait ItemWriter {
    type Files: StepFiles;

    async fn open(&self, ex: &Exporter, item: &WorkItem) -> Result<Self::Files, Failure>;

    /// Files written when the type's last item has been read (deleted[], errors).
    async fn type_end(&self, ex: &Exporter) -> Result<Vec<ExportFile>, Failure>;
}

/// How a step of the item ended.
#[derive(PartialEq, Eq)]
enum StepEnd {
    Full,
    /// The phase's rows are all written.
    Exhausted,
    Deadline,
    Stop(ItemOutcome),
}

/// What follows a step.
enum Next {
    Step,
    Phase,
    Return(ItemOutcome),
}

/// One phase's read and the rows fetched from it and not yet taken.
struct PhaseRead<'c> {
    read: RangeRead<'c>,
    /// Phase 1 reads in id order and moves the cursor; phase 0 reads in table order.
    ordered: bool,
    /// Phase 0's finished files, recorded when its range is exhausted.
    held: Vec<ExportFile>,
    pending: VecDeque<StreamedRow>,
    /// The next batch, fetched while the current one was written.
    prefetched: Option<Result<Vec<StreamedRow>, DbError>>,
}

impl Exporter {
    /// Exports one item, step by step, checkpointing as the module says. Phase 0 reads the
    /// current versions of the range, phase 1 the transaction-time versions of what changed
    /// since (see `reads::RangeRead`).
    pub(super) async fn export_item_range<W: ItemWriter>(
        &self,
        mut item: WorkItem,
        sel: &Selection<'_>,
        writer: &W,
        deadline: Instant,
    ) -> Result<ItemOutcome, Failure> {
        let mut client = self.pool.get().await.map_err(DbError::from)?;
        let mut renewed = Instant::now();
        loop {
            let read = reads::read_range(&mut client, sel, item.phase, &item.cursor_id).await?;
            let mut phase = PhaseRead {
                read,
                ordered: item.phase != Phase::Current,
                held: Vec::new(),
                pending: VecDeque::new(),
                prefetched: None,
            };
            loop {
                let mut files = writer.open(self, &item).await?;
                let filled = self
                    .fill_step(&mut files, &mut phase, &mut item, &mut renewed, deadline)
                    .await;
                let end = match filled {
                    Ok(end) => end,
                    Err(e) => {
                        files.abort().await;
                        return Err(e);
                    }
                };
                match self
                    .end_step(files, end, &mut phase, &mut item, sel, writer, deadline)
                    .await?
                {
                    Next::Step => {}
                    Next::Phase => break,
                    Next::Return(outcome) => {
                        phase.read.close().await.ok();
                        return Ok(outcome);
                    }
                }
            }
            phase.read.close().await?;
        }
    }

    /// Writes rows into one step's files until a file is full, the phase's rows run out, the
    /// deadline passes or the item must stop.
    async fn fill_step<F: StepFiles>(
        &self,
        files: &mut F,
        phase: &mut PhaseRead<'_>,
        item: &mut WorkItem,
        renewed: &mut Instant,
        deadline: Instant,
    ) -> Result<StepEnd, Failure> {
        let fetch = self.page_rows.max(1) as usize;
        loop {
            if phase.pending.is_empty() {
                let rows = match phase.prefetched.take() {
                    Some(rows) => rows?,
                    None => phase.read.fetch(fetch, PAGE_BYTES as usize).await?,
                };
                if rows.is_empty() {
                    return Ok(StepEnd::Exhausted);
                }
                phase.pending.extend(rows);
            }
            let cursor = phase.ordered.then_some(&mut item.cursor_id);
            let full = files.take(&mut phase.pending, cursor)?;
            let late = self.deadline_reached(deadline);
            // Postgres streams the next batch while this one is written.
            if phase.pending.is_empty() && !full && !late {
                let (written, next) =
                    tokio::join!(files.write(), phase.read.fetch(fetch, PAGE_BYTES as usize));
                phase.prefetched = Some(next);
                written?;
            } else {
                files.write().await?;
            }
            if let Some(stop) = self.renew_if_due(item, renewed).await? {
                return Ok(StepEnd::Stop(stop));
            }
            if full || files.full() {
                return Ok(StepEnd::Full);
            }
            if late {
                return Ok(StepEnd::Deadline);
            }
        }
    }

    /// Renews the item's lease every `RENEW_EVERY`: cancellation and a lost lease are noticed
    /// within that (the heartbeat keeps the lease alive whatever the batches do; a renewal per
    /// batch cost a committed UPDATE per batch). Why the item must stop, if it must.
    async fn renew_if_due(
        &self,
        item: &WorkItem,
        renewed: &mut Instant,
    ) -> Result<Option<ItemOutcome>, Failure> {
        if renewed.elapsed() < RENEW_EVERY {
            return Ok(None);
        }
        *renewed = Instant::now();
        let status =
            work_items::renew_lease(&self.pool, item, &self.owner, self.config.lease).await?;
        Ok(match status {
            Some(JobStatus::Active) => None,
            Some(JobStatus::CancellationRequested) => Some(ItemOutcome::Cancelled),
            _ => Some(ItemOutcome::LeaseLost),
        })
    }

    /// Finishes a step: phase 0's files are held until its range is exhausted; a phase-1 step,
    /// or the end of phase 0, is checkpointed.
    #[allow(clippy::too_many_arguments)]
    async fn end_step<W: ItemWriter>(
        &self,
        files: W::Files,
        end: StepEnd,
        phase: &mut PhaseRead<'_>,
        item: &mut WorkItem,
        sel: &Selection<'_>,
        writer: &W,
        deadline: Instant,
    ) -> Result<Next, Failure> {
        if let StepEnd::Stop(stop) = end {
            files.abort().await;
            return Ok(Next::Return(stop));
        }
        if !phase.ordered && end != StepEnd::Exhausted {
            if end == StepEnd::Deadline {
                // Nothing of phase 0 is recorded: the item starts it again.
                files.abort().await;
                return Ok(Next::Return(ItemOutcome::Deadline));
            }
            let step = files.finish().await?;
            if !step.is_empty() {
                item.next_file_seq += 1;
            }
            phase.held.extend(step);
            return Ok(Next::Step);
        }
        // Every row of (cursor, hi] is still to be read under the phase's snapshot, durable
        // with the files that hold the rows before it.
        let ranges: Vec<ReadRange> = phase
            .read
            .snapshot
            .iter()
            .map(|snap| ReadRange {
                after_id: item.cursor_id.clone(),
                upto_id: item.hi_id.clone(),
                snapshot: snap.clone(),
            })
            .collect();
        let step = files.finish().await?;
        if !step.is_empty() {
            item.next_file_seq += 1;
        }
        let mut finished = std::mem::take(&mut phase.held);
        finished.extend(step);
        let exhausted = end == StepEnd::Exhausted;
        if exhausted {
            finished.extend(self.end_phase(item, sel, writer).await?);
        }
        match self.checkpoint(item, &finished, &ranges).await? {
            Checkpointed::Saved => {}
            Checkpointed::Completed => {
                return Ok(Next::Return(ItemOutcome::Finished { completed: true }))
            }
            Checkpointed::LeaseLost => return Ok(Next::Return(ItemOutcome::LeaseLost)),
        }
        if item.done {
            return Ok(Next::Return(ItemOutcome::Finished { completed: false }));
        }
        if end == StepEnd::Deadline || self.deadline_reached(deadline) {
            return Ok(Next::Return(ItemOutcome::Deadline));
        }
        Ok(if exhausted { Next::Phase } else { Next::Step })
    }

    /// After a phase's rows are all read: phase 1 follows phase 0 when something in the range
    /// changed since the transaction time (asked after phase 0's read: see
    /// `range_changed_since`); otherwise the item is done, and the type's last item adds the
    /// writer's end-of-type files.
    async fn end_phase<W: ItemWriter>(
        &self,
        item: &mut WorkItem,
        sel: &Selection<'_>,
        writer: &W,
    ) -> Result<Vec<ExportFile>, Failure> {
        if item.phase == Phase::Current
            && reads::range_changed_since(&self.pool, sel, &item.lo_id).await?
        {
            // Phase 1 decides what phase 0 exported from the phase-0 snapshots, so they are
            // durable (with phase 0's last files) before it starts.
            item.phase = Phase::History;
            item.cursor_id.clone_from(&item.lo_id);
            return Ok(Vec::new());
        }
        item.done = true;
        if item.is_last_part() {
            writer.type_end(self).await
        } else {
            Ok(Vec::new())
        }
    }
}
