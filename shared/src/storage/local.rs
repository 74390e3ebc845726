//! A directory as object storage: files appear under their final name only when finished.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::{validate_key, Download, ObjectStore, ObjectWriter, StorageError, Written};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&root).map_err(|source| StorageError::Io {
            path: root.clone(),
            source,
        })?;
        let root = root
            .canonicalize()
            .map_err(|source| StorageError::Io { path: root, source })?;
        Ok(LocalStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let path = self.path(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(parent))?;
        }
        let tmp = path.with_extension("partial");
        let for_thread = tmp.clone();
        let (file, direct) = tokio::task::spawn_blocking(move || create(&for_thread))
            .await
            .map_err(|e| io(&tmp)(std::io::Error::other(e)))?
            .map_err(io(&tmp))?;
        Ok(Box::new(LocalWriter {
            inner: Some(Inner {
                file,
                direct,
                buf: AlignedBuf::new(DIRECT_CHUNK),
            }),
            tmp,
            path,
            key: key.to_string(),
            bytes: 0,
        }))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        let mut count = 0;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&dir)(e)),
        };
        // Another process may delete the same files meanwhile (two exporters purging one
        // deleted job): what is already gone is not an error.
        loop {
            let entry = match entries.next_entry().await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(io(&dir)(e)),
            };
            let p = entry.path();
            match tokio::fs::remove_file(&p).await {
                Ok(()) => count += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::debug!(path = %p.display(), "already deleted by another process");
                }
                Err(e) => return Err(io(&p)(e)),
            }
        }
        match tokio::fs::remove_dir(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&dir)(e)),
        }
        Ok(count)
    }

    async fn download(&self, key: &str, _ttl: Duration) -> Result<Download, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Download::File(path)),
            _ => Err(StorageError::NotFound {
                key: key.to_string(),
            }),
        }
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.path(key)?;
        tokio::fs::read(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StorageError::NotFound {
                    key: key.to_string(),
                }
            } else {
                io(&path)(e)
            }
        })
    }
}

/// Writes go to the file from a blocking thread, in whole blocks of `DIRECT_CHUNK` bytes from a
/// block-aligned buffer the writer keeps (one copy of the data: into that buffer).
///
/// On Linux the file is opened with `O_DIRECT`: its bytes go from the buffer to the disk without
/// passing through the page cache. An export writes gigabytes that nobody reads back soon; through
/// the page cache every byte is copied once more into freshly allocated pages (the largest part of
/// the exporter's CPU time; docs/BENCHMARKS.md), and the output evicts the database's cached
/// pages. A file system that refuses `O_DIRECT` (tmpfs, some network and FUSE file systems) gets
/// ordinary buffered writes.
struct LocalWriter {
    /// None only while a write is under way (or after one failed).
    inner: Option<Inner>,
    tmp: PathBuf,
    path: PathBuf,
    key: String,
    bytes: u64,
}

/// What a blocking write owns.
struct Inner {
    file: std::fs::File,
    /// Whether `file` is open with O_DIRECT (writes whole aligned blocks).
    direct: bool,
    buf: AlignedBuf,
}

/// Alignment (and size granularity) of O_DIRECT writes: the largest logical block size in use.
const BLOCK: usize = 4096;
/// Bytes gathered before a write: large writes, few thread hand-offs.
const DIRECT_CHUNK: usize = 4 * 1024 * 1024;

/// A fixed buffer whose start is BLOCK-aligned (safe code: a larger allocation, used from its
/// first aligned byte).
struct AlignedBuf {
    storage: Box<[u8]>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(capacity: usize) -> AlignedBuf {
        let storage = vec![0u8; capacity + BLOCK].into_boxed_slice();
        let start = storage.as_ptr().align_offset(BLOCK);
        AlignedBuf {
            storage,
            start,
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.storage.len() - BLOCK
    }

    fn filled(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// Appends as much of `data` as fits; returns how much.
    fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity() - self.len);
        let at = self.start + self.len;
        self.storage[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Drops the first `n` bytes, moving the rest to the front.
    fn consume(&mut self, n: usize) {
        let s = self.start;
        self.storage.copy_within(s + n..s + self.len, s);
        self.len -= n;
    }
}

impl Inner {
    /// Writes the buffer's whole blocks (all of it with `all`), keeping the rest.
    fn flush(&mut self, all: bool, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        if !self.direct {
            self.file.write_all(self.buf.filled())?;
            self.buf.len = 0;
            return Ok(());
        }
        let whole = self.buf.len / BLOCK * BLOCK;
        if whole > 0 {
            match self.file.write_all(&self.buf.filled()[..whole]) {
                Ok(()) => self.buf.consume(whole),
                // Opened with O_DIRECT, refused at the first write (EINVAL; some file systems
                // do): the same file, buffered, from where it is.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    self.reopen_buffered(path)?;
                    return self.flush(all, path);
                }
                Err(e) => return Err(e),
            }
        }
        if all && self.buf.len > 0 {
            // The tail: written as a whole block, then the file cut back to its true length.
            let at = std::io::Seek::stream_position(&mut self.file)?;
            let tail = self.buf.len;
            let s = self.buf.start;
            self.buf.storage[s + tail..s + BLOCK].fill(0);
            self.buf.len = BLOCK;
            self.file.write_all(self.buf.filled())?;
            self.file.set_len(at + tail as u64)?;
            self.buf.len = 0;
        }
        Ok(())
    }

    fn reopen_buffered(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Seek;
        let at = self.file.stream_position()?;
        if !same_file(&self.file, path)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the unfinished file was replaced by another writer of its key",
            ));
        }
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.seek(std::io::SeekFrom::Start(at))?;
        self.file = file;
        self.direct = false;
        Ok(())
    }
}

