//! The view writer of `$viewdefinition-export`: one work item's key range of a type, read by
//! `range` as `$export`'s items are (the same phases, snapshots and checkpoints, so a view
//! export is exact at its transaction time), each resource turned into the rows of every view of its type, each
//! view's rows encoded (ndjson, CSV or Parquet) into files of its own of about `MAX_FILE_BYTES`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::range::{ItemWriter, StepFiles};
use super::sink::FileSink;
use super::{Exporter, Failure, ItemOutcome, Unexportable};
use crate::db::reads::{Selection, StreamedRow};
use crate::db::work_items::WorkItem;
use crate::export::manifest::{ExportFile, FileKind};
use crate::export::params::{NamedView, ViewFormat};

/// Bytes the open Parquet files of one item hold between them in row groups in progress (each
/// view's row groups end at its share: at most 16 MiB, at least 1 MiB).
const VIEW_MEMORY: usize = 32 << 20;

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
    max_bytes: u64,
    /// The top-level elements the views read: the rest of a resource is skipped unparsed.
    projection: sof::Projection,
    /// Encoded bytes on their way to a file (reused).
    out: Vec<u8>,
}

/// Writes an item's rows through the views of its type.
struct ViewWriter<'a> {
    views: &'a [ItemView],
    format: &'a sof_files::Format,
}

impl ItemWriter for ViewWriter<'_> {
    type Files = ViewFiles;

    async fn open(&self, ex: &Exporter, item: &WorkItem) -> Result<ViewFiles, Failure> {
        let mut files: Vec<ViewFile> = Vec::with_capacity(self.views.len());
        // The views of a type share one budget for their Parquet row groups in progress.
        let options = sof_files::Options::sharing(VIEW_MEMORY, self.views.len());
        for v in self.views {
            let opened = open_view_file(ex, item, v, self.format, &options).await;
            match opened {
                Ok(f) => files.push(f),
                Err(e) => return Err(abort_all(files, e).await),
            }
        }
        Ok(ViewFiles {
            files,
            max_bytes: ex.config.max_file_bytes,
            projection: sof::Projection::of(self.views.iter().map(|v| v.view.as_ref())),
            out: Vec::new(),
        })
    }

    async fn type_end(&self, _ex: &Exporter) -> Result<Vec<ExportFile>, Failure> {
        Ok(Vec::new())
    }
}

/// The file of view `v` for the item's current step.
async fn open_view_file(
    ex: &Exporter,
    item: &WorkItem,
    v: &ItemView,
    format: &sof_files::Format,
    options: &sof_files::Options,
) -> Result<ViewFile, Failure> {
    let encoder = sof_files::Encoder::with_options(*format, v.view.columns(), options)
        .map_err(|e| Failure::Permanent(Unexportable::View(format!("view {}: {e}", v.name))))?;
    let name = view_file_name(item, &v.name, item.next_file_seq, format.extension());
    let sink = FileSink::open(
        ex.store.as_ref(),
        item.job_id,
        name,
        FileKind::Output,
        &v.name,
    )
    .await?;
    Ok(ViewFile {
        view: v.view.clone(),
        encoder,
        sink,
    })
}

/// The rows one resource gives: for each view of the type, its values, flattened.
type Evaluated = Vec<Vec<serde_json::Value>>;

/// Rows a thread parses and evaluates at a time: a batch is cut into chunks of this many rows,
/// which the machine's cores take in turn while the chunks before are encoded.
const CHUNK_ROWS: usize = 256;

/// Parses resources and runs the views of their type over them (shared by the threads).
struct Evaluator<'a> {
    projection: &'a sof::Projection,
    views: Vec<Arc<sof::View>>,
}

