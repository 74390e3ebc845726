//! Files written by the encoders, read back with the reading side of the same libraries
//! (parquet's Arrow reader, the csv crate, serde_json) and compared with the rows the view gives.

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use std::sync::Arc;

use arrow_schema::{DataType, Field};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaData;
use serde_json::{json, Value};
use sof_files::{EncodeError, Encoder, Format, Options, ParquetType};

/// Whether serde_json keeps number text (the `arbitrary_precision` feature).
fn exact_numbers() -> bool {
    serde_json::from_str::<Value>("1.50")
        .and_then(|v| serde_json::to_string(&v))
        .is_ok_and(|text| text == "1.50")
}

fn view(json: Value) -> sof::View {
    sof::View::from_json(&json).expect("view")
}

/// The view of most tests: every Parquet type, a collection of strings and of decimals, a
/// choice column without a type, a date.
fn observation_view() -> sof::View {
    view(json!({
        "resourceType": "ViewDefinition", "resource": "Observation",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "status", "path": "status"},
            {"name": "has_value", "path": "value.exists()"},
            {"name": "quantity", "path": "value.ofType(Quantity).value"},
            {"name": "plus_point_two", "path": "value.ofType(Quantity).value + 0.2"},
            {"name": "count", "path": "value.ofType(integer)"},
            {"name": "effective", "path": "effective.ofType(dateTime)"},
            {"name": "value", "path": "value"},
            {"name": "notes", "path": "note.text", "collection": true},
            {"name": "components", "path": "component.value.ofType(Quantity).value",
             "collection": true}
        ]}]
    }))
}

fn observations() -> Vec<Value> {
    let text = r#"[
      {"resourceType": "Observation", "id": "o1", "status": "final",
       "effectiveDateTime": "2012", "valueQuantity": {"value": 1.50, "unit": "mg"},
       "note": [{"text": "a, b"}, {"text": "say \"hi\"\nthen go"}],
       "component": [{"valueQuantity": {"value": 0.1}}, {"valueQuantity": {"value": 120}}]},
      {"resourceType": "Observation", "id": "o2", "status": "amended",
       "effectiveDateTime": "2012-05-06T07:08:09.123+02:00", "valueInteger": 42},
      {"resourceType": "Observation", "id": "o3", "status": "preliminary",
       "valueQuantity": {"value": -12345678901234567890.123456789012345678}},
      {"resourceType": "Observation", "id": "o4", "valueString": "", "note": [{"text": ""}]},
      {"resourceType": "Observation", "id": "o5", "status": "final",
       "valueQuantity": {"value": 0.000000000000000001}},
      {"resourceType": "Observation", "id": "o7", "status": "final", "valueBoolean": false},
      {"resourceType": "Observation", "id": "o6", "status": "final",
       "valueQuantity": {"value": 98.6000}}
    ]"#;
    serde_json::from_str(text).expect("resources")
}

/// The rows the view gives for `resources`, flattened.
fn flat_rows(view: &sof::View, resources: &[Value]) -> Vec<Value> {
    let mut flat = Vec::new();
    for r in resources {
        view.append_rows(r, &mut flat).expect("rows");
    }
    flat
}

fn encode(format: Format, columns: &[sof::Column], flat: &[Value], options: &Options) -> Vec<u8> {
    let mut encoder = Encoder::with_options(format, columns, options).expect("encoder");
    encoder.push(flat).expect("push");
    let mut out = Vec::new();
    encoder.finish(&mut out).expect("finish");
    out
}

fn read_parquet(file: Vec<u8>) -> (ParquetMetaData, arrow_schema::SchemaRef, Vec<RecordBatch>) {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file)).expect("parquet file");
    let metadata = builder.metadata().as_ref().clone();
    let schema = builder.schema().clone();
    let batches = builder
        .build()
        .expect("reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("batches");
    (metadata, schema, batches)
}

