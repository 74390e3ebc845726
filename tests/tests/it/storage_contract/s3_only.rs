//! What only the S3 store does: gzip copies in parts, and none when turned off.

use super::*;

#[tokio::test]
async fn s3_store_uploads_a_large_gzip_copy_in_parts() {
    let s = s3_store().await;
    let key = format!("{}/Binary-1.ndjson", job());
    // Incompressible: the copy is as large as the object, so it is a multipart upload too.
    let data = incompressible(2 * PART_SIZE + 99);
    let written = write_object(&*s.store, &key, &data, 3 * 1024 * 1024 + 1).await;
    assert_eq!(written.bytes, data.len() as u64);
    let size = s
        .check_gzip_copy(&key, &written, &data)
        .await
        .expect("a copy");
    assert!(
        size >= data.len(),
        "incompressible: {size} of {}",
        data.len()
    );
    let copy_parts = s
        .stored_parts(&format!("{key}.gz"))
        .await
        .expect("S3 part count");
    assert!(
        copy_parts >= 2,
        "gzip copy uploaded in {copy_parts} part(s), expected a multipart upload"
    );
    assert!(s.unfinished_writes().await.is_empty());
}

#[tokio::test]
async fn s3_store_without_gzip_copies_writes_the_object_alone() {
    let (client, bucket) = new_bucket().await;
    let store =
        S3Store::new(s3_client().await, bucket.clone(), S3_PREFIX.into()).with_gzip_copies(false);
    let s = Subject {
        store: Arc::new(store),
        backing: Backing::S3 {
            client,
            bucket,
            lists_uploads: true,
        },
        gzip_copies: false,
    };
    let key = format!("{}/Patient-1.ndjson", job());
    let data = ndjson(PART_SIZE + 5);
    let written = write_object(&*s.store, &key, &data, 1024 * 1024).await;
    assert_eq!(written.gzip_key, None);
    assert_same_bytes(&s.store.read(&key).await.expect("read"), &data, "read");
    assert_not_found(s.store.read(&format!("{key}.gz")).await, "no gzip copy");
}
