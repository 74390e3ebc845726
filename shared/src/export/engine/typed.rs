//! The per-type writer: one work item's key range of one type, as ndjson files of at most
//! `MAX_FILE_BYTES`. Each phase of the item is one streamed statement (`reads::read_range`),
//! fetched in batches; the next batch is fetched while the current one is written, so Postgres
//! and the exporter work at the same time, and a row is read once (a row that does not fit in a
//! file starts the next one).
//!
//! Phase 0 reads the range in the order its rows lie in the table, not in id order (through the
//! primary key, a row in id order cost a random page access: Postgres spent twice as long on it).
//! Its files are therefore recorded in one checkpoint when the range is exhausted, with the one
//! snapshot it was read under; an item interrupted in phase 0 starts it again and writes the same
//! file names (items are sized to take seconds). Phase 1 (what changed since, usually little)
//! is read in id order and checkpointed after each file, resuming from its cursor.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::sink::FileSink;
use super::{Exporter, Failure, ItemOutcome, PAGE_BYTES};
use crate::db::reads::{self, Selection, StreamedRow};
use crate::db::work_items::{self, Checkpointed, Phase, WorkItem};
use crate::db::DbError;
use crate::export::manifest::{ExportFile, FileKind};
use crate::export::transform::RowTransform;
use crate::export::JobStatus;

/// A row this large is written to its file from the row as received, not copied into the
/// batch's buffer first: a resource of tens of MB is held once by the exporter (plus the
/// connection's receive buffer), not twice.
const DIRECT_WRITE_BYTES: usize = 1 << 20;

/// How often the item's writer checks its lease and its job's status (cancellation).
const RENEW_EVERY: Duration = Duration::from_millis(500);

/// How a file of the item ended.
#[derive(PartialEq, Eq)]
enum FileEnd {
    Full,
    /// The phase's rows are all written.
    Exhausted,
    Deadline,
    Stop(ItemOutcome),
}