/// The exact value of a decimal's text (`-1.50`, `1.2345e+19`, `1e-18`) as units of
/// 10^-`scale`: an independent reading, by moving the decimal point in the digit string.
fn unscaled(text: &str, scale: usize) -> i128 {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (
            m,
            e.trim_start_matches('+').parse::<i64>().expect("exponent"),
        ),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // digits × 10^(exponent - frac.len()), and in units of 10^-scale:
    let digits = format!("{int}{frac}");
    let shift = exponent - frac.len() as i64 + scale as i64;
    let text = if shift >= 0 {
        format!("{digits}{}", "0".repeat(shift as usize))
    } else {
        let cut = digits.len().saturating_sub((-shift) as usize);
        assert!(
            digits[cut..].chars().all(|c| c == '0'),
            "{text} has more than {scale} decimals"
        );
        digits[..cut].to_string()
    };
    let v: i128 = if text.is_empty() {
        0
    } else {
        text.parse().expect("digits")
    };
    if negative {
        -v
    } else {
        v
    }
}

/// A Parquet cell as the JSON value it came from, for comparison with the view's row: decimals
/// as `{"unscaled": n}` (compared against the source number's text read independently).
fn cell(array: &dyn Array, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Utf8 => json!(array.as_string::<i32>().value(i)),
        DataType::Boolean => json!(array.as_boolean().value(i)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(i)),
        DataType::Decimal128(_, _) => {
            json!({"unscaled": array.as_primitive::<Decimal128Type>().value(i).to_string()})
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(i);
            Value::Array((0..list.len()).map(|j| cell(list.as_ref(), j)).collect())
        }
        other => panic!("unexpected type {other}"),
    }
}

/// What the Parquet cell of `v` must be, for a column of Parquet type `t`.
fn expected_cell(v: &Value, t: ParquetType) -> Value {
    match (v, t) {
        (Value::Null, _) => Value::Null,
        (Value::Array(items), _) => {
            Value::Array(items.iter().map(|i| expected_cell(i, t)).collect())
        }
        (Value::Number(n), ParquetType::Decimal { scale, .. }) => {
            // The number's text: with arbitrary_precision the source text, else its f64's.
            json!({"unscaled": unscaled(&n.to_string(), scale as usize).to_string()})
        }
        (Value::String(_), ParquetType::String) => v.clone(),
        (other, ParquetType::String) => json!(other.to_string()),
        (other, _) => other.clone(),
    }
}

#[test]
fn parquet_schema_follows_the_fhir_types() {
    let view = observation_view();
    let flat = flat_rows(&view, &observations());
    let file = encode(Format::Parquet, view.columns(), &flat, &Options::default());
    assert!(file.starts_with(b"PAR1") && file.ends_with(b"PAR1"));
    let (metadata, schema, _) = read_parquet(file);

    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let view_names: Vec<&str> = view.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, view_names);
    let list = |t: DataType| DataType::List(Arc::new(Field::new("element", t, true)));
    let dec = DataType::Decimal128(38, 18);
    let types: Vec<DataType> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        [
            DataType::Utf8,
            DataType::Utf8,
            DataType::Boolean,
            dec.clone(),
            dec.clone(),
            DataType::Int32,
            DataType::Utf8,
            DataType::Utf8,
            list(DataType::Utf8),
            list(dec),
        ]
    );
    for f in schema.fields() {
        assert!(f.is_nullable());
        if let DataType::List(element) = f.data_type() {
            assert_eq!(element.name(), "element");
        }
    }
    // Snappy on every column chunk.
    let rg = metadata.row_group(0);
    for c in rg.columns() {
        assert_eq!(c.compression(), parquet::basic::Compression::SNAPPY);
    }
    // The Parquet schema: strings are annotated STRING, decimals DECIMAL.
    let descr = metadata.file_metadata().schema_descr();
    let quantity = descr
        .columns()
        .iter()
        .find(|c| c.name() == "quantity")
        .expect("quantity");
    match quantity.logical_type_ref() {
        Some(parquet::basic::LogicalType::Decimal(d)) => {
            assert_eq!((d.precision, d.scale), (38, 18));
        }
        other => panic!("quantity is {other:?}"),
    }
}

