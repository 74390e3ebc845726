//! S3 adapter (aws-sdk-s3): multipart uploads with fixed-size parts, a gzip copy of every
//! object, presigned downloads.
//!
//! The endpoint comes from the standard AWS variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, …), so
//! AWS, LocalStack and moto work unchanged. Path-style addressing is used when an endpoint is
//! configured (emulators) or `S3_FORCE_PATH_STYLE=true`.

use std::io::Write;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::aws::S3Timeouts;

use super::{
    compressible, content_type_of, validate_key, Download, ObjectStore, ObjectWriter, StorageError,
    Written,
};

/// S3 requires parts of at least 5 MiB (except the last); 8 MiB keeps the part count of a
/// 256 MiB file at 32 while one writer holds at most one part in memory.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// How much of a write is buffered and compressed at a time.
const WRITE_CHUNK: usize = 1 << 20;

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    gzip_copies: bool,
    /// Per-request timeouts sized for each body ([`S3Store::with_timeouts`]); none: the client's.
    timeouts: Option<S3Timeouts>,
}

fn s3_err(
    operation: &'static str,
    key: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> StorageError {
    StorageError::S3 {
        operation,
        key: key.to_string(),
        source: Box::new(err),
        unavailable: false,
    }
}

/// The error of an S3 call; `unavailable` when S3 timed out, could not be reached or answered
/// with a server error (after the SDK's own retries).
fn sdk_err<E>(operation: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StorageError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let unavailable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => e.raw().status().is_server_error(),
        _ => false,
    };
    StorageError::S3 {
        operation,
        key: key.to_string(),
        source: Box::new(err),
        unavailable,
    }
}

/// An S3 client from the standard AWS variables (region, credentials, `AWS_ENDPOINT_URL`),
/// path-style when the configuration says so, with the timeouts of a request without a body
/// (a part upload gets more: [`S3Timeouts::attempt`]).
pub async fn client(settings: crate::config::S3Settings) -> Client {
    let shared = crate::aws::shared_config().await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(settings.force_path_style)
        .timeout_config(settings.timeouts.config(0))
        .build();
    Client::from_conf(conf)
}

impl S3Store {
    /// The store of `bucket`/`prefix` with the configured client and gzip copies.
    pub async fn from_settings(
        bucket: String,
        prefix: String,
        settings: crate::config::S3Settings,
    ) -> Self {
        Self::new(client(settings).await, bucket, prefix)
            .with_gzip_copies(settings.gzip_copies)
            .with_timeouts(settings.timeouts)
    }

    pub fn new(client: Client, bucket: String, prefix: String) -> Self {
        S3Store {
            client,
            bucket,
            prefix: prefix.trim_matches('/').to_string(),
            gzip_copies: true,
            timeouts: None,
        }
    }

    /// Gives each upload the timeouts its size needs, and [`ObjectStore::call_deadline`].
    pub fn with_timeouts(mut self, timeouts: S3Timeouts) -> Self {
        self.timeouts = Some(timeouts);
        self
    }

    /// The client's configuration for a request with a body of `body_bytes`.
    fn sized(&self, body_bytes: usize) -> aws_sdk_s3::config::Builder {
        let mut conf = aws_sdk_s3::config::Builder::default();
        if let Some(t) = self.timeouts {
            conf = conf.timeout_config(t.config(body_bytes));
        }
        conf
    }

    /// Whether each object gets a gzip copy beside it (default: yes).
    pub fn with_gzip_copies(mut self, on: bool) -> Self {
        self.gzip_copies = on;
        self
    }

    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        })
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let gzip_key = format!("{key}{GZIP_SUFFIX}");
        let content_type = content_type_of(key);
        let plain = Upload::new(self.clone(), self.full_key(key)?, content_type, None);
        let gzip = if self.gzip_copies && compressible(key) {
            let upload = Upload::new(
                self.clone(),
                self.full_key(&gzip_key)?,
                content_type,
                Some("gzip"),
            );
            Some((GzEncoder::new(Vec::new(), Compression::fast()), upload))
        } else {
            None
        };
        Ok(Box::new(S3Writer {
            plain,
            gzip,
            gzip_key,
            bytes: 0,
        }))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let full = format!("{}/", self.full_key(prefix.trim_end_matches('/'))?);
        let mut deleted = 0u64;
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| sdk_err("ListObjectsV2", &full, e))?;
            let ids: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if !ids.is_empty() {
                let n = ids.len() as u64;
                let delete = Delete::builder()
                    .set_objects(Some(ids))
                    .quiet(true)
                    .build()
                    .map_err(|e| s3_err("DeleteObjects", &full, e))?;
                self.client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| sdk_err("DeleteObjects", &full, e))?;
                deleted += n;
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(deleted)
    }

    async fn download(&self, key: &str, ttl: Duration) -> Result<Download, StorageError> {
        let full = self.full_key(key)?;
        let config = PresigningConfig::expires_in(ttl).map_err(|e| s3_err("Presign", &full, e))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .presigned(config)
            .await
            .map_err(|e| s3_err("Presign", &full, e))?;
        Ok(Download::Redirect(req.uri().to_string()))
    }

    /// A writer's call may run, at most: the object's and its copy's part uploads and the two
    /// small requests around each.
    fn call_deadline(&self) -> Option<Duration> {
        self.timeouts
            .map(|t| t.operation(PART_SIZE) * 2 + t.operation(0) * 2)
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    StorageError::NotFound {
                        key: key.to_string(),
                    }
                } else {
                    sdk_err("GetObject", &full, e)
                }
            })?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| s3_err("GetObject", &full, e))?;
        Ok(data.into_bytes().to_vec())
    }
}

