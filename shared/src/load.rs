//! The loader: ndjson files, folders and FHIR Bundle files into Postgres, in batches, with
//! compartment membership and references computed per resource. A bad line is reported with its
//! file and line number; the good lines still load.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::db::resources::{upsert_resources, NewResource, ProvenanceTargets};
use crate::db::{DbError, Pool};
use crate::export::params::is_fhir_id;
use crate::fhir::compartment::{parse_reference, patient_ids, references};
use crate::fhir::instant::parse_instant;
use crate::fhir::raw;
use crate::fhir::resource_types::is_resource_type;
use crate::fhir::scan::scan;

/// Why the loader refuses a resource (reported with its file and line as a [`Rejected`]; the
/// rest loads).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl From<String> for Refused {
    fn from(message: String) -> Self {
        Refused(message)
    }
}

impl From<&str> for Refused {
    fn from(message: &str) -> Self {
        Refused(message.to_string())
    }
}

mod bundle;
pub use bundle::{bundle_resources, BundleEntry};

/// Resources a writer stores at once: at most this many, and no more once they hold
/// [`BATCH_BYTES`] of text (a batch of large resources would hold gigabytes).
pub const BATCH_SIZE: usize = 4000;
pub const BATCH_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("a load writer stopped")]
    WriterStopped,
    #[error("a load writer failed")]
    WriterFailed(#[source] tokio::task::JoinError),
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub file: PathBuf,
    /// 1-based line (ndjson) or entry index + 1 (Bundle).
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub files: usize,
    pub loaded: u64,
    /// Resources deleted by Bundle DELETE entries.
    pub deleted: u64,
    pub rejected: Vec<Rejected>,
}

/// Parses `Type/id` (as in a DELETE request url or `bulk-export delete`).
pub fn parse_type_id(s: &str) -> Result<(String, String), Refused> {
    let s = s.trim().trim_start_matches('/');
    match s.split_once('/') {
        Some((t, id)) if is_resource_type(t) && is_fhir_id(id) => {
            Ok((t.to_string(), id.to_string()))
        }
        _ => Err(Refused(format!("{s:?} is not Type/id"))),
    }
}

/// Turns one resource into a row, or says why it cannot be stored. `text` is what is stored
/// (the JSON as received, on one line: numbers keep their exact text); it is read once, by
/// [`scan`], for the checks, compartment membership and references.
pub fn prepare(text: String) -> Result<NewResource, Refused> {
    // memchr: `str::contains` with a set of chars tests one char at a time, on every line of a load.
    if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some() {
        return Err(Refused(
            "a resource must be one line of JSON (minify it)".into(),
        ));
    }
    let scanned = scan(&text).map_err(|e| Refused(format!("invalid JSON: {e}")))?;
    let rtype = scanned.resource_type.ok_or("no resourceType")?;
    if !is_resource_type(&rtype) && rtype != crate::views::VIEW_DEFINITION {
        return Err(Refused(format!("{rtype:?} is not an R4 resource type")));
    }
    let id = scanned
        .id
        .ok_or_else(|| Refused(format!("{rtype} without an id")))?;
    if !is_fhir_id(&id) {
        return Err(Refused(format!("{rtype} id {id:?} is not a valid FHIR id")));
    }
    let provenance = (rtype == "Provenance").then(|| ProvenanceTargets {
        targets: scanned
            .references
            .iter()
            .filter(|(path, r)| path == "target" && !r.contains("://"))
            .filter_map(|(_, r)| parse_reference(r))
            .map(|(t, i)| (t.to_string(), i.to_string()))
            .collect(),
        recorded: scanned
            .recorded
            .as_deref()
            .and_then(|s| parse_instant(s).ok()),
    });
    Ok(NewResource {
        patients: patient_ids(&rtype, &id, &scanned.references),
        refs: references(&scanned.references),
        provenance,
        meta: scanned.meta,
        resource_type: rtype,
        id,
        text,
    })
}

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