#[test]
fn parquet_values_come_back_as_the_view_gave_them() {
    let view = observation_view();
    let resources = observations();
    let flat = flat_rows(&view, &resources);
    let width = view.columns().len();
    let types: Vec<ParquetType> = view
        .columns()
        .iter()
        .map(|c| sof_files::parquet_type(c).expect("type"))
        .collect();
    let file = encode(Format::Parquet, view.columns(), &flat, &Options::default());
    let (_, _, batches) = read_parquet(file);

    let mut got = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            for c in b.columns() {
                got.push(cell(c.as_ref(), i));
            }
        }
    }
    let want: Vec<Value> = flat
        .iter()
        .enumerate()
        .map(|(i, v)| expected_cell(v, types[i % width]))
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g,
            w,
            "row {} column {}",
            i / width,
            view.columns()[i % width].name()
        );
    }

    // The exact decimals, independently of how the view computed them.
    let col = |name: &str| {
        view.columns()
            .iter()
            .position(|c| c.name() == name)
            .expect("column")
    };
    let row1 = &got[..width];
    let scale18 = |text: &str| json!({"unscaled": unscaled(text, 18).to_string()});
    assert_eq!(row1[col("quantity")], scale18("1.5"));
    // 1.5 + 0.2 is 1.7 exactly, not 1.7000000000000002.
    assert_eq!(row1[col("plus_point_two")], scale18("1.7"));
    assert_eq!(
        row1[col("components")],
        json!([scale18("0.1"), scale18("120")])
    );
    assert_eq!(row1[col("notes")], json!(["a, b", "say \"hi\"\nthen go"]));
    assert_eq!(row1[col("effective")], json!("2012"));
    let row3 = &got[2 * width..3 * width];
    if exact_numbers() {
        // All 38 digits of the source text.
        assert_eq!(
            row3[col("quantity")],
            scale18("-12345678901234567890.123456789012345678")
        );
    }
    let row5 = &got[4 * width..5 * width];
    assert_eq!(row5[col("quantity")], json!({"unscaled": "1"}));
    // A choice without a type: strings as they are, other values as JSON text.
    assert_eq!(got[5 * width + col("value")], json!("false"));
    assert_eq!(got[5 * width + col("has_value")], json!(true));
    assert_eq!(got[width + col("value")], json!("42"));
    assert_eq!(got[width + col("count")], json!(42));
    assert_eq!(got[width + col("quantity")], Value::Null);
    assert_eq!(got[width + col("notes")], json!([]));
    assert_eq!(got[3 * width + col("value")], json!(""));
}

#[test]
fn parquet_nulls_and_null_lists() {
    let view = view(json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()"}]},
            {"forEachOrNull": "name", "column": [
                {"name": "family", "path": "family"},
                {"name": "given", "path": "given", "collection": true},
                {"name": "active", "path": "%resource.active"},
                {"name": "births", "path": "%resource.multipleBirth.ofType(integer)"}
            ]}
        ]
    }));
    let resources = [
        json!({"resourceType": "Patient", "id": "p1", "active": true, "multipleBirthInteger": 2,
               "name": [{"family": "Doe", "given": ["Jane", "J"]}, {"given": ["Q"]}]}),
        json!({"resourceType": "Patient", "id": "p2"}),
    ];
    let flat = flat_rows(&view, &resources);
    let file = encode(Format::Parquet, view.columns(), &flat, &Options::default());
    let (_, schema, batches) = read_parquet(file);
    assert_eq!(schema.field(3).data_type(), &DataType::Boolean);
    assert_eq!(schema.field(4).data_type(), &DataType::Int32);
    let rows: Vec<Vec<Value>> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|i| b.columns().iter().map(|c| cell(c.as_ref(), i)).collect())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec![
                json!("p1"),
                json!("Doe"),
                json!(["Jane", "J"]),
                json!(true),
                json!(2)
            ],
            vec![
                json!("p1"),
                Value::Null,
                json!(["Q"]),
                json!(true),
                json!(2)
            ],
            // forEachOrNull over nothing: a null row, the list column a null list.
            vec![
                json!("p2"),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null
            ],
        ]
    );
}