/// Creates `path` for writing, with O_DIRECT where the system and file system allow it: always
/// a new file (an unfinished file of the same key left by another writer is unlinked first, so
/// that writer, an exporter stopped past its lease, writes on into a file nobody will see and
/// can neither change this one nor publish it: see [`same_file`]).
fn create(path: &std::path::Path) -> std::io::Result<(std::fs::File, bool)> {
    let mut tries = 0;
    loop {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match create_new(path) {
            // Another writer of the key created it between the two calls.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

fn create_new(path: &std::path::Path) -> std::io::Result<(std::fs::File, bool)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return Ok((f, true)),
            // EINVAL: this file system does not do O_DIRECT.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
            Err(e) => return Err(e),
        }
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    Ok((file, false))
}

/// Whether `path` is still the file this writer has open (false: gone, or another writer's).
fn same_file(file: &std::fs::File, path: &std::path::Path) -> std::io::Result<bool> {
    let there = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mine = file.metadata()?;
        Ok(mine.dev() == there.dev() && mine.ino() == there.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = (file, there);
        Ok(true)
    }
}

impl LocalWriter {
    /// What a write answers once an earlier one failed (the file's state went with it).
    fn lost(&self) -> StorageError {
        io(&self.tmp)(std::io::Error::other(
            "an earlier write to this file failed",
        ))
    }

    async fn blocking<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut Inner, &std::path::Path) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        let Some(mut inner) = self.inner.take() else {
            return Err(self.lost());
        };
        let tmp = self.tmp.clone();
        let (inner, result) = tokio::task::spawn_blocking(move || {
            let result = op(&mut inner, &tmp);
            (inner, result)
        })
        .await
        .map_err(|e| io(&self.tmp)(std::io::Error::other(e)))?;
        let value = result.map_err(io(&self.tmp))?;
        self.inner = Some(inner);
        Ok(value)
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let Some(inner) = self.inner.as_mut() else {
                return Err(self.lost());
            };
            let n = inner.buf.push(data);
            data = &data[n..];
            if inner.buf.len == inner.buf.capacity() {
                self.blocking(|i, p| i.flush(false, p)).await?;
            }
        }
        Ok(())
    }

    /// No gzip copy: the file route compresses local files on the way out.
    async fn finish(mut self: Box<Self>) -> Result<Written, StorageError> {
        let mine = self
            .blocking(|i, p| {
                i.flush(true, p)?;
                i.file.sync_all()?;
                same_file(&i.file, p)
            })
            .await?;
        if !mine {
            return Err(StorageError::PartialGone {
                key: self.key.clone(),
            });
        }
        match tokio::fs::rename(&self.tmp, &self.path).await {
            Ok(()) => {}
            // Another writer of this key renamed it first, or the job's files were deleted.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::PartialGone {
                    key: self.key.clone(),
                })
            }
            Err(e) => return Err(io(&self.path)(e)),
        }
        Ok(Written {
            bytes: self.bytes,
            gzip_key: None,
        })
    }

    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        let LocalWriter { inner, tmp, .. } = *self;
        if let Some(inner) = inner {
            // Another writer's unfinished file of the same key is left alone.
            let path = tmp.clone();
            let mine = tokio::task::spawn_blocking(move || same_file(&inner.file, &path))
                .await
                .map_err(|e| io(&tmp)(std::io::Error::other(e)))?
                .map_err(io(&tmp))?;
            if !mine {
                tracing::debug!(path = %tmp.display(), "unfinished file already gone or another writer's");
                return Ok(());
            }
        }
        match tokio::fs::remove_file(&tmp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&tmp)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the system's temporary directory, removed on drop.
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }
    fn dir() -> Dir {
        let d = std::env::temp_dir().join(format!("local-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Bytes that differ at every offset (a shifted or dropped block shows).
    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    /// Writes `len` bytes in `chunk`-byte writes through the store and reads them back.
    async fn round_trip(store: &LocalStore, len: usize, chunk: usize) -> Vec<u8> {
        let key = format!("job/f-{len}-{chunk}.ndjson");
        let mut w = store.writer(&key).await.unwrap();
        for part in data(len).chunks(chunk.max(1)) {
            w.write(part).await.unwrap();
        }
        let written = w.finish().await.unwrap();
        assert_eq!(written.bytes, len as u64);
        store.read(&key).await.unwrap()
    }

    /// Exporters stopped past their lease finish or discard a file of a key that the exporter
    /// that took their item is writing or has finished: they neither change nor publish nor
    /// delete its file; finishing is PartialGone (not an I/O error), discarding is no error
    /// (issue 28 item 15).
    #[tokio::test]
    async fn a_stale_writer_of_a_key_leaves_the_current_writers_file_alone() {
        let d = dir();
        let store = LocalStore::new(d.0.clone()).unwrap();
        let key = "job/Patient-1.ndjson";
        let mut stale_a = store.writer(key).await.unwrap();
        stale_a.write(b"{\"stale\":\"a\"}\n").await.unwrap();
        let mut stale_b = store.writer(key).await.unwrap();
        stale_b.write(b"{\"stale\":\"b\"}\n").await.unwrap();
        let mut fresh = store.writer(key).await.unwrap();
        fresh.write(b"{\"fresh\":1}\n").await.unwrap();
        stale_a.abort().await.unwrap();
        fresh.finish().await.unwrap();
        match stale_b.finish().await {
            Err(StorageError::PartialGone { key: k }) => assert_eq!(k, key),
            other => panic!("expected PartialGone, got {other:?}"),
        }
        assert_eq!(store.read(key).await.unwrap(), b"{\"fresh\":1}\n");
        // The job's files deleted under a writer: finishing is PartialGone, discarding is fine.
        let mut gone = store.writer("job/Patient-2.ndjson").await.unwrap();
        gone.write(b"{}\n").await.unwrap();
        let discarded = store.writer("job/Patient-3.ndjson").await.unwrap();
        store.delete_prefix("job").await.unwrap();
        assert!(matches!(
            gone.finish().await,
            Err(StorageError::PartialGone { .. })
        ));
        discarded.abort().await.unwrap();
    }

    const SIZES: [usize; 9] = [
        0,
        1,
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
        DIRECT_CHUNK - 1,
        DIRECT_CHUNK,
        DIRECT_CHUNK + BLOCK + 7,
        2 * DIRECT_CHUNK + 3,
    ];

    #[tokio::test]
    async fn files_hold_exactly_what_was_written_at_every_block_boundary() {
        let d = dir();
        let store = LocalStore::new(d.0.clone()).unwrap();
        for len in SIZES {
            for chunk in [1000, BLOCK, 3 * BLOCK + 5, DIRECT_CHUNK + 1] {
                assert!(
                    round_trip(&store, len, chunk).await == data(len),
                    "{len} bytes in writes of {chunk}"
                );
            }
        }
    }

    #[test]
    fn the_buffered_fallback_writes_the_same_bytes() {
        // What a file system without O_DIRECT (tmpfs) gets: the same flushes, buffered.
        let d = dir();
        for len in SIZES {
            let path = d.0.join(format!("f-{len}"));
            let mut inner = Inner {
                file: std::fs::File::create(&path).unwrap(),
                direct: false,
                buf: AlignedBuf::new(DIRECT_CHUNK),
            };
            let mut rest: &[u8] = &data(len);
            while !rest.is_empty() {
                let n = inner.buf.push(rest);
                rest = &rest[n..];
                if inner.buf.len == inner.buf.capacity() {
                    inner.flush(false, &path).unwrap();
                }
            }
            inner.flush(true, &path).unwrap();
            drop(inner);
            assert!(std::fs::read(&path).unwrap() == data(len), "{len} bytes");
        }
    }

    #[test]
    fn the_buffer_starts_on_a_block_boundary() {
        let b = AlignedBuf::new(DIRECT_CHUNK);
        assert_eq!(b.filled().as_ptr() as usize % BLOCK, 0);
        assert_eq!(b.capacity(), DIRECT_CHUNK);
    }
}
