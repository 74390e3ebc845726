//! Parquet: rows → Arrow builders → RecordBatches of a few thousand rows → the `parquet` crate's
//! `ArrowWriter`, which keeps the current row group (encoded, compressed pages) in memory and
//! writes it out when it reaches the row or byte limit.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Decimal128Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::decimal::{to_unscaled, DecimalError};
use crate::types::{parquet_type, ParquetType};
use crate::{EncodeError, Options};

/// The name of a list column's element field, as the Parquet LIST convention names it.
const ELEMENT: &str = "element";

pub(crate) struct ParquetEncoder {
    schema: SchemaRef,
    names: Vec<String>,
    columns: Vec<Box<dyn ColumnBuilder>>,
    /// Whether any column can refuse a value (all but STRING columns): those rows are checked
    /// before anything is appended, so a refused row leaves the file as it was.
    any_fallible: bool,
    writer: ArrowWriter<Chunks>,
    /// Rows in the builders, not yet handed to the writer.
    pending_rows: usize,
    /// Rough size of those rows in the builders.
    pending_bytes: usize,
    batch_rows: usize,
    batch_bytes: usize,
    scratch: String,
}

impl ParquetEncoder {
    pub(crate) fn new(
        columns: &[sof::Column],
        options: &Options,
    ) -> Result<ParquetEncoder, EncodeError> {
        let mut fields = Vec::with_capacity(columns.len());
        let mut builders: Vec<Box<dyn ColumnBuilder>> = Vec::with_capacity(columns.len());
        for c in columns {
            let t = parquet_type(c)?;
            let leaf_type = match t {
                ParquetType::String => DataType::Utf8,
                ParquetType::Boolean => DataType::Boolean,
                ParquetType::Int32 => DataType::Int32,
                ParquetType::Int64 => DataType::Int64,
                ParquetType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            };
            let data_type = if c.collection() {
                DataType::List(Arc::new(Field::new(ELEMENT, leaf_type, true)))
            } else {
                leaf_type
            };
            fields.push(Field::new(c.name(), data_type, true));
            let builder: Box<dyn ColumnBuilder> = match (t, c.collection()) {
                (ParquetType::String, false) => Box::new(Single(StringBuilder::new())),
                (ParquetType::String, true) => {
                    Box::new(List::new(StringBuilder::new(), DataType::Utf8))
                }
                (ParquetType::Boolean, false) => Box::new(Single(BooleanBuilder::new())),
                (ParquetType::Boolean, true) => {
                    Box::new(List::new(BooleanBuilder::new(), DataType::Boolean))
                }
                (ParquetType::Int32, false) => Box::new(Single(Int32Builder::new())),
                (ParquetType::Int32, true) => {
                    Box::new(List::new(Int32Builder::new(), DataType::Int32))
                }
                (ParquetType::Int64, false) => Box::new(Single(Int64Builder::new())),
                (ParquetType::Int64, true) => {
                    Box::new(List::new(Int64Builder::new(), DataType::Int64))
                }
                (ParquetType::Decimal { precision, scale }, collection) => {
                    let b = DecimalLeaf {
                        builder: Decimal128Builder::new()
                            .with_precision_and_scale(precision, scale)
                            .map_err(|e| EncodeError::column(c.name(), e.to_string()))?,
                        precision,
                        scale,
                    };
                    if collection {
                        Box::new(List::new(b, DataType::Decimal128(precision, scale)))
                    } else {
                        Box::new(Single(b))
                    }
                }
            };
            builders.push(builder);
        }
        let schema = Arc::new(Schema::new(fields));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
            .set_max_row_group_bytes(Some(options.row_group_bytes.max(1)))
            .build();
        let writer = ArrowWriter::try_new(Chunks::default(), schema.clone(), Some(props))
            .map_err(|e| EncodeError::Write(format!("starting the Parquet file: {e}")))?;
        Ok(ParquetEncoder {
            schema,
            names: columns.iter().map(|c| c.name().to_string()).collect(),
            any_fallible: builders.iter().any(|b| b.fallible()),
            columns: builders,
            writer,
            pending_rows: 0,
            pending_bytes: 0,
            batch_rows: options.batch_rows.max(1),
            batch_bytes: options.batch_bytes.max(1),
            scratch: String::new(),
        })
    }

