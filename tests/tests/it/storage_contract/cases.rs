//! The cases every store passes.

use super::*;

pub(super) async fn round_trips_a_multipart_object(s: &Subject) {
    let key = format!("{}/Observation-1.ndjson", job());
    // More than two parts' worth, in chunks that do not line up with part boundaries.
    let data = ndjson(2 * PART_SIZE + 4321);
    let written = write_object(&*s.store, &key, &data, 1024 * 1024 + 7).await;
    assert_eq!(
        written.bytes,
        data.len() as u64,
        "finish() returns the object size"
    );

    assert_same_bytes(&s.store.read(&key).await.expect("read"), &data, "read");
    let download = s.store.download(&key, TTL).await.expect("download");
    assert_same_bytes(&s.fetch(download).await, &data, "download");
    if let Some(parts) = s.stored_parts(&key).await {
        assert!(
            parts >= 3,
            "uploaded in {parts} part(s), expected a multipart upload"
        );
    }
    if let Some(size) = s.check_gzip_copy(&key, &written, &data).await {
        assert!(
            size * 5 < data.len(),
            "ndjson compresses: {size} of {}",
            data.len()
        );
    }
    assert!(s.unfinished_writes().await.is_empty());
}

pub(super) async fn round_trips_a_small_object(s: &Subject) {
    let key = format!("{}/Patient-1.ndjson", job());
    let data = ndjson(300 * 1024 + 5);
    let written = write_object(&*s.store, &key, &data, 64 * 1024).await;
    assert_eq!(
        written.bytes,
        data.len() as u64,
        "finish() returns the object size"
    );
    s.check_gzip_copy(&key, &written, &data).await;

    assert_same_bytes(&s.store.read(&key).await.expect("read"), &data, "read");
    let download = s.store.download(&key, TTL).await.expect("download");
    assert_same_bytes(&s.fetch(download).await, &data, "download");
    if let Some(parts) = s.stored_parts(&key).await {
        assert_eq!(parts, 1, "a small object is a single PutObject");
    }
}

pub(super) async fn hides_an_object_until_it_is_finished(s: &Subject) {
    let key = format!("{}/Condition-1.ndjson", job());
    let data = ndjson(PART_SIZE + 10);
    let mut writer = s.store.writer(&key).await.expect("writer");
    // Enough for one uploaded part: the object must still not exist.
    writer.write(&data).await.expect("write");
    assert_not_found(s.store.read(&key).await, "read before finish");
    assert_not_found(
        s.store.read(&format!("{key}.gz")).await,
        "gzip copy before finish",
    );

    let written = writer.finish().await.expect("finish");
    assert_eq!(written.bytes, data.len() as u64);
    assert_same_bytes(&s.store.read(&key).await.expect("read"), &data, "read");
    s.check_gzip_copy(&key, &written, &data).await;
}

pub(super) async fn discards_an_aborted_object(s: &Subject) {
    let job = job();
    for (name, len) in [("big", PART_SIZE + 10), ("small", 1000)] {
        let key = format!("{job}/{name}.ndjson");
        let mut writer = s.store.writer(&key).await.expect("writer");
        writer.write(&ndjson(len)).await.expect("write");
        assert_not_found(s.store.read(&key).await, "read before abort");
        writer.abort().await.expect("abort");
        assert_not_found(s.store.read(&key).await, "read after abort");
        assert_not_found(
            s.store.read(&format!("{key}.gz")).await,
            "gzip copy after abort",
        );
    }
    let left = s.unfinished_writes().await;
    assert!(left.is_empty(), "aborted writes left {left:?}");
}

