//! The loader: ndjson files, folders and FHIR Bundle files into Postgres, in batches, with
//! compartment membership and references computed per resource. A bad line is reported with its
//! file and line number; the good lines still load. Files are read (`read`) in chunks of whole
//! lines, parsed (`parse`) several chunks at a time, and stored (`write`) by writer tasks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::db::resources::NewResource;
use crate::db::{DbError, Pool};
use crate::export::params::is_fhir_id;
use crate::fhir::raw;
use crate::fhir::resource_types::is_resource_type;

mod bundle;
mod parse;
mod read;
mod write;

pub use bundle::{bundle_resources, BundleEntry};
pub use parse::prepare;
pub use read::collect_files;
pub use write::writer_count;

use parse::{parser_count, too_large, ParsedChunks};
use read::CHUNK_SIZE;
use write::Writers;

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

/// Parses chunks on blocking threads while writers store batches concurrently, each on its
/// own connection: one connection keeps about one core busy. Without a pool (a check) nothing
/// is stored and resources are only counted.
struct Loader<'a, P: FnMut(u64)> {
    writers: Writers,
    /// None: a check, which stores nothing.
    pool: Option<&'a Pool>,
    /// How many chunks of an ndjson file are parsed at once ([`ParsedChunks`]).
    parsers: usize,
    max_resource_bytes: usize,
    report: LoadReport,
    progress: P,
}

impl<'a, P: FnMut(u64)> Loader<'a, P> {
    fn new(pool: Option<&'a Pool>, options: &LoadOptions, progress: P) -> Self {
        Loader {
            writers: Writers::spawn(pool, options.writers),
            pool,
            parsers: options.parsers,
            max_resource_bytes: options.max_resource_bytes,
            report: LoadReport::default(),
            progress,
        }
    }

    async fn push(&mut self, resource: NewResource) -> Result<(), LoadError> {
        if self.writers.is_empty() {
            // A check: what would be stored is counted.
            self.report.loaded += 1;
            return Ok(());
        }
        if self.writers.push(resource).await? {
            (self.progress)(self.writers.loaded());
        }
        Ok(())
    }

    /// Stores everything pushed so far and waits until it is stored.
    async fn flush(&mut self) -> Result<(), LoadError> {
        if self.writers.is_empty() {
            return Ok(());
        }
        self.writers.flush().await?;
        self.report.loaded = self.writers.loaded();
        (self.progress)(self.report.loaded);
        Ok(())
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
            ParsedChunks::open(path, CHUNK_SIZE, self.parsers, self.max_resource_bytes)
                .await
                .map_err(io)?;
        while let Some(chunk) = parsed.next().await.map_err(io)? {
            for (line, resource) in chunk {
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
    /// Chunks of an ndjson file parsed at once.
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

/// Reads files and folders as [`load_paths`] does and stores nothing: `loaded` is how many
/// resources a load would store, `deleted` how many deletions its Bundles ask for, `rejected`
/// what it would refuse. `parsers`: how many chunks are parsed at once (None: as a load does).
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
    loader.writers.stop().await?;
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