/// Parses blocks on blocking threads while `writers` store batches concurrently, each on its
/// own connection: one connection keeps about one core busy. Without a pool (a check) nothing
/// is stored and resources are only counted.
/// A resource always goes to the same writer (by a hash of its type and id), so a later line
/// for the same resource is stored after an earlier one, and no two writers touch the same
/// rows (no lock waits, no deadlocks).
struct Loader<'a, P: FnMut(u64)> {
    batches: Vec<Vec<NewResource>>,
    /// Bytes of resource text in each of `batches`.
    batch_bytes: Vec<usize>,
    writers: Vec<Writer>,
    loaded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// None: a check, which stores nothing.
    pool: Option<&'a Pool>,
    /// How many blocks of an ndjson file are parsed at once ([`ParsedBlocks`]).
    parsers: usize,
    max_resource_bytes: usize,
    report: LoadReport,
    progress: P,
}

impl Writer {
    /// A writer storing batches on its own connection, adding what it stored to `loaded`.
    fn spawn(pool: Pool, loaded: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
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
                        loaded.fetch_add(done.stored, std::sync::atomic::Ordering::Relaxed);
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

/// How many blocks are parsed at once: one per core, at most 8 (each holds a block and its
/// resources in memory; 8 parse faster than any one Postgres stores).
fn parser_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

impl<'a, P: FnMut(u64)> Loader<'a, P> {
    fn new(pool: Option<&'a Pool>, options: &LoadOptions, progress: P) -> Self {
        let loaded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writers: Vec<Writer> = match pool {
            Some(pool) => (0..options.writers.max(1))
                .map(|_| Writer::spawn(pool.clone(), loaded.clone()))
                .collect(),
            None => Vec::new(),
        };
        Loader {
            batches: (0..writers.len()).map(|_| Vec::new()).collect(),
            batch_bytes: vec![0; writers.len()],
            writers,
            loaded,
            pool,
            parsers: options.parsers,
            max_resource_bytes: options.max_resource_bytes,
            report: LoadReport::default(),
            progress,
        }
    }

    async fn push(&mut self, resource: NewResource) -> Result<(), LoadError> {
        use std::hash::{Hash, Hasher};
        if self.writers.is_empty() {
            // A check: what would be stored is counted.
            self.report.loaded += 1;
            return Ok(());
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&resource.resource_type, &resource.id).hash(&mut h);
        let w = (h.finish() % self.writers.len() as u64) as usize;
        self.batch_bytes[w] += resource.text.len();
        self.batches[w].push(resource);
        if self.batches[w].len() >= BATCH_SIZE || self.batch_bytes[w] >= BATCH_BYTES {
            self.batch_bytes[w] = 0;
            let batch = std::mem::take(&mut self.batches[w]);
            self.send(w, WriterMsg::Batch(batch)).await?;
            (self.progress)(self.loaded.load(std::sync::atomic::Ordering::Relaxed));
        }
        Ok(())
    }

    /// Sends to writer `w`; if it stopped, its error.
    async fn send(&mut self, w: usize, msg: WriterMsg) -> Result<(), LoadError> {
        if self.writers[w].tx.send(msg).await.is_err() {
            return Err(self
                .stop_writers()
                .await
                .err()
                .unwrap_or(LoadError::WriterStopped));
        }
        Ok(())
    }

    /// Stores everything pushed so far and waits until it is stored.
    async fn flush(&mut self) -> Result<(), LoadError> {
        if self.writers.is_empty() {
            return Ok(());
        }
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
                self.stop_writers().await?;
            }
        }
        self.report.loaded = self.loaded.load(std::sync::atomic::Ordering::Relaxed);
        (self.progress)(self.report.loaded);
        Ok(())
    }