pub(super) async fn deletes_every_object_under_a_prefix_and_nothing_else(s: &Subject) {
    let other = job();
    let job = job();
    let sibling = format!("{job}x"); // shares the string prefix, not the directory
    let keys = [
        format!("{job}/Patient-1.ndjson"),
        format!("{job}/Patient-2.ndjson"),
        format!("{job}/Observation-1.ndjson"),
    ];
    let kept = [
        format!("{sibling}/Patient-1.ndjson"),
        format!("{other}/Patient-1.ndjson"),
    ];
    for key in keys.iter().chain(&kept) {
        write_object(&*s.store, key, key.as_bytes(), 1024).await;
    }

    let download = s.store.download(&keys[0], TTL).await.expect("download");
    // Objects stored: each file, plus its gzip copy where the store keeps one.
    let per_file = if s.gzip_copies { 2 } else { 1 };
    assert_eq!(
        s.store.delete_prefix(&job).await.expect("delete"),
        3 * per_file
    );
    for key in &keys {
        assert_not_found(s.store.read(key).await, key);
        assert_not_found(s.store.read(&format!("{key}.gz")).await, key);
    }
    for key in &kept {
        assert_eq!(
            s.store.read(key).await.expect("kept object"),
            key.as_bytes()
        );
    }
    // What was handed out before serves nothing now.
    match download {
        Download::Redirect(url) => {
            let resp = http_client().get(&url).send().await.expect("GET");
            assert_eq!(resp.status(), 404, "presigned URL of a deleted object");
        }
        Download::File(path) => assert!(!path.exists(), "{path:?} deleted"),
    }
    assert_eq!(
        s.store.delete_prefix(&job).await.expect("delete again"),
        0,
        "nothing left to delete"
    );
    assert_eq!(
        s.store
            .delete_prefix(&format!("{other}/"))
            .await
            .expect("delete"),
        per_file
    );
    assert_not_found(s.store.read(&kept[1]).await, &kept[1]);
}

/// Two exporters purging one deleted job at once: both succeed (what one deletes, the other
/// does not miss), and nothing is left (issue 28 item 15).
pub(super) async fn two_deletes_of_one_prefix_at_once_both_succeed(s: &Subject) {
    let per_file = if s.gzip_copies { 2 } else { 1 };
    for round in 0..3 {
        let job = job();
        let keys: Vec<String> = (0..40)
            .map(|i| format!("{job}/Patient-{i}.ndjson"))
            .collect();
        for key in &keys {
            write_object(&*s.store, key, key.as_bytes(), 1024).await;
        }
        let (a, b) = tokio::join!(s.store.delete_prefix(&job), s.store.delete_prefix(&job));
        let (a, b) = (
            a.unwrap_or_else(|e| panic!("round {round}: first delete: {e}")),
            b.unwrap_or_else(|e| panic!("round {round}: second delete: {e}")),
        );
        let all = keys.len() as u64 * per_file;
        assert!(a <= all && b <= all && a + b >= all, "{a} + {b} of {all}");
        for key in &keys {
            assert_not_found(s.store.read(key).await, key);
        }
        assert_eq!(s.store.delete_prefix(&job).await.expect("again"), 0);
    }
}

pub(super) async fn refuses_keys_that_could_escape_the_prefix(s: &Subject) {
    for key in ["../x", "/abs", "a//b", "a/../../b", ""] {
        assert_invalid_key(s.store.writer(key).await, key, "writer");
        assert_invalid_key(s.store.read(key).await, key, "read");
        assert_invalid_key(s.store.download(key, TTL).await, key, "download");
        assert_invalid_key(s.store.delete_prefix(key).await, key, "delete_prefix");
    }
}

/// A prefix may end in '/' (`delete_prefix("<job>/")`), an object key may not: on S3 it would
/// create a directory-marker object, which a directory cannot hold.
pub(super) async fn refuses_an_object_key_that_names_a_directory(s: &Subject) {
    let key = format!("{}/", job());
    assert_invalid_key(s.store.writer(&key).await, &key, "writer");
    assert_invalid_key(s.store.read(&key).await, &key, "read");
    assert_invalid_key(s.store.download(&key, TTL).await, &key, "download");
}
