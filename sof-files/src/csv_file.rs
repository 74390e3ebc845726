//! CSV (RFC 4180) through the `csv` crate: CRLF line ends, fields quoted when they hold a comma,
//! a quote, CR or LF (quotes doubled). A null is an empty field and an empty string `""`, so the
//! two stay apart (as PostgreSQL's and Spark's CSV do).

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::EncodeError;

/// The csv writer's output. The writer owns its `Write`, and has no way to reach it but
/// consuming the writer: it writes here and the encoder takes the bytes from the other handle.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // Nothing panics while holding the lock; a poisoned Vec<u8> is still a Vec<u8>.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) struct CsvEncoder {
    writer: csv::Writer<Sink>,
    sink: Sink,
    width: usize,
    drained: u64,
    scratch: Vec<u8>,
}

fn csv_error(e: impl std::fmt::Display) -> EncodeError {
    EncodeError::Write(format!("writing CSV: {e}"))
}

impl CsvEncoder {
    pub(crate) fn new(columns: &[sof::Column], header: bool) -> Result<CsvEncoder, EncodeError> {
        let sink = Sink::default();
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .quote_style(csv::QuoteStyle::Necessary)
            .from_writer(sink.clone());
        if header {
            writer
                .write_record(columns.iter().map(|c| c.name()))
                .map_err(csv_error)?;
            writer.flush().map_err(csv_error)?;
        }
        Ok(CsvEncoder {
            writer,
            sink,
            width: columns.len(),
            drained: 0,
            scratch: Vec::new(),
        })
    }

    pub(crate) fn push_row(&mut self, row: &[Value]) -> Result<(), EncodeError> {
        for v in row {
            match v {
                Value::Null => self.writer.write_field(b"").map_err(csv_error)?,
                Value::String(s) if s.is_empty() && self.width > 1 => {
                    // The csv crate writes an empty field unquoted, as a null; quote this one.
                    // Its delimiter is written, the buffer flushed, then the quotes go straight
                    // to the output. (In a one-column row the crate writes `""` itself, since an
                    // empty line is no record, so a null there reads as an empty string too.)
                    self.writer.write_field(b"").map_err(csv_error)?;
                    self.writer.flush().map_err(csv_error)?;
                    self.sink.lock().extend_from_slice(b"\"\"");
                }
                Value::String(s) => self.writer.write_field(s).map_err(csv_error)?,
                Value::Bool(b) => self
                    .writer
                    .write_field(if *b { "true" } else { "false" })
                    .map_err(csv_error)?,
                // Numbers as their JSON text; arrays (collection columns) and objects as compact
                // JSON.
                other => {
                    self.scratch.clear();
                    serde_json::to_writer(&mut self.scratch, other).map_err(csv_error)?;
                    self.writer.write_field(&self.scratch).map_err(csv_error)?;
                }
            }
        }
        self.writer.write_record(None::<&[u8]>).map_err(csv_error)?;
        // Whole rows only reach the output: bytes_so_far and drain_ready see them at once.
        self.writer.flush().map_err(csv_error)
    }

    pub(crate) fn drain_ready(&mut self, out: &mut Vec<u8>) {
        let mut buf = self.sink.lock();
        self.drained += buf.len() as u64;
        out.append(&mut buf);
    }

    pub(crate) fn bytes_so_far(&self) -> u64 {
        self.drained + self.sink.lock().len() as u64
    }
}