#[test]
fn parquet_row_groups_are_bounded_by_rows_and_by_bytes() {
    let view = view(json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "n", "path": "multipleBirth.ofType(integer)"}
        ]}]
    }));
    let n = 10_500;
    let mut flat = Vec::new();
    for i in 0..n {
        flat.push(json!(format!("patient-{i:08}-{}", "x".repeat(i % 50))));
        flat.push(json!(i));
    }
    // By rows: 1,000 a group, batches of 300 (not a divisor) — 11 groups, all rows, in order.
    let by_rows = Options {
        row_group_rows: 1000,
        batch_rows: 300,
        ..Options::default()
    };
    let (metadata, _, batches) =
        read_parquet(encode(Format::Parquet, view.columns(), &flat, &by_rows));
    assert_eq!(metadata.num_row_groups(), n.div_ceil(1000));
    assert!(metadata.row_groups().iter().all(|rg| rg.num_rows() <= 1000));
    assert_eq!(metadata.file_metadata().num_rows(), n as i64);
    let ns: Vec<i32> = batches
        .iter()
        .flat_map(|b| b.column(1).as_primitive::<Int32Type>().values().to_vec())
        .collect();
    assert_eq!(ns, (0..n as i32).collect::<Vec<_>>());

    // By bytes: a small limit gives several groups although the row limit is far away.
    let by_bytes = Options {
        row_group_bytes: 16 << 10,
        batch_rows: 500,
        ..Options::default()
    };
    let (metadata, _, batches) =
        read_parquet(encode(Format::Parquet, view.columns(), &flat, &by_bytes));
    assert!(
        metadata.num_row_groups() > 5,
        "{}",
        metadata.num_row_groups()
    );
    assert_eq!(metadata.file_metadata().num_rows(), n as i64);
    let ids: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_string::<i32>();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let want: Vec<String> = flat
        .iter()
        .step_by(2)
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, want);
}

/// Pushing row by row and draining after every push gives the same file as one push and one
/// drain; the Parquet magic comes out first, and bytes_so_far never falls behind what came out.
#[test]
fn draining_while_pushing_gives_the_same_bytes() {
    let view = observation_view();
    let resources = observations();
    let width = view.columns().len();
    let mut flat = Vec::new();
    for _ in 0..400 {
        flat.extend(flat_rows(&view, &resources));
    }
    let options = Options {
        row_group_rows: 500,
        batch_rows: 64,
        ..Options::default()
    };
    for format in [
        Format::Ndjson,
        Format::Csv { header: true },
        Format::Parquet,
    ] {
        let at_once = encode(format, view.columns(), &flat, &options);

        let mut encoder = Encoder::with_options(format, view.columns(), &options).expect("encoder");
        let mut out = Vec::new();
        let mut drains = 0;
        for row in flat.chunks(width) {
            encoder.push(row).expect("push");
            let before = out.len();
            encoder.drain_ready(&mut out);
            if out.len() > before {
                drains += 1;
            }
            assert!(encoder.bytes_so_far() >= out.len() as u64, "{format:?}");
            if format == Format::Parquet && !out.is_empty() {
                assert_eq!(&out[..4], b"PAR1");
            }
        }
        assert_eq!(encoder.rows(), (flat.len() / width) as u64);
        let so_far = encoder.bytes_so_far();
        encoder.finish(&mut out).expect("finish");
        assert_eq!(out, at_once, "{format:?}");
        match format {
            // Several row groups came out before the end.
            Format::Parquet => assert!(drains >= 4, "{drains}"),
            // Every row at once, and bytes_so_far is exact.
            _ => {
                assert_eq!(drains, flat.len() / width);
                assert_eq!(so_far, out.len() as u64);
            }
        }
    }
}