/// Suffix of the gzip copy stored beside every object.
pub const GZIP_SUFFIX: &str = ".gz";

/// Writes one object and, beside it, a gzip-compressed copy (`<key>.gz`, stored with
/// `Content-Encoding: gzip`): S3 cannot compress on the way out, and a presigned download goes
/// straight to S3, so clients that accept gzip are redirected to the copy. FHIR ndjson shrinks
/// about tenfold, so the copy costs a tenth of the storage and one fast deflate pass.
struct S3Writer {
    plain: Upload,
    gzip: Option<(GzEncoder<Vec<u8>>, Upload)>,
    gzip_key: String,
    bytes: u64,
}

/// One object being uploaded: a single PutObject if it stays under [`PART_SIZE`], else a
/// multipart upload with parts of [`PART_SIZE`].
struct Upload {
    store: S3Store,
    key: String,
    content_encoding: Option<&'static str>,
    content_type: &'static str,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
}

impl Upload {
    fn new(
        store: S3Store,
        key: String,
        content_type: &'static str,
        content_encoding: Option<&'static str>,
    ) -> Self {
        Upload {
            store,
            key,
            content_encoding,
            content_type,
            buffer: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
        }
    }

    async fn push(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= PART_SIZE {
            self.upload_part().await?;
        }
        Ok(())
    }

    async fn upload_part(&mut self) -> Result<(), StorageError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = self
                    .store
                    .client
                    .create_multipart_upload()
                    .bucket(&self.store.bucket)
                    .key(&self.key)
                    .content_type(self.content_type)
                    .set_content_encoding(self.content_encoding.map(str::to_string))
                    .send()
                    .await
                    .map_err(|e| sdk_err("CreateMultipartUpload", &self.key, e))?;
                let id = created.upload_id().unwrap_or_default().to_string();
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let body = std::mem::take(&mut self.buffer);
        let sized = self.store.sized(body.len());
        let out = self
            .store
            .client
            .upload_part()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .customize()
            .config_override(sized)
            .send()
            .await
            .map_err(|e| sdk_err("UploadPart", &self.key, e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }

    async fn complete(&mut self) -> Result<(), StorageError> {
        if self.upload_id.is_none() {
            let body = std::mem::take(&mut self.buffer);
            let sized = self.store.sized(body.len());
            self.store
                .client
                .put_object()
                .bucket(&self.store.bucket)
                .key(&self.key)
                .content_type(self.content_type)
                .set_content_encoding(self.content_encoding.map(str::to_string))
                .body(ByteStream::from(body))
                .customize()
                .config_override(sized)
                .send()
                .await
                .map_err(|e| sdk_err("PutObject", &self.key, e))?;
            return Ok(());
        }
        if !self.buffer.is_empty() {
            self.upload_part().await?;
        }
        let upload_id = self.upload_id.clone().unwrap_or_default();
        let parts = std::mem::take(&mut self.parts);
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_err("CompleteMultipartUpload", &self.key, e))?;
        self.upload_id = None;
        Ok(())
    }

    async fn abort(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            if let Err(e) = self
                .store
                .client
                .abort_multipart_upload()
                .bucket(&self.store.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                tracing::warn!(key = %self.key, error = %e, "abort multipart upload failed; the bucket lifecycle rule will remove it");
            }
        }
        self.buffer = Vec::new();
    }

    /// Deletes the finished object (undoes [`Upload::complete`]).
    async fn delete(&self) {
        if let Err(e) = self
            .store
            .client
            .delete_object()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .send()
            .await
        {
            tracing::warn!(key = %self.key, error = %e, "could not delete an unfinished export object; job cleanup removes it");
        }
    }
}

impl S3Writer {
    /// Writes `data` a MiB at a time, so that a large write (a resource of tens of MB) is
    /// held in the parts' buffers and the gzip output only up to a part at a time.
    async fn write_all(&mut self, data: &[u8]) -> Result<(), StorageError> {
        for piece in data.chunks(WRITE_CHUNK) {
            self.plain.push(piece).await?;
            if let Some((encoder, upload)) = &mut self.gzip {
                encoder
                    .write_all(piece)
                    .map_err(|e| s3_err("gzip", &upload.key, e))?;
                let compressed = std::mem::take(encoder.get_mut());
                upload.push(&compressed).await?;
            }
        }
        Ok(())
    }

    async fn finish_all(&mut self) -> Result<(), StorageError> {
        if let Some((encoder, mut upload)) = self.gzip.take() {
            let rest = encoder
                .finish()
                .map_err(|e| s3_err("gzip", &upload.key, e))?;
            let result = match upload.push(&rest).await {
                Ok(()) => upload.complete().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                upload.abort().await;
                return Err(e);
            }
            if let Err(e) = self.plain.complete().await {
                upload.delete().await;
                return Err(e);
            }
            return Ok(());
        }
        self.plain.complete().await
    }

    async fn abort_all(&mut self) {
        self.plain.abort().await;
        if let Some((_, mut upload)) = self.gzip.take() {
            upload.abort().await;
        }
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.bytes += data.len() as u64;
        if let Err(e) = self.write_all(data).await {
            self.abort_all().await;
            return Err(e);
        }
        Ok(())
    }

    /// The copy is completed first, so a finished plain object always has its copy.
    async fn finish(mut self: Box<Self>) -> Result<Written, StorageError> {
        let has_copy = self.gzip.is_some();
        if let Err(e) = self.finish_all().await {
            self.abort_all().await;
            return Err(e);
        }
        Ok(Written {
            bytes: self.bytes,
            gzip_key: has_copy.then(|| self.gzip_key.clone()),
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.abort_all().await;
        Ok(())
    }
}
