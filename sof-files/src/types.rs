//! The Parquet type of a view column, from its FHIR type and its `ansi/type` tag.

use crate::EncodeError;

/// Precision and scale of a `decimal` column when no `ansi/type` tag says otherwise: 38 digits
/// (the most a 16-byte Parquet DECIMAL holds and what Spark, DuckDB, Trino and BigQuery
/// read), 18 after the point — FHIR asks for at least 18 significant digits — so 20 before it.
pub const DEFAULT_DECIMAL: (u8, i8) = (38, 18);

/// The Parquet type of a column's values (of each element, for a `collection` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParquetType {
    /// BYTE_ARRAY annotated STRING (UTF-8).
    String,
    /// BOOLEAN.
    Boolean,
    /// INT32.
    Int32,
    /// INT64.
    Int64,
    /// DECIMAL(precision, scale), exact.
    Decimal {
        /// Total digits, 1 to 38.
        precision: u8,
        /// Digits after the point, 0 to `precision`.
        scale: i8,
    },
}

/// The Parquet type of `column`'s values:
///
/// - an `ansi/type` tag `DECIMAL(p,s)` / `NUMERIC(p,s)` (or `(p)`, scale 0) → DECIMAL(p, s);
///   `CHARACTER VARYING`, `VARCHAR`, `CHAR…`, `TEXT`, `CLOB`, `STRING` → STRING (numbers and
///   booleans as their JSON text);
/// - else by the FHIR type (`Column::fhir_type`, declared or inferred): `boolean` → BOOLEAN;
///   `integer`, `positiveInt`, `unsignedInt` → INT32; `integer64` → INT64; `decimal` →
///   DECIMAL(38, 18); every other type, and an unknown one, → STRING. Dates, dateTimes,
///   instants and times are strings because FHIR allows partial dates (`2012`, `2012-05`) and
///   times without a zone, which Parquet's DATE and TIMESTAMP cannot hold.
///
/// An `ansi/type` tag naming another SQL type (`DATE`, `INTEGER`, …) does not change the type.
pub fn parquet_type(column: &sof::Column) -> Result<ParquetType, EncodeError> {
    if let Some(tag) = column.tag("ansi/type") {
        if let Some(t) = ansi_type(tag).map_err(|m| EncodeError::column(column.name(), m))? {
            return Ok(t);
        }
    }
    Ok(fhir_type(column.fhir_type()))
}

fn fhir_type(t: Option<&str>) -> ParquetType {
    let Some(t) = t else {
        return ParquetType::String;
    };
    let t = t
        .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
        .unwrap_or(t);
    match t {
        "boolean" | "System.Boolean" => ParquetType::Boolean,
        "integer" | "positiveInt" | "unsignedInt" | "System.Integer" => ParquetType::Int32,
        "integer64" | "System.Long" => ParquetType::Int64,
        "decimal" | "System.Decimal" => ParquetType::Decimal {
            precision: DEFAULT_DECIMAL.0,
            scale: DEFAULT_DECIMAL.1,
        },
        _ => ParquetType::String,
    }
}

/// The type an `ansi/type` tag asks for, if it is one this crate follows.
fn ansi_type(tag: &str) -> Result<Option<ParquetType>, String> {
    let upper = tag.trim().to_ascii_uppercase();
    let (name, args) = match upper.split_once('(') {
        Some((name, rest)) => {
            let Some(args) = rest.trim_end().strip_suffix(')') else {
                return Err(format!("ansi/type tag '{tag}' is missing its ')'"));
            };
            (name.trim(), Some(args))
        }
        None => (upper.as_str(), None),
    };
    match name {
        "DECIMAL" | "NUMERIC" | "DEC" => {
            let bad = || {
                format!(
                    "ansi/type tag '{tag}': a Parquet decimal needs a precision of 1 to 38 and a \
                     scale of 0 to the precision, as DECIMAL(p,s)"
                )
            };
            let (p, s) = match args {
                None => DEFAULT_DECIMAL,
                Some(args) => {
                    let mut parts = args.split(',').map(str::trim);
                    let p: u8 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                    let s: i8 = match parts.next() {
                        Some(s) => s.parse().map_err(|_| bad())?,
                        None => 0,
                    };
                    if parts.next().is_some() {
                        return Err(bad());
                    }
                    (p, s)
                }
            };
            if !(1..=38).contains(&p) || s < 0 || i16::from(s) > i16::from(p) {
                return Err(bad());
            }
            Ok(Some(ParquetType::Decimal {
                precision: p,
                scale: s,
            }))
        }
        "CHARACTER VARYING"
        | "VARCHAR"
        | "CHARACTER"
        | "CHAR"
        | "TEXT"
        | "CLOB"
        | "STRING"
        | "NVARCHAR"
        | "NCHAR"
        | "NATIONAL CHARACTER VARYING"
        | "CHARACTER LARGE OBJECT" => Ok(Some(ParquetType::String)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_types() {
        assert_eq!(fhir_type(Some("boolean")), ParquetType::Boolean);
        assert_eq!(fhir_type(Some("unsignedInt")), ParquetType::Int32);
        assert_eq!(fhir_type(Some("integer64")), ParquetType::Int64);
        assert_eq!(
            fhir_type(Some("http://hl7.org/fhir/StructureDefinition/decimal")),
            ParquetType::Decimal {
                precision: 38,
                scale: 18
            }
        );
        for s in [
            "string", "code", "date", "dateTime", "instant", "time", "Coding",
        ] {
            assert_eq!(fhir_type(Some(s)), ParquetType::String, "{s}");
        }
        assert_eq!(fhir_type(None), ParquetType::String);
    }

    #[test]
    fn ansi_tags() {
        assert_eq!(
            ansi_type("decimal(10, 2)"),
            Ok(Some(ParquetType::Decimal {
                precision: 10,
                scale: 2
            }))
        );
        assert_eq!(
            ansi_type("NUMERIC(5)"),
            Ok(Some(ParquetType::Decimal {
                precision: 5,
                scale: 0
            }))
        );
        assert_eq!(
            ansi_type("CHARACTER VARYING"),
            Ok(Some(ParquetType::String))
        );
        assert_eq!(ansi_type("VARCHAR(64)"), Ok(Some(ParquetType::String)));
        assert_eq!(ansi_type("DATE"), Ok(None));
        assert_eq!(ansi_type("TIMESTAMP WITH TIME ZONE"), Ok(None));
        for bad in [
            "DECIMAL(39,2)",
            "DECIMAL(5,6)",
            "DECIMAL(x)",
            "DECIMAL(5",
            "DECIMAL(0)",
            "DECIMAL(5,-1)",
            "DECIMAL(5,1,1)",
        ] {
            assert!(ansi_type(bad).is_err(), "{bad}");
        }
    }
}