#[test]
fn csv_quotes_as_rfc_4180_and_keeps_null_apart_from_empty() {
    let view = observation_view();
    let resources = observations();
    let flat = flat_rows(&view, &resources);
    let width = view.columns().len();
    let file = encode(
        Format::Csv { header: true },
        view.columns(),
        &flat,
        &Options::default(),
    );
    let text = String::from_utf8(file.clone()).expect("utf-8");
    assert!(text.starts_with("id,status,has_value,quantity,"));
    assert!(text.ends_with("\r\n"));

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file.as_slice());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    let names: Vec<&str> = view.columns().iter().map(|c| c.name()).collect();
    assert_eq!(header, names);
    let records: Vec<csv::StringRecord> =
        reader.records().collect::<Result<_, _>>().expect("records");
    assert_eq!(records.len(), flat.len() / width);
    for (r, row) in records.iter().zip(flat.chunks(width)) {
        assert_eq!(r.len(), width);
        for (field, v) in r.iter().zip(row) {
            let want = match v {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(field, want);
        }
    }
    // The note with a comma, quotes and a line break survives; booleans are true/false.
    let notes = names.iter().position(|n| *n == "notes").expect("notes");
    assert_eq!(&records[0][notes], r#"["a, b","say \"hi\"\nthen go"]"#);
    assert_eq!(&records[0][2], "true");

    // Raw text: o4's value is an empty string (""), its status null (nothing).
    let line = text
        .split("\r\n")
        .find(|l| l.starts_with("o4,"))
        .expect("o4 line");
    assert!(line.starts_with("o4,,"), "{line}");
    let value = names.iter().position(|n| *n == "value").expect("value");
    let fields: Vec<&str> = line.split(',').collect();
    assert_eq!(fields[value], "\"\"");
    assert_eq!(fields[1], "");

    // A field with a comma, a quote or a line break is quoted, quotes doubled.
    let one = view_of_one_string();
    let values = [
        json!("a,b"),
        json!("say \"hi\""),
        json!("two\nlines"),
        json!("cr\rlf"),
        json!("plain"),
    ];
    let file = encode(
        Format::Csv { header: false },
        one.columns(),
        &values,
        &Options::default(),
    );
    assert_eq!(
        String::from_utf8(file).expect("utf-8"),
        "\"a,b\"\r\n\"say \"\"hi\"\"\"\r\n\"two\nlines\"\r\n\"cr\rlf\"\r\nplain\r\n"
    );
}

#[test]
fn csv_empty_strings_first_last_and_alone() {
    let view = view(json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [
            {"name": "a", "path": "id"}, {"name": "b", "path": "gender"}, {"name": "c", "path": "birthDate"}
        ]}]
    }));
    let rows = [
        json!(""),
        Value::Null,
        json!(""),
        Value::Null,
        json!(""),
        Value::Null,
    ];
    let file = encode(
        Format::Csv { header: false },
        view.columns(),
        &rows,
        &Options::default(),
    );
    assert_eq!(
        String::from_utf8(file.clone()).expect("utf-8"),
        "\"\",,\"\"\r\n,\"\",\r\n"
    );
    let records: Vec<csv::StringRecord> = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(file.as_slice())
        .records()
        .collect::<Result<_, _>>()
        .expect("records");
    assert_eq!(records.len(), 2);
    assert!(records
        .iter()
        .all(|r| r.len() == 3 && r.iter().all(str::is_empty)));

    // One column: the csv crate writes an empty field as "" (an empty line is no record).
    let one = view_of_one_string();
    let file = encode(
        Format::Csv { header: false },
        one.columns(),
        &[json!(""), Value::Null],
        &Options::default(),
    );
    assert_eq!(String::from_utf8(file).expect("utf-8"), "\"\"\r\n\"\"\r\n");
}

fn view_of_one_string() -> sof::View {
    view(json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [{"name": "family", "path": "name.family.first()"}]}]
    }))
}