    /// Ends the writers; the first error any of them met.
    async fn stop_writers(&mut self) -> Result<(), LoadError> {
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

    /// Reads every file under `paths` into the writers.
    async fn read_paths(&mut self, paths: &[PathBuf]) -> Result<(), LoadError> {
        for path in paths {
            for file in collect_files(path)? {
                self.report.files += 1;
                if file.extension().and_then(|e| e.to_str()) == Some("json") {
                    self.load_json(&file).await?;
                } else {
                    self.load_ndjson(&file).await?;
                }
            }
        }
        Ok(())
    }

    fn reject(&mut self, file: &Path, line: usize, message: String) {
        self.report.rejected.push(Rejected {
            file: file.to_path_buf(),
            line,
            message,
        });
    }

    async fn load_ndjson(&mut self, path: &Path) -> Result<(), LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut parsed =
            ParsedBlocks::open(path, BLOCK_SIZE, self.parsers, self.max_resource_bytes)
                .await
                .map_err(io)?;
        while let Some(block) = parsed.next().await.map_err(io)? {
            for (line, resource) in block {
                match resource {
                    Ok(r) => self.push(r).await?,
                    Err(message) => self.reject(path, line, message.0),
                }
            }
        }
        Ok(())
    }

    async fn load_json(&mut self, path: &Path) -> Result<(), LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        // A Bundle is parsed whole: the limit of a resource applies to the file.
        let size = tokio::fs::metadata(path).await.map_err(io)?.len();
        if size > self.max_resource_bytes as u64 {
            let refused = too_large("the file", size, self.max_resource_bytes);
            let hint = " (a Bundle that large loads as ndjson, one resource per line)";
            self.reject(path, 1, format!("{refused}{hint}"));
            return Ok(());
        }
        let text = tokio::fs::read_to_string(path).await.map_err(io)?;
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                self.reject(path, 1, format!("invalid JSON: {e}"));
                return Ok(());
            }
        };
        if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            match prepare(raw::minify(&text)) {
                Ok(r) => self.push(r).await?,
                Err(m) => self.reject(path, 1, m.0),
            }
            return Ok(());
        }
        let entries = match bundle_resources(&text, value) {
            Ok(entries) => entries,
            Err(m) => {
                self.reject(path, 1, m.0);
                return Ok(());
            }
        };
        for (i, entry) in entries.into_iter().enumerate() {
            match entry {
                Ok(BundleEntry::Resource { text }) => match prepare(text) {
                    Ok(r) => self.push(r).await?,
                    Err(m) => self.reject(path, i + 1, m.0),
                },
                Ok(BundleEntry::Delete { resource_type, id }) => {
                    // Earlier entries are stored first, so a Bundle's order is kept.
                    self.flush().await?;
                    self.report.deleted += match self.pool {
                        Some(pool) => {
                            crate::db::resources::delete_resources(pool, &[(resource_type, id)])
                                .await?
                        }
                        // A check counts the deletions asked for.
                        None => 1,
                    };
                }
                Err(m) => self.reject(path, i + 1, m.0),
            }
        }
        Ok(())
    }
}

/// Connections a load uses after its writers: the tables' statistics, refreshed at once.
pub const ANALYZE_CONNECTIONS: usize = 4;

/// How much of an ndjson file is read at a time.
const BLOCK_SIZE: usize = 4 << 20;

/// The default largest resource a load accepts (`bulk-export load --max-resource-mb`): 64 MiB.
/// Loading or exporting a resource takes about three times its size (its text, its COPY
/// encoding or the connection's receive buffer; tests/tests/it/cli/large.rs), so the limit
/// bounds the memory of both.
pub const DEFAULT_MAX_RESOURCE_BYTES: usize = 64 << 20;

/// How a load runs.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Connections storing at once.
    pub writers: usize,
    /// Blocks of an ndjson file parsed at once.
    pub parsers: usize,
    /// A resource (an ndjson line, or a `.json` file) longer than this is refused with its file
    /// and line, and never held in memory whole.
    pub max_resource_bytes: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            writers: writer_count(),
            parsers: parser_count(),
            max_resource_bytes: DEFAULT_MAX_RESOURCE_BYTES,
        }
    }
}

/// Why a resource of `bytes` bytes is refused.
fn too_large(what: &str, bytes: u64, limit: usize) -> Refused {
    Refused(format!(
        "{what} is {bytes} bytes, over the limit of {limit} bytes for a resource \
         (`bulk-export load --max-resource-mb` sets it)"
    ))
}

