//! A directory as object storage: files appear under their final name only when finished.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

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
        let file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        Ok(Box::new(LocalWriter {
            file: tokio::io::BufWriter::with_capacity(256 * 1024, file),
            tmp,
            path,
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
        while let Some(entry) = entries.next_entry().await.map_err(io(&dir))? {
            let p = entry.path();
            tokio::fs::remove_file(&p).await.map_err(io(&p))?;
            count += 1;
        }
        tokio::fs::remove_dir(&dir).await.map_err(io(&dir))?;
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

struct LocalWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    bytes: u64,
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.file.write_all(data).await.map_err(io(&self.tmp))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// No gzip copy: the file route compresses local files on the way out.
    async fn finish(mut self: Box<Self>) -> Result<Written, StorageError> {
        self.file.flush().await.map_err(io(&self.tmp))?;
        self.file
            .get_ref()
            .sync_all()
            .await
            .map_err(io(&self.tmp))?;
        tokio::fs::rename(&self.tmp, &self.path)
            .await
            .map_err(io(&self.path))?;
        Ok(Written {
            bytes: self.bytes,
            gzip_key: None,
        })
    }

    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        let LocalWriter { file, tmp, .. } = *self;
        drop(file);
        match tokio::fs::remove_file(&tmp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&tmp)(e)),
        }
    }
}
