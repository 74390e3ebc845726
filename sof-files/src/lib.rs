//! File encoders for the rows of SQL on FHIR v2 ViewDefinitions: NDJSON, CSV (RFC 4180) and
//! Parquet (typed, Snappy-compressed, row groups bounded by rows and bytes).
//!
//! Synchronous and without I/O: rows go in as [`sof::View::append_rows`] gives them, bytes come
//! out in pieces that are final (ready for a multipart upload), and [`Encoder::bytes_so_far`]
//! tells when to start the next file.
//!
//! ```
//! use serde_json::json;
//! use sof_files::{Encoder, Format};
//!
//! let view = sof::View::from_json(&json!({
//!     "resourceType": "ViewDefinition", "resource": "Observation",
//!     "select": [{"column": [
//!         {"name": "id", "path": "getResourceKey()"},
//!         {"name": "value", "path": "value.ofType(Quantity).value"}
//!     ]}]
//! }))?;
//! let format = Format::parse("parquet", false)?;
//! let mut encoder = Encoder::new(format, view.columns())?;
//! let mut flat = Vec::new();
//! let mut file = Vec::new();
//! for resource in [json!({"resourceType": "Observation", "id": "o1",
//!                         "valueQuantity": {"value": 1.5}})] {
//!     flat.clear();
//!     view.append_rows(&resource, &mut flat)?;
//!     encoder.push(&flat)?;
//!     encoder.drain_ready(&mut file); // upload a part when enough has gathered
//! }
//! encoder.finish(&mut file)?;
//! assert!(file.starts_with(b"PAR1") && file.ends_with(b"PAR1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod csv_file;
mod decimal;
mod ndjson;
mod parquet_file;
mod types;

use serde_json::Value;

pub use types::{parquet_type, ParquetType, DEFAULT_DECIMAL};

/// An output file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Newline-delimited JSON: one object per row, every column a member (null kept).
    Ndjson,
    /// RFC 4180 CSV, with or without a first line of column names.
    Csv {
        /// Whether the file starts with a line of column names.
        header: bool,
    },
    /// Apache Parquet.
    Parquet,
}

/// A `_format` this crate does not write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported output format '{0}': use ndjson (application/x-ndjson), csv (text/csv) or \
     parquet (application/vnd.apache.parquet)"
)]
pub struct FormatError(pub String);

impl Format {
    /// The format a `_format` parameter names, case-insensitively: `ndjson`,
    /// `application/x-ndjson`, `application/ndjson`, `application/fhir+ndjson`; `csv`,
    /// `text/csv`; `parquet`, `application/vnd.apache.parquet`, `application/parquet` (the SQL on
    /// FHIR OutputFormatCodes and the media types Pathling accepts). `header` is the CSV header
    /// flag (the `header` parameter), ignored for the other formats.
    pub fn parse(code: &str, header: bool) -> Result<Format, FormatError> {
        let c = code.trim().to_ascii_lowercase();
        match c.as_str() {
            "ndjson"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/fhir+ndjson" => Ok(Format::Ndjson),
            "csv" | "text/csv" => Ok(Format::Csv { header }),
            "parquet" | "application/vnd.apache.parquet" | "application/parquet" => {
                Ok(Format::Parquet)
            }
            _ => Err(FormatError(code.to_string())),
        }
    }

    /// The file name extension: `ndjson`, `csv`, `parquet`.
    pub fn extension(&self) -> &'static str {
        self.code()
    }

    /// The media type of the files: `application/x-ndjson` (the rows are not FHIR resources, so
    /// not `application/fhir+ndjson`), `text/csv`, `application/vnd.apache.parquet`.
    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv { .. } => "text/csv",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// The SQL on FHIR OutputFormatCodes code: `ndjson`, `csv`, `parquet`.
    pub fn code(&self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv { .. } => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// A row or file that cannot be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A column whose value (or type) cannot be written: a Parquet `boolean` column given a
    /// string, a decimal with more digits than the column holds, a bad `ansi/type` tag. The row
    /// was not written.
    #[error("column '{column}': {message}")]
    Column {
        /// The column's name.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// `push` was given a number of values that is not a multiple of the column count.
    #[error("{values} values are not whole rows of {columns} columns")]
    RowShape {
        /// Values given.
        values: usize,
        /// Columns of the view.
        columns: usize,
    },
    /// A view without columns (there is nothing to write).
    #[error("the view has no columns")]
    NoColumns,
    /// The writing library failed. The file is unusable: the encoder refuses further rows.
    #[error("{0}")]
    Write(String),
}

impl EncodeError {
    pub(crate) fn column(name: &str, message: impl Into<String>) -> EncodeError {
        EncodeError::Column {
            column: name.to_string(),
            message: message.into(),
        }
    }

    /// The column at fault, when one is.
    pub fn column_name(&self) -> Option<&str> {
        match self {
            EncodeError::Column { column, .. } => Some(column),
            _ => None,
        }
    }
}

/// Limits of the Parquet writer; the defaults suit exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// A Parquet row group ends at this many rows (default 1,000,000)…
    pub row_group_rows: usize,
    /// …or when the writer's estimate of its encoded, compressed size reaches this (default
    /// 16 MiB), whichever comes first. The row group is held in memory until it ends and then
    /// drained whole, so this bounds the encoder's memory: about this much for the row group
    /// in progress (plus a few MiB of the writer's dictionaries and page buffers), and as much
    /// again in the caller's hands while it uploads the last one. The estimate is close: with
    /// 16 MiB the Observation bench's row groups come out at 16.5 MB.
    pub row_group_bytes: usize,
    /// Rows gathered in Arrow builders before they go to the Parquet writer as one batch
    /// (default 4,096)…
    pub batch_rows: usize,
    /// …or when they take about this much memory (default 4 MiB).
    pub batch_bytes: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            row_group_rows: 1_000_000,
            row_group_bytes: 16 << 20,
            batch_rows: 4096,
            batch_bytes: 4 << 20,
        }
    }
}