#[test]
fn ndjson_rows_are_objects_in_column_order_with_nulls() {
    let view = observation_view();
    let flat = flat_rows(&view, &observations());
    let width = view.columns().len();
    let file = encode(Format::Ndjson, view.columns(), &flat, &Options::default());
    let text = String::from_utf8(file).expect("utf-8");
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), flat.len() / width);
    let names: Vec<&str> = view.columns().iter().map(|c| c.name()).collect();
    for (line, row) in lines.iter().zip(flat.chunks(width)) {
        let v: Value = serde_json::from_str(line).expect("json");
        let obj = v.as_object().expect("object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, names);
        let values: Vec<Value> = obj.values().cloned().collect();
        assert_eq!(values, row);
    }
    if exact_numbers() {
        assert!(lines[0].contains(r#""quantity":1.50,"#), "{}", lines[0]);
    }
}

#[test]
fn errors_name_the_column_and_leave_the_row_out() {
    let view = view(json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "active", "path": "active"},
            {"name": "births", "path": "multipleBirth.ofType(integer)"},
            {"name": "amount", "path": "1.5", "type": "decimal"},
            {"name": "money", "path": "2.5", "type": "decimal",
             "tag": [{"name": "ansi/type", "value": "DECIMAL(10,2)"}]}
        ]}]
    }));
    let cols = view.columns();
    let mut encoder = Encoder::new(Format::Parquet, cols).expect("encoder");
    let good = [json!("a"), json!(true), json!(1), json!(1.5), json!(2.5)];
    encoder.push(&good).expect("good row");
    let cases: [(usize, Value, &str); 6] = [
        (1, json!("yes"), "active"),
        (2, json!(3_000_000_000u64), "births"),
        (2, json!(1.5), "births"),
        (3, json!("abc"), "amount"),
        (3, serde_json::from_str("1e-30").expect("number"), "amount"),
        (4, json!(1.255), "money"),
    ];
    for (i, bad, column) in cases {
        let mut row = good.clone();
        row[i] = bad.clone();
        let e = encoder.push(&row).expect_err("refused");
        assert_eq!(e.column_name(), Some(column), "{e}");
        assert!(
            e.to_string().starts_with(&format!("column '{column}': ")),
            "{e}"
        );
    }
    let e = encoder.push(&good[..3]).expect_err("not whole rows");
    assert_eq!(
        e,
        EncodeError::RowShape {
            values: 3,
            columns: 5
        }
    );
    // Too many digits before the point for DECIMAL(10,2).
    let mut row = good.clone();
    row[4] = json!(123456789);
    assert_eq!(
        encoder.push(&row).expect_err("too big").column_name(),
        Some("money")
    );
    encoder.push(&good).expect("good row again");
    assert_eq!(encoder.rows(), 2);
    let mut file = Vec::new();
    encoder.finish(&mut file).expect("finish");
    let (metadata, schema, _) = read_parquet(file);
    assert_eq!(metadata.file_metadata().num_rows(), 2);
    assert_eq!(schema.field(4).data_type(), &DataType::Decimal128(10, 2));

    // A bad ansi/type tag is refused when the encoder is made, naming the column.
    let tagged = sof::View::from_json(&json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [{"name": "weight", "path": "1.5", "type": "decimal",
            "tag": [{"name": "ansi/type", "value": "DECIMAL(40,2)"}]}]}]
    }))
    .expect("view");
    let e = Encoder::new(Format::Parquet, tagged.columns())
        .err()
        .expect("refused");
    assert_eq!(e.column_name(), Some("weight"));
}

#[test]
fn a_wider_scale_by_tag_keeps_small_decimals() {
    let view = view(json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [{"name": "tiny", "path": "1.0", "type": "decimal",
            "tag": [{"name": "ansi/type", "value": "NUMERIC(38,30)"}]}]}]
    }));
    // (From an f64 literal: serde_json's own parsing of "1e-30" without arbitrary_precision is
    // not correctly rounded and gives 9.999999999999999e-31.)
    let tiny = json!(1e-30);
    let file = encode(
        Format::Parquet,
        view.columns(),
        &[tiny],
        &Options::default(),
    );
    let (_, schema, batches) = read_parquet(file);
    assert_eq!(schema.field(0).data_type(), &DataType::Decimal128(38, 30));
    assert_eq!(
        batches[0]
            .column(0)
            .as_primitive::<Decimal128Type>()
            .value(0),
        1
    );
}

#[test]
fn formats_parse_from_codes_and_media_types() {
    for code in [
        "ndjson",
        "NDJSON",
        "application/x-ndjson",
        "application/ndjson",
        "application/fhir+ndjson",
    ] {
        assert_eq!(Format::parse(code, true), Ok(Format::Ndjson), "{code}");
    }
    for code in ["csv", "text/csv", "Text/CSV"] {
        assert_eq!(
            Format::parse(code, false),
            Ok(Format::Csv { header: false }),
            "{code}"
        );
    }
    assert_eq!(Format::parse("csv", true), Ok(Format::Csv { header: true }));
    for code in [
        "parquet",
        "application/vnd.apache.parquet",
        "application/parquet",
    ] {
        assert_eq!(Format::parse(code, false), Ok(Format::Parquet), "{code}");
    }
    for code in ["json", "fhir", "", "text/plain", "application/json"] {
        assert!(Format::parse(code, false).is_err(), "{code}");
    }
    let all = [
        Format::Ndjson,
        Format::Csv { header: true },
        Format::Parquet,
    ];
    let ext: Vec<&str> = all.iter().map(Format::extension).collect();
    assert_eq!(ext, ["ndjson", "csv", "parquet"]);
    let ct: Vec<&str> = all.iter().map(Format::content_type).collect();
    assert_eq!(
        ct,
        [
            "application/x-ndjson",
            "text/csv",
            "application/vnd.apache.parquet"
        ]
    );
    for f in all {
        assert_eq!(Format::parse(f.code(), true), Ok(f));
        assert_eq!(Format::parse(f.content_type(), true), Ok(f));
    }
}

