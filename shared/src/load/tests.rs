use super::parse::lines;
use super::read::{Chunk, Chunks};
use super::*;
use serde_json::json;

#[test]
fn prepare_rejects_what_cannot_be_stored() {
    let prep = |v: Value| prepare(v.to_string());
    assert!(prep(json!({"id": "x"})).is_err());
    assert!(prep(json!({"resourceType": "Nope", "id": "x"})).is_err());
    assert!(prep(json!({"resourceType": "Patient"})).is_err());
    assert!(prep(json!({"resourceType": "Patient", "id": "a/b"})).is_err());
    let r = prep(json!({"resourceType": "Patient", "id": "p"})).unwrap();
    assert_eq!(r.patients.iter().collect::<Vec<_>>(), vec!["p"]);
    let two_lines = "{\"resourceType\":\"Patient\",\n\"id\":\"p\"}";
    assert!(prepare(two_lines.into()).is_err());
    // A resourceType or id given twice: readers disagree on which counts.
    assert!(prepare(r#"{"resourceType":"Patient","id":"p","id":"q"}"#.into()).is_err());
}

#[test]
fn bundle_urn_uuid_references_become_relative() {
    let text = r#"{"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient"}},
        {"fullUrl": "urn:uuid:e1", "resource": {"resourceType": "Encounter", "id": "e1",
            "subject": {"reference": "urn:uuid:p1"},
            "length": {"value": 1.50}}},
        {"request": {"method": "DELETE", "url": "Patient/x"}}
    ]}"#;
    let out = bundle_resources(text, serde_json::from_str(text).unwrap()).unwrap();
    assert_eq!(out.len(), 3);
    let resource = |i: usize| match &out[i] {
        Ok(BundleEntry::Resource { text }) => (
            text.clone(),
            serde_json::from_str::<Value>(text).expect("stored text is JSON"),
        ),
        other => panic!("{other:?}"),
    };
    assert_eq!(resource(0).1["id"], "p1");
    assert_eq!(resource(0).0, r#"{"resourceType":"Patient","id":"p1"}"#);
    assert_eq!(resource(1).1["subject"]["reference"], "Patient/p1");
    // The stored text keeps the decimal as written, on one line.
    assert_eq!(
        resource(1).0,
        r#"{"resourceType":"Encounter","id":"e1","subject":{"reference":"Patient/p1"},"length":{"value":1.50}}"#
    );
    assert_eq!(
        out[2],
        Ok(BundleEntry::Delete {
            resource_type: "Patient".into(),
            id: "x".into()
        })
    );
    assert!(parse_type_id("Patient/../x").is_err());
}

/// Every line of `text` as [`Chunks`] of `size` bytes and [`lines`] give them.
async fn read_lines(text: &[u8], size: usize) -> Vec<Vec<u8>> {
    let path = std::env::temp_dir().join(format!("chunks-{}.ndjson", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    let mut chunks = Chunks::open(&path, size, usize::MAX).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next().await.unwrap() {
        match chunk {
            Chunk::Lines(chunk) => {
                assert!(
                    chunk.ends_with(b"\n") || !text.ends_with(b"\n"),
                    "only a file's last line may end a chunk without a newline"
                );
                out.extend(lines(&chunk).map(<[u8]>::to_vec));
                chunks.recycle(chunk);
            }
            Chunk::Long(mut line) => {
                assert!(
                    line.len() > size,
                    "a line of a chunk size or less is a Lines chunk"
                );
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                out.push(line);
            }
            Chunk::TooLong(len) => panic!("no limit, yet a line of {len} bytes was skipped"),
        }
    }
    std::fs::remove_file(&path).unwrap();
    out
}

#[tokio::test]
async fn chunks_give_every_line_once_whatever_the_chunk_size() {
    let long = "x".repeat(50);
    let text = format!("{{\"a\":1}}\n\n{long}\r\né\n{{\"b\":2}}\n");
    let mut text = text.into_bytes();
    // A byte that is not UTF-8 stays a line of its own (the loader rejects it by number).
    let bad = text.iter().position(|&b| b == 0xc3).unwrap();
    text.splice(bad..bad + 2, [0xff]);
    let expected: Vec<Vec<u8>> = text
        .strip_suffix(b"\n")
        .unwrap()
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(expected.len(), 5);
    for size in [1, 2, 3, 7, 16, 49, 50, 51, 64, 1 << 20] {
        assert_eq!(read_lines(&text, size).await, expected, "chunk size {size}");
        // Without the final newline: the same lines.
        assert_eq!(
            read_lines(&text[..text.len() - 1], size).await,
            expected,
            "chunk size {size}, no final newline"
        );
    }
    assert!(read_lines(b"", 4).await.is_empty());
    assert_eq!(read_lines(b"\n", 4).await, vec![Vec::<u8>::new()]);
}

#[tokio::test]
async fn chunks_parsed_at_once_come_back_in_the_files_order_with_their_line_numbers() {
    // Resources, empty lines (skipped, but counted), JSON that is not a resource and a line
    // that is not UTF-8, over 300 lines.
    let mut text = Vec::new();
    let mut expected = Vec::new();
    for n in 1..=300usize {
        match n % 7 {
            0 => text.push(b'\n'),
            3 => {
                text.extend_from_slice(b"{\"id\":\"no-type\"}\n");
                expected.push((n, None));
            }
            5 => {
                text.extend_from_slice(&[0xff, b'\n']);
                expected.push((n, None));
            }
            _ => {
                let id = format!("p{n}");
                text.extend_from_slice(
                    format!("{{\"resourceType\":\"Patient\",\"id\":\"{id}\"}}\n").as_bytes(),
                );
                expected.push((n, Some(id)));
            }
        }
    }
    let path = std::env::temp_dir().join(format!("parsed-{}.ndjson", uuid::Uuid::new_v4()));
    std::fs::write(&path, &text).unwrap();
    for (size, parsers) in [(1, 1), (16, 3), (100, 2), (700, 8), (1 << 20, 4)] {
        let mut parsed = ParsedChunks::open(&path, size, parsers, usize::MAX)
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = parsed.next().await.unwrap() {
            got.extend(
                chunk
                    .into_iter()
                    .map(|(line, r)| (line, r.ok().map(|r| r.id))),
            );
        }
        assert_eq!(got, expected, "chunks of {size} bytes, {parsers} parsers");
    }
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_line_over_the_limit_is_skipped_unread_and_refused_with_its_number() {
    let small = r#"{"resourceType":"Patient","id":"a"}"#;
    let big = format!(
        r#"{{"resourceType":"Binary","id":"big","data":"{}"}}"#,
        "A".repeat(100_000)
    );
    let text = format!("{small}\n{big}\n\n{small}\n{big}");
    let path = std::env::temp_dir().join(format!("limit-{}.ndjson", uuid::Uuid::new_v4()));
    std::fs::write(&path, &text).unwrap();
    // Limit 1000: every big line is refused, whether it is longer than a chunk (skipped by
    // Chunks, never held) or within one (refused by its parse); lines after it keep their
    // numbers.
    for size in [16, 100, 4096, 1 << 20] {
        let mut parsed = ParsedChunks::open(&path, size, 2, 1000).await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = parsed.next().await.unwrap() {
            got.extend(chunk.into_iter().map(|(n, r)| (n, r.map(|r| r.id))));
        }
        let refusal = Err(too_large("the line", big.len() as u64, 1000));
        assert_eq!(
            got,
            vec![
                (1, Ok("a".to_string())),
                (2, refusal.clone()),
                (4, Ok("a".to_string())),
                (5, refusal),
            ],
            "chunk size {size}"
        );
    }
    // Over a chunk, the skipped line is reported with its exact length and the next line is
    // read from just after it.
    let mut chunks = Chunks::open(&path, 64, 1000).await.unwrap();
    let mut kinds = Vec::new();
    while let Some(chunk) = chunks.next().await.unwrap() {
        kinds.push(match chunk {
            Chunk::Lines(b) => format!("lines {}", lines(&b).count()),
            Chunk::Long(l) => format!("long {}", l.len()),
            Chunk::TooLong(n) => format!("too long {n}"),
        });
    }
    let too_long = format!("too long {}", big.len());
    assert_eq!(
        kinds,
        vec![
            "lines 1".to_string(),
            too_long.clone(),
            "lines 2".into(),
            too_long
        ]
    );
    // Within the limit, a long line is read whole, once, into a buffer of its own.
    let mut chunks = Chunks::open(&path, 64, 200_000).await.unwrap();
    chunks.next().await.unwrap();
    match chunks.next().await.unwrap() {
        Some(Chunk::Long(line)) => {
            assert_eq!(line, format!("{big}\n").into_bytes());
            assert_eq!(line.capacity(), line.len());
        }
        other => panic!("expected the long line, got {other:?}"),
    }
    std::fs::remove_file(&path).unwrap();
}
