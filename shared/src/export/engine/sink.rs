//! One output file of a job: opened, written, then finished (visible, with its manifest row) or
//! aborted (nothing left behind). Every file the exporter writes goes through here.

use uuid::Uuid;

use super::planner::object_key;
use super::Failure;
use crate::export::manifest::{ExportFile, FileKind};
use crate::storage::{ObjectStore, ObjectWriter};

pub struct FileSink {
    writer: Box<dyn ObjectWriter>,
    file_name: String,
    key: String,
    kind: FileKind,
    resource_type: String,
    /// Lines (resources) written.
    pub count: i64,
    /// Bytes written.
    pub bytes: u64,
}

impl FileSink {
    pub async fn open(
        store: &dyn ObjectStore,
        job_id: Uuid,
        file_name: String,
        kind: FileKind,
        resource_type: &str,
    ) -> Result<FileSink, Failure> {
        let key = object_key(job_id, &file_name);
        let writer = store.writer(&key).await?;
        Ok(FileSink {
            writer,
            file_name,
            key,
            kind,
            resource_type: resource_type.to_string(),
            count: 0,
            bytes: 0,
        })
    }

    /// Appends `data`, which holds `lines` ndjson lines.
    pub async fn write(&mut self, data: &[u8], lines: i64) -> Result<(), Failure> {
        if !data.is_empty() {
            self.writer.write(data).await?;
        }
        self.bytes += data.len() as u64;
        self.count += lines;
        Ok(())
    }

    /// Appends one ndjson line: `line` and its newline.
    pub async fn write_line(&mut self, line: &[u8]) -> Result<(), Failure> {
        self.write(line, 0).await?;
        self.write(b"\n", 1).await
    }

    /// Makes the file visible; returns its manifest row (recorded by the caller's checkpoint).
    pub async fn finish(self) -> Result<ExportFile, Failure> {
        let written = self.writer.finish().await?;
        if self.kind == FileKind::Output {
            crate::metrics::file_written(self.count as u64, written.bytes);
        }
        tracing::info!(file = %self.file_name, resources = self.count, bytes = written.bytes, "file written");
        Ok(ExportFile {
            file_name: self.file_name,
            kind: self.kind,
            resource_type: self.resource_type,
            object_key: self.key,
            gzip_object_key: written.gzip_key,
            resource_count: self.count,
            byte_count: written.bytes as i64,
        })
    }

    /// Finishes a file that holds lines; aborts an empty one (no empty files in a manifest).
    pub async fn finish_if_any(self) -> Result<Option<ExportFile>, Failure> {
        if self.count > 0 {
            self.finish().await.map(Some)
        } else {
            self.writer.abort().await?;
            Ok(None)
        }
    }

    /// Discards the file.
    pub async fn abort(self) {
        if let Err(e) = self.writer.abort().await {
            tracing::warn!(error = %e, file = %self.file_name, "abort of an unfinished file failed");
        }
    }

    /// Discards the file and passes `failure` on.
    pub async fn abandon(self, failure: Failure) -> Failure {
        self.abort().await;
        failure
    }
}

/// Discards an open file, if any, and passes `failure` on.
pub async fn abandon(file: Option<FileSink>, failure: Failure) -> Failure {
    match file {
        Some(f) => f.abandon(failure).await,
        None => failure,
    }
}