#[test]
fn empty_files_are_valid() {
    let view = observation_view();
    let parquet = encode(Format::Parquet, view.columns(), &[], &Options::default());
    let (metadata, schema, _) = read_parquet(parquet);
    assert_eq!(metadata.file_metadata().num_rows(), 0);
    assert_eq!(schema.fields().len(), view.columns().len());
    assert!(encode(Format::Ndjson, view.columns(), &[], &Options::default()).is_empty());
    let csv = encode(
        Format::Csv { header: true },
        view.columns(),
        &[],
        &Options::default(),
    );
    assert_eq!(csv.iter().filter(|b| **b == b'\n').count(), 1);
    assert!(Encoder::new(Format::Ndjson, &[]).is_err());
}

#[test]
fn a_varchar_tag_keeps_a_decimal_as_its_text() {
    let view = view(json!({
        "resourceType": "ViewDefinition", "resource": "Observation",
        "select": [{"column": [{"name": "v", "path": "value.ofType(Quantity).value",
            "tag": [{"name": "ansi/type", "value": "CHARACTER VARYING"}]}]}]
    }));
    let resources: Vec<Value> = serde_json::from_str(
        r#"[{"resourceType": "Observation", "valueQuantity": {"value": 1.50}},
            {"resourceType": "Observation", "valueQuantity": {"value": 1e-30}}]"#,
    )
    .expect("resources");
    let flat = flat_rows(&view, &resources);
    let file = encode(Format::Parquet, view.columns(), &flat, &Options::default());
    let (_, schema, batches) = read_parquet(file);
    assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
    let texts: Vec<String> = (0..2)
        .map(|i| batches[0].column(0).as_string::<i32>().value(i).to_string())
        .collect();
    // The number's JSON text: the source's with arbitrary_precision.
    let want: Vec<String> = flat.iter().map(Value::to_string).collect();
    assert_eq!(texts, want);
    if exact_numbers() {
        assert_eq!(texts, ["1.50", "1e-30"]);
    }
}

#[test]
fn an_encoder_moves_between_threads() {
    fn send<T: Send>() {}
    send::<Encoder>();
}

#[test]
fn a_refused_row_stops_a_push_after_the_rows_before_it() {
    let view = view(json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [{"name": "active", "path": "active"}]}]
    }));
    let mut encoder = Encoder::new(Format::Parquet, view.columns()).expect("encoder");
    let flat = [json!(true), json!("no"), json!(false)];
    let e = encoder.push(&flat).expect_err("refused");
    assert_eq!(e.column_name(), Some("active"));
    assert_eq!(encoder.rows(), 1);
    encoder.push(&flat[2..]).expect("the rest");
    let mut file = Vec::new();
    encoder.finish(&mut file).expect("finish");
    let (_, _, batches) = read_parquet(file);
    let got: Vec<Option<bool>> = batches[0].column(0).as_boolean().iter().collect();
    assert_eq!(got, [Some(true), Some(false)]);
}

#[test]
fn encoders_sharing_memory_write_smaller_row_groups() {
    let shared = Options::sharing(48 << 20, 6);
    assert_eq!(shared.row_group_bytes, 8 << 20);
    assert!(shared.batch_bytes <= 2 << 20);
    assert_eq!(Options::sharing(1 << 30, 1), Options::default());
    assert_eq!(Options::sharing(0, 0).row_group_bytes, 1 << 20);

    let view = view(json!({
        "resourceType": "ViewDefinition", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]}]
    }));
    // Distinct ids of ~40 bytes that compress little: ~8 MB of them.
    let flat: Vec<Value> = (0..200_000u64)
        .map(|i| {
            json!(format!(
                "{:016x}-{:016x}",
                i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                i
            ))
        })
        .collect();
    let (metadata, _, _) = read_parquet(encode(
        Format::Parquet,
        view.columns(),
        &flat,
        &Options::sharing(4 << 20, 2),
    ));
    assert!(
        metadata.num_row_groups() >= 3,
        "{}",
        metadata.num_row_groups()
    );
    for rg in metadata.row_groups() {
        assert!(rg.compressed_size() < 3 << 20, "{}", rg.compressed_size());
    }
    assert_eq!(metadata.file_metadata().num_rows(), 200_000);
}
