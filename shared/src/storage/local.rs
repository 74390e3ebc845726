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
        let file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        Ok(Box::new(LocalWriter {
            file: Some(file.into_std().await),
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

/// Writes go to the file from a blocking thread, one call per buffer the exporter hands over
/// (a page of ~4 MiB): one copy of the data, not three (a buffered async file copies into its
/// own buffers before its blocking thread writes).
struct LocalWriter {
    /// None only while a write is under way (or after one failed).
    file: Option<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    bytes: u64,
}

impl LocalWriter {
    async fn blocking<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut std::fs::File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        let Some(mut file) = self.file.take() else {
            return Err(io(&self.tmp)(std::io::Error::other(
                "an earlier write to this file failed",
            )));
        };
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = op(&mut file);
            (file, result)
        })
        .await
        .map_err(|e| io(&self.tmp)(std::io::Error::other(e)))?;
        let value = result.map_err(io(&self.tmp))?;
        self.file = Some(file);
        Ok(value)
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        use std::io::Write;
        let buf = data.to_vec();
        self.blocking(move |f| f.write_all(&buf)).await?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// No gzip copy: the file route compresses local files on the way out.
    async fn finish(mut self: Box<Self>) -> Result<Written, StorageError> {
        self.blocking(|f| f.sync_all()).await?;
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