/// What [`Blocks`] gives: a piece of an ndjson file.
#[derive(Debug, PartialEq, Eq)]
enum Block {
    /// Whole lines, each ending with a newline except the file's last.
    Lines(Vec<u8>),
    /// One line longer than a block, read into a buffer of exactly its size (with its newline,
    /// if it has one): parsed without a copy.
    Long(Vec<u8>),
    /// A line over the size limit, skipped without being held: its length.
    TooLong(u64),
}

/// A file read in blocks of whole lines, each read straight into the block's buffer (a
/// buffered line reader copied every line three times before its resource's String: into
/// tokio's file buffer, the reader's buffer and the line's String).
struct Blocks {
    /// None once the end was read.
    file: Option<std::fs::File>,
    /// The start of a line whose end is not read yet (shorter than a block).
    tail: Vec<u8>,
    /// A block given back, read into again (a fresh 4 MiB buffer is faulted in page by page).
    spare: Vec<u8>,
    size: usize,
    /// Lines over this many bytes are skipped ([`Block::TooLong`]).
    max_line: usize,
}

impl Blocks {
    async fn open(path: &Path, size: usize, max_line: usize) -> std::io::Result<Self> {
        let file = tokio::fs::File::open(path).await?.into_std().await;
        Ok(Blocks {
            file: Some(file),
            tail: Vec::new(),
            spare: Vec::new(),
            size: size.max(1),
            max_line,
        })
    }

    /// The next block; None at the end. A line longer than a block comes alone, read once
    /// into a buffer of its size ([`Block::Long`]), or is skipped when it is over the limit.
    async fn next(&mut self) -> std::io::Result<Option<Block>> {
        use std::io::Read;
        let Some(file) = self.file.take() else {
            let rest = std::mem::take(&mut self.tail);
            return Ok((!rest.is_empty()).then_some(Block::Lines(rest)));
        };
        let mut block = std::mem::take(&mut self.spare);
        block.clear();
        let need = self.tail.len() + self.size;
        if block.capacity() < need {
            // Fresh, not grown: growing copies the old contents. Room for the tails of lines
            // of up to 64 kB.
            block = Vec::with_capacity(need + 64 * 1024);
        }
        block.append(&mut self.tail);
        let (want, max_line) = (self.size as u64, self.max_line);
        // A file read blocks its thread: off the runtime's workers.
        let (file, block) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let n = (&mut file).take(want).read_to_end(&mut block)?;
            if (n as u64) < want {
                // The end: the rest of the file's lines.
                return Ok((None, Block::Lines(block)));
            }
            if memchr::memchr(b'\n', &block).is_some() {
                return Ok((Some(file), Block::Lines(block)));
            }
            // No line ends in it: all of it is the start of one long line.
            let long = read_long_line(&mut file, block, max_line)?;
            Ok::<_, std::io::Error>((Some(file), long))
        })
        .await
        .map_err(std::io::Error::other)??;
        let at_end = file.is_none();
        self.file = file;
        Ok(match block {
            Block::Lines(block) if at_end => (!block.is_empty()).then_some(Block::Lines(block)),
            Block::Lines(mut block) => {
                // Whole lines only: the start of the next one waits for the next block.
                if let Some(last) = memchr::memrchr(b'\n', &block) {
                    self.tail.extend_from_slice(&block[last + 1..]);
                    block.truncate(last + 1);
                }
                Some(Block::Lines(block))
            }
            other => Some(other),
        })
    }

    /// Gives a block back to be read into again (not a long line's buffer, which is larger).
    fn recycle(&mut self, block: Vec<u8>) {
        if block.capacity() <= 2 * (self.size + 64 * 1024) {
            self.spare = block;
        }
    }
}