    pub(crate) fn push_row(&mut self, row: &[Value]) -> Result<(), EncodeError> {
        if self.any_fallible {
            for ((b, v), name) in self.columns.iter().zip(row).zip(&self.names) {
                if b.fallible() {
                    b.check(v, &mut self.scratch)
                        .map_err(|m| EncodeError::column(name, m))?;
                }
            }
        }
        for ((b, v), name) in self.columns.iter_mut().zip(row).zip(&self.names) {
            // Checked above: an error here would be a bug, and leaves the columns uneven, which
            // the next batch reports.
            b.append(v, &mut self.scratch)
                .map_err(|m| EncodeError::column(name, m))?;
            self.pending_bytes += approximate_size(v);
        }
        self.pending_rows += 1;
        if self.pending_rows >= self.batch_rows || self.pending_bytes >= self.batch_bytes {
            self.write_batch()?;
        }
        Ok(())
    }

    /// Hands the rows in the builders to the writer as one RecordBatch (the writer flushes a row
    /// group when it reaches a limit).
    fn write_batch(&mut self) -> Result<(), EncodeError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(|b| b.finish()).collect();
        self.pending_rows = 0;
        self.pending_bytes = 0;
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| EncodeError::Write(format!("building a batch of rows: {e}")))?;
        self.writer
            .write(&batch)
            .map_err(|e| EncodeError::Write(format!("writing Parquet: {e}")))
    }

    pub(crate) fn drain_ready(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        // The writer buffers its output (a BufWriter over `Chunks`): push it through. Only
        // whole row groups (and the leading magic) are ever written, so what arrives is final.
        // Taking bytes out does not disturb the writer: it counts offsets itself.
        self.writer
            .sync()
            .map_err(|e| EncodeError::Write(format!("writing Parquet: {e}")))?;
        self.writer.inner_mut().drain_into(out);
        Ok(())
    }

    pub(crate) fn bytes_so_far(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size() + self.pending_bytes) as u64
    }

    pub(crate) fn finish(mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.write_batch()?;
        self.writer
            .finish()
            .map_err(|e| EncodeError::Write(format!("finishing the Parquet file: {e}")))?;
        self.drain_ready(out)
    }
}

/// The writer's output, in pieces of about a MiB. A row group is written out all at once when
/// it closes; into one growing `Vec` that would cost a copy of it on each doubling (the old and
/// the new allocation together: up to three times the row group in memory).
#[derive(Default)]
struct Chunks {
    full: Vec<Vec<u8>>,
    current: Vec<u8>,
}

const CHUNK: usize = 1 << 20;

impl std::io::Write for Chunks {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            if self.current.len() == CHUNK {
                self.full.push(std::mem::take(&mut self.current));
            }
            if self.current.capacity() == 0 {
                self.current.reserve_exact(CHUNK);
            }
            let take = buf.len().min(CHUNK - self.current.len());
            self.current.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Chunks {
    /// Moves everything to `out`, freeing each piece as it is copied.
    fn drain_into(&mut self, out: &mut Vec<u8>) {
        let total = self.full.iter().map(Vec::len).sum::<usize>() + self.current.len();
        out.reserve_exact(total);
        for chunk in self.full.drain(..) {
            out.extend_from_slice(&chunk);
        }
        out.extend_from_slice(&self.current);
        self.current = Vec::new();
    }
}

/// A rough size of a value in the Arrow builders, to bound the rows held before a batch.
fn approximate_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 4,
        Value::Array(items) => items.iter().map(approximate_size).sum::<usize>() + 4,
        Value::Object(m) => m.len() * 32,
        _ => 8,
    }
}

/// A column's builder, behind which each Parquet type converts JSON values.
trait ColumnBuilder: Send {
    /// Whether `append` can refuse a value.
    fn fallible(&self) -> bool;
    /// Whether `append` would accept `v` (without appending it).
    fn check(&self, v: &Value, scratch: &mut String) -> Result<(), String>;
    fn append(&mut self, v: &Value, scratch: &mut String) -> Result<(), String>;
    fn finish(&mut self) -> ArrayRef;
}