impl Evaluator<'_> {
    /// The rows every view gives for `row`.
    fn evaluate_one(&self, row: &StreamedRow) -> Result<Evaluated, Failure> {
        let resource = self.projection.parse(row.resource_bytes()).map_err(|e| {
            Failure::Permanent(Unexportable::View(format!(
                "stored resource {} is not JSON: {e}",
                row.id()
            )))
        })?;
        self.views
            .iter()
            .map(|view| {
                let mut flat = Vec::new();
                view.append_json_rows(&resource, &mut flat).map_err(|e| {
                    Failure::Permanent(Unexportable::View(format!(
                        "resource {}: {}: {}",
                        row.id(),
                        e.expression(),
                        e.message()
                    )))
                })?;
                Ok(flat)
            })
            .collect()
    }

    /// Parses and evaluates `rows` on every core, chunk by chunk, and hands each row's result
    /// to `consume` in order on the calling thread while later chunks are still being
    /// evaluated (parsing and evaluation are most of a view export's work; the encoders, which
    /// `consume` feeds, then overlap them). `consume` returns false to stop: the chunks not yet
    /// started are left. The number of rows consumed.
    fn evaluate_in_order(
        &self,
        rows: &[StreamedRow],
        mut consume: impl FnMut(&StreamedRow, Result<Evaluated, Failure>) -> Result<bool, Failure>,
    ) -> Result<usize, Failure> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 1 || rows.len() <= CHUNK_ROWS {
            for (i, row) in rows.iter().enumerate() {
                if !consume(row, self.evaluate_one(row))? {
                    return Ok(i + 1);
                }
            }
            return Ok(rows.len());
        }
        let chunks: Vec<&[StreamedRow]> = rows.chunks(CHUNK_ROWS).collect();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(usize, Vec<Result<Evaluated, Failure>>)>();
            for _ in 0..threads.min(chunks.len()) {
                let (tx, chunks, next, stop) = (tx.clone(), &chunks, &next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else { break };
                        let done = chunk.iter().map(|r| self.evaluate_one(r)).collect();
                        if tx.send((i, done)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            // Chunks arrive in any order; they are consumed in order.
            let mut early: BTreeMap<usize, Vec<Result<Evaluated, Failure>>> = BTreeMap::new();
            let mut consumed = 0;
            for (want, chunk) in chunks.iter().enumerate() {
                let results = loop {
                    if let Some(r) = early.remove(&want) {
                        break r;
                    }
                    match rx.recv() {
                        Ok((i, r)) => {
                            early.insert(i, r);
                        }
                        // Every thread gone with chunks left: one of them panicked (the scope
                        // passes the panic on).
                        Err(_) => return Ok(consumed),
                    }
                };
                for (row, result) in chunk.iter().zip(results) {
                    consumed += 1;
                    let go_on = consume(row, result);
                    if !matches!(go_on, Ok(true)) {
                        stop.store(true, Ordering::Relaxed);
                        return go_on.map(|_| consumed);
                    }
                }
            }
            Ok(consumed)
        })
    }
}

/// Hands one resource's rows to the encoders of its views.
fn encode(files: &mut [ViewFile], evaluated: Evaluated) -> Result<(), Failure> {
    for (f, flat) in files.iter_mut().zip(evaluated) {
        if !flat.is_empty() {
            f.encoder
                .push(&flat)
                .map_err(|e| Failure::Permanent(Unexportable::View(e.to_string())))?;
        }
    }
    Ok(())
}

/// Whether one of `files` has reached `max_bytes`.
fn any_full(files: &[ViewFile], max_bytes: u64) -> bool {
    files.iter().any(|f| f.encoder.bytes_so_far() >= max_bytes)
}

impl StepFiles for ViewFiles {
    /// Runs the views over the rows of `pending` and encodes their rows in order, until they
    /// are all taken or a file reaches its size (the rows after it stay in `pending`, to be
    /// evaluated again for the next files).
    fn take(
        &mut self,
        pending: &mut VecDeque<StreamedRow>,
        mut cursor: Option<&mut String>,
    ) -> Result<bool, Failure> {
        let rows: Vec<StreamedRow> = pending.drain(..).collect();
        let evaluator = Evaluator {
            projection: &self.projection,
            views: self.files.iter().map(|f| f.view.clone()).collect(),
        };
        let (files, max_bytes) = (&mut self.files, self.max_bytes);
        let mut full = false;
        let consumed = evaluator.evaluate_in_order(&rows, |row, result| {
            if let Some(c) = cursor.as_deref_mut() {
                c.clear();
                c.push_str(row.id());
            }
            encode(files, result?)?;
            full = any_full(files, max_bytes);
            Ok(!full)
        })?;
        // The rows after a full file go back to `pending` (emptied above), in order.
        pending.extend(rows.into_iter().skip(consumed));
        Ok(full)
    }

    /// Writes what the encoders have ready.
    async fn write(&mut self) -> Result<(), Failure> {
        for f in &mut self.files {
            self.out.clear();
            f.encoder.drain_ready(&mut self.out);
            if !self.out.is_empty() {
                f.sink.write(&self.out, 0).await?;
            }
        }
        Ok(())
    }

    fn full(&self) -> bool {
        any_full(&self.files, self.max_bytes)
    }

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

impl Exporter {
    /// Exports one item of a view job: every view of its type, step by step (a step's files
    /// are one per view; see `range`).
    pub(super) async fn export_view_range(
        &self,
        item: WorkItem,
        sel: &Selection<'_>,
        views: &[ItemView],
        format: &sof_files::Format,
        deadline: Instant,
    ) -> Result<ItemOutcome, Failure> {
        let writer = ViewWriter { views, format };
        self.export_item_range(item, sel, &writer, deadline).await
    }
}