/// The rest of a line whose first `start.len()` bytes were read, `file` being just after them:
/// measured first (read through a small buffer), then read into `start` grown once to exactly
/// the line's size, or skipped to just after its newline when it is longer than `max_line`.
fn read_long_line(
    file: &mut std::fs::File,
    mut start: Vec<u8>,
    max_line: usize,
) -> std::io::Result<Block> {
    use std::io::{Read, Seek, SeekFrom};
    let from = file.stream_position()?;
    let mut chunk = vec![0u8; 64 * 1024];
    // Bytes of the line after `start`, and whether a newline ends it (or the file does).
    let mut rest: u64 = 0;
    let newline = loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break false;
        }
        if let Some(i) = memchr::memchr(b'\n', &chunk[..n]) {
            rest += i as u64;
            break true;
        }
        rest += n as u64;
    };
    let len = start.len() as u64 + rest;
    let after = from + rest + u64::from(newline);
    if len > max_line as u64 {
        file.seek(SeekFrom::Start(after))?;
        return Ok(Block::TooLong(len));
    }
    file.seek(SeekFrom::Start(from))?;
    let take = rest + u64::from(newline);
    start.reserve_exact(take as usize);
    // (A file cut short meanwhile gives what there is.)
    (&mut *file).take(take).read_to_end(&mut start)?;
    Ok(Block::Long(start))
}

/// One block's lines, each a resource or why it is refused, with its 1-based line number in the
/// file; empty lines are skipped (but counted).
type ParsedBlock = Vec<(usize, Result<NewResource, Refused>)>;

/// What a parse gives back: the block to read into again (not a long line's), its lines, and
/// how many lines it had.
type Parsed = (Option<Vec<u8>>, ParsedBlock, usize);

/// The blocks of an ndjson file parsed `parsers` at a time on blocking threads (a single
/// parser capped a load at what one core parses, whatever the cores Postgres had), handed out
/// in the file's order: a resource's later line is still stored after its earlier one.
struct ParsedBlocks {
    blocks: Blocks,
    /// Parses under way, oldest first.
    running: std::collections::VecDeque<tokio::task::JoinHandle<Parsed>>,
    parsers: usize,
    /// Lines in the blocks handed out so far.
    lines: usize,
}

impl ParsedBlocks {
    async fn open(
        path: &Path,
        block_size: usize,
        parsers: usize,
        max_line: usize,
    ) -> std::io::Result<Self> {
        Ok(ParsedBlocks {
            blocks: Blocks::open(path, block_size, max_line).await?,
            running: Default::default(),
            parsers: parsers.max(1),
            lines: 0,
        })
    }

    /// The next block's lines, numbered within the file; None at the end.
    async fn next(&mut self) -> std::io::Result<Option<ParsedBlock>> {
        while self.running.len() < self.parsers {
            let Some(block) = self.blocks.next().await? else {
                break;
            };
            let max_line = self.blocks.max_line;
            self.running
                .push_back(tokio::task::spawn_blocking(move || match block {
                    Block::Lines(block) => {
                        let (parsed, lines) = parse_block(&block, max_line);
                        (Some(block), parsed, lines)
                    }
                    Block::Long(line) => (None, parse_long_line(line), 1),
                    Block::TooLong(len) => (
                        None,
                        vec![(1, Err(too_large("the line", len, max_line)))],
                        1,
                    ),
                }));
        }
        let Some(parse) = self.running.pop_front() else {
            return Ok(None);
        };
        let (block, mut parsed, lines) = parse.await.map_err(std::io::Error::other)?;
        if let Some(block) = block {
            self.blocks.recycle(block);
        }
        for (line, _) in &mut parsed {
            *line += self.lines;
        }
        self.lines += lines;
        Ok(Some(parsed))
    }
}

/// Parses every line of a block from [`Blocks`]; its lines are numbered from 1. Also returns
/// how many lines it has.
fn parse_block(block: &[u8], max_line: usize) -> (ParsedBlock, usize) {
    let mut out = Vec::new();
    let mut n = 0;
    for line in lines(block) {
        n += 1;
        if line.len() > max_line {
            out.push((n, Err(too_large("the line", line.len() as u64, max_line))));
            continue;
        }
        let line = match std::str::from_utf8(line) {
            Ok(line) => line.trim(),
            Err(e) => {
                out.push((n, Err(Refused(format!("not UTF-8 text: {e}")))));
                continue;
            }
        };
        if line.is_empty() {
            continue;
        }
        // The one copy of the line: its resource's text.
        out.push((n, prepare(line.to_string())));
    }
    (out, n)
}