/// The values of one Parquet type.
trait Leaf: ArrayBuilder {
    const FALLIBLE: bool;
    fn check(&self, v: &Value, scratch: &mut String) -> Result<(), String>;
    /// Appends a non-null value.
    fn append_value(&mut self, v: &Value, scratch: &mut String) -> Result<(), String>;
    fn append_null_value(&mut self);
}

struct Single<B>(B);

impl<B: Leaf + Send> ColumnBuilder for Single<B> {
    fn fallible(&self) -> bool {
        B::FALLIBLE
    }
    fn check(&self, v: &Value, scratch: &mut String) -> Result<(), String> {
        if v.is_null() {
            Ok(())
        } else {
            self.0.check(v, scratch)
        }
    }
    fn append(&mut self, v: &Value, scratch: &mut String) -> Result<(), String> {
        if v.is_null() {
            self.0.append_null_value();
            Ok(())
        } else {
            self.0.append_value(v, scratch)
        }
    }
    fn finish(&mut self) -> ArrayRef {
        self.0.finish()
    }
}

/// A `collection` column: a LIST of the element type. A JSON array is the list (a null item is
/// a null element), null is a null list, and any other value a list of that one value.
struct List<B: ArrayBuilder>(ListBuilder<B>);

impl<B: ArrayBuilder> List<B> {
    fn new(values: B, element_type: DataType) -> List<B> {
        List(ListBuilder::new(values).with_field(Arc::new(Field::new(ELEMENT, element_type, true))))
    }
}

impl<B: Leaf + Send> ColumnBuilder for List<B> {
    fn fallible(&self) -> bool {
        B::FALLIBLE
    }
    fn check(&self, v: &Value, scratch: &mut String) -> Result<(), String> {
        let one = std::slice::from_ref(v);
        let items = match v {
            Value::Null => return Ok(()),
            Value::Array(items) => items.as_slice(),
            _ => one,
        };
        for item in items.iter().filter(|i| !i.is_null()) {
            self.0.values_ref().check(item, scratch)?;
        }
        Ok(())
    }
    fn append(&mut self, v: &Value, scratch: &mut String) -> Result<(), String> {
        let one = std::slice::from_ref(v);
        let items = match v {
            Value::Null => {
                self.0.append(false);
                return Ok(());
            }
            Value::Array(items) => items.as_slice(),
            _ => one,
        };
        for item in items {
            if item.is_null() {
                self.0.values().append_null_value();
            } else {
                self.0.values().append_value(item, scratch)?;
            }
        }
        self.0.append(true);
        Ok(())
    }
    fn finish(&mut self) -> ArrayRef {
        ArrayBuilder::finish(&mut self.0)
    }
}

/// What a value is, for messages.
fn describe(v: &Value) -> String {
    let mut text = v.to_string();
    if text.len() > 60 {
        let mut end = 57;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    match v {
        Value::String(_) => format!("the string {text}"),
        Value::Number(_) => format!("the number {text}"),
        Value::Bool(_) => format!("the boolean {text}"),
        Value::Array(_) => format!("the array {text}"),
        Value::Object(_) => format!("the object {text}"),
        Value::Null => "null".to_string(),
    }
}

impl Leaf for StringBuilder {
    const FALLIBLE: bool = false;
    fn check(&self, _: &Value, _: &mut String) -> Result<(), String> {
        Ok(())
    }
    /// A string as it is; anything else (a number or boolean of a column whose type is not
    /// known, an object) as its JSON text.
    fn append_value(&mut self, v: &Value, scratch: &mut String) -> Result<(), String> {
        match v {
            Value::String(s) => self.append_value(s),
            other => {
                scratch.clear();
                // Writing to a String cannot fail.
                let _ = write!(scratch, "{other}");
                StringBuilder::append_value(self, scratch.as_str());
            }
        }
        Ok(())
    }
    fn append_null_value(&mut self) {
        self.append_null();
    }
}

impl Leaf for BooleanBuilder {
    const FALLIBLE: bool = true;
    fn check(&self, v: &Value, _: &mut String) -> Result<(), String> {
        match v {
            Value::Bool(_) => Ok(()),
            other => Err(format!("{} is not a boolean", describe(other))),
        }
    }
    fn append_value(&mut self, v: &Value, scratch: &mut String) -> Result<(), String> {
        match v {
            Value::Bool(b) => {
                BooleanBuilder::append_value(self, *b);
                Ok(())
            }
            other => Leaf::check(self, other, scratch),
        }
    }
    fn append_null_value(&mut self) {
        self.append_null();
    }
}

fn int32(v: &Value) -> Result<i32, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| format!("{} is not a 32-bit integer", describe(v))),
        other => Err(format!("{} is not an integer", describe(other))),
    }
}