impl Exporter {
    /// Exports one item, one file at a time, checkpointing after each file. Phase 0 reads the
    /// current versions of the range, phase 1 the transaction-time versions of what changed
    /// since (see `reads::RangeRead`). The type's last item then writes its deleted[] and error
    /// files.
    pub(super) async fn export_range(
        &self,
        mut item: WorkItem,
        sel: &Selection<'_>,
        type_wide: &Selection<'_>,
        transform: &RowTransform,
        deadline: Instant,
    ) -> Result<ItemOutcome, Failure> {
        let mut client = self.pool.get().await.map_err(DbError::from)?;
        let mut renewed = Instant::now();
        loop {
            // One streamed read per phase.
            let mut read = reads::read_range(&mut client, sel, item.phase, &item.cursor_id).await?;
            // Phase 0: rows in table order (its cursor stays where the read started), files
            // held back until the range is exhausted.
            let ordered = item.phase != Phase::Current;
            let mut held: Vec<ExportFile> = Vec::new();
            let mut pending: VecDeque<StreamedRow> = VecDeque::new();
            // The next batch, fetched while the current one was written (it may start the
            // next file).
            let mut prefetched: Option<Result<Vec<StreamedRow>, DbError>> = None;
            let fetch = self.page_rows.max(1) as usize;
            loop {
                let mut sink = FileSink::open(
                    self.store.as_ref(),
                    item.job_id,
                    item.file_name(item.next_file_seq),
                    FileKind::Output,
                    &item.resource_type,
                )
                .await?;
                let end = loop {
                    if pending.is_empty() {
                        let rows = match prefetched.take() {
                            Some(rows) => rows,
                            None => read.fetch(fetch, PAGE_BYTES as usize).await,
                        };
                        let rows = match rows {
                            Ok(rows) => rows,
                            Err(e) => return Err(sink.abandon(e.into()).await),
                        };
                        if rows.is_empty() {
                            break FileEnd::Exhausted;
                        }
                        pending.extend(rows);
                    }
                    // The rows that fit in this file (the first one always does), copied into
                    // one buffer; a large row is written from the row itself instead.
                    let mut page = Vec::with_capacity(
                        pending
                            .iter()
                            .take_while(|r| r.len < DIRECT_WRITE_BYTES)
                            .map(|r| r.len + 1)
                            .sum::<usize>(),
                    );
                    let mut lines = 0;
                    let mut full = false;
                    let mut direct: Option<StreamedRow> = None;
                    while let Some(row) = pending.front() {
                        let len = row.len as u64 + 1;
                        let used = sink.bytes + page.len() as u64;
                        if used > 0 && used + len > self.config.max_file_bytes {
                            full = true;
                            break;
                        }
                        let large = row.len >= DIRECT_WRITE_BYTES && transform.is_identity();
                        if large && !page.is_empty() {
                            // Written after this page, on its own.
                            break;
                        }
                        let Some(row) = pending.pop_front() else {
                            break;
                        };
                        if ordered {
                            item.cursor_id.clear();
                            item.cursor_id.push_str(row.id());
                        }
                        if large {
                            direct = Some(row);
                            break;
                        }
                        // Copied as bytes unless a filter or `_elements` has to read it.
                        let transformed;
                        let line = if transform.is_identity() {
                            Some(row.resource_bytes())
                        } else {
                            transformed = transform.apply(row.resource());
                            transformed.as_deref().map(str::as_bytes)
                        };
                        if let Some(line) = line {
                            page.extend_from_slice(line);
                            page.push(b'\n');
                            lines += 1;
                        }
                    }
                    let late = self.deadline_reached(deadline);
                    let write = async {
                        match &direct {
                            Some(row) => sink.write_line(row.resource_bytes()).await,
                            None => sink.write(&page, lines).await,
                        }
                    };
                    // Postgres streams the next batch while this one is written.
                    let written = if pending.is_empty() && !full && !late {
                        let (written, next) =
                            tokio::join!(write, read.fetch(fetch, PAGE_BYTES as usize));
                        prefetched = Some(next);
                        written
                    } else {
                        write.await
                    };
                    drop(direct);
                    if let Err(e) = written {
                        return Err(sink.abandon(e).await);
                    }
                    // Cancellation and a lost lease are noticed within RENEW_EVERY (the
                    // heartbeat keeps the lease alive whatever the batches do); a renewal per
                    // batch cost a committed UPDATE per 1,000 rows.
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
                                break FileEnd::Stop(ItemOutcome::Cancelled)
                            }
                            Ok(_) => break FileEnd::Stop(ItemOutcome::LeaseLost),
                            Err(e) => return Err(sink.abandon(e.into()).await),
                        }
                    }
                    if full || sink.bytes >= self.config.max_file_bytes {
                        break FileEnd::Full;
                    }
                    if late {
                        break FileEnd::Deadline;
                    }
                };
                if let FileEnd::Stop(stop) = end {
                    sink.abort().await;
                    read.close().await.ok();
                    return Ok(stop);
                }
                if !ordered && end != FileEnd::Exhausted {
                    if end == FileEnd::Deadline {
                        // Nothing of phase 0 is recorded: the item starts it again.
                        sink.abort().await;
                        read.close().await.ok();
                        return Ok(ItemOutcome::Deadline);
                    }
                    if let Some(file) = sink.finish_if_any().await? {
                        item.next_file_seq += 1;
                        held.push(file);
                    }
                    continue;
                }
                // A phase-1 file, or the end of phase 0: every row of (cursor, hi] was read
                // under phase 0's snapshot, durable with the files that hold them.
                let ranges: Vec<reads::ReadRange> = read
                    .snapshot
                    .iter()
                    .map(|snap| reads::ReadRange {
                        after_id: item.cursor_id.clone(),
                        upto_id: item.hi_id.clone(),
                        snapshot: snap.clone(),
                    })
                    .collect();
                let file = sink.finish_if_any().await?;
                if file.is_some() {
                    item.next_file_seq += 1;
                }
                let mut finished: Vec<ExportFile> = std::mem::take(&mut held);
                finished.extend(file);
                let exhausted = end == FileEnd::Exhausted;
                // Phase 1 has nothing to export when nothing in the range changed since the
                // transaction time (asked after phase 0's read: see `range_changed_since`).
                let phase_one = exhausted
                    && item.phase == Phase::Current
                    && reads::range_changed_since(&self.pool, sel, &item.lo_id).await?;
                if phase_one {
                    // Phase 1 decides what phase 0 exported from the phase-0 snapshots, so they
                    // are durable (with phase 0's last file) before it starts.
                    item.phase = Phase::History;
                    item.cursor_id.clone_from(&item.lo_id);
                } else if exhausted {
                    if item.is_last_part() {
                        finished.extend(self.write_dangling_reference_errors(type_wide).await?);
                        finished.extend(self.write_deleted(type_wide, transform).await?);
                    }
                    item.done = true;
                }
                let saved = self.checkpoint(&item, &finished, &ranges).await?;
                match saved {
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
                if end == FileEnd::Deadline || self.deadline_reached(deadline) {
                    read.close().await.ok();
                    return Ok(ItemOutcome::Deadline);
                }
                if exhausted {
                    // Phase 0 is done: phase 1 gets its own read.
                    break;
                }
            }
            read.close().await?;
        }
    }
}
