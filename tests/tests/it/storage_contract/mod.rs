//! Contract of the object storage port (`shared::storage::ObjectStore`): one suite, run against
//! every adapter and endpoint — `LocalStore` over a temp directory, `S3Store` against the S3
//! emulator that `scripts/test.sh` starts (moto, `TEST_AWS_ENDPOINT_URL`), and `S3Store` against
//! s3s-fs, an S3 server that checks request signatures (`TEST_S3S_ENDPOINT_URL`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{http_client, new_bucket, s3_client, temp_dir};
use shared::storage::local::LocalStore;
use shared::storage::s3::{S3Store, PART_SIZE};
use shared::storage::{Download, ObjectStore, StorageError, Written, NDJSON_CONTENT_TYPE};

const S3_PREFIX: &str = "exports";
const TTL: Duration = Duration::from_secs(300);

/// A store under test plus what is needed to look behind it.
struct Subject {
    store: Arc<dyn ObjectStore>,
    backing: Backing,
    /// Whether the store keeps a gzip copy of each object (S3) or compresses while serving.
    gzip_copies: bool,
}

enum Backing {
    Local {
        root: PathBuf,
    },
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        /// Whether the endpoint lists in-progress multipart uploads (s3s-fs 0.14 does not
        /// implement ListMultipartUploads: there, only the objects are checked).
        lists_uploads: bool,
    },
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Backing::Local { root } = &self.backing {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

async fn local_store() -> Subject {
    let root = temp_dir();
    let store = LocalStore::new(root.clone()).expect("local store");
    // LocalStore canonicalizes its root; do the same so paths compare equal.
    let root = root.canonicalize().expect("canonical temp dir");
    Subject {
        store: Arc::new(store),
        backing: Backing::Local { root },
        gzip_copies: false,
    }
}

async fn s3_store() -> Subject {
    let (client, bucket) = new_bucket().await;
    let store = S3Store::new(s3_client().await, bucket.clone(), S3_PREFIX.into());
    Subject {
        store: Arc::new(store),
        backing: Backing::S3 {
            client,
            bucket,
            lists_uploads: true,
        },
        gzip_copies: true,
    }
}

async fn s3s_store() -> Subject {
    let (client, bucket) = integration_tests::new_s3s_bucket().await;
    let store = S3Store::new(client.clone(), bucket.clone(), S3_PREFIX.into());
    Subject {
        store: Arc::new(store),
        backing: Backing::S3 {
            client,
            bucket,
            lists_uploads: false,
        },
        gzip_copies: true,
    }
}

impl Subject {
    /// Fetches a download the way a client would: a local adapter hands out a file inside its
    /// root; S3 a presigned URL that works with no credentials and serves ndjson.
    async fn fetch(&self, download: Download) -> Vec<u8> {
        match (&self.backing, download) {
            (Backing::Local { root }, Download::File(path)) => {
                assert!(path.starts_with(root), "{path:?} is outside {root:?}");
                tokio::fs::read(&path).await.expect("read downloaded file")
            }
            (Backing::S3 { .. }, Download::Redirect(url)) => {
                let resp = http_client()
                    .get(&url)
                    .send()
                    .await
                    .expect("GET presigned URL");
                assert_eq!(resp.status(), 200, "GET {url}");
                let content_type = resp
                    .headers()
                    .get("content-type")
                    .expect("content-type header")
                    .to_str()
                    .expect("ascii content-type")
                    .to_string();
                assert_eq!(content_type, NDJSON_CONTENT_TYPE);
                resp.bytes().await.expect("body").to_vec()
            }
            (_, other) => panic!("unexpected kind of download for this adapter: {other:?}"),
        }
    }

    /// Number of parts the stored object was uploaded in, where the adapter has parts
    /// (S3: from the multipart ETag `"<md5>-<parts>"`). Also checks the configured prefix and
    /// the stored content type.
    async fn stored_parts(&self, key: &str) -> Option<usize> {
        let Backing::S3 { client, bucket, .. } = &self.backing else {
            return None;
        };
        let head = client
            .head_object()
            .bucket(bucket)
            .key(format!("{S3_PREFIX}/{key}"))
            .send()
            .await
            .expect("object is stored under the configured prefix");
        assert_eq!(head.content_type(), Some(NDJSON_CONTENT_TYPE));
        let etag = head.e_tag().expect("etag").trim_matches('"');
        Some(match etag.rsplit_once('-') {
            Some((_, parts)) => parts.parse().expect("part count in multipart etag"),
            None => 1,
        })
    }

    /// The object's gzip copy, if the store keeps one: it is named in `written`, decompresses to
    /// `data`, and (S3) is stored as ndjson with `Content-Encoding: gzip` so that a client's HTTP
    /// library inflates it. Returns the compressed size.
    async fn check_gzip_copy(&self, key: &str, written: &Written, data: &[u8]) -> Option<usize> {
        let Some(copy) = &written.gzip_key else {
            assert!(
                !self.gzip_copies,
                "{key}: the store keeps gzip copies, none named"
            );
            return None;
        };
        assert!(self.gzip_copies, "{key}: unexpected gzip copy {copy}");
        assert_eq!(
            copy,
            &format!("{key}.gz"),
            "the copy sits beside the object"
        );
        let compressed = self.store.read(copy).await.expect("read gzip copy");
        assert_same_bytes(&gunzip(&compressed), data, "gzip copy, decompressed");
        if let Backing::S3 { client, bucket, .. } = &self.backing {
            let head = client
                .head_object()
                .bucket(bucket)
                .key(format!("{S3_PREFIX}/{copy}"))
                .send()
                .await
                .expect("gzip copy is stored under the configured prefix");
            assert_eq!(head.content_type(), Some(NDJSON_CONTENT_TYPE));
            assert_eq!(head.content_encoding(), Some("gzip"));
        }
        Some(compressed.len())
    }

    /// Traces of unfinished writes: `.partial` files (local) or in-progress multipart uploads.
    async fn unfinished_writes(&self) -> Vec<String> {
        match &self.backing {
            Backing::Local { root } => {
                let mut found = Vec::new();
                collect_files(root, &mut found);
                found
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "partial"))
                    .map(|p| p.display().to_string())
                    .collect()
            }
            Backing::S3 {
                lists_uploads: false,
                ..
            } => Vec::new(),
            Backing::S3 { client, bucket, .. } => client
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .expect("list multipart uploads")
                .uploads()
                .iter()
                .filter_map(|u| u.key().map(str::to_string))
                .collect(),
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// `len` bytes of ndjson-looking text whose lines are numbered, so a lost, repeated or
/// reordered chunk changes the bytes.
fn ndjson(len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while data.len() < len {
        data.extend_from_slice(
            format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n").as_bytes(),
        );
        i += 1;
    }
    data.truncate(len);
    data
}

fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let first_diff = actual
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(actual.len().min(expected.len()));
        panic!(
            "{what}: {} bytes read back, {} written; first difference at byte {first_diff}",
            actual.len(),
            expected.len()
        );
    }
}