impl Leaf for Int32Builder {
    const FALLIBLE: bool = true;
    fn check(&self, v: &Value, _: &mut String) -> Result<(), String> {
        int32(v).map(|_| ())
    }
    fn append_value(&mut self, v: &Value, _: &mut String) -> Result<(), String> {
        Int32Builder::append_value(self, int32(v)?);
        Ok(())
    }
    fn append_null_value(&mut self) {
        self.append_null();
    }
}

/// A JSON integer, or a string holding one (FHIR's integer64 is a JSON string).
fn int64(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{} is not a 64-bit integer", describe(v)))
}

impl Leaf for Int64Builder {
    const FALLIBLE: bool = true;
    fn check(&self, v: &Value, _: &mut String) -> Result<(), String> {
        int64(v).map(|_| ())
    }
    fn append_value(&mut self, v: &Value, _: &mut String) -> Result<(), String> {
        Int64Builder::append_value(self, int64(v)?);
        Ok(())
    }
    fn append_null_value(&mut self) {
        self.append_null();
    }
}

struct DecimalLeaf {
    builder: Decimal128Builder,
    precision: u8,
    scale: i8,
}

impl DecimalLeaf {
    /// The unscaled value of a JSON number (or a string holding one), read from its text.
    fn unscaled(&self, v: &Value, scratch: &mut String) -> Result<i128, String> {
        let result = match v {
            Value::Number(n) => match n.as_i64() {
                // Integers need no text; the check is the same as for text.
                Some(i) if self.scale >= 0 && self.scale <= 18 => {
                    let value = i128::from(i) * 10i128.pow(self.scale as u32);
                    if value.unsigned_abs() < 10u128.pow(u32::from(self.precision)) {
                        Ok(value)
                    } else {
                        Err(DecimalError::Precision)
                    }
                }
                _ => {
                    scratch.clear();
                    // With serde_json's arbitrary_precision the number's source text, else the
                    // shortest text of its f64.
                    let _ = write!(scratch, "{n}");
                    to_unscaled(scratch, self.precision, self.scale)
                }
            },
            Value::String(s) => to_unscaled(s, self.precision, self.scale),
            other => return Err(format!("{} is not a decimal", describe(other))),
        };
        result.map_err(|e| {
            let (p, s) = (self.precision, self.scale);
            match e {
                DecimalError::Syntax => format!("{} is not a decimal", describe(v)),
                DecimalError::Scale => format!(
                    "{} has more than {s} digits after the point, more than DECIMAL({p},{s}) \
                     holds without rounding (an ansi/type tag such as DECIMAL(38,{}) on the \
                     column gives more)",
                    describe(v),
                    (s + 6).min(38)
                ),
                DecimalError::Precision => format!(
                    "{} has more digits than DECIMAL({p},{s}) holds ({} before the point)",
                    describe(v),
                    i16::from(p) - i16::from(s)
                ),
            }
        })
    }
}

impl ArrayBuilder for DecimalLeaf {
    fn len(&self) -> usize {
        self.builder.len()
    }
    fn finish(&mut self) -> ArrayRef {
        ArrayBuilder::finish(&mut self.builder)
    }
    fn finish_cloned(&self) -> ArrayRef {
        ArrayBuilder::finish_cloned(&self.builder)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn into_box_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

impl Leaf for DecimalLeaf {
    const FALLIBLE: bool = true;
    fn check(&self, v: &Value, scratch: &mut String) -> Result<(), String> {
        self.unscaled(v, scratch).map(|_| ())
    }
    fn append_value(&mut self, v: &Value, scratch: &mut String) -> Result<(), String> {
        let value = self.unscaled(v, scratch)?;
        self.builder.append_value(value);
        Ok(())
    }
    fn append_null_value(&mut self) {
        self.builder.append_null();
    }
}
