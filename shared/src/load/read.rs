//! Reading: the files under the given paths, and an ndjson file in chunks of whole lines.

use std::path::{Path, PathBuf};

use super::LoadError;

/// How much of an ndjson file is read at a time.
pub(super) const CHUNK_SIZE: usize = 4 << 20;

/// What [`Chunks`] gives: a piece of an ndjson file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Whole lines, each ending with a newline except the file's last.
    Lines(Vec<u8>),
    /// One line longer than a chunk, read into a buffer of exactly its size (with its newline,
    /// if it has one): parsed without a copy.
    Long(Vec<u8>),
    /// A line over the size limit, skipped without being held: its length.
    TooLong(u64),
}

/// A file read in chunks of whole lines, each read straight into the chunk's buffer (a
/// buffered line reader copied every line three times before its resource's String: into
/// tokio's file buffer, the reader's buffer and the line's String).
pub(super) struct Chunks {
    /// None once the end was read.
    file: Option<std::fs::File>,
    /// The start of a line whose end is not read yet (shorter than a chunk).
    tail: Vec<u8>,
    /// A chunk given back, read into again (a fresh 4 MiB buffer is faulted in page by page).
    spare: Vec<u8>,
    size: usize,
    /// Lines over this many bytes are skipped ([`Chunk::TooLong`]).
    max_line: usize,
}

impl Chunks {
    pub(super) async fn open(path: &Path, size: usize, max_line: usize) -> std::io::Result<Self> {
        let file = tokio::fs::File::open(path).await?.into_std().await;
        Ok(Chunks {
            file: Some(file),
            tail: Vec::new(),
            spare: Vec::new(),
            size: size.max(1),
            max_line,
        })
    }

    /// The next chunk; None at the end. A line longer than a chunk comes alone, read once
    /// into a buffer of its size ([`Chunk::Long`]), or is skipped when it is over the limit.
    pub(super) async fn next(&mut self) -> std::io::Result<Option<Chunk>> {
        use std::io::Read;
        let Some(file) = self.file.take() else {
            let rest = std::mem::take(&mut self.tail);
            return Ok((!rest.is_empty()).then_some(Chunk::Lines(rest)));
        };
        let mut chunk = std::mem::take(&mut self.spare);
        chunk.clear();
        let need = self.tail.len() + self.size;
        if chunk.capacity() < need {
            // Fresh, not grown: growing copies the old contents. Room for the tails of lines
            // of up to 64 kB.
            chunk = Vec::with_capacity(need + 64 * 1024);
        }
        chunk.append(&mut self.tail);
        let (want, max_line) = (self.size as u64, self.max_line);
        // A file read blocks its thread: off the runtime's workers.
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let n = (&mut file).take(want).read_to_end(&mut chunk)?;
            if (n as u64) < want {
                // The end: the rest of the file's lines.
                return Ok((None, Chunk::Lines(chunk)));
            }
            if memchr::memchr(b'\n', &chunk).is_some() {
                return Ok((Some(file), Chunk::Lines(chunk)));
            }
            // No line ends in it: all of it is the start of one long line.
            let long = read_long_line(&mut file, chunk, max_line)?;
            Ok::<_, std::io::Error>((Some(file), long))
        })
        .await
        .map_err(std::io::Error::other)??;
        let at_end = file.is_none();
        self.file = file;
        Ok(match chunk {
            Chunk::Lines(chunk) if at_end => (!chunk.is_empty()).then_some(Chunk::Lines(chunk)),
            Chunk::Lines(mut chunk) => {
                // Whole lines only: the start of the next one waits for the next chunk.
                if let Some(last) = memchr::memrchr(b'\n', &chunk) {
                    self.tail.extend_from_slice(&chunk[last + 1..]);
                    chunk.truncate(last + 1);
                }
                Some(Chunk::Lines(chunk))
            }
            other => Some(other),
        })
    }

    /// Lines over this many bytes are skipped.
    pub(super) fn max_line(&self) -> usize {
        self.max_line
    }

    /// Gives a chunk back to be read into again (not a long line's buffer, which is larger).
    pub(super) fn recycle(&mut self, chunk: Vec<u8>) {
        if chunk.capacity() <= 2 * (self.size + 64 * 1024) {
            self.spare = chunk;
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
) -> std::io::Result<Chunk> {
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
        return Ok(Chunk::TooLong(len));
    }
    file.seek(SeekFrom::Start(from))?;
    let take = rest + u64::from(newline);
    start.reserve_exact(take as usize);
    // (A file cut short meanwhile gives what there is.)
    (&mut *file).take(take).read_to_end(&mut start)?;
    Ok(Chunk::Long(start))
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