/// Parses a line from [`Block::Long`]: its buffer becomes the resource's text (no copy unless
/// it has blanks around it).
fn parse_long_line(mut line: Vec<u8>) -> ParsedBlock {
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    let text = match String::from_utf8(line) {
        Ok(text) => text,
        Err(e) => {
            let e = e.utf8_error();
            return vec![(1, Err(Refused(format!("not UTF-8 text: {e}"))))];
        }
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Vec::new();
    }
    let text = if trimmed.len() == text.len() {
        text
    } else {
        trimmed.to_string()
    };
    vec![(1, prepare(text))]
}

/// The lines of a block from [`Blocks`], without their newlines.
fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = block.strip_suffix(b"\n").unwrap_or(block);
    let mut start = 0;
    memchr::memchr_iter(b'\n', body)
        .chain(std::iter::once(body.len()))
        .map(move |end| {
            let line = &body[start..end];
            start = end + 1;
            line
        })
}

/// Files under `path`: the file itself, or every `.ndjson`/`.json` file in the folder tree,
/// sorted by path.
pub fn collect_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_dir() {
            out.extend(collect_files(&p)?);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("ndjson") | Some("json")
        ) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads files and folders as [`load_paths`] does and stores nothing: `loaded` is how many
/// resources a load would store, `deleted` how many deletions its Bundles ask for, `rejected`
/// what it would refuse. `parsers`: how many blocks are parsed at once (None: as a load does).
pub async fn check_paths(
    paths: &[PathBuf],
    options: &LoadOptions,
) -> Result<LoadReport, LoadError> {
    let mut loader = Loader::new(None, options, |_| {});
    loader.read_paths(paths).await?;
    Ok(loader.report)
}

/// Loads files and folders with [`writer_count`] writers. `progress` is called with the
/// running count after each batch.
pub async fn load_paths(
    pool: &Pool,
    paths: &[PathBuf],
    progress: impl FnMut(u64),
) -> Result<LoadReport, LoadError> {
    load_paths_with(pool, paths, &LoadOptions::default(), progress).await
}

/// Loads files and folders, storing with `options.writers` connections at once (the pool needs
/// that many and [`ANALYZE_CONNECTIONS`] more).
pub async fn load_paths_with(
    pool: &Pool,
    paths: &[PathBuf],
    options: &LoadOptions,
    progress: impl FnMut(u64),
) -> Result<LoadReport, LoadError> {
    let mut loader = Loader::new(Some(pool), options, progress);
    let started = Instant::now();
    loader.read_paths(paths).await?;
    loader.flush().await?;
    loader.stop_writers().await?;
    // Fresh statistics: right after a bulk load autovacuum has not caught up, and the export
    // queries' plans depend on the row counts of these tables (a stale count makes a
    // Patient-level read take every member of a type on every page). The compartment is
    // also vacuumed: that sets its visibility map, so a Patient-level read checks membership
    // with an index-only scan instead of a heap visit per row. The resources themselves are not:
    // vacuuming a fresh load rewrites every page to set hint bits, which costs more than it
    // saves (docs/BENCHMARKS.md, rejected ideas), and the first export's reads set them anyway.
    if loader.report.loaded > 0 || loader.report.deleted > 0 {
        // Each table on its own connection, at the same time (VACUUM cannot run in the
        // implicit transaction of a multi-statement string anyway).
        let statements: [&str; ANALYZE_CONNECTIONS] = [
            "VACUUM (ANALYZE) compartment",
            "ANALYZE resources",
            "ANALYZE resource_refs",
            "ANALYZE resource_history, provenance_targets",
        ];
        futures::future::try_join_all(statements.into_iter().map(|sql| async move {
            let client = pool.get().await.map_err(crate::db::DbError::from)?;
            client
                .batch_execute(sql)
                .await
                .map_err(crate::db::DbError::from)
        }))
        .await?;
    }
    tracing::info!(
        files = loader.report.files,
        loaded = loader.report.loaded,
        rejected = loader.report.rejected.len(),
        seconds = started.elapsed().as_secs_f64(),
        "load finished"
    );
    Ok(loader.report)
}

#[cfg(test)]
mod tests;
