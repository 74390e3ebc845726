//! The per-type writer: one work item's key range of one type, as ndjson files of at most
//! `MAX_FILE_BYTES`, read by `range` (phases, snapshots, checkpoints). A row is copied as its
//! stored bytes unless a `_typeFilter` or `_elements` has to read it.

use std::collections::VecDeque;
use std::time::Instant;

use super::range::{ItemWriter, StepFiles};
use super::sink::FileSink;
use super::{Exporter, Failure, ItemOutcome};
use crate::db::reads::{Selection, StreamedRow};
use crate::db::work_items::WorkItem;
use crate::export::manifest::{ExportFile, FileKind};
use crate::export::transform::RowTransform;

/// A row this large is written to its file from the row as received, not copied into the
/// batch's buffer first: a resource of tens of MB is held once by the exporter (plus the
/// connection's receive buffer), not twice.
const DIRECT_WRITE_BYTES: usize = 1 << 20;

/// Writes an item's rows as ndjson; the type's last item adds its deleted[] and error files.
struct Ndjson<'a> {
    type_wide: &'a Selection<'a>,
    transform: &'a RowTransform,
}

/// One ndjson file of a step, and the rows taken for it and not yet written.
struct NdjsonFile<'a> {
    sink: FileSink,
    transform: &'a RowTransform,
    max_bytes: u64,
    /// Rows taken, as lines.
    page: Vec<u8>,
    lines: i64,
    /// A large row taken, written from the row itself.
    direct: Option<StreamedRow>,
}

impl<'a> ItemWriter for Ndjson<'a> {
    type Files = NdjsonFile<'a>;

    async fn open(&self, ex: &Exporter, item: &WorkItem) -> Result<NdjsonFile<'a>, Failure> {
        let sink = FileSink::open(
            ex.store.as_ref(),
            item.job_id,
            item.file_name(item.next_file_seq),
            FileKind::Output,
            &item.resource_type,
        )
        .await?;
        Ok(NdjsonFile {
            sink,
            transform: self.transform,
            max_bytes: ex.config.max_file_bytes,
            page: Vec::new(),
            lines: 0,
            direct: None,
        })
    }

    async fn type_end(&self, ex: &Exporter) -> Result<Vec<ExportFile>, Failure> {
        let mut files: Vec<ExportFile> = Vec::new();
        files.extend(ex.write_dangling_reference_errors(self.type_wide).await?);
        files.extend(ex.write_deleted(self.type_wide, self.transform).await?);
        Ok(files)
    }
}

impl StepFiles for NdjsonFile<'_> {
    /// The rows that fit in this file (the first one always does), copied into one buffer; a
    /// large row is taken alone, after the rows before it are written.
    fn take(
        &mut self,
        pending: &mut VecDeque<StreamedRow>,
        mut cursor: Option<&mut String>,
    ) -> Result<bool, Failure> {
        let identity = self.transform.is_identity();
        self.page.clear();
        self.lines = 0;
        self.page.reserve(
            pending
                .iter()
                .take_while(|r| r.len < DIRECT_WRITE_BYTES)
                .map(|r| r.len + 1)
                .sum::<usize>(),
        );
        while let Some(row) = pending.front() {
            let len = row.len as u64 + 1;
            let used = self.sink.bytes + self.page.len() as u64;
            if used > 0 && used + len > self.max_bytes {
                return Ok(true);
            }
            let large = row.len >= DIRECT_WRITE_BYTES && identity;
            if large && !self.page.is_empty() {
                // Written after this page, on its own.
                break;
            }
            let Some(row) = pending.pop_front() else {
                break;
            };
            if let Some(c) = cursor.as_deref_mut() {
                c.clear();
                c.push_str(row.id());
            }
            if large {
                self.direct = Some(row);
                break;
            }
            let transformed;
            let line = if identity {
                Some(row.resource_bytes())
            } else {
                transformed = self.transform.apply(row.resource());
                transformed.as_deref().map(str::as_bytes)
            };
            if let Some(line) = line {
                self.page.extend_from_slice(line);
                self.page.push(b'\n');
                self.lines += 1;
            }
        }
        Ok(false)
    }

    async fn write(&mut self) -> Result<(), Failure> {
        match self.direct.take() {
            Some(row) => self.sink.write_line(row.resource_bytes()).await,
            None => self.sink.write(&self.page, self.lines).await,
        }
    }

    fn full(&self) -> bool {
        self.sink.bytes >= self.max_bytes
    }

    async fn finish(self) -> Result<Vec<ExportFile>, Failure> {
        Ok(self.sink.finish_if_any().await?.into_iter().collect())
    }

    async fn abort(self) {
        self.sink.abort().await;
    }
}

impl Exporter {
    /// Exports one item of an `$export` job (see `range`).
    pub(super) async fn export_range(
        &self,
        item: WorkItem,
        sel: &Selection<'_>,
        type_wide: &Selection<'_>,
        transform: &RowTransform,
        deadline: Instant,
    ) -> Result<ItemOutcome, Failure> {
        let writer = Ndjson {
            type_wide,
            transform,
        };
        self.export_item_range(item, sel, &writer, deadline).await
    }
}