fn job() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

/// `len` bytes that deflate cannot shrink (xorshift output), so that a gzip copy is as large as
/// the object and needs a multipart upload of its own.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

async fn write_object(store: &dyn ObjectStore, key: &str, data: &[u8], chunk: usize) -> Written {
    let mut writer = store.writer(key).await.expect("writer");
    for piece in data.chunks(chunk) {
        writer.write(piece).await.expect("write");
    }
    writer.finish().await.expect("finish")
}

fn assert_not_found<T>(result: Result<T, StorageError>, what: &str) {
    match result {
        Err(StorageError::NotFound { .. }) => {}
        Err(other) => panic!("{what}: expected NotFound, got {other}"),
        Ok(_) => panic!("{what}: expected NotFound, got an object"),
    }
}

fn assert_invalid_key<T>(result: Result<T, StorageError>, key: &str, op: &str) {
    match result {
        Err(StorageError::InvalidKey { key: refused }) => {
            assert_eq!(refused, key, "{op} reports the refused key")
        }
        Err(other) => panic!("{op}({key:?}): expected InvalidKey, got {other}"),
        Ok(_) => panic!("{op}({key:?}) was accepted"),
    }
}

// ---- the suite ------------------------------------------------------------------------------

/// The suite's cases as tests of one subject: `mod <subject> { #[tokio::test] <case> … }`.
macro_rules! contract {
    ($subject:ident) => {
        mod $subject {
            contract!(@cases $subject:
                round_trips_a_multipart_object,
                round_trips_a_small_object,
                hides_an_object_until_it_is_finished,
                discards_an_aborted_object,
                deletes_every_object_under_a_prefix_and_nothing_else,
                two_deletes_of_one_prefix_at_once_both_succeed,
                refuses_keys_that_could_escape_the_prefix,
                refuses_an_object_key_that_names_a_directory,
            );
        }
    };
    (@cases $subject:ident: $($case:ident,)+) => {
        $(
            #[tokio::test]
            async fn $case() {
                super::$case(&super::$subject().await).await;
            }
        )+
    };
}

mod cases;
mod s3_only;

use cases::*;

contract!(local_store);
contract!(s3_store);
contract!(s3s_store);
