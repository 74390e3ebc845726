//! Parsing: each line (or Bundle entry) read once into the row it is stored as; the chunks of an
//! ndjson file parsed several at a time, handed out in the file's order.

use std::path::Path;

use super::read::{Chunk, Chunks};
use super::Refused;
use crate::db::resources::{NewResource, ProvenanceTargets};
use crate::export::params::is_fhir_id;
use crate::fhir::compartment::{parse_reference, patient_ids, references};
use crate::fhir::instant::parse_instant;
use crate::fhir::resource_types::is_resource_type;
use crate::fhir::scan::scan;

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

/// How many chunks are parsed at once: one per core, at most 8 (each holds a chunk and its
/// resources in memory; 8 parse faster than any one Postgres stores).
pub(super) fn parser_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// Why a resource of `bytes` bytes is refused.
pub(super) fn too_large(what: &str, bytes: u64, limit: usize) -> Refused {
    Refused(format!(
        "{what} is {bytes} bytes, over the limit of {limit} bytes for a resource \
         (`bulk-export load --max-resource-mb` sets it)"
    ))
}

/// One chunk's lines, each a resource or why it is refused, with its 1-based line number in the
/// file; empty lines are skipped (but counted).
pub(super) type ParsedChunk = Vec<(usize, Result<NewResource, Refused>)>;

/// What a parse gives back: the chunk to read into again (not a long line's), its lines, and
/// how many lines it had.
type Parsed = (Option<Vec<u8>>, ParsedChunk, usize);

/// The chunks of an ndjson file parsed `parsers` at a time on blocking threads (a single
/// parser capped a load at what one core parses, whatever the cores Postgres had), handed out
/// in the file's order: a resource's later line is still stored after its earlier one.
pub(super) struct ParsedChunks {
    chunks: Chunks,
    /// Parses under way, oldest first.
    running: std::collections::VecDeque<tokio::task::JoinHandle<Parsed>>,
    parsers: usize,
    /// Lines in the chunks handed out so far.
    lines: usize,
}

impl ParsedChunks {
    pub(super) async fn open(
        path: &Path,
        chunk_size: usize,
        parsers: usize,
        max_line: usize,
    ) -> std::io::Result<Self> {
        Ok(ParsedChunks {
            chunks: Chunks::open(path, chunk_size, max_line).await?,
            running: Default::default(),
            parsers: parsers.max(1),
            lines: 0,
        })
    }

    /// The next chunk's lines, numbered within the file; None at the end.
    pub(super) async fn next(&mut self) -> std::io::Result<Option<ParsedChunk>> {
        while self.running.len() < self.parsers {
            let Some(chunk) = self.chunks.next().await? else {
                break;
            };
            let max_line = self.chunks.max_line();
            self.running
                .push_back(tokio::task::spawn_blocking(move || match chunk {
                    Chunk::Lines(chunk) => {
                        let (parsed, lines) = parse_chunk(&chunk, max_line);
                        (Some(chunk), parsed, lines)
                    }
                    Chunk::Long(line) => (None, parse_long_line(line), 1),
                    Chunk::TooLong(len) => (
                        None,
                        vec![(1, Err(too_large("the line", len, max_line)))],
                        1,
                    ),
                }));
        }
        let Some(parse) = self.running.pop_front() else {
            return Ok(None);
        };
        let (chunk, mut parsed, lines) = parse.await.map_err(std::io::Error::other)?;
        if let Some(chunk) = chunk {
            self.chunks.recycle(chunk);
        }
        for (line, _) in &mut parsed {
            *line += self.lines;
        }
        self.lines += lines;
        Ok(Some(parsed))
    }
}

/// Parses every line of a chunk from [`Chunks`]; its lines are numbered from 1. Also returns
/// how many lines it has.
fn parse_chunk(chunk: &[u8], max_line: usize) -> (ParsedChunk, usize) {
    let mut out = Vec::new();
    let mut n = 0;
    for line in lines(chunk) {
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

/// Parses a line from [`Chunk::Long`]: its buffer becomes the resource's text (no copy unless
/// it has blanks around it).
fn parse_long_line(mut line: Vec<u8>) -> ParsedChunk {
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

/// The lines of a chunk from [`Chunks`], without their newlines.
pub(super) fn lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    let mut start = 0;
    memchr::memchr_iter(b'\n', body)
        .chain(std::iter::once(body.len()))
        .map(move |end| {
            let line = &body[start..end];
            start = end + 1;
            line
        })
}