impl Options {
    /// Limits for one of `encoders` Parquet encoders open at the same time (one per view of a
    /// resource type) that should hold about `memory` bytes between them: each row group ends
    /// at `memory / encoders` by the writer's estimate (at least 1 MiB, at most the default 16
    /// MiB), and rows wait in the builders for at most a quarter of that. Each encoder holds
    /// about its row group in progress and a few MiB of dictionaries and page buffers; the
    /// caller holds what it drained until it is uploaded.
    pub fn sharing(memory: usize, encoders: usize) -> Options {
        let default = Options::default();
        let share = (memory / encoders.max(1)).clamp(1 << 20, default.row_group_bytes);
        Options {
            row_group_bytes: share,
            batch_bytes: (share / 4).min(default.batch_bytes),
            ..default
        }
    }
}

enum Inner {
    Ndjson(ndjson::NdjsonEncoder),
    Csv(Box<csv_file::CsvEncoder>),
    Parquet(Box<parquet_file::ParquetEncoder>),
}

/// Writes one file of rows in a [`Format`].
pub struct Encoder {
    format: Format,
    width: usize,
    rows: u64,
    failed: bool,
    inner: Inner,
}

impl Encoder {
    /// An encoder for a file of `columns` (a view's [`sof::View::columns`]), with the default
    /// [`Options`].
    pub fn new(format: Format, columns: &[sof::Column]) -> Result<Encoder, EncodeError> {
        Encoder::with_options(format, columns, &Options::default())
    }

    /// An encoder with the given Parquet limits.
    pub fn with_options(
        format: Format,
        columns: &[sof::Column],
        options: &Options,
    ) -> Result<Encoder, EncodeError> {
        if columns.is_empty() {
            return Err(EncodeError::NoColumns);
        }
        let inner = match format {
            Format::Ndjson => Inner::Ndjson(ndjson::NdjsonEncoder::new(columns)?),
            Format::Csv { header } => {
                Inner::Csv(Box::new(csv_file::CsvEncoder::new(columns, header)?))
            }
            Format::Parquet => Inner::Parquet(Box::new(parquet_file::ParquetEncoder::new(
                columns, options,
            )?)),
        };
        Ok(Encoder {
            format,
            width: columns.len(),
            rows: 0,
            failed: false,
            inner,
        })
    }

    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Adds rows flattened as [`sof::View::append_rows`] gives them (`columns.len()` values
    /// each, in column order). On [`EncodeError::Column`] the rows before the one at fault are
    /// written and that one and those after it are not; after [`EncodeError::Write`] the
    /// encoder refuses everything.
    pub fn push(&mut self, flat: &[Value]) -> Result<(), EncodeError> {
        if self.failed {
            return Err(EncodeError::Write(
                "the file could not be written (an earlier error)".to_string(),
            ));
        }
        if !flat.len().is_multiple_of(self.width) {
            return Err(EncodeError::RowShape {
                values: flat.len(),
                columns: self.width,
            });
        }
        for row in flat.chunks_exact(self.width) {
            let result = match &mut self.inner {
                Inner::Ndjson(e) => e.push_row(row),
                Inner::Csv(e) => e.push_row(row),
                Inner::Parquet(e) => e.push_row(row),
            };
            if let Err(e) = result {
                if matches!(e, EncodeError::Write(_)) {
                    self.failed = true;
                }
                return Err(e);
            }
            self.rows += 1;
        }
        Ok(())
    }

    /// Appends to `out` the bytes of the file that are final (ready to upload) and forgets
    /// them: for NDJSON and CSV every row pushed; for Parquet the leading magic and each
    /// completed row group (the current one stays in memory until it is full or
    /// [`Encoder::finish`]).
    pub fn drain_ready(&mut self, out: &mut Vec<u8>) {
        match &mut self.inner {
            Inner::Ndjson(e) => e.drain_ready(out),
            Inner::Csv(e) => e.drain_ready(out),
            Inner::Parquet(e) => {
                if e.drain_ready(out).is_err() {
                    // Flushing into a Vec cannot fail; should it, `finish` reports it.
                    self.failed = true;
                }
            }
        }
    }

    /// The size the file has so far: bytes drained, ready, and (Parquet) an estimate of the
    /// rows still in memory — the current row group's encoded size and the rows not yet
    /// encoded, as they are in memory (an overestimate). Start a new file when this passes
    /// the size limit. The Parquet footer (a few KiB) is not counted.
    pub fn bytes_so_far(&self) -> u64 {
        match &self.inner {
            Inner::Ndjson(e) => e.bytes_so_far(),
            Inner::Csv(e) => e.bytes_so_far(),
            Inner::Parquet(e) => e.bytes_so_far(),
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends the rest of the file to `out` (for Parquet the last row group and the footer).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.failed {
            return Err(EncodeError::Write(
                "the file could not be written (an earlier error)".to_string(),
            ));
        }
        match self.inner {
            Inner::Ndjson(ref mut e) => {
                e.drain_ready(out);
                Ok(())
            }
            Inner::Csv(ref mut e) => {
                e.drain_ready(out);
                Ok(())
            }
            Inner::Parquet(e) => e.finish(out),
        }
    }
}
